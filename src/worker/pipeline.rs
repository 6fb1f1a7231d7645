//! The life of one claimed entry: parse, claim the id, validate, run, record, ack.
//!
//! Invariants:
//! - The entry is acknowledged only after the job's terminal state is written (or
//!   the entry is found to be a duplicate or an already-finished redelivery).
//! - A job that cannot be parsed or validated is recorded `aborted` with reason
//!   `invalid_spec` (or `policy_denied`) and its raw entry kept in the dead stream.
//! - If Redis is unreachable when the outcome must be written, the write is retried;
//!   if that fails for good the entry stays pending, to be run again, never lost.

use super::outcome::conclude;
use super::running::{Registration, StopCause};
use super::{prepare, Ctx};
use crate::backoff::Backoff;
use crate::executor::RunContext;
use crate::job::{self, Job, Reason, Rejection, Status};
use crate::logs;
use crate::queue::{self, Entry};
use crate::state::{self, Claim, JobRecord, Owner};
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

/// One claimed entry that this worker owns, and the steps that end its turn.
struct Run<'a> {
    ctx: &'a Ctx,
    entry: &'a Entry,
    /// The entry as submitted: what a re-run is made from.
    raw: &'a [u8],
    /// The entry with secrets redacted: what is kept for people to read.
    stored: &'a [u8],
}

impl Run<'_> {
    fn owner(&self) -> Owner<'_> {
        Owner {
            entry: &self.entry.id,
            consumer: &self.ctx.consumer,
        }
    }

    async fn write(
        &self,
        record: &JobRecord,
        event: &str,
        extra: &[(&str, String)],
    ) -> Result<bool, StoreError> {
        let (ctx, owner) = (self.ctx, self.owner());
        let retention = ctx.settings.jobs.retention_seconds;
        let written = persist(ctx, |mut conn| async move {
            let max = ctx.settings.jobs.events_max_len;
            state::write(
                &mut conn, &ctx.keys, owner, record, event, extra, retention, max,
            )
            .await
        })
        .await?;
        if !written {
            tracing::warn!("another worker owns this job now; this run's state was not written");
        }
        Ok(written)
    }

    /// Ends the job: retried later when its policy says so, else its terminal state.
    async fn finish(&self, record: JobRecord, job: &Job) -> Result<(), StoreError> {
        let retry = record.status == Status::Aborted.as_str()
            && record
                .reason
                .and_then(reason_of)
                .is_some_and(|r| job.retry.retries(record.attempt, r, record.exit_code));
        if retry {
            let wait = job
                .retry
                .backoff_after(record.attempt.max(1), crate::backoff::random_fraction());
            let at = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            tracing::info!(
                attempt = record.attempt,
                retry_in_ms = wait.as_millis() as u64,
                "job will be retried"
            );
            return self.schedule(record, at, "job.retrying").await;
        }
        let event = if record.status == Status::Completed.as_str() {
            "job.completed"
        } else {
            "job.aborted"
        };
        let written = self.write(&record, event, &[]).await?;
        tracing::info!(status = record.status, reason = record.reason.unwrap_or(""), exit_code = ?record.exit_code, "job finished");
        if written && record.reason == Some(Reason::WorkerLost.as_str()) {
            self.bury(&record, record.error.as_deref().unwrap_or_default())
                .await?;
        }
        if written {
            make_deliveries(self.ctx, &record.id).await?;
        }
        ack(self.ctx, self.entry).await
    }

    /// Records a job refused before running, and keeps its raw entry in the dead stream.
    async fn reject(&self, mut record: JobRecord, rejection: Rejection) -> Result<(), StoreError> {
        tracing::warn!(reason = %rejection.reason, error = %rejection.message, "job refused");
        record.abort(rejection.reason, rejection.message.clone());
        if self.write(&record, "job.aborted", &[]).await? {
            self.bury(&record, &rejection.message).await?;
            make_deliveries(self.ctx, &record.id).await?;
        }
        ack(self.ctx, self.entry).await
    }

    async fn bury(&self, record: &JobRecord, error: &str) -> Result<(), StoreError> {
        let (ctx, entry, raw) = (self.ctx, self.entry, self.stored);
        persist(ctx, |mut conn| {
            let max = ctx.settings.jobs.dead_max_len;
            let fields: Vec<(&str, &[u8])> = vec![
                ("id", record.id.as_bytes()),
                ("entry", entry.id.as_bytes()),
                ("reason", record.reason.unwrap_or_default().as_bytes()),
                ("error", error.as_bytes()),
                ("job", raw),
            ];
            async move { state::bury(&mut conn, &ctx.keys, &entry.queue, max, &fields).await }
        })
        .await
    }

    /// Docker could not be reached before the container started, so nothing of the
    /// job ran: it runs again later (here once the engine answers, or on another
    /// worker) without using up an attempt, at most `worker.docker_retries` times;
    /// after that it ends `docker_error`.
    async fn docker_retry(
        &self,
        mut record: JobRecord,
        job: &Job,
        error: String,
    ) -> Result<(), StoreError> {
        let ctx = self.ctx;
        let key = ctx.keys.job(&record.id);
        let before: Option<u32> = persist(ctx, |mut conn| {
            let key = &key;
            async move {
                use deadpool_redis::redis::AsyncCommands;
                Ok(conn.hget(key, "docker_retries").await?)
            }
        })
        .await?;
        let tries = before.unwrap_or(0) + 1;
        let max = ctx.settings.worker.docker_retries;
        if tries > max {
            record.abort(
                Reason::DockerError,
                format!("{error} (worker.docker_retries = {max} used up)"),
            );
            return self.finish(record, job).await;
        }
        record.attempt = record.attempt.saturating_sub(1);
        record.started_at = None;
        let full = DOCKER_RETRY_FIRST
            .saturating_mul(1 << (tries - 1).min(10))
            .min(DOCKER_RETRY_MAX);
        let wait = full / 2 + (full / 2).mul_f64(crate::backoff::random_fraction());
        let at = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
        tracing::warn!(tries, retry_in_ms = wait.as_millis() as u64, error = %error, "Docker unreachable before the job started; it will run again");
        let extra = [("docker_retries", tries.to_string())];
        self.schedule_with(record, at, "job.retrying", &extra).await
    }

    /// Puts the job in the scheduled set to run at `at`, then lets go of this entry.
    async fn schedule(
        &self,
        record: JobRecord,
        at: chrono::DateTime<chrono::Utc>,
        event: &str,
    ) -> Result<(), StoreError> {
        self.schedule_with(record, at, event, &[]).await
    }

    /// [`Run::schedule`], writing `more` fields into the job hash too.
    async fn schedule_with(
        &self,
        mut record: JobRecord,
        at: chrono::DateTime<chrono::Utc>,
        event: &str,
        more: &[(&str, String)],
    ) -> Result<(), StoreError> {
        record.set_status(Status::Scheduled);
        record.finished_at = None;
        let token = queue::new_token();
        let mut extra = vec![
            ("requeue_token", token.clone()),
            (
                "run_at",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
        ];
        extra.extend(more.iter().cloned());
        if self.write(&record, event, &extra).await? {
            let (ctx, entry, raw, token) = (self.ctx, self.entry, self.raw, &token);
            persist(ctx, |mut conn| async move {
                queue::schedule::schedule(
                    &mut conn,
                    &ctx.keys,
                    &entry.queue,
                    raw,
                    token,
                    at.timestamp_millis(),
                )
                .await
            })
            .await?;
        }
        ack(self.ctx, self.entry).await
    }

    /// Puts the job straight back in its queue (a draining worker), then lets go.
    async fn requeue(&self, record: JobRecord) -> Result<(), StoreError> {
        let token = queue::new_token();
        if self
            .write(&record, "job.queued", &[("requeue_token", token.clone())])
            .await?
        {
            let (ctx, entry, raw, token) = (self.ctx, self.entry, self.raw, &token);
            persist(ctx, |mut conn| async move {
                queue::requeue(&mut conn, &ctx.keys, &entry.queue, raw, token).await
            })
            .await?;
            tracing::info!("job put back in its queue");
        }
        ack(self.ctx, self.entry).await
    }
}

