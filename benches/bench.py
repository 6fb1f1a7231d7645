#!/usr/bin/env python3
"""Dockhand benchmark: cost per container job, log throughput, worker memory,
webhooks, jobs from git, lease takeover, Redis memory per finished job.

Run it through `scripts/bench`, which starts Redis and a release worker with
--concurrency 4 and passes --redis-url, --worker-pid and --bin. Directly:

    python3 benches/bench.py --redis-url redis://127.0.0.1:6379/ --worker-pid PID --bin DOCKHAND

Needs python3 and redis-py only (plus the git CLI for e). Talks to the Redis of
--redis-url (and, in d, only to its own receiver on 127.0.0.1), reads
/proc/<worker pid>/status and /stat, and runs the docker CLI: `docker run` for
the baseline of a, `docker build` for that of e, `docker rmi` / `rm -f` for what
e and f leave, and `docker ps`, `create`, `inspect`, `rm` once to describe the
host (other Dockhand containers, the log driver new containers get). For d, the
worker must allow 127.0.0.1 (DOCKHAND__WEBHOOKS__ALLOW_NETWORKS=127.0.0.1/32);
scripts/bench sets it.

Phases (printed in this order; run in the order idle, a, c, b, d, e, f, g so that the
memory peak of c is not inflated by what the log phase leaves in the allocator):

  a. Cost per container job: --jobs jobs running `true`, one after another, each
     timed from just before XADD to the moment its terminal event arrives on
     dockhand:events. Interleaved with the same number of
     `docker run --rm --network none IMAGE true`, timed around the CLI process,
     so that both see the same background noise. Medians and their ratio.
  b. Log throughput: one job running `seq 1 N`; a subscriber on
     dockhand:logs:<id>, subscribed before the submit, counts the messages;
     afterwards the stored stream dockhand:job:<id>:log is read back in pages of
     10000 and checked: count, seq 1..XLEN without gaps, and that the stored
     stdout lines are exactly seq's output 1..N (numbers skipped or repeated).
  c. Worker memory: VmRSS of the worker when idle, and the highest value seen
     (sampled every 20 ms) while --sleep-jobs jobs `sleep 5` run at once.
  d. Webhooks: a threaded HTTP receiver on 127.0.0.1 in this process, registered
     with `dockhand subscriber add`, checks every Standard Webhooks signature
     (HMAC-SHA256 over "<id>.<ts>.<body>", inline); --hook-jobs jobs `true`
     submitted at once; deliveries/s (first to last receipt) against jobs
     finished/s, and p50/p99 of receipt time - the job's finished_at.
  e. Jobs from git: a repo in a temp dir (FROM --image, COPY hello.txt); one job
     to warm the cache, then --git-jobs cached jobs for that commit interleaved
     with as many image jobs `cat /etc/hostname` (submit -> terminal); then
     --git-builds new commits built through Dockhand (submit -> job.started)
     interleaved with `DOCKER_BUILDKIT=0 docker build` of the checkout. The images
     made are removed by tag afterwards.
  f. Takeover: two workers of our own (--bin) on a queue of their own, default
     lease; `sleep 300` is submitted, the worker running it SIGKILLed, and the
     time until the job runs again (attempt 2) on the other measured;
     --lease-trials times. Orphaned containers are removed by label.
  g. Redis memory per finished job: a worker of our own with retention
     --retention-seconds and dead_max_len 1000; --retention-jobs entries refused
     at validation (invalid_spec), used_memory before, at the peak, when all are
     terminal, and after retention (+ a SCAN through the keyspace).
  h. Read-only root: two workers of our own, one with policy.read_only_rootfs
     (a /dockhand volume and a /tmp tmpfs per container), each on a queue of its
     own; --ro-jobs jobs `true` on each, interleaved, submit -> terminal event.
     Medians and their ratio.

Phases d (subscriber add/rm, cancel), f, g and h need --bin, the dockhand binary.

Exit code: 0 when every check passed, 1 when one failed (the figures are still
printed and written), 2 for bad usage or when the set-up is not usable.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = 10000  # XRANGE page size when reading the stored log back


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_ts(s):
    """Dockhand's timestamps: RFC 3339, UTC, milliseconds ('...T10:29:43.123Z')."""
    if not s:
        return None
    if isinstance(s, bytes):
        s = s.decode()
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def median(xs):
    return statistics.median(xs) if xs else None


def quantile(xs, q):
    """Nearest-rank quantile; fine for a summary line."""
    if not xs:
        return None
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))
    return s[k]


def dist(xs):
    """A distribution summary of seconds, as a dict (None when empty)."""
    if not xs:
        return None
    return {
        "n": len(xs),
        "median": median(xs),
        "p10": quantile(xs, 0.10),
        "p90": quantile(xs, 0.90),
        "min": min(xs),
        "max": max(xs),
    }


def ms(x):
    return "n/a" if x is None else f"{x * 1000:.1f} ms"


def secs(x):
    return "n/a" if x is None else f"{x:.1f} s"


def mib(kib):
    return None if kib is None else kib / 1024.0


def fmt_mib(kib):
    return "n/a" if kib is None else f"{kib / 1024.0:.1f} MiB"


def hget_str(h, k):
    v = h.get(k.encode()) if h else None
    return v.decode() if v is not None else None


def run_quiet(cmd, timeout=20):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.stdout.strip() if p.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------------------
# Worker memory
# ---------------------------------------------------------------------------


def read_status_kib(pid, field):
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), or None if gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid):
    """User + system CPU seconds the process has used (/proc/<pid>/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """CPU seconds used by the worker and by redis-server between start() and stop()."""

    def __init__(self, r, pid):
        self.r, self.pid = r, pid

    def _redis(self):
        info = self.r.info("cpu")
        return float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0))

    def start(self):
        self.t0 = time.perf_counter()
        self.w0 = cpu_seconds(self.pid) if self.pid else None
        self.r0 = self._redis()
        return self

    def stop(self):
        wall = time.perf_counter() - self.t0
        w1 = cpu_seconds(self.pid) if self.pid else None
        return {
            "wall_s": wall,
            "worker_cpu_s": (w1 - self.w0) if w1 is not None and self.w0 is not None else None,
            "redis_cpu_s": self._redis() - self.r0,
        }


class RssSampler(threading.Thread):
    """Samples the worker's VmRSS every `interval` s, keeping the max per phase."""

    def __init__(self, pid, interval=0.02):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.phase = "idle"
        self.max_by_phase = {}
        self.samples_by_phase = {}
        self.stop_flag = threading.Event()

    def set_phase(self, phase):
        self.phase = phase

    def run(self):
        while not self.stop_flag.is_set():
            v = read_status_kib(self.pid, "VmRSS")
            if v is not None:
                p = self.phase
                if v > self.max_by_phase.get(p, 0):
                    self.max_by_phase[p] = v
                self.samples_by_phase[p] = self.samples_by_phase.get(p, 0) + 1
            self.stop_flag.wait(self.interval)

    def stop(self):
        self.stop_flag.set()
        self.join(timeout=2)


def idle_rss(pid, seconds=1.0):
    """Median of VmRSS samples over `seconds` while nothing runs."""
    vals = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = read_status_kib(pid, "VmRSS")
        if v is not None:
            vals.append(v)
        time.sleep(0.05)
    return int(median(vals)) if vals else None


# ---------------------------------------------------------------------------
# A raw RESP subscriber for the log channel
# ---------------------------------------------------------------------------


class Incomplete(Exception):
    pass


class Fatal(Exception):
    """The set-up is not usable (no worker, no Redis, no subscription): exit 2."""


def _parse(buf, pos):
    """One RESP2 value from buf at pos: (value, next pos); Incomplete if cut short."""
    if pos >= len(buf):
        raise Incomplete
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    t = buf[pos]
    if t == 0x2A:  # '*' array
        n = int(buf[pos + 1 : end])
        p = end + 2
        items = []
        for _ in range(max(n, 0)):
            v, p = _parse(buf, p)
            items.append(v)
        return items, p
    if t == 0x24:  # '$' bulk string
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if stop + 2 > len(buf):
            raise Incomplete
        return bytes(buf[end + 2 : stop]), stop + 2
    if t == 0x3A:  # ':' integer
        return int(buf[pos + 1 : end]), end + 2
    if t == 0x2B:  # '+' simple string
        return bytes(buf[pos + 1 : end]), end + 2
    if t == 0x2D:  # '-' error
        raise RuntimeError("Redis error: " + bytes(buf[pos + 1 : end]).decode(errors="replace"))
    raise RuntimeError(f"unexpected RESP type byte {t!r}")


