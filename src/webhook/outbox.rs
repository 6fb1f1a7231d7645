//! Durable deliveries in Redis: made when a job finishes, sent by any worker,
//! retried on a schedule, dead-lettered at the end, replayable.
//!
//! Invariants:
//! - A finished job's event body is stored in its hash (field `event`) in the same
//!   Lua step as its terminal state, and its stream entry is acknowledged only
//!   after its deliveries exist. A worker killed between the two leaves the entry
//!   pending; whoever takes it over sees the job finished and makes the deliveries
//!   then. So no finished job is without its deliveries.
//! - A delivery's id is derived from (job, entry, event, subscriber), so making it
//!   twice makes it once; the id is also the `webhook-id`, the same on every attempt.
//! - `dockhand:webhooks:{outbox}:due` holds each pending delivery with its next attempt time.
//!   A worker takes due ones by pushing their time a lease ahead (one script), so a
//!   worker that dies mid-attempt only delays the delivery by the lease.
//! - Every attempt is appended to `dockhand:webhooks:{outbox}:<id>:attempts`; finished
//!   deliveries and their attempts expire with `jobs.retention_seconds`.

use crate::queue::Keys;
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::LazyLock;

/// What one delivery holds (the `dockhand:webhooks:{outbox}:<id>` hash).
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub id: String,
    pub job: String,
    pub event: String,
    /// A registered subscriber's name, or `job:<n>` for the job's own `webhooks`.
    pub subscriber: String,
    /// Only for the job's own targets: registered ones are looked up at each attempt.
    pub url: Option<String>,
    pub secret: Option<String>,
    pub body: String,
    pub status: String,
    /// Attempts in the current round (a replay starts a new round).
    pub round: u32,
    pub attempts: u32,
    /// When it was made (RFC 3339): where its delivery latency starts.
    pub created_at: String,
}

impl Delivery {
    fn from_hash(id: &str, h: HashMap<String, String>) -> Option<Delivery> {
        if h.is_empty() {
            return None;
        }
        let get = |k: &str| h.get(k).cloned().unwrap_or_default();
        let opt = |k: &str| h.get(k).filter(|v| !v.is_empty()).cloned();
        Some(Delivery {
            id: id.to_string(),
            job: get("job"),
            event: get("event"),
            subscriber: get("subscriber"),
            url: opt("url"),
            secret: opt("secret"),
            body: get("body"),
            status: get("status"),
            round: get("round").parse().unwrap_or(0),
            attempts: get("attempts").parse().unwrap_or(0),
            created_at: get("created_at"),
        })
    }
}

/// The delivery id for one (job run, event, subscriber): `msg_` and 26 hex digits.
pub fn delivery_id(job: &str, entry: &str, event: &str, subscriber: &str) -> String {
    let digest = Sha256::digest(format!("{job}\n{entry}\n{event}\n{subscriber}").as_bytes());
    format!("msg_{}", &hex::encode(digest)[..26])
}

/// A target to make a delivery for.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub subscriber: String,
    pub url: Option<String>,
    pub secret: Option<String>,
}

/// The Lua function that makes one delivery unless it exists: the one layout of
/// a delivery hash. Arguments: delivery hash, due set, job's delivery set, id, job, event,
/// subscriber, url, secret, body, now (ms), created_at, retention.
const CREATE_FN: &str = r"
        local function create(dkey, due, jobset, id, job, event, sub, url, secret, body, now, created, retention)
            if redis.call('EXISTS', dkey) == 1 then return 0 end
            redis.call('HSET', dkey, 'id', id, 'job', job, 'event', event, 'subscriber', sub,
                'url', url, 'secret', secret, 'body', body, 'status', 'pending', 'round', 0, 'attempts', 0,
                'created_at', created)
            redis.call('ZADD', due, now, id)
            redis.call('SADD', jobset, id)
            redis.call('EXPIRE', jobset, tonumber(retention))
            return 1
        end
";

