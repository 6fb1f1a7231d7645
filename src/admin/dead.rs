//! The dead entries: what a queue could not run (refused by validation or policy,
//! or whose worker was lost `worker.max_deliveries` times), and what an operator
//! does with them: look, run one (or all) again, or delete.
//!
//! Invariants:
//! - A retry moves the entry in one Lua step: the job's raw entry is added to its
//!   queue's stream and the dead entry deleted together, so two operators retrying
//!   at once run it once, and a failure in between loses nothing.
//! - A retry takes over the job's hash through a requeue token (like a scheduled
//!   retry) only when the job is finished; a job that runs again already is not
//!   touched. Its hash and log stop expiring until it finishes again.
//! - An entry whose credentials were masked when it was buried (`secret_env`, a
//!   webhook's secret, a git URL's password) is not retried: it would run with
//!   `***` for them.

use super::AdminError;
use crate::queue::{schedule, Keys};
use crate::store::Conn;
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

/// One entry of a dead stream.
#[derive(Debug, Clone)]
pub struct Dead {
    pub queue: String,
    /// Its id in the dead stream.
    pub id: String,
    pub fields: HashMap<String, String>,
}

impl Dead {
    pub fn get(&self, field: &str) -> &str {
        self.fields.get(field).map(String::as_str).unwrap_or("")
    }

    /// As JSON: the queue, the dead entry id (`dead_id`), and its fields.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"queue": self.queue, "dead_id": self.id,
            "at": crate::time::from_stream_id(&self.id)});
        for (k, val) in &self.fields {
            v[k] = serde_json::Value::String(val.clone());
        }
        // The raw entry as JSON when it is JSON (a malformed one stays the text it was).
        if let Some(job) = self
            .fields
            .get("job")
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        {
            v["job"] = job;
        }
        v
    }
}

/// Queues that have a dead stream.
pub async fn queues(conn: &mut Conn, keys: &Keys) -> Result<Vec<String>, AdminError> {
    let pattern = keys.dead("*");
    let mut found = BTreeSet::new();
    for k in conn.scan_keys(&pattern, 1000).await? {
        if let Some(q) = keys.queue_of(&k) {
            found.insert(q.to_string());
        }
    }
    Ok(found.into_iter().collect())
}

/// A queue's dead entries, newest first (`count`: at most that many).
pub async fn read(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    count: Option<usize>,
) -> Result<Vec<Dead>, AdminError> {
    let key = keys.dead(queue);
    let reply: redis::streams::StreamRangeReply = match count {
        Some(n) => conn.xrevrange_count(&key, "+", "-", n).await,
        None => conn.xrevrange(&key, "+", "-").await,
    }?;
    Ok(reply
        .ids
        .into_iter()
        .map(|e| Dead {
            queue: queue.to_string(),
            fields: e
                .map
                .iter()
                .map(|(k, v)| {
                    let v: String = redis::from_redis_value(v.clone()).unwrap_or_default();
                    (k.clone(), v)
                })
                .collect(),
            id: e.id,
        })
        .collect())
}

