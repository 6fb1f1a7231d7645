//! Container output as numbered lines, published live and kept in a replayable stream.
//!
//! Invariants:
//! - Every line gets the next `seq`, starting after the last one already stored for
//!   the job, so `seq` has no gaps across the stored stream and the live channel, and
//!   a reader joins the two on it.
//! - Each batch is written by one Lua call ([`WRITE`]): its `XADD`s and `PUBLISH`es
//!   land together, in order. Within a batch, consecutive whole lines of one
//!   stream (not `system`) share one stream entry and one message, up to
//!   `jobs.log_entry_bytes` of text ([`entries`]): its `line` is their texts
//!   joined by `\n`, its `seq` the first one's, its `count` how many (absent for
//!   one). A line holds no `\n` (the splitter cut there), so the join can be
//!   undone; a `system` line may, so it is always alone. A batch holds what
//!   came while the one before was written, so slow output still gets one
//!   entry and one message a line. On a single Redis (not a cluster) a batch of more
//!   than one line leaves its `PUBLISH`es out when nobody is subscribed to the
//!   job's channel or to any pattern then: the call is atomic, so a reader that
//!   subscribes and then reads the stream (as one must, joining on `seq`) still
//!   gets every line.
//!   One batch is in flight while the next fills (up to [`BATCH_LINES`]); a line
//!   that comes while none is in flight goes out at once.
//! - `limits.log_bytes` caps what is kept; reaching it is said in a `system` line, and
//!   what was dropped is counted. `system` lines are never dropped.
//! - Secret values (`secret_env`) are masked before a line is stored or published.
//! - Memory stays bounded: [`CHANNEL_LINES`] lines wait between the reader and the
//!   writer, plus the batch in flight and the next one. When Redis is slower than the job, the
//!   reader waits (see `executor::attach` for what that does to the container);
//!   `PUBLISH` does not wait for subscribers.

use crate::backoff::Backoff;
use crate::queue::Keys;
use crate::store::{Store, StoreError};
use crate::telemetry::error_chain;
use deadpool_redis::redis::{self, AsyncCommands};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lines buffered between the container reader and the Redis writer.
const CHANNEL_LINES: usize = 8192;
/// Lines written to Redis in one transaction.
const BATCH_LINES: usize = 512;
/// A `system` line (never dropped) is cut to this many bytes, saying how many were left out.
pub const SYSTEM_LINE_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    Build,
    System,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Build => "build",
            LogStream::System => "system",
        }
    }
}

/// One line of output. `partial` marks a piece of a line longer than the line cap;
/// the last piece of such a line has `partial == false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub text: String,
    pub partial: bool,
}

