//! A container's output, read from Docker's log into the job's log as it comes.

use crate::logs::{LineSplitter, LogSender, LogStream};
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

/// Streams the container's output into `logs` while it runs.
///
/// Docker can end a follow stream before it has written the container's last
/// output to its log (seen with a final line that has no newline: it is flushed
/// when the pipe closes, which can come after the stop that ends the follow). So
/// once the follow ends, the whole log is read again without following, and
/// whatever goes past the bytes already seen, per stream, is sent too.
pub(super) async fn follow_logs(docker: Docker, id: String, logs: LogSender, max_line: usize) {
    let mut out = LineSplitter::new(LogStream::Stdout, max_line);
    let mut err = LineSplitter::new(LogStream::Stderr, max_line);
    let mut seen = [0usize; 2];
    let mut lines = Vec::new();
    let follow = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = docker.logs(&id, Some(follow));
    while let Some(frame) = stream.next().await {
        let Some((index, bytes)) = frame_bytes(frame, &mut lines) else {
            break;
        };
        seen[index] += bytes.len();
        if index == 0 {
            out.push(&bytes, &mut lines)
        } else {
            err.push(&bytes, &mut lines)
        }
        for line in lines.drain(..) {
            logs.send(line).await;
        }
    }

    let again = LogsOptionsBuilder::default()
        .follow(false)
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = docker.logs(&id, Some(again));
    let mut skip = seen;
    while let Some(frame) = stream.next().await {
        let Some((index, bytes)) = frame_bytes(frame, &mut lines) else {
            break;
        };
        let already = skip[index].min(bytes.len());
        skip[index] -= already;
        let rest = &bytes[already..];
        if index == 0 {
            out.push(rest, &mut lines)
        } else {
            err.push(rest, &mut lines)
        }
        for line in lines.drain(..) {
            logs.send(line).await;
        }
    }
    out.finish(&mut lines);
    err.finish(&mut lines);
    for line in lines.drain(..) {
        logs.send(line).await;
    }
}

/// A frame's stream (0 stdout, 1 stderr) and bytes; `None` at an error, which is
/// reported as a system line.
fn frame_bytes(
    frame: Result<bollard::container::LogOutput, bollard::errors::Error>,
    lines: &mut Vec<crate::logs::LogLine>,
) -> Option<(usize, bytes::Bytes)> {
    use bollard::container::LogOutput;
    match frame {
        Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
            Some((0, message))
        }
        Ok(LogOutput::StdErr { message }) => Some((1, message)),
        Ok(LogOutput::StdIn { .. }) => Some((0, bytes::Bytes::new())),
        Err(e) => {
            lines.push(crate::logs::LogLine {
                stream: LogStream::System,
                text: format!("reading the container's log failed: {e}"),
                partial: false,
            });
            None
        }
    }
}
