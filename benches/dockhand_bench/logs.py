"""Phase b. Log throughput.

One job running `seq 1 N` (--lines). A subscriber on dockhand:logs:<id>,
subscribed before the submit, counts the lines of the messages (LogSubscriber
below, a raw RESP reader fast enough not to be the bottleneck; a message holds
`count` lines from `seq`, 1 when it has no `count`); afterwards the stored stream
dockhand:job:<id>:log is read back in pages of 10000 and checked: count, seq
1..N without gaps (an entry, like a message, holds `count` lines joined by a
newline), and that the stored stdout lines are exactly seq's output 1..N
(numbers skipped or repeated). Live lines/s are from the first to the last
message the subscriber got; stored lines/s from the ms timestamps of the first
and last stream entry ids. Also the CPU of the worker and redis-server from
submit to terminal, and the time from the job's XADD to its terminal state
(its hash's finished_at, in ms, against the wall clock just before the XADD).

In the same run, two more measures:
- the baseline: benches/attach_reader.rs, a bare bollard client of Docker's
  attach stream, runs the same `seq 1 N` container in the same image
  (BARE_RUNS times, the median counts), and Dockhand's live lines/s are given
  as a ratio to it;
- the worker's memory over a job of RSS_FACTOR x N lines (all kept: its
  limits.log_bytes is large enough): VmRSS sampled every 50 ms, the peak
  against the idle worker's just before, so that a worker whose memory grows
  with the output shows.
"""

import json
import os
import socket
import statistics
import subprocess
import threading
import time
import urllib.parse

from .harness import TERMINAL_STATUSES, CpuMeter, Fatal, fmt_mib, hget_str, idle_rss, parse_ts, read_status_kib

BARE_RUNS = 3  # runs of the bare attach reader; the median counts
RSS_FACTOR = 10  # the memory job prints RSS_FACTOR x --lines lines
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAGE = 10000  # XRANGE page size when reading the stored log back


class Incomplete(Exception):
    pass


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

    @staticmethod
    def _count_at(buf, start, end):
        """The number of lines of the message starting at `start` and ending
        before `end`: its envelope's `"count":` (which comes before its
        `"stream":`, and unescaped only there), else 1."""
        i = buf.find(b'"count":', start, end)
        j = buf.find(b'"stream":"', start, end)
        if i < 0 or (0 <= j < i):
            return 1
        k = i + 8
        while k < end and 48 <= buf[k] <= 57:
            k += 1
        return int(buf[i + 8 : k]) if k > i + 8 else 1

    def _consume(self, buf, t):
        """Handles the complete replies at the start of buf; returns the bytes
        used (0 when it needs more). One call handles a whole run of messages of
        ours at C speed: counts of the header and of each `"stream":"<name>"`,
        and the seq of the first and last message; only when those do not add
        up, or the run has messages of several lines (which are few), is it
        gone through message by message."""
        end = self._complete_end(buf)
        if end is None:
            return self._consume_one(buf, t)
        if end == 0:
            return 0
        if buf.find(b'"count":', 0, end) >= 0:
            return self._consume_each(buf, end, t)
        n = buf.count(self.hdr, 0, end)
        first = self._seq_at(buf, 0, end)
        last = self._seq_at(buf, buf.rfind(self.hdr, 0, end), end)
        if first != self.last_seq + 1 or last is None or last - first + 1 != n:
            # Something is off in this run: find out message by message.
            self.slow_runs += 1
            return self._consume_each(buf, end, t)
        counted = 0
        for name in (b"stdout", b"stderr", b"system", b"build"):
            k = buf.count(b'"stream":"' + name + b'"', 0, end)
            if k:
                key = name.decode()
                self.by_stream[key] = self.by_stream.get(key, 0) + k
                counted += k
        if counted != n:
            self.by_stream["other"] = self.by_stream.get("other", 0) + (n - counted)
        self.last_seq = last
        self._seen(n, t)
        return end

    def _consume_each(self, buf, end, t):
        """The run of messages of ours in buf[:end], one by one."""
        starts = []
        p = 0
        while 0 <= p < end:
            starts.append(p)
            p = buf.find(self.hdr, p + 1, end)
        lines = 0
        for a, b in zip(starts, starts[1:] + [end]):
            q = self._seq_at(buf, a, b)
            c = self._count_at(buf, a, b)
            i = buf.find(b'"stream":"', a, b)
            name = bytes(buf[i + 10 : buf.find(b'"', i + 10, b)]).decode() if i >= 0 else "other"
            self.by_stream[name] = self.by_stream.get(name, 0) + c
            if q != self.last_seq + 1:
                self.seq_gaps += 1
            if q is not None:
                self.last_seq = q + c - 1
            lines += c
        self._seen(lines, t)
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


