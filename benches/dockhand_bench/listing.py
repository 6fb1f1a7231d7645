"""Phase j. The job listing and the dashboard with many finished jobs in Redis.

First three real jobs run on a worker of our own (queue bench-j-<run>): `true`
(completed), `exit 3` (aborted, exit_code) and `sleep 30` with
limits.timeout_seconds 1 (aborted, timeout). Their job hashes, as the worker
wrote them, are the templates. Then two empty Redis databases of the same
server (--listing-dbs, default 1 and 2) are filled, in pipelines, with
--listing-jobs (100,000) and --listing-small (1,000) finished jobs made from
those templates (id, queue, times, entry and the id inside spec and event
replaced), with exactly the keys a worker writes for a finished job
(src/state.rs, src/listing.rs):

  <prefix>:{<q>}:job:<id>               the hash, EXPIRE the retention left
  <prefix>:{<q>}:job:<id>:log           the template's log stream (RESTOREd), if it has one
  <prefix>:{<q>}:index:all              ZADD NX, score created_at in ms
  <prefix>:{<q>}:index:status:<completed|aborted>
  <prefix>:{<q>}:index:reason:<r>       for an aborted job

One job in 10 is a timeout, one in 20 an exit_code, the rest completed; one in
100 is in a second queue, bench-j-rare-<run>, whose listing filtered by status
must read through the status index (a sparse filter). Created one every
--listing-interval-ms before now, so all are inside the default retention.
Each queue also gets its stream and consumer group, as a worker makes them.

Two `dockhand serve` (--bin) then run side by side, one on each database, and
the same requests go to both, interleaved, --listing-reps times, each timed
around one HTTP request on a kept-alive connection (body read): GET
/jobs?limit=50, a page deep (the cursor of the job in the middle of
the main queue's index:all), /jobs?status=aborted&reason=timeout, the sparse filter, /queues,
/workers and / (the dashboard's page; its overview then polls /queues and
/workers every 2 s). Then each request again, alone, with INFO commandstats
around it: Redis commands per request, by command. MEMORY USAGE (SAMPLES 0)
of every index key gives the indexes' memory. The two databases are flushed at
the end (they were empty at the start; the phase refuses a non-empty one).
"""

import http.client
import json
import os
import subprocess
import tempfile
import time
from urllib.parse import urlparse, urlunparse

from .harness import Fatal, dist, fmt_ratio, hget_str, median, ms, progress, progress_done
from .controls import commandstats, diff


def db_url(url, db):
    u = urlparse(url)
    return urlunparse(u._replace(path=f"/{db}"))


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def templates(bench):
    """Runs the three template jobs; returns {kind: (hash dict, log dump or None)}."""
    a = bench.args
    queue = f"bench-j-{bench.run_tag}"
    p, log = bench.spawn_worker(queue, f"bench-j-{bench.run_tag}", 3)
    out = {}
    try:
        if not bench.wait_consumers(bench.stream_key(queue), 0, [p]):
            raise Fatal("j: the worker made no consumer group within 30 s")
        ps = bench.events_pubsub()
        try:
            for kind, command, limits in (
                ("completed", ["true"], None),
                ("exit_code", ["sh", "-c", "echo failing; exit 3"], None),
                ("timeout", ["sleep", "30"], {"timeout_seconds": 1}),
            ):
                spec = {"id": f"bench-{bench.run_tag}-j-{kind}", "image": a.image, "command": command}
                if limits:
                    spec["limits"] = limits
                x = bench.run_spec(ps, spec, a.job_timeout, stream=bench.stream_key(queue))
                h = {k.decode(): v for k, v in x["hash"].items()}
                want = {"completed": ("completed", ""), "exit_code": ("aborted", "exit_code"),
                        "timeout": ("aborted", "timeout")}[kind]
                got = (hget_str(x["hash"], "status"), hget_str(x["hash"], "reason") or "")
                if got != want:
                    raise Fatal(f"j: template job {kind} ended {got}, not {want}; worker log {log}")
                logkey = bench.job_key(spec["id"], queue) + ":log"
                dump = bench.r.dump(logkey) if bench.r.exists(logkey) else None
                out[kind] = (h, dump)
        finally:
            ps.close()
    finally:
        bench.stop_worker(p)
    return out


