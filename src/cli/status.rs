//! `dockhand status <id>`: the job hash, readable, or as JSON with `--json`; for a
//! job still waiting in its queue unread by any worker, what the queue says.

use super::lookup::{self, Unclaimed};
use super::{connect, job_hash, CliResult, Failure};
use crate::config::Settings;
use crate::queue::Keys;

/// Fields in the order a person reads them; the raw spec is shown only with --json.
const ORDER: &[&str] = &[
    "id",
    "queue",
    "status",
    "reason",
    "error",
    "exit_code",
    "attempt",
    "created_at",
    "started_at",
    "finished_at",
    "worker",
    "image",
    "image_id",
    "result_text",
    "result_data",
    "files",
    "files_dropped",
    "metadata",
    "deliveries",
];

pub async fn run(settings: &Settings, id: &str, json: bool) -> CliResult {
    if !crate::job::is_valid_job_id(id) {
        return Err(Failure::usage(format!("{id:?} is not a job id")));
    }
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let mut hash = job_hash(&mut conn, &keys.job(id)).await?;
    // A hash without `status` is at most a cancel request waiting for the job:
    // no worker has read the job yet, so look for it in the queues.
    if !hash.contains_key("status") {
        if let Some(found) = lookup::unclaimed(&mut conn, &keys, settings, id).await? {
            let cancel = hash.contains_key("cancel_requested");
            let hint = lookup::unserved_hint(&mut conn, &keys, &found.queue).await?;
            print_unclaimed(id, &found, cancel, json);
            if let Some(hint) = hint {
                eprintln!("dockhand: {hint}");
            }
            return Ok(());
        }
        // A worker may have claimed it (and even finished it) while we looked.
        hash = job_hash(&mut conn, &keys.job(id)).await?;
    }
    if !hash.contains_key("status") {
        return Err(Failure::failed(format!(
            "job {id} not found: no worker has recorded it and no queue holds it \
             (a finished job's state expires after jobs.retention_seconds)"
        )));
    }
    if json {
        outln!("{}", typed(hash));
        return Ok(());
    }
    for field in ORDER {
        if let Some(value) = hash.get(*field).filter(|v| !v.is_empty() && *v != "[]") {
            outln!("{field:<13} {value}");
        }
    }
    Ok(())
}

/// The job hash as JSON with the types its fields hold: counts and the exit code
/// as numbers, JSON fields (`result_data`, `files`, `files_dropped`, `metadata`)
/// as JSON, an empty field as `null`, the rest as strings.
fn typed(hash: std::collections::HashMap<String, String>) -> serde_json::Value {
    use serde_json::Value;
    const NUMBERS: &[&str] = &["attempt", "exit_code", "deliveries", "docker_retries"];
    const JSON: &[&str] = &["result_data", "files", "files_dropped", "metadata"];
    let obj: serde_json::Map<String, Value> = hash
        .into_iter()
        .map(|(k, v)| {
            let value = if v.is_empty() {
                Value::Null
            } else if NUMBERS.contains(&k.as_str()) {
                v.parse::<i64>()
                    .map(Value::from)
                    .unwrap_or(Value::String(v))
            } else if JSON.contains(&k.as_str()) {
                serde_json::from_str(&v).unwrap_or(Value::String(v))
            } else {
                Value::String(v)
            };
            (k, value)
        })
        .collect();
    Value::Object(obj)
}

/// A job waiting in its queue that no worker has read yet: it has no hash, so
/// only what the queue says is shown (`status` is `queued`, as the hash will say).
fn print_unclaimed(id: &str, found: &Unclaimed, cancel: bool, json: bool) {
    let claimed = match &found.entry {
        Some(_) => "not yet (waiting in the queue's stream)",
        None => "not yet (waiting in the queue's inbox)",
    };
    if json {
        let mut v = serde_json::json!({
            "id": id,
            "queue": found.queue,
            "status": "queued",
            "entry": found.entry.clone().unwrap_or_default(),
            "claimed": false,
        });
        if cancel {
            v["cancel_requested"] = true.into();
        }
        outln!("{v}");
        return;
    }
    outln!("{:<13} {id}", "id");
    outln!("{:<13} {}", "queue", found.queue);
    outln!("{:<13} queued", "status");
    outln!("{:<13} {claimed}", "claimed");
    if let Some(entry) = &found.entry {
        outln!("{:<13} {entry}", "entry");
    }
    if cancel {
        outln!("{:<13} requested: it will not run", "cancel");
    }
}