def bare_attach(bench, n):
    """The bare attach reader (benches/attach_reader.rs) on `seq 1 n`, BARE_RUNS
    times: built first (with the CARGO_TARGET_DIR of scripts/bench), so that the
    build is not timed."""
    a = bench.args
    # $ATTACH_READER_BIN: the attach_reader binary, which scripts/bench builds
    # with the worker (else `cargo bench` builds it here: the crate and its
    # dependencies once more, in the bench profile).
    prog = os.environ.get("ATTACH_READER_BIN")
    if prog:
        cmd = [prog]
    else:
        cmd = ["cargo", "bench", "-q", "--bench", "attach_reader", "--"]
        build = subprocess.run(
            ["cargo", "bench", "-q", "--bench", "attach_reader", "--no-run"], cwd=ROOT, capture_output=True, text=True
        )
        if build.returncode != 0:
            raise Fatal("cargo bench --bench attach_reader --no-run failed:\n" + build.stderr[-2000:])
    runs = []
    for _ in range(BARE_RUNS):
        p = subprocess.run(
            cmd + ["--lines", str(n), "--image", a.image],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise Fatal(f"the bare attach reader failed ({p.returncode}): {p.stderr[-2000:]}")
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    rates = [r["lines_per_s"] for r in runs]
    return {"bare_runs": runs, "bare_lines_per_s": statistics.median(rates)}


class RssSampler(threading.Thread):
    """VmRSS of one process every `interval` s, kept in order."""

    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples = []
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            v = read_status_kib(self.pid, "VmRSS")
            if v is not None:
                self.samples.append(v)
            self.stop_flag.wait(self.interval)

    def stop(self):
        self.stop_flag.set()
        self.join(timeout=2)


def rss_job(bench, n):
    """The worker's VmRSS over one job printing `seq 1 n`, every line kept."""
    a = bench.args
    jid = f"bench-{bench.run_tag}-rss-{n}"
    log_key = bench.job_key(jid) + ":log"
    res = {"rss_lines": n, "rss_job_id": jid}
    if not a.worker_pid:
        res["rss_skipped"] = "no --worker-pid"
        return res
    res["rss_idle_kib"] = idle_rss(a.worker_pid, 1.0)
    sampler = RssSampler(a.worker_pid)
    sampler.start()
    spec = {
        "id": jid,
        "image": a.image,
        "command": ["seq", "1", str(n)],
        # seq 1 n prints under 8 bytes a line: everything is kept.
        "limits": {"log_bytes": str(8 * n), "timeout_seconds": int(a.log_timeout)},
    }
    t0 = time.time()
    bench.submit(spec)
    h, done = bench.poll_status(jid, TERMINAL_STATUSES, a.log_timeout + 30, 0.2, check_worker=True)
    sampler.stop()
    h = h if done else bench.r.hgetall(bench.job_key(jid))
    res["rss_status"] = hget_str(h, "status")
    f = parse_ts(hget_str(h, "finished_at"))
    res["rss_xadd_to_terminal_s"] = (f - t0) if f is not None else None
    res["rss_stored_xlen"] = bench.r.xlen(log_key)
    res["rss_stored_lines"] = _last_seq_guess(bench, log_key)
    samples = sampler.samples
    res["rss_samples"] = len(samples)
    res["rss_peak_kib"] = max(samples) if samples else None
    # The halves of the job: a worker whose memory follows the output grows
    # from the first to the second.
    half = len(samples) // 2
    res["rss_first_half_median_kib"] = int(statistics.median(samples[:half])) if half else None
    res["rss_second_half_median_kib"] = int(statistics.median(samples[half:])) if half else None
    if res["rss_status"] != "completed":
        bench.failures.append(f"b: the {n:,}-line memory job ended {res['rss_status']}")
    elif res["rss_stored_lines"] != n:
        bench.failures.append(f"b: the {n:,}-line memory job stored {res['rss_stored_lines']:,} lines")
    if not a.keep_log:
        bench.r.delete(log_key)
    return res


def run(bench):
    res = bare_attach(bench, bench.args.lines)
    res.update(run_job(bench))
    bare, live = res["bare_lines_per_s"], res["live_lines_per_s"]
    res["live_to_bare"] = (live / bare) if bare and live else None
    res.update(rss_job(bench, RSS_FACTOR * bench.args.lines))
    return res


def run_job(bench):
    a = bench.args
    n = a.lines
    jid = f"bench-{bench.run_tag}-seq-{n}"
    channel = f"{bench.prefix}:logs:{jid}"
    log_key = bench.job_key(jid) + ":log"
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
    cpu = CpuMeter(bench.r, a.worker_pid).start()
    t_submit = time.perf_counter()
    t_xadd = time.time()
    bench.submit(spec)
    h, done = bench.poll_status(jid, TERMINAL_STATUSES, a.log_timeout + 30, 0.1, check_worker=True)
    h = h if done else None
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
        if h is not None and c >= n and sub.last_seq >= _last_seq_guess(bench, log_key):
            break
        time.sleep(0.05)
    sub.stop()

    if h is None:
        h = bench.r.hgetall(bench.job_key(jid))
        bench.failures.append(f"b: the log job did not finish within {a.log_timeout + 30:.0f} s")
    status = hget_str(h, "status")
    res["status"] = status
    res["reason"] = hget_str(h, "reason")
    res["exit_code"] = hget_str(h, "exit_code")
    res["error"] = hget_str(h, "error")
    s, f = parse_ts(hget_str(h, "started_at")), parse_ts(hget_str(h, "finished_at"))
    res["hash_run_s"] = (f - s) if s is not None and f is not None else None
    res["submit_to_terminal_seen_s"] = t_terminal - t_submit
    res["xadd_to_terminal_s"] = (f - t_xadd) if f is not None else None

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

    res.update(check_stored(bench, log_key, n))
    res["lines_lost"] = n - res["stored_stdout"]

    if status != "completed":
        bench.failures.append(f"b: the log job ended {status} ({res['reason']}): {res['error']}")
    if res["stored_repeated_numbers"]:
        bench.failures.append(f"b: {res['stored_repeated_numbers']} output line(s) stored twice")
    if res["stored_missing_numbers"] != res["lines_lost"]:
        bench.failures.append(f"b: {res['stored_missing_numbers']} of seq's numbers never stored")
    if res["lines_lost"] != 0:
        bench.failures.append(f"b: {res['lines_lost']} stdout line(s) missing from the stored stream")
    if not res["stored_seq_gap_free"]:
        bench.failures.append(f"b: seq in the stored stream is not 1..{res['stored_lines']} without gaps")
    if res["stored_content_mismatches"]:
        bench.failures.append(f"b: {res['stored_content_mismatches']} stored stdout line(s) differ from seq's output")
    if sub.disconnected or sub.error:
        bench.failures.append(f"b: the live subscriber was cut off ({sub.error or 'Redis closed the connection'})")
    if sub.seq_gaps:
        bench.failures.append(f"b: live seq was not previous + 1 {sub.seq_gaps} time(s)")
    if res["live_received"] != res["stored_lines"]:
        bench.failures.append(
            f"b: the live subscriber got {res['live_received']} line(s), the stream holds {res['stored_lines']}"
        )
    if not a.keep_log:
        bench.r.delete(log_key)  # ~1M entries; free the memory before the next phase
    return res


def _last_seq_guess(bench, log_key):
    last = bench.r.xrevrange(log_key, count=1)
    if not last:
        return 0
    try:
        fields = last[0][1]
        return int(fields.get(b"seq", b"0")) + int(fields.get(b"count", b"1")) - 1
    except ValueError:
        return 0


def check_stored(bench, log_key, n):
    """Reads the stored stream in pages of PAGE and checks it."""
    xlen = bench.r.xlen(log_key)
    entries_lines = 0  # lines of the entries read (an entry holds `count`)
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
        page = bench.r.xrange(log_key, min=start, max="+", count=PAGE)
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
            try:
                count = max(int(fields.get(b"count", b"1")), 1)
            except ValueError:
                count = 1
            entries_lines += count
            expect_seq = seq + count if seq >= 0 else expect_seq + count
            stream = fields.get(b"stream", b"?").decode(errors="replace")
            text = fields.get(b"line", b"")
            for line in text.split(b"\n") if count > 1 else (text,):
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
        "stored_lines": entries_lines,
        "stored_stdout": stdout,
        "stored_other_streams": other,
        "stored_non_stdout_lines": system_lines,
        "stored_seq_gap_free": gap_free and expect_seq - 1 == entries_lines,
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
        "stored_lines_per_s": (entries_lines / write_span) if write_span else None,
    }