/// KEYS: delivery hash, due set, job's delivery set. ARGV: id, job, event, subscriber,
/// url, secret, body, now (ms), created_at, retention.
static CREATE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{CREATE_FN}
        return create(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
            ARGV[7], ARGV[8], ARGV[9], ARGV[10])"
    ))
});

/// Makes the deliveries of a finished job's terminal event (idempotent). Returns how
/// many were new. `spec` is the job's entry as submitted: its own `webhooks[]`
/// carry their secrets there (the job hash keeps them masked). It may be anything
/// a producer wrote, not UTF-8 or not JSON: then it names no webhook.
pub async fn enqueue_for_job(
    conn: &mut Conn,
    keys: &Keys,
    registry: &Registry,
    queue: &str,
    job: &str,
    spec: &[u8],
    retention: u64,
) -> Result<usize, StoreError> {
    let (body, entry): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(keys.job(queue, job))
        .arg("event")
        .arg("entry")
        .query_async(conn)
        .await?;
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return Ok(0);
    };
    let event = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string))
        .unwrap_or_default();
    let entry = entry.unwrap_or_default();

    let targets = targets(conn, keys, registry, &event, queue, spec).await?;
    make(conn, keys, job, &entry, &event, &body, targets, retention).await
}

/// Makes the deliveries of one job event to `targets` (idempotent), for a
/// caller that knows the body and has the targets already (the worker that
/// has just written the terminal state): no read of the job hash.
#[allow(clippy::too_many_arguments)]
pub async fn make(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
    entry: &str,
    event: &str,
    body: &str,
    targets: Vec<NewDelivery>,
    retention: u64,
) -> Result<usize, StoreError> {
    let mut made = 0;
    for t in targets {
        let id = delivery_id(job, entry, event, &t.subscriber);
        made += create(conn, keys, &id, job, event, &t, body, retention).await? as usize;
    }
    Ok(made)
}

/// Makes delivery `id` of one job event to one target unless it exists (one
/// step, in the outbox's slot). True when it was new.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    conn: &mut Conn,
    keys: &Keys,
    id: &str,
    job: &str,
    event: &str,
    target: &NewDelivery,
    body: &str,
    retention: u64,
) -> Result<bool, StoreError> {
    let created: i64 = CREATE
        .key(keys.delivery(id))
        .key(keys.deliveries_due())
        .key(keys.job_deliveries(job))
        .arg(id)
        .arg(job)
        .arg(event)
        .arg(&target.subscriber)
        .arg(target.url.as_deref().unwrap_or_default())
        .arg(target.secret.as_deref().unwrap_or_default())
        .arg(body)
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(crate::time::now())
        .arg(retention)
        .invoke_async(conn)
        .await?;
    Ok(created == 1)
}

/// The subscriber registry as a worker last read it, kept for a short time
/// (`fresh`: the worker's `block_ms`), so that a busy worker does not read it
/// once per finished job. A change made through `dockhand subscriber` or the API
/// is announced on [`Keys::subscribers_channel`], and the worker forgets its copy
/// at once ([`Registry::forget`]); one made with a bare `HSET` applies to jobs
/// that end `fresh` after it at the latest. (Only who gets a delivery is read
/// from the copy: its URL and secret are read when it is sent.) Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    copy: std::sync::Arc<std::sync::Mutex<Option<Read>>>,
    /// Counts the times the copy was forgotten: a read that was under way
    /// meanwhile may hold the old registry, and is not kept.
    forgotten: std::sync::Arc<std::sync::atomic::AtomicU64>,
    fresh: std::time::Duration,
}

type Read = (std::time::Instant, std::sync::Arc<Vec<(Vec<u8>, Vec<u8>)>>);