/// Turns a byte stream into lines: buffers a partial line, splits lines longer than
/// `max` bytes (on a UTF-8 boundary), drops a trailing `\r`, and flushes the rest at
/// the end. Invalid UTF-8 is replaced, never fatal.
#[derive(Debug)]
pub struct LineSplitter {
    stream: LogStream,
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(stream: LogStream, max: usize) -> Self {
        LineSplitter {
            stream,
            buf: Vec::new(),
            max: max.max(4),
        }
    }

    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<LogLine>) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let whole = &bytes[..nl];
            bytes = &bytes[nl + 1..];
            // The common case, a whole short line in this chunk: one copy, no buffer.
            if self.buf.is_empty() && whole.len() <= self.max {
                let line = whole.strip_suffix(b"\r").unwrap_or(whole);
                out.push(self.line(line, false));
                continue;
            }
            self.buf.extend_from_slice(whole);
            self.emit_long_parts(out);
            let mut line = std::mem::take(&mut self.buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push(self.line(&line, false));
        }
        self.buf.extend_from_slice(bytes);
        self.emit_long_parts(out);
    }

    /// Emits what is left as a last line (a final line without a newline).
    pub fn finish(&mut self, out: &mut Vec<LogLine>) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            out.push(self.line(&line, false));
        }
    }

    fn emit_long_parts(&mut self, out: &mut Vec<LogLine>) {
        while self.buf.len() > self.max {
            let mut cut = self.max;
            // Back up to the start of a UTF-8 character (continuation bytes are 10xxxxxx).
            while cut > 0 && (self.buf[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
            if cut == 0 {
                cut = self.max;
            }
            let rest = self.buf.split_off(cut);
            let part = std::mem::replace(&mut self.buf, rest);
            out.push(self.line(&part, true));
        }
    }

    fn line(&self, bytes: &[u8], partial: bool) -> LogLine {
        LogLine {
            stream: self.stream,
            text: String::from_utf8_lossy(bytes).into_owned(),
            partial,
        }
    }
}

/// Secret values to hide in text: each occurrence becomes `***`. Values shorter
/// than [`Mask::MIN_LEN`] are not masked (they would hide ordinary text); a secret
/// split by the line-length cap is not recognised across the two parts.
#[derive(Debug, Clone, Default)]
pub struct Mask(Vec<String>);

impl Mask {
    pub const MIN_LEN: usize = 4;

    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a String>) -> Mask {
        let mut values: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= Self::MIN_LEN)
            .cloned()
            .collect();
        // Longest first, so a secret containing another is masked whole.
        values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Mask(values)
    }

    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.0 {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the writer did, for the job's record.
#[derive(Debug, Clone, Default)]
pub struct LogSummary {
    pub last_seq: u64,
    pub lines_kept: u64,
    pub bytes_kept: u64,
    pub lines_dropped: u64,
    pub bytes_dropped: u64,
    /// Lines that could not be written because Redis stayed unreachable.
    pub lines_lost: u64,
    pub tail: VecDeque<String>,
}

/// The sending side handed to whatever produces lines.
#[derive(Clone)]
pub struct LogSender {
    tx: mpsc::Sender<LogLine>,
}

impl LogSender {
    /// Queues a line; waits when the writer is behind (which slows only our reading).
    pub async fn send(&self, line: LogLine) {
        // A closed writer means the job is being torn down; the line has nowhere to go.
        let _ = self.tx.send(line).await;
    }

    /// Queues a line unless the writer takes none for `limit`; then hands it back.
    pub async fn send_within(&self, line: LogLine, limit: Duration) -> Result<(), LogLine> {
        let line = match self.tx.try_send(line) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(line)) => line,
        };
        match tokio::time::timeout(limit, self.tx.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(line);
                Ok(())
            }
            // Closed: as in `send`, the line has nowhere to go.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(line),
        }
    }

    pub async fn system(&self, text: impl Into<String>) {
        self.send(LogLine {
            stream: LogStream::System,
            text: text.into(),
            partial: false,
        })
        .await;
    }
}

#[derive(Serialize)]
struct Message<'a> {
    job: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "is_one")]
    count: usize,
    stream: &'a str,
    ts: &'a str,
    line: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    partial: bool,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// How the writer stores a job's log.
#[derive(Debug, Clone, Default)]
pub struct WriterSettings {
    /// `limits.log_bytes`: text kept, at most.
    pub cap_bytes: u64,
    /// The last lines the summary remembers (for the job's webhook).
    pub tail_lines: usize,
    /// `jobs.log_entry_bytes`: text of one stream entry and message, at most
    /// (0: a line each).
    pub entry_bytes: usize,
    /// The job was first recorded by this run, so no log of it exists yet (its
    /// last `seq` is 0 without asking Redis).
    pub fresh: bool,
}

/// Starts the writer task for one job. Drop every [`LogSender`] clone, then await the
/// handle to be sure every line is stored and published.
pub fn spawn_writer(
    store: Store,
    keys: Keys,
    job: crate::job::JobRef,
    settings: WriterSettings,
    mask: Mask,
) -> (LogSender, JoinHandle<LogSummary>) {
    let (tx, rx) = mpsc::channel(CHANNEL_LINES);
    let handle = tokio::spawn(write_lines(store, keys, job, settings, mask, rx));
    (LogSender { tx }, handle)
}

