//! The heartbeat: every third of a lease, the worker's liveness key is renewed,
//! with the leases of the entries it runs, and cancel requests missed on pub/sub
//! are looked up.
//!
//! Invariants:
//! - A worker that cannot renew for longer than a whole lease stops every
//!   running job (fencing): another worker may own them by now. The Redis side
//!   of leases is `queue::lease`.
//! - A worker claims and takes over nothing before its first beat went through
//!   ([`until_alive`]): until its liveness key is in Redis, any other worker's
//!   sweep would take its containers for a dead worker's and remove them (a
//!   worker that starts while Redis is down would otherwise claim as soon as
//!   Redis is back, before its beat retried).

use super::context::Ctx;
use super::running::StopCause;
use crate::queue::lease;
use crate::state;
use crate::store::StoreError;
use crate::telemetry::error_chain;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Renews the lease every third of it until `done`. If renewing fails for longer
/// than the lease, every running job is stopped: another worker may own it by now.
/// `info` describes the process; each beat adds how it is now (`docker`: `ok` or
/// `unreachable`, `running`: its jobs, `beat_at`), so `dockhand workers` tells a
/// worker that is alive but cannot run anything.
/// `alive` is set once the first beat has gone through.
pub(super) async fn run(
    ctx: Ctx,
    info: serde_json::Value,
    alive: watch::Sender<bool>,
    done: CancellationToken,
) {
    let lease = ctx.lease();
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut renewal = Renewal::new(lease);
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
                alive.send_if_modified(|a| !std::mem::replace(a, true));
                if renewal.renewed() {
                    tracing::info!("lease renewed again");
                }
            }
            Err(e) => {
                let (first, lapsed) = renewal.failed();
                if first {
                    tracing::warn!(error = %error_chain(&e), "cannot renew the lease");
                }
                if lapsed && !ctx.running.is_empty() {
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

/// Returns true once the worker's first beat has gone through (see the module's
/// invariants), false when `token` fires first or the heartbeat is gone.
pub(super) async fn until_alive(
    alive: &mut watch::Receiver<bool>,
    token: &CancellationToken,
) -> bool {
    tokio::select! {
        seen = alive.wait_for(|a| *a) => seen.is_ok(),
        _ = token.cancelled() => false,
    }
}

/// Whether the lease still holds: renewed within the last lease, by this
/// process's clock.
struct Renewal {
    lease: Duration,
    last_ok: Instant,
    failing: bool,
}

impl Renewal {
    fn new(lease: Duration) -> Renewal {
        Renewal {
            lease,
            last_ok: Instant::now(),
            failing: false,
        }
    }

    /// A renewal went through; true when it ends a run of failures.
    fn renewed(&mut self) -> bool {
        self.last_ok = Instant::now();
        std::mem::take(&mut self.failing)
    }

    /// A renewal failed: whether it is the first of a run of failures, and
    /// whether the last renewal is more than a lease ago (the lease has lapsed).
    fn failed(&mut self) -> (bool, bool) {
        let first = !std::mem::replace(&mut self.failing, true);
        (first, self.last_ok.elapsed() > self.lease)
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
    for (stream, entries) in ctx.running.by_stream() {
        for lost in lease::renew(&mut conn, &stream, &ctx.consumer, &entries).await? {
            if ctx.running.is_running(&lost) {
                tracing::warn!(entry = %lost, stream = %stream, "another worker holds this entry now; stopping its container");
                ctx.running.stop_entry(&lost, StopCause::Fenced);
            }
        }
    }
    // Limit slots lapse with the lease unless renewed, so a dead worker leaks none.
    let slots = ctx.running.limit_slots();
    crate::limits::renew(&mut conn, &ctx.keys, &slots, super::limit::slot_lease(ctx)).await?;
    // Cancel requests are announced on pub/sub, but one sent while we were away is
    // only in the job hash: look there too.
    let jobs = ctx.running.jobs();
    for ((queue, id), asked) in jobs
        .iter()
        .zip(state::cancel_requested(&mut conn, &ctx.keys, &jobs).await?)
    {
        if asked && ctx.running.stop_job(Some(queue), id, StopCause::Cancelled) {
            tracing::info!(job_id = %id, "cancel requested");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a paused clock: failures within a lease of the last renewal keep it; the
    /// first failure past it says the lease lapsed; a renewal starts it afresh.
    #[tokio::test(start_paused = true)]
    async fn the_lease_lapses_a_lease_after_the_last_renewal() {
        let lease = Duration::from_secs(30);
        let mut renewal = Renewal::new(lease);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(renewal.failed(), (true, false));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            renewal.failed(),
            (false, false),
            "exactly a lease: still held"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(renewal.failed(), (false, true));
        assert!(renewal.renewed(), "the renewal ends the run of failures");
        assert!(!renewal.renewed());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(renewal.failed(), (true, false));
    }
}