def fill(bench, r, n, tmpl, queue, rare, interval_ms, batch):
    """Writes n finished jobs into the database of `r`, as a worker would have."""
    pre = bench.prefix
    retention = 604800
    now_ms = int(time.time() * 1000) - 60_000
    for q in (queue, rare):
        r.xgroup_create(f"{pre}:{{{q}}}:jobs", "dockhand", id="0", mkstream=True)
    for start in range(0, n, batch):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + batch)):
            kind = "timeout" if i % 10 == 3 else "exit_code" if i % 20 == 7 else "completed"
            t, logdump = tmpl[kind]
            q = rare if i % 100 == 42 else queue
            created = now_ms - (n - i) * interval_ms
            jid = f"{created}-{i % 1000}"
            old_id = t["id"].decode()
            shift = created - int(t["created_ms"])
            h = dict(t)
            h["id"], h["queue"], h["entry"] = jid, q, jid
            for f in ("created_at", "started_at", "finished_at"):
                v = t.get(f, b"").decode()
                if v:
                    h[f] = iso_shift(v, shift)
            h["created_ms"] = str(int(t["created_ms"]) + shift)
            for f in ("spec", "event"):
                if f in t:
                    h[f] = t[f].decode().replace(old_id, jid).replace(t["queue"].decode(), q)
            key = f"{pre}:{{{q}}}:job:{jid}"
            pipe.hset(key, mapping=h)
            ttl = max(60, retention - (now_ms - created) // 1000)
            pipe.expire(key, ttl)
            if logdump is not None:
                pipe.restore(f"{key}:log", ttl * 1000, logdump, replace=True)
            pipe.zadd(f"{pre}:{{{q}}}:index:all", {jid: created}, nx=True)
            status, reason = t["status"].decode(), t.get("reason", b"").decode()
            pipe.zadd(f"{pre}:{{{q}}}:index:status:{status}", {jid: created})
            if reason:
                pipe.zadd(f"{pre}:{{{q}}}:index:reason:{reason}", {jid: created})
        pipe.execute()
        progress(bench.args, f"j: {min(n, start + batch):,}/{n:,} jobs written")
    progress_done(bench.args)


def iso_shift(s, shift_ms):
    from datetime import datetime, timezone
    t = datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000 + shift_ms
    d = datetime.fromtimestamp(t / 1000, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t) % 1000:03d}Z"


def index_memory(r, prefix):
    out = {}
    for k in r.scan_iter(match=f"{prefix}:{{*}}:index:*", count=1000):
        out[k.decode()] = {"bytes": r.memory_usage(k, samples=0), "members": r.zcard(k)}
    return out


class Server:
    """One `dockhand serve` on a free loopback port, with a kept-alive connection."""

    def __init__(self, bench, url, tag):
        self.port = free_port()
        fd, self.log = tempfile.mkstemp(prefix=f"dockhand-bench-serve-{tag}.", suffix=".log")
        self.p = subprocess.Popen([bench.args.bin, "--redis-url", url, "serve", "--listen", f"127.0.0.1:{self.port}"],
                                  stdout=fd, stderr=subprocess.STDOUT)
        os.close(fd)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise Fatal(f"j: dockhand serve exited with {self.p.returncode}; log {self.log}")
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.get("/healthz")
                return
            except (OSError, http.client.HTTPException):
                time.sleep(0.1)
        raise Fatal(f"j: dockhand serve did not answer within 30 s; log {self.log}")

    def get(self, path):
        """(seconds, status, body bytes)."""
        t0 = time.perf_counter()
        try:
            self.conn.request("GET", path)
            res = self.conn.getresponse()
            body = res.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            raise
        return time.perf_counter() - t0, res.status, body

    def stop(self):
        self.conn.close()
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)


