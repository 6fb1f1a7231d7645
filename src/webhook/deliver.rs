//! The delivery loop: takes due deliveries, sends each attempt, and decides what
//! comes next (done, again later, dead letter, subscriber disabled). Runs inside
//! `dockhand worker`, or alone as `dockhand webhooks deliver`.

use super::outbox::{self, Delivery};
use super::{attempt, Guard, Message, Outbound, Subscriber, Target, Verdict};
use crate::config::Settings;
use crate::metrics::{Inc, WEBHOOK_ATTEMPTS, WEBHOOK_LATENCY};
use crate::queue::Keys;
use crate::store::{Store, StoreError};
use crate::telemetry::error_chain;
use deadpool_redis::redis::AsyncCommands;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the due set is looked at when nothing was due. Deliveries this
/// process makes do not wait for it: their maker wakes the loop (`made`).
const POLL: Duration = Duration::from_millis(200);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
struct Ctx {
    settings: Arc<Settings>,
    store: Store,
    keys: Keys,
    outbound: Arc<Outbound>,
}

/// Sends deliveries until `token` is cancelled, then lets attempts in flight end.
/// `made` is notified when this process has just made deliveries, so they go out
/// at once; those of other processes (and retries) are found by polling.
pub async fn run(
    settings: Arc<Settings>,
    store: Store,
    made: Arc<tokio::sync::Notify>,
    token: CancellationToken,
) {
    let tls = super::tls::client_config(&settings.webhooks.ca_file).unwrap_or_else(|e| {
        tracing::error!(error = %error_chain(&e), "webhooks.ca_file is unusable; https deliveries trust the public roots only. Give it PEM certificates, or set it empty");
        super::tls::public_roots()
    });
    let outbound = Arc::new(Outbound {
        guard: Guard::new(&settings.webhooks.allow_networks),
        tls,
    });
    let ctx = Ctx {
        keys: Keys::new(&settings.redis.prefix),
        settings,
        store,
        outbound,
    };
    let w = &ctx.settings.webhooks;
    let permits = Arc::new(Semaphore::new(w.concurrency));
    let tracker = TaskTracker::new();
    let lease_ms = w.lease_seconds * 1000;
    while !token.is_cancelled() {
        let free = permits.available_permits();
        let taken = if free == 0 {
            Ok(Vec::new())
        } else {
            async {
                let mut conn = ctx.store.conn().await?;
                outbox::take_due(
                    &mut conn,
                    &ctx.keys,
                    chrono::Utc::now().timestamp_millis(),
                    lease_ms,
                    free,
                )
                .await
            }
            .await
        };
        let ids = match taken {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "cannot read due webhook deliveries");
                Vec::new()
            }
        };
        let idle = ids.is_empty();
        for id in ids {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let ctx = ctx.clone();
            tracker.spawn(async move {
                if let Err(e) = send(&ctx, &id).await {
                    // The delivery stays in the due set: it is tried again after the lease.
                    tracing::warn!(delivery = %id, error = %error_chain(&e), "could not record a webhook attempt");
                }
                drop(permit);
            });
        }
        if idle {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = made.notified() => {}
                _ = token.cancelled() => {}
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(
        Duration::from_secs(ctx.settings.webhooks.timeout_seconds + 5),
        tracker.wait(),
    )
    .await;
}

