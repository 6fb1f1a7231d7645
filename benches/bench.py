#!/usr/bin/env python3
"""Dockhand benchmark: cost per container job, log throughput, worker memory,
webhooks, jobs from git, lease takeover, Redis memory per finished job, read-only
root, the queue controls' cost, the listing with many finished jobs.

Run it through `scripts/bench`, which starts Redis and a release worker with
--concurrency 4 and passes --redis-url, --worker-pid and --bin. Directly:

    python3 benches/bench.py --redis-url redis://127.0.0.1:6379/ --worker-pid PID --bin DOCKHAND

Needs python3 and redis-py only (plus the git CLI for e). Talks to the Redis of
--redis-url (and, in d, only to its own receiver on 127.0.0.1), reads
/proc/<worker pid>/status and /stat, and runs the docker CLI: `docker run` for
the baseline of a, `docker build` for that of e, `docker rmi` / `rm -f` for what
e and f leave, and `docker ps`, `create`, `inspect`, `rm` once to describe the
host (other Dockhand containers, the log driver new containers get). For d, the
worker must allow 127.0.0.1 (DOCKHAND__WEBHOOKS__ALLOW_NETWORKS=127.0.0.1/32);
scripts/bench sets it.

This file parses the arguments, runs the phases in order, prints the summary and
sets the exit code. Each phase is a module of dockhand_bench/ (next to this
file), whose docstring says what it measures and how; what they share is in
dockhand_bench/harness.py.

Phases (printed in this order; run in the order idle, a, c, b, d, e, ..., n so
that the memory peak of c is not inflated by what the log phase leaves in the
allocator):

  a. Cost per container job (cost.py): `true` against `docker run`, interleaved.
  b. Log throughput (logs.py): one job `seq 1 N`, live and stored, checked.
  c. Worker memory (memory.py): VmRSS idle and while --sleep-jobs jobs run at once.
  d. Webhooks (webhooks.py): signed deliveries/s against jobs finished/s.
  e. Jobs from git (git.py): cached git jobs against image jobs; builds
     against `docker build`.
  f. Takeover (takeover.py): a job's worker SIGKILLed, time until it runs again.
  g. Redis memory per finished job (redis_memory.py): invalid_spec entries,
     used_memory before, at the peak, all terminal, after retention.
  h. Read-only root (readonly.py): `true` on a read_only_rootfs worker against
     a default one.
  i. Queue controls (controls.py): a backlog of jobs drained by one worker,
     plain and with priority, concurrency_key, batch, after, unique_for_seconds;
     time and Redis commands per job, against plain in the same run.
  j. Listing and dashboard (listing.py): GET /jobs, /queues, /workers and / of
     `dockhand serve` over 100,000 finished jobs against 1,000.
  k. Containers against the peers (containers.py): jobs/s of Dockhand, Celery,
     RQ, `docker run` and the engine floor at concurrency 1, 2, 4, 8.
  l. Queue path (queuepath.py): local-executor jobs against Celery and RQ
     running a process; the worker's memory.
  m. Webhooks under load (hookload.py): 10,000 local jobs, one subscriber;
     then 10,000 deliveries alone, replayed at once, drained by one delivery loop.
  n. Scaling (scaling.py): jobs/s against worker processes, Redis's CPU.

The peers (Celery, RQ, docker-py) and matplotlib come from the virtualenv
scripts/bench makes (benches/requirements-peers.txt); with --plots-dir and
--docs-md the plots and the generated section of docs/benchmarks.md are written
(report.py). --smoke: every size at its smallest.

Phases d (subscriber add/rm, cancel) and f to n need --bin, the dockhand binary; k
needs --floor-bin too.

Exit code: 0 when every check passed, 1 when one failed (the figures are still
printed and written), 2 for bad usage or when the set-up is not usable.
"""

import argparse
import json
import os
import signal
import sys
import time

from dockhand_bench import (
    containers,
    controls,
    cost,
    git,
    hookload,
    listing,
    logs,
    memory,
    queuepath,
    readonly,
    redis_memory,
    report,
    scaling,
    takeover,
    webhooks,
)
from dockhand_bench.harness import Bench, Fatal, RssSampler, idle_rss, machine, read_status_kib, step

