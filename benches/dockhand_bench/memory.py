"""Phase c. Worker memory.

VmRSS of the worker (/proc/<--worker-pid>/status) when idle, before any job and
after all phases, and the highest value seen (sampled every 20 ms by the
RssSampler that benches/bench.py runs for the whole run) while --sleep-jobs jobs
`sleep --sleep-seconds` run at once. The jobs are checked to have really
overlapped (every start before the first finish), which needs the worker's
--concurrency to be at least --sleep-jobs. Also the worker's VmHWM for the whole
run.
"""

import time

from .harness import TERMINAL_STATUSES, fmt_mib, hget_str, parse_ts


def run(bench, sampler):
    a = bench.args
    k = a.sleep_jobs
    ids = [f"bench-{bench.run_tag}-sleep-{i}" for i in range(k)]
    sampler.set_phase("c")
    for jid in ids:
        bench.submit({"id": jid, "image": a.image, "command": ["sleep", str(a.sleep_seconds)]})
    deadline = time.monotonic() + a.sleep_seconds + a.job_timeout * 2
    hashes = {}
    while time.monotonic() < deadline and len(hashes) < k:
        for jid in ids:
            if jid in hashes:
                continue
            h = bench.r.hgetall(bench.job_key(jid))
            if hget_str(h, "status") in TERMINAL_STATUSES:
                hashes[jid] = h
        bench.check_worker()
        time.sleep(0.1)
    sampler.set_phase("after-c")
    res = {"jobs": k, "sleep_seconds": a.sleep_seconds, "finished": len(hashes)}
    starts = [parse_ts(hget_str(h, "started_at")) for h in hashes.values()]
    ends = [parse_ts(hget_str(h, "finished_at")) for h in hashes.values()]
    statuses = [hget_str(h, "status") for h in hashes.values()]
    res["statuses"] = statuses
    # All ran at once if every start came before the first finish.
    if len(hashes) == k and None not in starts and None not in ends:
        res["all_overlapped"] = max(starts) < min(ends)
        res["first_start_to_last_finish_s"] = max(ends) - min(starts)
    else:
        res["all_overlapped"] = False
    res["peak_rss_kib"] = sampler.max_by_phase.get("c")
    res["samples"] = sampler.samples_by_phase.get("c", 0)
    if len(hashes) < k or any(s != "completed" for s in statuses):
        bench.failures.append(f"c: {k - statuses.count('completed')} of {k} sleep job(s) did not complete")
    if not res["all_overlapped"]:
        bench.failures.append(f"c: the {k} sleep jobs did not all run at the same time (worker concurrency?)")
    return res


def summary(out):
    """The idle figures are there whenever the worker's pid was given, even
    when phase c itself did not run."""
    c = out.get("c")
    if "rss_idle_start_kib" not in out:
        return []
    L = [""]
    L.append("c. Worker memory (VmRSS of the worker process)")
    L.append(f"  idle, before any job                 {fmt_mib(out['rss_idle_start_kib'])}")
    if c:
        L.append(
            f"  peak with {c['jobs']} x `sleep {c['sleep_seconds']}` at once     {fmt_mib(c['peak_rss_kib'])}"
            f"  ({c['samples']} samples every 20 ms; ran at once: {'yes' if c['all_overlapped'] else 'NO'})"
        )
    L.append(f"  idle, after all phases               {fmt_mib(out.get('rss_idle_end_kib'))}")
    L.append(f"  VmHWM (high-water mark, whole run)   {fmt_mib(out.get('rss_hwm_kib'))}")
    return L
