//! How a run ended, in the job's terms: the executor's outcome (exit code, OOM,
//! timeout, `result.json`, output files, or a Docker error) becomes the record's
//! status, reason, result and error. Pure bookkeeping, plus the `system` log lines
//! that tell the job's reader what happened.

use crate::executor::{ExecError, ResultFile, RunOutcome};
use crate::job::{Job, Reason};
use crate::logs::LogSender;
use crate::state::{FileInfo, JobRecord};
use crate::telemetry::error_chain;
use sha2::{Digest, Sha256};

/// Fills the record's outcome from the run; returns the files to store.
pub(super) async fn conclude(
    record: &mut JobRecord,
    job: &Job,
    outcome: Result<RunOutcome, ExecError>,
    log: &LogSender,
) -> Vec<(String, Vec<u8>)> {
    let run = match outcome {
        Ok(run) => run,
        Err(e) => {
            let (reason, exit_code) = classify(&e);
            let message = error_chain(&e);
            log.system(message.clone()).await;
            record.exit_code = exit_code;
            record.abort(reason, message);
            return Vec::new();
        }
    };
    record.exit_code = Some(run.exit_code);
    record.image_id = run.image_id.clone();
    record.files = run
        .output
        .files
        .iter()
        .map(|(name, content)| FileInfo {
            name: name.clone(),
            size: content.len() as u64,
            sha256: hex::encode(Sha256::digest(content)),
            location: crate::state::IN_REDIS.to_string(),
        })
        .chain(run.output.uploaded.iter().map(|u| FileInfo {
            name: u.name.clone(),
            size: u.size,
            sha256: u.sha256.clone(),
            location: u.location.clone(),
        }))
        .collect();
    record.files_dropped = run.output.dropped.clone();
    if !run.output.dropped.is_empty() {
        log.system(format!(
            "output files not kept: {}",
            run.output.dropped.join(", ")
        ))
        .await;
    }

    let mut notes = Vec::new();
    if !run.output.dropped.is_empty() {
        notes.push(format!(
            "{} output file(s) not kept (see files_dropped)",
            run.output.dropped.len()
        ));
    }
    let mut by_job_abort = None;
    match run.output.result.clone() {
        Some(ResultFile::Completed { text, data }) => {
            record.result_text = text;
            record.result_data = data;
        }
        Some(ResultFile::Aborted { text, data }) => by_job_abort = Some((text, data)),
        Some(ResultFile::Invalid(why)) => {
            log.system(format!("result ignored: {why}")).await;
            notes.push(format!("result ignored: {why}"));
        }
        None => {}
    }

    if run.timed_out {
        notes.insert(
            0,
            format!(
                "timed out after {} s (limits.timeout_seconds)",
                job.limits.timeout.as_secs()
            ),
        );
        record.abort(Reason::Timeout, notes.join("; "));
    } else if let Some((text, data)) = by_job_abort {
        record.result_data = data;
        notes.insert(
            0,
            text.unwrap_or_else(|| "the job aborted itself (result.json)".to_string()),
        );
        record.abort(Reason::AbortedByJob, notes.join("; "));
    } else if run.exit_code == 0 {
        record.complete();
        record.error = (!notes.is_empty()).then(|| notes.join("; "));
    } else {
        let exited = match job.executor {
            crate::job::ExecutorKind::Docker => exit_message(&run, job.limits.memory),
            crate::job::ExecutorKind::Local | crate::job::ExecutorKind::Ssh => {
                format!("the process exited with code {}", run.exit_code)
            }
        };
        notes.insert(0, exited);
        record.abort(Reason::ExitCode, notes.join("; "));
    }
    run.output.files
}

/// The reason for an executor error, and an exit code where Docker implies one
/// (127: command not found, 126: not executable, as `docker run` reports them).
pub(super) fn classify(e: &ExecError) -> (Reason, Option<i64>) {
    match e {
        ExecError::ImageNotFound(_) => (Reason::ImageNotFound, None),
        ExecError::Start { message } => {
            let m = message.to_ascii_lowercase();
            if m.contains("executable file not found") || m.contains("no such file or directory") {
                (Reason::ExitCode, Some(127))
            } else if m.contains("permission denied") {
                (Reason::ExitCode, Some(126))
            } else {
                (Reason::DockerError, None)
            }
        }
        ExecError::Pull { .. } => (Reason::ImageNotFound, None),
        ExecError::Transfer(t) if t.is_denied() => (Reason::PolicyDenied, None),
        ExecError::Transfer(_) => (Reason::TransferError, None),
        // As a shell reports them: not found 127, not executable 126.
        ExecError::Spawn { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => (Reason::ExitCode, Some(127)),
            std::io::ErrorKind::PermissionDenied => (Reason::ExitCode, Some(126)),
            _ => (Reason::DockerError, None),
        },
        ExecError::PullTimedOut { .. } => (Reason::Timeout, None),
        // The host went away with the job (before it started, the worker runs it
        // again without using up an attempt: see `attempt::not_started`). It may
        // have done part of its work: as when a worker dies, `retry.on`
        // `worker_lost` decides whether it runs again.
        ExecError::Ssh {
            kind: crate::executor::SshFailure::Unreachable,
            ..
        } => (Reason::WorkerLost, None),
        ExecError::Ssh { .. } => (Reason::DockerError, None),
        ExecError::Connect { .. }
        | ExecError::Docker { .. }
        | ExecError::Service { .. }
        | ExecError::Local { .. }
        | ExecError::Unusable(_) => (Reason::DockerError, None),
        ExecError::AfterStart(inner) => classify(inner),
    }
}

/// Why a non-zero exit ended the job, in words.
fn exit_message(run: &RunOutcome, memory: u64) -> String {
    let limit = crate::config::ByteSize(memory);
    if run.oom_killed {
        return format!(
            "the container was killed for running out of memory (OOMKilled, limits.memory = {limit}), exit code {}",
            run.exit_code
        );
    }
    if run.exit_code == 137 && !run.timed_out && !run.stopped {
        // The kernel may kill a process inside the container for memory without
        // Docker flagging the container: say what is likely, not what is known.
        return format!(
            "the container exited with code 137 (SIGKILL; often the memory limit, limits.memory = {limit}, though Docker did not report an OOM kill)"
        );
    }
    format!("the container exited with code {}", run.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(exit_code: i64, oom_killed: bool) -> RunOutcome {
        RunOutcome {
            exit_code,
            oom_killed,
            timed_out: false,
            stopped: false,
            image_id: None,
            output: Default::default(),
        }
    }

    #[test]
    fn an_exit_says_what_is_known_and_what_is_likely() {
        let oom = exit_message(&run(137, true), 16 << 20);
        assert!(oom.contains("OOMKilled") && oom.contains("16 MiB"), "{oom}");
        let killed = exit_message(&run(137, false), 16 << 20);
        assert!(
            killed.contains("SIGKILL") && killed.contains("did not report an OOM kill"),
            "{killed}"
        );
        let mut timed_out = run(137, false);
        timed_out.timed_out = true;
        assert_eq!(
            exit_message(&timed_out, 16 << 20),
            "the container exited with code 137"
        );
        assert_eq!(
            exit_message(&run(3, false), 16 << 20),
            "the container exited with code 3"
        );
    }
}
