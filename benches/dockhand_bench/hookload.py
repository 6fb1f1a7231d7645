"""Phase m. Webhooks under load, decoupled from job speed.

`--m-jobs` (10,000) local-executor jobs `true` on a worker of our own
(`--m-concurrency` 50, DOCKHAND__EXECUTORS__LOCAL__ENABLED=true), with one
subscriber: phase d's receiver (webhooks.HookReceiver, 127.0.0.1, checks every
Standard Webhooks signature), registered with `dockhand subscriber add` and
removed after. Jobs that need no container finish far faster than phase d's, so
the delivery path, not Docker, sets the pace.

Measured: signed deliveries/s (first to last receipt, the first delivery per
job), receipt latency p50/p99 (receipt time - the job hash's finished_at, the
terminal event's time, ms resolution, same clock), and the deliveries whose
signature did not verify (must be 0: a failed check). Targets: >= 2,000/s,
p99 < 50 ms.
"""

import time

from . import peers
from .harness import Fatal, hget_str, parse_ts, progress, progress_done, quantile
from .webhooks import HookReceiver


def run(bench):
    a = bench.args
    n = a.m_jobs
    rec = HookReceiver()
    url = f"http://127.0.0.1:{rec.port}/hook"
    name = f"bench-m-{bench.run_tag}"
    rc, out, err = bench.dockhand_cli("subscriber", "add", name, url)
    secret = next((line.split(": ", 1)[1].strip() for line in out.splitlines() if line.startswith("secret: ")), None)
    if rc != 0 or not secret:
        rec.stop()
        raise Fatal(f"m: dockhand subscriber add failed ({rc}): {err.strip() or out.strip()}")
    rec.set_secret(secret)
    d = peers.Dockhand(bench, "process", f"{bench.run_tag}-m")
    res = {"jobs": n, "concurrency": a.m_concurrency}
    try:
        d.start(a.m_concurrency)
        t0 = time.time()
        d.enqueue(n)
        prefix = f"bench-{d.tag}-process-"
        deadline = time.monotonic() + a.hook_timeout
        while time.monotonic() < deadline:
            got = len(rec.job_ids())
            if got >= n:
                break
            d.check()
            progress(a, f"m: {got}/{n} delivered")
            time.sleep(0.2)
        time.sleep(0.5)  # late duplicates, if any
    finally:
        bench.dockhand_cli("subscriber", "rm", name)
        rec.stop()
        d.stop()
        progress_done(a)
    recs = [x for x in rec.records if x["job"] and x["job"].startswith(prefix)]
    first = {}
    for x in sorted(recs, key=lambda x: x["t"]):
        first.setdefault(x["job"], x)
    lat = []
    pipe = bench.r.pipeline(transaction=False)
    ids = list(first)
    for jid in ids:
        pipe.hget(bench.job_key(jid, d.queue), "finished_at")
    for jid, f in zip(ids, pipe.execute()):
        f = parse_ts(f)
        if f is not None:
            lat.append(first[jid]["t"] - f)
    ts = sorted(x["t"] for x in first.values())
    span = ts[-1] - ts[0] if len(ts) > 1 else None
    res.update({
        "deliveries": len(recs), "jobs_delivered": len(first),
        "bad_signatures": sum(1 for x in rec.records if not x["sig_ok"]),
        "deliveries_per_s": (len(ts) - 1) / span if span else None,
        "submit_to_last_receipt_s": ts[-1] - t0 if ts else None,
        "latency_p50_s": quantile(lat, 0.5), "latency_p99_s": quantile(lat, 0.99),
        "latency_max_s": max(lat) if lat else None, "latency_n": len(lat),
    })
    res["targets_met"] = {
        "deliveries_per_s": (res["deliveries_per_s"] or 0) >= 2000,
        "p99": res["latency_p99_s"] is not None and res["latency_p99_s"] < 0.050,
    }
    if res["bad_signatures"]:
        bench.failures.append(f"m: {res['bad_signatures']} delivery(ies) with a signature that did not verify")
    if res["jobs_delivered"] < n:
        bench.failures.append(f"m: only {res['jobs_delivered']} of {n} jobs got a webhook within {a.hook_timeout:.0f} s")
    return res


def summary(out):
    m = out.get("m")
    if not m:
        return []
    ms = lambda v: "n/a" if v is None else f"{v * 1000:.1f} ms"  # noqa: E731
    dps = m["deliveries_per_s"]
    t = m["targets_met"]
    return [
        "", f"m. Webhooks under load: {m['jobs']:,} local-executor jobs `true` (concurrency {m['concurrency']}), one subscriber",
        f"  jobs with a webhook {m['jobs_delivered']:,} of {m['jobs']:,} (deliveries {m['deliveries']:,});"
        f" bad signatures {m['bad_signatures']}",
        f"  signed deliveries/s {'n/a' if dps is None else f'{dps:,.0f}'} (target 2,000: {'met' if t['deliveries_per_s'] else 'MISSED'})",
        f"  receipt - finished_at: p50 {ms(m['latency_p50_s'])}, p99 {ms(m['latency_p99_s'])}"
        f" (target < 50 ms: {'met' if t['p99'] else 'MISSED'}), max {ms(m['latency_max_s'])}, n={m['latency_n']:,}",
    ]