/// The one dead entry that `target` names, as a dead entry id or a job id.
pub async fn find(
    conn: &mut Conn,
    keys: &Keys,
    target: &str,
    queue: Option<&str>,
) -> Result<Dead, AdminError> {
    let queues = match queue {
        Some(q) => vec![q.to_string()],
        None => queues(conn, keys).await?,
    };
    let mut hits = Vec::new();
    for q in queues {
        for d in read(conn, keys, &q, None).await? {
            if d.id == target || d.get("id") == target {
                hits.push(d);
            }
        }
    }
    match hits.len() {
        0 => Err(AdminError::NotFound(format!("no dead entry {target}"))),
        1 => Ok(hits.remove(0)),
        n => Err(AdminError::Invalid(format!(
            "{target} names {n} dead entries ({}); give the dead entry id, and --queue",
            hits.iter()
                .map(|d| format!("{} in {}", d.id, d.queue))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// KEYS: dead stream, jobs stream, job hash, job log. ARGV: dead entry id, requeue
/// token ('' when the job has no hash to take over). Returns the new entry id, or
/// an error reply saying why not.
static RETRY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
        if #found == 0 then return redis.error_reply('it left the dead stream meanwhile') end
        local fields, job = found[1][2], nil
        for i = 1, #fields, 2 do
            if fields[i] == 'job' then job = fields[i + 1] end
        end
        if not job then return redis.error_reply('the dead entry has no job field') end
        local entry = {'job', job}
        if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
            local status = redis.call('HGET', KEYS[3], 'status')
            if status ~= 'completed' and status ~= 'aborted' then
                return redis.error_reply('the job is ' .. tostring(status) .. ' now; not run again')
            end
            redis.call('HSET', KEYS[3], 'requeue_token', ARGV[2], 'status', 'queued')
            redis.call('PERSIST', KEYS[3])
            redis.call('PERSIST', KEYS[4])
            entry = {'job', job, 'token', ARGV[2]}
        end
        local id = redis.call('XADD', KEYS[2], '*', unpack(entry))
        redis.call('XDEL', KEYS[1], ARGV[1])
        return id
        ",
    )
});

/// A dead entry queued again.
#[derive(Debug, Clone)]
pub struct Retried {
    /// The job's id: its own, or (for a spec without one) the new entry's.
    pub job: String,
    pub queue: String,
    pub entry: String,
}

/// Runs a dead entry again.
pub async fn retry(conn: &mut Conn, keys: &Keys, dead: &Dead) -> Result<Retried, AdminError> {
    let raw = dead.get("job");
    let spec: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
        AdminError::Conflict(format!(
            "dead entry {} is not valid JSON ({e}); correct it and submit it as a new job",
            dead.id
        ))
    })?;
    let masked = crate::job::masked_fields(&spec);
    if !masked.is_empty() {
        return Err(AdminError::Conflict(format!(
            "dead entry {} had credentials ({}), masked when it was stored; submit the job again with them",
            dead.id,
            masked.join(", ")
        )));
    }
    // A job with its own id keeps it, and its hash, through the requeue token; one
    // without gets a new id (the new entry's), like any new submission.
    let job_id = spec.get("id").and_then(|v| v.as_str());
    let token = job_id.map(|_| schedule::new_token()).unwrap_or_default();
    let hash_id = job_id.unwrap_or("");
    let entry: String = RETRY
        .key(keys.dead(&dead.queue))
        .key(keys.lane(&dead.queue, crate::job::requested_priority(raw.as_bytes())))
        .key(keys.job(&dead.queue, hash_id))
        .key(keys.log(&dead.queue, hash_id))
        .arg(&dead.id)
        .arg(&token)
        .invoke_async(&mut **conn)
        .await
        .map_err(|e| AdminError::Conflict(format!("dead entry {} not retried: {e}", dead.id)))?;
    Ok(Retried {
        job: job_id.map(str::to_string).unwrap_or_else(|| entry.clone()),
        queue: dead.queue.clone(),
        entry,
    })
}

/// Deletes a dead entry.
pub async fn remove(conn: &mut Conn, keys: &Keys, dead: &Dead) -> Result<(), AdminError> {
    let n: i64 = conn.xdel(keys.dead(&dead.queue), &[&dead.id]).await?;
    if n == 0 {
        return Err(AdminError::NotFound(format!(
            "dead entry {} left the dead stream meanwhile",
            dead.id
        )));
    }
    Ok(())
}

/// What retrying or deleting every dead entry of some queues did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Bulk {
    pub done: usize,
    /// The entries left alone, each with why.
    pub refused: Vec<(String, String)>,
}

/// Retries (or, with `delete`, deletes) every dead entry of `queue` (`None`: of
/// every queue), oldest first. An entry that cannot be retried stays, with why.
pub async fn all(
    conn: &mut Conn,
    keys: &Keys,
    queue: Option<&str>,
    delete: bool,
) -> Result<Bulk, AdminError> {
    let queues = match queue {
        Some(q) => vec![super::queue_name(q)?.to_string()],
        None => queues(conn, keys).await?,
    };
    let mut bulk = Bulk::default();
    for q in queues {
        let mut entries = read(conn, keys, &q, None).await?;
        entries.reverse();
        for d in entries {
            let done = if delete {
                remove(conn, keys, &d).await.map(|_| ())
            } else {
                retry(conn, keys, &d).await.map(|_| ())
            };
            match done {
                Ok(()) => bulk.done += 1,
                Err(AdminError::Store(e)) => return Err(AdminError::Store(e)),
                Err(e) => bulk.refused.push((d.id.clone(), e.to_string())),
            }
        }
    }
    Ok(bulk)
}