async fn send(ctx: &Ctx, id: &str) -> Result<(), StoreError> {
    let mut conn = ctx.store.conn().await?;
    let retention = ctx.settings.jobs.retention_seconds;
    let Some(d) = outbox::load(&mut conn, &ctx.keys, id).await? else {
        let _: i64 = conn.zrem(ctx.keys.deliveries_due(), id).await?;
        return Ok(());
    };
    if d.status != "pending" {
        let _: i64 = conn.zrem(ctx.keys.deliveries_due(), id).await?;
        return Ok(());
    }
    let target = match target(&mut conn, &ctx.keys, &d).await? {
        Ok(t) => t,
        Err(why) => {
            tracing::warn!(delivery = %id, subscriber = %d.subscriber, error = %why, "webhook dead-lettered; `dockhand webhooks replay --dead` sends it again");
            return outbox::dead(&mut conn, &ctx.keys, &d, &why, retention).await;
        }
    };
    let message = match Message::with_id(id, d.body.clone()) {
        Ok(m) => m,
        Err(e) => return outbox::dead(&mut conn, &ctx.keys, &d, &error_chain(&e), retention).await,
    };
    drop(conn); // not held across the HTTP attempt
    let timeout = Duration::from_secs(ctx.settings.webhooks.timeout_seconds);
    let outcome = attempt(&target, &message, &ctx.outbound, timeout).await;

    let mut conn = ctx.store.conn().await?;
    let record = serde_json::json!({
        "n": d.attempts + 1,
        "at": crate::time::now(),
        "url": target.url,
        "status": outcome.status,
        "duration_ms": outcome.duration.as_millis() as u64,
        "response": outcome.body,
        "error": outcome.error,
        "verdict": format!("{:?}", outcome.verdict).to_lowercase(),
    });
    let schedule = &ctx.settings.webhooks.retry_schedule_seconds;
    let last_round = schedule.get(d.round as usize).is_none();
    let metrics = attempt_metrics(&outcome.verdict, last_round, &d.created_at);
    outbox::record_attempt(&mut conn, &ctx.keys, id, &record, &metrics).await?;
    let what = outcome.error.clone().unwrap_or_else(|| {
        format!(
            "HTTP {}",
            outcome.status.map(|s| s.to_string()).unwrap_or_default()
        )
    });
    match outcome.verdict {
        Verdict::Delivered => {
            tracing::info!(delivery = %id, job_id = %d.job, subscriber = %d.subscriber, status = ?outcome.status, "webhook delivered");
            outbox::delivered(&mut conn, &ctx.keys, id, retention).await
        }
        Verdict::Gone => {
            let why = format!(
                "{what}: the receiver asked for no more deliveries; subscriber {} disabled",
                d.subscriber
            );
            tracing::warn!(delivery = %id, subscriber = %d.subscriber, "webhook receiver answered 410 Gone; subscriber disabled (`dockhand subscriber add` it again to deliver to it)");
            disable(&mut conn, &ctx.keys, &d.subscriber, &why).await?;
            outbox::dead(&mut conn, &ctx.keys, &d, &why, retention).await
        }
        Verdict::Refused | Verdict::Invalid => {
            tracing::warn!(delivery = %id, subscriber = %d.subscriber, error = %what, "webhook cannot be sent; dead-lettered (fix the URL or the allowances, then `dockhand webhooks replay --dead`)");
            outbox::dead(&mut conn, &ctx.keys, &d, &what, retention).await
        }
        Verdict::Retry => {
            let schedule = &ctx.settings.webhooks.retry_schedule_seconds;
            let round = d.round as usize + 1;
            let Some(base) = schedule.get(round - 1) else {
                let why = format!("gave up after {round} attempts; last: {what}");
                tracing::warn!(delivery = %id, subscriber = %d.subscriber, error = %why, "webhook dead-lettered; `dockhand webhooks replay --dead` sends it again");
                return outbox::dead(&mut conn, &ctx.keys, &d, &why, retention).await;
            };
            let jitter = 0.8 + 0.4 * crate::backoff::random_fraction();
            let mut wait = Duration::from_secs(*base).mul_f64(jitter);
            if let Some(after) = outcome.retry_after {
                wait = wait.max(after.min(MAX_RETRY_AFTER));
            }
            tracing::info!(delivery = %id, subscriber = %d.subscriber, error = %what, retry_in_ms = wait.as_millis() as u64, "webhook attempt failed; will retry");
            let at = chrono::Utc::now().timestamp_millis() + wait.as_millis() as i64;
            outbox::retry_at(&mut conn, &ctx.keys, id, at).await
        }
    }
}

/// What one attempt adds to the fleet-wide metrics: its verdict as an operator
/// reads it (`delivered`; `failed`, to be tried again; `dead`, no more tries: the
/// receiver refused it for good, or this was the last try of the schedule), and
/// for a delivery, how long after its creation it arrived.
fn attempt_metrics(verdict: &Verdict, last_round: bool, created_at: &str) -> Vec<Inc> {
    let kind = match verdict {
        Verdict::Delivered => "delivered",
        Verdict::Retry if !last_round => "failed",
        Verdict::Retry | Verdict::Gone | Verdict::Refused | Verdict::Invalid => "dead",
    };
    let mut incs = vec![WEBHOOK_ATTEMPTS.inc(&[kind])];
    if matches!(verdict, Verdict::Delivered) {
        if let Some(s) = crate::metrics::seconds_between(created_at, &crate::time::now()) {
            incs.extend(WEBHOOK_LATENCY.observe(&[], s));
        }
    }
    incs
}

/// Where to send `d` now: the job's own target, or the subscriber as registered
/// at this moment (so a rotation or a new URL applies to pending deliveries).
async fn target(
    conn: &mut crate::store::Conn,
    keys: &Keys,
    d: &Delivery,
) -> Result<Result<Target, String>, StoreError> {
    if let (Some(url), Some(secret)) = (&d.url, &d.secret) {
        return Ok(secret
            .parse()
            .map(|s| Target {
                url: url.clone(),
                secrets: vec![s],
            })
            .map_err(|e| format!("the job's webhook secret is unusable: {e}")));
    }
    let raw: Option<String> = conn.hget(keys.subscribers(), &d.subscriber).await?;
    let Some(raw) = raw else {
        return Ok(Err(format!("subscriber {} was removed", d.subscriber)));
    };
    let sub: Subscriber = match serde_json::from_str(&raw) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Err(format!(
                "subscriber {} is unreadable: {e}",
                d.subscriber
            )))
        }
    };
    if let Some(why) = &sub.disabled {
        return Ok(Err(format!(
            "subscriber {} is disabled: {why}",
            d.subscriber
        )));
    }
    Ok(sub.target(chrono::Utc::now().timestamp_millis()))
}

async fn disable(
    conn: &mut crate::store::Conn,
    keys: &Keys,
    name: &str,
    why: &str,
) -> Result<(), StoreError> {
    let raw: Option<String> = conn.hget(keys.subscribers(), name).await?;
    if let Some(mut sub) = raw.and_then(|r| serde_json::from_str::<Subscriber>(&r).ok()) {
        sub.disabled = Some(why.to_string());
        let _: i64 = conn
            .hset(
                keys.subscribers(),
                name,
                serde_json::to_string(&sub).unwrap_or_default(),
            )
            .await?;
        // The workers' copies of the registry (`outbox::Registry`) forget it.
        let _: i64 = conn.publish(keys.subscribers_channel(), name).await?;
    }
    Ok(())
}