impl Registry {
    pub fn new(fresh: std::time::Duration) -> Registry {
        Registry {
            copy: Default::default(),
            forgotten: Default::default(),
            fresh,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Read>> {
        self.copy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the copy: the next read goes to Redis.
    pub fn forget(&self) {
        let mut copy = self.lock();
        self.forgotten
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *copy = None;
    }

    /// Every registered subscriber, name → JSON, sorted by name.
    async fn read(
        &self,
        conn: &mut Conn,
        keys: &Keys,
    ) -> Result<std::sync::Arc<Vec<(Vec<u8>, Vec<u8>)>>, StoreError> {
        if let Some((at, list)) = &*self.lock() {
            if at.elapsed() < self.fresh {
                return Ok(list.clone());
            }
        }
        let asked = std::time::Instant::now();
        let generation = self.forgotten.load(std::sync::atomic::Ordering::SeqCst);
        let mut list: Vec<(Vec<u8>, Vec<u8>)> = conn.hgetall(keys.subscribers()).await?;
        list.sort();
        let list = std::sync::Arc::new(list);
        // Timed from the question, not the answer; and not kept at all when a
        // change was announced while it was on its way.
        let mut copy = self.lock();
        if self.forgotten.load(std::sync::atomic::Ordering::SeqCst) == generation {
            *copy = Some((asked, list.clone()));
        }
        Ok(list)
    }
}

/// Every target that wants `event` of a job in `queue`: the registered
/// subscribers (by name, in order) and the job's own `webhooks` in `spec`.
pub async fn targets(
    conn: &mut Conn,
    keys: &Keys,
    registry: &Registry,
    event: &str,
    queue: &str,
    spec: &[u8],
) -> Result<Vec<NewDelivery>, StoreError> {
    let mut targets = Vec::new();
    // Anyone can HSET the registry: a name or value that is not UTF-8 JSON is
    // skipped with a warning, and never keeps the other subscribers' deliveries
    // (or the entry's acknowledgement) from being made.
    let subscribers = registry.read(conn, keys).await?;
    for (name, value) in subscribers.iter() {
        let name = String::from_utf8_lossy(name).into_owned();
        match serde_json::from_slice::<super::Subscriber>(value) {
            Ok(sub) if sub.wants(event, queue) => targets.push(NewDelivery {
                subscriber: name,
                url: None,
                secret: None,
            }),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(subscriber = %name, error = %e, "a subscriber's JSON is unreadable; skipped (`dockhand subscriber rm` it and add it again)")
            }
        }
    }
    targets.extend(job_targets(spec, event));
    Ok(targets)
}

/// Makes the deliveries of a batch's `batch.completed` (idempotent) to the
/// registered subscribers that want it for one of the batch's `queues`. The
/// delivery's `job` is `batch:<id>`, which no job id can be (ids have no `:`).
pub async fn enqueue_for_batch(
    conn: &mut Conn,
    keys: &Keys,
    batch: &str,
    body: &str,
    queues: &[String],
    retention: u64,
) -> Result<usize, StoreError> {
    const EVENT: &str = "batch.completed";
    let subject = format!("batch:{batch}");
    let mut subscribers: Vec<(Vec<u8>, Vec<u8>)> = conn.hgetall(keys.subscribers()).await?;
    subscribers.sort();
    let now = chrono::Utc::now();
    let mut made = 0;
    for (name, value) in subscribers {
        let Ok(sub) = serde_json::from_slice::<super::Subscriber>(&value) else {
            continue; // reported by the job deliveries, which read the same registry
        };
        if !queues.iter().any(|q| sub.wants(EVENT, q)) {
            continue;
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        let id = delivery_id(&subject, "", EVENT, &name);
        let created: i64 = CREATE
            .key(keys.delivery(&id))
            .key(keys.deliveries_due())
            .key(keys.batch_deliveries(batch))
            .arg(&id)
            .arg(&subject)
            .arg(EVENT)
            .arg(&name)
            .arg("")
            .arg("")
            .arg(body)
            .arg(now.timestamp_millis())
            .arg(crate::time::now())
            .arg(retention)
            .invoke_async(conn)
            .await?;
        made += created as usize;
    }
    Ok(made)
}

/// The job's own `webhooks: [{url, secret, events}]` that want `event`.
fn job_targets(spec: &[u8], event: &str) -> Vec<NewDelivery> {
    let spec: serde_json::Value = serde_json::from_slice(spec).unwrap_or_default();
    let Some(hooks) = spec["webhooks"].as_array() else {
        return Vec::new();
    };
    hooks
        .iter()
        .enumerate()
        .filter(|(_, h)| match h["events"].as_array() {
            Some(events) => events.iter().any(|e| {
                e.as_str()
                    .is_some_and(|e| super::subscribers::names(e, event))
            }),
            None => super::subscribers::default_events()
                .iter()
                .any(|e| e == event),
        })
        .map(|(i, h)| NewDelivery {
            subscriber: format!("job:{i}"),
            url: h["url"].as_str().map(str::to_string),
            secret: h["secret"].as_str().map(str::to_string),
        })
        .collect()
}

/// KEYS[1] due set. ARGV: now, lease (ms), max. Takes due deliveries by pushing them
/// a lease into the future; returns their ids and the earliest time left in the
/// set (false when it is empty).
static TAKE_DUE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
        for _, id in ipairs(due) do
            redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
        end
        local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
        return {due, first[2] or false}
        ",
    )
});

