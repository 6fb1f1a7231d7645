"""Phase i. What each queue control costs on the claim path.

One worker of our own per variant (--bin, --control-concurrency, queue
bench-i-<variant>-<run>), so that no variant leaves keys behind that another
one then reads (a priority lane, once made, is looked at by every later
claim of its queue). The variants:

  plain        {"image": IMAGE, "command": ["true"]}
  priority     the same with "priority" cycling over -2..2, each XADDed to
               the lane of its priority (dockhand:{q}:jobs:p<n>)
  limit        "concurrency_key": bench-i-<run>, whose limit (`dockhand limit
               set --concurrency --control-jobs*10`) is never reached: only
               the slot bookkeeping is measured
  batch        "batch": one per repetition, "batch_size" = --control-jobs;
               the run ends with its batch.completed
  after        "after": [one parent each], "after_policy": "all_finished";
               the parents ran and finished before the timed runs
  unique       "unique_for_seconds": 3600 (ids are new: the rule is looked at,
               nothing is a duplicate)

By default the jobs name an image that is not on the host, and the workers
run with worker.pull = "never": every job is claimed, goes through every gate
(dependencies, limit), is started (job.started), asks Docker to create its
container, gets a 404 at once and ends `aborted` (image_not_found). That is
all of Dockhand's own work for a job and none of Docker's container start,
which would otherwise be 95 % of the time and most of the noise. With
--control-docker the jobs run `true` in --image instead.

Each repetition XADDs --control-jobs jobs of a variant in one pipeline, as a
backlog, and waits for every job's terminal event on dockhand:events (and the
batch's batch.completed); the time is from just before the pipeline to the
last of those events. The variants are interleaved: repetition r runs every
variant, in an order rotated by r. Each variant has --warmup untimed
repetitions of a tenth of the jobs first (Lua scripts loaded, lanes and
consumer groups made).

Redis commands per job: INFO commandstats before the XADDs and after every
entry was acknowledged (the streams empty), summed over every command but
INFO, less the bench's own (the XADDs, its XLEN polls) and less what the
workers do anyway when idle (their rate over --control-idle seconds before
the runs, times the run's length), divided by the jobs. Commands inside Lua
scripts count (Redis counts them). Then one more repetition per variant runs
under MONITOR, which splits them into commands the worker sent (from
connections that were not there before the workers started) and commands run
inside Lua scripts, less what the workers still running sent in an idle window
of --control-idle seconds just before (scaled to the repetition's length);
each variant's worker is stopped after its pass. The PINGs among the commands
sent are deadpool-redis' check of a pooled connection (UNWATCH + PING in one
pipeline) at every checkout: one round trip each.
"""

import json
import os
import re
import socket
import threading
import time
from urllib.parse import urlparse

from .harness import Fatal, dist, fmt_ratio, median, ms, progress, progress_done

VARIANTS = ("plain", "priority", "limit", "batch", "after", "unique")
PRIORITIES = (-2, -1, 0, 1, 2)
MISSING_IMAGE = "dockhand-bench-absent:none"


def commandstats(r):
    """{command: calls} from INFO commandstats (INFO itself left out)."""
    out = {}
    for k, v in r.info("commandstats").items():
        name = k[len("cmdstat_"):] if k.startswith("cmdstat_") else k
        if name != "info":
            out[name] = int(v["calls"])
    return out


def diff(after, before):
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before) if after.get(k, 0) != before.get(k, 0)}


def lane(bench, queue, p):
    return bench.stream_key(queue) if p == 0 else f"{bench.stream_key(queue)}:p{p}"


class Monitor(threading.Thread):
    """MONITOR on a raw socket: counts commands sent by connections not in
    `exclude` (client addresses) and commands run inside scripts, by name."""

    LINE = re.compile(rb'^\+?\d+\.\d+ \[\d+ (\S+)\] "([^"]*)"')

    def __init__(self, url, exclude):
        super().__init__(daemon=True)
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=5)
        if u.password:
            self.sock.sendall(f"AUTH {u.password}\r\n".encode())
            self.sock.recv(100)
        self.sock.sendall(b"MONITOR\r\n")
        self.exclude = {a.encode() for a in exclude}
        self.sent, self.lua = {}, {}
        self.on = False
        self.stop_flag = threading.Event()
        self.ready = threading.Event()

    def run(self):
        buf = b""
        self.sock.settimeout(0.2)
        while not self.stop_flag.is_set():
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            lines = buf.split(b"\r\n")
            buf = lines.pop()
            for line in lines:
                if line == b"+OK":
                    self.ready.set()
                    continue
                m = self.LINE.match(line)
                if not m or not self.on:
                    continue
                who, cmd = m.group(1), m.group(2).decode(errors="replace").lower()
                if who == b"lua":
                    self.lua[cmd] = self.lua.get(cmd, 0) + 1
                elif who not in self.exclude:
                    self.sent[cmd] = self.sent.get(cmd, 0) + 1

    def stop(self):
        self.stop_flag.set()
        self.join(timeout=5)
        self.sock.close()


