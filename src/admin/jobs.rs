//! One job: its state as typed JSON, cancelling it, running a finished one again,
//! its files, and listings of many.
//!
//! A job is named `<queue>/<id>`, or by its bare id: then its queue is looked
//! for ([`lookup::queue_holding`]), because its keys carry its queue's hash tag.
//!
//! Invariants:
//! - A job no worker has read yet has no hash; it is looked for in the queues
//!   ([`lookup::unclaimed`]) before it is called unknown.
//! - A cancel is written to the job hash first, then announced, so a worker that
//!   misses the announcement still finds it. An id found nowhere is refused with
//!   nothing written: a request left under a mistyped id would cancel a later job.
//! - A retry runs a finished job again under the same id, as its next attempt: one
//!   Lua step checks it is finished, hands its hash to a new entry through a
//!   requeue token (as a scheduled retry does) and adds that entry, so two retries
//!   at once run it once. Its hash, log and files stop expiring until it ends again.

use super::lookup::{self, Unclaimed};
use super::AdminError;
use crate::config::Settings;
use crate::listing::{self, Cursor, Filter, Page};
use crate::queue::{schedule, Keys};
use crate::store::Conn;
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::HashMap;
use std::sync::LazyLock;

/// Fields holding counts, typed as numbers.
const NUMBERS: &[&str] = &["attempt", "exit_code", "deliveries", "docker_retries"];
/// Fields holding JSON, typed as JSON.
const JSON: &[&str] = &[
    "result_data",
    "files",
    "files_dropped",
    "metadata",
    "progress",
];
/// Fields only the worker needs (its bookkeeping, and the raw event body).
const INTERNAL: &[&str] = &["entry", "owner", "requeue_token", "event"];

/// The job hash as JSON with the types its fields hold: counts and the exit code
/// as numbers, JSON fields as JSON, an empty field as `null`, the rest as
/// strings. The worker's own bookkeeping fields are left out.
pub fn typed(hash: HashMap<String, String>) -> serde_json::Value {
    use serde_json::Value;
    let obj: serde_json::Map<String, Value> = hash
        .into_iter()
        .filter(|(k, _)| !INTERNAL.contains(&k.as_str()))
        .map(|(k, v)| {
            let value = if v.is_empty() {
                Value::Null
            } else if NUMBERS.contains(&k.as_str()) {
                v.parse::<i64>()
                    .map(Value::from)
                    .unwrap_or(Value::String(v))
            } else if JSON.contains(&k.as_str()) || k == "spec" {
                serde_json::from_str(&v).unwrap_or(Value::String(v))
            } else {
                Value::String(v)
            };
            (k, value)
        })
        .collect();
    Value::Object(obj)
}

/// Where a job was found.
#[derive(Debug, Clone)]
pub enum Found {
    /// A worker has recorded it: its hash.
    Recorded(HashMap<String, String>),
    /// It waits in a queue unread; `cancel` when a cancel request waits for it.
    Unclaimed { at: Unclaimed, cancel: bool },
}

impl Found {
    /// As JSON: the typed hash, or what the queue says of an unread job.
    pub fn to_json(&self, id: &str) -> serde_json::Value {
        match self {
            Found::Recorded(hash) => typed(hash.clone()),
            Found::Unclaimed { at, cancel } => {
                let mut v = serde_json::json!({
                    "id": id,
                    "queue": at.queue,
                    "status": "queued",
                    "entry": at.entry,
                    "claimed": false,
                });
                if *cancel {
                    v["cancel_requested"] = true.into();
                }
                v
            }
        }
    }
}

/// Job `text` (`<queue>/<id>` or `<id>`), wherever it is.
pub async fn find(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    text: &str,
) -> Result<Found, AdminError> {
    let (queue, id) = super::job_ref(text)?;
    if let Some(q) = lookup::queue_holding(conn, keys, settings, queue, id, "status").await? {
        let hash: HashMap<String, String> = conn.hgetall(keys.job(&q, id)).await?;
        if hash.contains_key("status") {
            return Ok(Found::Recorded(hash));
        }
    }
    if let Some(at) = lookup::unclaimed(conn, keys, settings, queue, id).await? {
        // A hash without `status` is at most a cancel request waiting for the job.
        let cancel: bool = conn
            .hexists(keys.job(&at.queue, id), "cancel_requested")
            .await?;
        return Ok(Found::Unclaimed { at, cancel });
    }
    // A worker may have claimed it (and even finished it) while we looked.
    if let Some(q) = lookup::queue_holding(conn, keys, settings, queue, id, "status").await? {
        let hash: HashMap<String, String> = conn.hgetall(keys.job(&q, id)).await?;
        if hash.contains_key("status") {
            return Ok(Found::Recorded(hash));
        }
    }
    Err(not_found(text))
}