/// Takes up to `max` due deliveries; returns their ids, and when the next one
/// is due (ms since the epoch; `None` when none is pending).
pub async fn take_due(
    conn: &mut Conn,
    keys: &Keys,
    now_ms: i64,
    lease_ms: u64,
    max: usize,
) -> Result<(Vec<String>, Option<i64>), StoreError> {
    let (ids, next): (Vec<String>, Option<f64>) = TAKE_DUE
        .key(keys.deliveries_due())
        .arg(now_ms)
        .arg(lease_ms)
        .arg(max)
        .invoke_async(conn)
        .await?;
    Ok((ids, next.map(|t| t as i64)))
}

/// What [`claim`] found for one id it took.
#[derive(Debug)]
pub enum Claimed {
    /// A pending delivery, and its registered subscriber's JSON as it is now
    /// (`None` for a job's own target, or when the subscriber is not registered).
    Pending(Box<Delivery>, Option<String>),
    /// Gone (expired) or no longer pending: only to be taken out of the due set.
    Stale(String),
}

/// Takes up to `max` due deliveries (see [`take_due`]) and reads them, with the
/// registered subscribers they go to: three round trips for the whole batch.
/// Also says when the next delivery is due (see [`take_due`]).
pub async fn claim(
    conn: &mut Conn,
    keys: &Keys,
    now_ms: i64,
    lease_ms: u64,
    max: usize,
) -> Result<(Vec<Claimed>, Option<i64>), StoreError> {
    let (ids, next) = take_due(conn, keys, now_ms, lease_ms, max).await?;
    if ids.is_empty() {
        return Ok((Vec::new(), next));
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.hgetall(keys.delivery(id));
    }
    let hashes: Vec<HashMap<String, String>> = pipe.query_async(conn).await?;
    let deliveries: Vec<(String, Option<Delivery>)> = ids
        .into_iter()
        .zip(hashes)
        .map(|(id, h)| {
            let d = Delivery::from_hash(&id, h).filter(|d| d.status == "pending");
            (id, d)
        })
        .collect();
    let mut names: Vec<&str> = deliveries
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .filter(|d| d.url.is_none() || d.secret.is_none())
        .map(|d| d.subscriber.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let registered: HashMap<String, String> = if names.is_empty() {
        HashMap::new()
    } else {
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys.subscribers())
            .arg(&names)
            .query_async(conn)
            .await?;
        names
            .iter()
            .zip(values)
            .filter_map(|(n, v)| v.map(|v| (n.to_string(), v)))
            .collect()
    };
    let claimed = deliveries
        .into_iter()
        .map(|(id, d)| match d {
            Some(d) => {
                let sub = registered.get(&d.subscriber).cloned();
                Claimed::Pending(Box::new(d), sub)
            }
            None => Claimed::Stale(id),
        })
        .collect();
    Ok((claimed, next))
}

pub async fn load(conn: &mut Conn, keys: &Keys, id: &str) -> Result<Option<Delivery>, StoreError> {
    let h: HashMap<String, String> = conn.hgetall(keys.delivery(id)).await?;
    Ok(Delivery::from_hash(id, h))
}

