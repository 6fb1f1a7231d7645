//! Between admission and the attempt: a job with a `concurrency_key` takes a slot
//! of its key's fleet-wide limit (see `crate::limits`) before it starts, and gives
//! it back when its run ends.
//!
//! Invariants:
//! - A job that finds no room does not wait holding a permit: it is scheduled
//!   again (status `scheduled`, no event, no attempt used) for when a slot may
//!   be free, and another job takes the permit.
//! - Before a job that ran before (a taken-over one) starts again, the
//!   containers an earlier, dead run of it left on this host are removed, so its
//!   slot never stands for two containers.
//! - The slot is given back whatever the run's ending; if that fails (Redis
//!   away), it lapses after [`slot_lease`], since nothing renews it any more.

use super::context::Ctx;
use super::ending::Ending;
use super::running::Registration;
use crate::job::Job;
use crate::limits::{self, Slot};
use crate::queue::Keys;
use crate::state::JobRecord;
use crate::store::StoreError;
use std::time::Duration;

/// The shortest and longest a job waits before it looks for room again.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What the gate decided.
pub(super) enum Gate {
    /// Run now (holding a slot when the job has a key).
    Pass(JobRecord, Box<Job>),
    /// Not now.
    Wait(Ending),
}

/// Takes the job's slot, or schedules it for later.
pub(super) async fn gate(
    ctx: &Ctx,
    registration: &Registration,
    record: JobRecord,
    job: Box<Job>,
) -> Result<Gate, StoreError> {
    let Some(key) = job.spec.concurrency_key.clone() else {
        return Ok(Gate::Pass(record, job));
    };
    let (id, lease) = (record.id.clone(), slot_lease(ctx));
    let slot = ctx
        .store
        .persist(|mut conn| {
            let (key, id) = (&key, &id);
            async move { limits::acquire(&mut conn, &ctx.keys, key, id, lease).await }
        })
        .await?;
    match slot {
        Slot::Taken => {
            registration.set_limit(Some(&key));
            if record.attempt > 0 {
                remove_earlier_runs(ctx, &record.id).await;
            }
            Ok(Gate::Pass(record, job))
        }
        Slot::Full { retry_in, why } => {
            // Jittered, so that many waiting jobs do not all look again at once.
            let wait = retry_in
                .clamp(RETRY_MIN, RETRY_MAX)
                .mul_f64(1.0 + crate::backoff::random_fraction() / 2.0);
            tracing::info!(%why, wait_ms = wait.as_millis() as u64, "no room under the job's limit; it waits");
            let at = chrono::Utc::now() + chrono::Duration::milliseconds(wait.as_millis() as i64);
            Ok(Gate::Wait(Ending::Schedule {
                record,
                at,
                event: "",
            }))
        }
    }
}

/// How long a slot outlives its last renewal: three leases. A dead worker's
/// containers on this host are removed within about one lease of its death (the
/// takeover loop sweeps them as soon as it sees the worker gone), so a lapsed
/// slot no longer stands for a running container.
pub(super) fn slot_lease(ctx: &Ctx) -> Duration {
    ctx.lease() * 3
}

/// Gives back the slot the job took at [`gate`], if it took one.
pub(super) async fn release(
    ctx: &Ctx,
    registration: &Registration,
    keys: &Keys,
    key: Option<&str>,
    id: &str,
) {
    let Some(key) = key else { return };
    registration.set_limit(None);
    let released = async {
        let mut conn = ctx.store.conn().await?;
        limits::release(&mut conn, keys, key, id).await
    }
    .await;
    if let Err(e) = released {
        tracing::warn!(limit = key, error = %crate::telemetry::error_chain(&e), "could not give back the job's limit slot; it lapses with the lease");
    }
}

/// Removes this deployment's containers of job `id` made by another worker
/// process that is gone (not alive), before the job runs again here.
async fn remove_earlier_runs(ctx: &Ctx, id: &str) {
    let Ok(containers) = ctx.executor.labelled_containers().await else {
        return; // the sweep will judge them
    };
    let Ok(deployment) = ctx.deployment().await.map(str::to_string) else {
        return;
    };
    for c in containers
        .into_iter()
        .filter(|c| c.job == id && c.consumer != ctx.consumer && c.deployment == deployment)
    {
        let alive = async {
            let mut conn = ctx.store.conn().await?;
            let alive: bool = deadpool_redis::redis::AsyncCommands::exists(
                &mut conn,
                ctx.keys.alive(&c.consumer),
            )
            .await?;
            Ok::<_, StoreError>(alive)
        }
        .await
        .unwrap_or(true);
        if !alive {
            tracing::info!(container = %c.id, consumer = %c.consumer, "removing the container of this job's earlier run, whose worker is gone");
            ctx.executor.remove_orphan(&c.id).await;
        }
    }
}
