//! The last step of a claimed entry's turn: the earlier steps say how it ends (an
//! [`Ending`]), and this carries it out. The job finished (or is retried later by
//! its policy), was refused, goes back to its queue now or later, Docker could
//! not be reached before it started, or the entry needs no run at all (a
//! duplicate, or a finished job's redelivery).
//!
//! Invariants:
//! - Every write checks that this worker still owns the job; the entry is
//!   acknowledged only after the job's state is written.
//! - A job to run again gets a new entry carrying a one-time token, written into the
//!   job hash in the same write that sets its status (see `queue::schedule`).

use super::context::Ctx;
use crate::backoff;
use crate::job::{Job, Reason, Rejection, Status};
use crate::queue::{self, Entry};
use crate::state::{self, JobRecord, Owner};
use crate::store::StoreError;
use std::time::Duration;

/// How a claimed entry's turn ends; made by the earlier steps, carried out by
/// [`Turn::end`].
pub(super) enum Ending {
    /// The run is over: the job's terminal state, or a retry its policy asks for.
    Finish(JobRecord, Box<Job>),
    /// Refused before running (invalid spec, policy); the entry goes to the dead stream.
    Reject(JobRecord, Rejection),
    /// Not yet: the job runs at `at` (a delay), announced by `event`.
    Schedule {
        record: JobRecord,
        at: chrono::DateTime<chrono::Utc>,
        event: &'static str,
    },
    /// Back to its queue now (a draining or fenced worker).
    Requeue(JobRecord),
    /// Docker did not answer before the container started: nothing of the job ran.
    DockerRetry {
        record: JobRecord,
        job: Box<Job>,
        error: String,
    },
    /// Another entry already carries this job id; `event` is its `job.duplicate`.
    Duplicate { id: String, event: String },
    /// The job had finished, but its entry was not acknowledged: finish those steps.
    AlreadyFinished { id: String },
    /// Another worker owns the job now: write nothing, acknowledge nothing.
    NotOwned,
    /// The job's state is written already (it waits for its parents; see
    /// `waiting`): only acknowledge the entry.
    LetGo,
}

