//! Background chores of a worker: moving due scheduled jobs, enqueueing the ticks
//! of periodic schedules, listening for cancel requests, sweeping orphaned
//! containers (and the local executor's orphaned runs), pruning the listing indexes of expired jobs, ending waits for
//! parents that ran out, and checking Redis's settings.

use super::context::Ctx;
use super::running::StopCause;
use crate::executor::sweep::Labelled;
use crate::executor::JobExecutor;
use crate::job::Status;
use crate::queue;
use crate::store::StoreError;
use crate::telemetry::error_chain;
use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Moves scheduled jobs (delays, retries) of `queue` into its stream when due.
pub(super) async fn scheduler(ctx: Ctx, queue: String, token: CancellationToken) {
    let every = Duration::from_millis(ctx.settings.worker.block_ms.min(500));
    let mut backoff = super::context::reconnect_backoff(&ctx.settings);
    while !token.is_cancelled() {
        let moved: Result<usize, StoreError> = async {
            let mut conn = ctx.store.conn().await?;
            queue::move_due(
                &mut conn,
                &ctx.keys,
                &queue,
                chrono::Utc::now().timestamp_millis(),
                100,
            )
            .await
        }
        .await;
        match &moved {
            Ok(n) if *n > 0 => tracing::debug!(queue = %queue, moved = n, "scheduled jobs are due"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %error_chain(e), "moving due jobs failed"),
        }
        let delay = backoff.pace(moved.is_ok(), every);
        super::context::sleep_or_cancel(delay, &token).await;
    }
}

/// Enqueues the due ticks of the periodic schedules (`queue::cron`), every
/// `schedules.poll_ms`. Every worker runs it, whatever queues it serves: the
/// compare-and-set in `queue::cron` lets one worker enqueue each tick, and the
/// others find nothing to do. A definition that cannot be used is logged once
/// (until it changes) and skipped; the pass goes on with the others.
pub(super) async fn periodic(ctx: Ctx, token: CancellationToken) {
    let every = Duration::from_millis(ctx.settings.schedules.poll_ms);
    let late = Duration::from_secs(ctx.settings.schedules.late_seconds);
    let mut backoff = super::context::reconnect_backoff(&ctx.settings);
    // Bad definitions already logged, with their error: logged again only when it changes.
    let mut reported: std::collections::BTreeMap<String, String> = Default::default();
    while !token.is_cancelled() {
        let pass = async {
            let mut conn = ctx.store.conn().await?;
            queue::cron::run_due(&mut conn, &ctx.keys, chrono::Utc::now(), late).await
        }
        .await;
        let delay = backoff.pace(pass.is_ok(), every);
        match pass {
            Ok(events) => report_ticks(events, &mut reported),
            Err(e) if backoff.failures() == 1 => {
                tracing::warn!(error = %error_chain(&e), "cannot read the periodic schedules; retrying")
            }
            Err(_) => {}
        }
        super::context::sleep_or_cancel(delay, &token).await;
    }
}

/// Logs what a pass of the periodic schedules did.
fn report_ticks(
    events: Vec<queue::cron::Event>,
    reported: &mut std::collections::BTreeMap<String, String>,
) {
    use queue::cron::Event;
    let mut invalid = std::collections::BTreeMap::new();
    for event in events {
        match event {
            Event::Enqueued {
                name,
                queue,
                tick,
                job,
                entry,
                late,
            } => {
                tracing::info!(schedule = %name, queue = %queue, tick, job_id = %job, entry = %entry, missed = late, "schedule tick enqueued");
            }
            Event::Passed {
                name,
                tick,
                paused: true,
            } => {
                tracing::debug!(schedule = %name, tick, "schedule paused: tick passed over");
            }
            Event::Passed {
                name,
                tick,
                paused: false,
            } => {
                tracing::info!(schedule = %name, tick, "schedule tick missed (no worker ran then); skipped by its policy");
            }
            Event::Started { name } => {
                tracing::info!(schedule = %name, "schedule found; its ticks run from now on");
            }
            Event::Failed { name, error } => {
                tracing::warn!(schedule = %name, error = %error_chain(&error), "schedule tick not handled; trying again");
            }
            Event::Invalid { name, error } => {
                if reported.get(&name) != Some(&error) {
                    tracing::warn!(schedule = %name, error = %error, "schedule skipped: its definition in the schedules hash cannot be used");
                }
                invalid.insert(name, error);
            }
        }
    }
    // Only those still invalid stay: one fixed and broken again is logged again.
    *reported = invalid;
}