def summary(out):
    b = out.get("b")
    if not b:
        return []
    L = [""]
    L.append(f"b. Log throughput (`seq 1 {b['lines_expected']}`, limits.log_bytes {b['log_bytes']})")
    lps, span = b["live_lines_per_s"], b["live_first_to_last_s"]
    lps_s = "n/a" if lps is None else f"{lps:,.0f}"
    span_s = "n/a" if span is None else f"{span:.2f} s"
    L.append(f"  live lines/s (first to last message) {lps_s}  ({b['live_received']:,} in {span_s})")
    bare = b.get("bare_lines_per_s")
    if bare:
        runs = ", ".join(f"{r['lines_per_s']:,.0f}" for r in b["bare_runs"])
        L.append(f"  bare attach reader lines/s (median)  {bare:,.0f}  (runs: {runs})")
        ratio = b.get("live_to_bare")
        L.append(f"  live / bare attach reader            {'n/a' if ratio is None else f'{ratio:.2f}x'}")
    x2t = b.get("xadd_to_terminal_s")
    L.append(f"  XADD to terminal (finished_at)       {'n/a' if x2t is None else f'{x2t:.2f} s'}")
    slps = b["stored_lines_per_s"]
    L.append(
        f"  stored lines/s (stream entry ids)    {'n/a' if slps is None else f'{slps:,.0f}'}"
    )
    L.append(f"  lines received live                  {b['live_received']:,}  by stream {b['live_by_stream']}"
             + (f", seq not previous+1 {b['live_seq_gaps']} time(s)" if b["live_seq_gaps"] else ""))
    if b["live_subscriber_disconnected"] or b["live_subscriber_error"]:
        L.append(f"  live subscriber cut off: {b['live_subscriber_error'] or 'Redis closed the connection'}")
    L.append(f"  lines stored                         {b['stored_lines']:,} in {b['stored_xlen']:,} entries  (stdout {b['stored_stdout']:,}"
             + (f", other {b['stored_other_streams']}" if b["stored_other_streams"] else "") + ")")
    L.append(f"  lines lost in the stored stream      {b['lines_lost']:,}  (expected - stored stdout)")
    L.append(
        f"  seq gap-free in the stored stream    {'yes' if b['stored_seq_gap_free'] else 'NO'}"
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
    if b.get("rss_peak_kib") is not None:
        x2t = b.get("rss_xadd_to_terminal_s")
        L.append(
            f"  worker VmRSS over `seq 1 {b['rss_lines']:,}`   idle {fmt_mib(b['rss_idle_kib'])}, peak {fmt_mib(b['rss_peak_kib'])}"
            f"; median 1st half {fmt_mib(b['rss_first_half_median_kib'])}, 2nd half {fmt_mib(b['rss_second_half_median_kib'])}"
            f" ({b['rss_samples']} samples; {b['rss_stored_lines']:,} lines stored"
            + ("" if x2t is None else f", XADD to terminal {x2t:.1f} s") + ")"
        )
    elif b.get("rss_skipped"):
        L.append(f"  worker VmRSS over the long job       skipped: {b['rss_skipped']}")
    if b.get("peak_rss_kib") is not None:
        L.append(f"  worker peak RSS during this phase    {fmt_mib(b['peak_rss_kib'])}")
    return L
