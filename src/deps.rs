//! Dependencies between jobs: a job with `after` waits (status `waiting`) until
//! its parents have ended, then runs, or is aborted `dependency_failed` when its
//! `after_policy` can no longer be met. A parent is named `<id>` (in the child's
//! own queue) or `<queue>/<id>` ([`JobRef`]).
//!
//! Keys (see `queue::Keys`), each in its job's queue's slot:
//! - `<prefix>:{<q>}:job:<id>:after`, the child's wait: `state` (`waiting`, then
//!   `released`), `policy`, `queue`, `deadline` (ms), `remaining`, one field
//!   `parent:<pid>` per parent (`parent:<queue>/<pid>` for one in another
//!   queue: [`JobRef::text_in`]), `waiting` or how it ended (`completed`,
//!   `aborted (exit_code)`), and once released `outcome` (`ready` | `failed`)
//!   with `failed_parent` and `why`. While waiting it also keeps the entry to
//!   release (`spec`, `token`).
//! - `<prefix>:{<q>}:job:<pid>:dependents`: the children (`<queue>/<id>`)
//!   waiting for `pid`; and in the parent's hash, the field `dependents` = `1`
//!   from the first child on (the parent's terminal write reads it instead of
//!   looking for the set). A child that registers before any worker has seen its
//!   parent makes the parent's hash with that one field; the parent's claim
//!   keeps it.
//! - `<prefix>:{<q>}:after:deadlines`: the queue's waiting children by the end of
//!   their wait (ms).
//!
//! No step touches two jobs' keys unless they are the same job: a parent and its
//! child may be in different queues, so in different Redis Cluster slots.
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

use crate::job::{After, JobRef, Status};
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

/// Opens (or looks again at) a child's wait, for the entry that owns it: the
/// first step of [`wait`], in the child's slot.
/// KEYS: 1 job hash, 2 wait hash. ARGV: 1 entry, 2 consumer, 3 policy, 4 queue,
/// 5 deadline (ms), 6 now, 7.. parent references (`<queue>/<id>`).
/// Returns `{'open', <parents still waited for>...}`, or what [`Waited`] says.
static WAIT_OPEN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local job, wait = KEYS[1], KEYS[2]
        local own = redis.call('HMGET', job, 'entry', 'owner', 'status', 'requeue_token')
        if own[1] ~= ARGV[1] or own[2] ~= ARGV[2] then return {'not_owned'} end
        local state = redis.call('HGET', wait, 'state')
        if state == 'released' then
            -- Released, but its new entry has not claimed the job yet: this is the
            -- entry that parked it, delivered again; the new one runs it.
            if own[3] == 'waiting' and own[4] then return {'stale'} end
            return {'released'}
        end
        if not state then
            redis.call('HSET', wait, 'state', 'waiting', 'policy', ARGV[3], 'queue', ARGV[4],
                'deadline', ARGV[5], 'remaining', #ARGV - 6, 'since', ARGV[6])
            for i = 7, #ARGV do redis.call('HSET', wait, 'parent:' .. ARGV[i], 'waiting') end
        end
        local open = {'open'}
        for i = 7, #ARGV do
            if redis.call('HGET', wait, 'parent:' .. ARGV[i]) == 'waiting' then
                table.insert(open, ARGV[i])
            end
        end
        return open
        ",
    )
});

/// Looks at one parent for a waiting child, in the parent's slot: how it ended,
/// or, while it has not, adds the child to its dependents so that the parent's
/// end records itself in the child's wait ([`parent_ended`]).
/// KEYS: 1 parent hash, 2 parent's dependents. ARGV: 1 child reference.
/// Returns `{status, reason}` when the parent ended, `{}` otherwise.
static WATCH_PARENT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local h = redis.call('HMGET', KEYS[1], 'status', 'reason')
        if h[1] == 'completed' or h[1] == 'aborted' then return {h[1], h[2] or ''} end
        redis.call('SADD', KEYS[2], ARGV[1])
        -- The parent's terminal write reads this flag with the fields it reads
        -- anyway, instead of looking for the set (see `state`).
        redis.call('HSET', KEYS[1], 'dependents', '1')
        return {}
        ",
    )
});

/// Records that a parent ended in a child's wait (no release: [`WAIT_PARK`]
/// decides). KEYS: 1 wait hash. ARGV: parent reference, status, reason.
static RECORD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{COMMON}{}",
        r"
        if redis.call('HGET', KEYS[1], 'state') ~= 'waiting' then return 0 end
        record(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
        return 1
        "
    ))
});

