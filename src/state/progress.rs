//! A running job's progress in its hash (field `progress`, the last report as
//! JSON `{"progress","message","at"}`), and its `job.progress` event with the
//! webhook deliveries that want it.
//!
//! Invariants:
//! - Written only while the entry owns the job and the job is not finished, checked
//!   in the same Lua step as the write (like every state write): a stale run or a
//!   report arriving after the terminal state changes nothing.
//! - An event is published and kept in the queue's events stream in that same
//!   step; its deliveries are made right after, only when the report was written
//!   (no webhook for a report that was refused), one step each in the outbox's
//!   slot. A worker dying in between leaves that one report without its
//!   webhooks: the next report, or the terminal event, says more. How often
//!   events are asked for is the caller's rate limit; this step writes what it is
//!   given.

use crate::queue::Keys;
use crate::state::Owner;
use crate::store::{Conn, StoreError};
use crate::webhook::outbox::{self, NewDelivery};
use deadpool_redis::redis;
use std::sync::LazyLock;

/// KEYS: job hash, the queue's events stream. ARGV: entry, consumer, report
/// JSON, channel, event body ('' for the hash only), job id, events stream cap.
static REPORT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('HGET', KEYS[1], 'entry') ~= ARGV[1] then return 0 end
        if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
        local status = redis.call('HGET', KEYS[1], 'status')
        if status == 'completed' or status == 'aborted' then return 0 end
        redis.call('HSET', KEYS[1], 'progress', ARGV[3])
        if ARGV[5] ~= '' then
            redis.call('PUBLISH', ARGV[4], ARGV[5])
            redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'type', 'job.progress', 'job', ARGV[6], 'event', ARGV[5])
        end
        return 1
        ",
    )
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
    queue: &str,
    job: &str,
    report: &str,
    event: Option<&Event<'_>>,
    retention_seconds: u64,
    events_max_len: usize,
) -> Result<bool, StoreError> {
    let written: i64 = REPORT
        .key(keys.job(queue, job))
        .key(keys.events(queue))
        .arg(owner.entry)
        .arg(owner.consumer)
        .arg(report)
        .arg(keys.events_channel())
        .arg(event.map_or("", |e| e.body))
        .arg(job)
        .arg(events_max_len)
        .invoke_async(conn)
        .await?;
    if written != 1 {
        return Ok(false);
    }
    if let Some(e) = event {
        for (id, target) in e.deliveries {
            outbox::create(
                conn,
                keys,
                id,
                job,
                "job.progress",
                target,
                e.body,
                retention_seconds,
            )
            .await?;
        }
    }
    Ok(true)
}
