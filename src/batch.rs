//! Batches: jobs naming the same `batch` are counted as they end, and when the
//! last one has ended one `batch.completed` event (and webhook) says how they
//! ended.
//!
//! Keys (see `queue::Keys`):
//! - `<prefix>:batch:{<id>}`: `id`, `created_at`, `size` (from a job's
//!   `batch_size` or `dockhand batch open`), `ended`, `status:<s>`,
//!   `reason:<r>` and `queue:<q>` counts, and once complete `completed_at` and
//!   `event` (the `batch.completed` body).
//! - `<prefix>:batch:{<id>}:ended`: the jobs counted (`<queue>/<id>`).
//!
//! Both carry the batch id as their hash tag: a batch's jobs may be in any
//! queue, so no step touches a batch's keys and a job's together.
//!
//! Invariants:
//! - A job is counted once, by the step after its terminal write (a set of the
//!   ids counted sits next to the counters, in the same Lua step): a retried job
//!   ends once; a taken-over job, or a terminal write taken again after its
//!   worker died, finds its id counted and changes nothing.
//! - `batch.completed` fires once: the step that finds the batch whole (ended ≥
//!   size) stores its body and publishes it in that step; every later step sees
//!   the stored body and publishes nothing. Its copy in the events stream of each
//!   of the batch's queues is added right after that step (in their own slots):
//!   a worker dying in between leaves the copy out, never the webhooks.
//! - The webhook deliveries of `batch.completed` are made after that step and
//!   before the job's entry is acknowledged, idempotently, by every end step
//!   that finds the batch complete: a worker dying in between leaves the entry
//!   pending, and its redelivery makes them.
//! - Both keys expire `jobs.retention_seconds` after the batch completed.

use crate::queue::Keys;
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

/// Counts one job's end (or only sets the size, for `batch open`), and
/// completes the batch when it is whole.
/// KEYS: 1 batch hash, 2 ended set. ARGV: 1 job (`<queue>/<id>`, '' for none),
/// 2 status, 3 reason, 4 size ('' for none), 5 queue, 6 events channel, 7
/// (unused), 8 now, 9 retention, 10 batch id.
static END: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local batch, ended = KEYS[1], KEYS[2]
        if redis.call('HEXISTS', batch, 'id') == 0 then
            redis.call('HSET', batch, 'id', ARGV[10], 'created_at', ARGV[8], 'ended', 0)
        end
        if ARGV[1] ~= '' and redis.call('SADD', ended, ARGV[1]) == 1 then
            redis.call('HINCRBY', batch, 'ended', 1)
            redis.call('HINCRBY', batch, 'status:' .. ARGV[2], 1)
            if ARGV[3] ~= '' then redis.call('HINCRBY', batch, 'reason:' .. ARGV[3], 1) end
            if ARGV[5] ~= '' then redis.call('HINCRBY', batch, 'queue:' .. ARGV[5], 1) end
        end
        if ARGV[4] ~= '' then
            local had = redis.call('HGET', batch, 'size')
            if not had then
                redis.call('HSET', batch, 'size', ARGV[4])
            elseif had ~= ARGV[4] and ARGV[1] == '' then
                return {'conflict', had}
            end
        end
        local done = redis.call('HGET', batch, 'event')
        if done then return {'completed', done} end
        local size = tonumber(redis.call('HGET', batch, 'size') or '')
        local n = tonumber(redis.call('HGET', batch, 'ended'))
        if not size or n < size then return {'open', ''} end
        local counts, reasons, queues = {completed = 0, aborted = 0}, {}, {}
        local h = redis.call('HGETALL', batch)
        for i = 1, #h, 2 do
            local k, v = h[i], tonumber(h[i + 1])
            if string.sub(k, 1, 7) == 'status:' then counts[string.sub(k, 8)] = v
            elseif string.sub(k, 1, 7) == 'reason:' then reasons[string.sub(k, 8)] = v
            elseif string.sub(k, 1, 6) == 'queue:' then queues[string.sub(k, 7)] = v end
        end
        local body = cjson.encode({type = 'batch.completed', timestamp = ARGV[8], data = {
            id = ARGV[10], size = size, ended = n, counts = counts, reasons = reasons, queues = queues,
            created_at = redis.call('HGET', batch, 'created_at'), completed_at = ARGV[8]}})
        redis.call('HSET', batch, 'event', body, 'completed_at', ARGV[8])
        redis.call('PUBLISH', ARGV[6], body)
        redis.call('EXPIRE', batch, tonumber(ARGV[9]))
        redis.call('EXPIRE', ended, tonumber(ARGV[9]))
        return {'fired', body}
        ",
    )
});

/// What a step found the batch to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counted {
    /// Not whole yet (or its size is not known yet).
    Open,
    /// Whole: the `batch.completed` body. `fired` when this step published it.
    Completed { body: String, fired: bool },
    /// `batch open` gave a size other than the one the batch has.
    Conflict { size: String },
}

/// A job of a batch that ended.
pub struct JobEnd<'a> {
    pub job: &'a str,
    pub queue: &'a str,
    pub status: &'a str,
    pub reason: &'a str,
    /// The job's `batch_size`, if it gives one.
    pub size: Option<u64>,
}

struct Settings {
    events_max_len: usize,
    retention: u64,
}