fn reason_of(text: &str) -> Option<Reason> {
    [Reason::ExitCode, Reason::Timeout, Reason::WorkerLost]
        .into_iter()
        .find(|r| r.as_str() == text)
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

/// Makes the webhook deliveries of a finished job (idempotent), before its entry is
/// acknowledged: see `webhook::outbox` for why that order loses nothing.
async fn make_deliveries(ctx: &Ctx, job: &str) -> Result<(), StoreError> {
    let retention = ctx.settings.jobs.retention_seconds;
    let made = persist(ctx, |mut conn| async move {
        crate::webhook::outbox::enqueue_for_job(&mut conn, &ctx.keys, job, retention).await
    })
    .await?;
    if made > 0 {
        tracing::debug!(deliveries = made, "webhook deliveries made");
        ctx.deliveries_made.notify_one();
    }
    Ok(())
}

async fn ack(ctx: &Ctx, entry: &Entry) -> Result<(), StoreError> {
    let held = persist(ctx, |mut conn| async move {
        queue::ack(&mut conn, &ctx.keys, &entry.queue, &entry.id, &ctx.consumer).await
    })
    .await?;
    if !held {
        tracing::warn!("another worker holds this entry now; not acknowledged");
    }
    Ok(())
}

/// The wait before a job Docker could not start runs again: doubled per try, capped.
const DOCKER_RETRY_FIRST: Duration = Duration::from_secs(1);
const DOCKER_RETRY_MAX: Duration = Duration::from_secs(60);

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
