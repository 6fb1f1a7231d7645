//! Running a job again later: retries, delays, and jobs handed back by a draining
//! worker.
//!
//! A job runs again through a new stream entry that carries a one-time `token`; the
//! job hash holds the same token as `requeue_token`, which is what lets the new entry
//! take over the job instead of being refused as a duplicate. Entries due later wait
//! in the sorted set `dockhand:{<q>}:scheduled` (score: due time in ms); one Lua
//! script moves due ones to the stream (`XADD` + `ZREM` in one step, nothing lost or
//! doubled).

use super::Keys;
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use std::sync::LazyLock;

/// A fresh, unguessable requeue token.
pub fn new_token() -> String {
    ulid::Ulid::new().to_string()
}

/// Adds a new entry for the job now, in the lane of its `priority`.
pub async fn requeue(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    priority: i64,
    spec: &[u8],
    token: &str,
) -> Result<String, StoreError> {
    let id: String = conn
        .xadd(
            keys.lane(queue, priority),
            "*",
            &[("job", spec), ("token", token.as_bytes())],
        )
        .await?;
    Ok(id)
}

/// Schedules a new entry for the job at `due_ms` (milliseconds since the epoch).
pub async fn schedule(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    spec: &[u8],
    token: &str,
    due_ms: i64,
) -> Result<(), StoreError> {
    let member =
        serde_json::json!({ "job": String::from_utf8_lossy(spec), "token": token }).to_string();
    let _: i64 = conn.zadd(keys.scheduled(queue), member, due_ms).await?;
    Ok(())
}

/// KEYS[1] scheduled set, then the 19 lanes (highest first). ARGV: now (ms), max.
static MOVE_DUE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{}{}",
        super::lanes::LUA_LANE_OF,
        r"
        local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
        for _, member in ipairs(due) do
            local ok, entry = pcall(cjson.decode, member)
            if ok and type(entry) == 'table' and entry.job and entry.token then
                redis.call('XADD', lane_of(entry.job, 2), '*', 'job', entry.job, 'token', entry.token)
            end
            redis.call('ZREM', KEYS[1], member)
        end
        return #due
        "
    ))
});

/// Moves up to `max` due entries into the queue's lanes; returns how many.
pub async fn move_due(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    now_ms: i64,
    max: usize,
) -> Result<usize, StoreError> {
    let mut inv = MOVE_DUE.key(keys.scheduled(queue));
    for (_, lane) in super::lanes::all(keys, queue) {
        inv.key(lane);
    }
    Ok(inv.arg(now_ms).arg(max).invoke_async(conn).await?)
}
