//! What follows a job's terminal write, before its entry is acknowledged: the
//! jobs waiting for it (`crate::deps`) record how it ended, and are released
//! when it was the last thing they waited for; its batch (`crate::batch`)
//! counts it.
//!
//! Invariant: every step here is idempotent and runs before the entry is
//! acknowledged, so a worker that dies half-way leaves the entry pending, and
//! whoever takes it over (finding the job finished) takes these steps again
//! without counting or releasing anything twice.

use super::context::Ctx;
use crate::job::{Reason, Status};
use crate::store::StoreError;
use deadpool_redis::redis;

/// How a job ended, as its terminal write recorded it.
pub(super) struct Ended<'a> {
    pub id: &'a str,
    pub queue: &'a str,
    pub status: Status,
    pub reason: Option<Reason>,
}

/// Releases the job's dependents and counts it in its batch. `raw` is its
/// entry as submitted (which names the batch). `dependents`: the terminal
/// write found jobs waiting for this one (it looks in the same step, and
/// expires the job's own wait), so without them there is nothing to release.
pub(super) async fn ended(
    ctx: &Ctx,
    end: &Ended<'_>,
    raw: &[u8],
    dependents: bool,
) -> Result<(), StoreError> {
    let retention = ctx.settings.jobs.retention_seconds;
    let reason = end.reason.map(Reason::as_str).unwrap_or_default();
    let released = if !dependents {
        0
    } else {
        let job = crate::job::JobRef::new(end.queue, end.id);
        ctx.store
            .persist(|mut conn| {
                let job = &job;
                async move {
                    let n = crate::deps::parent_ended(
                        &mut conn, &ctx.keys, job, end.status, reason, retention,
                    )
                    .await?;
                    let mut pipe = redis::pipe();
                    crate::deps::expire_with_job(&mut pipe, &ctx.keys, job, retention);
                    pipe.query_async::<()>(&mut conn).await?;
                    Ok(n)
                }
            })
            .await?
    };
    if released > 0 {
        tracing::info!(released, "jobs waiting for this one were released");
    }
    let Some((batch, size)) = crate::batch::of_entry(raw) else {
        return Ok(());
    };
    let counted = ctx
        .store
        .persist(|mut conn| {
            let batch = &batch;
            async move {
                let job_end = crate::batch::JobEnd {
                    job: end.id,
                    queue: end.queue,
                    status: end.status.as_str(),
                    reason,
                    size,
                };
                let max = ctx.settings.jobs.events_max_len;
                crate::batch::job_ended(&mut conn, &ctx.keys, batch, &job_end, max, retention).await
            }
        })
        .await?;
    if let crate::batch::Counted::Completed { fired: true, .. } = counted {
        tracing::info!(%batch, "the batch is complete");
        ctx.deliveries_made.notify_one();
    }
    Ok(())
}

/// [`ended`] for a job of `queue` whose terminal write was made before (its
/// entry is delivered again): how it ended is read from its hash.
pub(super) async fn ended_before(
    ctx: &Ctx,
    queue: &str,
    id: &str,
    raw: &[u8],
) -> Result<(), StoreError> {
    let key = ctx.keys.job(queue, id);
    let (status, reason): (Option<String>, Option<String>) = ctx
        .store
        .persist(|mut conn| {
            let key = &key;
            async move {
                Ok(redis::cmd("HMGET")
                    .arg(key)
                    .arg("status")
                    .arg("reason")
                    .query_async(&mut conn)
                    .await?)
            }
        })
        .await?;
    let Some(status) = status.as_deref().and_then(Status::parse) else {
        return Ok(());
    };
    let end = Ended {
        id,
        queue,
        status,
        reason: reason.as_deref().and_then(Reason::parse),
    };
    ended(ctx, &end, raw, true).await
}
