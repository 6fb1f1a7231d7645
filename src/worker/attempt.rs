//! Steps two to five of a claimed entry's turn, for a job that runs now: prepare
//! its image, run its container, conclude how it went, and record it. Returns how
//! the turn ends; nothing here acknowledges the entry.
//!
//! Invariants:
//! - The job's log writer starts before any build, so the build's lines and the
//!   run's share one `seq`; it is closed (every line stored) before the record is
//!   finished, so the record's log tail and lost-line count are final.
//! - A state is written only while this entry owns the job; when it no longer
//!   does, the attempt stops there ([`Ending::NotOwned`]).
//! - A stop asked for by a drain or a lost lease sends the job back to its queue;
//!   a cancel ends it `cancelled`.

use super::context::Ctx;
use super::ending::{Ending, Turn};
use super::outcome::conclude;
use super::prepare::{self, Failure};
use super::progress;
use super::record;
use super::running::{Registration, StopCause};
use crate::executor::{ExecError, RunContext, RunOutcome};
use crate::job::{ExecutorKind, Job, Reason, Status};
use crate::logs::{self, LogSender, LogSummary, Mask};
use crate::state::{self, JobRecord};
use crate::store::StoreError;
use crate::telemetry::error_chain;
use tokio::task::JoinHandle;

/// The record of a new attempt, before its image is ready.
pub(super) fn begun(ctx: &Ctx, mut record: JobRecord) -> JobRecord {
    record.attempt += 1;
    record.started_at = Some(crate::time::now());
    record.finished_at = None;
    record.worker = Some(ctx.worker_id.clone());
    record
}

/// The record of an attempt whose image is ready: `running`.
pub(super) fn running(mut record: JobRecord, job: &Job) -> JobRecord {
    record.set_status(Status::Running);
    // A local job runs no image.
    record.image = (!job.image.is_empty()).then(|| job.image.clone());
    record
}

/// One attempt of a job this worker owns. `started`: the claim already wrote
/// `record` as `running` (see `admit`).
pub(super) async fn attempt(
    turn: &Turn<'_>,
    registration: &Registration,
    record: JobRecord,
    job: Box<Job>,
    started: bool,
) -> Result<Ending, StoreError> {
    let ctx = turn.ctx;
    // `absent.log` here: the claim made the job's hash, so it has no log yet.
    let log = JobLog::start(ctx, &job, record.absent.log);
    let (mut record, mut job) = if started {
        (record, job)
    } else {
        let record = begun(ctx, record);
        let prepared = image(turn, registration, record, job, &log.sender).await?;
        let (record, job) = match prepared {
            Ok(ready) => ready,
            Err(ending) => {
                log.close().await;
                return Ok(ending);
            }
        };
        let record = running(record, &job);
        if !turn.write(&record, "job.started", &[]).await? {
            log.close().await;
            return Ok(Ending::NotOwned);
        }
        (record, job)
    };
    tracing::info!(image = %job.image, attempt = record.attempt, "job started");
    // Result URLs, for a job that has a network to reach them on (a local job
    // reaches them on loopback).
    let results = match job.executor {
        ExecutorKind::Docker => ctx.results.as_ref(),
        ExecutorKind::Local => ctx.local_results.as_ref(),
        // The host is elsewhere: the worker's loopback is not its loopback.
        ExecutorKind::Ssh => None,
    };
    let urls = results.and_then(|host| host.open(&mut job));
    // Its progress, from PROGRESS_URL or (without it) progress.json; written
    // beside the run, and flushed once the container is gone, before any end.
    let about = progress::About {
        job: record.id.clone(),
        queue: record.queue.clone(),
        attempt: record.attempt,
        entry: turn.entry.id.clone(),
        spec: turn.raw.to_vec(),
    };
    let reports = urls.as_ref().map(|u| u.progress());
    let progress = progress::Reporter::start(ctx, about, reports, log.sender.clone());
    let outcome = run(
        ctx,
        turn,
        registration,
        &job,
        &record,
        &log.sender,
        progress.file(),
    )
    .await?;
    progress.finish().await;
    if let Some(error) = not_started(&outcome, registration) {
        log.sender
            .system(format!("{error}; nothing of the job ran"))
            .await;
        log.close().await;
        return Ok(Ending::DockerRetry { record, job, error });
    }
    let stopped = outcome.as_ref().is_ok_and(|o| o.stopped);
    let mut files = conclude(&mut record, &job, outcome, &log.sender).await;
    if let Some(posted) = urls.and_then(|u| u.take()) {
        super::posted::apply(&mut record, &mut files, posted, &log.sender).await;
    }
    // A cancel counts only when it stopped the job (one that ended on its own
    // first keeps its outcome). A lost lease or a drain counts whenever it came:
    // the process may have died of the stop before the executor saw it stop it,
    // and its exit (143, say) is then the stop's doing, not the job's.
    let cause = match registration.cause() {
        Some(StopCause::Cancelled) if !stopped => None,
        cause => cause,
    };
    if let Some(cause) = cause {
        log.sender.system(record::why_stopped(cause)).await;
    }
    let mask = log.mask.clone();
    let summary = log.close().await;
    record::close(&mut record, &summary, &mask);
    // Spares the terminal write an EXPIRE of each key that cannot exist: the
    // log of a job first recorded by this run, which stored no line.
    record.absent.log = record.absent.log && summary.last_seq == 0;

    match cause {
        // Fenced: if another worker has taken the job over, every write and the
        // ack are refused by the ownership checks, and the job is left to it. If
        // nobody took it (Redis was just away), the job goes back to its queue.
        Some(StopCause::Drain | StopCause::Fenced) => {
            return Ok(Ending::Requeue(record::requeued(record)))
        }
        Some(StopCause::Cancelled) => record.abort(Reason::Cancelled, "cancelled by request"),
        None => {}
    }
    ctx.store
        .persist(|mut conn| {
            let (keys, files, id, queue) = (&ctx.keys, &files, &record.id, &record.queue);
            async move { state::store_files(&mut conn, keys, queue, id, files).await }
        })
        .await?;
    record.absent.files = files.is_empty() && record.attempt == 1;
    Ok(Ending::Finish(record, job))
}

