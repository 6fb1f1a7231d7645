//! The life of one claimed entry: parse, claim the id, validate, run, record, ack.
//!
//! Invariants:
//! - The entry is acknowledged only after the job's terminal state is written (or
//!   the entry is found to be a duplicate or an already-finished redelivery).
//! - A job that cannot be parsed or validated is recorded `aborted` with reason
//!   `invalid_spec` (or `policy_denied`) and its raw entry kept in the dead stream.
//! - If Redis is unreachable when the outcome must be written, the write is retried;
//!   if that fails for good the entry stays pending, to be run again, never lost.

use super::Ctx;
use crate::backoff::Backoff;
use crate::executor::{ExecError, ResultFile, RunContext, RunOutcome};
use crate::job::{self, Job, Reason, Rejection, Status};
use crate::logs::{self, LogSender};
use crate::queue::{self, Entry};
use crate::state::{self, Claim, FileInfo, JobRecord};
use crate::store::StoreError;
use crate::telemetry::error_chain;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// Handles one entry while holding `permit`.
pub(crate) async fn run(ctx: Ctx, entry: Entry, permit: OwnedSemaphorePermit) {
    let span = tracing::info_span!("job", queue = %entry.queue, entry = %entry.id, job_id = tracing::field::Empty);
    if let Err(e) = handle(&ctx, &entry).instrument(span).await {
        tracing::error!(
            queue = %entry.queue,
            entry = %entry.id,
            error = %error_chain(&e),
            "could not record the job's outcome; the entry stays pending"
        );
    }
    drop(permit);
}

async fn handle(ctx: &Ctx, entry: &Entry) -> Result<(), StoreError> {
    let raw: &[u8] = entry.job.as_deref().unwrap_or_default();
    let parsed = match &entry.job {
        None => Err(Rejection::invalid(
            "job",
            "the stream entry has no `job` field",
        )),
        Some(raw) => job::parse(raw),
    };
    let (id, parsed) = job_id(entry, parsed);
    tracing::Span::current().record("job_id", id.as_str());

    let created_at = crate::time::from_stream_id(&entry.id).unwrap_or_else(crate::time::now);
    let mut record = JobRecord::new(&id, &entry.queue, created_at);
    if let Ok(spec) = &parsed {
        record.metadata = spec.metadata.clone();
        record.image = spec.image.clone();
    }

    let claim = persist(ctx, |mut conn| {
        let record = &record;
        async move { state::claim(&mut conn, &ctx.keys, &entry.id, record, raw).await }
    })
    .await?;
    let attempt = match claim {
        Claim::New => 1,
        Claim::Duplicate { status } => {
            tracing::info!(existing_status = %status, "duplicate job id; not run again");
            let body = serde_json::json!({
                "type": "job.duplicate",
                "timestamp": crate::time::now(),
                "data": { "id": id, "queue": entry.queue, "entry": entry.id, "status": status, "metadata": record.metadata },
            });
            persist(ctx, |mut conn| {
                let body = body.to_string();
                async move { state::publish(&mut conn, &ctx.keys, &body).await }
            })
            .await?;
            return ack(ctx, entry).await;
        }
        Claim::Redelivered { status, .. }
            if Status::parse(&status).is_some_and(Status::is_terminal) =>
        {
            // The job finished but its entry was not acknowledged: finish that step only.
            return ack(ctx, entry).await;
        }
        Claim::Redelivered { attempt, .. } => attempt + 1,
    };
    record.attempt = attempt;

    let job = parsed.and_then(|spec| {
        job::validate(
            spec,
            id.clone(),
            &entry.queue,
            &ctx.settings.jobs.limits,
            &ctx.settings.policy,
        )
    });
    let job = match job {
        Ok(job) => job,
        Err(rejection) => return reject(ctx, entry, record, rejection, raw).await,
    };

    record.set_status(Status::Running);
    record.started_at = Some(crate::time::now());
    record.worker = Some(ctx.worker_id.clone());
    record.image = Some(job.image.clone());
    write(ctx, entry, &record, "job.started").await?;
    tracing::info!(image = %job.image, attempt, "job started");

    let (log, writer) = logs::spawn_writer(
        ctx.store.clone(),
        ctx.keys.clone(),
        id.clone(),
        job.limits.log_bytes,
    );
    let outcome = ctx
        .executor
        .run(
            &job,
            RunContext {
                attempt,
                logs: &log,
            },
        )
        .await;
    let files = conclude(&mut record, &job, outcome, &log).await;
    drop(log);
    let summary = writer.await.unwrap_or_default();
    if summary.lines_lost > 0 {
        let note = format!(
            "{} log lines could not be stored (Redis unreachable)",
            summary.lines_lost
        );
        record.error = Some(match record.error.take() {
            Some(e) => format!("{e}; {note}"),
            None => note,
        });
    }

    persist(ctx, |mut conn| {
        let (keys, files, id) = (&ctx.keys, &files, &id);
        async move { state::store_files(&mut conn, keys, id, files).await }
    })
    .await?;
    let event = if record.status == Status::Completed.as_str() {
        "job.completed"
    } else {
        "job.aborted"
    };
    write(ctx, entry, &record, event).await?;
    tracing::info!(status = record.status, reason = record.reason.unwrap_or(""), exit_code = ?record.exit_code, "job finished");
    ack(ctx, entry).await
}

