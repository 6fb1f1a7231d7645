"""Phase d. Webhooks.

A threaded HTTP receiver on 127.0.0.1 in this process (HookReceiver below),
registered with `dockhand subscriber add` (so d needs --bin, and the worker must
allow 127.0.0.1: DOCKHAND__WEBHOOKS__ALLOW_NETWORKS=127.0.0.1/32, which
scripts/bench sets), checks every Standard Webhooks signature (HMAC-SHA256 over
"<id>.<ts>.<body>", inline). --hook-jobs jobs `true` are submitted at once (one
pipeline); measured: deliveries/s (first to last receipt) against jobs
finished/s (from the job hashes' finished_at), and p50/p99 of receipt time - the
job's finished_at. The subscriber is removed again with `dockhand subscriber rm`.
"""

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .harness import Fatal, hget_str, ms, parse_ts, progress, progress_done, quantile, secs


class HookReceiver:
    """Threaded HTTP server on 127.0.0.1 (a free port). Records, per POST, the
    arrival time (time.time(), after the body is read), the webhook id, type, job
    id, and whether the Standard Webhooks signature verified: base64 of
    HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>"), key = the base64
    part of the `whsec_...` secret; any of the space-separated `v1,<sig>` may match."""

    def __init__(self):
        self.records = []
        self.lock = threading.Lock()
        self.key = None
        recv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                t = time.time()
                wid = self.headers.get("webhook-id") or ""
                wts = self.headers.get("webhook-timestamp") or ""
                sig = self.headers.get("webhook-signature") or ""
                ok = recv.verify(wid, wts, body, sig)
                try:
                    ev = json.loads(body)
                    typ, job = ev.get("type"), (ev.get("data") or {}).get("id")
                except ValueError:
                    typ = job = None
                with recv.lock:
                    recv.records.append({"t": t, "wid": wid, "type": typ, "job": job, "sig_ok": ok})
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set_secret(self, secret):
        self.key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)

    def verify(self, wid, wts, body, header):
        if self.key is None or not wid or not wts:
            return False
        mac = hmac.new(self.key, f"{wid}.{wts}.".encode() + body, hashlib.sha256).digest()
        want = base64.b64encode(mac).decode()
        for part in header.split():
            v, _, s = part.partition(",")
            if v == "v1" and hmac.compare_digest(s, want):
                return True
        return False

    def job_ids(self):
        with self.lock:
            return {x["job"] for x in self.records if x["job"]}

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def run(bench):
    a = bench.args
    n = a.hook_jobs
    if not a.bin:
        raise Fatal("phase d needs --bin (for `dockhand subscriber add`)")
    rec = HookReceiver()
    url = f"http://127.0.0.1:{rec.port}/hook"
    name = f"bench-d-{bench.run_tag}"
    rc, out, err = bench.dockhand_cli("subscriber", "add", name, url)
    secret = None
    for line in out.splitlines():
        if line.startswith("secret: "):
            secret = line.split(": ", 1)[1].strip()
    if rc != 0 or not secret:
        rec.stop()
        raise Fatal(f"dockhand subscriber add failed ({rc}): {err.strip() or out.strip()}")
    rec.set_secret(secret)
    res = {"jobs": n, "subscriber": name, "url": url}
    prefix = f"bench-{bench.run_tag}-hook-"
    ids = [f"{prefix}{i}" for i in range(n)]
    try:
        pipe = bench.r.pipeline(transaction=False)
        t_submit_wall = time.time()
        for jid in ids:
            pipe.xadd(bench.jobs_key, {"job": json.dumps({"id": jid, "image": a.image, "command": ["true"]})})
        pipe.execute()
        deadline = time.monotonic() + a.hook_timeout
        want = set(ids)
        while time.monotonic() < deadline:
            if want <= rec.job_ids():
                break
            bench.check_worker()
            progress(a, f"d: {len(rec.job_ids() & want)}/{n} delivered")
            time.sleep(0.2)
        time.sleep(1.0)  # late duplicates / retries, if any
    finally:
        rc2, _, err2 = bench.dockhand_cli("subscriber", "rm", name)
        rec.stop()
        progress_done(a)
    recs = [x for x in rec.records if x["job"] and x["job"].startswith(prefix)]
    res["deliveries_received"] = len(rec.records)
    res["deliveries_for_bench_jobs"] = len(recs)
    res["bad_signatures"] = sum(1 for x in rec.records if not x["sig_ok"])
    res["distinct_webhook_ids"] = len({x["wid"] for x in recs})
    res["jobs_delivered"] = len({x["job"] for x in recs})
    res["types"] = {}
    for x in recs:
        res["types"][x["type"]] = res["types"].get(x["type"], 0) + 1
    first = {}
    for x in sorted(recs, key=lambda x: x["t"]):
        first.setdefault(x["job"], x)
    lat, fins, statuses = [], [], {}
    for jid, x in first.items():
        h = bench.r.hgetall(bench.job_key(jid))
        st = hget_str(h, "status")
        statuses[st] = statuses.get(st, 0) + 1
        f = parse_ts(hget_str(h, "finished_at"))
        if f is not None:
            fins.append(f)
            lat.append(x["t"] - f)
    ts = sorted(x["t"] for x in first.values())
    span = (ts[-1] - ts[0]) if len(ts) > 1 else None
    res["first_to_last_receipt_s"] = span
    res["deliveries_per_s"] = (len(ts) / span) if span else None
    fins.sort()
    fspan = (fins[-1] - fins[0]) if len(fins) > 1 else None
    res["jobs_finished_first_to_last_s"] = fspan
    res["jobs_finished_per_s"] = (len(fins) / fspan) if fspan else None
    res["submit_to_last_receipt_s"] = (ts[-1] - t_submit_wall) if ts else None
    res["receipt_minus_finished_at"] = {
        "n": len(lat), "p50": quantile(lat, 0.5), "p99": quantile(lat, 0.99),
        "min": min(lat) if lat else None, "max": max(lat) if lat else None,
    }
    res["statuses"] = statuses
    res["subscriber_rm_rc"] = rc2
    if res["bad_signatures"]:
        bench.failures.append(f"d: {res['bad_signatures']} delivery(ies) with a signature that did not verify")
    if res["jobs_delivered"] < n:
        bench.failures.append(f"d: only {res['jobs_delivered']} of {n} jobs got a webhook within {a.hook_timeout:.0f} s")
    if statuses.get("completed", 0) != len(first):
        bench.failures.append(f"d: job statuses {statuses}")
    return res


