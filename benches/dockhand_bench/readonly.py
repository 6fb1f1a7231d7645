"""Phase h. Read-only root filesystem.

Two workers of our own (--bin, --concurrency 1 each), each on a queue of its
own (bench-h-default-<run> and bench-h-read_only-<run>), the second with
policy.read_only_rootfs (DOCKHAND__POLICY__READ_ONLY_ROOTFS=true: a /dockhand
volume and a /tmp tmpfs per container). --ro-jobs jobs `true` on each (after
--warmup untimed ones), interleaved, alternating which goes first, timed from
just before XADD to the terminal event on dockhand:events. Medians and their
ratio.
"""

from .harness import Fatal, dist, fmt_dist, fmt_ratio, hget_str, median, progress, progress_done


def run(bench):
    a = bench.args
    res = {"jobs": a.ro_jobs, "default_s": [], "read_only_s": [], "failures": []}
    streams = {}
    procs = []
    for kind, extra in (("default", {}), ("read_only", {"DOCKHAND__POLICY__READ_ONLY_ROOTFS": "true"})):
        queue = f"bench-h-{kind}-{bench.run_tag}"
        p, _ = bench.spawn_worker(queue, f"bench-h-{kind}-{bench.run_tag}", 1, env_extra=extra)
        streams[kind] = bench.stream_key(queue)
        procs.append(p)
    for stream in streams.values():
        if not bench.wait_consumers(stream, 0, procs):
            raise Fatal("h: the workers made no consumer group within 30 s")
    ps = bench.events_pubsub()
    try:
        for i in range(a.warmup + a.ro_jobs):
            order = ("default", "read_only") if i % 2 == 0 else ("read_only", "default")
            for kind in order:
                jid = f"bench-{bench.run_tag}-h-{kind}-{i}"
                spec = {"id": jid, "image": a.image, "command": ["true"]}
                x = bench.run_spec(ps, spec, a.job_timeout, stream=streams[kind])
                if i < a.warmup:
                    continue
                if x["total_s"] is None or x["kind"] != "job.completed":
                    res["failures"].append({"id": jid, "event": x["kind"], "error": hget_str(x["hash"], "error")})
                    continue
                res[f"{kind}_s"].append(x["total_s"])
            if i >= a.warmup:
                progress(a, f"h: {i - a.warmup + 1}/{a.ro_jobs}")
    finally:
        ps.close()
        for p in procs:
            bench.stop_worker(p)
    progress_done(a)
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
    L = [""]
    L.append("h. Read-only root filesystem: `true`, submit -> terminal event, two workers of our own (concurrency 1)")
    d_, r_ = h.get("default") or {}, h.get("read_only") or {}
    L.append(f"  default worker                       {fmt_dist(d_)}")
    L.append(f"  policy.read_only_rootfs = true       {fmt_dist(r_)}")
    L.append(f"  ratio read-only / default (medians)  {fmt_ratio(h.get('ratio_median'))}")
    return L