/// Ends the waits of jobs whose parents did not end in time
/// (`jobs.dependency_wait_seconds`; see `crate::deps`). Every worker does it:
/// the step that ends a wait checks it still waits, so two workers end it once.
pub(super) async fn dependency_deadlines(ctx: Ctx, token: CancellationToken) {
    let every = Duration::from_secs(1);
    let mut backoff = super::context::reconnect_backoff(&ctx.settings);
    while !token.is_cancelled() {
        let ended = async {
            let mut conn = ctx.store.conn().await?;
            let wait = ctx.settings.jobs.dependency_wait_seconds;
            let now = chrono::Utc::now().timestamp_millis();
            let mut ended = 0;
            for queue in &ctx.settings.worker.queues {
                ended +=
                    crate::deps::expire_due(&mut conn, &ctx.keys, queue, now, wait, 100).await?;
            }
            Ok::<_, StoreError>(ended)
        }
        .await;
        match &ended {
            Ok(n) if *n > 0 => tracing::info!(ended = n, "waits for parents ran out"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %error_chain(e), "ending waits that ran out failed"),
        }
        let delay = backoff.pace(ended.is_ok(), every);
        super::context::sleep_or_cancel(delay, &token).await;
    }
}

/// Removes expired jobs from the listing indexes, now and then. Every worker does
/// it (removing what another removed already is harmless), so the indexes stay
/// bounded while any worker runs.
pub(super) async fn prune_listings(ctx: Ctx, every: Duration, token: CancellationToken) {
    while !token.is_cancelled() {
        let pruned = async {
            let mut conn = ctx.store.conn().await?;
            let retention = ctx.settings.jobs.retention_seconds.saturating_mul(1000);
            let before = chrono::Utc::now()
                .timestamp_millis()
                .saturating_sub(i64::try_from(retention).unwrap_or(i64::MAX));
            let queues = &ctx.settings.worker.queues;
            crate::listing::prune(&mut conn, &ctx.keys, queues, 1000, before).await
        }
        .await;
        match pruned {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "pruned expired jobs from the listings"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %error_chain(&e), "pruning the listings failed"),
        }
        super::context::sleep_or_cancel(every, &token).await;
    }
}

/// Stops running jobs named on the cancel channel. Requests missed while this
/// listener was disconnected are found by the heartbeat in the job hash.
pub(super) async fn cancel_listener(ctx: Ctx, token: CancellationToken) {
    let mut backoff = super::context::reconnect_backoff(&ctx.settings);
    while !token.is_cancelled() {
        let listened: Result<(), StoreError> = async {
            let mut pubsub = ctx.store.pubsub().await?;
            pubsub.subscribe(ctx.keys.cancel_channel()).await?;
            pubsub.subscribe(ctx.keys.subscribers_channel()).await?;
            // Whatever changed while we were away: read the registry afresh.
            ctx.subscribers.forget();
            backoff.reset();
            let registry = ctx.keys.subscribers_channel();
            let mut messages = pubsub.on_message();
            loop {
                tokio::select! {
                    msg = messages.next() => {
                        let Some(msg) = msg else { return Ok(()) };
                        if msg.get_channel_name() == registry {
                            ctx.subscribers.forget();
                            continue;
                        }
                        // `<queue>/<id>` (a bare id from an older client: any queue).
                        let text: String = msg.get_payload().unwrap_or_default();
                        let Some((queue, id)) = crate::job::JobRef::split(&text) else { continue };
                        if ctx.running.stop_job(queue, id, StopCause::Cancelled) {
                            tracing::info!(job_id = %id, "cancel requested; stopping the container");
                        }
                    }
                    _ = token.cancelled() => return Ok(()),
                }
            }
        }
        .await;
        if let Err(e) = listened {
            tracing::debug!(error = %error_chain(&e), "cancel listener disconnected");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = token.cancelled() => return,
        }
    }
}

