//! A running job's progress: the reports it POSTs to `PROGRESS_URL` and those it
//! writes to `/dockhand/output/progress.json` (read by the executor for a job
//! without `PROGRESS_URL`), written to its hash and published as `job.progress`
//! events by one task per attempt, beside the run.
//!
//! Invariants:
//! - The job never waits for its progress: reports arrive in watch channels that
//!   keep only the latest, and this task writes them at its own pace. A slow Redis
//!   or many subscribers delay the next write, never the container.
//! - The hash gets every report the task sees (the latest, when several came
//!   between two writes); at most one event per job per `jobs.progress_interval_ms`,
//!   carrying the latest report. So the events and the webhooks they make (in the
//!   same step: `state::progress`) are bounded by the job's run time.
//! - [`Reporter::finish`] is awaited before the job's terminal state is written:
//!   the last report is written and, if its event was held back by the rate
//!   limit, published then. So it is never lost, and it comes before the end.
//! - A bad report in `progress.json` is ignored, with one system line in the job's
//!   log (the first one; later ones silently), never an error of the run.

use super::context::Ctx;
use crate::executor::progress::{FileReport, ProgressFile};
use crate::logs::LogSender;
use crate::result_server::Progress;
use crate::state::{self, Owner};
use crate::store::StoreError;
use crate::webhook::outbox;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a report is written for.
pub(super) struct About {
    pub job: String,
    pub queue: String,
    pub attempt: u32,
    pub entry: String,
    /// The entry as submitted: the job's own `webhooks` (with their secrets).
    pub spec: Vec<u8>,
}

/// The task that writes one attempt's progress. Dropped without
/// [`finish`](Reporter::finish) (the attempt ended early), it stops the task.
pub(super) struct Reporter {
    finish: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// Where the executor sends `progress.json`; `None` when the job has `PROGRESS_URL`.
    file: Option<ProgressFile>,
}

impl Reporter {
    /// Starts following `url` (the reports posted to `PROGRESS_URL`) or, without
    /// it, `progress.json` (see [`Reporter::file`]).
    pub(super) fn start(
        ctx: &Ctx,
        about: About,
        url: Option<watch::Receiver<Option<Progress>>>,
        log: LogSender,
    ) -> Reporter {
        let (file, file_rx) = match url {
            Some(_) => (None, None),
            None => {
                let (tx, rx) = watch::channel(None);
                (Some(tx), Some(rx))
            }
        };
        let finish = CancellationToken::new();
        let task = tokio::spawn(
            Task {
                ctx: ctx.clone(),
                about,
                log,
                warned: false,
                last_event: None,
                unpublished: None,
            }
            .run(url, file_rx, finish.clone()),
        );
        Reporter {
            finish,
            task: Some(task),
            file,
        }
    }

    /// Where the executor sends what it reads of `progress.json`, for a job
    /// without `PROGRESS_URL`.
    pub(super) fn file(&self) -> Option<&ProgressFile> {
        self.file.as_ref()
    }

    /// Writes the last report (and its event, if still held back) and ends the task.
    pub(super) async fn finish(mut self) {
        self.finish.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the progress task ended badly");
            }
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Task {
    ctx: Ctx,
    about: About,
    log: LogSender,
    /// A bad `progress.json` was already said in the log.
    warned: bool,
    /// When the last event was published.
    last_event: Option<Instant>,
    /// The report in the hash whose event the rate limit held back.
    unpublished: Option<serde_json::Value>,
}

impl Task {
    async fn run(
        mut self,
        mut url: Option<watch::Receiver<Option<Progress>>>,
        mut file: Option<watch::Receiver<Option<FileReport>>>,
        finish: CancellationToken,
    ) {
        let interval = Duration::from_millis(self.ctx.settings.jobs.progress_interval_ms);
        loop {
            let due = self
                .last_event
                .map_or_else(Instant::now, |at| at + interval);
            let report = tokio::select! {
                biased;
                _ = finish.cancelled() => break,
                changed = changed(&mut url) => changed.and_then(|()| posted(&mut url)),
                changed = changed(&mut file) => match changed {
                    Some(()) => self.file_report(&mut file).await,
                    None => None,
                },
                _ = tokio::time::sleep_until(due), if self.unpublished.is_some() => {
                    let held = self.unpublished.take();
                    self.write(held, true).await;
                    continue;
                }
            };
            if let Some(report) = report {
                let publish = self.last_event.is_none_or(|at| at.elapsed() >= interval);
                self.write(Some(report), publish).await;
            }
        }
        // What arrived since the last turn, then whatever the rate limit held back.
        let last = if new(&url) {
            posted(&mut url)
        } else if new(&file) {
            self.file_report(&mut file).await
        } else {
            None
        };
        if let Some(report) = last.or_else(|| self.unpublished.take()) {
            self.write(Some(report), true).await;
        }
    }

