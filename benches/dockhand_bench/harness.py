"""What the phases share: the connection to Redis and the worker, submitting a job
and waiting for it (by its events on dockhand:events or by polling its hash),
workers of the bench's own, the dockhand and docker CLIs, the worker's memory and
CPU from /proc, and the small statistics and formatting of the summary.

`Bench` holds the state of one run: the parsed arguments, the Redis client, the
key names for the worker's prefix and queue, the run's tag (which makes job ids
and names unique), the failed checks so far, and the workers the phases started.
"""

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

TERMINAL_STATUSES = ("completed", "aborted")
TERMINAL_EVENTS = ("job.completed", "job.aborted")


class Fatal(Exception):
    """The set-up is not usable (no worker, no Redis, no subscription): exit 2."""


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


def fmt_dist(d):
    """A `dist` dict (or {}) as 'median X  (p10 X, p90 X, n=N)' in ms."""
    return (
        f"median {ms(d.get('median'))}"
        f"  (p10 {ms(d.get('p10'))}, p90 {ms(d.get('p90'))}, n={d.get('n', 0)})"
    )


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}x"


def hget_str(h, k):
    v = h.get(k.encode()) if h else None
    return v.decode() if v is not None else None


def progress(args, msg):
    """A progress counter on stderr (overwritten by the next), unless --no-progress."""
    if args.progress:
        print(f"    {msg}", file=sys.stderr, end="\r", flush=True)


def progress_done(args):
    """Ends a line of progress counters."""
    if args.progress:
        print(file=sys.stderr)


def step(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def run_quiet(cmd, timeout=20):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.stdout.strip() if p.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------------------
# The docker CLI
# ---------------------------------------------------------------------------


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


def machine(bench, root):
    """The host, the versions and the worker, for the summary's header. `root` is
    the Dockhand checkout whose commit is reported."""
    mem_kib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    info = bench.r.info("server")
    # Outside a git clone (say, a `git archive` export) DOCKHAND_COMMIT says which.
    commit = run_quiet(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    dirty = run_quiet(["git", "-C", root, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
    if commit is None:
        commit = os.environ.get("DOCKHAND_COMMIT") or "unknown"
        dirty = None
    args = bench.args
    return {
        "other_dockhand_containers_at_start": other_dockhand_containers(),
        "docker_log_config": docker_log_config(args.image),
        "date": now_iso(),
        "nproc": os.cpu_count(),
        "mem_total_mib": mib(mem_kib),
        "kernel": platform.release(),
        "docker_server": run_quiet(["docker", "version", "--format", "{{.Server.Version}}"]),
        "redis_server": info.get("redis_version"),
        "python": platform.python_version(),
        "redis_py": getattr(bench.redis, "__version__", "?"),
        "dockhand_commit": commit,
        "dockhand_src_modified": bool(dirty),
        "loadavg_start": os.getloadavg(),
        "worker_pid": args.worker_pid,
        "worker_concurrency": args.worker_concurrency,
        "image": args.image,
    }


# ---------------------------------------------------------------------------
# Worker memory and CPU
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
# One run of the benchmark: Redis, jobs, workers
# ---------------------------------------------------------------------------


def queue_of_stream(stream):
    """The queue in a stream key `<prefix>:{<q>}:jobs...`, or None."""
    if not stream or "{" not in stream:
        return None
    return stream.split("{", 1)[1].split("}", 1)[0]


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
        self.spawned = []  # worker processes started by phases f, g and h

    # -- keys, jobs ----------------------------------------------------------

    def job_key(self, job_id, queue=None):
        """The hash of job `job_id` of `queue` (default: the bench's queue)."""
        return f"{self.prefix}:{{{queue or self.args.queue}}}:job:{job_id}"

    def stream_key(self, queue):
        """The jobs stream of `queue`."""
        return f"{self.prefix}:{{{queue}}}:jobs"

    def check_worker(self):
        if self.args.worker_pid and not os.path.exists(f"/proc/{self.args.worker_pid}"):
            raise Fatal(f"the worker (pid {self.args.worker_pid}) is gone")

    def submit(self, spec, stream=None):
        """XADD of one job spec to `stream` (default: the queue of --queue)."""
        self.r.xadd(stream or self.jobs_key, {"job": json.dumps(spec)})

    def poll_status(self, job_id, statuses, timeout, interval, check_worker=False, queue=None):
        """Polls the hash of job `job_id` of `queue` (default: --queue) until its
        status is one of `statuses`: (hash, True), or (the last hash read, False)
        after `timeout` s. With check_worker, a gone --worker-pid raises Fatal."""
        deadline = time.monotonic() + timeout
        h = {}
        while time.monotonic() < deadline:
            h = self.r.hgetall(self.job_key(job_id, queue))
            if hget_str(h, "status") in statuses:
                return h, True
            if check_worker:
                self.check_worker()
            time.sleep(interval)
        return h, False

    # -- events --------------------------------------------------------------

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

    def run_spec(self, pubsub, spec, timeout, want_started=False, stream=None):
        """Submit `spec` (which has an id) to `stream` (default: --queue's), wait
        for job.started (optional) and the terminal event. Returns dict(total_s,
        started_s, kind, hash): seconds from just before the XADD to the events'
        arrival, the terminal event's type (None on timeout), the job hash after."""
        while pubsub.get_message(timeout=0):  # drop anything left over
            pass
        jid = spec["id"]
        t0 = time.perf_counter()
        self.submit(spec, stream)
        started_s = None
        if want_started:
            t, kind = self.wait_events(pubsub, jid, ("job.started",) + TERMINAL_EVENTS, timeout)
            if kind == "job.started":
                started_s = t - t0
                t, kind = self.wait_events(pubsub, jid, TERMINAL_EVENTS, timeout)
        else:
            t, kind = self.wait_events(pubsub, jid, TERMINAL_EVENTS, timeout)
        h = self.r.hgetall(self.job_key(jid, queue_of_stream(stream)))
        return {"total_s": None if t is None else t - t0, "started_s": started_s, "kind": kind, "hash": h}

    # -- workers of our own, the dockhand CLI --------------------------------

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
