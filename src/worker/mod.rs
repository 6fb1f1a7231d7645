//! `dockhand worker`: claims jobs from its queues and runs each through the pipeline.
//!
//! Invariants:
//! - A job runs only while it holds a semaphore permit, so at most
//!   `worker.concurrency` containers run at once; an entry is read only when a
//!   permit is in hand, so a busy worker leaves work for idle ones.
//! - Reads block for at most `worker.block_ms`, so shutdown and reconnects are
//!   noticed promptly. A read is never abandoned half-way (which could leave an
//!   entry delivered but unseen); shutdown is checked between reads.
//! - Losing Redis never stops the worker: every loop retries with backoff, says so
//!   once in its log, and says so again when Redis is back. A missing consumer group
//!   (`NOGROUP`, e.g. after a Redis restart without persistence) is re-created.
//! - Shutdown is passed in. On it the worker stops claiming and waits up to
//!   `worker.drain_seconds` for running jobs.

mod pipeline;

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::executor::{ExecError, Executor};
use crate::queue::{self, Keys, ReadError};
use crate::store::{Store, StoreError};
use crate::telemetry::error_chain;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot set up Redis")]
    Store(#[from] StoreError),
    #[error("cannot set up Docker")]
    Docker(#[from] ExecError),
}

/// Everything a job's pipeline needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub keys: Keys,
    pub executor: Executor,
    pub worker_id: String,
}

/// Runs a worker until `shutdown` completes, then drains.
pub async fn run(
    settings: Arc<Settings>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let store = Store::new(&settings)?;
    let executor = Executor::connect(settings.clone()).await?;
    let worker_id = settings.worker_id();
    // Unique per process, so two workers on one host never share pending entries.
    let consumer = format!("{worker_id}:{}:{}", std::process::id(), ulid::Ulid::new());
    let ctx = Ctx {
        keys: Keys::new(&settings.redis.prefix),
        settings,
        store,
        executor,
        worker_id,
    };
    tracing::info!(
        worker = %ctx.worker_id,
        consumer = %consumer,
        queues = ?ctx.settings.worker.queues,
        concurrency = ctx.settings.worker.concurrency,
        "worker started"
    );

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    for queue in ctx.settings.worker.queues.clone() {
        tracker.spawn(inbox_loop(ctx.clone(), queue, token.clone()));
    }
    let claiming = tokio::spawn(claim_loop(
        ctx.clone(),
        consumer,
        tracker.clone(),
        token.clone(),
    ));

    shutdown.await;
    tracing::info!("shutting down: no new jobs are claimed");
    token.cancel();
    let _ = claiming.await;
    tracker.close();
    let drain = Duration::from_secs(ctx.settings.worker.drain_seconds);
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            seconds = drain.as_secs(),
            "running jobs did not finish within worker.drain_seconds"
        );
    }
    tracing::info!("worker stopped");
    Ok(())
}

async fn claim_loop(ctx: Ctx, consumer: String, tracker: TaskTracker, token: CancellationToken) {
    let permits = Arc::new(Semaphore::new(ctx.settings.worker.concurrency));
    let mut backoff = reconnect_backoff(&ctx.settings);
    let mut groups_ready = false;
    let queues = ctx.settings.worker.queues.clone();
    while !token.is_cancelled() {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = token.cancelled() => return,
        };
        let result: Result<Vec<queue::Entry>, ReadError> = async {
            let mut conn = ctx.store.blocking_conn().await?;
            if !groups_ready {
                queue::ensure_groups(&mut conn, &ctx.keys, &queues).await?;
                groups_ready = true;
            }
            queue::read(
                &mut conn,
                &ctx.keys,
                &queues,
                &consumer,
                ctx.settings.worker.block_ms,
            )
            .await
        }
        .await;
        match result {
            Ok(entries) => {
                if backoff.failures() > 0 {
                    tracing::info!("Redis is reachable again; claiming jobs");
                    backoff.reset();
                }
                let mut permit = Some(permit);
                for entry in entries {
                    // A multi-queue read can return one entry per queue; each waits for its own permit.
                    let permit = match permit.take() {
                        Some(p) => p,
                        None => permits
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed"),
                    };
                    tracker.spawn(pipeline::run(ctx.clone(), entry, permit));
                }
            }
            Err(ReadError::NoGroup) => {
                tracing::warn!("the consumer group is missing (Redis restarted or was flushed); re-creating it");
                groups_ready = false;
            }
            Err(ReadError::Store(e)) => {
                groups_ready = false;
                let delay = backoff.next_delay();
                report_unreachable(&e, backoff.failures(), delay);
                sleep_or_cancel(delay, &token).await;
            }
        }
    }
}

/// Moves `LPUSH`ed jobs from the queue's inbox into its stream.
async fn inbox_loop(ctx: Ctx, queue: String, token: CancellationToken) {
    let mut backoff = reconnect_backoff(&ctx.settings);
    while !token.is_cancelled() {
        let result: Result<(), StoreError> = async {
            let mut conn = ctx.store.conn().await?;
            let moved = queue::move_inbox(&mut conn, &ctx.keys, &queue, 100).await?;
            if moved == 0 {
                drop(conn);
                let mut conn = ctx.store.blocking_conn().await?;
                queue::wait_inbox(&mut conn, &ctx.keys, &queue, ctx.settings.worker.block_ms)
                    .await?;
            } else {
                tracing::debug!(queue = %queue, moved, "moved jobs from the inbox");
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => backoff.reset(),
            Err(e) => {
                let delay = backoff.next_delay();
                if backoff.failures() == 1 {
                    tracing::warn!(queue = %queue, error = %error_chain(&e), "inbox mover cannot reach Redis; retrying");
                }
                sleep_or_cancel(delay, &token).await;
            }
        }
    }
}

fn reconnect_backoff(settings: &Settings) -> Backoff {
    Backoff::new(
        Duration::from_millis(100),
        Duration::from_millis(settings.worker.reconnect_max_ms),
    )
}

fn report_unreachable(e: &StoreError, failures: u32, delay: Duration) {
    // Say it on the first failure and then every tenth, not on every retry.
    if failures == 1 || failures % 10 == 0 {
        tracing::warn!(
            error = %error_chain(e),
            failures,
            retry_in_ms = delay.as_millis() as u64,
            "Redis connection lost; reconnecting"
        );
    }
}

async fn sleep_or_cancel(delay: Duration, token: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = token.cancelled() => {}
    }
}
