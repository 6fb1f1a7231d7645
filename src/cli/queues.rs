//! `dockhand queues`: every queue found in Redis, with what waits and runs in it,
//! what is scheduled for later, and how many live workers serve it.

use super::lookup::{live_workers, serving};
use super::{connect, CliResult};
use crate::config::Settings;
use crate::queue::{Keys, GROUP};
use deadpool_redis::redis::{self, AsyncCommands};

/// With `json`, one JSON object per queue and line (`queue`, `waiting`, `running`,
/// `scheduled`, `inbox`, `dead`, `workers`), for scripts.
pub async fn run(settings: &Settings, json: bool) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let queues = super::lookup::queues(&mut conn, &keys, settings).await?;
    let workers = live_workers(&mut conn, &keys).await?;
    if !json {
        outln!(
            "{:<24} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}",
            "QUEUE",
            "WAITING",
            "RUNNING",
            "SCHEDULED",
            "INBOX",
            "DEAD",
            "WORKERS"
        );
    }
    let mut unserved = Vec::new();
    for q in queues {
        let (stream_len, scheduled, inbox, dead): (u64, u64, u64, u64) = redis::pipe()
            .xlen(keys.jobs(&q))
            .zcard(keys.scheduled(&q))
            .llen(keys.inbox(&q))
            .xlen(keys.dead(&q))
            .query_async(&mut *conn)
            .await
            .map_err(crate::store::StoreError::from)?;
        // Finished entries are deleted, so the stream holds waiting plus running
        // (delivered, not yet acknowledged) entries.
        let running = pending(&mut conn, &keys.jobs(&q)).await;
        let waiting = stream_len.saturating_sub(running);
        let served = serving(&workers, &q);
        let workers_col = if served == 0 {
            "none".to_string()
        } else {
            served.to_string()
        };
        if json {
            let row = serde_json::json!({
                "queue": q, "waiting": waiting, "running": running, "scheduled": scheduled,
                "inbox": inbox, "dead": dead, "workers": served,
            });
            outln!("{row}");
        } else {
            outln!(
                "{q:<24} {waiting:>8} {running:>8} {scheduled:>9} {inbox:>8} {dead:>8} {workers_col:>8}"
            );
        }
        if served == 0 && waiting + scheduled + inbox > 0 {
            unserved.push(q);
        }
    }
    if !unserved.is_empty() {
        eprintln!(
            "dockhand: no live worker serves {}: their jobs wait until one does (`dockhand worker --queue <name>`)",
            unserved.join(", ")
        );
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
