//! The life of one claimed entry: parse, claim the id, validate, run, record, ack.
//!
//! Invariants:
//! - The entry is acknowledged only after the job's terminal state is written (or
//!   the entry is found to be a duplicate or an already-finished redelivery).
//! - A job that cannot be parsed or validated is recorded `aborted` with reason
//!   `invalid_spec` (or `policy_denied`) and its raw entry kept in the dead stream.
//! - If Redis is unreachable when the outcome must be written, the write is retried;
//!   if that fails for good the entry stays pending, to be run again, never lost.

use super::ending::{ack, make_deliveries, Run};
use super::outcome::conclude;
use super::running::{Registration, StopCause};
use super::{prepare, Ctx};
use crate::backoff::Backoff;
use crate::executor::RunContext;
use crate::job::{self, Job, Reason, Rejection, Status};
use crate::logs;
use crate::queue::Entry;
use crate::state::{self, Claim, JobRecord};
use crate::store::StoreError;
use crate::telemetry::error_chain;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// Handles one entry while holding `permit`; `registration` keeps its lease renewed.
pub(crate) async fn run(
    ctx: Ctx,
    entry: Entry,
    registration: Registration,
    permit: OwnedSemaphorePermit,
) {
    let span = tracing::info_span!("job", queue = %entry.queue, entry = %entry.id, job_id = tracing::field::Empty);
    if let Err(e) = handle(&ctx, &entry, &registration).instrument(span).await {
        tracing::error!(
            queue = %entry.queue,
            entry = %entry.id,
            error = %error_chain(&e),
            "could not record the job's outcome; the entry stays pending"
        );
    }
    drop(registration);
    drop(permit);
}

async fn handle(ctx: &Ctx, entry: &Entry, registration: &Registration) -> Result<(), StoreError> {
    let raw: &[u8] = entry.job.as_deref().unwrap_or_default();
    // What is stored (job hash, dead stream): the entry without its secret values.
    let stored = job::redact(raw);
    let stored: &[u8] = &stored;
    let parsed = match &entry.job {
        None => Err(Rejection::invalid(
            "job",
            "the stream entry has no `job` field",
        )),
        Some(raw) => job::parse(raw),
    };
    let (id, parsed) = job_id(entry, parsed);
    tracing::Span::current().record("job_id", id.as_str());
    registration.set_job(&id);

    let created = crate::time::from_stream_id(&entry.id).unwrap_or_else(crate::time::now);
    let mut record = JobRecord::new(&id, &entry.queue, created);
    if let Ok(spec) = &parsed {
        record.metadata = spec.metadata.clone();
        record.image = spec.image.clone();
    }

    let claimed = persist(ctx, |mut conn| {
        let record = &record;
        async move {
            state::claim(
                &mut conn,
                &ctx.keys,
                &entry.id,
                record,
                stored,
                &ctx.consumer,
                &entry.token,
                ctx.settings.jobs.events_max_len,
            )
            .await
        }
    })
    .await?;
    match &claimed.claim {
        Claim::Duplicate { status } => {
            tracing::info!(existing_status = %status, "duplicate job id; not run again");
            let body = serde_json::json!({
                "type": "job.duplicate",
                "timestamp": crate::time::now(),
                "data": { "id": id, "queue": entry.queue, "entry": entry.id, "status": status, "metadata": record.metadata },
            });
            persist(ctx, |mut conn| {
                let body = body.to_string();
                let (id, max) = (&id, ctx.settings.jobs.events_max_len);
                async move {
                    state::publish(&mut conn, &ctx.keys, "job.duplicate", id, &body, max).await
                }
            })
            .await?;
            return ack(ctx, entry).await;
        }
        Claim::Redelivered { status } if Status::parse(status).is_some_and(Status::is_terminal) => {
            // The job finished but its entry was not acknowledged: finish those steps only.
            make_deliveries(ctx, &id).await?;
            return ack(ctx, entry).await;
        }
        _ => {}
    }
    // From here this worker owns the job; every write checks that it still does.
    record.attempt = claimed.attempt;
    if !claimed.created_at.is_empty() {
        record.created_at = claimed.created_at.clone();
    }
    let run = Run {
        ctx,
        entry,
        raw,
        stored,
    };

    let parsed = match parsed {
        Ok(spec) => prepare::with_profile(ctx, raw, spec).await?,
        Err(rejection) => Err(rejection),
    };
    if let (Ok(spec), None) = (&parsed, &record.metadata) {
        record.metadata = spec.metadata.clone(); // from the profile
    }
    let job = parsed.and_then(|spec| {
        let created = chrono::DateTime::parse_from_rfc3339(&record.created_at)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|_| chrono::Utc::now());
        job::validate_at(
            spec,
            id.clone(),
            &entry.queue,
            &ctx.settings.jobs.limits,
            &ctx.settings.policy,
            created,
        )
    });
    let job = match job {
        Ok(job) => job,
        Err(rejection) => return run.reject(record, rejection).await,
    };

    if claimed.cancel_requested {
        record.abort(Reason::Cancelled, "cancelled before it started");
        return run.finish(record, &job).await;
    }
    let lost_runs = claimed.deliveries.saturating_sub(1);
    if matches!(claimed.claim, Claim::Redelivered { .. })
        && lost_runs >= ctx.settings.worker.max_deliveries
    {
        record.abort(
            Reason::WorkerLost,
            format!(
                "its worker was lost {lost_runs} times (worker.max_deliveries = {})",
                ctx.settings.worker.max_deliveries
            ),
        );
        return run.finish(record, &job).await;
    }
    if claimed.claim == Claim::New {
        if let Some(at) = job
            .not_before
            .filter(|at| *at > chrono::Utc::now() + chrono::Duration::milliseconds(50))
        {
            tracing::info!(run_at = %at, "job scheduled for later");
            return run.schedule(record, at, "job.queued").await;
        }
    }

    attempt(&run, registration, record, job, id).await
}