# In the order of the summary.
PHASES = (cost, logs, memory, webhooks, git, takeover, redis_memory, readonly, controls, listing,
          containers, queuepath, hookload, scaling)

# --smoke: every size that makes a phase long, at its smallest; the harness runs
# end to end (the suite does this, tests/it/bench_smoke.rs) without measuring.
SMOKE = {
    "jobs": 2, "warmup": 1, "lines": 1000, "sleep_jobs": 2, "sleep_seconds": 1, "hook_jobs": 4,
    "git_jobs": 1, "git_builds": 1, "lease_trials": 1, "lease_seconds": 3, "retention_jobs": 20, "retention_seconds": 2,
    "ro_jobs": 2, "control_jobs": 4, "control_reps": 1, "control_idle": 0.5, "listing_jobs": 40,
    "listing_small": 10, "listing_reps": 1, "k_jobs": 4, "k_reps": 1, "k_concurrency": "1,2",
    "l_jobs": 4, "l_concurrency": 2, "l_rq_workers": 2, "l_reps": 1, "m_jobs": 4, "m_deliveries": 20, "m_concurrency": 2,
    "n_workers": "1,2", "n_container_jobs": 4, "n_container_concurrency": 1, "n_local_jobs": 4,
    "n_local_concurrency": 2,
}


def run(bench):
    a = bench.args
    bench.r.ping()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {"machine": machine(bench, root), "args": vars(a).copy()}
    phases = set(a.phases.split(","))
    pid = a.worker_pid
    sampler = None
    if pid:
        if not os.path.exists(f"/proc/{pid}/status"):
            raise Fatal(f"no process {pid} (--worker-pid)")
        comm = open(f"/proc/{pid}/comm").read().strip()
        out["machine"]["worker_comm"] = comm
        if comm != "dockhand":
            print(f"warning: pid {pid} is {comm!r}, not dockhand", file=sys.stderr)
        out["rss_idle_start_kib"] = idle_rss(pid)
        sampler = RssSampler(pid)
        sampler.start()
    elif "c" in phases:
        print("warning: no --worker-pid; phase c (memory) skipped", file=sys.stderr)
        phases.discard("c")

    if "a" in phases:
        step(f"a. cost per container job: {a.jobs} x `true` (+{a.warmup} warm-up), interleaved with docker run")
        sampler and sampler.set_phase("a")
        out["a"] = cost.run(bench)
    if "c" in phases:
        if a.worker_concurrency is not None and a.worker_concurrency < a.sleep_jobs:
            print(f"warning: worker concurrency {a.worker_concurrency} < {a.sleep_jobs} jobs", file=sys.stderr)
        step(f"c. worker memory: {a.sleep_jobs} x `sleep {a.sleep_seconds}` at once")
        out["c"] = memory.run(bench, sampler)
    if "b" in phases:
        step(f"b. log throughput: `seq 1 {a.lines}`")
        sampler and sampler.set_phase("b")
        out["b"] = logs.run(bench)
        if sampler:
            out["b"]["peak_rss_kib"] = sampler.max_by_phase.get("b")
    try:
        for ph, title, module in (
            ("d", f"d. webhooks: {a.hook_jobs} x `true` at once, signed deliveries to 127.0.0.1", webhooks),
            ("e", f"e. jobs from git: {a.git_jobs} cached vs {a.git_jobs} image jobs; {a.git_builds} builds vs docker build", git),
            ("f", f"f. lease takeover after SIGKILL (default lease), {a.lease_trials} trial(s)", takeover),
            ("g", f"g. Redis memory per finished job: {a.retention_jobs:,} invalid_spec entries, retention {a.retention_seconds} s", redis_memory),
            ("h", f"h. read-only root: {a.ro_jobs} x `true` on a read_only_rootfs worker vs a default one, interleaved", readonly),
            ("i", f"i. queue controls: {a.control_reps} x {a.control_jobs} jobs per variant as a backlog, one worker each", controls),
            ("j", f"j. listing: {a.listing_jobs:,} vs {a.listing_small:,} finished jobs, {a.listing_reps} requests each", listing),
        ):
            if ph in phases:
                step(title)
                sampler and sampler.set_phase(ph)
                out[ph] = module.run(bench)
        for ph, title, module in (
            ("k", f"k. containers: {a.k_jobs} x `true` at concurrency {a.k_concurrency}, {a.k_reps} reps;"
                  " Dockhand, Celery, RQ, docker run, engine floor", containers),
            ("l", f"l. queue path: {a.l_jobs:,} local jobs at concurrency {a.l_concurrency}; Dockhand against {a.l_peers}", queuepath),
            ("m", f"m. webhooks under load: {a.m_jobs:,} local jobs, one subscriber", hookload),
            ("n", f"n. scaling: worker processes {a.n_workers}", scaling),
        ):
            if ph in phases:
                step(title)
                sampler and sampler.set_phase(ph)
                out[ph] = module.run(bench)
    finally:
        for p in list(bench.spawned):
            bench.stop_worker(p)
    if sampler:
        sampler.set_phase("end")
        time.sleep(1.0)
        out["rss_idle_end_kib"] = idle_rss(pid)
        out["rss_hwm_kib"] = read_status_kib(pid, "VmHWM")
        sampler.stop()
        out["rss_max_by_phase_kib"] = dict(sampler.max_by_phase)
    out["machine"]["loadavg_end"] = os.getloadavg()
    out["failures"] = bench.failures
    return out


