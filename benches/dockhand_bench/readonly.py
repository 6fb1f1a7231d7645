"""Phase h. Read-only root filesystem.

Two workers of our own (--bin, --concurrency 1 each), each on a queue of its
own (bench-h-default-<run> and bench-h-read_only-<run>), the second with
policy.read_only_rootfs (DOCKHAND__POLICY__READ_ONLY_ROOTFS=true: a /dockhand
volume and a /tmp tmpfs per container). --ro-jobs jobs `true` on each (after
--warmup untimed ones), interleaved, alternating which goes first, timed from
just before XADD to the terminal event on dockhand:events. Medians and their
ratio.
"""

import json
import sys
import time

from .harness import Fatal, dist, hget_str, median, ms



def run(bench):
    a = bench.args
    res = {"jobs": a.ro_jobs, "default_s": [], "read_only_s": [], "failures": []}
    queues = {}
    procs = []
    for kind, extra in (("default", {}), ("read_only", {"DOCKHAND__POLICY__READ_ONLY_ROOTFS": "true"})):
        queue = f"bench-h-{kind}-{bench.run_tag}"
        p, log = bench.spawn_worker(queue, f"bench-h-{kind}-{bench.run_tag}", 1, env_extra=extra)
        queues[kind] = (queue, f"{bench.prefix}:{{{queue}}}:jobs")
        procs.append(p)
    for _, stream in queues.values():
        if not bench.wait_consumers(stream, 0, procs):
            raise Fatal("h: the workers made no consumer group within 30 s")
    ps = bench.events_pubsub()
    try:
        for i in range(a.warmup + a.ro_jobs):
            order = ("default", "read_only") if i % 2 == 0 else ("read_only", "default")
            for kind in order:
                jid = f"bench-{bench.run_tag}-h-{kind}-{i}"
                while ps.get_message(timeout=0):
                    pass
                t0 = time.perf_counter()
                bench.r.xadd(queues[kind][1], {"job": json.dumps({"id": jid, "image": a.image, "command": ["true"]})})
                t, ev = bench.wait_events(ps, jid, ("job.completed", "job.aborted"), a.job_timeout)
                if i < a.warmup:
                    continue
                if t is None or ev != "job.completed":
                    h = bench.r.hgetall(bench.job_key(jid))
                    res["failures"].append({"id": jid, "event": ev, "error": hget_str(h, "error")})
                    continue
                res[f"{kind}_s"].append(t - t0)
            if a.progress and i >= a.warmup:
                print(f"    h: {i - a.warmup + 1}/{a.ro_jobs}", file=sys.stderr, end="\r", flush=True)
    finally:
        ps.close()
        for p in procs:
            bench.stop_worker(p)
    if a.progress:
        print(file=sys.stderr)
    res["default"] = dist(res["default_s"])
    res["read_only"] = dist(res["read_only_s"])
    dm, rm = median(res["default_s"]), median(res["read_only_s"])
    res["ratio_median"] = (rm / dm) if dm and rm else None
    if res["failures"]:
        bench.failures.append(f"h: {len(res['failures'])} job(s) did not complete")
    return res



def summary(out):
    h = out.get("h")
    if not h:
        return []
    L = []
    L.append("")
    L.append(f"h. Read-only root filesystem: `true`, submit -> terminal event, two workers of our own (concurrency 1)")
    d_, r_ = h.get("default") or {}, h.get("read_only") or {}
    L.append(f"  default worker                       median {ms(d_.get('median'))}  (p10 {ms(d_.get('p10'))}, p90 {ms(d_.get('p90'))}, n={d_.get('n', 0)})")
    L.append(f"  policy.read_only_rootfs = true       median {ms(r_.get('median'))}  (p10 {ms(r_.get('p10'))}, p90 {ms(r_.get('p90'))}, n={r_.get('n', 0)})")
    rr = h.get("ratio_median")
    L.append(f"  ratio read-only / default (medians)  {'n/a' if rr is None else f'{rr:.2f}x'}")
    return L
