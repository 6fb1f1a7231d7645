//! Leases: how a running job stays with its worker, and how a dead worker's jobs
//! move to a live one.
//!
//! Invariants:
//! - A worker process holds a liveness key `dockhand:worker:<consumer>` that expires
//!   after `worker.lease_seconds` unless renewed. The same heartbeat resets the idle
//!   time of the entries it is running (`XCLAIM ... JUSTID` to itself, only while it
//!   still holds them), so a long job is never idle in the PEL while its worker lives.
//! - Another worker takes over an entry only when it has been idle past the lease
//!   AND its owner's liveness key is gone; `XCLAIM` with the lease as minimum idle
//!   time makes two reclaimers race safely (only one gets it).
//! - Renewal reports entries this worker no longer holds, so it can stop (fence)
//!   their containers instead of running a job someone else now owns.

use super::{Entry, Keys, GROUP};
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use std::sync::LazyLock;

/// Resets the idle time of `entries` still held by `consumer`; returns those it lost.
/// Two commands whatever the number of entries: one `XPENDING` over the span of
/// the ids, for this consumer only, says which it still holds, and one `XCLAIM`
/// renews them all. KEYS[1] stream. ARGV: group, consumer, the entries' lowest
/// id, highest id, then the entry ids.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local held = {}
        local span = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[4], 10000, ARGV[2])
        for _, p in ipairs(span) do held[p[1]] = true end
        local keep, lost = {}, {}
        for i = 5, #ARGV do
            if held[ARGV[i]] then table.insert(keep, ARGV[i]) else table.insert(lost, ARGV[i]) end
        end
        if #keep > 0 then
            table.insert(keep, 'JUSTID')
            redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(keep))
        end
        return lost
        ",
    )
});

/// `stream` is the entries' stream (a queue's lane, see `lanes`).
pub async fn renew(
    conn: &mut Conn,
    stream: &str,
    consumer: &str,
    entries: &[String],
) -> Result<Vec<String>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let (low, high) = span(entries);
    let mut inv = RENEW.key(stream);
    inv.arg(GROUP).arg(consumer).arg(low).arg(high);
    for e in entries {
        inv.arg(e);
    }
    Ok(inv.invoke_async(conn).await?)
}

/// The lowest and highest of stream entry ids (`<ms>-<seq>`, compared as numbers).
fn span(entries: &[String]) -> (&str, &str) {
    let key = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    let low = entries
        .iter()
        .min_by_key(|e| key(e))
        .map_or("-", |e| e.as_str());
    let high = entries
        .iter()
        .max_by_key(|e| key(e))
        .map_or("+", |e| e.as_str());
    (low, high)
}

/// Sets this worker's liveness key and its line in the workers hash.
pub async fn beat(
    conn: &mut Conn,
    keys: &Keys,
    consumer: &str,
    info: &str,
    lease_ms: u64,
) -> Result<(), StoreError> {
    redis::pipe()
        .set_options(
            keys.alive(consumer),
            info,
            redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(lease_ms)),
        )
        .ignore()
        .hset(keys.workers(), consumer, info)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Removes this worker's liveness key and line (a clean exit).
pub async fn depart(conn: &mut Conn, keys: &Keys, consumer: &str) -> Result<(), StoreError> {
    redis::pipe()
        .del(keys.alive(consumer))
        .ignore()
        .hdel(keys.workers(), consumer)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// An entry idle past the lease whose owner's liveness key is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub id: String,
    pub owner: String,
}

/// Finds up to `count` entries of `queue` that a dead worker left pending.
/// An entry of this worker's own (`me`) is an orphan too when it is idle past the
/// lease and `running` says no pipeline has it: its pipeline gave up (say, Redis
/// answered with an error it could not retry), and nobody else would ever take it.
#[allow(clippy::too_many_arguments)]
pub async fn orphans(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    lane: i64,
    lease_ms: u64,
    count: usize,
    me: &str,
    running: impl Fn(&str) -> bool,
) -> Result<Vec<Orphan>, StoreError> {
    let reply: redis::RedisResult<Vec<(String, String, u64, u64)>> = redis::cmd("XPENDING")
        .arg(keys.lane(queue, lane))
        .arg(GROUP)
        .arg("IDLE")
        .arg(lease_ms)
        .arg("-")
        .arg("+")
        .arg(count)
        .query_async(conn)
        .await;
    let pending = match reply {
        Ok(p) => p,
        // A lane nobody has claimed from yet has no group, so nothing pending.
        Err(e) if e.code() == Some("NOGROUP") => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut found = Vec::new();
    for (id, owner, _idle, _deliveries) in pending {
        let abandoned = if owner == me {
            !running(&id)
        } else {
            let alive: bool = conn.exists(keys.alive(&owner)).await?;
            !alive
        };
        if abandoned {
            found.push(Orphan { id, owner });
        }
    }
    Ok(found)
}

/// Takes over an orphan; `None` when another worker got it first or it is gone.
pub async fn take_over(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    lane: i64,
    consumer: &str,
    lease_ms: u64,
    orphan: &Orphan,
) -> Result<Option<Entry>, StoreError> {
    let reply: redis::streams::StreamClaimReply = conn
        .xclaim(
            keys.lane(queue, lane),
            GROUP,
            consumer,
            lease_ms,
            &[&orphan.id],
        )
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .next()
        .map(|id| Entry::from_stream(queue, lane, id)))
}

#[cfg(test)]
mod tests {
    use super::span;

    #[test]
    fn the_span_compares_ids_as_numbers() {
        let ids: Vec<String> = ["9-1", "10-0", "9-10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(span(&ids), ("9-1", "10-0"));
    }
}