/// What becomes of a delivery after an attempt, written with the attempt's record.
#[derive(Debug)]
pub enum Next<'a> {
    Delivered,
    /// Due again at this time (ms since the epoch).
    RetryAt(i64),
    /// Dead-lettered, with this reason.
    Dead(&'a str),
}

/// Appends one attempt's record and counts it, with the fleet-wide metrics it
/// moves (`metrics`), and writes what comes next (`next`): one round trip. The
/// record is in the pipeline before the outcome, so a delivery that is done
/// always has its last attempt recorded.
pub async fn record_attempt(
    conn: &mut Conn,
    keys: &Keys,
    d: &Delivery,
    attempt: &serde_json::Value,
    metrics: &[crate::metrics::Inc],
    next: Next<'_>,
    retention: u64,
) -> Result<(), StoreError> {
    let id = d.id.as_str();
    let mut pipe = redis::pipe();
    pipe.rpush(keys.delivery_attempts(id), attempt.to_string())
        .ignore()
        .hincr(keys.delivery(id), "attempts", 1)
        .ignore()
        .hincr(keys.delivery(id), "round", 1)
        .ignore();
    crate::metrics::add_to(&mut pipe, keys, metrics);
    match next {
        Next::Delivered => delivered_to(&mut pipe, keys, id, retention),
        Next::RetryAt(at_ms) => retry_at_to(&mut pipe, keys, id, at_ms),
        Next::Dead(error) => dead_to(&mut pipe, keys, d, error, retention),
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

fn delivered_to(pipe: &mut redis::Pipeline, keys: &Keys, id: &str, retention: u64) {
    pipe.hset_multiple(
        keys.delivery(id),
        &[
            ("status", "delivered".to_string()),
            ("delivered_at", crate::time::now()),
        ],
    )
    .ignore()
    .zrem(keys.deliveries_due(), id)
    .ignore()
    .expire(keys.delivery(id), retention as i64)
    .ignore()
    .expire(keys.delivery_attempts(id), retention as i64)
    .ignore();
}

fn retry_at_to(pipe: &mut redis::Pipeline, keys: &Keys, id: &str, at_ms: i64) {
    pipe.hset(keys.delivery(id), "next_at", at_ms)
        .ignore()
        .zadd(keys.deliveries_due(), id, at_ms)
        .ignore();
}

fn dead_to(pipe: &mut redis::Pipeline, keys: &Keys, d: &Delivery, error: &str, retention: u64) {
    let fields = [
        ("id", d.id.as_str()),
        ("job", d.job.as_str()),
        ("event", d.event.as_str()),
        ("subscriber", d.subscriber.as_str()),
        ("error", error),
    ];
    pipe.hset_multiple(
        keys.delivery(&d.id),
        &[("status", "dead"), ("error", error)],
    )
    .ignore()
    .zrem(keys.deliveries_due(), &d.id)
    .ignore()
    .xadd_maxlen(
        keys.deliveries_dead(),
        redis::streams::StreamMaxlen::Approx(10_000),
        "*",
        &fields,
    )
    .ignore()
    .expire(keys.delivery(&d.id), retention as i64)
    .ignore()
    .expire(keys.delivery_attempts(&d.id), retention as i64)
    .ignore();
}

/// Gives up on a delivery without an attempt (its target is unusable):
/// `dockhand:webhooks:{outbox}:dead` gets a line naming it and why.
pub async fn dead(
    conn: &mut Conn,
    keys: &Keys,
    d: &Delivery,
    error: &str,
    retention: u64,
) -> Result<(), StoreError> {
    let mut pipe = redis::pipe();
    dead_to(&mut pipe, keys, d, error, retention);
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// Sends a delivery again from the start of the schedule. False when unknown.
pub async fn replay(conn: &mut Conn, keys: &Keys, id: &str) -> Result<bool, StoreError> {
    Ok(replay_many(conn, keys, &[id.to_string()]).await? == 1)
}

/// Sends deliveries again from the start of the schedule, due now (their
/// `next_at`), in two round trips whatever their number; returns how many of
/// `ids` exist (the others are unknown, or expired).
pub async fn replay_many(
    conn: &mut Conn,
    keys: &Keys,
    ids: &[String],
) -> Result<usize, StoreError> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.exists(keys.delivery(id));
    }
    let exist: Vec<bool> = pipe.query_async(conn).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut pipe = redis::pipe();
    let mut n = 0;
    for (id, _) in ids.iter().zip(exist).filter(|(_, e)| *e) {
        n += 1;
        pipe.hset_multiple(
            keys.delivery(id),
            &[
                ("status", "pending".to_string()),
                ("round", "0".to_string()),
                ("next_at", now.to_string()),
            ],
        )
        .ignore()
        .persist(keys.delivery(id))
        .ignore()
        .persist(keys.delivery_attempts(id))
        .ignore()
        .zadd(keys.deliveries_due(), id, now)
        .ignore();
    }
    if n > 0 {
        pipe.query_async::<()>(conn).await?;
    }
    Ok(n)
}

/// Sends every dead-lettered delivery again ([`replay_many`]) and takes it off
/// the dead-letter stream, a thousand at a time; returns how many are sent again.
pub async fn replay_dead(conn: &mut Conn, keys: &Keys) -> Result<usize, StoreError> {
    let letters = dead_letters(conn, keys).await?;
    let mut n = 0;
    for chunk in letters.chunks(1000) {
        let ids: Vec<String> = chunk.iter().map(|(_, id)| id.clone()).collect();
        n += replay_many(conn, keys, &ids).await?;
        let entries: Vec<&str> = chunk.iter().map(|(e, _)| e.as_str()).collect();
        let _: i64 = conn.xdel(keys.deliveries_dead(), &entries).await?;
    }
    Ok(n)
}

/// The ids named in the dead-letter stream, with their stream entry ids.
pub async fn dead_letters(
    conn: &mut Conn,
    keys: &Keys,
) -> Result<Vec<(String, String)>, StoreError> {
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(keys.deliveries_dead()).await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|e| (e.id.clone(), e.get::<String>("id").unwrap_or_default()))
        .collect())
}