/// The last step of [`wait`], in the child's slot: lets the child through when
/// its wait is decided (by now, or by a parent's end since it opened), or parks
/// it: its entry kept in the wait, its deadline set, status `waiting`.
/// KEYS: 1 job hash, 2 wait hash, 3 events stream, 4 deadlines. ARGV: 1 entry,
/// 2 consumer, 3 events channel, 4 `job.waiting` event, 5 child id, 6 requeue
/// token, 7 the entry's spec, 8 deadline (ms), 9 events stream cap, 10 now.
static WAIT_PARK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{COMMON}{}",
        r"
        local job, wait = KEYS[1], KEYS[2]
        if redis.call('HGET', job, 'entry') ~= ARGV[1] or redis.call('HGET', job, 'owner') ~= ARGV[2] then
            return {'not_owned', '', ''}
        end
        local outcome
        if redis.call('HGET', wait, 'state') == 'released' then
            -- A parent's end released it between the steps, with no entry to add
            -- (the wait had none yet): this entry runs it.
            outcome = redis.call('HGET', wait, 'outcome')
        else
            outcome = decided(wait)
            if outcome then
                redis.call('HSET', wait, 'state', 'released', 'outcome', outcome, 'released_at', ARGV[10])
                redis.call('ZREM', KEYS[4], ARGV[5])
            end
        end
        if outcome then
            return {outcome, redis.call('HGET', wait, 'failed_parent') or '', redis.call('HGET', wait, 'why') or ''}
        end
        redis.call('HSET', wait, 'spec', ARGV[7], 'token', ARGV[6])
        redis.call('ZADD', KEYS[4], 'NX', ARGV[8], ARGV[5])
        redis.call('HSET', job, 'status', 'waiting', 'requeue_token', ARGV[6])
        redis.call('PUBLISH', ARGV[3], ARGV[4])
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'type', 'job.waiting', 'job', ARGV[5], 'event', ARGV[4])
        return {'waiting', '', ''}
        "
    ))
});

/// Records that a parent ended in one child's wait, and releases the child when
/// that was the last thing it waited for (or broke its policy).
/// KEYS: 1 wait hash, 2 the child's queue stream, 3 the child queue's deadlines.
/// ARGV: parent reference, status, reason, child id, now.
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
/// KEYS: 1 wait hash, 2 the child's queue stream, 3 deadlines. ARGV: child id,
/// now, the wait in seconds, then for each parent its reference and whether a
/// worker has claimed it (`1` | `0`, read before this step, in its own slot).
static RAN_OUT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{COMMON}{}",
        r"
        if redis.call('HGET', KEYS[1], 'state') ~= 'waiting' then
            redis.call('ZREM', KEYS[3], ARGV[1])
            return 0
        end
        local who, why = '', 'its wait ran out (jobs.dependency_wait_seconds)'
        for i = 4, #ARGV, 2 do
            local pid = ARGV[i]
            if redis.call('HGET', KEYS[1], 'parent:' .. pid) == 'waiting' then
                who = pid
                -- Arrived: a worker claimed it (a hash with only the flag a
                -- child left there, or a cancel request, is not an arrival).
                if ARGV[i + 1] == '1' then
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
/// it unless there is nothing to wait for. Three kinds of step, each in one
/// slot (a parent may be in another queue): open the wait (child), look at each
/// parent still waited for (parent; a parent that ended already is recorded in
/// the wait by the child), then decide or park (child). A parent that ends in
/// between finds the child among its dependents and records itself: the record
/// is idempotent, so whoever sees the end first records it. Every step may be
/// taken again (a redelivery, a retry after a lost connection).
pub async fn wait(
    conn: &mut Conn,
    keys: &Keys,
    w: &WaitFor<'_>,
    events_max_len: usize,
) -> Result<Waited, StoreError> {
    let now = crate::time::now();
    let mut open = WAIT_OPEN.key(keys.job(w.queue, w.id));
    open.key(keys.wait(w.queue, w.id))
        .arg(w.entry)
        .arg(w.consumer)
        .arg(w.after.policy.as_str())
        .arg(w.queue)
        .arg(w.deadline_ms)
        .arg(&now);
    for p in &w.after.parents {
        open.arg(p.text_in(w.queue));
    }
    let opened: Vec<String> = open.invoke_async(conn).await?;
    match opened.first().map(String::as_str) {
        Some("not_owned") => return Ok(Waited::NotOwned),
        Some("stale") => return Ok(Waited::Stale),
        _ => {}
    }
    let child = JobRef::new(w.queue, w.id).to_string();
    for text in opened.iter().skip(1) {
        let Some(parent) = JobRef::parse(text, w.queue) else {
            continue;
        };
        let ended: Vec<String> = WATCH_PARENT
            .key(keys.job(&parent.queue, &parent.id))
            .key(keys.dependents(&parent.queue, &parent.id))
            .arg(&child)
            .invoke_async(conn)
            .await?;
        if let [status, reason] = ended.as_slice() {
            let _: i64 = RECORD
                .key(keys.wait(w.queue, w.id))
                .arg(text)
                .arg(status)
                .arg(reason)
                .invoke_async(conn)
                .await?;
        }
    }
    let (kind, parent, why): (String, String, String) = WAIT_PARK
        .key(keys.job(w.queue, w.id))
        .key(keys.wait(w.queue, w.id))
        .key(keys.events(w.queue))
        .key(keys.wait_deadlines(w.queue))
        .arg(w.entry)
        .arg(w.consumer)
        .arg(keys.events_channel())
        .arg(w.event)
        .arg(w.id)
        .arg(crate::queue::new_token())
        .arg(w.spec)
        .arg(w.deadline_ms)
        .arg(events_max_len)
        .arg(&now)
        .invoke_async(conn)
        .await?;
    Ok(match kind.as_str() {
        "not_owned" => Waited::NotOwned,
        "waiting" => Waited::Waiting,
        "ready" => Waited::Ready,
        _ => Waited::Failed { parent, why },
    })
}

