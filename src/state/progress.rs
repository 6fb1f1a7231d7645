//! A running job's progress in its hash (field `progress`, the last report as
//! JSON `{"progress","message","at"}`), and its `job.progress` event with the
//! webhook deliveries that want it.
//!
//! Invariants:
//! - Written only while the entry owns the job and the job is not finished, checked
//!   in the same Lua step as the write (like every state write): a stale run or a
//!   report arriving after the terminal state changes nothing.
//! - An event is published, kept in the events stream, and its deliveries are made
//!   in that same step: there is no `job.progress` event without its webhooks, and
//!   no webhook for a report that was refused. How often events are asked for is
//!   the caller's rate limit; this step writes what it is given.

use crate::queue::Keys;
use crate::state::Owner;
use crate::store::{Conn, StoreError};
use crate::webhook::outbox::{self, NewDelivery};
use deadpool_redis::redis;
use std::sync::LazyLock;

/// KEYS: job hash, events stream, due set, job's delivery set, then one delivery
/// hash per target. ARGV: entry, consumer, report JSON, channel, event body (''
/// for the hash only), job id, events stream cap, now (ms), created_at,
/// retention, then id, subscriber, url, secret per target.
static REPORT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{}
        if redis.call('HGET', KEYS[1], 'entry') ~= ARGV[1] then return 0 end
        if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
        local status = redis.call('HGET', KEYS[1], 'status')
        if status == 'completed' or status == 'aborted' then return 0 end
        redis.call('HSET', KEYS[1], 'progress', ARGV[3])
        if ARGV[5] ~= '' then
            redis.call('PUBLISH', ARGV[4], ARGV[5])
            redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'type', 'job.progress', 'job', ARGV[6], 'event', ARGV[5])
            for i = 5, #KEYS do
                local a = 10 + (i - 5) * 4
                create(KEYS[i], KEYS[3], KEYS[4], ARGV[a + 1], ARGV[6], 'job.progress', ARGV[a + 2],
                    ARGV[a + 3], ARGV[a + 4], ARGV[5], ARGV[8], ARGV[9], ARGV[10])
            end
        end
        return 1
        ",
        outbox::CREATE_FN
    ))
});

/// A `job.progress` event to publish with the report, and whom to deliver it to.
pub struct Event<'a> {
    pub body: &'a str,
    /// Each target with its delivery id (unique to this event: see the caller).
    pub deliveries: &'a [(String, NewDelivery)],
}

/// Writes `report` (the JSON kept in field `progress`) and, with `event`, publishes
/// it and makes its deliveries. False when the entry no longer owns the job or the
/// job is over: then nothing was written.
#[allow(clippy::too_many_arguments)]
pub async fn report(
    conn: &mut Conn,
    keys: &Keys,
    owner: Owner<'_>,
    job: &str,
    report: &str,
    event: Option<&Event<'_>>,
    retention_seconds: u64,
    events_max_len: usize,
) -> Result<bool, StoreError> {
    let mut inv = REPORT.key(keys.job(job));
    inv.key(keys.events())
        .key(keys.deliveries_due())
        .key(keys.job_deliveries(job));
    let deliveries = event.map_or(&[][..], |e| e.deliveries);
    for (id, _) in deliveries {
        inv.key(keys.delivery(id));
    }
    inv.arg(owner.entry)
        .arg(owner.consumer)
        .arg(report)
        .arg(keys.events_channel())
        .arg(event.map_or("", |e| e.body))
        .arg(job)
        .arg(events_max_len)
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(crate::time::now())
        .arg(retention_seconds);
    for (id, d) in deliveries {
        inv.arg(id)
            .arg(&d.subscriber)
            .arg(d.url.as_deref().unwrap_or_default())
            .arg(d.secret.as_deref().unwrap_or_default());
    }
    let written: i64 = inv.invoke_async(conn).await?;
    Ok(written == 1)
}