class LogSubscriber(threading.Thread):
    """Counts the messages of one log channel, fast enough not to be the bottleneck.

    redis-py's pure-Python reply parser handles a few tens of thousands of
    messages a second, and any per-message Python loop about 100k: the same
    order as the worker publishes. A subscriber that lags makes the live rate
    measure itself, takes CPU from the worker it measures (2 cores), and past
    `client-output-buffer-limit pubsub` (32 MB by default) is disconnected by
    Redis. So this reads the socket in 1 MiB chunks and handles each chunk's
    complete messages at once with C-level byte searches (about 2 million
    messages/s here), going message by message only when the counts of a chunk
    do not add up.

    It records the time each chunk arrived (the first and last message times
    are those of their chunks, i.e. when the subscriber had them), the count per
    `stream`, and how often `seq` was not previous + 1.
    """

    def __init__(self, url, channel):
        super().__init__(daemon=True)
        u = urllib.parse.urlparse(url)
        if u.scheme not in ("redis", ""):
            raise Fatal(f"only redis:// URLs are supported here, not {url!r}")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.username = urllib.parse.unquote(u.username) if u.username else None
        self.password = urllib.parse.unquote(u.password) if u.password else None
        self.channel = channel.encode()
        # A message on our channel starts with these bytes. They hold a raw CR LF,
        # which a JSON payload cannot, so they never occur inside a message.
        self.hdr = b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$" % (len(self.channel), self.channel)
        self.subscribed = threading.Event()
        self.stop_flag = threading.Event()
        self.error = None
        self.disconnected = False
        self.count = 0
        self.by_stream = {}
        self.first_t = None
        self.last_t = None
        self.last_seq = 0
        self.seq_gaps = 0  # times a message's seq was not previous + 1
        self.bytes_read = 0
        self.slow_runs = 0  # chunks whose counts did not add up (checked one by one)
        self.foreign_messages = 0  # messages not on our channel (never expected)

    def run(self):
        try:
            self._run()
        except Exception as e:  # reported by the caller
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.subscribed.set()  # never leave the caller waiting

    @staticmethod
    def _cmd(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def _run(self):
        s = socket.create_connection((self.host, self.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            s.sendall(self._cmd(*auth))
        s.sendall(self._cmd("SUBSCRIBE", self.channel))
        s.settimeout(0.2)
        buf = bytearray()
        while not self.stop_flag.is_set():
            try:
                chunk = s.recv(1 << 20)
            except socket.timeout:
                continue
            if not chunk:
                self.disconnected = True
                break
            t = time.perf_counter()
            self.bytes_read += len(chunk)
            buf += chunk
            while buf:
                used = self._consume(buf, t)
                if not used:
                    break
                del buf[:used]
        s.close()

    def _complete_end(self, buf):
        """End of the last complete message of ours at the start of buf (0 when
        there is none yet); None when buf does not start with one of ours."""
        if not buf.startswith(self.hdr):
            return None
        last = buf.rfind(self.hdr)
        e = buf.find(b"\r\n", last + len(self.hdr))
        if e < 0:
            return last
        stop = e + 2 + int(buf[last + len(self.hdr) : e]) + 2
        return stop if stop <= len(buf) else last

    @staticmethod
    def _seq_at(buf, start, end):
        """The seq of the message starting at `start`. The first unescaped `"seq":`
        after a message's start is its envelope's: a log line is JSON-escaped in
        the payload, so its quotes are preceded by a backslash."""
        i = buf.find(b'"seq":', start, end)
        if i < 0:
            return None
        j = i + 6
        k = j
        while k < end and 48 <= buf[k] <= 57:
            k += 1
        return int(buf[j:k]) if k > j else None

    def _consume(self, buf, t):
        """Handles the complete replies at the start of buf; returns the bytes
        used (0 when it needs more). One call handles a whole run of messages of
        ours at C speed: counts of the header and of each `"stream":"<name>"`,
        and the seq of the first and last message; only when those do not add
        up is the run gone through message by message."""
        end = self._complete_end(buf)
        if end is None:
            return self._consume_one(buf, t)
        if end == 0:
            return 0
        n = buf.count(self.hdr, 0, end)
        counted = 0
        for name in (b"stdout", b"stderr", b"system", b"build"):
            k = buf.count(b'"stream":"' + name + b'"', 0, end)
            if k:
                key = name.decode()
                self.by_stream[key] = self.by_stream.get(key, 0) + k
                counted += k
        if counted != n:
            self.by_stream["other"] = self.by_stream.get("other", 0) + (n - counted)
        first = self._seq_at(buf, 0, end)
        last = self._seq_at(buf, buf.rfind(self.hdr, 0, end), end)
        if first == self.last_seq + 1 and last is not None and last - first + 1 == n:
            self.last_seq = last
        else:
            # Something is off in this run: find out message by message.
            self.slow_runs += 1
            starts = []
            p = 0
            while p >= 0 and p < end:
                starts.append(p)
                p = buf.find(self.hdr, p + 1, end)
            for a in starts:
                q = self._seq_at(buf, a, end)
                if q != self.last_seq + 1:
                    self.seq_gaps += 1
                if q is not None:
                    self.last_seq = q
        self._seen(n, t)
        return end

    def _consume_one(self, buf, t):
        """One RESP reply that is not a message of ours (the subscribe
        confirmation, +OK of AUTH, a message on another channel)."""
        try:
            msg, nxt = _parse(buf, 0)
        except Incomplete:
            return 0
        if isinstance(msg, list) and msg:
            if msg[0] == b"subscribe":
                self.subscribed.set()
            elif msg[0] == b"message":
                self.foreign_messages += 1
        return nxt

    def _seen(self, n, t):
        if n:
            self.count += n
            if self.first_t is None:
                self.first_t = t
            self.last_t = t

    def stop(self):
        self.stop_flag.set()
        self.join(timeout=5)


# ---------------------------------------------------------------------------
# A webhook receiver (phase d)
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args, redis_mod):
        self.args = args
        self.redis = redis_mod
        self.r = redis_mod.Redis.from_url(args.redis_url, socket_timeout=30)
        self.prefix = args.prefix
        self.jobs_key = f"{self.prefix}:{{{args.queue}}}:jobs"
        self.events_channel = f"{self.prefix}:events"
        self.run_tag = datetime.now().strftime("%Y%m%d%H%M%S")
        self.failures = []  # checks that did not pass, in words
        self.spawned = []  # worker processes started by phases f and g

    # -- helpers ---------------------------------------------------------

    def job_key(self, job_id):
        return f"{self.prefix}:job:{job_id}"

    def check_worker(self):
        if self.args.worker_pid and not os.path.exists(f"/proc/{self.args.worker_pid}"):
            raise Fatal(f"the worker (pid {self.args.worker_pid}) is gone")

    def submit(self, spec):
        self.r.xadd(self.jobs_key, {"job": json.dumps(spec)})

    def wait_terminal_poll(self, job_id, timeout):
        """Polls the job hash until completed/aborted; returns the hash or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.r.hgetall(self.job_key(job_id))
            if hget_str(h, "status") in ("completed", "aborted"):
                return h
            self.check_worker()
            time.sleep(0.1)
        return None

    def events_pubsub(self):
        p = self.r.pubsub()
        p.subscribe(self.events_channel)
        # Wait for the subscription to be confirmed before the first submit.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = p.get_message(timeout=0.5)
            if m and m.get("type") == "subscribe":
                return p
        raise Fatal("no confirmation of SUBSCRIBE dockhand:events within 10 s")

    def run_dockhand_job(self, pubsub, job_id, command, timeout):
        """Submit, wait for the terminal event. (seconds, event type, hash)."""
        while pubsub.get_message(timeout=0):  # drop anything left over
            pass
        spec = {"id": job_id, "image": self.args.image, "command": command}
        t0 = time.perf_counter()
        self.submit(spec)
        t1, kind = self.wait_events(pubsub, job_id, ("job.completed", "job.aborted"), timeout)
        h = self.r.hgetall(self.job_key(job_id))
        if t1 is None and hget_str(h, "status") in ("completed", "aborted"):
            # Finished but the event was not seen: say so, do not count the time.
            kind = "no-event:" + hget_str(h, "status")
        return (None if t1 is None else t1 - t0), kind, h

    def run_docker(self, timeout):
        cmd = ["docker", "run", "--rm", "--network", "none", self.args.image, "true"]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, "timeout"
        t1 = time.perf_counter()
        if p.returncode != 0:
            return None, f"exit {p.returncode}: {p.stderr.decode(errors='replace').strip()[:200]}"
        return t1 - t0, None

    # -- phase a -----------------------------------------------------------

    def phase_a(self):
        a = self.args
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
        ps = self.events_pubsub()
        cpu = CpuMeter(self.r, a.worker_pid)
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
                        jid = f"bench-{self.run_tag}-true-{i}"
                        dt, kind, h = self.run_dockhand_job(ps, jid, ["true"], a.job_timeout)
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
                        dt, err = self.run_docker(a.job_timeout)
                        if warm:
                            continue
                        if dt is None:
                            res["docker_failures"].append(err)
                        else:
                            res["docker_run_s"].append(dt)
                if not warm and a.progress:
                    n = i - a.warmup + 1
                    print(f"    a: {n}/{a.jobs}", file=sys.stderr, end="\r", flush=True)
            res["cpu"] = cpu.stop()
        finally:
            ps.close()
        if a.progress:
            print(file=sys.stderr)
        dm, bm = median(res["dockhand_latency_s"]), median(res["docker_run_s"])
        res["dockhand"] = dist(res["dockhand_latency_s"])
        res["docker"] = dist(res["docker_run_s"])
        res["hash_run"] = dist(res["hash_run_s"])
        res["hash_pickup"] = dist(res["hash_pickup_s"])
        res["ratio_median"] = (dm / bm) if dm and bm else None
        res["overhead_median_s"] = (dm - bm) if dm and bm else None
        if res["dockhand_failures"]:
            self.failures.append(f"a: {len(res['dockhand_failures'])} dockhand job(s) did not complete")
        if res["docker_failures"]:
            self.failures.append(f"a: {len(res['docker_failures'])} docker run(s) failed")
        return res

    # -- phase b -----------------------------------------------------------

    def phase_b(self):
        a = self.args
        n = a.lines
        jid = f"bench-{self.run_tag}-seq-{n}"
        channel = f"{self.prefix}:logs:{jid}"
        log_key = f"{self.prefix}:job:{jid}:log"
        res = {"lines_expected": n, "job_id": jid, "log_bytes": a.log_bytes}

        sub = LogSubscriber(a.redis_url, channel)
        sub.start()
        if not sub.subscribed.wait(10) or sub.error:
            raise Fatal(f"could not subscribe to {channel}: {sub.error or 'no confirmation in 10 s'}")

        spec = {
            "id": jid,
            "image": a.image,
            "command": ["seq", "1", str(n)],
            "limits": {"log_bytes": a.log_bytes, "timeout_seconds": int(a.log_timeout)},
        }
        cpu = CpuMeter(self.r, a.worker_pid).start()
        t_submit = time.perf_counter()
        self.submit(spec)
        h = self.wait_terminal_poll(jid, a.log_timeout + 30)
        t_terminal = time.perf_counter()
        res["cpu_submit_to_terminal"] = cpu.stop()
        res["terminal_seen"] = h is not None
        # The last batch is published before the terminal state is written, but
        # the subscriber may still be reading its backlog: wait (bounded) until
        # it has everything or has heard nothing for 2 s.
        deadline = time.monotonic() + 60
        last_count, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline and not sub.disconnected and sub.error is None:
            c = sub.count
            if c != last_count:
                last_count, quiet_since = c, time.monotonic()
            elif time.monotonic() - quiet_since > 2.0:
                break
            if h is not None and c >= n and sub.last_seq >= self._last_seq_guess(log_key):
                break
            time.sleep(0.05)
        sub.stop()

        if h is None:
            h = self.r.hgetall(self.job_key(jid))
            self.failures.append(f"b: the log job did not finish within {a.log_timeout + 30:.0f} s")
        status = hget_str(h, "status")
        res["status"] = status
        res["reason"] = hget_str(h, "reason")
        res["exit_code"] = hget_str(h, "exit_code")
        res["error"] = hget_str(h, "error")
        s, f = parse_ts(hget_str(h, "started_at")), parse_ts(hget_str(h, "finished_at"))
        res["hash_run_s"] = (f - s) if s is not None and f is not None else None
        res["submit_to_terminal_seen_s"] = t_terminal - t_submit

        res["live_received"] = sub.count
        res["live_by_stream"] = sub.by_stream
        res["live_seq_gaps"] = sub.seq_gaps
        res["live_chunks_checked_one_by_one"] = sub.slow_runs
        res["live_foreign_messages"] = sub.foreign_messages
        res["live_last_seq"] = sub.last_seq
        res["live_bytes_read"] = sub.bytes_read
        res["live_subscriber_disconnected"] = sub.disconnected
        res["live_subscriber_error"] = sub.error
        span = (sub.last_t - sub.first_t) if sub.first_t is not None and sub.last_t is not None else None
        res["live_first_to_last_s"] = span
        res["live_lines_per_s"] = (sub.count / span) if span else None
        res["submit_to_first_line_s"] = (sub.first_t - t_submit) if sub.first_t is not None else None

        res.update(self.check_stored(log_key, n))
        res["lines_lost"] = n - res["stored_stdout"]

        if status != "completed":
            self.failures.append(f"b: the log job ended {status} ({res['reason']}): {res['error']}")
        if res["stored_repeated_numbers"]:
            self.failures.append(f"b: {res['stored_repeated_numbers']} output line(s) stored twice")
        if res["stored_missing_numbers"] != res["lines_lost"]:
            self.failures.append(f"b: {res['stored_missing_numbers']} of seq's numbers never stored")
        if res["lines_lost"] != 0:
            self.failures.append(f"b: {res['lines_lost']} stdout line(s) missing from the stored stream")
        if not res["stored_seq_gap_free"]:
            self.failures.append(f"b: seq in the stored stream is not 1..{res['stored_xlen']} without gaps")
        if res["stored_content_mismatches"]:
            self.failures.append(f"b: {res['stored_content_mismatches']} stored stdout line(s) differ from seq's output")
        if sub.disconnected or sub.error:
            self.failures.append(f"b: the live subscriber was cut off ({sub.error or 'Redis closed the connection'})")
        if sub.seq_gaps:
            self.failures.append(f"b: live seq was not previous + 1 {sub.seq_gaps} time(s)")
        if res["live_received"] != res["stored_xlen"]:
            self.failures.append(
                f"b: the live subscriber got {res['live_received']} message(s), the stream holds {res['stored_xlen']}"
            )
        if not a.keep_log:
            self.r.delete(log_key)  # ~1M entries; free the memory before the next phase
        return res

    def _last_seq_guess(self, log_key):
        last = self.r.xrevrange(log_key, count=1)
        if not last:
            return 0
        try:
            return int(last[0][1].get(b"seq", b"0"))
        except ValueError:
            return 0

    def check_stored(self, log_key, n):
        """Reads the stored stream in pages of PAGE and checks it."""
        xlen = self.r.xlen(log_key)
        expect_seq = 1
        gap_free = True
        first_gap = None
        stdout = 0
        other = {}
        system_lines = []
        mismatches = 0
        first_mismatch = None
        first_val = prev_val = None
        seen = bytearray(n + 1)  # seen[k]: the number k was stored
        distinct = repeated = out_of_range = 0
        jumps = 0
        jump_list = []
        first_id = last_id = None
        start = "-"
        pages = 0
        t0 = time.perf_counter()
        while True:
            page = self.r.xrange(log_key, min=start, max="+", count=PAGE)
            pages += 1
            if not page:
                break
            for eid, fields in page:
                if first_id is None:
                    first_id = eid
                last_id = eid
                try:
                    seq = int(fields.get(b"seq", b"-1"))
                except ValueError:
                    seq = -1
                if seq != expect_seq:
                    if gap_free:
                        first_gap = {"expected": expect_seq, "got": seq, "entry": eid.decode()}
                    gap_free = False
                expect_seq = seq + 1 if seq >= 0 else expect_seq + 1
                stream = fields.get(b"stream", b"?").decode(errors="replace")
                line = fields.get(b"line", b"")
                if stream == "stdout":
                    stdout += 1
                    if line != str(stdout).encode():
                        mismatches += 1
                        if first_mismatch is None:
                            first_mismatch = {"n": stdout, "line": line[:80].decode(errors="replace")}
                    # seq prints 1..N: where the stored numbers skip, lines went missing.
                    try:
                        val = int(line)
                    except ValueError:
                        val = None
                    if val is not None:
                        if 1 <= val <= n:
                            if seen[val]:
                                repeated += 1
                            else:
                                seen[val] = 1
                                distinct += 1
                        else:
                            out_of_range += 1
                        if first_val is None:
                            first_val = val
                        elif prev_val is not None and val != prev_val + 1:
                            jumps += 1
                            if len(jump_list) < 20:
                                jump_list.append({"after": prev_val, "next": val, "missing": val - prev_val - 1})
                        prev_val = val
                else:
                    other[stream] = other.get(stream, 0) + 1
                    if len(system_lines) < 10:
                        system_lines.append(line.decode(errors="replace"))
            if len(page) < PAGE:
                break
            # Next page: just after the last id of this one (exclusive range).
            start = b"(" + page[-1][0]
            if pages > (n // PAGE) + 1000:  # bound: never loop forever
                break
        read_s = time.perf_counter() - t0

        def id_ms(eid):
            return int(eid.split(b"-")[0]) / 1000.0 if eid else None

        write_span = (id_ms(last_id) - id_ms(first_id)) if first_id and last_id else None
        return {
            "stored_xlen": xlen,
            "stored_stdout": stdout,
            "stored_other_streams": other,
            "stored_non_stdout_lines": system_lines,
            "stored_seq_gap_free": gap_free and expect_seq - 1 == xlen,
            "stored_last_seq": expect_seq - 1,
            "stored_first_gap": first_gap,
            "stored_content_mismatches": mismatches,
            "stored_first_mismatch": first_mismatch,
            "stored_first_number": first_val,
            "stored_last_number": prev_val,
            "stored_distinct_numbers": distinct,
            "stored_repeated_numbers": repeated,
            "stored_out_of_range_numbers": out_of_range,
            "stored_missing_numbers": n - distinct,
            "stored_number_jumps": jumps,
            "stored_number_jump_list": jump_list,
            "stored_pages_read": pages,
            "stored_read_s": read_s,
            # From the ms timestamps of the first and last stream entry ids: how
            # fast the worker wrote, independent of the subscriber.
            "stored_first_to_last_entry_s": write_span,
            "stored_lines_per_s": (xlen / write_span) if write_span else None,
        }

    # -- phase c -----------------------------------------------------------

    def phase_c(self, sampler):
        a = self.args
        k = a.sleep_jobs
        ids = [f"bench-{self.run_tag}-sleep-{i}" for i in range(k)]
        sampler.set_phase("c")
        for jid in ids:
            self.submit({"id": jid, "image": a.image, "command": ["sleep", str(a.sleep_seconds)]})
        deadline = time.monotonic() + a.sleep_seconds + a.job_timeout * 2
        hashes = {}
        while time.monotonic() < deadline and len(hashes) < k:
            for jid in ids:
                if jid in hashes:
                    continue
                h = self.r.hgetall(self.job_key(jid))
                if hget_str(h, "status") in ("completed", "aborted"):
                    hashes[jid] = h
            self.check_worker()
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
            self.failures.append(f"c: {k - statuses.count('completed')} of {k} sleep job(s) did not complete")
        if not res["all_overlapped"]:
            self.failures.append(f"c: the {k} sleep jobs did not all run at the same time (worker concurrency?)")
        return res

    # -- shared by d, e, f, g --------------------------------------------

    def wait_events(self, pubsub, job_id, kinds, timeout):
        """Waits on the events subscription for one of `kinds` for job_id:
        (perf_counter time, event type), or (None, None) on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = pubsub.get_message(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            if m is None:
                self.check_worker()
                continue
            if m.get("type") != "message":
                continue
            try:
                ev = json.loads(m["data"])
            except ValueError:
                continue
            if ev.get("data", {}).get("id") != job_id:
                continue
            if ev.get("type") in kinds:
                return time.perf_counter(), ev["type"]
        return None, None

    def run_spec(self, pubsub, spec, timeout, want_started=False):
        """Submit `spec` (which has an id), wait for job.started (optional) and the
        terminal event. Returns dict(total_s, started_s, kind, hash)."""
        while pubsub.get_message(timeout=0):
            pass
        jid = spec["id"]
        t0 = time.perf_counter()
        self.submit(spec)
        started_s = None
        if want_started:
            t, kind = self.wait_events(pubsub, jid, ("job.started", "job.completed", "job.aborted"), timeout)
            if kind == "job.started":
                started_s = t - t0
                t, kind = self.wait_events(pubsub, jid, ("job.completed", "job.aborted"), timeout)
        else:
            t, kind = self.wait_events(pubsub, jid, ("job.completed", "job.aborted"), timeout)
        h = self.r.hgetall(self.job_key(jid))
        return {"total_s": None if t is None else t - t0, "started_s": started_s, "kind": kind, "hash": h}

    def spawn_worker(self, queue, wid, concurrency, env_extra=None, env_drop=()):
        """Starts a worker process of our own (--bin); returns (Popen, log path)."""
        if not self.args.bin:
            raise Fatal("phases f and g need --bin (the dockhand binary)")
        env = dict(os.environ)
        for k in env_drop:
            env.pop(k, None)
        env.update(env_extra or {})
        fd, path = tempfile.mkstemp(prefix=f"dockhand-bench-{wid}.", suffix=".log")
        p = subprocess.Popen(
            [self.args.bin, "--redis-url", self.args.redis_url, "worker", "--queue", queue,
             "--id", wid, "--concurrency", str(concurrency)],
            stdout=fd, stderr=subprocess.STDOUT, env=env,
        )
        os.close(fd)
        self.spawned.append(p)
        return p, path

    def wait_consumers(self, stream, n, procs, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in procs:
                if p.poll() is not None:
                    raise Fatal(f"a bench worker (pid {p.pid}) exited during start-up with {p.returncode}")
            try:
                # A worker makes the group at start; its consumer appears only
                # with its first read, which may come later: n=0 waits for the group.
                groups = self.r.xinfo_groups(stream)
                if groups and groups[0].get("consumers", 0) >= n:
                    return True
            except self.redis.ResponseError:
                pass
            time.sleep(0.1)
        return False

    def stop_worker(self, p, sig=signal.SIGTERM, wait=40):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if p in self.spawned:
            self.spawned.remove(p)

    def dockhand_cli(self, *args, timeout=30):
        p = subprocess.run([self.args.bin, "--redis-url", self.args.redis_url, *args],
                           capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr

    # -- phase d: webhooks ---------------------------------------------------

    def phase_d(self):
        a = self.args
        n = a.hook_jobs
        if not a.bin:
            raise Fatal("phase d needs --bin (for `dockhand subscriber add`)")
        rec = HookReceiver()
        url = f"http://127.0.0.1:{rec.port}/hook"
        name = f"bench-d-{self.run_tag}"
        rc, out, err = self.dockhand_cli("subscriber", "add", name, url)
        secret = None
        for line in out.splitlines():
            if line.startswith("secret: "):
                secret = line.split(": ", 1)[1].strip()
        if rc != 0 or not secret:
            rec.stop()
            raise Fatal(f"dockhand subscriber add failed ({rc}): {err.strip() or out.strip()}")
        rec.set_secret(secret)
        res = {"jobs": n, "subscriber": name, "url": url}
        prefix = f"bench-{self.run_tag}-hook-"
        ids = [f"{prefix}{i}" for i in range(n)]
        try:
            pipe = self.r.pipeline(transaction=False)
            t_submit_wall = time.time()
            for jid in ids:
                pipe.xadd(self.jobs_key, {"job": json.dumps({"id": jid, "image": a.image, "command": ["true"]})})
            pipe.execute()
            deadline = time.monotonic() + a.hook_timeout
            want = set(ids)
            while time.monotonic() < deadline:
                if want <= rec.job_ids():
                    break
                self.check_worker()
                if a.progress:
                    print(f"    d: {len(rec.job_ids() & want)}/{n} delivered", file=sys.stderr, end="\r", flush=True)
                time.sleep(0.2)
            time.sleep(1.0)  # late duplicates / retries, if any
        finally:
            rc2, _, err2 = self.dockhand_cli("subscriber", "rm", name)
            rec.stop()
            if a.progress:
                print(file=sys.stderr)
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
            h = self.r.hgetall(self.job_key(jid))
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
            self.failures.append(f"d: {res['bad_signatures']} delivery(ies) with a signature that did not verify")
        if res["jobs_delivered"] < n:
            self.failures.append(f"d: only {res['jobs_delivered']} of {n} jobs got a webhook within {a.hook_timeout:.0f} s")
        if statuses.get("completed", 0) != len(first):
            self.failures.append(f"d: job statuses {statuses}")
        return res

    # -- phase e: jobs from git ---------------------------------------------

    def git(self, repo, *args):
        env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
                   GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
        p = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, env=env, timeout=60)
        if p.returncode != 0:
            raise Fatal(f"git {' '.join(args)} failed: {p.stderr.strip()}")
        return p.stdout.strip()

    def commit_hello(self, repo, text):
        with open(os.path.join(repo, "hello.txt"), "w") as f:
            f.write(text + "\n")
        self.git(repo, "add", "-A")
        self.git(repo, "commit", "-q", "-m", text)
        return self.git(repo, "rev-parse", "HEAD")

    def phase_e(self):
        a = self.args
        repo = tempfile.mkdtemp(prefix="dockhand-bench-repo.")
        url = f"file://{repo}"
        made_images = set()
        base_tags = []
        res = {"repo": repo, "cache_jobs": a.git_jobs, "builds": a.git_builds,
               "git_cached_s": [], "image_s": [], "failures": [],
               "dockhand_build_to_running_s": [], "dockhand_build_total_s": [], "docker_build_s": []}
        ps = self.events_pubsub()
        try:
            self.git(repo, "init", "-q")
            with open(os.path.join(repo, "Dockerfile"), "w") as f:
                f.write(f'FROM {a.image}\nCOPY hello.txt /hello.txt\nCMD ["cat","/hello.txt"]\n')
            with open(os.path.join(repo, ".dockerignore"), "w") as f:
                f.write(".git\n")
            sha = self.commit_hello(repo, f"hello from bench {self.run_tag}")
            res["commit"] = sha

            def git_spec(jid, commit):
                return {"id": jid, "git": {"url": url, "commit": commit}}

            # Warm the cache (this one builds).
            w = self.run_spec(ps, git_spec(f"bench-{self.run_tag}-git-warm", sha), a.build_timeout)
            res["warm_s"] = w["total_s"]
            res["warm_status"] = hget_str(w["hash"], "status")
            if hget_str(w["hash"], "image"):
                made_images.add(hget_str(w["hash"], "image"))
            if res["warm_status"] != "completed":
                self.failures.append(f"e: the warm-up git job ended {res['warm_status']}: {hget_str(w['hash'], 'error')}")
                return res
            # N cached git jobs vs N image jobs, interleaved.
            for i in range(a.git_jobs):
                order = ("git", "image") if i % 2 == 0 else ("image", "git")
                for which in order:
                    if which == "git":
                        x = self.run_spec(ps, git_spec(f"bench-{self.run_tag}-git-{i}", sha), a.job_timeout)
                        key = "git_cached_s"
                    else:
                        x = self.run_spec(ps, {"id": f"bench-{self.run_tag}-img-{i}", "image": a.image,
                                               "command": ["cat", "/etc/hostname"]}, a.job_timeout)
                        key = "image_s"
                    st = hget_str(x["hash"], "status")
                    if x["total_s"] is None or st != "completed":
                        res["failures"].append({"which": which, "i": i, "status": st, "error": hget_str(x["hash"], "error")})
                    else:
                        res[key].append(x["total_s"])
                    if which == "git" and hget_str(x["hash"], "image"):
                        made_images.add(hget_str(x["hash"], "image"))
                if a.progress:
                    print(f"    e: cache {i + 1}/{a.git_jobs}", file=sys.stderr, end="\r", flush=True)
            if a.progress:
                print(file=sys.stderr)
            # Logs of one cached job: did it say "is cached"?
            logk = f"{self.prefix}:job:bench-{self.run_tag}-git-0:log"
            lines = [f.get(b"line", b"").decode(errors="replace") for _, f in self.r.xrange(logk, count=50)]
            res["cached_job_said_cached"] = any("is cached" in l for l in lines)
            res["cached_job_build_lines"] = sum(1 for _, f in self.r.xrange(logk, count=500) if f.get(b"stream") == b"build")
            # Builds: a new commit each time; dockhand vs docker build, interleaved.
            # Each build gets a commit of its own (new hello.txt), the docker build
            # too: with the same content, whichever went second would find the
            # other's COPY layer in the engine's build cache.
            for i in range(a.git_builds):
                order = ("dockhand", "docker") if i % 2 == 0 else ("docker", "dockhand")
                for which in order:
                    c = self.commit_hello(repo, f"{which} build {i} of bench {self.run_tag} at {time.time():.6f}")
                    if which == "dockhand":
                        x = self.run_spec(ps, git_spec(f"bench-{self.run_tag}-build-{i}", c), a.build_timeout,
                                          want_started=True)
                        st = hget_str(x["hash"], "status")
                        if hget_str(x["hash"], "image"):
                            made_images.add(hget_str(x["hash"], "image"))
                        if x["started_s"] is None or st != "completed":
                            res["failures"].append({"which": "build", "i": i, "status": st,
                                                    "error": hget_str(x["hash"], "error")})
                        else:
                            res["dockhand_build_to_running_s"].append(x["started_s"])
                            res["dockhand_build_total_s"].append(x["total_s"])
                    else:
                        tag = f"dockhand-bench-e:{self.run_tag}-{i}"
                        t0 = time.perf_counter()
                        p = subprocess.run(["docker", "build", "--pull=false", "-q", "-t", tag, repo],
                                           capture_output=True, text=True, timeout=a.build_timeout,
                                           env=dict(os.environ, DOCKER_BUILDKIT="0"))
                        dt = time.perf_counter() - t0
                        base_tags.append(tag)
                        if p.returncode != 0:
                            res["failures"].append({"which": "docker build", "i": i, "error": p.stderr.strip()[:300]})
                        else:
                            res["docker_build_s"].append(dt)
                if a.progress:
                    print(f"    e: build {i + 1}/{a.git_builds}", file=sys.stderr, end="\r", flush=True)
            if a.progress:
                print(file=sys.stderr)
        finally:
            ps.close()
            removed = []
            for img in sorted(made_images) + base_tags:
                if run_quiet(["docker", "rmi", img], timeout=60) is not None:
                    removed.append(img)
            res["images_made"] = sorted(made_images) + base_tags
            res["images_removed"] = len(removed)
            shutil.rmtree(repo, ignore_errors=True)
        g, im = median(res["git_cached_s"]), median(res["image_s"])
        res["git_cached"] = dist(res["git_cached_s"])
        res["image"] = dist(res["image_s"])
        res["cache_ratio"] = (g / im) if g and im else None
        db, kb = median(res["dockhand_build_to_running_s"]), median(res["docker_build_s"])
        res["dockhand_build"] = dist(res["dockhand_build_to_running_s"])
        res["dockhand_build_total"] = dist(res["dockhand_build_total_s"])
        res["docker_build"] = dist(res["docker_build_s"])
        res["build_ratio"] = (db / kb) if db and kb else None
        if res["failures"]:
            self.failures.append(f"e: {len(res['failures'])} job(s)/build(s) failed: {res['failures'][:2]}")
        if res["cache_ratio"] is not None and res["cache_ratio"] > 1.1:
            self.failures.append(f"e: cached git job / image job = {res['cache_ratio']:.2f} (goal <= 1.1)")
        return res

    # -- phase f: lease takeover ----------------------------------------------

    def phase_f(self):
        a = self.args
        queue = f"bench-f-{self.run_tag}"
        stream = f"{self.prefix}:{{{queue}}}:jobs"
        res = {"trials_asked": a.lease_trials, "queue": queue, "trials": []}
        # The default lease: whatever the bench's own environment says is dropped.
        drop = ("DOCKHAND__WORKER__LEASE_SECONDS",)
        workers = {}
        k = 0

        def new_worker():
            nonlocal k
            k += 1
            wid = f"bench-f-{self.run_tag}-{k}"
            p, log = self.spawn_worker(queue, wid, 1, env_drop=drop)
            workers[wid] = (p, log)
            return wid

        new_worker()
        new_worker()
        if not self.wait_consumers(stream, 0, [p for p, _ in workers.values()]):
            raise Fatal("f: the workers made no consumer group within 30 s")
        # Give both a moment to be reading, so that either may take the job.
        time.sleep(3.0)
        try:
            for t in range(a.lease_trials):
                jid = f"bench-{self.run_tag}-lease-{t}"
                self.r.xadd(stream, {"job": json.dumps({"id": jid, "image": a.image, "command": ["sleep", "300"],
                                                       "limits": {"timeout_seconds": 600}})})
                deadline = time.monotonic() + 60
                h = {}
                while time.monotonic() < deadline:
                    h = self.r.hgetall(self.job_key(jid))
                    if hget_str(h, "status") == "running":
                        break
                    time.sleep(0.05)
                owner = hget_str(h, "worker") or ""
                victim = next((w for w in workers if w in owner), None)
                if hget_str(h, "status") != "running" or victim is None:
                    self.failures.append(f"f: trial {t}: job not running on a bench worker ({hget_str(h, 'status')}, worker {owner!r})")
                    break
                p, _ = workers.pop(victim)
                time.sleep(1.0)  # let it settle in its lease loop
                t_kill = time.time()
                p.kill()
                p.wait(timeout=10)
                self.spawned.remove(p)
                deadline = time.monotonic() + a.lease_timeout
                took = None
                while time.monotonic() < deadline:
                    h = self.r.hgetall(self.job_key(jid))
                    try:
                        att = int(hget_str(h, "attempt") or "0")
                    except ValueError:
                        att = 0
                    st = hget_str(h, "status")
                    if st == "running" and (att >= 2 or victim not in (hget_str(h, "worker") or "")):
                        took = time.time()
                        break
                    if st in ("completed", "aborted"):
                        break
                    time.sleep(0.1)
                trial = {
                    "job": jid, "killed_worker": victim, "seconds": (took - t_kill) if took else None,
                    "attempt": hget_str(h, "attempt"), "status": hget_str(h, "status"),
                    "reason": hget_str(h, "reason"), "new_worker": hget_str(h, "worker"),
                    "started_at_after": hget_str(h, "started_at"),
                }
                res["trials"].append(trial)
                if a.progress:
                    s = "n/a" if trial["seconds"] is None else f"{trial['seconds']:.1f} s"
                    print(f"    f: trial {t + 1}/{a.lease_trials}: {s} (attempt {trial['attempt']})", file=sys.stderr)
                if took is None:
                    self.failures.append(f"f: trial {t}: the job did not run elsewhere within {a.lease_timeout:.0f} s"
                                         f" (status {trial['status']}, attempt {trial['attempt']})")
                # End the job, then the orphaned container of the killed worker.
                self.dockhand_cli("cancel", jid)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if hget_str(self.r.hgetall(self.job_key(jid)), "status") in ("completed", "aborted"):
                        break
                    time.sleep(0.2)
                ids = run_quiet(["docker", "ps", "-a", "-q", "--filter", f"label=dockhand.job={jid}"]) or ""
                trial["containers_removed"] = len(ids.split())
                for cid in ids.split():
                    run_quiet(["docker", "rm", "-f", cid], timeout=60)
                if took is None:
                    break
                if t + 1 < a.lease_trials:
                    new_worker()
                    time.sleep(2.0)
        finally:
            for wid, (p, _) in list(workers.items()):
                self.stop_worker(p)
            res["worker_logs"] = [log for _, log in workers.values()]
        secs = [x["seconds"] for x in res["trials"] if x["seconds"] is not None]
        res["trials_done"] = len(res["trials"])
        res["takeover"] = dist(secs)
        return res

    # -- phase h: read-only root filesystem ------------------------------------

    def phase_h(self):
        """Two workers of our own, one with policy.read_only_rootfs, each on its own
        queue; --ro-jobs jobs `true` on each, interleaved, submit -> terminal event."""
        a = self.args
        res = {"jobs": a.ro_jobs, "default_s": [], "read_only_s": [], "failures": []}
        queues = {}
        procs = []
        for kind, extra in (("default", {}), ("read_only", {"DOCKHAND__POLICY__READ_ONLY_ROOTFS": "true"})):
            queue = f"bench-h-{kind}-{self.run_tag}"
            p, log = self.spawn_worker(queue, f"bench-h-{kind}-{self.run_tag}", 1, env_extra=extra)
            queues[kind] = (queue, f"{self.prefix}:{{{queue}}}:jobs")
            procs.append(p)
        for _, stream in queues.values():
            if not self.wait_consumers(stream, 0, procs):
                raise Fatal("h: the workers made no consumer group within 30 s")
        ps = self.events_pubsub()
        try:
            for i in range(a.warmup + a.ro_jobs):
                order = ("default", "read_only") if i % 2 == 0 else ("read_only", "default")
                for kind in order:
                    jid = f"bench-{self.run_tag}-h-{kind}-{i}"
                    while ps.get_message(timeout=0):
                        pass
                    t0 = time.perf_counter()
                    self.r.xadd(queues[kind][1], {"job": json.dumps({"id": jid, "image": a.image, "command": ["true"]})})
                    t, ev = self.wait_events(ps, jid, ("job.completed", "job.aborted"), a.job_timeout)
                    if i < a.warmup:
                        continue
                    if t is None or ev != "job.completed":
                        h = self.r.hgetall(self.job_key(jid))
                        res["failures"].append({"id": jid, "event": ev, "error": hget_str(h, "error")})
                        continue
                    res[f"{kind}_s"].append(t - t0)
                if a.progress and i >= a.warmup:
                    print(f"    h: {i - a.warmup + 1}/{a.ro_jobs}", file=sys.stderr, end="\r", flush=True)
        finally:
            ps.close()
            for p in procs:
                self.stop_worker(p)
        if a.progress:
            print(file=sys.stderr)
        res["default"] = dist(res["default_s"])
        res["read_only"] = dist(res["read_only_s"])
        dm, rm = median(res["default_s"]), median(res["read_only_s"])
        res["ratio_median"] = (rm / dm) if dm and rm else None
        if res["failures"]:
            self.failures.append(f"h: {len(res['failures'])} job(s) did not complete")
        return res

    # -- phase g: Redis memory per finished job -------------------------------

    def used_memory(self):
        return int(self.r.info("memory")["used_memory"])

    def phase_g(self):
        a = self.args
        n = a.retention_jobs
        queue = f"bench-g-{self.run_tag}"
        stream = f"{self.prefix}:{{{queue}}}:jobs"
        dead = f"{self.prefix}:{{{queue}}}:dead"
        env = {"DOCKHAND__JOBS__RETENTION_SECONDS": str(a.retention_seconds), "DOCKHAND__JOBS__DEAD_MAX_LEN": "1000"}
        p, log = self.spawn_worker(queue, f"bench-g-{self.run_tag}", a.retention_concurrency, env_extra=env)
        res = {"jobs": n, "retention_seconds": a.retention_seconds, "worker_concurrency": a.retention_concurrency,
               "worker_log": log}
        try:
            self.wait_consumers(stream, 1, [p])
            time.sleep(1.0)
            # The group must exist before the XADDs (it is created at 0 anyway).
            res["used_before"] = self.used_memory()
            res["dbsize_before"] = self.r.dbsize()
            body = json.dumps({"image": "x", "command": []})
            t0 = time.time()
            first_id = last_id = None
            for start in range(0, n, a.retention_batch):
                pipe = self.r.pipeline(transaction=False)
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
                u = self.used_memory()
                xl = self.r.xlen(stream)
                if u >= peak:
                    peak = u
                    peak_sample = {"used": u, "dbsize": self.r.dbsize(), "stream_xlen": xl,
                                   "t": time.time() - t0}
                if xl == 0:
                    done = True
                    break
                if p.poll() is not None:
                    raise Fatal(f"the phase g worker exited ({p.returncode}); log {log}")
                if a.progress:
                    print(f"    g: {n - xl}/{n} finished", file=sys.stderr, end="\r", flush=True)
                time.sleep(0.5)
            if a.progress:
                print(file=sys.stderr)
            t_done = time.time()
            res["all_terminal"] = done
            res["left_in_stream"] = self.r.xlen(stream)
            res["submit_to_all_terminal_s"] = t_done - t0
            res["jobs_per_s"] = (n - res["left_in_stream"]) / (t_done - t0)
            res["used_at_all_terminal"] = self.used_memory()
            res["used_peak_sampled"] = max(peak, res["used_at_all_terminal"])
            res["peak_sample"] = peak_sample
            res["dbsize_at_all_terminal"] = self.r.dbsize()
            # Job hashes still there when the last entry finished: with a retention
            # shorter than the run, the first ones have expired by then.
            res["job_keys_alive_at_all_terminal"] = res["dbsize_at_all_terminal"] - res["dbsize_before"]
            res["dead_xlen"] = self.r.xlen(dead)
            sample = {}
            for eid in (first_id, last_id):
                h = self.r.hgetall(self.job_key(eid.decode() if isinstance(eid, bytes) else eid))
                sample[eid.decode() if isinstance(eid, bytes) else eid] = {
                    "status": hget_str(h, "status"), "reason": hget_str(h, "reason"),
                    "ttl": self.r.ttl(self.job_key(eid.decode() if isinstance(eid, bytes) else eid)),
                    "error": (hget_str(h, "error") or "")[:120]}
            res["sample_jobs"] = sample
            res["memory_usage_one_hash"] = self.r.memory_usage(self.job_key(last_id.decode()), samples=0)
            # Wait out the retention, then touch every key so that expiry is not
            # left to Redis' sampling.
            wait = max(0.0, a.retention_seconds + 5 - (time.time() - t_done))
            time.sleep(wait)
            cur, scanned = 0, 0
            while True:
                cur, keys = self.r.scan(cur, count=10000)
                scanned += len(keys)
                if cur == 0:
                    break
            time.sleep(1.0)
            res["scan_keys_seen"] = scanned
            res["used_after_retention"] = self.used_memory()
            res["dbsize_after_retention"] = self.r.dbsize()
            res["dead_xlen_after"] = self.r.xlen(dead)
            res["memory_usage_stream"] = self.r.memory_usage(stream, samples=0)
            res["memory_usage_dead"] = self.r.memory_usage(dead, samples=0)
        finally:
            self.stop_worker(p)
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
            self.failures.append(f"g: {res.get('left_in_stream')} of {n} entries not finished within {a.retention_timeout:.0f} s")
        return res

    # -- all ---------------------------------------------------------------

    def machine(self):
        mem_kib = None
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        mem_kib = int(line.split()[1])
        except OSError:
            pass
        info = self.r.info("server")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # Outside a git clone (say, a `git archive` export) DOCKHAND_COMMIT says which.
        commit = run_quiet(["git", "-C", root, "rev-parse", "--short", "HEAD"])
        dirty = run_quiet(["git", "-C", root, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
        if commit is None:
            commit = os.environ.get("DOCKHAND_COMMIT") or "unknown"
            dirty = None
        return {
            "other_dockhand_containers_at_start": other_dockhand_containers(),
            "docker_log_config": docker_log_config(self.args.image),
            "date": now_iso(),
            "nproc": os.cpu_count(),
            "mem_total_mib": mib(mem_kib),
            "kernel": platform.release(),
            "docker_server": run_quiet(["docker", "version", "--format", "{{.Server.Version}}"]),
            "redis_server": info.get("redis_version"),
            "python": platform.python_version(),
            "redis_py": getattr(self.redis, "__version__", "?"),
            "dockhand_commit": commit,
            "dockhand_src_modified": bool(dirty),
            "loadavg_start": os.getloadavg(),
            "worker_pid": self.args.worker_pid,
            "worker_concurrency": self.args.worker_concurrency,
            "image": self.args.image,
        }

    def run(self):
        a = self.args
        self.r.ping()
        out = {"machine": self.machine(), "args": vars(a).copy()}
        phases = set(a.phases.split(","))
        pid = a.worker_pid
        sampler = None
        if pid:
            if not os.path.exists(f"/proc/{pid}/status"):
                raise Fatal(f"no process {pid} (--worker-pid)")
            comm = open(f"/proc/{pid}/comm").read().strip()
            out["machine"]["worker_comm"] = comm
            if comm != "dockhand":
                print(f"warning: pid {pid} is {comm!r}, not dockhand", file=sys.stderr)
            out["rss_idle_start_kib"] = idle_rss(pid)
            sampler = RssSampler(pid)
            sampler.start()
        elif "c" in phases:
            print("warning: no --worker-pid; phase c (memory) skipped", file=sys.stderr)
            phases.discard("c")

        if "a" in phases:
            step(f"a. cost per container job: {a.jobs} x `true` (+{a.warmup} warm-up), interleaved with docker run")
            sampler and sampler.set_phase("a")
            out["a"] = self.phase_a()
        if "c" in phases:
            if a.worker_concurrency is not None and a.worker_concurrency < a.sleep_jobs:
                print(f"warning: worker concurrency {a.worker_concurrency} < {a.sleep_jobs} jobs", file=sys.stderr)
            step(f"c. worker memory: {a.sleep_jobs} x `sleep {a.sleep_seconds}` at once")
            out["c"] = self.phase_c(sampler)
        if "b" in phases:
            step(f"b. log throughput: `seq 1 {a.lines}`")
            sampler and sampler.set_phase("b")
            out["b"] = self.phase_b()
            if sampler:
                out["b"]["peak_rss_kib"] = sampler.max_by_phase.get("b")
        try:
            for ph, title, fn in (
                ("d", f"d. webhooks: {a.hook_jobs} x `true` at once, signed deliveries to 127.0.0.1", self.phase_d),
                ("e", f"e. jobs from git: {a.git_jobs} cached vs {a.git_jobs} image jobs; {a.git_builds} builds vs docker build", self.phase_e),
                ("f", f"f. lease takeover after SIGKILL (default lease), {a.lease_trials} trial(s)", self.phase_f),
                ("g", f"g. Redis memory per finished job: {a.retention_jobs:,} invalid_spec entries, retention {a.retention_seconds} s", self.phase_g),
                ("h", f"h. read-only root: {a.ro_jobs} x `true` on a read_only_rootfs worker vs a default one, interleaved", self.phase_h),
            ):
                if ph in phases:
                    step(title)
                    sampler and sampler.set_phase(ph)
                    out[ph] = fn()
        finally:
            for p in list(self.spawned):
                self.stop_worker(p)
        if sampler:
            sampler.set_phase("end")
            time.sleep(1.0)
            out["rss_idle_end_kib"] = idle_rss(pid)
            out["rss_hwm_kib"] = read_status_kib(pid, "VmHWM")
            sampler.stop()
            out["rss_max_by_phase_kib"] = dict(sampler.max_by_phase)
        out["machine"]["loadavg_end"] = os.getloadavg()
        out["failures"] = self.failures
        return out


def other_dockhand_containers():
    """Containers labelled dockhand.job on this Docker host before we start: another
    worker (someone's tests, a demo) shares the host and may skew the figures."""
    out = run_quiet(["docker", "ps", "-a", "-q", "--filter", "label=dockhand.job"])
    return None if out is None else len(out.split())


def docker_log_config(image):
    """The log driver and options a new container gets on this host (for phase b:
    the json-file driver's max-size / max-file decide how much output Docker
    keeps before rotating it away). One `docker create` + inspect + rm."""
    cid = run_quiet(["docker", "create", "--network", "none", image, "true"])
    if not cid:
        return None
    try:
        out = run_quiet(["docker", "inspect", "-f", "{{json .HostConfig.LogConfig}}", cid])
        return json.loads(out) if out else None
    except ValueError:
        return None
    finally:
        run_quiet(["docker", "rm", "-f", cid])


def step(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The summary
# ---------------------------------------------------------------------------


def summary(out):
    m = out["machine"]
    L = []
    L.append("")
    L.append("Dockhand benchmark")
    L.append(f"  date {m['date']}; {m['nproc']} CPUs, {m['mem_total_mib']:.0f} MiB RAM, kernel {m['kernel']}")
    L.append(
        f"  docker {m['docker_server']}, redis-server {m['redis_server']}, "
        f"python {m['python']} + redis-py {m['redis_py']}"
    )
    L.append(
        f"  dockhand {m['dockhand_commit']}{' (src modified)' if m['dockhand_src_modified'] else ''}, "
        f"release worker pid {m['worker_pid']} --concurrency {m['worker_concurrency']}"
    )
    lc = m.get("docker_log_config") or {}
    L.append(f"  docker log driver for new containers: {lc.get('Type', '?')} {json.dumps(lc.get('Config') or {})}")
    if m.get("other_dockhand_containers_at_start"):
        L.append(
            f"  WARNING: {m['other_dockhand_containers_at_start']} other Dockhand container(s) on this Docker host"
            " at start: something else shares it"
        )
    la0, la1 = m["loadavg_start"], m.get("loadavg_end")
    L.append(
        f"  load average (1/5/15 min) at start {la0[0]:.2f}/{la0[1]:.2f}/{la0[2]:.2f}"
        + (f", at end {la1[0]:.2f}/{la1[1]:.2f}/{la1[2]:.2f}" if la1 else "")
    )

    a = out.get("a")
    if a:
        L.append("")
        L.append(f"a. Cost per container job (`true`, {a['jobs']} each, sequential, interleaved)")
        d, b = a["dockhand"] or {}, a["docker"] or {}
        L.append(
            f"  dockhand submit -> terminal event   median {ms(d.get('median'))}"
            f"  (p10 {ms(d.get('p10'))}, p90 {ms(d.get('p90'))}, n={d.get('n', 0)})"
        )
        L.append(
            f"  docker run --rm --network none      median {ms(b.get('median'))}"
            f"  (p10 {ms(b.get('p10'))}, p90 {ms(b.get('p90'))}, n={b.get('n', 0)})"
        )
        r = a["ratio_median"]
        L.append(
            f"  ratio dockhand / docker (medians)   {'n/a' if r is None else f'{r:.2f}x'}"
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

    b = out.get("b")
    if b:
        L.append("")
        L.append(f"b. Log throughput (`seq 1 {b['lines_expected']}`, limits.log_bytes {b['log_bytes']})")
        lps, span = b["live_lines_per_s"], b["live_first_to_last_s"]
        lps_s = "n/a" if lps is None else f"{lps:,.0f}"
        span_s = "n/a" if span is None else f"{span:.2f} s"
        L.append(f"  live lines/s (first to last message) {lps_s}  ({b['live_received']:,} in {span_s})")
        slps = b["stored_lines_per_s"]
        L.append(
            f"  stored lines/s (stream entry ids)    {'n/a' if slps is None else f'{slps:,.0f}'}"
        )
        L.append(f"  lines received live                  {b['live_received']:,}  by stream {b['live_by_stream']}"
                 + (f", seq not previous+1 {b['live_seq_gaps']} time(s)" if b["live_seq_gaps"] else ""))
        if b["live_subscriber_disconnected"] or b["live_subscriber_error"]:
            L.append(f"  live subscriber cut off: {b['live_subscriber_error'] or 'Redis closed the connection'}")
        L.append(f"  lines stored (XLEN)                  {b['stored_xlen']:,}  (stdout {b['stored_stdout']:,}"
                 + (f", other {b['stored_other_streams']}" if b["stored_other_streams"] else "") + ")")
        L.append(f"  lines lost in the stored stream      {b['lines_lost']:,}  (expected - stored stdout)")
        L.append(
            f"  seq gap-free 1..XLEN in stored stream {'yes' if b['stored_seq_gap_free'] else 'NO'}"
            + ("" if b["stored_seq_gap_free"] else f"  first gap {b['stored_first_gap']}, last seq {b['stored_last_seq']}")
        )
        if b["stored_content_mismatches"]:
            L.append(f"  stored lines differing from seq      {b['stored_content_mismatches']:,}  first {b['stored_first_mismatch']}")
        if b["stored_number_jumps"] or b["stored_repeated_numbers"] or b["stored_missing_numbers"]:
            L.append(
                f"  of seq's numbers 1..N in the stream  {b['stored_distinct_numbers']:,} distinct,"
                f" {b['stored_missing_numbers']:,} never stored, {b['stored_repeated_numbers']:,} stored twice"
            )
            for j in b["stored_number_jump_list"][:6]:
                if j["missing"] > 0:
                    L.append(f"    after {j['after']:,} comes {j['next']:,}: {j['missing']:,} lines skipped")
                else:
                    L.append(f"    after {j['after']:,} comes {j['next']:,}: goes back: {j['after'] - j['next'] + 1:,} lines again")
            last, n = b["stored_last_number"], b["lines_expected"]
            if last is not None and last != n:
                L.append(f"    the stream ends at {last:,}: the last {n - last:,} lines of output were never stored")
        if b["stored_non_stdout_lines"]:
            L.append(f"  non-stdout lines stored              {b['stored_non_stdout_lines'][:3]}")
        run_s = "n/a" if b["hash_run_s"] is None else f"{b['hash_run_s']:.2f} s"
        L.append(f"  job run time (finished_at - started_at) {run_s}; status {b['status']}")
        cpu = b.get("cpu_submit_to_terminal") or {}
        if cpu.get("worker_cpu_s") is not None and cpu.get("wall_s"):
            L.append(
                f"  CPU, submit to terminal ({cpu['wall_s']:.1f} s)   worker {cpu['worker_cpu_s']:.1f} s"
                f" ({cpu['worker_cpu_s'] / cpu['wall_s']:.2f} cores), redis-server {cpu['redis_cpu_s']:.1f} s"
                f" ({cpu['redis_cpu_s'] / cpu['wall_s']:.2f} cores)"
            )
        if b.get("peak_rss_kib") is not None:
            L.append(f"  worker peak RSS during this phase    {fmt_mib(b['peak_rss_kib'])}")

    c = out.get("c")
    if "rss_idle_start_kib" in out:
        L.append("")
        L.append("c. Worker memory (VmRSS of the worker process)")
        L.append(f"  idle, before any job                 {fmt_mib(out['rss_idle_start_kib'])}")
        if c:
            L.append(
                f"  peak with {c['jobs']} x `sleep {c['sleep_seconds']}` at once     {fmt_mib(c['peak_rss_kib'])}"
                f"  ({c['samples']} samples every 20 ms; ran at once: {'yes' if c['all_overlapped'] else 'NO'})"
            )
        L.append(f"  idle, after all phases               {fmt_mib(out.get('rss_idle_end_kib'))}")
        L.append(f"  VmHWM (high-water mark, whole run)   {fmt_mib(out.get('rss_hwm_kib'))}")

    d = out.get("d")
    if d:
        L.append("")
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

    e = out.get("e")
    if e:
        L.append("")
        L.append(f"e. Jobs from git (file:// repo, Dockerfile FROM the busybox image + COPY)")
        if e.get("warm_s") is not None:
            L.append(f"  warm-up job (builds)                 {ms(e['warm_s'])}  status {e.get('warm_status')}")
        g, im = e.get("git_cached") or {}, e.get("image") or {}
        L.append(f"  cached git job, submit -> terminal   median {ms(g.get('median'))}  (p10 {ms(g.get('p10'))}, p90 {ms(g.get('p90'))}, n={g.get('n', 0)})"
                 f"; said 'is cached': {e.get('cached_job_said_cached')}, build lines {e.get('cached_job_build_lines')}")
        L.append(f"  image job `cat /etc/hostname`        median {ms(im.get('median'))}  (p10 {ms(im.get('p10'))}, p90 {ms(im.get('p90'))}, n={im.get('n', 0)})")
        cr = e.get("cache_ratio")
        L.append(f"  ratio cached git / image (medians)   {'n/a' if cr is None else f'{cr:.2f}x'}  (goal <= 1.1)")
        db, kb, dt = e.get("dockhand_build") or {}, e.get("docker_build") or {}, e.get("dockhand_build_total") or {}
        L.append(f"  dockhand build, submit -> running    median {ms(db.get('median'))}  (min {ms(db.get('min'))}, max {ms(db.get('max'))}, n={db.get('n', 0)});"
                 f" to terminal {ms(dt.get('median'))}")
        L.append(f"  DOCKER_BUILDKIT=0 docker build       median {ms(kb.get('median'))}  (min {ms(kb.get('min'))}, max {ms(kb.get('max'))}, n={kb.get('n', 0)})")
        br = e.get("build_ratio")
        L.append(f"  ratio dockhand / docker build        {'n/a' if br is None else f'{br:.2f}x'}")
        L.append(f"  images made / removed                {len(e.get('images_made', []))} / {e.get('images_removed')}")

    f = out.get("f")
    if f:
        L.append("")
        L.append(f"f. Takeover after SIGKILL of the worker running `sleep 300` (default lease 60 s)")
        for i, t in enumerate(f["trials"]):
            s_ = "n/a" if t["seconds"] is None else f"{t['seconds']:.1f} s"
            L.append(f"  trial {i + 1}: kill -> running elsewhere  {s_}  (attempt {t['attempt']}, status {t['status']},"
                     f" containers removed after {t.get('containers_removed')})")
        tk = f.get("takeover") or {}
        L.append(f"  median over {tk.get('n', 0)} of {f['trials_asked']} asked   {secs(tk.get('median'))}")

    g = out.get("g")
    if g:
        L.append("")
        L.append(f"g. Redis memory per finished job ({g['jobs']:,} invalid_spec entries; retention {g['retention_seconds']} s, dead_max_len 1000)")
        def mb(b):
            return "n/a" if b is None else f"{b / 1048576:.1f} MiB"
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

    h = out.get("h")
    if h:
        L.append("")
        L.append(f"h. Read-only root filesystem: `true`, submit -> terminal event, two workers of our own (concurrency 1)")
        d_, r_ = h.get("default") or {}, h.get("read_only") or {}
        L.append(f"  default worker                       median {ms(d_.get('median'))}  (p10 {ms(d_.get('p10'))}, p90 {ms(d_.get('p90'))}, n={d_.get('n', 0)})")
        L.append(f"  policy.read_only_rootfs = true       median {ms(r_.get('median'))}  (p10 {ms(r_.get('p10'))}, p90 {ms(r_.get('p90'))}, n={r_.get('n', 0)})")
        rr = h.get("ratio_median")
        L.append(f"  ratio read-only / default (medians)  {'n/a' if rr is None else f'{rr:.2f}x'}")

    L.append("")
    if out["failures"]:
        L.append("CHECKS FAILED:")
        L.extend(f"  - {f}" for f in out["failures"])
    else:
        L.append("all checks passed")
    return "\n".join(L)


def main():
    p = argparse.ArgumentParser(
        description="Dockhand benchmark: cost per container job, log throughput, worker memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="Redis the worker uses (default $REDIS_URL)")
    p.add_argument("--worker-pid", type=int, default=int(os.environ.get("DOCKHAND_WORKER_PID", "0")) or None,
                   help="pid of the worker process, for its memory (default $DOCKHAND_WORKER_PID)")
    p.add_argument("--worker-concurrency", type=int, default=None, help="the worker's --concurrency (reported; c needs >= --sleep-jobs)")
    p.add_argument("--image", default="dockhand-busybox:latest")
    p.add_argument("--queue", default="default")
    p.add_argument("--prefix", default="dockhand", help="the worker's redis.prefix")
    p.add_argument("--jobs", type=int, default=30, help="a: jobs of `true`, and as many docker runs")
    p.add_argument("--warmup", type=int, default=1, help="a: untimed runs of each before the timed ones")
    p.add_argument("--lines", type=int, default=1_000_000, help="b: lines the log job prints (seq 1 N)")
    p.add_argument("--log-bytes", default="256m", help="b: the log job's limits.log_bytes")
    p.add_argument("--sleep-jobs", type=int, default=4, help="c: jobs run at once")
    p.add_argument("--sleep-seconds", type=int, default=5, help="c: how long each sleeps")
    p.add_argument("--job-timeout", type=float, default=60, help="longest wait for one short job (a, c)")
    p.add_argument("--log-timeout", type=float, default=900, help="longest wait for the log job (b)")
    p.add_argument("--hook-jobs", type=int, default=200, help="d: jobs submitted at once, one webhook each")
    p.add_argument("--hook-timeout", type=float, default=600, help="d: longest wait for every webhook")
    p.add_argument("--git-jobs", type=int, default=15, help="e: cached git jobs, and as many image jobs")
    p.add_argument("--git-builds", type=int, default=5, help="e: builds of a new commit, and as many docker builds")
    p.add_argument("--build-timeout", type=float, default=300, help="e: longest wait for one build")
    p.add_argument("--lease-trials", type=int, default=3, help="f: worker kills (each waits out the 60 s lease)")
    p.add_argument("--lease-timeout", type=float, default=240, help="f: longest wait for the takeover")
    p.add_argument("--retention-jobs", type=int, default=100_000, help="g: invalid_spec entries")
    p.add_argument("--retention-seconds", type=int, default=20, help="g: the g worker's jobs.retention_seconds")
    p.add_argument("--retention-concurrency", type=int, default=4, help="g: the g worker's --concurrency")
    p.add_argument("--retention-batch", type=int, default=1000, help="g: XADDs per pipeline")
    p.add_argument("--retention-timeout", type=float, default=900, help="g: longest wait for every entry to finish")
    p.add_argument("--bin", default=os.environ.get("DOCKHAND_BIN"),
                   help="the dockhand binary (d: subscriber add; f, g: workers of their own)")
    p.add_argument("--ro-jobs", type=int, default=30, help="h: jobs on each of the two workers")
    p.add_argument("--phases", default="a,b,c,d,e,f,g,h", help="which phases to run, comma-separated")
    p.add_argument("--keep-log", action="store_true", help="b: keep the stored log stream (default: deleted after the check)")
    p.add_argument("--json", metavar="PATH", help="also write every raw figure to PATH as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress counter on stderr")
    args = p.parse_args()
    if not args.redis_url:
        p.error("--redis-url (or REDIS_URL) is required")
    if args.jobs < 1 or args.lines < 1 or args.sleep_jobs < 1:
        p.error("--jobs, --lines and --sleep-jobs must be at least 1")
    bad = set(args.phases.split(",")) - set("abcdefgh")
    if bad:
        p.error(f"unknown phase(s) {sorted(bad)}; use a, b, c, d, e, f, g, h")

    try:
        import redis
    except ImportError:
        print("bench.py: needs redis-py (Debian: apt-get install python3-redis)", file=sys.stderr)
        return 2

    try:
        out = Bench(args, redis).run()
    except (Fatal, redis.RedisError, OSError) as e:
        print(f"bench.py: {e}", file=sys.stderr)
        return 2
    print(summary(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
            f.write("\n")
        print(f"raw results written to {args.json}")
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
