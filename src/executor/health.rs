//! Whether the Docker engine answers. A run that could not reach it marks it
//! unreachable; from then one prober pings it with backoff, and the worker claims
//! no job until it answers again: a job claimed meanwhile could only fail.
//!
//! Invariants:
//! - At most one prober runs at a time; it ends once the engine answers.
//! - Waiters are woken when the engine answers; none misses the wake-up (each
//!   registers for it before it looks at the state).

use crate::backoff::Backoff;
use bollard::Docker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The ceiling of the first wait between pings, doubled after each failure up to
/// [`PROBE_MAX`] (see `backoff`).
const PROBE_FIRST: Duration = Duration::from_millis(200);
const PROBE_MAX: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct Health {
    reachable: AtomicBool,
    probing: AtomicBool,
    back: Notify,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            reachable: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            back: Notify::new(),
        }
    }
}

impl Health {
    pub(super) fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::SeqCst)
    }

    /// Records that the engine did not answer, and starts the prober if none runs.
    pub(super) fn mark_unreachable(self: &Arc<Self>, docker: &Docker, why: &str) {
        if self.reachable.swap(false, Ordering::SeqCst) {
            tracing::warn!(error = %why, "the Docker engine is unreachable; claiming no jobs until it answers");
        }
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (health, docker) = (self.clone(), docker.clone());
        tokio::spawn(async move {
            let mut backoff = Backoff::new(PROBE_FIRST, PROBE_MAX);
            loop {
                tokio::time::sleep(backoff.next_delay()).await;
                if docker.ping().await.is_ok() {
                    break;
                }
            }
            health.reachable.store(true, Ordering::SeqCst);
            health.probing.store(false, Ordering::SeqCst);
            health.back.notify_waiters();
            tracing::info!("the Docker engine answers again; claiming jobs");
        });
    }

    /// Returns once the engine is reachable (at once when it is).
    pub(super) async fn until_reachable(&self) {
        loop {
            let back = self.back.notified();
            tokio::pin!(back);
            back.as_mut().enable();
            if self.is_reachable() {
                return;
            }
            back.await;
        }
    }
}
