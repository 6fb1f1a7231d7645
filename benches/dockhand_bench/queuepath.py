"""Phase l. The queue path: no container, only the queue.

`--l-jobs` (20,000) jobs that run `true` as a process of the worker's host, at
concurrency `--l-concurrency` (50), `--l-reps` (1) repetitions, interleaved:

- dockhand: a worker of our own with the local executor enabled
  (DOCKHAND__EXECUTORS__LOCAL__ENABLED=true), jobs `{"executor": "local",
  "command": ["true"]}`;
- celery: a task running `subprocess.run(["true"])`, `--celery-process-pool`
  (prefork: Celery's default and the pool its docs name for work that is not
  I/O-bound; with threads, every task's Python would wait on one GIL) with 50
  children;
- rq: the same task on `--l-rq-workers` (8) `rq worker` processes. RQ's
  default worker forks a work horse per job, so a job costs a fork of a Python
  process; beyond a few workers per core more only add context switches on the
  CPU they all share, so not 50.

`--l-peers celery` (or `rq`) leaves the other peer out: RQ drains 20,000 jobs in
about 15 minutes where the others take well under one, so repetitions of Dockhand
against Celery alone are quick. Its ratio and target are then not printed.

Each timed by peers.drain (workers up and warmed, paused, the backlog enqueued,
resumed, until the last finishes). Also the Dockhand worker's VmRSS idle (after
its start, before any job) and its peak under the load. Targets: Dockhand >= 2x
Celery, >= 5x RQ.
"""

import time

from . import peers
from .harness import Fatal, median, progress, progress_done

SYSTEMS = ("dockhand", "celery", "rq")
TARGETS = {"celery": 2.0, "rq": 5.0}


def systems(peers):
    """Dockhand, then the peers named in `peers` (comma-separated), in SYSTEMS' order."""
    wanted = {p.strip() for p in peers.split(",") if p.strip()}
    unknown = wanted - set(SYSTEMS[1:])
    if unknown or not wanted:
        raise Fatal(f"--l-peers takes celery and/or rq, not {peers!r}")
    return tuple(s for s in SYSTEMS if s == "dockhand" or s in wanted)


def run(bench):
    a = bench.args
    n, c = a.l_jobs, a.l_concurrency
    names = systems(a.l_peers)
    res = {"jobs": n, "concurrency": c, "reps": a.l_reps, "celery_pool": a.celery_process_pool,
           "rq_workers": a.l_rq_workers, "systems": list(names), "samples": {s: [] for s in names}}
    runners = {}
    try:
        d = peers.Dockhand(bench, "process", f"{bench.run_tag}-l")
        runners["dockhand"] = d
        d.start(c)
        time.sleep(1.0)
        res["dockhand_rss_idle_kib"] = peers.rss_kib(d.pids()[0])
        if "celery" in names:
            runners["celery"] = peers.Celery(bench, "process", f"{bench.run_tag}-l")
            runners["celery"].start(c)
        if "rq" in names:
            runners["rq"] = peers.Rq(bench, "process", f"{bench.run_tag}-l")
            runners["rq"].start(a.l_rq_workers)
        for rep in range(a.l_reps):
            k = rep % len(names)
            for s in names[k:] + names[:k]:
                progress(a, f"l: repetition {rep + 1}/{a.l_reps}, {s}      ")
                rn = runners[s]
                x = peers.drain(rn, n, a.l_timeout, warm=c if rep == 0 else 0,
                                rss_pid=rn.pids()[0] if s == "dockhand" else None)
                res["samples"][s].append(x)
        res["dockhand_rss_after_kib"] = peers.rss_kib(d.pids()[0])
    finally:
        for rn in runners.values():
            rn.stop()
    progress_done(a)
    med = {s: median([x["jobs_per_s"] for x in res["samples"][s]]) for s in names}
    res["median_jobs_per_s"] = med
    res["ratios"] = {p: med["dockhand"] / med[p] for p in names[1:]}
    res["targets_met"] = {p: res["ratios"][p] >= TARGETS[p] for p in names[1:]}
    res["dockhand_rss_peak_kib"] = max((x["rss_peak_kib"] or 0) for x in res["samples"]["dockhand"]) or None
    return res


def summary(out):
    lp = out.get("l")
    if not lp:
        return []
    names = lp.get("systems", SYSTEMS)
    setups = {"celery": f"Celery {lp['celery_pool']} x {lp['concurrency']}", "rq": f"RQ {lp['rq_workers']} workers"}
    L = ["", f"l. Queue path: {lp['jobs']:,} jobs `true` as processes, concurrency {lp['concurrency']}"
             f" ({', '.join(setups[p] for p in names[1:])}), {lp['reps']} repetition(s)"]
    for s in names:
        v = [x["jobs_per_s"] for x in lp["samples"][s]]
        cpu = median([x["workers_cpu_s"] / x["jobs"] * 1000 for x in lp["samples"][s]])
        rcpu = median([x["redis_cpu_s"] / x["jobs"] * 1000 for x in lp["samples"][s]])
        cmds = median([x["redis_commands"] / x["jobs"] for x in lp["samples"][s]])
        L.append(f"  {s:<9} {median(v):9.1f} jobs/s ({min(v):.1f}-{max(v):.1f});  per job: workers' CPU {cpu:.2f} ms,"
                 f" Redis CPU {rcpu:.3f} ms, {cmds:.1f} Redis commands")
    r, t = lp["ratios"], lp["targets_met"]
    title = {"celery": "Celery", "rq": "RQ"}
    L.append("  " + "; ".join(f"Dockhand/{title[p]} {r[p]:.2f}x (target {TARGETS[p]:g}x: {'met' if t[p] else 'MISSED'})"
                              for p in names[1:]))
    kib = lambda v: "n/a" if not v else f"{v / 1024:.1f} MiB"  # noqa: E731
    L.append(f"  Dockhand worker VmRSS: idle {kib(lp.get('dockhand_rss_idle_kib'))},"
             f" peak under load {kib(lp.get('dockhand_rss_peak_kib'))}, after {kib(lp.get('dockhand_rss_after_kib'))}")
    return L
