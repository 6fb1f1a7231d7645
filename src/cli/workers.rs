//! `dockhand workers`: the worker processes that announced themselves, and whether
//! their lease is still alive.

use super::{connect, CliResult};
use crate::config::Settings;
use crate::queue::Keys;
use deadpool_redis::redis::AsyncCommands;
use std::collections::BTreeMap;

/// With `json`, one JSON object per worker process and line: what it announced
/// in its heartbeat, with `consumer` and `alive` added.
pub async fn run(settings: &Settings, json: bool) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let workers: BTreeMap<String, String> = conn
        .hgetall(keys.workers())
        .await
        .map_err(crate::store::StoreError::from)?;
    if json {
        for (consumer, info) in workers {
            let alive: bool = conn
                .exists(keys.alive(&consumer))
                .await
                .map_err(crate::store::StoreError::from)?;
            let mut v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
            if !v.is_object() {
                v = serde_json::json!({});
            }
            v["consumer"] = consumer.into();
            v["alive"] = alive.into();
            outln!("{v}");
        }
        return Ok(());
    }
    outln!(
        "{:<48} {:<6} {:<11} {:>7} {:<24} {:<24}",
        "CONSUMER",
        "ALIVE",
        "DOCKER",
        "RUNNING",
        "QUEUES",
        "STARTED"
    );
    for (consumer, info) in workers {
        let alive: bool = conn
            .exists(keys.alive(&consumer))
            .await
            .map_err(crate::store::StoreError::from)?;
        let v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        let queues = v["queues"]
            .as_array()
            .map(|q| {
                q.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let running = v["running"].as_array().map(Vec::len).unwrap_or(0);
        outln!(
            "{consumer:<48} {:<6} {:<11} {:>7} {queues:<24} {:<24}",
            if alive { "yes" } else { "gone" },
            v["docker"].as_str().unwrap_or("?"),
            format!("{running}/{}", v["concurrency"].as_u64().unwrap_or(0)),
            v["started_at"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}