fn not_found(id: &str) -> AdminError {
    AdminError::NotFound(format!(
        "job {id} not found: no worker has recorded it and no queue holds it \
         (a finished job's state expires after jobs.retention_seconds)"
    ))
}

/// What a cancel request found.
#[derive(Debug, Clone)]
pub struct Cancelled {
    /// The job's status when asked; `None` for a job no worker has read yet.
    pub status: Option<String>,
    /// The queue it waits in, for a job no worker has read yet.
    pub waiting_in: Option<String>,
}

/// Asks for job `text` (`<queue>/<id>` or `<id>`) to be cancelled.
pub async fn cancel(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    text: &str,
) -> Result<Cancelled, AdminError> {
    let (queue, id) = super::job_ref(text)?;
    let mut waiting = None;
    let mut at = lookup::queue_holding(conn, keys, settings, queue, id, "status").await?;
    if at.is_none() {
        waiting = lookup::unclaimed(conn, keys, settings, queue, id).await?;
        at = match &waiting {
            Some(w) => Some(w.queue.clone()),
            None => lookup::queue_holding(conn, keys, settings, queue, id, "status").await?,
        };
    }
    let Some(at) = at else {
        return Err(AdminError::NotFound(format!(
            "no job {text}: no worker has recorded it and no queue holds it"
        )));
    };
    let status =
        crate::state::request_cancel(conn, keys, &at, id, settings.jobs.retention_seconds).await?;
    if let Some(s @ ("completed" | "aborted")) = status.as_deref() {
        return Err(AdminError::Conflict(format!(
            "job {id} already ended {s}; nothing to cancel"
        )));
    }
    Ok(Cancelled {
        status,
        waiting_in: waiting.map(|w| w.queue),
    })
}

/// KEYS: job hash, job log, job files, the stream of the lane of the spec's
/// priority (all in the job's queue). ARGV: requeue token, the spec to run
/// (with its `id`). Returns the new entry id, or an error reply saying why not.
static RETRY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local status = redis.call('HGET', KEYS[1], 'status')
        if not status then return redis.error_reply('NOTFOUND') end
        if status ~= 'completed' and status ~= 'aborted' then
            return redis.error_reply('BUSY ' .. status)
        end
        -- Nothing of the last run may read as the new one's (as when a worker hands a job back).
        redis.call('HDEL', KEYS[1], 'reason', 'error', 'exit_code', 'started_at', 'finished_at', 'worker',
            'result_text', 'result_data', 'files', 'files_dropped', 'cancel_requested')
        redis.call('DEL', KEYS[3])
        redis.call('HSET', KEYS[1], 'requeue_token', ARGV[1], 'status', 'queued')
        redis.call('PERSIST', KEYS[1])
        redis.call('PERSIST', KEYS[2])
        return redis.call('XADD', KEYS[4], '*', 'job', ARGV[2], 'token', ARGV[1])
        ",
    )
});

/// A finished job queued again.
#[derive(Debug, Clone)]
pub struct Retried {
    pub queue: String,
    pub entry: String,
    /// The attempt it will run as.
    pub attempt: u32,
}