/// One claimed entry that this worker owns, and the steps that end its turn.
pub(super) struct Turn<'a> {
    pub ctx: &'a Ctx,
    pub entry: &'a Entry,
    /// The entry as submitted: what a re-run is made from.
    pub raw: &'a [u8],
    /// The entry with secrets redacted: what is kept for people to read.
    pub stored: &'a [u8],
    /// The removals of the turn's containers, under way; waited for once the
    /// turn is over and its permit is free.
    pub remove_later: &'a std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Turn<'_> {
    /// Carries out how the turn ends.
    pub(super) async fn end(&self, ending: Ending) -> Result<(), StoreError> {
        match ending {
            Ending::Finish(record, job) => self.finish(record, &job).await,
            Ending::Reject(record, rejection) => self.reject(record, rejection).await,
            Ending::Schedule { record, at, event } => self.schedule(record, at, event).await,
            Ending::Requeue(record) => self.requeue(record).await,
            Ending::DockerRetry { record, job, error } => {
                self.docker_retry(record, &job, error).await
            }
            Ending::Duplicate { id, event } => {
                let (ctx, max) = (self.ctx, self.ctx.settings.jobs.events_max_len);
                ctx.store
                    .persist(|mut conn| {
                        let (id, event) = (&id, &event);
                        async move {
                            let q = &self.entry.queue;
                            state::publish(&mut conn, &ctx.keys, q, "job.duplicate", id, event, max)
                                .await
                        }
                    })
                    .await?;
                ack(ctx, self.entry).await
            }
            Ending::AlreadyFinished { id } => {
                let queue = &self.entry.queue;
                super::release::ended_before(self.ctx, queue, &id, self.raw).await?;
                make_deliveries(self.ctx, queue, &id, self.raw).await?;
                ack(self.ctx, self.entry).await
            }
            Ending::NotOwned => Ok(()),
            Ending::LetGo => ack(self.ctx, self.entry).await,
        }
    }

    fn owner(&self) -> Owner<'_> {
        Owner {
            entry: &self.entry.id,
            consumer: &self.ctx.consumer,
        }
    }

    pub(super) async fn write(
        &self,
        record: &JobRecord,
        event: &str,
        extra: &[(&str, String)],
    ) -> Result<bool, StoreError> {
        let (ctx, owner) = (self.ctx, self.owner());
        let retention = ctx.settings.jobs.retention_seconds;
        let written = ctx
            .store
            .persist(|mut conn| async move {
                let max = ctx.settings.jobs.events_max_len;
                state::write(
                    &mut conn, &ctx.keys, owner, record, event, extra, retention, max,
                )
                .await
            })
            .await?;
        if written {
            count(ctx, record, event);
        } else {
            tracing::warn!("another worker owns this job now; this run's state was not written");
        }
        Ok(written)
    }

    /// Ends the job: retried later when its policy says so, else its terminal state.
    async fn finish(&self, record: JobRecord, job: &Job) -> Result<(), StoreError> {
        let retry = record.status == Status::Aborted
            && record
                .reason
                .is_some_and(|r| job.retry.retries(record.attempt, r, record.exit_code));
        if retry {
            let wait = job
                .retry
                .backoff_after(record.attempt.max(1), backoff::random_fraction());
            let at = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            tracing::info!(
                attempt = record.attempt,
                retry_in_ms = wait.as_millis() as u64,
                "job will be retried"
            );
            return self.schedule(record, at, "job.retrying").await;
        }
        let event = if record.status == Status::Completed {
            "job.completed"
        } else {
            "job.aborted"
        };
        let bury = record.reason == Some(Reason::WorkerLost);
        let has_after = !job.spec.after.is_empty();
        let written = self.terminal(&record, event, bury, has_after).await?;
        if written.written {
            self.ctx.finished.add(record.status);
        }
        tracing::info!(status = %record.status, reason = record.reason.map(Reason::as_str).unwrap_or(""), exit_code = ?record.exit_code, "job finished");
        Ok(())
    }

    /// The terminal write and what must follow it before the entry is
    /// acknowledged (the dead stream, the jobs waiting for this one, its batch,
    /// its webhook deliveries), then the ack. When nothing needs to follow
    /// (the usual job), the ack is made in the terminal write's own step.
    /// The webhook targets are read first, so that the step knows whether
    /// deliveries follow; a subscriber registered in between is one registered
    /// after the job ended.
    async fn terminal(
        &self,
        record: &JobRecord,
        event: &str,
        bury: bool,
        has_after: bool,
    ) -> Result<state::Written, StoreError> {
        let ctx = self.ctx;
        let (raw, queue) = (self.raw, &record.queue);
        let targets = ctx
            .store
            .persist(|mut conn| async move {
                crate::webhook::outbox::targets(
                    &mut conn,
                    &ctx.keys,
                    &ctx.subscribers,
                    event,
                    queue,
                    raw,
                )
                .await
            })
            .await?;
        let batch = crate::batch::of_entry(self.raw).is_some();
        let at_once = targets.is_empty() && !batch && !bury;
        let terminal = state::Terminal {
            files: !record.absent.files,
            log: !record.absent.log,
            wait: has_after,
            ack: at_once.then(|| (self.entry.stream(&ctx.keys), self.entry.id.clone())),
        };
        // The body as the hash keeps it (`event`), which the deliveries carry.
        let body = record.event(event);
        let owner = self.owner();
        let written = ctx
            .store
            .persist(|mut conn| {
                let (body, terminal) = (&body, &terminal);
                async move {
                    let (retention, max) = (
                        ctx.settings.jobs.retention_seconds,
                        ctx.settings.jobs.events_max_len,
                    );
                    let written = state::write_prepared(
                        &mut conn,
                        &ctx.keys,
                        owner,
                        record,
                        (event, body),
                        &[],
                        retention,
                        max,
                        terminal,
                    )
                    .await?;
                    let job = ctx.keys.job(&record.queue, &record.id);
                    ctx.store.replicate(&mut conn, "terminal write", &job).await;
                    Ok(written)
                }
            })
            .await?;
        if written.written {
            count(ctx, record, event);
        } else {
            tracing::warn!("another worker owns this job now; this run's state was not written");
        }
        if written.acked {
            return Ok(written);
        }
        if written.written {
            if bury {
                self.bury(record, record.error.as_deref().unwrap_or_default())
                    .await?;
            }
            self.followers(record, written.dependents).await?;
            if !targets.is_empty() {
                let retention = ctx.settings.jobs.retention_seconds;
                let (id, entry, body) = (&record.id, &self.entry.id, &body);
                let made = ctx
                    .store
                    .persist(|mut conn| {
                        let targets = targets.clone();
                        async move {
                            crate::webhook::outbox::make(
                                &mut conn, &ctx.keys, id, entry, event, body, targets, retention,
                            )
                            .await
                        }
                    })
                    .await?;
                if made > 0 {
                    ctx.deliveries_made.notify_one();
                }
            }
        }
        ack(ctx, self.entry).await?;
        Ok(written)
    }

    /// After a terminal write: the jobs waiting for this one (when the write
    /// found some: `dependents`), and its batch.
    async fn followers(&self, record: &JobRecord, dependents: bool) -> Result<(), StoreError> {
        let end = super::release::Ended {
            id: &record.id,
            queue: &record.queue,
            status: record.status,
            reason: record.reason,
        };
        super::release::ended(self.ctx, &end, self.raw, dependents).await
    }

    /// Records a job refused before running, and keeps its raw entry in the dead stream.
    async fn reject(&self, mut record: JobRecord, rejection: Rejection) -> Result<(), StoreError> {
        tracing::warn!(reason = %rejection.reason, error = %rejection.message, "job refused");
        record.abort(rejection.reason, rejection.message.clone());
        // `bury` is true: the raw entry goes to the dead stream before the ack.
        if self
            .terminal(&record, "job.aborted", true, true)
            .await?
            .written
        {
            self.ctx.finished.add(record.status);
        }
        Ok(())
    }

    /// The turn failed on a Redis error over and over (not Redis being away): the
    /// entry goes to the dead stream with the error (`reason` = `redis_error`)
    /// and is acknowledged, to be looked at and retried by an operator.
    pub(super) async fn give_up(&self, error: &StoreError) -> Result<(), StoreError> {
        let (ctx, entry, raw) = (self.ctx, self.entry, self.stored);
        let id = entry
            .job
            .as_deref()
            .and_then(crate::job::requested_id)
            .unwrap_or_else(|| entry.id.clone());
        let error = crate::telemetry::error_chain(error);
        ctx.store
            .persist(|mut conn| {
                let max = ctx.settings.jobs.dead_max_len;
                let fields: Vec<(&str, &[u8])> = vec![
                    ("id", id.as_bytes()),
                    ("entry", entry.id.as_bytes()),
                    ("reason", b"redis_error"),
                    ("error", error.as_bytes()),
                    ("job", raw),
                ];
                async move { state::bury(&mut conn, &ctx.keys, &entry.queue, max, &fields).await }
            })
            .await?;
        ack(ctx, entry).await
    }

    async fn bury(&self, record: &JobRecord, error: &str) -> Result<(), StoreError> {
        let (ctx, entry, raw) = (self.ctx, self.entry, self.stored);
        ctx.store
            .persist(|mut conn| {
                let max = ctx.settings.jobs.dead_max_len;
                let fields: Vec<(&str, &[u8])> = vec![
                    ("id", record.id.as_bytes()),
                    ("entry", entry.id.as_bytes()),
                    (
                        "reason",
                        record
                            .reason
                            .map(Reason::as_str)
                            .unwrap_or_default()
                            .as_bytes(),
                    ),
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
        let key = ctx.keys.job(&record.queue, &record.id);
        let before: Option<u32> = ctx
            .store
            .persist(|mut conn| {
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
        let wait = backoff::delay(
            DOCKER_RETRY_FIRST,
            DOCKER_RETRY_MAX,
            tries - 1,
            backoff::random_fraction(),
        );
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
            ctx.store
                .persist(|mut conn| async move {
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
            ctx.store
                .persist(|mut conn| async move {
                    queue::requeue(
                        &mut conn,
                        &ctx.keys,
                        &entry.queue,
                        crate::job::requested_priority(raw),
                        raw,
                        token,
                    )
                    .await
                })
                .await?;
            tracing::info!("job put back in its queue");
        }
        ack(self.ctx, self.entry).await
    }
}

/// Makes the webhook deliveries of a finished job (idempotent), before its entry is
/// acknowledged: see `webhook::outbox` for why that order loses nothing.
async fn make_deliveries(ctx: &Ctx, queue: &str, job: &str, spec: &[u8]) -> Result<(), StoreError> {
    let retention = ctx.settings.jobs.retention_seconds;
    let made = ctx
        .store
        .persist(|mut conn| async move {
            crate::webhook::outbox::enqueue_for_job(
                &mut conn,
                &ctx.keys,
                &ctx.subscribers,
                queue,
                job,
                spec,
                retention,
            )
            .await
        })
        .await?;
    if made > 0 {
        tracing::debug!(deliveries = made, "webhook deliveries made");
        ctx.deliveries_made.notify_one();
    }
    Ok(())
}

async fn ack(ctx: &Ctx, entry: &Entry) -> Result<(), StoreError> {
    let held = ctx
        .store
        .persist(|mut conn| async move {
            let held = queue::ack(&mut conn, &ctx.keys, entry, &ctx.consumer).await?;
            let stream = entry.stream(&ctx.keys);
            ctx.store.replicate(&mut conn, "ack", &stream).await;
            Ok(held)
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

/// Counts the metrics a written state moves (in the worker's tally, which goes
/// to Redis on its own schedule: see `metrics::Tally`).
pub(super) fn count(ctx: &Ctx, record: &JobRecord, event: &str) {
    ctx.tally.add(state::observed(record, event));
    if record.is_terminal() {
        ctx.tally.finished(&ctx.keys, &record.queue);
    }
}
