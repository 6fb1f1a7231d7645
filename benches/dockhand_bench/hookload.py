"""Phase m. Webhooks under load, decoupled from job speed. Two scenarios.

Job-driven (the figures at the top level of m's results): `--m-jobs` (10,000)
local-executor jobs `true` on a worker of our own (`--m-concurrency` 50, DOCKHAND__EXECUTORS__LOCAL__ENABLED=true), with one
subscriber: phase d's receiver (webhooks.HookReceiver, 127.0.0.1, checks every
Standard Webhooks signature), registered with `dockhand subscriber add` and
removed after. Jobs that need no container finish far faster than phase d's, so
the delivery path, not Docker, sets the pace.

Measured: signed deliveries/s (first to last receipt, the first delivery per
job), receipt latency p50/p99 (receipt time - the job hash's finished_at, the
terminal event's time, ms resolution, same clock), and the deliveries whose
signature did not verify (must be 0: a failed check). On a small machine the
jobs, not the deliveries, set this rate (each job forks a process).

Delivery only (`m["delivery"]`, drain() below): deliveries made due at once
through the product and sent by one delivery loop (`dockhand webhooks
deliver`), so that nothing but delivery is timed. Under a Redis prefix of its
own (its dead-letter stream holds only these), a worker that does NOT allow
127.0.0.1 runs `--m-deliveries` (10,000) local jobs `true` with one subscriber:
the SSRF guard refuses each delivery and dead-letters it at once (no packet is
sent). Then, twice:

A. Burst: `dockhand webhooks replay --dead` makes all of them due at once (it
   writes each one's due time into its hash, `next_at`) and the loop drains
   them to a receiver that is up. deliveries/s = deliveries / (last receipt -
   first due time): what one loop can send. Latency (receipt - next_at) is
   reported, but is mostly the wait in the backlog (the k-th of a burst waits
   k / rate).
B. Wave: as many new dead letters (a second subscriber) replayed to a receiver
   that is down (its port refuses connections): every first attempt fails and
   is retried 5 s +-20 % later (webhooks.retry_schedule_seconds), so the
   retries come due spread over a few seconds, at a rate the summary gives
   (offered). The receiver comes up 3.5 s after the replay, before any retry
   is due. Latency = receipt time - the retry's due time (`next_at`, written
   with the retry; ms, same clock), for the deliveries sent on their retry.

Both receivers are VerifyingReceiver (below): each signature is checked with
the `standardwebhooks` package (PyPI; not our code). Bad signatures must be 0.
Targets: >= 2,000/s (A), p99 < 50 ms (B).
"""

import asyncio
import os
import socket
import subprocess
import tempfile
import threading
import time

from . import peers
from .harness import CpuMeter, Fatal, hget_str, parse_ts, progress, progress_done, quantile
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
    if a.m_deliveries:
        res["delivery"] = drain(bench)
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
    ] + delivery_summary(m.get("delivery"))


def delivery_summary(d):
    if not d:
        return []
    ms = lambda v: "n/a" if v is None else f"{v * 1000:.1f} ms"  # noqa: E731
    rate = lambda v: "n/a" if v is None else f"{v:,.0f}/s"  # noqa: E731
    b, w, t = d["burst"], d["wave"], d["targets_met"]
    c = b["cpu"]
    per = lambda v: "n/a" if v is None or not b["distinct"] else f"{v / b['distinct'] * 1e6:.0f} µs"  # noqa: E731
    lat = lambda x: (f"p50 {ms(x['latency_p50_s'])}, p99 {ms(x['latency_p99_s'])}, min {ms(x['latency_min_s'])},"  # noqa: E731
                     f" max {ms(x['latency_max_s'])}")
    return [
        f"  delivery only, one `dockhand webhooks deliver`, every signature checked with standardwebhooks:",
        f"  burst: {d['deliveries']:,} dead letters made due at once by `dockhand webhooks replay --dead`"
        f" ({b['replay_s']:.2f} s; due times within {ms(b['due_spread_s'])})",
        f"    delivered {b['distinct']:,} (received {b['received']:,}, duplicates {b['duplicates']});"
        f" bad signatures {b['bad_signatures']}",
        f"    deliveries/s {rate(b['deliveries_per_s'])} (first due to last receipt;"
        f" target 2,000: {'met' if t['deliveries_per_s'] else 'MISSED'})",
        f"    CPU per delivery: the delivery loop {per(c['worker_cpu_s'])}, Redis {per(c['redis_cpu_s'])},"
        f" the bench process (the receiver, mostly) {per(c['receiver_cpu_s'])}",
        f"    receipt - due ({b['due_from']}), the wait in the backlog included: {lat(b)}",
        f"  wave: {d['deliveries']:,} more replayed to a receiver that is down, up 3.5 s later; each retry due"
        f" 5 s +-20 % after its failed attempt",
        f"    delivered {w['distinct']:,} (on their retry {w['retried']:,}, at the first attempt {w['first_attempt']:,};"
        f" duplicates {w['duplicates']}); bad signatures {w['bad_signatures']}",
        f"    retries due within {ms(w['due_spread_s'])} (offered {rate(w['offered_per_s'])}), delivered at"
        f" {rate(w['deliveries_per_s'])}",
        f"    receipt - the retry's due time (next_at): {lat(w)} (target p99 < 50 ms: {'met' if t['p99'] else 'MISSED'})",
    ]


