//! `dockhand logs <id> [--follow]`: the stored lines, then (with `--follow`) the
//! live ones until the job ends.
//!
//! Nothing is missed or doubled: we subscribe before reading the stored stream, so
//! every line is either stored before the read or published after the subscription,
//! and `seq` (gap-free per job) drops what both paths deliver. The worker stores and
//! publishes every line before it writes the job's terminal state, and Redis
//! delivers one connection's messages in order, so once the terminal event arrives
//! no line is still to come.

use super::{connect, job_hash, CliResult, Failure};
use crate::backoff::Backoff;
use crate::config::Settings;
use crate::queue::Keys;
use crate::store::{Conn, Store, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt;
use std::time::Duration;

pub async fn run(settings: &Settings, id: &str, follow: bool, json: bool) -> CliResult {
    if !crate::job::is_valid_job_id(id) {
        return Err(Failure::usage(format!("{id:?} is not a job id")));
    }
    let keys = Keys::new(&settings.redis.prefix);
    let (store, mut conn) = connect(settings).await?;
    let mut printer = Printer {
        json,
        last_seq: 0,
        last_entry: "-".to_string(),
        id: id.to_string(),
    };

    if !follow {
        printer.print_stored(&mut conn, &keys).await?;
        if printer.last_seq == 0 && job_hash(&mut conn, &keys.job(id)).await?.is_empty() {
            return Err(Failure::failed(format!(
                "job {id} not found: no worker has recorded it (a finished job's log expires \
                 after jobs.retention_seconds); `dockhand status {id}` also finds one still waiting in its queue"
            )));
        }
        return Ok(());
    }

    // Redis may restart while we follow: reconnect, and go on after the last
    // line printed (the stored stream, then live lines, joined on `seq` as above).
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut said = false;
    loop {
        match follow_until_done(&store, &keys, &mut printer).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_connection() => {
                if !said {
                    eprintln!(
                        "dockhand: lost Redis while following job {id} ({}); reconnecting",
                        crate::telemetry::error_chain(&e)
                    );
                    said = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Follows the job's log until it ends (`Ok`), or until the connection is lost
/// (an error for which `is_connection` holds).
async fn follow_until_done(
    store: &Store,
    keys: &Keys,
    printer: &mut Printer,
) -> Result<(), StoreError> {
    let id = printer.id.clone();
    let mut conn = store.conn().await?;
    let mut pubsub = store.pubsub().await?;
    pubsub.subscribe(keys.log_channel(&id)).await?;
    pubsub.subscribe(keys.events_channel()).await?;
    printer.print_stored(&mut conn, keys).await?;
    let hash = job_hash(&mut conn, &keys.job(&id)).await?;
    if is_terminal(hash.get("status").map(String::as_str)) {
        return printer.print_stored(&mut conn, keys).await;
    }
    if hash.is_empty() && printer.last_seq == 0 {
        eprintln!("dockhand: waiting for job {id} to be picked up by a worker");
    }
    let log_channel = keys.log_channel(&id);
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let payload: String = msg.get_payload().unwrap_or_default();
        if msg.get_channel_name() == log_channel {
            let Ok(line) = serde_json::from_str::<serde_json::Value>(&payload) else {
                continue;
            };
            let seq = line["seq"].as_u64().unwrap_or(0);
            if seq > printer.last_seq + 1 {
                // A gap can only mean lines stored before we subscribed: fetch them.
                printer.print_stored(&mut conn, keys).await?;
            }
            if seq > printer.last_seq {
                printer.print(&line, &payload);
                printer.last_seq = seq;
            }
            continue;
        }
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&payload) else {
            continue;
        };
        let ends = matches!(
            event["type"].as_str(),
            Some("job.completed" | "job.aborted")
        );
        if ends && event["data"]["id"].as_str() == Some(id.as_str()) {
            return printer.print_stored(&mut conn, keys).await;
        }
    }
    Err(StoreError::Redis(redis::RedisError::from(
        std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the pub/sub connection was closed",
        ),
    )))
}

/// The status a finished job ended with, read after following its log.
pub async fn final_status(settings: &Settings, id: &str) -> Result<String, Failure> {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    Ok(job_hash(&mut conn, &keys.job(id))
        .await?
        .remove("status")
        .unwrap_or_default())
}

fn is_terminal(status: Option<&str>) -> bool {
    matches!(status, Some("completed" | "aborted"))
}

struct Printer {
    json: bool,
    id: String,
    last_seq: u64,
    /// The stream id after which stored lines have not been read yet.
    last_entry: String,
}

impl Printer {
    /// Prints stored lines not printed yet, in pages.
    async fn print_stored(&mut self, conn: &mut Conn, keys: &Keys) -> Result<(), StoreError> {
        let key = keys.log(&self.id);
        loop {
            let start = if self.last_entry == "-" {
                "-".to_string()
            } else {
                format!("({}", self.last_entry)
            };
            let page: redis::streams::StreamRangeReply =
                conn.xrange_count(&key, start, "+", 1000).await?;
            if page.ids.is_empty() {
                return Ok(());
            }
            for entry in &page.ids {
                let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
                let seq: u64 = field("seq").parse().unwrap_or(0);
                self.last_entry = entry.id.clone();
                if seq <= self.last_seq {
                    continue;
                }
                let line = serde_json::json!({
                    "job": self.id, "seq": seq, "stream": field("stream"), "ts": field("ts"), "line": field("line"),
                });
                let raw = line.to_string();
                self.print(&line, &raw);
                self.last_seq = seq;
            }
        }
    }

    fn print(&self, line: &serde_json::Value, raw: &str) {
        if self.json {
            outln!("{raw}");
            return;
        }
        let text = line["line"].as_str().unwrap_or_default();
        match line["stream"].as_str() {
            Some("stderr") => eprintln!("{text}"),
            Some("system") => eprintln!("[dockhand] {text}"),
            _ => outln!("{text}"),
        }
    }
}