/// A job's deliveries with their attempts, for `dockhand webhooks attempts`.
pub async fn for_job(
    conn: &mut Conn,
    keys: &Keys,
    job: &str,
) -> Result<Vec<(Delivery, Vec<String>)>, StoreError> {
    let mut ids: Vec<String> = conn.smembers(keys.job_deliveries(job)).await?;
    ids.sort();
    let mut out = Vec::new();
    for id in ids {
        if let Some(d) = load(conn, keys, &id).await? {
            let attempts: Vec<String> = conn.lrange(keys.delivery_attempts(&id), 0, -1).await?;
            out.push((d, attempts));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_stable_and_distinct() {
        let a = delivery_id("j", "1-0", "job.completed", "s1");
        assert_eq!(a, delivery_id("j", "1-0", "job.completed", "s1"));
        assert_ne!(a, delivery_id("j", "1-0", "job.completed", "s2"));
        assert_ne!(a, delivery_id("j", "2-0", "job.completed", "s1"));
        assert!(a.starts_with("msg_") && a.len() == 30);
        assert!(
            crate::webhook::Message::with_id(a, "{}").is_ok(),
            "usable as a webhook-id"
        );
    }

    #[test]
    fn a_jobs_own_targets_follow_their_events() {
        let spec = r#"{"webhooks":[{"url":"http://a/","secret":"s"},{"url":"http://b/","secret":"t","events":["job.started"]}]}"#;
        let done = job_targets(spec.as_bytes(), "job.completed");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].subscriber, "job:0");
        assert_eq!(done[0].url.as_deref(), Some("http://a/"));
        assert_eq!(
            job_targets(spec.as_bytes(), "job.started")[0].subscriber,
            "job:1"
        );
        assert!(job_targets(b"{}", "job.completed").is_empty());
        assert!(job_targets(b"{\"webhooks\":\"\xff\"}", "job.completed").is_empty());
    }
}
