//! Dependencies between jobs: a job with `after` waits (status `waiting`) until
//! its parents have ended, then runs, or is aborted `dependency_failed` when its
//! `after_policy` can no longer be met.
//!
//! Keys (see `queue::Keys`):
//! - `<prefix>:job:<id>:after`, the child's wait: `state` (`waiting`, then
//!   `released`), `policy`, `queue`, `deadline` (ms), `remaining`, one field
//!   `parent:<pid>` per parent (`waiting`, or how it ended: `completed`,
//!   `aborted (exit_code)`), and once released `outcome` (`ready` | `failed`)
//!   with `failed_parent` and `why`. While waiting it also keeps the entry to
//!   release (`spec`, `token`).
//! - `<prefix>:job:<pid>:dependents`: the children waiting for `pid`; and in the
//!   parent's hash, the field `dependents` = `1` from the first child on (the
//!   parent's terminal write reads it instead of looking for the set). A child
//!   that registers before any worker has seen its parent makes the parent's
//!   hash with that one field; the parent's claim keeps it.
//! - `<prefix>:after:deadlines`: waiting children by the end of their wait (ms).
//!
//! Invariants:
//! - A parent's end is recorded in a child's wait by one Lua step per (parent,
//!   child), which does nothing when that parent is recorded already: whoever
//!   sees the end first (the parent's end step, or the child when it arrives
//!   after its parent ended) records it, and any later look is a no-op.
//! - A child is released once: the step that finds nothing left to wait for (or
//!   the policy broken, or the wait run out) sets `state` to `released` and adds
//!   the child's entry to its queue's stream with a requeue token, in that same
//!   step. Two parents ending at once are two steps, one after the other; a
//!   worker that dies between two steps leaves the parent's entry pending, and
//!   its redelivery takes the steps again.
//! - A child that can never be released (a parent that never arrives, or a
//!   cycle) is released `failed` when its deadline passes
//!   (`jobs.dependency_wait_seconds`).
//! - A released `failed` child is aborted by the worker that claims it, through
//!   the ordinary terminal write; that write ends the child as a parent in
//!   turn, so its own dependents are aborted after it (transitively).

use crate::job::{After, Status};
use crate::queue::Keys;
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::HashMap;
use std::sync::LazyLock;

/// Lua shared by the steps: recording one parent's end in a child's wait,
/// whether the wait is over, and releasing the child.
const COMMON: &str = r"
local function record(wait, pid, status, reason)
    local field = 'parent:' .. pid
    if redis.call('HGET', wait, field) ~= 'waiting' then return end
    local ended = status
    if reason ~= '' then ended = status .. ' (' .. reason .. ')' end
    redis.call('HSET', wait, field, ended)
    redis.call('HINCRBY', wait, 'remaining', -1)
    if status ~= 'completed' and redis.call('HGET', wait, 'policy') == 'all_completed'
        and redis.call('HEXISTS', wait, 'failed_parent') == 0 then
        redis.call('HSET', wait, 'failed_parent', pid, 'why', 'parent ' .. pid .. ' ended ' .. ended)
    end
end
local function decided(wait)
    if redis.call('HEXISTS', wait, 'failed_parent') == 1 then return 'failed' end
    if tonumber(redis.call('HGET', wait, 'remaining')) <= 0 then return 'ready' end
    return nil
end
local function release(wait, stream, deadlines, child, outcome, now)
    redis.call('HSET', wait, 'state', 'released', 'outcome', outcome, 'released_at', now)
    redis.call('ZREM', deadlines, child)
    local spec, token = redis.call('HGET', wait, 'spec'), redis.call('HGET', wait, 'token')
    if spec and token then
        redis.call('XADD', stream, '*', 'job', spec, 'token', token)
        -- The new entry carries it now; the wait need not keep its secrets.
        redis.call('HDEL', wait, 'spec')
    end
end
";

