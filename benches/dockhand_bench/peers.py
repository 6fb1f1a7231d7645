"""The systems the comparisons (phases k, l, n) run side by side, behind one
interface, and the one way each is timed.

A runner starts its workers on a queue of its own (names carry the run's tag),
takes jobs in bulk (`enqueue(n)`), says how many have finished (`done()`), can
pause and resume its worker processes (SIGSTOP / SIGCONT to their process
groups), and stops them. `drain()` times a runner the same way for every system:
workers up and warmed, paused; the jobs enqueued; resumed; the clock runs from
the resume until `done()` reaches the count, polled every `POLL` s. So neither a
worker's start-up nor the client's enqueue speed (Celery's `send_task` manages a
few thousand a second) is in the figure; only how fast the workers empty a
backlog.

- Dockhand: `dockhand worker --queue Q --concurrency C` (--bin), with
  `RUST_LOG=warn` (the peers below log warnings only too), jobs XADDed in
  pipelines; finished = jobs - XLEN of the stream (a worker deletes an entry
  once its job is terminal), so no extra command per job.
- Celery (`celery -A bench_tasks worker`, broker = the same Redis, no result
  backend, defaults otherwise: prefetch 4, acks early): the task INCRs a counter.
- RQ (`rq worker`, the default forking Worker, one process per worker): the
  task INCRs a counter; jobs enqueued with `enqueue_many` in one pipeline.

Celery, RQ and docker-py come from the virtualenv scripts/bench makes
(benches/requirements-peers.txt); the tasks are benches/peers/bench_tasks.py.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from .harness import Fatal

POLL = 0.02
PEERS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers")


def redis_cpu(r):
    info = r.info("cpu")
    return float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0))


def redis_commands(r):
    return int(r.info("stats").get("total_commands_processed", 0))


def proc_cpu(pids):
    """User + system CPU seconds of the processes and their reaped children."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Runner:
    name = "?"

    def __init__(self, bench, kind, tag):
        self.bench, self.kind, self.tag = bench, kind, tag
        self.procs = []
        self.logs = []

    def _spawn(self, argv, env_extra=None):
        env = dict(os.environ)
        env.update(env_extra or {})
        fd, path = tempfile.mkstemp(prefix=f"dockhand-bench-{self.name}-", suffix=".log")
        p = subprocess.Popen(argv, stdout=fd, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        os.close(fd)
        self.procs.append(p)
        self.logs.append(path)
        return p

    def check(self):
        for p, log in zip(self.procs, self.logs):
            if p.poll() is not None:
                tail = open(log, errors="replace").read()[-2000:]
                raise Fatal(f"{self.name} worker (pid {p.pid}) exited with {p.returncode}; its log ends:\n{tail}")

    def signal_all(self, sig):
        for p in self.procs:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass

    def pause(self):
        self.signal_all(signal.SIGSTOP)

    def resume(self):
        self.signal_all(signal.SIGCONT)

    def stop(self):
        self.signal_all(signal.SIGCONT)
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        for log in self.logs:
            try:
                os.unlink(log)
            except OSError:
                pass
        self.procs, self.logs = [], []

    def pids(self):
        return [p.pid for p in self.procs]

    def wait_done(self, n, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.done() >= n:
                return True
            self.check()
            time.sleep(POLL)
        return False


class Dockhand(Runner):
    name = "dockhand"

    def start(self, concurrency, workers=1):
        b = self.bench
        self.queue = f"bench-{self.kind}-{self.tag}"
        self.stream = b.stream_key(self.queue)
        # Warnings and errors only, as the peers run (Celery --loglevel WARNING,
        # RQ --quiet): at its default level (info) a worker writes two lines a job.
        env = {"RUST_LOG": "warn"}
        if self.kind == "process":
            env["DOCKHAND__EXECUTORS__LOCAL__ENABLED"] = "true"
        for i in range(workers):
            self._spawn([b.args.bin, "--redis-url", b.args.redis_url, "worker", "--queue", self.queue,
                         "--id", f"bench-{self.kind}-{self.tag}-{i}", "--concurrency", str(concurrency)], env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.check()
            try:
                if b.r.xinfo_groups(self.stream):
                    break
            except b.redis.ResponseError:
                pass
            time.sleep(0.1)
        else:
            raise Fatal(f"dockhand workers made no consumer group on {self.stream} within 30 s")
        self.sent = 0

    def spec(self, i):
        if self.kind == "process":
            return {"id": f"bench-{self.tag}-{self.kind}-{i}", "executor": "local", "command": ["true"]}
        return {"id": f"bench-{self.tag}-{self.kind}-{i}", "image": self.bench.args.image, "command": ["true"]}

    def enqueue(self, n):
        r = self.bench.r
        for lo in range(0, n, 1000):
            pipe = r.pipeline(transaction=False)
            for i in range(self.sent + lo, self.sent + min(n, lo + 1000)):
                pipe.xadd(self.stream, {"job": json.dumps(self.spec(i))})
            pipe.execute()
        self.sent += n
        # drain() enqueues only once the stream is empty (the last batch done),
        # so what is left of this batch is the stream's length.
        self.base = n

    def done(self):
        return self.base - self.bench.r.xlen(self.stream)

    def stop(self):
        super().stop()
        self.bench.r.delete(self.stream)


class _Counted(Runner):
    """A peer whose task INCRs a counter of its own."""

    def _env(self):
        self.counter = f"bench:peers:{self.name}:{self.kind}:{self.tag}"
        return {
            "BENCH_REDIS_URL": self.bench.args.redis_url,
            "BENCH_COUNTER": self.counter,
            "PYTHONPATH": PEERS_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }

    def done(self):
        return int(self.bench.r.get(self.counter) or 0) - self.base

    def enqueue(self, n):
        self.base = int(self.bench.r.get(self.counter) or 0)
        self._enqueue(n)


class Celery(_Counted):
    name = "celery"

    def start(self, concurrency, workers=1):
        a = self.bench.args
        self.queue = f"bench-celery-{self.kind}-{self.tag}"
        pool = a.celery_container_pool if self.kind == "container" else a.celery_process_pool
        self.pool = pool
        env = self._env()
        for i in range(workers):
            self._spawn([sys.executable, "-m", "celery", "-A", "bench_tasks", "worker", "-Q", self.queue,
                         "--pool", pool, "--concurrency", str(concurrency), "--loglevel", "WARNING",
                         "--without-gossip", "--without-mingle", "--without-heartbeat",
                         "-n", f"bench-{self.tag}-{i}@%h"], env)
        from celery import Celery as App

        self.app = App("bench_client", broker=a.redis_url)
        self.task = "bench.container" if self.kind == "container" else "bench.process"
        self.base = 0

    def _enqueue(self, n):
        args = [self.bench.args.image] if self.kind == "container" else []
        with self.app.producer_or_acquire() as producer:
            for _ in range(n):
                self.app.send_task(self.task, args=args, queue=self.queue, producer=producer)

    def stop(self):
        super().stop()
        self.bench.r.delete(self.queue, self.counter)


class Rq(_Counted):
    name = "rq"

    def start(self, concurrency, workers=1):
        # RQ runs one job at a time per worker: `concurrency` workers.
        a = self.bench.args
        self.queue_name = f"bench-rq-{self.kind}-{self.tag}"
        env = self._env()
        for i in range(concurrency * workers):
            self._spawn([sys.executable, "-m", "rq.cli", "worker", "--url", a.redis_url, "--quiet",
                         "--name", f"bench-{self.tag}-{self.kind}-{i}", self.queue_name], env)
        from rq import Queue

        self.q = Queue(self.queue_name, connection=self.bench.r)
        self.func = "bench_tasks.run_container" if self.kind == "container" else "bench_tasks.run_process"
        self.base = 0
        self.nworkers = concurrency * workers
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.check()
            if self.bench.r.scard("rq:workers:" + self.queue_name) >= self.nworkers:
                return
            time.sleep(0.1)
        raise Fatal(f"rq: {self.nworkers} workers did not register within 60 s")

    def _enqueue(self, n):
        from rq import Queue

        args = (self.bench.args.image,) if self.kind == "container" else ()
        for lo in range(0, n, 1000):
            with self.bench.r.pipeline() as pipe:
                self.q.enqueue_many(
                    [Queue.prepare_data(self.func, args=args, result_ttl=0, ttl=3600)
                     for _ in range(lo, min(n, lo + 1000))], pipeline=pipe)
                pipe.execute()

    def stop(self):
        super().stop()
        self.bench.r.delete(self.counter)


RUNNERS = {"dockhand": Dockhand, "celery": Celery, "rq": Rq}


def drain(runner, n, timeout, warm=0, rss_pid=None):
    """Times `runner` draining a backlog of `n` jobs (see the module doc): dict
    with seconds, jobs/s, Redis CPU s and commands over the window, the
    workers' CPU s, and (rss_pid) the highest VmRSS of that process."""
    r = runner.bench.r
    if warm:
        runner.enqueue(warm)
        if not runner.wait_done(warm, timeout):
            raise Fatal(f"{runner.name}: {warm} warm-up job(s) did not finish within {timeout:.0f} s")
    runner.pause()
    runner.enqueue(n)  # on an error, runner.stop() resumes before it stops
    c0, k0, w0 = redis_cpu(r), redis_commands(r), proc_cpu(_tree(runner.pids()))
    t0 = time.perf_counter()
    runner.resume()
    rss = 0
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = runner.done()
        if done >= n:
            break
        if rss_pid:
            rss = max(rss, rss_kib(rss_pid) or 0)
        runner.check()
        time.sleep(POLL)
    t = time.perf_counter() - t0
    c1, k1, w1 = redis_cpu(r), redis_commands(r), proc_cpu(_tree(runner.pids()))
    if done < n:
        raise Fatal(f"{runner.name}: only {done} of {n} jobs finished within {timeout:.0f} s")
    return {
        "jobs": n, "seconds": t, "jobs_per_s": n / t,
        "redis_cpu_s": c1 - c0, "redis_commands": k1 - k0, "workers_cpu_s": w1 - w0,
        "rss_peak_kib": rss or None,
    }


def _tree(pids):
    """The pids and their descendants (Celery's pool children, RQ's work horses)."""
    out, todo = [], list(pids)
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out
