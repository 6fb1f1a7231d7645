//! Claiming and releasing entries: the consumer group, the inbox mover, reads, acks.

use super::{Entry, Keys, GROUP};
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{
    self, streams::StreamReadOptions, streams::StreamReadReply, AsyncCommands,
};
use std::sync::LazyLock;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the consumer group is missing (NOGROUP)")]
    NoGroup,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<redis::RedisError> for ReadError {
    fn from(e: redis::RedisError) -> Self {
        if e.code() == Some("NOGROUP") {
            ReadError::NoGroup
        } else {
            ReadError::Store(StoreError::Redis(e))
        }
    }
}

/// Creates the group on each queue's stream if it is missing (idempotent).
pub async fn ensure_groups(
    conn: &mut Conn,
    keys: &Keys,
    queues: &[String],
) -> Result<(), StoreError> {
    for q in queues {
        let created: Result<(), redis::RedisError> =
            conn.xgroup_create_mkstream(keys.jobs(q), GROUP, "0").await;
        match created {
            Ok(()) => tracing::info!(queue = %q, "consumer group created"),
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Atomically moves up to `max` entries from the inbox list to the job streams,
/// oldest first, each to the lane of its spec's priority. `RPOP` and `XADD` run in
/// one script, so nothing is lost or doubled. KEYS: inbox, the 19 lanes (highest
/// first). ARGV: max.
static MOVE_INBOX: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{}{}",
        super::lanes::LUA_LANE_OF,
        r"
        local moved = 0
        for _ = 1, tonumber(ARGV[1]) do
            local job = redis.call('RPOP', KEYS[1])
            if not job then break end
            redis.call('XADD', lane_of(job, 2), '*', 'job', job)
            moved = moved + 1
        end
        return moved
        "
    ))
});

pub async fn move_inbox(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    max: usize,
) -> Result<usize, StoreError> {
    let mut inv = MOVE_INBOX.key(keys.inbox(queue));
    for (_, lane) in super::lanes::all(keys, queue) {
        inv.key(lane);
    }
    let moved: usize = inv.arg(max).invoke_async(conn).await?;
    Ok(moved)
}

/// Blocks until the inbox holds something, or `block_ms` passes, without taking
/// anything out: `BLMOVE list list RIGHT RIGHT` pops the oldest entry and puts it
/// straight back in the same place, atomically. It only serves as a wake-up.
pub async fn wait_inbox(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    block_ms: u64,
) -> Result<bool, StoreError> {
    let inbox = keys.inbox(queue);
    let seconds = block_ms as f64 / 1000.0;
    let woke: Option<Vec<u8>> = redis::cmd("BLMOVE")
        .arg(&inbox)
        .arg(&inbox)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(seconds)
        .query_async(conn)
        .await?;
    Ok(woke.is_some())
}

/// Reads new entries for `consumer` from the given queues: at most one per queue,
/// blocking up to `block_ms` when there is none.
pub async fn read(
    conn: &mut Conn,
    keys: &Keys,
    queues: &[String],
    consumer: &str,
    block_ms: u64,
) -> Result<Vec<Entry>, ReadError> {
    let streams: Vec<String> = queues.iter().map(|q| keys.jobs(q)).collect();
    let ids: Vec<&str> = vec![">"; streams.len()];
    let opts = StreamReadOptions::default()
        .group(GROUP, consumer)
        .count(1)
        .block(block_ms as usize);
    let reply: Option<StreamReadReply> = conn.xread_options(&streams, &ids, &opts).await?;
    let mut entries = Vec::new();
    for stream in reply.map(|r| r.keys).unwrap_or_default() {
        let Some(queue) = keys.queue_of(&stream.key) else {
            continue;
        };
        for id in stream.ids {
            entries.push(Entry::from_stream(queue, 0, id));
        }
    }
    Ok(entries)
}

/// Which of `queues` are paused (named in the set [`Keys::paused`]): a worker
/// claims nothing from them until they are resumed.
pub async fn paused(
    conn: &mut Conn,
    keys: &Keys,
    queues: &[String],
) -> Result<std::collections::BTreeSet<String>, StoreError> {
    let all: std::collections::BTreeSet<String> = conn.smembers(keys.paused()).await?;
    Ok(queues
        .iter()
        .filter(|q| all.contains(*q))
        .cloned()
        .collect())
}

/// Acknowledges and deletes an entry, if `consumer` still holds it: a worker that
/// lost its lease cannot acknowledge the entry from under its new owner.
/// KEYS[1] stream. ARGV: group, entry, consumer.
static ACK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
        if p[1] and p[1][2] ~= ARGV[3] then return 0 end
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        redis.call('XDEL', KEYS[1], ARGV[2])
        return 1
        ",
    )
});

/// Returns false when another consumer holds the entry now.
pub async fn ack(
    conn: &mut Conn,
    keys: &Keys,
    entry: &Entry,
    consumer: &str,
) -> Result<bool, StoreError> {
    let done: i64 = ACK
        .key(entry.stream(keys))
        .arg(GROUP)
        .arg(&entry.id)
        .arg(consumer)
        .invoke_async(conn)
        .await?;
    Ok(done == 1)
}
