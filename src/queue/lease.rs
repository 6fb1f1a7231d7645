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
/// KEYS[1] stream. ARGV: group, consumer, entry ids.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local lost = {}
        for i = 3, #ARGV do
            local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
            if p[1] and p[1][2] == ARGV[2] then
                redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
            else
                table.insert(lost, ARGV[i])
            end
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
    let mut inv = RENEW.key(stream);
    inv.arg(GROUP).arg(consumer);
    for e in entries {
        inv.arg(e);
    }
    Ok(inv.invoke_async(conn).await?)
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
