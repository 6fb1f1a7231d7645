//! Taking over what dead workers left: entries pending under a consumer whose
//! liveness key has expired are claimed by this worker, while it has free
//! permits, and run through the pipeline like a fresh claim.
//!
//! Invariant: an entry is taken over only with a permit in hand, so a busy
//! worker leaves a dead worker's jobs to idle ones.

use super::context::Ctx;
use crate::queue::lease;
use crate::store::StoreError;
use crate::telemetry::error_chain;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Takes over entries whose worker died, while this worker has free permits.
pub(super) async fn run(
    ctx: Ctx,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    mut alive: tokio::sync::watch::Receiver<bool>,
    token: CancellationToken,
) {
    if !super::heartbeat::until_alive(&mut alive, &token).await {
        return;
    }
    let lease_ms = ctx.lease().as_millis() as u64;
    let every = (ctx.lease() / 2).max(Duration::from_millis(200));
    let mut fenced = std::collections::HashSet::new();
    while !token.is_cancelled() {
        // Taking a dead worker's job while Docker does not answer could only fail it.
        tokio::select! {
            _ = ctx.executor.until_reachable() => {}
            _ = token.cancelled() => return,
        }
        if let Err(e) = reclaim_once(&ctx, &permits, &tracker, lease_ms, &mut fenced).await {
            tracing::debug!(error = %error_chain(&e), "reclaim pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = token.cancelled() => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn reclaim_lane(
    ctx: &Ctx,
    conn: &mut crate::store::Conn,
    permits: &Arc<Semaphore>,
    tracker: &TaskTracker,
    lease_ms: u64,
    fenced: &mut std::collections::HashSet<String>,
    queue: &str,
    lane: i64,
) -> Result<(), StoreError> {
    let running = |id: &str| ctx.running.is_running(id);
    let orphans = lease::orphans(
        conn,
        &ctx.keys,
        queue,
        lane,
        lease_ms,
        16,
        &ctx.consumer,
        running,
    )
    .await?;
    // A dead worker's containers may still run on this host: remove them now,
    // not at the next minute's sweep, so that a job never runs twice at once
    // and the limit slots of its jobs stand for no container (see `limit`).
    // Once per dead worker, whether or not a permit is free to take its jobs.
    if orphans
        .iter()
        .any(|o| o.owner != ctx.consumer && fenced.insert(o.owner.clone()))
    {
        match super::upkeep::sweep(ctx).await {
            Ok(n) if n > 0 => tracing::info!(
                removed = n,
                "removed the containers of a worker that is gone"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "container sweep failed"),
        }
    }
    for orphan in orphans {
        // Wait for a permit: an idle worker's claim loop holds one while it blocks
        // on a read, and hands it over (the semaphore is fair) within worker.block_ms.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Ok(());
        };
        if let Some(entry) = lease::take_over(
            conn,
            &ctx.keys,
            queue,
            lane,
            &ctx.consumer,
            lease_ms,
            &orphan,
        )
        .await?
        {
            tracing::warn!(entry = %entry.id, queue = %queue, dead_worker = %orphan.owner, "taking over a job whose worker is gone");
            let registration = ctx.running.register(&entry.stream(&ctx.keys), &entry.id);
            tracker.spawn(super::pipeline::run(
                ctx.clone(),
                entry,
                registration,
                permit,
            ));
        }
    }
    Ok(())
}

async fn reclaim_once(
    ctx: &Ctx,
    permits: &Arc<Semaphore>,
    tracker: &TaskTracker,
    lease_ms: u64,
    fenced: &mut std::collections::HashSet<String>,
) -> Result<(), StoreError> {
    let mut conn = ctx.store.conn().await?;
    for queue in &ctx.settings.worker.queues {
        // The queue's stream and each of its priority lanes that exists.
        let mut lanes = vec![0];
        lanes.extend(
            crate::queue::lanes::present(&mut conn, &ctx.keys, queue)
                .await?
                .into_iter()
                .map(|(p, _)| p),
        );
        for lane in lanes {
            reclaim_lane(
                ctx, &mut conn, permits, tracker, lease_ms, fenced, queue, lane,
            )
            .await?;
        }
    }
    Ok(())
}