def spec_for(bench, variant, jid, i, rep_tag, parents):
    a = bench.args
    s = {"id": jid, "image": a.image if a.control_docker else MISSING_IMAGE, "command": ["true"]}
    if variant == "priority":
        s["priority"] = PRIORITIES[i % len(PRIORITIES)]
    elif variant == "limit":
        s["concurrency_key"] = f"bench-i-{bench.run_tag}"
    elif variant == "batch":
        s["batch"] = f"bench-i-{rep_tag}"
        s["batch_size"] = None  # set by the caller (the repetition's size)
    elif variant == "after":
        s["after"] = [parents[i % len(parents)]]
        s["after_policy"] = "all_finished"
    elif variant == "unique":
        s["unique_for_seconds"] = 3600
    return s


class Runner:
    def __init__(self, bench, client, pubsub):
        self.bench, self.c, self.ps = bench, client, pubsub
        self.own = {}  # the bench's own commands during a measured repetition
        self.queues, self.procs = {}, {}
        self.parents = []

    def streams(self, variant):
        q = self.queues[variant]
        if variant == "priority":
            return [lane(self.bench, q, p) for p in PRIORITIES]
        return [self.bench.stream_key(q)]

    def drain_events(self):
        while self.ps.get_message(timeout=0):
            pass

    def wait_ended(self, ids, batch, timeout):
        """Waits for a terminal event of every id (and batch.completed of batch):
        the arrival time of the last, the ids' event types."""
        left, kinds = set(ids), {}
        want_batch = batch is not None
        last = None
        deadline = time.monotonic() + timeout
        while (left or want_batch) and time.monotonic() < deadline:
            m = self.ps.get_message(timeout=0.5)
            if m is None:
                self.bench.check_worker()
                continue
            if m.get("type") != "message":
                continue
            try:
                ev = json.loads(m["data"])
            except ValueError:
                continue
            t, d = ev.get("type"), ev.get("data", {})
            if t in ("job.completed", "job.aborted") and d.get("id") in left:
                left.discard(d["id"])
                kinds[d["id"]] = t if t == "job.completed" else f"aborted:{d.get('reason')}"
                last = time.perf_counter()
            elif t == "batch.completed" and want_batch and d.get("id") == batch:
                want_batch = False
                last = time.perf_counter()
        return last, kinds, left, want_batch

    def wait_acked(self, variant, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lens = [self.c.xlen(s) for s in self.streams(variant)]
            self.own["xlen"] = self.own.get("xlen", 0) + len(lens)
            if not any(lens):
                return True
            time.sleep(0.01)
        return False

    def one(self, variant, n, tag, measure=True):
        """One repetition: n jobs of `variant` as a backlog. Returns its figures."""
        b = self.bench
        q = self.queues[variant]
        ids = [f"bench-i-{tag}-{k}" for k in range(n)]
        batch = f"bench-i-{tag}" if variant == "batch" else None
        pipe = self.c.pipeline(transaction=False)
        for k, jid in enumerate(ids):
            s = spec_for(b, variant, jid, k, tag, self.parents)
            if batch:
                s["batch_size"] = n
            stream = lane(b, q, s["priority"]) if variant == "priority" else b.stream_key(q)
            pipe.xadd(stream, {"job": json.dumps(s)})
        self.drain_events()
        self.own = {"xadd": n}
        before = commandstats(self.c) if measure else None
        t0 = time.perf_counter()
        pipe.execute()
        last, kinds, left, batch_left = self.wait_ended(ids, batch, b.args.job_timeout + n * 2.0)
        acked = self.wait_acked(variant)
        after = commandstats(self.c) if measure else None
        t1 = time.perf_counter()
        res = {"n": n, "total_s": None if last is None or left or batch_left else last - t0,
               "missing": len(left), "batch_missing": bool(batch_left), "acked": acked,
               "kinds": {}, "span_s": t1 - t0}
        for k in kinds.values():
            res["kinds"][k] = res["kinds"].get(k, 0) + 1
        if measure:
            d = diff(after, before)
            for k, v in self.own.items():
                d[k] = d.get(k, 0) - v
            res["commands"] = {k: v for k, v in d.items() if v}
        return res


def run(bench):
    a = bench.args
    n = a.control_jobs
    res = {"jobs": n, "reps": a.control_reps, "concurrency": a.control_concurrency,
           "docker": bool(a.control_docker), "image": a.image if a.control_docker else MISSING_IMAGE,
           "variants": {v: {"runs": []} for v in VARIANTS}, "failures": []}
    client = bench.redis.Redis.from_url(a.redis_url, socket_timeout=30, single_connection_client=True)
    ps = bench.events_pubsub()
    rn = Runner(bench, client, ps)
    limit_key = f"bench-i-{bench.run_tag}"
    rc, out, err = bench.dockhand_cli("limit", "set", limit_key, "--concurrency", str(max(1000, n * 10)))
    if rc != 0:
        raise Fatal(f"i: dockhand limit set failed ({rc}): {err.strip()[:200]}")
    # Everything connected so far is not a phase worker (for the MONITOR pass).
    exclude = set()
    for c in client.client_list():
        exclude.add(c["addr"])
    env = {} if a.control_docker else {"DOCKHAND__WORKER__PULL": "never"}
    try:
        for v in VARIANTS:
            q = f"bench-i-{v}-{bench.run_tag}"
            rn.queues[v] = q
            p, log = bench.spawn_worker(q, f"bench-i-{v}-{bench.run_tag}", a.control_concurrency, env_extra=env)
            rn.procs[v] = (p, log)
        for v in VARIANTS:
            if not bench.wait_consumers(bench.stream_key(rn.queues[v]), 0, [p for p, _ in rn.procs.values()]):
                raise Fatal("i: the workers made no consumer group within 30 s")
        # The parents of `after`: finished before anything is timed.
        parents = [f"bench-i-{bench.run_tag}-parent-{k}" for k in range(n)]
        pipe = client.pipeline(transaction=False)
        for pid in parents:
            pipe.xadd(bench.stream_key(rn.queues["after"]),
                      {"job": json.dumps({"id": pid, "image": res["image"], "command": ["true"]})})
        rn.drain_events()
        pipe.execute()
        _, _, left, _ = rn.wait_ended(parents, None, a.job_timeout + n * 2.0)
        if left:
            raise Fatal(f"i: {len(left)} parent job(s) of `after` did not finish")
        rn.wait_acked("after")
        rn.parents = parents
        # Warm-up: scripts loaded, lanes and groups made.
        for v in VARIANTS:
            for w in range(a.warmup):
                rn.one(v, max(2, n // 10), f"{bench.run_tag}-{v}-w{w}", measure=False)
        # What the workers do when idle, per second.
        time.sleep(1.0)
        i0, t0 = commandstats(client), time.perf_counter()
        time.sleep(a.control_idle)
        idle = diff(commandstats(client), i0)
        idle_s = time.perf_counter() - t0
        res["idle_commands_per_s"] = sum(idle.values()) / idle_s
        res["idle_commands"] = idle
        res["loadavg_before"] = os.getloadavg()
        for r in range(a.control_reps):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for v in order:
                x = rn.one(v, n, f"{bench.run_tag}-{v}-{r}")
                x["order"] = order.index(v)
                res["variants"][v]["runs"].append(x)
                if x["total_s"] is None or not x["acked"]:
                    res["failures"].append({"variant": v, "rep": r, "missing": x["missing"],
                                            "batch_missing": x["batch_missing"], "acked": x["acked"]})
            progress(a, f"i: {r + 1}/{a.control_reps} repetitions of {len(VARIANTS)} variants")
        progress_done(a)
        res["loadavg_after"] = os.getloadavg()
        # One more repetition per variant under MONITOR: round trips vs script-inside.
        if a.control_monitor:
            mon = Monitor(a.redis_url, exclude)
            mon.start()
            mon.ready.wait(5)
            for v in VARIANTS:
                # What the workers still running send when idle, for as long.
                mon.sent, mon.lua = {}, {}
                mon.on = True
                time.sleep(a.control_idle)
                mon.on = False
                idle = (dict(mon.sent), dict(mon.lua))
                mon.sent, mon.lua = {}, {}
                mon.on = True
                t0 = time.perf_counter()
                x = rn.one(v, n, f"{bench.run_tag}-{v}-mon", measure=False)
                time.sleep(0.3)
                mon.on = False
                span = time.perf_counter() - t0
                f = span / a.control_idle
                res["variants"][v]["monitor"] = {
                    "n": n, "ok": x["total_s"] is not None, "span_s": span,
                    "sent": {k: c - f * idle[0].get(k, 0) for k, c in mon.sent.items()},
                    "lua": {k: c - f * idle[1].get(k, 0) for k, c in mon.lua.items()},
                    "idle_sent": idle[0], "idle_lua": idle[1]}
                # Its worker is done: one less idle one for the next pass.
                bench.stop_worker(rn.procs[v][0])
            mon.stop()
    finally:
        ps.close()
        for p, _ in rn.procs.values():
            bench.stop_worker(p)
        bench.dockhand_cli("limit", "rm", limit_key)
        client.close()

    # Figures per variant, and against plain.
    for v in VARIANTS:
        vr = res["variants"][v]
        runs = [x for x in vr["runs"] if x["total_s"] is not None]
        vr["per_job_s"] = [x["total_s"] / x["n"] for x in runs]
        vr["total"] = dist([x["total_s"] for x in runs])
        cmds = []
        by = {}
        for x in runs:
            total = sum(x["commands"].values()) - res["idle_commands_per_s"] * x["span_s"]
            cmds.append(total / x["n"])
            for k, c in x["commands"].items():
                by.setdefault(k, []).append(c / x["n"])
        vr["commands_per_job"] = cmds
        vr["commands_per_job_median"] = median(cmds)
        vr["by_command_median"] = {k: median(cs + [0] * (len(runs) - len(cs))) for k, cs in by.items()}
        vr["kinds"] = {}
        for x in vr["runs"]:
            for k, c in x["kinds"].items():
                vr["kinds"][k] = vr["kinds"].get(k, 0) + c
        mon = vr.get("monitor")
        if mon and mon["ok"]:
            vr["sent_per_job"] = sum(mon["sent"].values()) / mon["n"]
            vr["in_scripts_per_job"] = sum(mon["lua"].values()) / mon["n"]
            # deadpool-redis checks a pooled connection at every checkout with
            # UNWATCH + PING in one pipeline: one round trip per checkout.
            vr["pool_checkouts_per_job"] = mon["sent"].get("ping", 0) / mon["n"]
    base = res["variants"]["plain"]
    for v in VARIANTS:
        vr = res["variants"][v]
        bm, vm = median(base["per_job_s"]), median(vr["per_job_s"])
        vr["ratio_time"] = (vm / bm) if bm and vm else None
        bc, vc = base.get("commands_per_job_median"), vr.get("commands_per_job_median")
        vr["ratio_commands"] = (vc / bc) if bc and vc else None
        vr["extra_commands"] = {k: c - base["by_command_median"].get(k, 0)
                                for k, c in vr["by_command_median"].items()
                                if abs(c - base["by_command_median"].get(k, 0)) >= 0.5}
        for k, c in base["by_command_median"].items():
            if k not in vr["by_command_median"] and c >= 0.5:
                vr["extra_commands"][k] = -c
    if res["failures"]:
        bench.failures.append(f"i: {len(res['failures'])} repetition(s) did not finish every job")
    return res


def summary(out):
    i = out.get("i")
    if not i:
        return []
    L = [""]
    what = f"`true` in {i['image']}" if i["docker"] else f"image not on the host ({i['image']}, pull never: no container)"
    L.append(f"i. Queue controls on the claim path: {i['jobs']} jobs per repetition as a backlog, {i['reps']} repetitions,"
             f" one worker each (--concurrency {i['concurrency']}); {what}")
    L.append(f"  idle background {i.get('idle_commands_per_s', 0):.1f} commands/s (subtracted)")
    L.append("  variant     per job (median)  ratio   commands/job  ratio   sent by worker/job  in Lua/job  pool checkouts/job")
    for v in VARIANTS:
        vr = i["variants"][v]
        pj = median(vr.get("per_job_s") or [])
        rt, ls, pc = vr.get("sent_per_job"), vr.get("in_scripts_per_job"), vr.get("pool_checkouts_per_job")
        L.append(f"  {v:<10}  {ms(pj):>16}  {fmt_ratio(vr.get('ratio_time')):>5}"
                 f"   {vr.get('commands_per_job_median') or 0:>12.1f}  {fmt_ratio(vr.get('ratio_commands')):>5}"
                 f"   {'n/a' if rt is None else f'{rt:.1f}':>18}  {'n/a' if ls is None else f'{ls:.1f}':>10}"
                 f"  {'n/a' if pc is None else f'{pc:.1f}':>18}")
    for v in VARIANTS[1:]:
        ex = i["variants"][v].get("extra_commands") or {}
        if ex:
            parts = ", ".join(f"{k} {c:+.1f}" for k, c in sorted(ex.items(), key=lambda kv: -abs(kv[1])))
            L.append(f"  {v} against plain, per job: {parts}")
    kinds = {v: i["variants"][v].get("kinds") for v in VARIANTS}
    L.append(f"  how the jobs ended: {kinds}")
    if i["failures"]:
        L.append(f"  FAILED: {i['failures'][:3]}")
    return L