/// Removes the Dockhand containers of this deployment that nobody runs: at start
/// (what an earlier run of this worker left behind) and then every `every`.
pub(super) async fn sweeper(ctx: Ctx, every: Duration, token: CancellationToken) {
    loop {
        match sweep(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed orphaned containers"),
            Err(e) => tracing::warn!(error = %e, "container sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = token.cancelled() => return,
        }
    }
}

/// One pass; returns how many containers were removed.
pub(crate) async fn sweep(ctx: &Ctx) -> Result<usize, String> {
    let containers = ctx
        .executor
        .labelled_containers()
        .await
        .map_err(|e| error_chain(&e))?;
    let deployment = ctx.deployment().await.map_err(|e| error_chain(&e))?;
    let mut conn = ctx.store.conn().await.map_err(|e| error_chain(&e))?;
    let mut removed = 0;
    for c in containers {
        if is_live(ctx, deployment, &mut conn, &c)
            .await
            .map_err(|e| error_chain(&e))?
        {
            continue;
        }
        tracing::info!(container = %c.id, job_id = %c.job, consumer = %c.consumer, "removing an orphaned container");
        ctx.executor.remove_orphan(&c.id).await;
        removed += 1;
    }
    // The local executor's working directories and process groups, judged alike.
    if let Some(local) = &ctx.local {
        for run in local.leftovers().await.map_err(|e| error_chain(&e))? {
            if is_live(ctx, deployment, &mut conn, &run)
                .await
                .map_err(|e| error_chain(&e))?
            {
                continue;
            }
            tracing::info!(dir = %run.id, job_id = %run.job, consumer = %run.consumer, "removing an orphaned local run");
            local.remove_leftover(&run).await;
            removed += 1;
        }
        // The spare run directories of worker processes that are gone.
        removed += local.remove_dead_spares().await;
    }
    // Runs on SSH hosts, judged alike (a host that is away is skipped this pass).
    if let Some(ssh) = &ctx.ssh {
        for run in ssh.leftovers().await.map_err(|e| error_chain(&e))? {
            if is_live(ctx, deployment, &mut conn, &run)
                .await
                .map_err(|e| error_chain(&e))?
            {
                continue;
            }
            tracing::info!(run = %run.id.replace('\n', ":"), job_id = %run.job, consumer = %run.consumer, "removing an orphaned SSH run");
            ssh.remove_leftover(&run).await;
            removed += 1;
        }
    }
    // Networks of jobs' services, after their containers (a network in use stays).
    let networks = ctx
        .executor
        .job_networks()
        .await
        .map_err(|e| error_chain(&e))?;
    for n in networks {
        if is_live(ctx, deployment, &mut conn, &n)
            .await
            .map_err(|e| error_chain(&e))?
        {
            continue;
        }
        tracing::info!(network = %n.id, job_id = %n.job, consumer = %n.consumer, "removing an orphaned network");
        ctx.executor.remove_orphan_network(&n.id).await;
    }
    Ok(removed)
}

/// A container is live when this process runs its entry, or when the process that
/// made it is alive and its job is not finished (an unknown job is finished: its
/// hash expired, or Redis lost it). Anything else is left over.
///
/// Only containers of this deployment are judged, or, for those made before the
/// deployment label, of this worker id: another deployment (another Redis or
/// prefix) may share the Docker host, its keys are out of sight here, and its
/// containers are not ours to remove.
async fn is_live(
    ctx: &Ctx,
    deployment: &str,
    conn: &mut crate::store::Conn,
    c: &Labelled,
) -> Result<bool, StoreError> {
    let ours = c.deployment == deployment || (c.deployment.is_empty() && c.worker == ctx.worker_id);
    if !ours {
        return Ok(true);
    }
    if c.consumer == ctx.consumer {
        return Ok(ctx.running.is_running(&c.entry));
    }
    if c.consumer.is_empty() {
        return Ok(false);
    }
    let alive: bool = conn.exists(ctx.keys.alive(&c.consumer)).await?;
    if !alive {
        return Ok(false);
    }
    if c.queue.is_empty() {
        // Made before runs kept their queue: its job's keys are out of reach,
        // and its maker is alive, so it is not ours to judge.
        return Ok(true);
    }
    let status: Option<String> = conn.hget(ctx.keys.job(&c.queue, &c.job), "status").await?;
    Ok(status
        .as_deref()
        .and_then(Status::parse)
        .is_some_and(|s| !s.is_terminal()))
}

/// Warns when Redis is set up to lose jobs: eviction on, or no AOF.
pub(super) async fn check_redis_settings(ctx: &Ctx) {
    let Ok(mut conn) = ctx.store.conn().await else {
        return;
    };
    let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut conn)
        .await;
    if let Ok(v) = policy {
        if let Some(p) = v.get(1).filter(|p| *p != "noeviction") {
            tracing::warn!(maxmemory_policy = %p, "Redis may evict keys and so lose jobs: set maxmemory-policy noeviction");
        }
    }
    let aof: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await;
    if let Ok(v) = aof {
        if v.get(1).is_some_and(|a| a == "no") {
            tracing::warn!("Redis runs without AOF (appendonly no): a Redis restart loses queued and running jobs; set appendonly yes");
        }
    }
}

/// Writes the fleet-wide metrics this worker has counted (`Ctx::tally`) every
/// `worker.metrics_flush_ms`, and once more when `token` is cancelled.
pub(super) async fn metrics_flush(ctx: Ctx, token: CancellationToken) {
    let every = Duration::from_millis(ctx.settings.worker.metrics_flush_ms);
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = token.cancelled() => true,
        };
        ctx.tally.flush(&ctx.store, &ctx.keys).await;
        if stop {
            return;
        }
    }
}