/// Adds one batch's lines to the job's stream and publishes each, in order, in
/// one call: atomic like `MULTI`, with one reply where `MULTI` has two per line
/// and their array (parsing those replies was a quarter of the worker's
/// instructions on a chatty job).
/// Two arguments a line, not five: each argument becomes a Lua string, and
/// `seq`, the stream's name and the partial mark are cheaper made here.
/// A `PUBLISH` to nobody still costs Redis a call; most jobs' logs have no live
/// reader, so it is skipped then (`PUBSUB` answers for this node only: on a
/// cluster the caller says to publish always; for a batch of one line too,
/// where asking costs more than publishing).
/// KEYS: 1 the log stream. ARGV: 1 the channel, 2 ts, 3 the first line's seq,
/// 4 the entries' kinds (a letter an entry, see [`kind`]), 5 '1' to publish
/// whoever listens, then three per entry: its text, its count of lines ('' for
/// one), its message.
static WRITE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local key, channel, ts = KEYS[1], ARGV[1], ARGV[2]
        local seq, kinds = tonumber(ARGV[3]), ARGV[4]
        local live = ARGV[5] == '1'
            or redis.call('PUBSUB', 'NUMSUB', channel)[2] > 0
            or redis.call('PUBSUB', 'NUMPAT') > 0
        local names = {o = 'stdout', e = 'stderr', b = 'build', s = 'system'}
        local n = 0
        for i = 6, #ARGV, 3 do
            n = n + 1
            local k, count = string.byte(kinds, n), ARGV[i + 1]
            if k < 97 then
                redis.call('XADD', key, '*', 'seq', seq, 'stream', names[string.char(k + 32)],
                    'ts', ts, 'line', ARGV[i], 'partial', '1')
            elseif count ~= '' then
                redis.call('XADD', key, '*', 'seq', seq, 'stream', names[string.char(k)],
                    'ts', ts, 'line', ARGV[i], 'count', count)
            else
                redis.call('XADD', key, '*', 'seq', seq, 'stream', names[string.char(k)],
                    'ts', ts, 'line', ARGV[i])
            end
            if live then
                redis.call('PUBLISH', channel, ARGV[i + 2])
            end
            seq = seq + (tonumber(count) or 1)
        end
        return n
        ",
    )
});

/// `lines` cut into entries, in order: consecutive whole lines of one stream,
/// other than `system`, whose texts joined by `\n` take at most `max_bytes`
/// (a single line may take more); a piece of a longer line, a `system` line,
/// and any line when `max_bytes` is 0, are entries on their own.
fn entries(lines: &[LogLine], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let alone = |line: &LogLine| line.partial || line.stream == LogStream::System;
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, line) in lines.iter().enumerate() {
        if let Some(last) = out.last_mut() {
            let prev = &lines[i - 1];
            if max_bytes > 0
                && !alone(line)
                && !alone(prev)
                && line.stream == prev.stream
                && bytes + 1 + line.text.len() <= max_bytes
            {
                last.end = i + 1;
                bytes += 1 + line.text.len();
                continue;
            }
        }
        out.push(i..i + 1);
        bytes = line.text.len();
    }
    out
}

/// A line's letter in [`WRITE`]'s kinds (the script's `names`), upper case for
/// a piece of a longer line.
fn kind(line: &LogLine) -> u8 {
    let letter = match line.stream {
        LogStream::Stdout => b'o',
        LogStream::Stderr => b'e',
        LogStream::Build => b'b',
        LogStream::System => b's',
    };
    if line.partial {
        letter.to_ascii_uppercase()
    } else {
        letter
    }
}

/// What the writer keeps of a job's log between batches.
struct Writer {
    job_id: String,
    stream_key: String,
    channel: String,
    cap_bytes: u64,
    tail_lines: usize,
    entry_bytes: usize,
    mask: Mask,
    /// Publish whether or not anyone listens (on a cluster, where `PUBSUB`
    /// counts one node's subscribers only).
    publish_always: bool,
    capped: bool,
    summary: LogSummary,
    /// One message's JSON, reused.
    json: Vec<u8>,
}

impl Writer {
    /// Masks `lines`, cuts `system` lines, and applies `limits.log_bytes`: what
    /// is to be written, in order (the cap's `system` line included).
    fn admit(&mut self, lines: &mut Vec<LogLine>) -> Vec<LogLine> {
        let mut to_write = Vec::with_capacity(lines.len());
        for mut line in lines.drain(..) {
            if !self.mask.is_empty() {
                line.text = self.mask.apply(&line.text);
            }
            if line.stream == LogStream::System {
                line.text = cut(line.text, SYSTEM_LINE_MAX);
            } else {
                let len = line.text.len() as u64;
                if self.capped || self.summary.bytes_kept + len > self.cap_bytes {
                    if !self.capped {
                        self.capped = true;
                        to_write.push(LogLine {
                            stream: LogStream::System,
                            text: format!(
                                "log limit reached (limits.log_bytes = {}); further output is not kept",
                                self.cap_bytes
                            ),
                            partial: false,
                        });
                    }
                    self.summary.lines_dropped += 1;
                    self.summary.bytes_dropped += len;
                    continue;
                }
                self.summary.bytes_kept += len;
            }
            to_write.push(line);
        }
        to_write
    }

