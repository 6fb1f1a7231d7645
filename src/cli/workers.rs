//! `dockhand workers`: the worker processes that announced themselves, and
//! whether their lease is still alive ([`admin::workers`]).

use super::{connect, CliResult};
use crate::admin;
use crate::config::Settings;
use crate::queue::Keys;

/// With `json`, one JSON object per worker process and line: what it announced
/// in its heartbeat, with `consumer` and `alive` added.
pub async fn run(settings: &Settings, json: bool) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let workers = admin::workers::list(&mut conn, &keys).await?;
    if json {
        for v in workers {
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
    for v in workers {
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
            "{:<48} {:<6} {:<11} {:>7} {queues:<24} {:<24}",
            v["consumer"].as_str().unwrap_or(""),
            if v["alive"] == true { "yes" } else { "gone" },
            v["docker"].as_str().unwrap_or("?"),
            format!("{running}/{}", v["concurrency"].as_u64().unwrap_or(0)),
            v["started_at"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}
