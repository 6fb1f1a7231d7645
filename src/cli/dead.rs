//! `dockhand dead`: the entries a queue could not run (refused by validation or
//! policy, or whose worker was lost `worker.max_deliveries` times), and what an
//! operator does with them: look, run one again, or delete it.
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

use super::{connect, CliResult, Failure};
use crate::config::Settings;
use crate::queue::{schedule, Keys};
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only this queue (default: every queue that has dead entries).
    #[arg(long)]
    pub queue: Option<String>,
    /// At most this many entries per queue, newest first.
    #[arg(long, default_value_t = 20)]
    pub count: usize,
    /// One JSON object per entry, a line each.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List dead entries (the default).
    List(ListArgs),
    /// Run a dead job again: by its job id or its dead entry id.
    Retry {
        /// The job id, or the dead entry id (as `dead` lists them).
        #[arg(value_name = "ID")]
        target: String,
        /// The queue whose dead stream holds it (needed when a job id is in several).
        #[arg(long)]
        queue: Option<String>,
    },
    /// Delete a dead entry: by its job id or its dead entry id.
    Rm {
        /// The job id, or the dead entry id (as `dead` lists them).
        #[arg(value_name = "ID")]
        target: String,
        /// The queue whose dead stream holds it (needed when a job id is in several).
        #[arg(long)]
        queue: Option<String>,
    },
}

/// One entry of a dead stream.
#[derive(Debug, Clone)]
struct Dead {
    queue: String,
    /// Its id in the dead stream.
    id: String,
    fields: HashMap<String, String>,
}

impl Dead {
    fn get(&self, field: &str) -> &str {
        self.fields.get(field).map(String::as_str).unwrap_or("")
    }
}

pub async fn run(settings: &Settings, args: Args) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    match args.action {
        None => list(&mut conn, &keys, args.list).await,
        Some(Action::List(l)) => list(&mut conn, &keys, l).await,
        Some(Action::Retry { target, queue }) => {
            let dead = find(&mut conn, &keys, &target, queue.as_deref()).await?;
            retry(&mut conn, &keys, &dead).await
        }
        Some(Action::Rm { target, queue }) => {
            let dead = find(&mut conn, &keys, &target, queue.as_deref()).await?;
            let n: i64 = conn
                .xdel(keys.dead(&dead.queue), &[&dead.id])
                .await
                .map_err(StoreError::from)?;
            if n == 0 {
                return Err(Failure::failed(format!(
                    "{target} left the dead stream meanwhile"
                )));
            }
            outln!(
                "deleted dead entry {} ({}) of queue {}",
                dead.id,
                dead.get("id"),
                dead.queue
            );
            Ok(())
        }
    }
}

async fn list(conn: &mut Conn, keys: &Keys, args: ListArgs) -> CliResult {
    let queues = match args.queue {
        Some(q) => vec![q],
        None => dead_queues(conn, keys).await?,
    };
    let mut shown = 0;
    if !args.json {
        outln!(
            "{:<20} {:<24} {:<16} {:<26} {:<14} ERROR",
            "DEAD ENTRY",
            "AT",
            "QUEUE",
            "JOB",
            "REASON"
        );
    }
    for q in queues {
        for d in read(conn, keys, &q, Some(args.count)).await? {
            shown += 1;
            if args.json {
                let mut v = serde_json::json!({"queue": d.queue, "dead_id": d.id});
                for (k, val) in &d.fields {
                    v[k] = serde_json::Value::String(val.clone());
                }
                outln!("{v}");
            } else {
                let at = crate::time::from_stream_id(&d.id).unwrap_or_default();
                let error = d.get("error").lines().next().unwrap_or("");
                outln!(
                    "{:<20} {:<24} {:<16} {:<26} {:<14} {error}",
                    d.id,
                    at,
                    d.queue,
                    d.get("id"),
                    d.get("reason"),
                );
            }
        }
    }
    if shown == 0 && !args.json {
        outln!("(no dead entries)");
    }
    Ok(())
}

/// Queues that have a dead stream.
async fn dead_queues(conn: &mut Conn, keys: &Keys) -> Result<Vec<String>, Failure> {
    let pattern = keys.dead("*");
    let mut found = BTreeSet::new();
    let mut iter = conn
        .scan_match::<_, String>(&pattern)
        .await
        .map_err(StoreError::from)?;
    while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
        let k = k.map_err(StoreError::from)?;
        if let Some(q) = keys.queue_of(&k) {
            found.insert(q.to_string());
        }
    }
    Ok(found.into_iter().collect())
}

/// A queue's dead entries, newest first (`count`: at most that many).
async fn read(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    count: Option<usize>,
) -> Result<Vec<Dead>, Failure> {
    let key = keys.dead(queue);
    let reply: redis::streams::StreamRangeReply = match count {
        Some(n) => conn.xrevrange_count(&key, "+", "-", n).await,
        None => conn.xrevrange(&key, "+", "-").await,
    }
    .map_err(StoreError::from)?;
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
async fn find(
    conn: &mut Conn,
    keys: &Keys,
    target: &str,
    queue: Option<&str>,
) -> Result<Dead, Failure> {
    let queues = match queue {
        Some(q) => vec![q.to_string()],
        None => dead_queues(conn, keys).await?,
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
        0 => Err(Failure::failed(format!("no dead entry {target}"))),
        1 => Ok(hits.remove(0)),
        n => Err(Failure::usage(format!(
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

async fn retry(conn: &mut Conn, keys: &Keys, dead: &Dead) -> CliResult {
    let raw = dead.get("job");
    let spec: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
        Failure::failed(format!(
            "dead entry {} is not valid JSON ({e}); correct it and submit it as a new job",
            dead.id
        ))
    })?;
    let masked = crate::job::masked_fields(&spec);
    if !masked.is_empty() {
        return Err(Failure::failed(format!(
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
        .key(keys.jobs(&dead.queue))
        .key(keys.job(hash_id))
        .key(keys.log(hash_id))
        .arg(&dead.id)
        .arg(&token)
        .invoke_async(&mut **conn)
        .await
        .map_err(|e| Failure::failed(format!("dead entry {} not retried: {e}", dead.id)))?;
    let shown = job_id.map(str::to_string).unwrap_or_else(|| entry.clone());
    outln!(
        "job {shown} queued again on {} (entry {entry}); was {}: {}",
        dead.queue,
        dead.get("reason"),
        dead.get("error").lines().next().unwrap_or("")
    );
    Ok(())
}