/// One attempt of a job this worker owns: its image (built from git when it comes
/// from git), its container, and the record of how it went.
async fn attempt(
    run: &Run<'_>,
    registration: &Registration,
    mut record: JobRecord,
    job: Job,
    id: String,
) -> Result<(), StoreError> {
    let (ctx, entry) = (run.ctx, run.entry);
    record.attempt += 1;
    record.started_at = Some(crate::time::now());
    record.finished_at = None;
    record.worker = Some(ctx.worker_id.clone());
    // Started before any build, so the build's lines and the run's share one seq.
    let mask = logs::Mask::new(job.secret_env.values());
    let (log, writer) = logs::spawn_writer(
        ctx.store.clone(),
        ctx.keys.clone(),
        id.clone(),
        job.limits.log_bytes,
        mask.clone(),
    );
    let mut job = job;
    if job.git.is_some() {
        record.set_status(Status::Building);
        if !run.write(&record, "", &[]).await? {
            return Ok(()); // another worker owns the job now
        }
        let prepared = tokio::select! {
            prepared = prepare::git_image(ctx, &mut job, &mut record, &log) => Some(prepared),
            _ = registration.stop.cancelled() => None,
        };
        let failure = match prepared {
            Some(Ok(())) => None,
            Some(Err(failure)) => Some(failure),
            // As after a run: back to the queue, unless another worker has the job
            // now (then the ownership checks refuse the writes and the ack).
            None if matches!(
                registration.cause(),
                Some(StopCause::Drain | StopCause::Fenced)
            ) =>
            {
                drop(log);
                let _ = writer.await;
                record.set_status(Status::Queued);
                return run.requeue(record).await;
            }
            None => Some(prepare::Failure {
                reason: Reason::Cancelled,
                message: "cancelled by request while the image was being prepared".into(),
                docker_unreachable: false,
            }),
        };
        if let Some(failure) = failure.as_ref().filter(|f| f.docker_unreachable) {
            ctx.executor.mark_unreachable(&failure.message);
            log.system(format!("{}; nothing of the job ran", failure.message))
                .await;
            drop(log);
            let _ = writer.await;
            return run
                .docker_retry(record, &job, failure.message.clone())
                .await;
        }
        if let Some(failure) = failure {
            log.system(failure.message.clone()).await;
            drop(log);
            let _ = writer.await;
            record.abort(failure.reason, failure.message);
            return run.finish(record, &job).await;
        }
    }
    record.set_status(Status::Running);
    record.image = Some(job.image.clone());
    if !run.write(&record, "job.started", &[]).await? {
        return Ok(()); // another worker owns the job now
    }
    tracing::info!(image = %job.image, attempt = record.attempt, "job started");
    // Result URLs, for a job that has a network to reach them on.
    let urls = super::results::open(ctx, &mut job);
    let deployment = ctx.deployment().await?;
    let outcome = ctx
        .executor
        .run(
            &job,
            RunContext {
                attempt: record.attempt,
                logs: &log,
                stop: &registration.stop,
                entry: &entry.id,
                deployment,
            },
        )
        .await;
    if let Err(e) = &outcome {
        if e.is_transient() && !e.after_start() && !registration.stop.is_cancelled() {
            let error = error_chain(e);
            log.system(format!("{error}; nothing of the job ran")).await;
            drop(log);
            let _ = writer.await;
            return run.docker_retry(record, &job, error).await;
        }
    }
    let stopped = outcome.as_ref().is_ok_and(|o| o.stopped);
    let mut files = conclude(&mut record, &job, outcome, &log).await;
    if let Some(posted) = urls.and_then(|u| u.take()) {
        super::results::apply(&mut record, &mut files, posted, &log).await;
    }
    let cause = if stopped { registration.cause() } else { None };
    match cause {
        Some(StopCause::Cancelled) => {
            log.system("cancelled by request; the container was stopped")
                .await
        }
        Some(StopCause::Drain) => {
            log.system("the worker is shutting down; the job goes back to its queue")
                .await
        }
        Some(StopCause::Fenced) => {
            log.system("this worker lost the job's lease; the container was stopped")
                .await
        }
        None => {}
    }
    drop(log);
    let summary = writer.await.unwrap_or_default();
    let keep = ctx.settings.webhooks.log_tail_lines;
    record.log_tail = summary
        .tail
        .iter()
        .skip(summary.tail.len().saturating_sub(keep))
        .cloned()
        .collect();
    // A job may print or return a secret: its result and error are masked too.
    if !mask.is_empty() {
        record.result_text = record.result_text.as_deref().map(|t| mask.apply(t));
        record.error = record.error.as_deref().map(|t| mask.apply(t));
        record.result_data = record.result_data.take().map(|d| {
            serde_json::from_str(&mask.apply(&d.to_string())).unwrap_or(serde_json::Value::Null)
        });
    }
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

    match cause {
        // Fenced: if another worker has taken the job over, every write and the ack
        // below are refused by the ownership checks, and the job is left to it. If
        // nobody took it (Redis was just away), the job goes back to its queue.
        Some(StopCause::Drain | StopCause::Fenced) => {
            record.set_status(Status::Queued);
            record.reason = None;
            record.error = None;
            record.finished_at = None;
            return run.requeue(record).await;
        }
        Some(StopCause::Cancelled) => record.abort(Reason::Cancelled, "cancelled by request"),
        None => {}
    }

    persist(ctx, |mut conn| {
        let (keys, files, id) = (&ctx.keys, &files, &id);
        async move { state::store_files(&mut conn, keys, id, files).await }
    })
    .await?;
    run.finish(record, &job).await
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

/// How long a job's Redis step keeps retrying while Redis is unreachable. The
/// ownership checks make a late write safe (a job another worker took over is not
/// overwritten), so this is long: giving up would leave the entry pending under
/// this live worker, where nobody would take it over.
const PERSIST_FOR: Duration = Duration::from_secs(600);

/// Runs a Redis step with a fresh connection, retrying while Redis is unreachable.
pub(super) async fn persist<T, F, Fut>(ctx: &Ctx, step: F) -> Result<T, StoreError>
where
    F: Fn(crate::store::Conn) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + PERSIST_FOR;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let result = match ctx.store.conn().await {
            Ok(conn) => step(conn).await,
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.is_connection() && tokio::time::Instant::now() < deadline => {
                if backoff.failures() == 0 {
                    tracing::warn!(error = %error_chain(&e), "Redis unreachable while recording a job; retrying");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            other => return other,
        }
    }
}
