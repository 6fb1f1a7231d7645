//! What the commands look up beside a job's hash: the queues Redis holds, the
//! worker processes alive now, and a job waiting in a queue that no worker has
//! claimed yet (a job has a hash only once a worker has read its entry).

use crate::config::Settings;
use crate::queue::Keys;
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::BTreeSet;

/// Entries read per round trip when searching a queue.
const PAGE: usize = 100;

/// Keys looked at per `SCAN` call when finding queues: with the default of 10,
/// 100,000 finished jobs (each a few keys) cost tens of thousands of round trips.
const SCAN_COUNT: usize = 1000;

/// Every queue the settings name or Redis holds (a job stream or a priority lane,
/// an inbox or a scheduled set), in name order. One pass over the keys that carry
/// a queue's hash tag, a thousand at a time.
pub async fn queues(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
) -> Result<BTreeSet<String>, StoreError> {
    let mut queues: BTreeSet<String> = settings.worker.queues.iter().cloned().collect();
    let found = conn
        .scan_keys(&keys.queue_keys_pattern(), SCAN_COUNT)
        .await?;
    for key in &found {
        let Some(q) = keys.queue_of(key) else {
            continue;
        };
        let kind = &key[key.find("}:").map(|i| i + 2).unwrap_or(key.len())..];
        let lane = kind
            .strip_prefix("jobs:p")
            .is_some_and(|p| p.parse::<i64>().is_ok());
        if matches!(kind, "jobs" | "inbox" | "scheduled") || lane {
            queues.insert(q.to_string());
        }
    }
    Ok(queues)
}

/// The queues each live worker process serves (its lease key has not expired).
pub async fn live_workers(conn: &mut Conn, keys: &Keys) -> Result<Vec<Vec<String>>, StoreError> {
    let workers: Vec<(String, String)> = conn.hgetall(keys.workers()).await?;
    let mut live = Vec::new();
    for (consumer, info) in workers {
        let alive: bool = conn.exists(keys.alive(&consumer)).await?;
        if !alive {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        live.push(
            v["queues"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|q| q.as_str().map(str::to_string))
                .collect(),
        );
    }
    Ok(live)
}

/// How many of `workers` serve `queue`.
pub fn serving(workers: &[Vec<String>], queue: &str) -> usize {
    workers
        .iter()
        .filter(|qs| qs.iter().any(|q| q == queue))
        .count()
}

/// What to tell someone waiting on `queue` when no live worker serves it.
pub async fn unserved_hint(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
) -> Result<Option<String>, StoreError> {
    let workers = live_workers(conn, keys).await?;
    Ok((serving(&workers, queue) == 0).then(|| {
        format!(
            "no live worker serves queue {queue:?}: the job waits until one does \
             (`dockhand worker --queue {queue}`; `dockhand workers` lists them)"
        )
    }))
}

/// The queue in which job `id`'s hash has `field` (`status`: a worker recorded
/// it; `cancel_requested`: a cancel request waits for it): `queue` itself when
/// given, else the first such queue of [`queues`], in name order (a job's keys
/// carry its queue's hash tag, so its queue must be known to read them).
pub async fn queue_holding(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    queue: Option<&str>,
    id: &str,
    field: &str,
) -> Result<Option<String>, StoreError> {
    let candidates: Vec<String> = match queue {
        Some(q) => vec![q.to_string()],
        None => queues(conn, keys, settings).await?.into_iter().collect(),
    };
    let mut pipe = redis::pipe();
    for q in &candidates {
        pipe.hexists(keys.job(q, id), field);
    }
    let found: Vec<bool> = pipe.query_async(&mut **conn).await?;
    Ok(candidates
        .into_iter()
        .zip(found)
        .find_map(|(q, has)| has.then_some(q)))
}

/// The job named by `queue` (when given) and `id`: `<queue>/<id>` as it is; a
/// bare id in the queue that has recorded it, or else holds it unclaimed.
/// `None` when no queue has it.
pub async fn locate(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    queue: Option<&str>,
    id: &str,
) -> Result<Option<crate::job::JobRef>, StoreError> {
    if let Some(q) = queue {
        return Ok(Some(crate::job::JobRef::new(q, id)));
    }
    let found = match queue_holding(conn, keys, settings, None, id, "status").await? {
        Some(q) => Some(q),
        None => unclaimed(conn, keys, settings, None, id)
            .await?
            .map(|u| u.queue),
    };
    Ok(found.map(|q| crate::job::JobRef::new(&q, id)))
}

/// A job found in a queue before any worker claimed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unclaimed {
    pub queue: String,
    /// Its stream entry; `None` while it is still in the queue's inbox list.
    pub entry: Option<String>,
}

/// The entry of job `id` in `queue`'s (or else some queue's) stream or inbox, if one is there. The id
/// of an entry is read as the worker reads it: the spec's `id` when valid, else the
/// stream entry id. Reads every waiting entry, a page at a time: only for a job
/// without a hash, which is rare.
pub async fn unclaimed(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    queue: Option<&str>,
    id: &str,
) -> Result<Option<Unclaimed>, StoreError> {
    let candidates: Vec<String> = match queue {
        Some(q) => vec![q.to_string()],
        None => queues(conn, keys, settings).await?.into_iter().collect(),
    };
    for queue in candidates {
        let lanes = crate::queue::lanes::present(conn, keys, &queue).await?;
        for stream in std::iter::once(keys.jobs(&queue)).chain(lanes.into_iter().map(|(_, k)| k)) {
            if let Some(entry) = in_stream(conn, &stream, id).await? {
                return Ok(Some(Unclaimed {
                    queue,
                    entry: Some(entry),
                }));
            }
        }
        if in_inbox(conn, &keys.inbox(&queue), id).await? {
            return Ok(Some(Unclaimed { queue, entry: None }));
        }
    }
    Ok(None)
}

async fn in_stream(conn: &mut Conn, key: &str, id: &str) -> Result<Option<String>, StoreError> {
    let mut start = "-".to_string();
    loop {
        let page: redis::streams::StreamRangeReply =
            conn.xrange_count(key, &start, "+", PAGE).await?;
        for e in &page.ids {
            let raw: Option<Vec<u8>> = e.get("job");
            let job_id = raw.as_deref().and_then(crate::job::requested_id);
            if job_id.as_deref().unwrap_or(&e.id) == id {
                return Ok(Some(e.id.clone()));
            }
        }
        match page.ids.last() {
            Some(last) if page.ids.len() == PAGE => start = format!("({}", last.id),
            _ => return Ok(None),
        }
    }
}

async fn in_inbox(conn: &mut Conn, key: &str, id: &str) -> Result<bool, StoreError> {
    let mut from = 0isize;
    loop {
        let page: Vec<Vec<u8>> = conn.lrange(key, from, from + PAGE as isize - 1).await?;
        if page
            .iter()
            .any(|raw| crate::job::requested_id(raw).as_deref() == Some(id))
        {
            return Ok(true);
        }
        if page.len() < PAGE {
            return Ok(false);
        }
        from += PAGE as isize;
    }
}