async fn step(
    conn: &mut Conn,
    keys: &Keys,
    batch: &str,
    end: &JobEnd<'_>,
    s: Settings,
) -> Result<Counted, StoreError> {
    let job = if end.job.is_empty() {
        String::new()
    } else {
        crate::job::JobRef::new(end.queue, end.job).to_string()
    };
    let (kind, value): (String, String) = END
        .key(keys.batch(batch))
        .key(keys.batch_ended(batch))
        .arg(job)
        .arg(end.status)
        .arg(end.reason)
        .arg(end.size.map(|n| n.to_string()).unwrap_or_default())
        .arg(end.queue)
        .arg(keys.events_channel())
        .arg(s.events_max_len)
        .arg(crate::time::now())
        .arg(s.retention)
        .arg(batch)
        .invoke_async(conn)
        .await?;
    if kind == "fired" {
        // The stream copy, in each of the batch's queues (see the invariants).
        let mut pipe = redis::pipe();
        for queue in queues_of(&value) {
            pipe.xadd_maxlen(
                keys.events(&queue),
                redis::streams::StreamMaxlen::Approx(s.events_max_len),
                "*",
                &[
                    ("type", "batch.completed"),
                    ("job", ""),
                    ("batch", batch),
                    ("event", value.as_str()),
                ],
            )
            .ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(match kind.as_str() {
        "fired" => Counted::Completed {
            body: value,
            fired: true,
        },
        "completed" => Counted::Completed {
            body: value,
            fired: false,
        },
        "conflict" => Counted::Conflict { size: value },
        _ => Counted::Open,
    })
}

/// Counts a job's end in its batch (idempotent per job id), completing the
/// batch when it is whole; then makes the `batch.completed` webhook deliveries
/// if the batch is complete (idempotent too).
pub async fn job_ended(
    conn: &mut Conn,
    keys: &Keys,
    batch: &str,
    end: &JobEnd<'_>,
    events_max_len: usize,
    retention: u64,
) -> Result<Counted, StoreError> {
    let s = Settings {
        events_max_len,
        retention,
    };
    let counted = step(conn, keys, batch, end, s).await?;
    deliver_if_complete(conn, keys, batch, &counted, retention).await?;
    Ok(counted)
}

/// Gives the batch its size (`dockhand batch open <id> <n>`), completing it if
/// that many of its jobs ended already.
pub async fn open(
    conn: &mut Conn,
    keys: &Keys,
    batch: &str,
    size: u64,
    events_max_len: usize,
    retention: u64,
) -> Result<Counted, StoreError> {
    let end = JobEnd {
        job: "",
        queue: "",
        status: "",
        reason: "",
        size: Some(size),
    };
    let s = Settings {
        events_max_len,
        retention,
    };
    let counted = step(conn, keys, batch, &end, s).await?;
    deliver_if_complete(conn, keys, batch, &counted, retention).await?;
    Ok(counted)
}

async fn deliver_if_complete(
    conn: &mut Conn,
    keys: &Keys,
    batch: &str,
    counted: &Counted,
    retention: u64,
) -> Result<(), StoreError> {
    let Counted::Completed { body, .. } = counted else {
        return Ok(());
    };
    let queues = queues_of(body);
    crate::webhook::outbox::enqueue_for_batch(conn, keys, batch, body, &queues, retention).await?;
    Ok(())
}

/// The queues a `batch.completed` body counts jobs in.
fn queues_of(body: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["data"]["queues"]
                .as_object()
                .map(|q| q.keys().cloned().collect())
        })
        .unwrap_or_default()
}

/// A batch as `dockhand batch status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatchState {
    pub id: String,
    pub size: Option<u64>,
    pub ended: u64,
    pub counts: BTreeMap<String, u64>,
    pub reasons: BTreeMap<String, u64>,
    pub created_at: Option<String>,
    pub completed_at: Option<String>,
}

/// The batch `id`, or `None` when Redis knows nothing of it (yet, or any more).
pub async fn state(
    conn: &mut Conn,
    keys: &Keys,
    id: &str,
) -> Result<Option<BatchState>, StoreError> {
    let h: HashMap<String, String> = conn.hgetall(keys.batch(id)).await?;
    if h.is_empty() {
        return Ok(None);
    }
    let num = |v: &String| v.parse::<u64>().unwrap_or(0);
    let with = |prefix: &str| -> BTreeMap<String, u64> {
        h.iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), num(v))))
            .collect()
    };
    let mut counts = with("status:");
    counts.entry("completed".into()).or_insert(0);
    counts.entry("aborted".into()).or_insert(0);
    Ok(Some(BatchState {
        id: id.to_string(),
        size: h.get("size").and_then(|v| v.parse().ok()),
        ended: h.get("ended").map(num).unwrap_or(0),
        counts,
        reasons: with("reason:"),
        created_at: h.get("created_at").cloned(),
        completed_at: h.get("completed_at").cloned(),
    }))
}

/// The batch a job's entry names, and the size it gives, read from the entry as
/// submitted (any JSON that has them; validation checked them when the job ran).
pub fn of_entry(raw: &[u8]) -> Option<(String, Option<u64>)> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let batch = v.get("batch")?.as_str()?;
    crate::job::is_valid_job_id(batch).then(|| {
        (
            batch.to_string(),
            v.get("batch_size")
                .and_then(|n| n.as_u64())
                .filter(|n| *n > 0),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_is_read_from_the_entry() {
        assert_eq!(
            of_entry(br#"{"batch":"b1","batch_size":3}"#),
            Some(("b1".into(), Some(3)))
        );
        assert_eq!(of_entry(br#"{"batch":"b1"}"#), Some(("b1".into(), None)));
        assert_eq!(of_entry(br#"{"batch":"a:b"}"#), None);
        assert_eq!(of_entry(b"not json"), None);
    }
}