/// The job's id: the spec's `id` if it is valid, else the stream entry id. A spec
/// whose `id` is invalid is itself rejected, naming the field.
fn job_id(
    entry: &Entry,
    parsed: Result<job::JobSpec, Rejection>,
) -> (String, Result<job::JobSpec, Rejection>) {
    match parsed {
        Ok(spec) => match spec.id.clone() {
            None => (entry.id.clone(), Ok(spec)),
            Some(id) if job::is_valid_job_id(&id) => (id, Ok(spec)),
            Some(id) => (
                entry.id.clone(),
                Err(Rejection::invalid(
                    "id",
                    format!("{id:?} is not a job id ([A-Za-z0-9_.:-], 1 to 128 characters)"),
                )),
            ),
        },
        Err(rejection) => {
            let id = entry
                .job
                .as_deref()
                .and_then(job::requested_id)
                .unwrap_or_else(|| entry.id.clone());
            (id, Err(rejection))
        }
    }
}

/// Records a job refused before running, and keeps its raw entry in the dead stream.
async fn reject(
    ctx: &Ctx,
    entry: &Entry,
    mut record: JobRecord,
    rejection: Rejection,
    raw: &[u8],
) -> Result<(), StoreError> {
    tracing::warn!(reason = %rejection.reason, error = %rejection.message, "job refused");
    record.abort(rejection.reason, rejection.message.clone());
    write(ctx, entry, &record, "job.aborted").await?;
    persist(ctx, |mut conn| {
        let (record, keys) = (&record, &ctx.keys);
        let max = ctx.settings.jobs.dead_max_len;
        let fields: Vec<(&str, &[u8])> = vec![
            ("id", record.id.as_bytes()),
            ("entry", entry.id.as_bytes()),
            ("reason", record.reason.unwrap_or_default().as_bytes()),
            ("error", rejection.message.as_bytes()),
            ("job", raw),
        ];
        async move { state::bury(&mut conn, keys, &entry.queue, max, &fields).await }
    })
    .await?;
    ack(ctx, entry).await
}

/// Fills the record's outcome from the run; returns the files to store.
async fn conclude(
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
        })
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
        let mut why = format!("the container exited with code {}", run.exit_code);
        if run.oom_killed {
            why = format!(
                "the container was killed for running out of memory (OOMKilled, limits.memory = {}), exit code {}",
                crate::size::ByteSize(job.limits.memory),
                run.exit_code
            );
        }
        notes.insert(0, why);
        record.abort(Reason::ExitCode, notes.join("; "));
    }
    run.output.files
}

/// The reason for an executor error, and an exit code where Docker implies one
/// (127: command not found, 126: not executable, as `docker run` reports them).
fn classify(e: &ExecError) -> (Reason, Option<i64>) {
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
        ExecError::Connect { .. } | ExecError::Docker { .. } => (Reason::DockerError, None),
    }
}

async fn write(
    ctx: &Ctx,
    entry: &Entry,
    record: &JobRecord,
    event: &str,
) -> Result<(), StoreError> {
    let retention = ctx.settings.jobs.retention_seconds;
    let written = persist(ctx, |mut conn| async move {
        state::write(&mut conn, &ctx.keys, &entry.id, record, event, retention).await
    })
    .await?;
    if !written {
        tracing::warn!(
            "the job hash belongs to another entry now; this run's state was not written"
        );
    }
    Ok(())
}

async fn ack(ctx: &Ctx, entry: &Entry) -> Result<(), StoreError> {
    persist(ctx, |mut conn| async move {
        queue::ack(&mut conn, &ctx.keys, &entry.queue, &entry.id).await
    })
    .await
}

/// Runs a Redis step with a fresh connection, retrying while Redis is unreachable,
/// for up to `worker.lease_seconds`: after that another worker may own the job.
async fn persist<T, F, Fut>(ctx: &Ctx, step: F) -> Result<T, StoreError>
where
    F: Fn(crate::store::Conn) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(ctx.settings.worker.lease_seconds);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let result = match ctx.store.conn().await {
            Ok(conn) => step(conn).await,
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.is_connection() && tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %error_chain(&e), "Redis unreachable while recording a job; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            other => return other,
        }
    }
}