/// Registers (or looks again at) a child's wait, for the entry that owns it.
/// KEYS: 1 job hash, 2 wait hash, 3 events stream, 4 deadlines, 4+i parent i's
/// job hash, 4+n+i parent i's dependents set. ARGV: 1 entry, 2 consumer, 3
/// events channel, 4 `job.waiting` event, 5 child id, 6 requeue token, 7 the
/// entry's spec, 8 policy, 9 deadline (ms), 10 queue, 11 events stream cap, 12
/// n, 13 now, 14.. parent ids.
static WAIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{COMMON}{}",
        r"
        local job, wait = KEYS[1], KEYS[2]
        if redis.call('HGET', job, 'entry') ~= ARGV[1] or redis.call('HGET', job, 'owner') ~= ARGV[2] then
            return {'not_owned', '', ''}
        end
        local state = redis.call('HGET', wait, 'state')
        if state == 'released' then
            -- Released, but its new entry has not claimed the job yet: this is the
            -- entry that parked it, delivered again; the new one runs it.
            if redis.call('HGET', job, 'status') == 'waiting' and redis.call('HEXISTS', job, 'requeue_token') == 1 then
                return {'stale', '', ''}
            end
            return {redis.call('HGET', wait, 'outcome'), redis.call('HGET', wait, 'failed_parent') or '',
                redis.call('HGET', wait, 'why') or ''}
        end
        local n = tonumber(ARGV[12])
        if not state then
            redis.call('HSET', wait, 'state', 'waiting', 'policy', ARGV[8], 'queue', ARGV[10],
                'deadline', ARGV[9], 'remaining', n, 'since', ARGV[13])
            for i = 1, n do redis.call('HSET', wait, 'parent:' .. ARGV[13 + i], 'waiting') end
        end
        for i = 1, n do
            local pid = ARGV[13 + i]
            local status = redis.call('HGET', KEYS[4 + i], 'status')
            if status == 'completed' or status == 'aborted' then
                record(wait, pid, status, redis.call('HGET', KEYS[4 + i], 'reason') or '')
            elseif redis.call('HGET', wait, 'parent:' .. pid) == 'waiting' then
                redis.call('SADD', KEYS[4 + n + i], ARGV[5])
                -- The parent's terminal write reads this flag with the fields it
                -- reads anyway, instead of looking for the set (see `state`).
                redis.call('HSET', KEYS[4 + i], 'dependents', '1')
            end
        end
        local outcome = decided(wait)
        if outcome then
            redis.call('HSET', wait, 'state', 'released', 'outcome', outcome, 'released_at', ARGV[13])
            redis.call('ZREM', KEYS[4], ARGV[5])
            return {outcome, redis.call('HGET', wait, 'failed_parent') or '', redis.call('HGET', wait, 'why') or ''}
        end
        redis.call('HSET', wait, 'spec', ARGV[7], 'token', ARGV[6])
        redis.call('ZADD', KEYS[4], 'NX', ARGV[9], ARGV[5])
        redis.call('HSET', job, 'status', 'waiting', 'requeue_token', ARGV[6])
        redis.call('PUBLISH', ARGV[3], ARGV[4])
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[11], '*', 'type', 'job.waiting', 'job', ARGV[5], 'event', ARGV[4])
        return {'waiting', '', ''}
        "
    ))
});

/// Records that a parent ended in one child's wait, and releases the child when
/// that was the last thing it waited for (or broke its policy).
/// KEYS: 1 wait hash, 2 the child's queue stream, 3 deadlines. ARGV: parent id,
/// status, reason, child id, now.
static PARENT_ENDED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{COMMON}{}",
        r"
        if redis.call('HGET', KEYS[1], 'state') ~= 'waiting' then return 0 end
        record(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
        local outcome = decided(KEYS[1])
        if not outcome then return 0 end
        release(KEYS[1], KEYS[2], KEYS[3], ARGV[4], outcome, ARGV[5])
        return 1
        "
    ))
});

/// Ends a wait that ran out, naming the first parent still waited for.
/// KEYS: 1 wait hash, 2 the child's queue stream, 3 deadlines, 3+i parent i's
/// job hash. ARGV: child id, now, the wait in seconds, then parent ids.
static RAN_OUT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{COMMON}{}",
        r"
        if redis.call('HGET', KEYS[1], 'state') ~= 'waiting' then
            redis.call('ZREM', KEYS[3], ARGV[1])
            return 0
        end
        local who, why = '', 'its wait ran out (jobs.dependency_wait_seconds)'
        for i = 4, #ARGV do
            local pid = ARGV[i]
            if redis.call('HGET', KEYS[1], 'parent:' .. pid) == 'waiting' then
                who = pid
                -- Arrived: a worker claimed it (a hash with only the flag a
                -- child left there, or a cancel request, is not an arrival).
                if redis.call('HEXISTS', KEYS[i], 'entry') == 1 then
                    why = 'parent ' .. pid .. ' had not ended after ' .. ARGV[3] .. ' s (jobs.dependency_wait_seconds)'
                else
                    why = 'parent ' .. pid .. ' never arrived within ' .. ARGV[3] .. ' s (jobs.dependency_wait_seconds)'
                end
                break
            end
        end
        redis.call('HSET', KEYS[1], 'failed_parent', who, 'why', why)
        release(KEYS[1], KEYS[2], KEYS[3], ARGV[1], 'failed', ARGV[2])
        return 1
        "
    ))
});

