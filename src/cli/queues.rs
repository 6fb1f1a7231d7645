//! `dockhand queues`: every queue found in Redis, with what waits and runs in it.

use super::{connect, CliResult};
use crate::config::Settings;
use crate::queue::{Keys, GROUP};
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::BTreeSet;

pub async fn run(settings: &Settings) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let mut queues: BTreeSet<String> = settings.worker.queues.iter().cloned().collect();
    for pattern in [keys.jobs_pattern(), keys.inbox_pattern()] {
        let found: Vec<String> = {
            let mut iter = conn
                .scan_match::<_, String>(&pattern)
                .await
                .map_err(crate::store::StoreError::from)?;
            let mut v = Vec::new();
            while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
                v.push(k.map_err(crate::store::StoreError::from)?);
            }
            v
        };
        queues.extend(
            found
                .iter()
                .filter_map(|k| keys.queue_of(k))
                .map(str::to_string),
        );
    }
    outln!(
        "{:<24} {:>8} {:>8} {:>8} {:>8}",
        "QUEUE",
        "WAITING",
        "RUNNING",
        "INBOX",
        "DEAD"
    );
    for q in queues {
        let (stream_len, inbox, dead): (u64, u64, u64) = redis::pipe()
            .xlen(keys.jobs(&q))
            .llen(keys.inbox(&q))
            .xlen(keys.dead(&q))
            .query_async(&mut *conn)
            .await
            .map_err(crate::store::StoreError::from)?;
        // Finished entries are deleted, so the stream holds waiting plus running
        // (delivered, not yet acknowledged) entries.
        let running = pending(&mut conn, &keys.jobs(&q)).await;
        let waiting = stream_len.saturating_sub(running);
        outln!("{q:<24} {waiting:>8} {running:>8} {inbox:>8} {dead:>8}");
    }
    Ok(())
}

async fn pending(conn: &mut crate::store::Conn, stream: &str) -> u64 {
    let reply: redis::RedisResult<redis::streams::StreamPendingReply> =
        conn.xpending(stream, GROUP).await;
    match reply {
        Ok(redis::streams::StreamPendingReply::Data(d)) => d.count as u64,
        _ => 0,
    }
}