    /// One call of [`WRITE`]: the lines numbered from the next `seq` after
    /// `after`, and for each of their [`entries`], its stream entry and its message.
    fn commands(&mut self, lines: &[LogLine], after: u64) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        let ts = crate::time::now();
        let entries = entries(lines, self.entry_bytes);
        cmd.arg(WRITE.get_hash())
            .arg(1)
            .arg(&self.stream_key)
            .arg(&self.channel)
            .arg(&ts)
            .arg(after + 1)
            .arg(
                entries
                    .iter()
                    .map(|e| kind(&lines[e.start]))
                    .collect::<Vec<u8>>(),
            )
            // One entry: its `PUBLISH` costs Redis less than the two `PUBSUB`s.
            .arg(if self.publish_always || entries.len() == 1 {
                "1"
            } else {
                ""
            });
        let mut joined = String::new();
        for entry in entries {
            let seq = after + 1 + entry.start as u64;
            let count = entry.len();
            let first = &lines[entry.start];
            let text = if count == 1 {
                first.text.as_str()
            } else {
                joined.clear();
                for (i, line) in lines[entry].iter().enumerate() {
                    if i > 0 {
                        joined.push('\n');
                    }
                    joined.push_str(&line.text);
                }
                joined.as_str()
            };
            let msg = Message {
                job: &self.job_id,
                seq,
                count,
                stream: first.stream.as_str(),
                ts: &ts,
                line: text,
                partial: first.partial,
            };
            self.json.clear();
            serde_json::to_writer(&mut self.json, &msg).expect("a log message always serializes");
            cmd.arg(text);
            if count == 1 {
                cmd.arg("");
            } else {
                cmd.arg(count);
            }
            cmd.arg(&self.json[..]);
        }
        cmd
    }

    /// Counts a batch that was written (or lost: Redis stayed unreachable).
    fn record(&mut self, lines: Vec<LogLine>, written: bool) {
        let summary = &mut self.summary;
        if !written {
            summary.lines_lost += lines.len() as u64;
            tracing::error!(job_id = %self.job_id, lines = lines.len(), "log lines lost: Redis unreachable");
            return;
        }
        summary.last_seq += lines.len() as u64;
        summary.lines_kept += lines.len() as u64;
        let older = lines.len().saturating_sub(self.tail_lines);
        for line in lines.into_iter().skip(older) {
            if summary.tail.len() == self.tail_lines {
                summary.tail.pop_front();
            }
            summary.tail.push_back(line.text);
        }
    }
}

/// A batch being written: the write, and its lines for [`Writer::record`].
type InFlight = (
    std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>,
    Vec<LogLine>,
);

