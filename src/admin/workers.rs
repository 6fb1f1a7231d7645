//! The worker processes that announced themselves (`dockhand:workers`), and
//! whether each one's lease key is still alive.
//!
//! Invariant: a worker is alive while its lease key exists; a gone one stays
//! listed (as `alive: false`) until another worker takes over its jobs.

use super::AdminError;
use crate::queue::Keys;
use crate::store::Conn;
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::BTreeMap;

/// Each worker process as it described itself in its heartbeat (queues,
/// concurrency, running jobs, Docker's state, start time), with `consumer` and
/// `alive` added; in consumer name order.
pub async fn list(conn: &mut Conn, keys: &Keys) -> Result<Vec<serde_json::Value>, AdminError> {
    let workers: BTreeMap<String, String> = conn.hgetall(keys.workers()).await?;
    if workers.is_empty() {
        // An empty pipeline is refused by the client ("empty command").
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for consumer in workers.keys() {
        pipe.exists(keys.alive(consumer));
    }
    let alive: Vec<bool> = pipe.query_async(&mut **conn).await?;
    Ok(workers
        .into_iter()
        .zip(alive)
        .map(|((consumer, info), alive)| {
            let mut v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
            if !v.is_object() {
                v = serde_json::json!({});
            }
            v["consumer"] = consumer.into();
            v["alive"] = alive.into();
            v
        })
        .collect())
}