/// Job `parent` ended (`status`, `reason`): records it in the wait of every job
/// waiting for it, releasing those that wait for nothing more. Idempotent.
/// Returns how many were released by this call. One step per child, in the
/// child's slot.
pub async fn parent_ended(
    conn: &mut Conn,
    keys: &Keys,
    parent: &JobRef,
    status: Status,
    reason: &str,
    retention: u64,
) -> Result<usize, StoreError> {
    let dependents = keys.dependents(&parent.queue, &parent.id);
    let children: Vec<String> = conn.smembers(&dependents).await?;
    let mut released = 0;
    for text in &children {
        let Some(child) = JobRef::parse(text, &parent.queue) else {
            continue;
        };
        let wait = keys.wait(&child.queue, &child.id);
        let spec: Option<Vec<u8>> = conn.hget(&wait, "spec").await?;
        // Released into the lane of its priority, as any entry Dockhand adds.
        let lane = keys.lane(
            &child.queue,
            crate::job::requested_priority(&spec.unwrap_or_default()),
        );
        let n: i64 = PARENT_ENDED
            .key(&wait)
            .key(lane)
            .key(keys.wait_deadlines(&child.queue))
            .arg(parent.text_in(&child.queue))
            .arg(status.as_str())
            .arg(reason)
            .arg(&child.id)
            .arg(crate::time::now())
            .invoke_async(conn)
            .await?;
        released += n as usize;
    }
    if !children.is_empty() {
        // Children arriving from now on see the parent's hash instead.
        let _: bool = conn.expire(&dependents, retention as i64).await?;
    }
    Ok(released)
}

/// Ends the waits of `queue` that ran out by `now_ms` (at most `max`); returns
/// how many.
pub async fn expire_due(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    now_ms: i64,
    wait_seconds: u64,
    max: usize,
) -> Result<usize, StoreError> {
    let deadlines = keys.wait_deadlines(queue);
    let due: Vec<String> = conn
        .zrangebyscore_limit(&deadlines, "-inf", now_ms, 0, max as isize)
        .await?;
    let mut ended = 0;
    for child in &due {
        let wait = keys.wait(queue, child);
        let state: HashMap<String, String> = conn.hgetall(&wait).await?;
        if state.is_empty() {
            let _: i64 = conn.zrem(&deadlines, child).await?;
            continue;
        }
        let waiting: Vec<&str> = parents_in(&state)
            .filter(|(_, how)| *how == "waiting")
            .map(|(p, _)| p)
            .collect();
        // Whether each parent arrived: read in its own slot, before the step.
        let mut arrived = Vec::with_capacity(waiting.len());
        for text in &waiting {
            let claimed = match JobRef::parse(text, queue) {
                Some(p) => conn.hexists(keys.job(&p.queue, &p.id), "entry").await?,
                None => false,
            };
            arrived.push(claimed);
        }
        let priority = crate::job::requested_priority(
            state.get("spec").map(String::as_bytes).unwrap_or_default(),
        );
        let mut inv = RAN_OUT.key(&wait);
        inv.key(keys.lane(queue, priority)).key(&deadlines);
        inv.arg(child).arg(crate::time::now()).arg(wait_seconds);
        for (p, claimed) in waiting.iter().zip(&arrived) {
            inv.arg(*p).arg(if *claimed { "1" } else { "0" });
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

/// The wait of `job`, if it has one.
pub async fn wait_state(
    conn: &mut Conn,
    keys: &Keys,
    job: &JobRef,
) -> Result<Option<WaitState>, StoreError> {
    let state: HashMap<String, String> = conn.hgetall(keys.wait(&job.queue, &job.id)).await?;
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

/// The files the parents returned (`<prefix>:{<q>}:job:<pid>:files`): parent
/// id, file name, content, in the order of `parents` and then by name.
pub async fn parent_files(
    conn: &mut Conn,
    keys: &Keys,
    parents: &[JobRef],
) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for p in parents {
        let mut files: Vec<(String, Vec<u8>)> = conn.hgetall(keys.files(&p.queue, &p.id)).await?;
        files.sort();
        out.extend(
            files
                .into_iter()
                .map(|(name, bytes)| (p.id.clone(), name, bytes)),
        );
    }
    Ok(out)
}

/// After `job` ended: its wait and its dependents set expire with it.
pub fn expire_with_job(pipe: &mut redis::Pipeline, keys: &Keys, job: &JobRef, retention: u64) {
    pipe.expire(keys.wait(&job.queue, &job.id), retention as i64)
        .ignore()
        .expire(keys.dependents(&job.queue, &job.id), retention as i64)
        .ignore();
}
