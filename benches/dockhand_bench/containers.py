"""Phase k. Container jobs against the peers.

`--k-jobs` (200) `true` jobs in --image at each concurrency of `--k-concurrency`
(1,2,4,8), `--k-reps` (3) repetitions, for five systems:

- dockhand: a worker of our own (--bin) with `--concurrency C`;
- celery: Celery + docker-py, the threads pool with C threads, Redis broker;
- rq: RQ + docker-py, C `rq worker` processes;
- docker: `docker run --rm --network none IMAGE true` from `xargs -P C`;
- floor: the engine floor, benches/engine_floor.rs (--floor-bin), a bare bollard
  create/start/wait/remove loop with C tasks.

Every container has no network. Dockhand's, the floor's and the peers' also
have `NetworkDisabled`, with which the engine skips the network hook it runs
(a process of its own) at each start; `docker run` has no flag for it, so the
docker loop pays that hook.

Dockhand, Celery and RQ are timed by peers.drain (workers up, warmed with C jobs,
paused, the 200 enqueued, resumed; until the last finishes); docker and the floor
around their process. Within a repetition the systems run one after the other,
the order rotated by repetition and concurrency, so that all see the same
background load. Reported: jobs/s, median (min-max) over the repetitions, and
the ratios of the medians Dockhand/floor, /Celery, /RQ, against the targets
(>= 1, >= 1.2, >= 1.5).
"""

import json
import subprocess
import time

from . import peers
from .harness import Fatal, median, progress, progress_done

SYSTEMS = ("dockhand", "celery", "rq", "docker", "floor")
TARGETS = {"floor": 1.0, "celery": 1.2, "rq": 1.5}


def docker_loop(image, n, c, timeout):
    t0 = time.perf_counter()
    p = subprocess.run(
        ["sh", "-c", f"seq {n} | xargs -P {c} -I{{}} docker run --rm --network none {image} true"],
        capture_output=True, text=True, timeout=timeout)
    t = time.perf_counter() - t0
    if p.returncode != 0:
        raise Fatal(f"k: docker run loop failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return {"jobs": n, "seconds": t, "jobs_per_s": n / t}


def floor(bench, n, c, timeout):
    a = bench.args
    if not a.floor_bin:
        raise Fatal("k: needs --floor-bin (the engine_floor bench target)")
    p = subprocess.run([a.floor_bin, "--jobs", str(n), "--concurrency", str(c), "--image", a.image],
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise Fatal(f"k: engine_floor failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(bench):
    a = bench.args
    n, reps = a.k_jobs, a.k_reps
    concs = [int(x) for x in a.k_concurrency.split(",")]
    res = {"jobs": n, "reps": reps, "concurrency": concs, "celery_pool": a.celery_container_pool, "points": {}}
    for ci, c in enumerate(concs):
        runners = {}
        try:
            for name in ("dockhand", "celery", "rq"):
                rn = peers.RUNNERS[name](bench, "container", f"{bench.run_tag}-k{c}")
                runners[name] = rn
                rn.start(c)
            samples = {s: [] for s in SYSTEMS}
            for rep in range(reps):
                k = (rep + ci) % len(SYSTEMS)
                for s in SYSTEMS[k:] + SYSTEMS[:k]:
                    progress(a, f"k: concurrency {c}, repetition {rep + 1}/{reps}, {s}      ")
                    if s in runners:
                        x = peers.drain(runners[s], n, a.k_timeout, warm=c if rep == 0 else 0)
                    elif s == "docker":
                        x = docker_loop(a.image, n, c, a.k_timeout)
                    else:
                        x = floor(bench, n, c, a.k_timeout)
                    samples[s].append(x)
        finally:
            for rn in runners.values():
                rn.stop()
        res["points"][str(c)] = samples
    progress_done(a)
    res["table"] = table(res)
    return res


def table(res):
    """Per concurrency: each system's median/min/max jobs/s, and the ratios."""
    rows = []
    for c in res["concurrency"]:
        pt = res["points"][str(c)]
        row = {"concurrency": c}
        for s in SYSTEMS:
            v = [x["jobs_per_s"] for x in pt[s]]
            row[s] = {"median": median(v), "min": min(v), "max": max(v)}
        d = row["dockhand"]["median"]
        row["ratios"] = {p: d / row[p]["median"] for p in ("floor", "celery", "rq", "docker")}
        row["targets_met"] = {p: row["ratios"][p] >= t for p, t in TARGETS.items()}
        rows.append(row)
    return rows


def fmt(x):
    return f"{x['median']:.1f} ({x['min']:.1f}-{x['max']:.1f})"


def summary(out):
    k = out.get("k")
    if not k:
        return []
    L = ["", f"k. Container jobs/s: {k['jobs']} x `true` per point, {k['reps']} repetitions, median (min-max);"
             f" Celery pool {k['celery_pool']}"]
    L.append("  conc  " + "".join(f"{s:>22}" for s in SYSTEMS) + "   D/floor  D/celery  D/rq  D/docker")
    for row in k["table"]:
        r = row["ratios"]
        L.append(f"  {row['concurrency']:>4}  " + "".join(f"{fmt(row[s]):>22}" for s in SYSTEMS)
                 + f"   {r['floor']:6.2f}x  {r['celery']:7.2f}x {r['rq']:5.2f}x  {r['docker']:6.2f}x")
    met = [f"{p} (>= {t}x): {'met' if all(row['targets_met'][p] for row in k['table']) else 'MISSED'}"
           for p, t in TARGETS.items()]
    L.append("  targets at every concurrency: " + "; ".join(met))
    return L
