"""Phase a. Cost per container job.

--jobs jobs running `true`, one after another, each timed from just before XADD
to the moment its terminal event arrives on dockhand:events. Interleaved with
the same number of `docker run --rm --network none IMAGE true`, timed around the
CLI process, so that both see the same background noise. Medians and their
ratio; also the job hashes' finished_at - started_at and started_at -
created_at, and the CPU the worker and redis-server used per job.
"""

import subprocess
import time

from .harness import TERMINAL_STATUSES, CpuMeter, dist, fmt_dist, fmt_ratio, hget_str, median, ms, parse_ts, progress, progress_done


def run_docker(image, timeout):
    """One `docker run --rm --network none IMAGE true`: (seconds, None) or (None, error)."""
    cmd = ["docker", "run", "--rm", "--network", "none", image, "true"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    t1 = time.perf_counter()
    if p.returncode != 0:
        return None, f"exit {p.returncode}: {p.stderr.decode(errors='replace').strip()[:200]}"
    return t1 - t0, None


def run_dockhand_job(bench, pubsub, job_id, command, timeout):
    """Submit, wait for the terminal event. (seconds, event type, hash)."""
    x = bench.run_spec(pubsub, {"id": job_id, "image": bench.args.image, "command": command}, timeout)
    kind, h = x["kind"], x["hash"]
    if x["total_s"] is None and hget_str(h, "status") in TERMINAL_STATUSES:
        # Finished but the event was not seen: say so, do not count the time.
        kind = "no-event:" + hget_str(h, "status")
    return x["total_s"], kind, h


def run(bench):
    a = bench.args
    res = {
        "jobs": a.jobs,
        "warmup": a.warmup,
        "dockhand_latency_s": [],
        "docker_run_s": [],
        "hash_run_s": [],  # finished_at - started_at
        "hash_pickup_s": [],  # started_at - created_at
        "dockhand_failures": [],
        "docker_failures": [],
    }
    ps = bench.events_pubsub()
    cpu = CpuMeter(bench.r, a.worker_pid)
    try:
        for i in range(a.warmup + a.jobs):
            warm = i < a.warmup
            # Alternate which of the two goes first, so neither always
            # follows the other (page cache, Docker's own bookkeeping).
            order = ("dockhand", "docker") if i % 2 == 0 else ("docker", "dockhand")
            if i == a.warmup:
                cpu.start()
            for which in order:
                if which == "dockhand":
                    jid = f"bench-{bench.run_tag}-true-{i}"
                    dt, kind, h = run_dockhand_job(bench, ps, jid, ["true"], a.job_timeout)
                    status = hget_str(h, "status")
                    if warm:
                        continue
                    if dt is None or kind != "job.completed" or status != "completed":
                        res["dockhand_failures"].append(
                            {"id": jid, "event": kind, "status": status,
                             "reason": hget_str(h, "reason"), "error": hget_str(h, "error")}
                        )
                        continue
                    res["dockhand_latency_s"].append(dt)
                    c, s, f = (parse_ts(hget_str(h, k)) for k in ("created_at", "started_at", "finished_at"))
                    if s is not None and f is not None:
                        res["hash_run_s"].append(f - s)
                    if c is not None and s is not None:
                        res["hash_pickup_s"].append(s - c)
                else:
                    dt, err = run_docker(a.image, a.job_timeout)
                    if warm:
                        continue
                    if dt is None:
                        res["docker_failures"].append(err)
                    else:
                        res["docker_run_s"].append(dt)
            if not warm:
                progress(a, f"a: {i - a.warmup + 1}/{a.jobs}")
        res["cpu"] = cpu.stop()
    finally:
        ps.close()
    progress_done(a)
    dm, bm = median(res["dockhand_latency_s"]), median(res["docker_run_s"])
    res["dockhand"] = dist(res["dockhand_latency_s"])
    res["docker"] = dist(res["docker_run_s"])
    res["hash_run"] = dist(res["hash_run_s"])
    res["hash_pickup"] = dist(res["hash_pickup_s"])
    res["ratio_median"] = (dm / bm) if dm and bm else None
    res["overhead_median_s"] = (dm - bm) if dm and bm else None
    if res["dockhand_failures"]:
        bench.failures.append(f"a: {len(res['dockhand_failures'])} dockhand job(s) did not complete")
    if res["docker_failures"]:
        bench.failures.append(f"a: {len(res['docker_failures'])} docker run(s) failed")
    return res


def summary(out):
    a = out.get("a")
    if not a:
        return []
    L = [""]
    L.append(f"a. Cost per container job (`true`, {a['jobs']} each, sequential, interleaved)")
    d, b = a["dockhand"] or {}, a["docker"] or {}
    L.append(f"  dockhand submit -> terminal event   {fmt_dist(d)}")
    L.append(f"  docker run --rm --network none      {fmt_dist(b)}")
    L.append(
        f"  ratio dockhand / docker (medians)   {fmt_ratio(a['ratio_median'])}"
        f"  (difference {ms(a['overhead_median_s'])})"
    )
    hr, hp = a["hash_run"] or {}, a["hash_pickup"] or {}
    L.append(f"  job hash finished_at - started_at   median {ms(hr.get('median'))}")
    L.append(f"  job hash started_at - created_at    median {ms(hp.get('median'))}")
    cpu = a.get("cpu") or {}
    if cpu.get("worker_cpu_s") is not None and a["jobs"]:
        L.append(
            f"  CPU per dockhand job                worker {ms(cpu['worker_cpu_s'] / a['jobs'])},"
            f" redis-server {ms(cpu['redis_cpu_s'] / a['jobs'])}"
        )
    if a["dockhand_failures"] or a["docker_failures"]:
        L.append(f"  FAILED: dockhand {a['dockhand_failures'][:3]}, docker {a['docker_failures'][:3]}")
    return L
