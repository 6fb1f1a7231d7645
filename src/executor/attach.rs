//! A container's output, read from Docker's attach stream as the engine copies
//! it from the container's pipes: one read, at the engine's speed (the json-file
//! log stays, as the fallback and for `docker logs`).
//!
//! Invariants:
//! - The stream is attached before the container starts, so that its first
//!   bytes are in it.
//! - Every byte goes into the job's log once, in order per stream. Bytes taken
//!   are counted per stream; when the attach stream is not there (attaching
//!   failed), breaks, ends while the container still runs, or when the job's log
//!   writer takes no line for [`STALL`], the rest is read from Docker's log past
//!   those counts ([`super::follow`]), and a `system` line says why.
//! - The end of the attach stream is the end of the output only once the
//!   container is no longer running: Docker closes the stream after it has
//!   copied the container's last bytes into it. The run's wait says so (the
//!   `exited` signal, which follows the stream's end within milliseconds);
//!   when it has not within [`EXIT_AFTER_CLOSE`], the engine is asked.
//! - The container is slowed (Docker's attach buffer fills) while the writer is
//!   behind, for at most [`STALL`]: then the stream is let go, so the engine
//!   writes on into its log at its own pace. A reader that stayed stuck would
//!   cost output: at the container's exit Docker waits 2 s for its pipes to
//!   drain, then cuts them, for the log file and the attach stream alike.
//!
//! Known limit: Docker answers the attach request just before it subscribes the
//! stream to the container's output; the container is started after that
//! answer, and its process needs far longer to start than that step, so output
//! is not expected to be missed at the start.

use super::follow::{self, Output};
use crate::logs::LogSender;
use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptionsBuilder;
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::time::Duration;

/// How long the reader waits for the log writer before it lets the attach
/// stream go and reads on from Docker's log (under Docker's 2 s at exit).
const STALL: Duration = Duration::from_secs(1);

/// How long the reader waits, once the attach stream has closed, for the run's
/// wait to see the exit, before it asks the engine whether the container runs.
const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(2);

/// The multiplexed stdout/stderr frames of an attached container.
pub(super) type Attached =
    Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Attaches to the created, not yet started container's stdout and stderr.
pub(super) async fn attach(docker: &Docker, id: &str) -> Result<Attached, bollard::errors::Error> {
    let opts = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .build();
    Ok(docker.attach_container(id, Some(opts)).await?.output)
}

/// How reading the attach stream ended.
enum End {
    /// The stream closed.
    Closed,
    /// Something else than the output's end: why, for the `system` line.
    Early(String),
}

/// Streams the container's output into `logs` until it ends: from `attached`
/// (or from Docker's log when attaching failed, with the error), then the last
/// line without a newline.
/// `exited` turns true once the run's wait saw the container end.
pub(super) async fn read_output(
    docker: Docker,
    id: String,
    attached: Result<Attached, String>,
    mut exited: tokio::sync::watch::Receiver<bool>,
    logs: LogSender,
    max_line: usize,
) {
    let mut output = Output::new(max_line);
    let why = match attached {
        Err(e) => format!("attaching to the container's output failed ({e})"),
        Ok(stream) => match from_attach(&mut output, stream, &logs).await {
            End::Closed if ended(&mut exited, &docker, &id).await => {
                return output.finish(&logs).await;
            }
            End::Closed => "the attach stream closed while the container runs".to_string(),
            End::Early(why) => why,
        },
    };
    logs.system(format!(
        "{why}; reading the rest of the output from the container's log"
    ))
    .await;
    follow::follow_logs(docker, id, output, logs).await;
}

async fn from_attach(output: &mut Output, mut stream: Attached, logs: &LogSender) -> End {
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(LogOutput::StdOut { message }) => output.take(0, &message),
            Ok(LogOutput::StdErr { message }) => output.take(1, &message),
            Ok(LogOutput::StdIn { .. }) => continue,
            // Bytes outside a frame: the stream was cut mid-frame (bollard hands
            // the rest over as console output at its end); they are not taken.
            Ok(LogOutput::Console { .. }) => {
                return End::Early("the attach stream was cut mid-frame".to_string())
            }
            Err(e) => return End::Early(format!("the attach stream broke ({e})")),
        }
        if !output.send_within(logs, STALL).await {
            return End::Early(format!(
                "the job's log writer took no line for {} s (Redis slow or unreachable?)",
                STALL.as_secs()
            ));
        }
    }
    End::Closed
}

/// Whether the container has ended, once its attach stream closed: the run's
/// wait says so soon after, or else the engine is asked.
async fn ended(exited: &mut tokio::sync::watch::Receiver<bool>, docker: &Docker, id: &str) -> bool {
    let said = tokio::time::timeout(EXIT_AFTER_CLOSE, exited.wait_for(|e| *e))
        .await
        .is_ok_and(|seen| seen.is_ok());
    said || !still_running(docker, id).await
}

/// Whether Docker says the container runs. When it cannot say, no: the attach
/// stream's end is then taken as the output's (its log could not be read either).
async fn still_running(docker: &Docker, id: &str) -> bool {
    match docker.inspect_container(id, None).await {
        Ok(inspect) => inspect.state.and_then(|s| s.running).unwrap_or(false),
        Err(e) => {
            tracing::warn!(container = %id, error = %e, "inspecting the container after its output ended failed");
            false
        }
    }
}