/// Runs finished job `text` (`<queue>/<id>` or `<id>`) again: same id, next attempt.
pub async fn retry(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    text: &str,
) -> Result<Retried, AdminError> {
    let (queue, id) = super::job_ref(text)?;
    let Some(queue) = lookup::queue_holding(conn, keys, settings, queue, id, "status").await?
    else {
        return Err(not_found(text));
    };
    let (spec, attempt): (Option<String>, Option<u32>) = redis::cmd("HMGET")
        .arg(keys.job(&queue, id))
        .arg("spec")
        .arg("attempt")
        .query_async(&mut **conn)
        .await?;
    let Some(spec) = spec else {
        return Err(not_found(id));
    };
    let mut spec: serde_json::Value = serde_json::from_str(&spec).map_err(|_| {
        AdminError::Conflict(format!(
            "job {id} was refused as invalid JSON; correct it and submit it as a new job"
        ))
    })?;
    let masked = crate::job::masked_fields(&spec);
    if !masked.is_empty() {
        return Err(AdminError::Conflict(format!(
            "job {id} had credentials ({}), masked when it was stored; submit it again with them",
            masked.join(", ")
        )));
    }
    if let Some(obj) = spec.as_object_mut() {
        obj.insert("id".into(), id.into());
    }
    let token = schedule::new_token();
    let lane = keys.lane(
        &queue,
        crate::job::requested_priority(spec.to_string().as_bytes()),
    );
    let reply: Result<String, redis::RedisError> = RETRY
        .key(keys.job(&queue, id))
        .key(keys.log(&queue, id))
        .key(keys.files(&queue, id))
        .key(lane)
        .arg(&token)
        .arg(spec.to_string())
        .invoke_async(&mut **conn)
        .await;
    match reply {
        Ok(entry) => Ok(Retried {
            queue,
            entry,
            attempt: attempt.unwrap_or(0) + 1,
        }),
        Err(e) if e.code() == Some("NOTFOUND") => Err(not_found(id)),
        Err(e) if e.code() == Some("BUSY") => Err(AdminError::Conflict(format!(
            "job {id} is {} now; only a finished job is run again",
            e.detail().unwrap_or("not finished")
        ))),
        Err(e) => Err(e.into()),
    }
}

/// One of the files job `text` (`<queue>/<id>` or `<id>`) returned.
pub async fn file(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    text: &str,
    name: &str,
) -> Result<Vec<u8>, AdminError> {
    let (queue, id) = super::job_ref(text)?;
    let bytes: Option<Vec<u8>> =
        match lookup::queue_holding(conn, keys, settings, queue, id, "status").await? {
            Some(q) => conn.hget(keys.files(&q, id), name).await?,
            None => None,
        };
    bytes.ok_or_else(|| AdminError::NotFound(format!("job {text} has no file {name:?}")))
}

/// A page of jobs, newest first, as typed rows: of the filter's queue, or of
/// every queue.
pub async fn list(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<serde_json::Value>, Option<String>), AdminError> {
    let after = match cursor {
        None | Some("") => None,
        Some(c) => Some(Cursor::parse(c).ok_or_else(|| {
            AdminError::Invalid(format!("cursor {c:?} is not one a listing gave"))
        })?),
    };
    let queues: Vec<String> = match &filter.queue {
        Some(_) => Vec::new(),
        None => lookup::queues(conn, keys, settings)
            .await?
            .into_iter()
            .collect(),
    };
    let page = listing::page(conn, keys, &queues, filter, after, limit.clamp(1, 500)).await?;
    let Page { rows, next } = page;
    Ok((
        rows.into_iter().map(typed).collect(),
        next.map(|c| c.to_string()),
    ))
}

/// A listing filter from the words a person or URL gives.
pub fn filter(
    queue: Option<&str>,
    status: Option<&str>,
    reason: Option<&str>,
    since: Option<&str>,
) -> Result<Filter, AdminError> {
    use crate::job::{Reason, Status};
    let queue = queue
        .map(super::queue_name)
        .transpose()?
        .map(str::to_string);
    let status = status
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                AdminError::Invalid(format!(
                    "status {s:?} is none of queued, scheduled, waiting, building, running, completed, aborted"
                ))
            })
        })
        .transpose()?;
    let reason = reason
        .map(|r| {
            Reason::parse(r).ok_or_else(|| {
                AdminError::Invalid(format!("reason {r:?} is not a reason a job ends with"))
            })
        })
        .transpose()?;
    let since_ms = since
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|_| AdminError::Invalid(format!("since {s:?} is not an RFC 3339 time")))
        })
        .transpose()?;
    Ok(Filter {
        queue,
        status,
        reason,
        since_ms,
    })
}