# ---------------------------------------------------------------------------
# The summary
# ---------------------------------------------------------------------------


def summary(out):
    m = out["machine"]
    L = []
    L.append("")
    L.append("Dockhand benchmark")
    L.append(f"  date {m['date']}; {m['nproc']} CPUs, {m['mem_total_mib']:.0f} MiB RAM, kernel {m['kernel']}")
    L.append(
        f"  docker {m['docker_server']}, redis-server {m['redis_server']}, "
        f"python {m['python']} + redis-py {m['redis_py']}"
    )
    L.append(
        f"  dockhand {m['dockhand_commit']}{' (src modified)' if m['dockhand_src_modified'] else ''}, "
        f"release worker pid {m['worker_pid']} --concurrency {m['worker_concurrency']}"
    )
    lc = m.get("docker_log_config") or {}
    L.append(f"  docker log driver for new containers: {lc.get('Type', '?')} {json.dumps(lc.get('Config') or {})}")
    if m.get("other_dockhand_containers_at_start"):
        L.append(
            f"  WARNING: {m['other_dockhand_containers_at_start']} other Dockhand container(s) on this Docker host"
            " at start: something else shares it"
        )
    la0, la1 = m["loadavg_start"], m.get("loadavg_end")
    L.append(
        f"  load average (1/5/15 min) at start {la0[0]:.2f}/{la0[1]:.2f}/{la0[2]:.2f}"
        + (f", at end {la1[0]:.2f}/{la1[1]:.2f}/{la1[2]:.2f}" if la1 else "")
    )
    for module in PHASES:
        L.extend(module.summary(out))

    L.append("")
    if out["failures"]:
        L.append("CHECKS FAILED:")
        L.extend(f"  - {f}" for f in out["failures"])
    else:
        L.append("all checks passed")
    return "\n".join(L)


