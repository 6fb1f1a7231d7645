//! The heartbeat (liveness key, lease renewal, cancel checks, fencing) and the
//! reclaimer (taking over what dead workers left).

use super::running::StopCause;
use super::Ctx;
use crate::queue::lease;
use crate::state;
use crate::store::StoreError;
use crate::telemetry::error_chain;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Renews the lease every third of it until `done`. If renewing fails for longer
/// than the lease, every running job is stopped: another worker may own it by now.
/// `info` describes the process; each beat adds how it is now (`docker`: `ok` or
/// `unreachable`, `running`: its jobs, `beat_at`), so `dockhand workers` tells a
/// worker that is alive but cannot run anything.
pub(super) async fn heartbeat(ctx: Ctx, info: serde_json::Value, done: CancellationToken) {
    let lease = ctx.lease();
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut last_ok = Instant::now();
    let mut failing = false;
    loop {
        let mut now = info.clone();
        now["docker"] = if ctx.executor.is_reachable() {
            "ok"
        } else {
            "unreachable"
        }
        .into();
        now["running"] = ctx.running.job_ids().into();
        now["beat_at"] = crate::time::now().into();
        match beat(&ctx, &now.to_string()).await {
            Ok(()) => {
                if failing {
                    tracing::info!("lease renewed again");
                    failing = false;
                }
                last_ok = Instant::now();
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %error_chain(&e), "cannot renew the lease");
                    failing = true;
                }
                if last_ok.elapsed() > lease && !ctx.running.is_empty() {
                    tracing::error!("lease lapsed: stopping running containers (another worker may own their jobs)");
                    ctx.running.stop_all(StopCause::Fenced);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = done.cancelled() => return,
        }
    }
}

async fn beat(ctx: &Ctx, info: &str) -> Result<(), StoreError> {
    let mut conn = ctx.store.conn().await?;
    lease::beat(
        &mut conn,
        &ctx.keys,
        &ctx.consumer,
        info,
        ctx.lease().as_millis() as u64,
    )
    .await?;
    for (queue, entries) in ctx.running.by_queue() {
        for lost in lease::renew(&mut conn, &ctx.keys, &queue, &ctx.consumer, &entries).await? {
            if ctx.running.is_running(&lost) {
                tracing::warn!(entry = %lost, queue = %queue, "another worker holds this entry now; stopping its container");
                ctx.running.stop_entry(&lost, StopCause::Fenced);
            }
        }
    }
    // Cancel requests are announced on pub/sub, but one sent while we were away is
    // only in the job hash: look there too.
    let ids = ctx.running.job_ids();
    for (id, asked) in ids
        .iter()
        .zip(state::cancel_requested(&mut conn, &ctx.keys, &ids).await?)
    {
        if asked && ctx.running.stop_job(id, StopCause::Cancelled) {
            tracing::info!(job_id = %id, "cancel requested");
        }
    }
    Ok(())
}

/// Takes over entries whose worker died, while this worker has free permits.
pub(super) async fn reclaimer(
    ctx: Ctx,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    token: CancellationToken,
) {
    let lease_ms = ctx.lease().as_millis() as u64;
    let every = (ctx.lease() / 2).max(Duration::from_millis(200));
    while !token.is_cancelled() {
        // Taking a dead worker's job while Docker does not answer could only fail it.
        tokio::select! {
            _ = ctx.executor.until_reachable() => {}
            _ = token.cancelled() => return,
        }
        if let Err(e) = reclaim_once(&ctx, &permits, &tracker, lease_ms).await {
            tracing::debug!(error = %error_chain(&e), "reclaim pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = token.cancelled() => return,
        }
    }
}

async fn reclaim_once(
    ctx: &Ctx,
    permits: &Arc<Semaphore>,
    tracker: &TaskTracker,
    lease_ms: u64,
) -> Result<(), StoreError> {
    let mut conn = ctx.store.conn().await?;
    for queue in &ctx.settings.worker.queues {
        let running = |id: &str| ctx.running.is_running(id);
        for orphan in lease::orphans(
            &mut conn,
            &ctx.keys,
            queue,
            lease_ms,
            16,
            &ctx.consumer,
            running,
        )
        .await?
        {
            // Wait for a permit: an idle worker's claim loop holds one while it blocks
            // on a read, and hands it over (the semaphore is fair) within worker.block_ms.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return Ok(());
            };
            if let Some(entry) = lease::take_over(
                &mut conn,
                &ctx.keys,
                queue,
                &ctx.consumer,
                lease_ms,
                &orphan,
            )
            .await?
            {
                tracing::warn!(entry = %entry.id, queue = %queue, dead_worker = %orphan.owner, "taking over a job whose worker is gone");
                let registration = ctx.running.register(queue, &entry.id);
                tracker.spawn(super::pipeline::run(
                    ctx.clone(),
                    entry,
                    registration,
                    permit,
                ));
            }
        }
    }
    Ok(())
}
