//! What every part of a worker shares: the settings, the Redis store, the
//! executors (Docker, and the local one when enabled), the running jobs, and a few helpers for the loops that retry.
//!
//! Invariant: everything here is made once by `worker::run` and passed down by
//! clone (each field is cheap to clone); no part of the worker reaches for a
//! global.

use super::images::Images;
use super::posted::ResultsHost;
use super::running::Running;
use crate::backoff::Backoff;
use crate::config::Settings;
use crate::executor::local::LocalExecutor;
use crate::executor::Executor;
use crate::queue::Keys;
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a job's pipeline needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub keys: Keys,
    pub executor: Executor,
    /// Runs `"executor": "local"` jobs; `None` unless `executors.local.enabled`.
    pub local: Option<LocalExecutor>,
    /// Runs `"executor": "ssh"` jobs; `None` without `executors.ssh.hosts`.
    pub ssh: Option<crate::executor::ssh::SshExecutor>,
    pub worker_id: String,
    /// This process's consumer name: unique, so two workers never share entries.
    pub consumer: String,
    pub running: Running,
    /// Images of jobs from git: the mirror cache and the builds under way.
    pub images: Images,
    /// Serves running jobs' RESPONSE_URL and ABORT_URL (none if it could not start).
    pub results: Option<Arc<ResultsHost>>,
    /// Serves local jobs' result URLs on loopback (with `local`, if it could start).
    pub local_results: Option<Arc<ResultsHost>>,
    /// This deployment's id (`Keys::deployment`), read from Redis when first needed:
    /// the worker may start before Redis does.
    pub deployment: Arc<tokio::sync::OnceCell<String>>,
    /// Wakes this process's webhook delivery loop when a finished job made deliveries.
    pub deliveries_made: Arc<tokio::sync::Notify>,
    /// Jobs this process ended since it started, for its own `/metrics`.
    pub finished: Finished,
    /// Fleet-wide counts not yet written to Redis (see `metrics::Tally`).
    pub tally: crate::metrics::Tally,
    /// The webhook subscribers as last read (see `webhook::outbox::Registry`).
    pub subscribers: crate::webhook::outbox::Registry,
}

impl Ctx {
    /// This deployment's id, made by whichever worker asks first (`SET NX`).
    pub async fn deployment(&self) -> Result<&str, StoreError> {
        let id = self
            .deployment
            .get_or_try_init(|| async {
                let mut conn = self.store.conn().await?;
                let key = self.keys.deployment();
                let fresh = ulid::Ulid::new().to_string().to_ascii_lowercase();
                let _: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&fresh)
                    .arg("NX")
                    .query_async(&mut conn)
                    .await?;
                let id: String = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                Ok::<_, StoreError>(id)
            })
            .await?;
        Ok(id)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.worker.lease_seconds)
    }
}

/// Jobs this process finished since it started, by status. Cheap to clone.
#[derive(Debug, Default, Clone)]
pub(crate) struct Finished {
    completed: Arc<AtomicU64>,
    aborted: Arc<AtomicU64>,
}

impl Finished {
    /// One more job ended by this process (a terminal state it wrote).
    pub fn add(&self, status: crate::job::Status) {
        let n = match status {
            crate::job::Status::Completed => &self.completed,
            _ => &self.aborted,
        };
        n.fetch_add(1, Ordering::Relaxed);
    }

    /// Completed and aborted so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.completed.load(Ordering::Relaxed),
            self.aborted.load(Ordering::Relaxed),
        )
    }
}

/// The backoff of a loop that reconnects to Redis or Docker.
pub(crate) fn reconnect_backoff(settings: &Settings) -> Backoff {
    Backoff::new(
        Duration::from_millis(100),
        Duration::from_millis(settings.worker.reconnect_max_ms),
    )
}

pub(crate) async fn sleep_or_cancel(delay: Duration, token: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = token.cancelled() => {}
    }
}