# ---------------------------------------------------------------------------
# Delivery only
# ---------------------------------------------------------------------------


class VerifyingReceiver:
    """An HTTP/1.1 receiver on 127.0.0.1 (a free port), asyncio in a thread of
    its own, connections kept alive. Each POST is checked with the reference
    verifier, `standardwebhooks.Webhook(secret).verify(body, headers)` (the
    signature over id, timestamp and body, and the timestamp's tolerance), and
    answered 204; `records` gets (receipt time, webhook-id, verified), the time
    taken once the body is read. Nothing of Dockhand's is used to check.

    With listen=False its port is bound but refuses connections (a receiver that
    is down) until listen()."""

    def __init__(self, listen=True):
        from standardwebhooks.webhooks import Webhook

        self._webhook = Webhook
        self.hook = None
        self.records = []
        self.server = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        if listen:
            self.listen()

    def listen(self):
        async def start():
            self.server = await asyncio.start_server(self._conn, sock=self.sock, backlog=1024)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def set_secret(self, secret):
        self.hook = self._webhook(secret)

    async def _conn(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    k, sep, v = line.partition(":")
                    if sep:
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                t = time.time()
                try:
                    self.hook.verify(body, headers)
                    ok = True
                except Exception:  # noqa: BLE001 -- any failure to verify is a bad signature
                    ok = False
                self.records.append((t, headers.get("webhook-id", ""), ok))
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def count(self):
        return len(self.records)

    def stop(self):
        async def close():
            if self.server:
                self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.sock.close()


class _Scenario:
    """The delivery-only scenario's processes and CLI calls, under a Redis prefix
    of its own (so that its dead-letter stream holds only its deliveries)."""

    def __init__(self, bench):
        self.bench, self.a = bench, bench.args
        self.tag = f"bench-m-{bench.run_tag}"
        self.prefix = self.tag
        self.queue = "m-delivery"
        env = dict(os.environ)
        env.pop("DOCKHAND__WEBHOOKS__ALLOW_NETWORKS", None)
        env["DOCKHAND__REDIS__PREFIX"] = self.prefix
        self.refusing = env  # the SSRF guard refuses 127.0.0.1
        self.allowing = {**env, "DOCKHAND__WEBHOOKS__ALLOW_NETWORKS": "127.0.0.1/32"}
        self.procs = []
        self.dead_key = f"{self.prefix}:webhooks:{{outbox}}:dead"
        self.made = 0

    def cli(self, *args, timeout=120):
        a = self.a
        p = subprocess.run([a.bin, "--redis-url", a.redis_url, *args], capture_output=True, text=True,
                           env=self.refusing, timeout=timeout)
        if p.returncode != 0:
            raise Fatal(f"m: dockhand {' '.join(args)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
        return p.stdout

    def subscribe(self, name, receiver):
        out = self.cli("subscriber", "add", name, f"http://127.0.0.1:{receiver.port}/hook")
        secret = next((line.split(": ", 1)[1].strip() for line in out.splitlines() if line.startswith("secret: ")), None)
        if not secret:
            raise Fatal(f"m: no secret in `dockhand subscriber add`'s output: {out!r}")
        receiver.set_secret(secret)

    def spawn(self, argv, environ, what):
        a = self.a
        fd, path = tempfile.mkstemp(prefix=f"dockhand-bench-m-{what}.", suffix=".log")
        p = subprocess.Popen([a.bin, "--redis-url", a.redis_url, *argv], stdout=fd, stderr=subprocess.STDOUT,
                             env=environ, start_new_session=True)
        os.close(fd)
        self.procs.append((p, path))
        return p

    def check(self):
        for p, path in self.procs:
            if p.poll() is not None:
                tail = open(path, errors="replace").read()[-2000:]
                raise Fatal(f"m: dockhand (pid {p.pid}) exited with {p.returncode}; its log ends:\n{tail}")

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs[:] = [x for x in self.procs if x[0] is not p]

    def stop_all(self):
        for p, _ in list(self.procs):
            self.stop(p)

    def dead_letters(self, n):
        """n local jobs `true` on a worker that does not allow 127.0.0.1: each
        job's delivery is refused by the SSRF guard and dead-lettered at once."""
        a, r = self.a, self.bench.r
        worker = self.spawn(["worker", "--queue", self.queue, "--id", f"{self.tag}-jobs",
                             "--concurrency", str(a.m_concurrency)],
                            {**self.refusing, "DOCKHAND__EXECUTORS__LOCAL__ENABLED": "true"}, "jobs")
        stream = f"{self.prefix}:{{{self.queue}}}:jobs"
        for lo in range(0, n, 1000):
            pipe = r.pipeline(transaction=False)
            for i in range(self.made + lo, self.made + min(n, lo + 1000)):
                pipe.xadd(stream, {"job": f'{{"id":"{self.tag}-{i}","executor":"local","command":["true"]}}'})
            pipe.execute()
        self.made += n
        deadline = time.monotonic() + a.hook_timeout
        while r.xlen(self.dead_key) < n:
            self.check()
            if time.monotonic() > deadline:
                raise Fatal(f"m: only {r.xlen(self.dead_key)} of {n} deliveries dead-lettered in {a.hook_timeout:.0f} s")
            progress(a, f"m: {r.xlen(self.dead_key)}/{n} deliveries made (and dead-lettered)")
            time.sleep(0.2)
        progress_done(a)
        self.stop(worker)

    def deliver(self):
        """`dockhand webhooks deliver`: one delivery loop, allowed to reach 127.0.0.1."""
        p = self.spawn(["webhooks", "deliver"], self.allowing, "deliver")
        time.sleep(1.0)  # its start-up, so that it is not timed
        self.check()
        return p

    def wait_received(self, rec, n, what):
        a = self.a
        deadline = time.monotonic() + a.hook_timeout
        while rec.count() < n and time.monotonic() < deadline:
            self.check()
            progress(a, f"m: {rec.count()}/{n} {what}")
            time.sleep(0.05)
        time.sleep(0.5)  # late duplicates, if any
        progress_done(a)

    def hashes(self, ids, *fields):
        pipe = self.bench.r.pipeline(transaction=False)
        for wid in ids:
            pipe.hmget(f"{self.prefix}:webhooks:{{outbox}}:{wid}", *fields)
        return dict(zip(ids, pipe.execute()))

    def cleanup(self):
        r = self.bench.r
        keys = list(r.scan_iter(match=f"{self.prefix}:*", count=1000))
        for lo in range(0, len(keys), 1000):
            r.unlink(*keys[lo:lo + 1000])


def _received(rec, n):
    """Figures of what `rec` got: the first receipt per webhook-id, and checks."""
    records = sorted(rec.records)
    first = {}
    for t, wid, _ in records:
        first.setdefault(wid, t)
    return first, {
        "received": len(records), "distinct": len(first), "duplicates": len(records) - len(first),
        "bad_signatures": sum(1 for _, _, ok in records if not ok),
    }


def _latency(res, lat):
    res.update({
        "latency_p50_s": quantile(lat, 0.5), "latency_p99_s": quantile(lat, 0.99),
        "latency_max_s": max(lat) if lat else None, "latency_min_s": min(lat) if lat else None,
        "latency_n": len(lat),
    })


def drain(bench):
    """The delivery-only scenario (see the module's docstring)."""
    a = bench.args
    n = a.m_deliveries
    sc = _Scenario(bench)
    burst = VerifyingReceiver()
    wave = VerifyingReceiver(listen=False)
    res = {"deliveries": n}
    try:
        # A. The burst: n dead letters replayed at once, the receiver up.
        sc.subscribe("m-burst", burst)
        sc.dead_letters(n)
        deliver = sc.deliver()
        cpu = CpuMeter(bench.r, deliver.pid).start()
        own0 = sum(os.times()[:2])
        t0 = time.time()
        sc.cli("webhooks", "replay", "--dead")
        replay_s = time.time() - t0
        sc.wait_received(burst, n, "delivered (burst)")
        used = cpu.stop()
        used["receiver_cpu_s"] = sum(os.times()[:2]) - own0
        sc.stop(deliver)
        sc.cli("subscriber", "rm", "m-burst")  # B's jobs are for the other receiver only
        first, checks = _received(burst, n)
        due = {w: int(v[0]) / 1000 for w, v in sc.hashes(list(first), "next_at").items() if v[0]}
        # A Dockhand whose replay writes no `next_at` (before 2026-12-01): the
        # replay's start stands in for every due time.
        due_from = "next_at" if due else "replay start"
        due = due or {w: t0 for w in first}
        lat = [first[w] - due[w] for w in first if w in due]
        span = (max(first.values()) - min(due.values())) if first and due else None
        res["burst"] = b = {**checks, "replay_s": replay_s, "due_from": due_from, "cpu": used,
                            "due_spread_s": (max(due.values()) - min(due.values())) if due else None,
                            "deliveries_per_s": len(first) / span if span else None}
        _latency(b, lat)

        # B. The wave: n more dead letters replayed at once to a receiver that is
        # down; each first attempt fails and is retried after 5 s +-20 %
        # (webhooks.retry_schedule_seconds), so the retries come due spread over
        # a few seconds; the receiver is up 3.5 s after the replay, before the
        # first retry can be due.
        sc.subscribe("m-wave", wave)
        sc.dead_letters(n)
        deliver = sc.deliver()
        t0 = time.time()
        sc.cli("webhooks", "replay", "--dead")
        time.sleep(max(0.0, t0 + 3.5 - time.time()))
        wave.listen()
        sc.wait_received(wave, n, "delivered (wave)")
        sc.stop(deliver)
        first, checks = _received(wave, n)
        h = sc.hashes(list(first), "next_at", "attempts")
        # Only deliveries sent on their retry: next_at is the retry's due time.
        retried = {w: int(v[0]) / 1000 for w, v in h.items() if v[0] and int(v[0]) / 1000 > t0 + 1}
        lat = [first[w] - retried[w] for w in retried]
        ts = sorted(first[w] for w in retried)
        res["wave"] = w = {**checks, "retried": len(retried), "first_attempt": len(first) - len(retried),
                           "due_spread_s": (max(retried.values()) - min(retried.values())) if retried else None,
                           "deliveries_per_s": (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else None}
        w["offered_per_s"] = len(retried) / w["due_spread_s"] if w["due_spread_s"] else None
        _latency(w, lat)
    finally:
        sc.stop_all()
        burst.stop()
        wave.stop()
        sc.cleanup()
    b, w = res["burst"], res["wave"]
    res["targets_met"] = {
        "deliveries_per_s": (b["deliveries_per_s"] or 0) >= 2000,
        "p99": w["latency_p99_s"] is not None and w["latency_p99_s"] < 0.050,
    }
    for name, x in (("burst", b), ("wave", w)):
        if x["bad_signatures"]:
            bench.failures.append(f"m ({name}): {x['bad_signatures']} delivery(ies) failed the standardwebhooks check")
        if x["distinct"] < n:
            bench.failures.append(f"m ({name}): only {x['distinct']} of {n} deliveries arrived within {a.hook_timeout:.0f} s")
    return res
