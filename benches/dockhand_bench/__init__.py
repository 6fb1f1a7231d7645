"""The phases of benches/bench.py, one module each, and what they share (harness).

Each phase module has `run(bench)` (phase c: `run(bench, sampler)`), which
measures and returns the phase's raw figures as a dict, and `summary(out)`,
which turns the figures of a whole run into the phase's lines of the summary.
benches/bench.py runs them in order and prints the summary.
"""
