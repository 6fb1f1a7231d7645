//! The delivery loop: takes due deliveries, sends each attempt, and decides what
//! comes next (done, again later, dead letter, subscriber disabled). Runs inside
//! `dockhand worker`, or alone as `dockhand webhooks deliver`.

use super::outbox::{self, Claimed, Delivery, Next};
use super::{attempt_on, Connections, Guard, Message, Outbound, Subscriber, Target, Verdict};
use crate::backoff::Backoff;
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
/// process makes do not wait for it (their maker wakes the loop, `made`), nor
/// retries (the loop wakes when the earliest is due).
const POLL: Duration = Duration::from_millis(200);
/// Retries coming due one after another are taken together when due within
/// this long of each other, not one look (three round trips) each: a retry is
/// sent at most this late.
const GATHER: Duration = Duration::from_millis(5);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
struct Ctx {
    settings: Arc<Settings>,
    store: Store,
    keys: Keys,
    outbound: Arc<Outbound>,
    /// Open connections to receivers, kept between attempts.
    connections: Arc<Connections>,
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
        connections: Arc::new(Connections::new(settings.webhooks.concurrency)),
        settings,
        store,
        outbound,
    };
    let w = &ctx.settings.webhooks;
    let permits = Arc::new(Semaphore::new(w.concurrency));
    let tracker = TaskTracker::new();
    let lease_ms = w.lease_seconds * 1000;
    // While Redis cannot be read, the looks back off from POLL (each failed one
    // costs a cluster client several reconnections, each logged).
    let mut unreachable = Backoff::new(
        POLL,
        Duration::from_millis(ctx.settings.worker.reconnect_max_ms).max(POLL),
    );
    while !token.is_cancelled() {
        // A free permit first (waiting for one, not polling: an attempt that ends
        // lets the next due delivery go at once), then every other free one: as
        // many deliveries are taken as can be sent now, in one claim.
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = token.cancelled() => break,
        };
        let mut held = vec![first];
        while let Ok(p) = permits.clone().try_acquire_owned() {
            held.push(p);
        }
        let looked = tokio::time::Instant::now();
        let claimed = async {
            let mut conn = ctx.store.conn().await?;
            let now = chrono::Utc::now().timestamp_millis();
            outbox::claim(&mut conn, &ctx.keys, now, lease_ms, held.len()).await
        }
        .await;
        let (claimed, next) = match claimed {
            Ok(c) => {
                unreachable.reset();
                c
            }
            Err(e) => {
                let wait = unreachable.next_delay();
                if unreachable.failures() == 1 {
                    tracing::warn!(error = %error_chain(&e), "cannot read due webhook deliveries; retrying");
                }
                drop(held);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = token.cancelled() => break,
                }
                continue;
            }
        };
        let idle = claimed.is_empty();
        for (c, permit) in claimed.into_iter().zip(held.drain(..)) {
            let ctx = ctx.clone();
            tracker.spawn(async move {
                let id = match &c {
                    Claimed::Pending(d, _) => d.id.clone(),
                    Claimed::Stale(id) => id.clone(),
                };
                if let Err(e) = send(&ctx, c).await {
                    // The delivery stays in the due set: it is tried again after the lease.
                    tracing::warn!(delivery = %id, error = %error_chain(&e), "could not record a webhook attempt");
                }
                drop(permit);
            });
        }
        drop(held);
        if idle {
            // Until the next delivery is due (a retry goes out on time), but not
            // within GATHER of the last look; or the next look for those other
            // processes make.
            let wait = next.map_or(POLL, |at| {
                let ms = at - chrono::Utc::now().timestamp_millis();
                let due_in = Duration::from_millis(ms.max(0) as u64);
                POLL.min(due_in.max(GATHER.saturating_sub(looked.elapsed())))
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = made.notified() => {}
                _ = token.cancelled() => break,
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

async fn send(ctx: &Ctx, claimed: Claimed) -> Result<(), StoreError> {
    let retention = ctx.settings.jobs.retention_seconds;
    let (d, registered) = match claimed {
        Claimed::Pending(d, registered) => (d, registered),
        Claimed::Stale(id) => {
            let mut conn = ctx.store.conn().await?;
            let _: i64 = conn.zrem(ctx.keys.deliveries_due(), &id).await?;
            return Ok(());
        }
    };
    let id = d.id.as_str();
    let target = match target(&d, registered.as_deref()) {
        Ok(t) => t,
        Err(why) => {
            tracing::warn!(delivery = %id, subscriber = %d.subscriber, error = %why, "webhook dead-lettered; `dockhand webhooks replay --dead` sends it again");
            let mut conn = ctx.store.conn().await?;
            return outbox::dead(&mut conn, &ctx.keys, &d, &why, retention).await;
        }
    };
    let message = match Message::with_id(id, d.body.clone()) {
        Ok(m) => m,
        Err(e) => {
            let mut conn = ctx.store.conn().await?;
            return outbox::dead(&mut conn, &ctx.keys, &d, &error_chain(&e), retention).await;
        }
    };
    let timeout = Duration::from_secs(ctx.settings.webhooks.timeout_seconds);
    let outcome = attempt_on(
        &target,
        &message,
        &ctx.outbound,
        Some(&ctx.connections),
        timeout,
    )
    .await;

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
    let what = outcome.error.clone().unwrap_or_else(|| {
        format!(
            "HTTP {}",
            outcome.status.map(|s| s.to_string()).unwrap_or_default()
        )
    });
    let why;
    let next = match outcome.verdict {
        Verdict::Delivered => {
            tracing::info!(delivery = %id, job_id = %d.job, subscriber = %d.subscriber, status = ?outcome.status, "webhook delivered");
            Next::Delivered
        }
        Verdict::Gone => {
            why = format!(
                "{what}: the receiver asked for no more deliveries; subscriber {} disabled",
                d.subscriber
            );
            tracing::warn!(delivery = %id, subscriber = %d.subscriber, "webhook receiver answered 410 Gone; subscriber disabled (`dockhand subscriber add` it again to deliver to it)");
            let mut conn = ctx.store.conn().await?;
            disable(&mut conn, &ctx.keys, &d.subscriber, &why).await?;
            Next::Dead(&why)
        }
        Verdict::Refused | Verdict::Invalid => {
            tracing::warn!(delivery = %id, subscriber = %d.subscriber, error = %what, "webhook cannot be sent; dead-lettered (fix the URL or the allowances, then `dockhand webhooks replay --dead`)");
            Next::Dead(&what)
        }
        Verdict::Retry => match schedule.get(d.round as usize) {
            None => {
                why = format!("gave up after {} attempts; last: {what}", d.round + 1);
                tracing::warn!(delivery = %id, subscriber = %d.subscriber, error = %why, "webhook dead-lettered; `dockhand webhooks replay --dead` sends it again");
                Next::Dead(&why)
            }
            Some(base) => {
                let jitter = 0.8 + 0.4 * crate::backoff::random_fraction();
                let mut wait = Duration::from_secs(*base).mul_f64(jitter);
                if let Some(after) = outcome.retry_after {
                    wait = wait.max(after.min(MAX_RETRY_AFTER));
                }
                tracing::info!(delivery = %id, subscriber = %d.subscriber, error = %what, retry_in_ms = wait.as_millis() as u64, "webhook attempt failed; will retry");
                Next::RetryAt(chrono::Utc::now().timestamp_millis() + wait.as_millis() as i64)
            }
        },
    };
    let mut conn = ctx.store.conn().await?;
    outbox::record_attempt(&mut conn, &ctx.keys, &d, &record, &metrics, next, retention).await
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
/// at this moment (`registered`, its JSON, read when the delivery was taken), so
/// that a rotation or a new URL applies to pending deliveries.
fn target(d: &Delivery, registered: Option<&str>) -> Result<Target, String> {
    if let (Some(url), Some(secret)) = (&d.url, &d.secret) {
        return secret
            .parse()
            .map(|s| Target {
                url: url.clone(),
                secrets: vec![s],
            })
            .map_err(|e| format!("the job's webhook secret is unusable: {e}"));
    }
    let Some(raw) = registered else {
        return Err(format!("subscriber {} was removed", d.subscriber));
    };
    let sub: Subscriber = serde_json::from_str(raw)
        .map_err(|e| format!("subscriber {} is unreadable: {e}", d.subscriber))?;
    if let Some(why) = &sub.disabled {
        return Err(format!("subscriber {} is disabled: {why}", d.subscriber));
    }
    sub.target(chrono::Utc::now().timestamp_millis())
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