/// Step two: a job from `git` gets its image (status `building` meanwhile). A
/// job that names an image has it already. `Err` ends the turn: the image could
/// not be had, the job was stopped, or another worker owns it now.
async fn image(
    turn: &Turn<'_>,
    registration: &Registration,
    mut record: JobRecord,
    mut job: Box<Job>,
    log: &LogSender,
) -> Result<Result<(JobRecord, Box<Job>), Ending>, StoreError> {
    if job.git.is_none() {
        return Ok(Ok((record, job)));
    }
    let ctx = turn.ctx;
    record.set_status(Status::Building);
    if !turn.write(&record, "", &[]).await? {
        return Ok(Err(Ending::NotOwned));
    }
    let mut observed = Vec::new();
    let prepared = tokio::select! {
        prepared = prepare::git_image(&ctx.images, &mut job, &mut record, log, &mut observed) => Some(prepared),
        _ = registration.stop.cancelled() => None,
    };
    // A step of its own: the next state write may be seconds away, or never come
    // (a drain), and one round trip is nothing beside a git fetch and a build.
    if !observed.is_empty() {
        if let Ok(mut conn) = ctx.store.conn().await {
            crate::metrics::add(&mut conn, &ctx.keys, &observed).await;
        }
    }
    let failure = match prepared {
        Some(Ok(())) => return Ok(Ok((record, job))),
        Some(Err(failure)) => failure,
        // As after a run: back to the queue, unless another worker has the job
        // now (then the ownership checks refuse the writes and the ack).
        None if matches!(
            registration.cause(),
            Some(StopCause::Drain | StopCause::Fenced)
        ) =>
        {
            return Ok(Err(Ending::Requeue(record::requeued(record))));
        }
        None => Failure {
            reason: Reason::Cancelled,
            message: "cancelled by request while the image was being prepared".into(),
            docker_unreachable: false,
        },
    };
    if failure.docker_unreachable {
        ctx.executor.mark_unreachable(&failure.message);
        log.system(format!("{}; nothing of the job ran", failure.message))
            .await;
        let error = failure.message;
        return Ok(Err(Ending::DockerRetry { record, job, error }));
    }
    log.system(failure.message.clone()).await;
    record.abort(failure.reason, failure.message);
    Ok(Err(Ending::Finish(record, job)))
}

/// Step three: the run on the job's executor (a container, from create to
/// remove; or a host process), from prepare to clean up.
async fn run(
    ctx: &Ctx,
    turn: &Turn<'_>,
    registration: &Registration,
    job: &Job,
    record: &JobRecord,
    log: &LogSender,
    progress: Option<&crate::executor::progress::ProgressFile>,
) -> Result<Result<RunOutcome, ExecError>, StoreError> {
    let deployment = ctx.deployment().await?;
    let context = RunContext {
        attempt: record.attempt,
        logs: log,
        stop: &registration.stop,
        entry: &turn.entry.id,
        deployment,
        progress,
        remove_later: Some(turn.remove_later),
    };
    Ok(match (job.executor, &ctx.local, &ctx.ssh) {
        (ExecutorKind::Docker, _, _) => ctx.executor.run(job, context).await,
        (ExecutorKind::Local, Some(local), _) => local.run(job, context).await,
        (ExecutorKind::Ssh, _, Some(ssh)) => ssh.run(job, context).await,
        // Refused at admission (`executor::offered`); kept an error, not a panic.
        (ExecutorKind::Local, None, _) => Err(ExecError::Unusable(
            "\"local\" is not offered: executors.local.enabled is false on this worker".into(),
        )),
        (ExecutorKind::Ssh, _, None) => Err(ExecError::Unusable(
            "\"ssh\" is not offered: this worker has no executors.ssh.hosts".into(),
        )),
    })
}

/// Why the container never started, when the reason is that Docker did not
/// answer (so the job may run again without using up an attempt).
fn not_started(
    outcome: &Result<RunOutcome, ExecError>,
    registration: &Registration,
) -> Option<String> {
    match outcome {
        Err(e) if e.is_transient() && !e.after_start() && !registration.stop.is_cancelled() => {
            Some(error_chain(e))
        }
        _ => None,
    }
}

/// The job's log writer, and what closing it waits for.
struct JobLog {
    sender: LogSender,
    writer: JoinHandle<LogSummary>,
    mask: Mask,
}

impl JobLog {
    fn start(ctx: &Ctx, job: &Job, fresh: bool) -> JobLog {
        let mask = logs::Mask::new(job.secret_env.values());
        let (sender, writer) = logs::spawn_writer(
            ctx.store.clone(),
            ctx.keys.clone(),
            crate::job::JobRef::new(&job.queue, &job.id),
            logs::WriterSettings {
                cap_bytes: job.limits.log_bytes,
                tail_lines: ctx.settings.webhooks.log_tail_lines,
                entry_bytes: ctx.settings.jobs.log_entry_bytes,
                fresh,
            },
            mask.clone(),
        );
        JobLog {
            sender,
            writer,
            mask,
        }
    }

    /// Waits until every line sent is stored and published.
    async fn close(self) -> LogSummary {
        drop(self.sender);
        self.writer.await.unwrap_or_default()
    }
}