/// Writes batches with one in flight while the next fills: a line that comes
/// while the writer is idle goes out at once; lines that come while a batch is
/// written wait for it, up to [`BATCH_LINES`]. A full next batch has its
/// commands made while the one before is written, numbered after it; should
/// that one be lost, they are made again, so `seq` has no gap.
async fn write_lines(
    store: Store,
    keys: Keys,
    job: crate::job::JobRef,
    settings: WriterSettings,
    mask: Mask,
    mut rx: mpsc::Receiver<LogLine>,
) -> LogSummary {
    let stream_key = keys.log(&job.queue, &job.id);
    let job_id = job.id;
    // A job seen for the first time has no log yet: nothing to continue.
    let last_seq = if settings.fresh {
        0
    } else {
        last_stored_seq(&store, &stream_key).await
    };
    let mut w = Writer {
        publish_always: store.is_cluster(),
        channel: keys.log_channel(&job_id),
        stream_key,
        job_id,
        cap_bytes: settings.cap_bytes,
        tail_lines: settings.tail_lines,
        entry_bytes: settings.entry_bytes,
        mask,
        capped: false,
        summary: LogSummary {
            last_seq,
            ..Default::default()
        },
        json: Vec::new(),
    };
    let mut next: Vec<LogLine> = Vec::with_capacity(BATCH_LINES);
    // The next batch, its commands made while the one before is in flight.
    let mut ready: Option<(Vec<LogLine>, redis::Cmd)> = None;
    let mut inflight: Option<InFlight> = None;
    let mut open = true;
    loop {
        if let Some((write, flying)) = inflight.as_mut() {
            if ready.is_none() && next.len() == BATCH_LINES {
                let lines = w.admit(&mut next);
                let after = w.summary.last_seq + flying.len() as u64;
                let pipe = w.commands(&lines, after);
                ready = Some((lines, pipe));
            }
            let room = if ready.is_none() {
                BATCH_LINES - next.len()
            } else {
                0
            };
            tokio::select! {
                written = write => {
                    let (_, lines) = inflight.take().expect("a write is in flight");
                    w.record(lines, written);
                    if !written {
                        // Numbered after the lost batch: number them again.
                        if let Some((lines, pipe)) = ready.as_mut() {
                            *pipe = w.commands(lines, w.summary.last_seq);
                        }
                    }
                }
                n = rx.recv_many(&mut next, room), if open && room > 0 => open = n > 0,
            }
            continue;
        }
        let (lines, pipe) = match ready.take() {
            Some(batch) => batch,
            None => {
                if next.is_empty() && (!open || rx.recv_many(&mut next, BATCH_LINES).await == 0) {
                    break;
                }
                // What else is there already goes in too, without waiting.
                while next.len() < BATCH_LINES {
                    match rx.try_recv() {
                        Ok(line) => next.push(line),
                        Err(_) => break,
                    }
                }
                let lines = w.admit(&mut next);
                let pipe = w.commands(&lines, w.summary.last_seq);
                (lines, pipe)
            }
        };
        if lines.is_empty() {
            continue;
        }
        let store = store.clone();
        let write = Box::pin(async move { write_with_retry(&store, &pipe).await });
        inflight = Some((write, lines));
    }
    w.summary
}

/// `text` cut to at most `max` bytes (on a character boundary), saying how many
/// were left out.
fn cut(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes not kept)",
        &text[..end],
        text.len() - end
    )
}

/// Writes one batch, retrying through a Redis outage (the container waits
/// meanwhile, or Docker keeps its output: see `executor::attach`). Gives up after
/// ten minutes.
async fn write_with_retry(store: &Store, cmd: &redis::Cmd) -> bool {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
        .retry(
            Duration::from_secs(600),
            |_| true,
            |e: &StoreError, _| tracing::warn!(error = %error_chain(e), "writing log lines failed; retrying"),
            || async {
                let mut conn = store.conn().await?;
                match cmd.query_async::<()>(&mut conn).await {
                    // A server that does not have the script yet (a restart, a new one).
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        WRITE.load_async(&mut conn).await?;
                        Ok(cmd.query_async::<()>(&mut conn).await?)
                    }
                    written => Ok::<_, StoreError>(written?),
                }
            },
        )
        .await
        .is_ok()
}