/// What [`wait`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// The entry does not own the job (any more): do nothing.
    NotOwned,
    /// The job was released while this entry, which parked it, was pending; the
    /// entry made by the release runs it. Acknowledge this one.
    Stale,
    /// Parked: status `waiting`, its entry kept in the wait. Acknowledge.
    Waiting,
    /// Every parent ended as the policy asks: run it.
    Ready,
    /// The policy cannot be met (or the wait ran out): abort it.
    Failed { parent: String, why: String },
}

/// A child and the entry that owns it, asking to wait.
pub struct WaitFor<'a> {
    pub id: &'a str,
    pub queue: &'a str,
    pub entry: &'a str,
    pub consumer: &'a str,
    /// The entry as submitted: what the release adds to the stream again.
    pub spec: &'a [u8],
    pub after: &'a After,
    /// When the wait runs out, if this is its first registration (ms).
    pub deadline_ms: i64,
    /// The `job.waiting` event published when the job is parked.
    pub event: &'a str,
}

/// Registers the child's wait, counting parents that ended already, and parks
/// it unless there is nothing to wait for.
pub async fn wait(
    conn: &mut Conn,
    keys: &Keys,
    w: &WaitFor<'_>,
    events_max_len: usize,
) -> Result<Waited, StoreError> {
    let token = crate::queue::new_token();
    let mut inv = WAIT.key(keys.job(w.id));
    inv.key(keys.wait(w.id))
        .key(keys.events())
        .key(keys.wait_deadlines());
    for p in &w.after.parents {
        inv.key(keys.job(p));
    }
    for p in &w.after.parents {
        inv.key(keys.dependents(p));
    }
    inv.arg(w.entry)
        .arg(w.consumer)
        .arg(keys.events_channel())
        .arg(w.event)
        .arg(w.id)
        .arg(&token)
        .arg(w.spec)
        .arg(w.after.policy.as_str())
        .arg(w.deadline_ms)
        .arg(w.queue)
        .arg(events_max_len)
        .arg(w.after.parents.len())
        .arg(crate::time::now());
    for p in &w.after.parents {
        inv.arg(p);
    }
    let (kind, parent, why): (String, String, String) = inv.invoke_async(conn).await?;
    Ok(match kind.as_str() {
        "not_owned" => Waited::NotOwned,
        "stale" => Waited::Stale,
        "waiting" => Waited::Waiting,
        "ready" => Waited::Ready,
        _ => Waited::Failed { parent, why },
    })
}

