//! `dockhand status <id>`: the job hash, readable, or as JSON with `--json`.

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
    let hash = job_hash(&mut conn, &keys.job(id)).await?;
    if hash.is_empty() {
        return Err(Failure::failed(format!(
            "job {id} not found (not yet picked up by a worker, or expired after jobs.retention_seconds)"
        )));
    }
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = hash
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        outln!("{}", serde_json::Value::Object(obj));
        return Ok(());
    }
    for field in ORDER {
        if let Some(value) = hash.get(*field).filter(|v| !v.is_empty() && *v != "[]") {
            outln!("{field:<13} {value}");
        }
    }
    Ok(())
}