def unwind_on_sigterm():
    """scripts/bench ends us with SIGTERM (on Ctrl-C, or when it is itself
    stopped). Python's default would end the process at once, and the workers
    a phase started would be left running: the peers' run in sessions of their
    own (see peers.py), which no signal to ours reaches. Raised as SystemExit
    instead, it unwinds through each phase's `finally`, which stops them."""

    def handler(signum, _frame):
        # Once: a second SIGTERM must not cut that clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main():
    p = argparse.ArgumentParser(
        description="Dockhand benchmark: cost per container job, log throughput, worker memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="Redis the worker uses (default $REDIS_URL)")
    p.add_argument("--worker-pid", type=int, default=int(os.environ.get("DOCKHAND_WORKER_PID", "0")) or None,
                   help="pid of the worker process, for its memory (default $DOCKHAND_WORKER_PID)")
    p.add_argument("--worker-concurrency", type=int, default=None, help="the worker's --concurrency (reported; c needs >= --sleep-jobs)")
    p.add_argument("--image", default="dockhand-busybox:latest")
    p.add_argument("--queue", default="default")
    p.add_argument("--prefix", default="dockhand", help="the worker's redis.prefix")
    p.add_argument("--jobs", type=int, default=30, help="a: jobs of `true`, and as many docker runs")
    p.add_argument("--warmup", type=int, default=1, help="a: untimed runs of each before the timed ones")
    p.add_argument("--lines", type=int, default=1_000_000, help="b: lines the log job prints (seq 1 N)")
    p.add_argument("--log-bytes", default="256m", help="b: the log job's limits.log_bytes")
    p.add_argument("--sleep-jobs", type=int, default=4, help="c: jobs run at once")
    p.add_argument("--sleep-seconds", type=int, default=5, help="c: how long each sleeps")
    p.add_argument("--job-timeout", type=float, default=60, help="longest wait for one short job (a, c)")
    p.add_argument("--log-timeout", type=float, default=900, help="longest wait for the log job (b)")
    p.add_argument("--hook-jobs", type=int, default=200, help="d: jobs submitted at once, one webhook each")
    p.add_argument("--hook-timeout", type=float, default=600, help="d: longest wait for every webhook")
    p.add_argument("--git-jobs", type=int, default=15, help="e: cached git jobs, and as many image jobs")
    p.add_argument("--git-builds", type=int, default=5, help="e: builds of a new commit, and as many docker builds")
    p.add_argument("--build-timeout", type=float, default=300, help="e: longest wait for one build")
    p.add_argument("--lease-trials", type=int, default=3, help="f: worker kills (each waits out the 60 s lease)")
    p.add_argument("--lease-seconds", type=int, default=None,
                   help="f: the workers' worker.lease_seconds (default: Dockhand's default, 60)")
    p.add_argument("--lease-timeout", type=float, default=240, help="f: longest wait for the takeover")
    p.add_argument("--retention-jobs", type=int, default=100_000, help="g: invalid_spec entries")
    p.add_argument("--retention-seconds", type=int, default=20, help="g: the g worker's jobs.retention_seconds")
    p.add_argument("--retention-concurrency", type=int, default=4, help="g: the g worker's --concurrency")
    p.add_argument("--retention-batch", type=int, default=1000, help="g: XADDs per pipeline")
    p.add_argument("--retention-timeout", type=float, default=900, help="g: longest wait for every entry to finish")
    p.add_argument("--bin", default=os.environ.get("DOCKHAND_BIN"),
                   help="the dockhand binary (d: subscriber add; f, g: workers of their own)")
    p.add_argument("--ro-jobs", type=int, default=30, help="h: jobs on each of the two workers")
    p.add_argument("--control-jobs", type=int, default=200, help="i: jobs per repetition of a variant")
    p.add_argument("--control-reps", type=int, default=5, help="i: timed repetitions of each variant (interleaved)")
    p.add_argument("--control-concurrency", type=int, default=1, help="i: --concurrency of each variant's worker")
    p.add_argument("--control-idle", type=float, default=3.0, help="i: seconds of idle workers, for their background commands")
    p.add_argument("--control-docker", action="store_true",
                   help="i: jobs run `true` in --image (default: an image not on the host, so no container starts)")
    p.add_argument("--no-control-monitor", dest="control_monitor", action="store_false",
                   help="i: no extra repetition under MONITOR (round trips vs commands inside scripts)")
    p.add_argument("--listing-jobs", type=int, default=100_000, help="j: finished jobs in the large database")
    p.add_argument("--listing-small", type=int, default=1_000, help="j: finished jobs in the small database")
    p.add_argument("--listing-reps", type=int, default=15, help="j: timed requests of each kind on each")
    p.add_argument("--listing-dbs", default="1,2", help="j: the two (empty) Redis databases to fill, large,small")
    p.add_argument("--listing-interval-ms", type=int, default=600, help="j: ms between two jobs' created_at")
    p.add_argument("--floor-bin", default=os.environ.get("DOCKHAND_FLOOR_BIN"),
                   help="k: the engine_floor bench executable (scripts/bench builds it)")
    p.add_argument("--k-jobs", type=int, default=200, help="k: container jobs per point")
    p.add_argument("--k-reps", type=int, default=3, help="k: repetitions (interleaved)")
    p.add_argument("--k-concurrency", default="1,2,4,8", help="k: concurrencies, comma-separated")
    p.add_argument("--k-timeout", type=float, default=900, help="k, n: longest wait for one point")
    p.add_argument("--celery-container-pool", default="threads", help="k: Celery's --pool for container jobs")
    p.add_argument("--celery-process-pool", default="prefork", help="l: Celery's --pool for the process jobs")
    p.add_argument("--l-jobs", type=int, default=20_000, help="l: jobs of the queue path")
    p.add_argument("--l-concurrency", type=int, default=50, help="l: Dockhand's and Celery's concurrency")
    p.add_argument("--l-rq-workers", type=int, default=8, help="l: RQ worker processes")
    p.add_argument("--l-reps", type=int, default=1, help="l: repetitions (interleaved)")
    p.add_argument("--l-peers", default="celery,rq",
                   help="l: the peers Dockhand is measured against, comma-separated (celery, rq); RQ takes ~15 min a repetition")
    p.add_argument("--l-timeout", type=float, default=1800, help="l, n: longest wait for one drain")
    p.add_argument("--m-jobs", type=int, default=10_000, help="m: local jobs, one webhook each")
    p.add_argument("--m-concurrency", type=int, default=50, help="m: the worker's concurrency")
    p.add_argument("--m-deliveries", type=int, default=10_000,
                   help="m: deliveries made due at once for the delivery-only scenario (0: skip it)")
    p.add_argument("--n-workers", default="1,2,4,8", help="n: worker process counts, comma-separated")
    p.add_argument("--n-container-jobs", type=int, default=200, help="n: container jobs per point")
    p.add_argument("--n-container-concurrency", type=int, default=4, help="n: each worker's concurrency, containers")
    p.add_argument("--n-local-jobs", type=int, default=5_000, help="n: local jobs per point")
    p.add_argument("--n-local-concurrency", type=int, default=50, help="n: each worker's concurrency, local jobs")
    p.add_argument("--plots-dir", help="write a PNG per comparison (k, l, n) into this folder")
    p.add_argument("--docs-md", help="write the summary into the generated section of this file (docs/benchmarks.md)")
    p.add_argument("--command", default="scripts/bench", help="the command line the docs section names")
    p.add_argument("--smoke", action="store_true",
                   help="every size at its smallest (the suite's check that the harness runs); sizes given explicitly still apply")
    p.add_argument("--phases", default="a,b,c,d,e,f,g,h,i,j,k,l,m,n", help="which phases to run, comma-separated")
    p.add_argument("--keep-log", action="store_true", help="b: keep the stored log stream (default: deleted after the check)")
    p.add_argument("--json", metavar="PATH", help="also write every raw figure to PATH as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress counter on stderr")
    args = p.parse_args()
    if args.smoke:
        explicit = {a.split("=")[0][2:].replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
        for k, v in SMOKE.items():
            if k not in explicit:
                setattr(args, k, v)
    if not args.redis_url:
        p.error("--redis-url (or REDIS_URL) is required")
    if args.jobs < 1 or args.lines < 1 or args.sleep_jobs < 1:
        p.error("--jobs, --lines and --sleep-jobs must be at least 1")
    bad = set(args.phases.split(",")) - set("abcdefghijklmn")
    if bad:
        p.error(f"unknown phase(s) {sorted(bad)}; use a to n")

    try:
        import redis
    except ImportError:
        print("bench.py: needs redis-py (Debian: apt-get install python3-redis)", file=sys.stderr)
        return 2

    unwind_on_sigterm()
    try:
        out = run(Bench(args, redis))
    except (Fatal, redis.RedisError, OSError) as e:
        print(f"bench.py: {e}", file=sys.stderr)
        return 2
    text = summary(out)
    print(text)
    if args.plots_dir:
        for path in report.plots(out, args.plots_dir):
            print(f"plot written to {path}")
    if args.docs_md:
        report.update_docs(args.docs_md, report.section(out, text, args.command))
        print(f"results section of {args.docs_md} updated")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
            f.write("\n")
        print(f"raw results written to {args.json}")
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