def run(bench):
    a = bench.args
    if not a.bin:
        raise Fatal("phase j needs --bin (the dockhand binary)")
    dbs = [int(x) for x in a.listing_dbs.split(",")]
    sizes = {"large": a.listing_jobs, "small": a.listing_small}
    clients = {}
    for name, db in zip(("large", "small"), dbs):
        r = bench.redis.Redis.from_url(db_url(a.redis_url, db), socket_timeout=60)
        if r.dbsize():
            raise Fatal(f"j: Redis database {db} is not empty; pick others with --listing-dbs")
        clients[name] = r
    queue, rare = f"bench-j-{bench.run_tag}", f"bench-j-rare-{bench.run_tag}"
    res = {"sizes": sizes, "dbs": dbs, "reps": a.listing_reps, "requests": {}, "failures": []}
    servers = {}
    try:
        step_t = time.perf_counter()
        tmpl = templates(bench)
        res["template_fields"] = sorted(tmpl["completed"][0])
        res["template_has_log"] = {k: v[1] is not None for k, v in tmpl.items()}
        for name, r in clients.items():
            t0 = time.perf_counter()
            fill(bench, r, sizes[name], tmpl, queue, rare, a.listing_interval_ms, 1000)
            res[f"fill_{name}_s"] = time.perf_counter() - t0
            res[f"dbsize_{name}"] = r.dbsize()
            res[f"index_memory_{name}"] = index_memory(r, bench.prefix)
        res["setup_s"] = time.perf_counter() - step_t
        for name, db in zip(("large", "small"), dbs):
            servers[name] = Server(bench, db_url(a.redis_url, db), name)
        # A page deep: the cursor of the job in the middle of the main queue's index:all.
        deep = {}
        for name, r in clients.items():
            mid = r.zrevrange(f"{bench.prefix}:{{{queue}}}:index:all", sizes[name] // 2, sizes[name] // 2, withscores=True)
            deep[name] = f"{int(mid[0][1])}:{queue}/{mid[0][0].decode()}"
        requests = [
            ("jobs_first", lambda s: "/jobs?limit=50"),
            ("jobs_deep", lambda s: f"/jobs?limit=50&cursor={deep[s]}"),
            ("aborted_timeout", lambda s: "/jobs?status=aborted&reason=timeout"),
            ("sparse_filter", lambda s: f"/jobs?queue={rare}&status=completed"),
            ("queues", lambda s: "/queues"),
            ("workers", lambda s: "/workers"),
            ("dashboard", lambda s: "/"),
        ]
        for key, _ in requests:
            res["requests"][key] = {"large_s": [], "small_s": [], "rows": {}}
        # Warm-up: one of each on each.
        for key, path in requests:
            for s in ("large", "small"):
                servers[s].get(path(s))
        res["loadavg_before"] = os.getloadavg()
        for rep in range(a.listing_reps):
            for key, path in requests:
                order = ("large", "small") if rep % 2 == 0 else ("small", "large")
                for s in order:
                    dt, status, body = servers[s].get(path(s))
                    rq = res["requests"][key]
                    if status != 200:
                        res["failures"].append({"request": key, "size": s, "status": status, "body": body[:200].decode(errors="replace")})
                        continue
                    rq[f"{s}_s"].append(dt)
                    if key.startswith("jobs") or key in ("aborted_timeout", "sparse_filter"):
                        page = json.loads(body)
                        rq["rows"][s] = len(page.get("jobs") or [])
                        rq.setdefault("next", {})[s] = page.get("next")
                    rq.setdefault("bytes", {})[s] = len(body)
            progress(a, f"j: {rep + 1}/{a.listing_reps}")
        progress_done(a)
        res["loadavg_after"] = os.getloadavg()
        # Redis commands per request (alone; the server counts for every db).
        for key, path in requests:
            for s in ("large", "small"):
                before = commandstats(bench.r)
                k = 5
                for _ in range(k):
                    servers[s].get(path(s))
                d = diff(commandstats(bench.r), before)
                res["requests"][key].setdefault("commands", {})[s] = {c: v / k for c, v in d.items()}
    finally:
        for s in servers.values():
            s.stop()
        for r in clients.values():
            r.flushdb()
            r.close()
    for key, rq in res["requests"].items():
        rq["large"], rq["small"] = dist(rq["large_s"]), dist(rq["small_s"])
        lm, sm = median(rq["large_s"]), median(rq["small_s"])
        rq["ratio"] = (lm / sm) if lm and sm else None
    for name in sizes:
        mem = res[f"index_memory_{name}"]
        res[f"index_bytes_{name}"] = sum(m["bytes"] or 0 for m in mem.values())
    if res["failures"]:
        bench.failures.append(f"j: {len(res['failures'])} request(s) did not answer 200")
    return res


def summary(out):
    j = out.get("j")
    if not j:
        return []
    L = [""]
    L.append(f"j. Listing and dashboard: {j['sizes']['large']:,} vs {j['sizes']['small']:,} finished jobs"
             f" (Redis dbs {j['dbs'][0]} and {j['dbs'][1]}), two `dockhand serve`, {j['reps']} requests each, interleaved")
    L.append("  request            large (median, p90)       small (median, p90)       ratio   commands/request large | small")
    for key, rq in j["requests"].items():
        la, sm = rq.get("large") or {}, rq.get("small") or {}
        cl = rq.get("commands", {}).get("large") or {}
        cs = rq.get("commands", {}).get("small") or {}
        top = lambda c: ", ".join(f"{k} {v:g}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])[:4])  # noqa: E731
        L.append(f"  {key:<17}  {ms(la.get('median')):>10} ({ms(la.get('p90')):>10})   {ms(sm.get('median')):>10} ({ms(sm.get('p90')):>10})"
                 f"   {fmt_ratio(rq.get('ratio')):>6}   {sum(cl.values()):g} ({top(cl)}) | {sum(cs.values()):g}")
        if rq.get("rows"):
            L.append(f"  {'':<17}  rows {rq['rows']}, next page {'yes' if (rq.get('next') or {}).get('large') else 'no'} (large)")
    for name in ("large", "small"):
        b = j.get(f"index_bytes_{name}")
        n = j["sizes"][name]
        L.append(f"  index memory, {name}: {b / 1048576:.1f} MiB in {len(j.get(f'index_memory_{name}') or {})} keys"
                 f" ({b / n:.0f} B per job); keys in the db {j.get(f'dbsize_{name}'):,}")
    if j["failures"]:
        L.append(f"  FAILED: {j['failures'][:3]}")
    return L
