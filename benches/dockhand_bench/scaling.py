"""Phase n. The scaling curve: jobs/s against the number of worker processes.

For each count W of `--n-workers` (1,2,4,8), W Dockhand workers of our own on
one queue, timed by peers.drain (up, warmed, paused, backlog, resumed):

- containers: `--n-container-jobs` (200) `true` jobs in --image, each worker
  `--concurrency` `--n-container-concurrency` (4);
- queue path: `--n-local-jobs` (5,000) local-executor jobs `true`, each worker
  `--concurrency` `--n-local-concurrency` (50).

Per point: jobs/s, Redis's own CPU over the window as a share of one core (INFO
cpu: redis-server is one thread, so near 1.0 it is the limit), Redis
commands/s (INFO stats total_commands_processed, the bench's own polls
included: one XLEN per 20 ms), and the workers' CPU as a share of the
machine's cores (near 1.0: the CPU is the limit).
"""

import os

from . import peers
from .harness import progress, progress_done


def point(bench, kind, w, conc, n, timeout):
    d = peers.Dockhand(bench, kind, f"{bench.run_tag}-n{w}")
    try:
        d.start(conc, workers=w)
        x = peers.drain(d, n, timeout, warm=min(n, conc * w))
    finally:
        d.stop()
    t = x["seconds"]
    x.update({
        "workers": w,
        "redis_cpu_share": x["redis_cpu_s"] / t,
        "redis_commands_per_s": x["redis_commands"] / t,
        "workers_cpu_share": x["workers_cpu_s"] / t / (os.cpu_count() or 1),
    })
    return x


def run(bench):
    a = bench.args
    ws = [int(x) for x in a.n_workers.split(",")]
    res = {"workers": ws, "cpus": os.cpu_count(), "container": [], "process": [],
           "container_jobs": a.n_container_jobs, "container_concurrency": a.n_container_concurrency,
           "local_jobs": a.n_local_jobs, "local_concurrency": a.n_local_concurrency}
    for w in ws:
        progress(a, f"n: {w} worker(s), containers      ")
        res["container"].append(point(bench, "container", w, a.n_container_concurrency, a.n_container_jobs, a.k_timeout))
        progress(a, f"n: {w} worker(s), queue path      ")
        res["process"].append(point(bench, "process", w, a.n_local_concurrency, a.n_local_jobs, a.l_timeout))
    progress_done(a)
    return res


def summary(out):
    n = out.get("n")
    if not n:
        return []
    L = ["", f"n. Scaling with worker processes ({n['cpus']} CPUs): containers {n['container_jobs']} jobs,"
             f" --concurrency {n['container_concurrency']} each; queue path {n['local_jobs']:,} local jobs,"
             f" --concurrency {n['local_concurrency']} each"]
    L.append("  workers  kind         jobs/s   Redis CPU (of 1 core)   Redis cmds/s   workers' CPU (of all cores)")
    for kind, label in (("container", "containers"), ("process", "queue path")):
        for x in n[kind]:
            L.append(f"  {x['workers']:>7}  {label:<10} {x['jobs_per_s']:8.1f}   {x['redis_cpu_share']:21.2f}"
                     f"   {x['redis_commands_per_s']:12,.0f}   {x['workers_cpu_share']:27.2f}")
    return L
