"""Phase g. Redis memory per finished job.

A worker of our own (--bin, --retention-concurrency) on a queue of its own,
bench-g-<run>, with jobs.retention_seconds = --retention-seconds and
dead_max_len 1000. --retention-jobs entries that are refused at validation
(invalid_spec: they end `aborted` with no container, so the figure is Redis'
cost per job, not Docker's) are XADDed in pipelines of --retention-batch.
Redis' used_memory is read before, sampled every 0.5 s for the peak, when all
are terminal, and after the retention has run out (+ a SCAN through the
keyspace, so that expiry is not left to Redis' sampling); bytes per job are the
differences over the jobs finished.
"""

import json
import time

from .harness import Fatal, hget_str, progress, progress_done, secs


def used_memory(bench):
    return int(bench.r.info("memory")["used_memory"])


def run(bench):
    a = bench.args
    n = a.retention_jobs
    queue = f"bench-g-{bench.run_tag}"
    stream = bench.stream_key(queue)
    dead = f"{bench.prefix}:{{{queue}}}:dead"
    env = {"DOCKHAND__JOBS__RETENTION_SECONDS": str(a.retention_seconds), "DOCKHAND__JOBS__DEAD_MAX_LEN": "1000"}
    p, log = bench.spawn_worker(queue, f"bench-g-{bench.run_tag}", a.retention_concurrency, env_extra=env)
    res = {"jobs": n, "retention_seconds": a.retention_seconds, "worker_concurrency": a.retention_concurrency,
           "worker_log": log}
    try:
        bench.wait_consumers(stream, 1, [p])
        time.sleep(1.0)
        # The group must exist before the XADDs (it is created at 0 anyway).
        res["used_before"] = used_memory(bench)
        res["dbsize_before"] = bench.r.dbsize()
        body = json.dumps({"image": "x", "command": []})
        t0 = time.time()
        first_id = last_id = None
        for start in range(0, n, a.retention_batch):
            pipe = bench.r.pipeline(transaction=False)
            for _ in range(min(a.retention_batch, n - start)):
                pipe.xadd(stream, {"job": body})
            ids = pipe.execute()
            first_id = first_id or ids[0]
            last_id = ids[-1]
        res["xadd_s"] = time.time() - t0
        peak = res["used_before"]
        deadline = time.monotonic() + a.retention_timeout
        done = False
        peak_sample = None
        while time.monotonic() < deadline:
            u = used_memory(bench)
            xl = bench.r.xlen(stream)
            if u >= peak:
                peak = u
                peak_sample = {"used": u, "dbsize": bench.r.dbsize(), "stream_xlen": xl,
                               "t": time.time() - t0}
            if xl == 0:
                done = True
                break
            if p.poll() is not None:
                raise Fatal(f"the phase g worker exited ({p.returncode}); log {log}")
            progress(a, f"g: {n - xl}/{n} finished")
            time.sleep(0.5)
        progress_done(a)
        t_done = time.time()
        res["all_terminal"] = done
        res["left_in_stream"] = bench.r.xlen(stream)
        res["submit_to_all_terminal_s"] = t_done - t0
        res["jobs_per_s"] = (n - res["left_in_stream"]) / (t_done - t0)
        res["used_at_all_terminal"] = used_memory(bench)
        res["used_peak_sampled"] = max(peak, res["used_at_all_terminal"])
        res["peak_sample"] = peak_sample
        res["dbsize_at_all_terminal"] = bench.r.dbsize()
        # Job hashes still there when the last entry finished: with a retention
        # shorter than the run, the first ones have expired by then.
        res["job_keys_alive_at_all_terminal"] = res["dbsize_at_all_terminal"] - res["dbsize_before"]
        res["dead_xlen"] = bench.r.xlen(dead)
        sample = {}
        for eid in (first_id, last_id):
            h = bench.r.hgetall(bench.job_key(eid.decode() if isinstance(eid, bytes) else eid, queue))
            sample[eid.decode() if isinstance(eid, bytes) else eid] = {
                "status": hget_str(h, "status"), "reason": hget_str(h, "reason"),
                "ttl": bench.r.ttl(bench.job_key(eid.decode() if isinstance(eid, bytes) else eid, queue)),
                "error": (hget_str(h, "error") or "")[:120]}
        res["sample_jobs"] = sample
        res["memory_usage_one_hash"] = bench.r.memory_usage(bench.job_key(last_id.decode(), queue), samples=0)
        # Wait out the retention, then touch every key so that expiry is not
        # left to Redis' sampling.
        wait = max(0.0, a.retention_seconds + 5 - (time.time() - t_done))
        time.sleep(wait)
        cur, scanned = 0, 0
        while True:
            cur, keys = bench.r.scan(cur, count=10000)
            scanned += len(keys)
            if cur == 0:
                break
        time.sleep(1.0)
        res["scan_keys_seen"] = scanned
        res["used_after_retention"] = used_memory(bench)
        res["dbsize_after_retention"] = bench.r.dbsize()
        res["dead_xlen_after"] = bench.r.xlen(dead)
        res["memory_usage_stream"] = bench.r.memory_usage(stream, samples=0)
        res["memory_usage_dead"] = bench.r.memory_usage(dead, samples=0)
    finally:
        bench.stop_worker(p)
    done_n = n - res.get("left_in_stream", n)
    if done_n:
        res["bytes_per_job_peak"] = (res["used_peak_sampled"] - res["used_before"]) / done_n
        res["bytes_per_job_at_all_terminal"] = (res["used_at_all_terminal"] - res["used_before"]) / done_n
        res["bytes_per_job_residue"] = (res["used_after_retention"] - res["used_before"]) / done_n
    alive = res.get("job_keys_alive_at_all_terminal")
    if alive:
        res["bytes_per_live_job_at_all_terminal"] = (res["used_at_all_terminal"] - res["used_before"]) / alive
    if alive is not None and alive < done_n:
        res["note"] = (f"only {alive:,} of {done_n:,} job hashes were still there when the last entry finished"
                       f" (retention {a.retention_seconds} s < {res['submit_to_all_terminal_s']:.0f} s run): the"
                       " peak is not 'all jobs at once'; see bytes per live job")
    if not res.get("all_terminal"):
        bench.failures.append(f"g: {res.get('left_in_stream')} of {n} entries not finished within {a.retention_timeout:.0f} s")
    return res