/// The `seq` of the last line stored for the job (0 if none), so a re-run continues it.
async fn last_stored_seq(store: &Store, stream_key: &str) -> u64 {
    let Ok(mut conn) = store.conn().await else {
        return 0;
    };
    let last: redis::RedisResult<redis::streams::StreamRangeReply> =
        conn.xrevrange_count(stream_key, "+", "-", 1).await;
    let Some(entry) = last.ok().and_then(|r| r.ids.into_iter().next()) else {
        return 0;
    };
    let number = |name: &str| {
        entry
            .get::<String>(name)
            .and_then(|s| s.parse::<u64>().ok())
    };
    match number("seq") {
        Some(seq) => seq + number("count").unwrap_or(1).max(1) - 1,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<(String, bool)> {
        let mut s = LineSplitter::new(LogStream::Stdout, max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out.into_iter().map(|l| (l.text, l.partial)).collect()
    }

    #[test]
    fn frames_become_lines_across_chunk_boundaries() {
        let lines = split(&[b"one\ntw", b"o\nthr", b"ee"], 100);
        assert_eq!(
            lines,
            vec![
                ("one".into(), false),
                ("two".into(), false),
                ("three".into(), false)
            ]
        );
    }

    #[test]
    fn empty_lines_and_crlf_are_kept_as_lines() {
        let lines = split(&[b"a\r\n\nb\n"], 100);
        assert_eq!(
            lines,
            vec![("a".into(), false), ("".into(), false), ("b".into(), false)]
        );
    }

    #[test]
    fn long_lines_are_split_and_marked() {
        let lines = split(&[b"abcdefghij\n"], 4);
        assert_eq!(
            lines,
            vec![
                ("abcd".into(), true),
                ("efgh".into(), true),
                ("ij".into(), false)
            ]
        );
    }

    #[test]
    fn splitting_respects_utf8_characters() {
        // "é" is two bytes; a cut after 3 bytes would land inside the second one.
        let lines = split(&["aéé\n".as_bytes()], 4);
        assert_eq!(lines, vec![("aé".into(), true), ("é".into(), false)]);
    }

    #[test]
    fn secrets_are_masked_longest_first() {
        let secrets = [
            "hunter22".to_string(),
            "hunter22-extra".to_string(),
            "ab".to_string(),
        ];
        let mask = Mask::new(&secrets);
        assert_eq!(
            mask.apply("pw=hunter22-extra and hunter22, ab"),
            "pw=*** and ***, ab"
        );
        assert!(Mask::new(&[]).is_empty());
    }

    #[test]
    fn each_kind_of_line_has_its_own_letter() {
        let line = |stream, partial| LogLine {
            stream,
            text: String::new(),
            partial,
        };
        // The script names the stream by the letter (lower case) and marks a
        // partial line by upper case (below 97, 'a').
        assert_eq!(kind(&line(LogStream::Stdout, false)), b'o');
        assert_eq!(kind(&line(LogStream::Stderr, false)), b'e');
        assert_eq!(kind(&line(LogStream::Build, false)), b'b');
        assert_eq!(kind(&line(LogStream::System, false)), b's');
        assert_eq!(kind(&line(LogStream::Stdout, true)), b'O');
        assert_eq!(kind(&line(LogStream::Stderr, true)), b'E');
    }

    #[test]
    fn runs_of_whole_lines_of_one_stream_share_an_entry() {
        let line = |stream, text: &str, partial| LogLine {
            stream,
            text: text.to_string(),
            partial,
        };
        use LogStream::*;
        let lines = [
            line(Stdout, "a", false),
            line(Stdout, "", false),
            line(Stdout, "bb", false),
            line(Stderr, "e", false),
            line(Stderr, "long", true),
            line(Stderr, "end", false),
            line(Stderr, "f", false),
            line(System, "s1", false),
            line(System, "s2", false),
            line(Stdout, "cccc", false),
            line(Stdout, "dddd", false),
            line(Stdout, "ee", false),
        ];
        // "a\n\nbb" is 5 bytes; "cccc\ndddd" 9, and "\nee" would make 12.
        assert_eq!(
            entries(&lines, 10),
            vec![0..3, 3..4, 4..5, 5..7, 7..8, 8..9, 9..11, 11..12]
        );
        // 0: every line alone, as one line a message.
        assert_eq!(entries(&lines, 0).len(), lines.len());
        assert!(entries(&[], 10).is_empty());
        // A line longer than the limit is an entry of its own, not lost.
        let big = [
            line(Stdout, "x", false),
            line(Stdout, "yyyyyyyyyyyy", false),
        ];
        assert_eq!(entries(&big, 10), vec![0..1, 1..2]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let lines = split(&[b"ok \xff\xfe\n"], 100);
        assert_eq!(lines[0].0, "ok \u{fffd}\u{fffd}");
    }

    #[test]
    fn a_long_system_line_is_cut_and_says_so() {
        assert_eq!(cut("short".into(), 10), "short");
        let long = format!("é{}", "x".repeat(5000));
        let kept = cut(long.clone(), SYSTEM_LINE_MAX);
        assert!(kept.len() < SYSTEM_LINE_MAX + 40, "{}", kept.len());
        assert!(
            kept.ends_with(&format!(
                "… ({} more bytes not kept)",
                long.len() - (SYSTEM_LINE_MAX)
            )),
            "{}",
            &kept[kept.len() - 40..]
        );
    }
}
