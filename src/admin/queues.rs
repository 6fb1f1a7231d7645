//! The queues: what waits, runs, is scheduled or dead in each, how old its oldest
//! waiting job is, how many jobs it finished in the last minute, how many live
//! workers serve it, and whether it is paused.
//!
//! Invariants:
//! - A queue is paused while its name is in the set `dockhand:paused`. Workers
//!   read that set before each claim and do not claim from a paused queue; a job
//!   already claimed runs to its end. Pausing never moves or loses an entry.
//! - Finished entries are deleted from the stream, so the stream holds waiting
//!   plus running (delivered, not yet acknowledged) entries.

use super::lookup::{self, live_workers, serving};
use super::AdminError;
use crate::config::Settings;
use crate::queue::{Keys, GROUP};
use crate::store::Conn;
use deadpool_redis::redis::{self, AsyncCommands};
use serde::Serialize;

/// One queue's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    pub queue: String,
    /// In the stream, not yet claimed.
    pub waiting: u64,
    /// Claimed and not yet finished.
    pub running: u64,
    /// Delayed, or waiting for a retry.
    pub scheduled: u64,
    /// In the inbox list, not yet moved into the stream.
    pub inbox: u64,
    pub dead: u64,
    /// Seconds since the oldest unclaimed entry was added; `None` when none waits.
    pub oldest_waiting_seconds: Option<f64>,
    /// Jobs that ended in about the last minute (six 10-second windows).
    pub finished_last_minute: u64,
    /// Live worker processes that serve it.
    pub workers: usize,
    pub paused: bool,
}

/// Every queue the settings name or Redis holds, with its numbers.
pub async fn stats(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
) -> Result<Vec<QueueStats>, AdminError> {
    let queues = lookup::queues(conn, keys, settings).await?;
    let workers = live_workers(conn, keys).await?;
    let paused = paused(conn, keys).await?;
    let now = chrono::Utc::now();
    let bucket = now.timestamp() / 10;
    let mut out = Vec::new();
    for q in queues
        .into_iter()
        .chain(paused.iter().cloned())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let mut pipe = redis::pipe();
        pipe.xlen(keys.jobs(&q))
            .zcard(keys.scheduled(&q))
            .llen(keys.inbox(&q))
            .xlen(keys.dead(&q));
        for b in bucket - 5..=bucket {
            pipe.get(keys.finished_bucket(&q, b));
        }
        let (counts, buckets): ((u64, u64, u64, u64), Vec<Option<u64>>) = {
            let mut replies: Vec<redis::Value> = pipe.query_async(&mut **conn).await?;
            let buckets = replies
                .split_off(4)
                .into_iter()
                .map(|v| redis::from_redis_value(v).ok().flatten())
                .collect();
            let counts: Vec<u64> = replies
                .into_iter()
                .map(|v| redis::from_redis_value(v).unwrap_or(0))
                .collect();
            ((counts[0], counts[1], counts[2], counts[3]), buckets)
        };
        let (len, scheduled, inbox, dead) = counts;
        // The queue's stream and its priority lanes (`queue::lanes`) together.
        let mut running = 0;
        let mut oldest: Option<i64> = None;
        let mut extra = 0;
        let lanes = crate::queue::lanes::present(conn, keys, &q).await?;
        for stream in std::iter::once(keys.jobs(&q)).chain(lanes.into_iter().map(|(_, k)| k)) {
            let (r, o) = claimed_and_oldest(conn, &stream).await?;
            running += r;
            oldest = match (oldest, o) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if stream != keys.jobs(&q) {
                let n: u64 = conn.xlen(&stream).await?;
                extra += n;
            }
        }
        let len = len + extra;
        let oldest_waiting_seconds = oldest
            .map(|ms| ((now.timestamp_millis() - ms).max(0) as f64 / 1000.0 * 10.0).round() / 10.0);
        out.push(QueueStats {
            waiting: len.saturating_sub(running),
            running,
            scheduled,
            inbox,
            dead,
            oldest_waiting_seconds,
            finished_last_minute: buckets.into_iter().flatten().sum(),
            workers: serving(&workers, &q),
            paused: paused.contains(&q),
            queue: q,
        });
    }
    Ok(out)
}

/// How many entries of `stream` are claimed, and the time (ms) of the oldest
/// entry no worker has read yet.
async fn claimed_and_oldest(
    conn: &mut Conn,
    stream: &str,
) -> Result<(u64, Option<i64>), AdminError> {
    let pending: redis::RedisResult<redis::streams::StreamPendingReply> =
        conn.xpending(stream, GROUP).await;
    let running = match pending {
        Ok(redis::streams::StreamPendingReply::Data(d)) => d.count as u64,
        _ => 0,
    };
    // The group's last delivered id: entries after it are unread.
    let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
        conn.xinfo_groups(stream).await;
    let after = groups
        .ok()
        .and_then(|g| g.groups.into_iter().find(|g| g.name == GROUP))
        .map(|g| format!("({}", g.last_delivered_id))
        .unwrap_or_else(|| "-".to_string());
    let first: redis::streams::StreamRangeReply = conn.xrange_count(stream, &after, "+", 1).await?;
    let oldest = first
        .ids
        .first()
        .and_then(|e| e.id.split('-').next()?.parse::<i64>().ok());
    Ok((running, oldest))
}

/// The paused queues.
pub async fn paused(
    conn: &mut Conn,
    keys: &Keys,
) -> Result<std::collections::BTreeSet<String>, AdminError> {
    Ok(conn.smembers(keys.paused()).await?)
}

/// Pauses (or, with `false`, resumes) `queue`. Returns whether that changed anything.
pub async fn set_paused(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    pause: bool,
) -> Result<bool, AdminError> {
    super::queue_name(queue)?;
    let changed: i64 = if pause {
        conn.sadd(keys.paused(), queue).await?
    } else {
        conn.srem(keys.paused(), queue).await?
    };
    Ok(changed == 1)
}
