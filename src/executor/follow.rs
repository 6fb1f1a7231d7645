//! A container's output, read from Docker's log (json-file): the fallback of
//! [`super::attach`] when the attach stream is not there or ends early.
//!
//! Invariant: every byte of the output goes into the job's log once. The
//! [`Output`] handed in counts, per stream, the bytes already taken (from the
//! attach stream); reading the log passes over that many bytes of each stream
//! before taking any, so nothing is sent twice and nothing is skipped.

use crate::logs::{LineSplitter, LogLine, LogSender, LogStream};
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use std::time::Duration;

/// A container's output as it is taken: the lines of stdout and stderr, and how
/// many bytes of each were taken.
pub(super) struct Output {
    out: LineSplitter,
    err: LineSplitter,
    /// Bytes taken per stream: 0 stdout, 1 stderr.
    seen: [usize; 2],
    /// Lines made and not yet sent.
    lines: Vec<LogLine>,
}

impl Output {
    pub(super) fn new(max_line: usize) -> Self {
        Output {
            out: LineSplitter::new(LogStream::Stdout, max_line),
            err: LineSplitter::new(LogStream::Stderr, max_line),
            seen: [0; 2],
            lines: Vec::new(),
        }
    }

    /// Takes bytes of stream `index` (0 stdout, 1 stderr).
    pub(super) fn take(&mut self, index: usize, bytes: &[u8]) {
        self.seen[index] += bytes.len();
        let splitter = if index == 0 {
            &mut self.out
        } else {
            &mut self.err
        };
        splitter.push(bytes, &mut self.lines);
    }

    /// Sends the lines made so far.
    pub(super) async fn send(&mut self, logs: &LogSender) {
        for line in self.lines.drain(..) {
            logs.send(line).await;
        }
    }

    /// Sends the lines made so far unless the writer takes none for `limit`;
    /// then keeps the rest (for [`Output::send`] later) and returns false.
    pub(super) async fn send_within(&mut self, logs: &LogSender, limit: Duration) -> bool {
        let mut pending = std::mem::take(&mut self.lines).into_iter();
        while let Some(line) = pending.next() {
            if let Err(line) = logs.send_within(line, limit).await {
                self.lines.push(line);
                self.lines.extend(pending);
                return false;
            }
        }
        true
    }

    /// Sends what is left, a last line without a newline included.
    pub(super) async fn finish(mut self, logs: &LogSender) {
        self.out.finish(&mut self.lines);
        self.err.finish(&mut self.lines);
        self.send(logs).await;
    }
}

/// Reads the container's log into `logs` until the container's output ends,
/// past the bytes `output` has taken already, and then finishes `output`.
///
/// Docker can end a follow stream before it has written the container's last
/// output to its log (seen with a final line that has no newline: it is flushed
/// when the pipe closes, which can come after the stop that ends the follow). So
/// once the follow ends, the whole log is read again without following, and
/// whatever goes past the bytes taken, per stream, is taken too.
pub(super) async fn follow_logs(docker: Docker, id: String, mut output: Output, logs: LogSender) {
    for follow in [true, false] {
        let opts = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .build();
        let mut stream = docker.logs(&id, Some(opts));
        let mut skip = output.seen;
        while let Some(frame) = stream.next().await {
            let (index, bytes) = match frame {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    (0, message)
                }
                Ok(LogOutput::StdErr { message }) => (1, message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) => {
                    logs.system(format!("reading the container's log failed: {e}"))
                        .await;
                    break;
                }
            };
            let already = skip[index].min(bytes.len());
            skip[index] -= already;
            output.take(index, &bytes[already..]);
            output.send(&logs).await;
        }
    }
    output.finish(&logs).await;
}