/// Job `parent` ended (`status`, `reason`): records it in the wait of every job
/// waiting for it, releasing those that wait for nothing more. Idempotent.
/// Returns how many were released by this call.
pub async fn parent_ended(
    conn: &mut Conn,
    keys: &Keys,
    parent: &str,
    status: Status,
    reason: &str,
    retention: u64,
) -> Result<usize, StoreError> {
    let children: Vec<String> = conn.smembers(keys.dependents(parent)).await?;
    let mut released = 0;
    for child in &children {
        let (queue, spec): (Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(keys.wait(child))
            .arg("queue")
            .arg("spec")
            .query_async(&mut **conn)
            .await?;
        let Some(queue) = queue else { continue };
        // Released into the lane of its priority, as any entry Dockhand adds.
        let lane = keys.lane(
            &queue,
            crate::job::requested_priority(&spec.unwrap_or_default()),
        );
        let n: i64 = PARENT_ENDED
            .key(keys.wait(child))
            .key(lane)
            .key(keys.wait_deadlines())
            .arg(parent)
            .arg(status.as_str())
            .arg(reason)
            .arg(child)
            .arg(crate::time::now())
            .invoke_async(conn)
            .await?;
        released += n as usize;
    }
    if !children.is_empty() {
        // Children arriving from now on see the parent's hash instead.
        let _: bool = conn
            .expire(keys.dependents(parent), retention as i64)
            .await?;
    }
    Ok(released)
}

/// Ends the waits that ran out by `now_ms` (at most `max`); returns how many.
pub async fn expire_due(
    conn: &mut Conn,
    keys: &Keys,
    now_ms: i64,
    wait_seconds: u64,
    max: usize,
) -> Result<usize, StoreError> {
    let due: Vec<String> = conn
        .zrangebyscore_limit(keys.wait_deadlines(), "-inf", now_ms, 0, max as isize)
        .await?;
    let mut ended = 0;
    for child in &due {
        let state: HashMap<String, String> = conn.hgetall(keys.wait(child)).await?;
        let Some(queue) = state.get("queue") else {
            let _: i64 = conn.zrem(keys.wait_deadlines(), child).await?;
            continue;
        };
        let waiting: Vec<&str> = parents_in(&state)
            .filter(|(_, how)| *how == "waiting")
            .map(|(p, _)| p)
            .collect();
        let mut inv = RAN_OUT.key(keys.wait(child));
        let priority = crate::job::requested_priority(
            state.get("spec").map(String::as_bytes).unwrap_or_default(),
        );
        inv.key(keys.lane(queue, priority))
            .key(keys.wait_deadlines());
        for p in &waiting {
            inv.key(keys.job(p));
        }
        inv.arg(child).arg(crate::time::now()).arg(wait_seconds);
        for p in &waiting {
            inv.arg(*p);
        }
        let n: i64 = inv.invoke_async(conn).await?;
        ended += n as usize;
    }
    Ok(ended)
}

/// The parents in a wait hash, with how each ended (or `waiting`), by id.
fn parents_in(state: &HashMap<String, String>) -> impl Iterator<Item = (&str, &str)> {
    let mut parents: Vec<(&str, &str)> = state
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("parent:")?, v.as_str())))
        .collect();
    parents.sort();
    parents.into_iter()
}

/// A job's wait as people read it (`dockhand status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WaitState {
    pub state: String,
    pub policy: String,
    /// Each parent, and how it ended (or `waiting`).
    pub parents: Vec<(String, String)>,
    /// When the wait runs out (RFC 3339).
    pub deadline: Option<String>,
    pub outcome: Option<String>,
    pub why: Option<String>,
}

/// The wait of job `id`, if it has one.
pub async fn wait_state(
    conn: &mut Conn,
    keys: &Keys,
    id: &str,
) -> Result<Option<WaitState>, StoreError> {
    let state: HashMap<String, String> = conn.hgetall(keys.wait(id)).await?;
    if state.is_empty() {
        return Ok(None);
    }
    let get = |k: &str| state.get(k).filter(|v| !v.is_empty()).cloned();
    let deadline = get("deadline")
        .and_then(|ms| ms.parse::<i64>().ok())
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    Ok(Some(WaitState {
        state: get("state").unwrap_or_default(),
        policy: get("policy").unwrap_or_default(),
        parents: parents_in(&state)
            .map(|(p, how)| (p.to_string(), how.to_string()))
            .collect(),
        deadline,
        outcome: get("outcome"),
        why: get("why"),
    }))
}

/// The files the parents returned (`<prefix>:job:<pid>:files`): parent, file
/// name, content, in the order of `parents` and then by name.
pub async fn parent_files(
    conn: &mut Conn,
    keys: &Keys,
    parents: &[String],
) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for p in parents {
        let mut files: Vec<(String, Vec<u8>)> = conn.hgetall(keys.files(p)).await?;
        files.sort();
        out.extend(
            files
                .into_iter()
                .map(|(name, bytes)| (p.clone(), name, bytes)),
        );
    }
    Ok(out)
}

/// After job `id` ended: its wait and its dependents set expire with it.
pub fn expire_with_job(pipe: &mut redis::Pipeline, keys: &Keys, id: &str, retention: u64) {
    pipe.expire(keys.wait(id), retention as i64)
        .ignore()
        .expire(keys.dependents(id), retention as i64)
        .ignore();
}
