//! `dockhand queues`: every queue found in Redis, with what waits and runs in it,
//! what is scheduled for later, how many live workers serve it, and whether it is
//! paused ([`admin::queues`]); `dockhand queue pause|resume <q>`.

use super::{connect, CliResult};
use crate::admin;
use crate::config::Settings;
use crate::queue::Keys;

/// With `json`, one JSON object per queue and line (`queue`, `waiting`, `running`,
/// `scheduled`, `inbox`, `dead`, `oldest_waiting_seconds`, `finished_last_minute`,
/// `workers`, `paused`), for scripts.
pub async fn run(settings: &Settings, json: bool) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let stats = admin::queues::stats(&mut conn, &keys, settings).await?;
    if !json {
        outln!(
            "{:<24} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>10} {:>8}",
            "QUEUE",
            "WAITING",
            "RUNNING",
            "SCHEDULED",
            "INBOX",
            "DEAD",
            "WORKERS",
            "DONE/MIN",
            "STATE"
        );
    }
    let mut unserved = Vec::new();
    for s in stats {
        if json {
            outln!("{}", serde_json::to_value(&s).unwrap_or_default());
        } else {
            let workers = if s.workers == 0 {
                "none".to_string()
            } else {
                s.workers.to_string()
            };
            outln!(
                "{:<24} {:>8} {:>8} {:>9} {:>8} {:>8} {workers:>8} {:>10} {:>8}",
                s.queue,
                s.waiting,
                s.running,
                s.scheduled,
                s.inbox,
                s.dead,
                s.finished_last_minute,
                if s.paused { "paused" } else { "active" }
            );
        }
        if s.workers == 0 && s.waiting + s.scheduled + s.inbox > 0 {
            unserved.push(s.queue);
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

/// `dockhand queue pause|resume <q>`.
pub async fn set_paused(settings: &Settings, queue: &str, pause: bool) -> CliResult {
    admin::queue_name(queue)?;
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let changed = admin::queues::set_paused(&mut conn, &keys, queue, pause).await?;
    let (now, already) = if pause {
        (
            "paused: workers claim nothing more from it (running jobs finish)",
            "was paused already",
        )
    } else {
        ("resumed: workers claim from it again", "was not paused")
    };
    if changed {
        outln!("queue {queue} {now}");
    } else {
        outln!("queue {queue} {already}");
    }
    Ok(())
}