    /// The report in a change of `progress.json`; `None` for an odd or bad file.
    async fn file_report(
        &mut self,
        file: &mut Option<watch::Receiver<Option<FileReport>>>,
    ) -> Option<serde_json::Value> {
        let found = file.as_mut()?.borrow_and_update().clone()?;
        let why = match found {
            FileReport::Content(bytes) => match Progress::from_json(&bytes) {
                Ok(p) => return Some(p.to_json(&crate::time::now())),
                Err(why) => why,
            },
            FileReport::Odd(why) => format!("it is {why}"),
        };
        if !std::mem::replace(&mut self.warned, true) {
            self.log
                .system(format!(
                    "progress.json ignored: {why} (later bad reports are ignored without a word)"
                ))
                .await;
        }
        None
    }

    /// Writes `report` to the hash, with its event when `publish` (else it is
    /// held back for the next turn the rate limit allows).
    async fn write(&mut self, report: Option<serde_json::Value>, publish: bool) {
        let Some(report) = report else { return };
        let result = if publish {
            self.publish(&report).await
        } else {
            self.store(&report, None).await
        };
        match result {
            Ok(_) if publish => {
                self.last_event = Some(Instant::now());
                self.unpublished = None;
            }
            Ok(_) => self.unpublished = Some(report),
            Err(e) => tracing::warn!(
                error = %crate::telemetry::error_chain(&e),
                "a progress report was not written"
            ),
        }
    }

    /// The event for `report` and its deliveries, made in one step with it.
    async fn publish(&self, report: &serde_json::Value) -> Result<bool, StoreError> {
        let a = &self.about;
        let body = serde_json::json!({
            "type": "job.progress",
            "timestamp": crate::time::now(),
            "data": {
                "id": a.job, "queue": a.queue, "attempt": a.attempt,
                "progress": report["progress"], "message": report["message"], "at": report["at"],
            },
        })
        .to_string();
        let ctx = &self.ctx;
        let targets = ctx
            .store
            .persist(|mut conn| async move {
                outbox::targets(
                    &mut conn,
                    &ctx.keys,
                    &ctx.subscribers,
                    "job.progress",
                    &a.queue,
                    &a.spec,
                )
                .await
            })
            .await?;
        // A fresh id per event: each is its own delivery, and a step retried after
        // a lost reply makes the same ones again, which makes them once.
        let event_id = ulid::Ulid::new().to_string();
        let deliveries: Vec<_> = targets
            .into_iter()
            .map(|t| {
                let kind = format!("job.progress {event_id}");
                let id = outbox::delivery_id(&a.job, &a.entry, &kind, &t.subscriber);
                (id, t)
            })
            .collect();
        let event = state::progress::Event {
            body: &body,
            deliveries: &deliveries,
        };
        let written = self.store(report, Some(&event)).await?;
        if written && !deliveries.is_empty() {
            ctx.deliveries_made.notify_one();
        }
        Ok(written)
    }

    async fn store(
        &self,
        report: &serde_json::Value,
        event: Option<&state::progress::Event<'_>>,
    ) -> Result<bool, StoreError> {
        let (ctx, a) = (&self.ctx, &self.about);
        let owner = Owner {
            entry: &a.entry,
            consumer: &ctx.consumer,
        };
        let text = report.to_string();
        let retention = ctx.settings.jobs.retention_seconds;
        let max = ctx.settings.jobs.events_max_len;
        ctx.store
            .persist(|mut conn| {
                let text = &text;
                async move {
                    state::progress::report(
                        &mut conn, &ctx.keys, owner, &a.queue, &a.job, text, event, retention, max,
                    )
                    .await
                }
            })
            .await
    }
}

/// Resolves when `rx` has a new value; `Some(())`, or `None` once its sender is
/// gone. Without a receiver, never.
async fn changed<T>(rx: &mut Option<watch::Receiver<Option<T>>>) -> Option<()> {
    match rx {
        Some(r) => match r.changed().await {
            Ok(()) => Some(()),
            Err(_) => {
                // The sender is gone (the registration was dropped): nothing more comes.
                *rx = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// Whether `rx` holds a value not yet seen. (Asked while its sender lives: a
/// closed channel says nothing of what is unseen.)
fn new<T>(rx: &Option<watch::Receiver<T>>) -> bool {
    rx.as_ref()
        .is_some_and(|r| r.has_changed().unwrap_or(false))
}

/// The latest report posted, as stored.
fn posted(rx: &mut Option<watch::Receiver<Option<Progress>>>) -> Option<serde_json::Value> {
    let report = rx.as_mut()?.borrow_and_update().clone()?;
    Some(report.to_json(&crate::time::now()))
}