def summary(out):
    d = out.get("d")
    if not d:
        return []
    L = [""]
    L.append(f"d. Webhooks ({d['jobs']} x `true` submitted at once; receiver on 127.0.0.1)")
    r = d["receipt_minus_finished_at"]
    dps, jps = d["deliveries_per_s"], d["jobs_finished_per_s"]
    L.append(f"  jobs with a webhook                  {d['jobs_delivered']} of {d['jobs']}  (deliveries {d['deliveries_for_bench_jobs']}, types {d['types']})")
    L.append(f"  signatures that did not verify       {d['bad_signatures']} of {d['deliveries_received']}")
    L.append(f"  signed deliveries/s (first-to-last)  {'n/a' if dps is None else f'{dps:.2f}'}"
             f"  ({d['jobs_delivered']} in {secs(d['first_to_last_receipt_s'])})")
    L.append(f"  jobs finished/s (finished_at span)   {'n/a' if jps is None else f'{jps:.2f}'}"
             f"  ratio deliveries/jobs {'n/a' if not (dps and jps) else f'{dps / jps:.2f}'}")
    L.append(f"  receipt - finished_at                p50 {ms(r['p50'])}, p99 {ms(r['p99'])}  (min {ms(r['min'])}, max {ms(r['max'])}, n={r['n']})")
    return L