def mb(b):
    return "n/a" if b is None else f"{b / 1048576:.1f} MiB"


def summary(out):
    g = out.get("g")
    if not g:
        return []
    L = [""]
    L.append(f"g. Redis memory per finished job ({g['jobs']:,} invalid_spec entries; retention {g['retention_seconds']} s, dead_max_len 1000)")
    L.append(f"  used_memory before / peak / all terminal / after retention  {mb(g.get('used_before'))} / {mb(g.get('used_peak_sampled'))}"
             f" / {mb(g.get('used_at_all_terminal'))} / {mb(g.get('used_after_retention'))}")
    L.append(f"  keys (DBSIZE) before / all terminal / after               {g.get('dbsize_before')} / {g.get('dbsize_at_all_terminal')} / {g.get('dbsize_after_retention')}")
    bp, br_ = g.get("bytes_per_job_peak"), g.get("bytes_per_job_residue")
    ps_ = g.get("peak_sample") or {}
    L.append(f"  peak sample at {secs(ps_.get('t'))}: {ps_.get('dbsize')} keys, {ps_.get('stream_xlen')} entries still in the jobs stream")
    L.append(f"  (peak - before) / jobs              {'n/a' if bp is None else f'{bp:,.0f}'} B  (MEMORY USAGE of one job hash {g.get('memory_usage_one_hash')} B)")
    bl = g.get("bytes_per_live_job_at_all_terminal")
    L.append(f"  bytes per live finished job          {'n/a' if bl is None else f'{bl:,.0f}'} B  (at all terminal: (used - before) / {g.get('job_keys_alive_at_all_terminal')} job keys alive)")
    if g.get("note"):
        L.append(f"  NOTE: {g['note']}")
    L.append(f"  bytes per job left after retention   {'n/a' if br_ is None else f'{br_:,.1f}'}"
             f"  (dead stream {g.get('dead_xlen_after')} entries, {g.get('memory_usage_dead')} B; jobs stream {g.get('memory_usage_stream')} B)")
    L.append(f"  entries finished/s                   {g.get('jobs_per_s', 0):,.0f}  ({g.get('submit_to_all_terminal_s', 0):.1f} s for all; XADD took {g.get('xadd_s', 0):.1f} s)")
    return L
