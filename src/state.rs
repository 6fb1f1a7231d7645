//! The job hash `dockhand:{<q>}:job:<id>`, its transitions, and the events they publish.
//!
//! Invariants:
//! - A job hash belongs to the stream entry that created it (field `entry`). Every
//!   write checks that field in the same Lua step, so a stale run of the job (say,
//!   a redelivery) can never overwrite the state written for another entry, and a
//!   second entry with the same `id` is recognised as a duplicate.
//! - Each state change and its event on the queue's events stream happen in one script:
//!   there is no state without its event, and no event for a state not written.
//! - A terminal write sets the retention expiry on the hash, and on the job's
//!   files, log and wait when they may exist, in the same step; it adds the job
//!   to the listing indexes there too, and acknowledges its entry there when
//!   nothing has to come between (see [`write_with`]).
//! - The fleet-wide metrics a state moves (a job finished, its duration, its queue
//!   wait: [`observed`]) are counted by the writer once the write has returned
//!   written: never for a write that was refused, never twice for one write.

use crate::job::{Reason, Status};
use crate::metrics;
use crate::queue::Keys;
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use serde::Serialize;
use std::sync::LazyLock;

pub mod progress;

/// A returned file, as listed in the job state and its events.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// Where the file went: `redis` (`dockhand:{<q>}:job:<id>:files`), or the upload
    /// URL without its query (a presigned query is a credential: never stored).
    pub location: String,
}

/// Where a file kept in the job's files hash is said to be.
pub const IN_REDIS: &str = "redis";

/// The job state as Dockhand knows it: what the hash holds and what events carry.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: String,
    pub queue: String,
    pub status: Status,
    pub reason: Option<Reason>,
    pub attempt: u32,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub worker: Option<String>,
    pub exit_code: Option<i64>,
    pub image: Option<String>,
    pub image_id: Option<String>,
    /// The commit a job from `git` was built from.
    pub commit: Option<String>,
    pub result_text: Option<String>,
    pub result_data: Option<serde_json::Value>,
    pub error: Option<String>,
    pub files: Vec<FileInfo>,
    pub files_dropped: Vec<String>,
    pub metadata: Option<serde_json::Value>,
    /// The job's last log lines, for its webhook body (not stored in the hash:
    /// the log stream has them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// What this run knows to be absent from Redis (never stored: it only
    /// spares the terminal write an `EXPIRE` of a key that does not exist).
    #[serde(skip)]
    pub absent: Absent,
}

/// Keys of a job that its run knows do not exist.
#[derive(Debug, Clone, Copy, Default)]
pub struct Absent {
    /// No files: a first attempt that returned none.
    pub files: bool,
    /// No log: not a line stored, by this run or an earlier one.
    pub log: bool,
}

impl JobRecord {
    pub fn new(id: &str, queue: &str, created_at: String) -> Self {
        JobRecord {
            id: id.to_string(),
            queue: queue.to_string(),
            status: Status::Queued,
            reason: None,
            attempt: 0,
            created_at,
            started_at: None,
            finished_at: None,
            worker: None,
            exit_code: None,
            image: None,
            image_id: None,
            commit: None,
            result_text: None,
            result_data: None,
            error: None,
            files: Vec::new(),
            files_dropped: Vec::new(),
            metadata: None,
            log_tail: Vec::new(),
            absent: Absent::default(),
        }
    }

    pub fn set_status(&mut self, status: Status) {
        self.status = status;
    }

    /// Marks the job aborted for `reason`, with a message naming what went wrong.
    pub fn abort(&mut self, reason: Reason, error: impl Into<String>) {
        self.status = Status::Aborted;
        self.reason = Some(reason);
        self.error = Some(error.into());
        self.finished_at = Some(crate::time::now());
    }

    pub fn complete(&mut self) {
        self.status = Status::Completed;
        self.reason = None;
        self.finished_at = Some(crate::time::now());
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// The hash fields, every one of them present (empty when unknown), so that
    /// `HGETALL` always shows the same shape.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let json =
            |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
        vec![
            ("id", self.id.clone()),
            ("queue", self.queue.clone()),
            ("status", self.status.as_str().to_string()),
            (
                "reason",
                self.reason
                    .map(Reason::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
            ("attempt", self.attempt.to_string()),
            ("created_at", self.created_at.clone()),
            ("started_at", opt(&self.started_at)),
            ("finished_at", opt(&self.finished_at)),
            ("worker", opt(&self.worker)),
            (
                "exit_code",
                self.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            ),
            ("image", opt(&self.image)),
            ("image_id", opt(&self.image_id)),
            ("commit", opt(&self.commit)),
            ("result_text", opt(&self.result_text)),
            ("result_data", json(&self.result_data)),
            ("error", opt(&self.error)),
            (
                "files",
                serde_json::to_string(&self.files).unwrap_or_default(),
            ),
            (
                "files_dropped",
                serde_json::to_string(&self.files_dropped).unwrap_or_default(),
            ),
            ("metadata", json(&self.metadata)),
        ]
    }

    /// The event body (contract section 5): `{"type","timestamp","data"}`, at most
    /// [`MAX_EVENT_BYTES`]: it is published, kept in the events stream and sent in
    /// every webhook. Past the cap the largest parts are left out, in the order of
    /// [`LEFT_OUT_FIRST`], and `data.left_out` names them (the job hash and the
    /// job's log still have them).
    pub fn event(&self, kind: &str) -> String {
        /// The body in one pass over the record (no `Value` tree in between).
        #[derive(Serialize)]
        struct Body<'a, D> {
            #[serde(rename = "type")]
            kind: &'a str,
            timestamp: &'a str,
            data: &'a D,
        }
        fn render<D: Serialize>(kind: &str, timestamp: &str, data: &D) -> String {
            serde_json::to_string(&Body {
                kind,
                timestamp,
                data,
            })
            .unwrap_or_default()
        }
        let now = crate::time::now();
        let body = |data: &serde_json::Value| render(kind, &now, data);
        let mut text = render(kind, &now, self);
        if text.len() <= MAX_EVENT_BYTES {
            return text;
        }
        // Past the cap (rare): as a tree, to leave parts out one by one.
        let mut data = serde_json::to_value(self).unwrap_or_default();
        let mut left_out = Vec::new();
        for field in LEFT_OUT_FIRST {
            if text.len() <= MAX_EVENT_BYTES {
                break;
            }
            if data.get(field).is_some_and(|v| !v.is_null()) {
                data[field] = serde_json::Value::Null;
                left_out.push(field);
                data["left_out"] = left_out.clone().into();
                text = body(&data);
            }
        }
        text
    }
}

/// The most bytes one event body takes (see [`JobRecord::event`]).
pub const MAX_EVENT_BYTES: usize = 256 << 10;
/// The parts of an event left out, in this order, while it is over the cap.
const LEFT_OUT_FIRST: [&str; 7] = [
    "log_tail",
    "result_data",
    "result_text",
    "files",
    "files_dropped",
    "error",
    "metadata",
];

/// What [`claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First sight of this job: its hash was created, `job.queued` published.
    New,
    /// Another entry already owns this id: this one is a duplicate submission.
    Duplicate { status: String },
    /// This entry was delivered before (a worker died or lost it).
    Redelivered { status: String },
    /// A new entry made by Dockhand itself to run the job again (a retry, a
    /// delay that came due, a job handed back by a draining worker).
    Requeued,
}

/// What the job hash said when an entry claimed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub claim: Claim,
    /// The job was started in the claim's own step (see [`claim`]).
    pub started: bool,
    /// Attempts already started.
    pub attempt: u32,
    /// How many times the current entry has been delivered, this one included.
    pub deliveries: u32,
    /// `dockhand cancel` asked for this job.
    pub cancel_requested: bool,
    /// When the job was first submitted (a later entry for it keeps this time).
    pub created_at: String,
}

/// Creates or takes over the job hash for `entry`, and makes `consumer` its owner.
/// KEYS[1] job hash, KEYS[2] the queue's events stream, KEYS[3] job log,
/// KEYS[4] job files, KEYS[5] the queue's listing index `all`: all in the
/// queue's slot.
/// ARGV: entry, id, queue, created_at, spec, events channel, queued event,
/// consumer, requeue token ('' when the entry has none), events stream cap, the
/// spec's unique_for_seconds (0: none), now (ms), created_at in ms (the score),
/// the `job.started` event ('' for none), then the started record's
/// field/value pairs.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local key, entry, consumer, token = KEYS[1], ARGV[1], ARGV[8], ARGV[9]
        -- Every field this step looks at, in one read.
        local h = redis.call('HMGET', key, 'entry', 'status', 'attempt', 'deliveries',
            'cancel_requested', 'created_at', 'created_ms', 'requeue_token')
        local owner, status, attempt, deliveries, cancel, created =
            h[1], h[2], h[3] or '0', h[4] or '0', h[5] or '', h[6] or ''
        local function reply(kind)
            return {kind, status or '', attempt, deliveries, cancel, created}
        end
        if owner and owner ~= entry then
            if token ~= '' and h[8] == token then
                redis.call('HSET', key, 'entry', entry, 'owner', consumer, 'deliveries', 1)
                redis.call('HDEL', key, 'requeue_token')
                deliveries = '1'
                return reply('requeued')
            end
            -- unique_for_seconds: past the window, a finished job's id is free again;
            -- the new entry starts the job afresh (its last run's state, log and
            -- files are dropped).
            local window, now = tonumber(ARGV[11]), tonumber(ARGV[12])
            local since = tonumber(h[7] or '0') or 0
            if not (window > 0 and (status == 'completed' or status == 'aborted') and since + window * 1000 <= now) then
                return reply('duplicate')
            end
            redis.call('DEL', key, KEYS[3], KEYS[4])
            owner, status, attempt, deliveries, cancel, created = nil, nil, '0', '0', '', ''
        end
        if owner then
            deliveries = tostring(redis.call('HINCRBY', key, 'deliveries', 1))
            if status ~= 'completed' and status ~= 'aborted' then
                redis.call('HSET', key, 'owner', consumer)
                if h[8] then redis.call('HDEL', key, 'requeue_token') end
            end
            return reply('redelivered')
        end
        -- A job that runs at once starts in this same step (see `claim`): its
        -- started record's fields come last in the one HSET, so they win.
        local start = ARGV[14] ~= '' and cancel == '' and not status
        if status then
            redis.call('HSET', key, 'entry', entry, 'owner', consumer, 'id', ARGV[2], 'queue', ARGV[3],
                'spec', ARGV[5], 'deliveries', 1)
        elseif start then
            status, attempt, created = 'queued', '0', ARGV[4]
            redis.call('HSET', key, 'entry', entry, 'owner', consumer, 'spec', ARGV[5], 'deliveries', 1,
                'created_ms', ARGV[12], unpack(ARGV, 15))
        else
            status, attempt, created = 'queued', '0', ARGV[4]
            redis.call('HSET', key, 'entry', entry, 'owner', consumer, 'id', ARGV[2], 'queue', ARGV[3],
                'spec', ARGV[5], 'deliveries', 1, 'status', status, 'created_at', created,
                'created_ms', ARGV[12], 'attempt', attempt)
        end
        deliveries = '1'
        redis.call('PUBLISH', ARGV[6], ARGV[7])
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], '*', 'type', 'job.queued', 'job', ARGV[2], 'event', ARGV[7])
        -- The queue's listing index (see `listing`).
        redis.call('ZADD', KEYS[5], 'NX', ARGV[13], ARGV[2])
        if start then
            redis.call('PUBLISH', ARGV[6], ARGV[14])
            redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], '*', 'type', 'job.started', 'job', ARGV[2], 'event', ARGV[14])
            return reply('started')
        end
        return reply('new')
        ",
    )
});

/// With `start` (the job's first attempt, `running`, as [`write`] would write
/// it), a claim that makes a new job with no cancel asked for starts it in the
/// same step: its fields written and `job.started` published after
/// `job.queued` ([`Claimed::started`]). The caller counts the start's metrics.
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    conn: &mut Conn,
    keys: &Keys,
    entry: &str,
    record: &JobRecord,
    spec: &[u8],
    consumer: &str,
    token: &str,
    events_max_len: usize,
    unique_for_seconds: u64,
    start: Option<&JobRecord>,
) -> Result<Claimed, StoreError> {
    type Reply = (String, String, String, String, String, String);
    let started_event = start.map(|r| r.event("job.started")).unwrap_or_default();
    let q = &record.queue;
    let mut inv = CLAIM.key(keys.job(q, &record.id));
    inv.key(keys.events(q))
        .key(keys.log(q, &record.id))
        .key(keys.files(q, &record.id))
        .key(keys.index(q, "all", ""))
        .arg(entry)
        .arg(&record.id)
        .arg(&record.queue)
        .arg(&record.created_at)
        .arg(spec)
        .arg(keys.events_channel())
        .arg(record.event("job.queued"))
        .arg(consumer)
        .arg(token)
        .arg(events_max_len)
        .arg(unique_for_seconds)
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(crate::listing::millis(&record.created_at))
        .arg(&started_event);
    for (field, value) in start.map(JobRecord::fields).unwrap_or_default() {
        inv.arg(field).arg(value);
    }
    let (kind, status, attempt, deliveries, cancel, created_at): Reply =
        inv.invoke_async(conn).await?;
    let claim = match kind.as_str() {
        "new" | "started" => Claim::New,
        "duplicate" => Claim::Duplicate { status },
        "requeued" => Claim::Requeued,
        _ => Claim::Redelivered { status },
    };
    Ok(Claimed {
        claim,
        started: kind == "started",
        attempt: attempt.parse().unwrap_or(0),
        deliveries: deliveries.parse().unwrap_or(1),
        cancel_requested: !cancel.is_empty(),
        created_at,
    })
}

/// Writes the record's fields if `entry` still owns the job and `consumer` still
/// runs it, publishes the event, and on a terminal state sets the expiry of the
/// hash and of the job's other keys, adds it to the listing indexes, looks for
/// jobs waiting for it, and (when asked, and nobody waits for it) acknowledges
/// its entry: one step. (Its metrics are the caller's to count, once this
/// returns written: see [`observed`].)
/// Returns 0 when the job is not ours any more (another worker took it over):
/// then nothing is written. Otherwise 1, plus 2 when the entry was
/// acknowledged, plus 4 when jobs wait for this one (then it was not).
///
/// The ack needs no look at the entry's pending owner: the ownership check
/// above is in the same step, and a takeover makes the new consumer the hash's
/// owner before it runs anything. In the moment between another consumer's
/// `XAUTOCLAIM` and its claim of the hash, this owner may still finish the job;
/// the other then finds it finished and only acknowledges.
///
/// Every key is in the queue's slot (they carry its hash tag).
///
/// KEYS: 1 job hash, 2 the queue's events stream, 3 files, 4 log, 5 status index, 6 reason
/// index, 7 the job's own wait, 8 the entry's stream. ARGV: 1
/// entry, 2 consumer, 3 channel, 4 event ('' none), 5 expire seconds (0 = not
/// terminal), 6 event type, 7 job id, 8 events stream cap, 9 flags (f: files
/// may exist, l: the log may exist, w: the job has a wait, r: it has a reason,
/// a: acknowledge), 10 created (ms), 11 group, 12 the entry's id in its stream,
/// then field/value pairs.
static WRITE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local own = redis.call('HMGET', KEYS[1], 'entry', 'owner', 'dependents')
        if own[1] ~= ARGV[1] or own[2] ~= ARGV[2] then return 0 end
        local ttl = tonumber(ARGV[5])
        local flags = ARGV[9]
        local function has(f) return string.find(flags, f, 1, true) ~= nil end
        if ttl > 0 then
            -- The terminal event's body, kept for its webhook deliveries (see webhook::outbox).
            redis.call('HSET', KEYS[1], 'event', ARGV[4], unpack(ARGV, 13))
            redis.call('EXPIRE', KEYS[1], ttl)
        else
            redis.call('HSET', KEYS[1], unpack(ARGV, 13))
        end
        if ARGV[4] ~= '' then
            redis.call('PUBLISH', ARGV[3], ARGV[4])
            redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'type', ARGV[6], 'job', ARGV[7], 'event', ARGV[4])
        end
        if ttl == 0 then return 1 end
        -- Keys the caller knows to be absent are left alone: an EXPIRE each otherwise.
        if has('f') then redis.call('EXPIRE', KEYS[3], ttl) end
        if has('l') then redis.call('EXPIRE', KEYS[4], ttl) end
        if has('w') then redis.call('EXPIRE', KEYS[7], ttl) end
        redis.call('ZADD', KEYS[5], ARGV[10], ARGV[7])
        if has('r') then redis.call('ZADD', KEYS[6], ARGV[10], ARGV[7]) end
        -- Jobs waiting for this one (`deps` flags the hash when the first one
        -- registers): their release comes before the ack.
        if own[3] then return 5 end
        if has('a') then
            redis.call('XACK', KEYS[8], ARGV[11], ARGV[12])
            redis.call('XDEL', KEYS[8], ARGV[12])
            return 3
        end
        return 1
        ",
    )
});

/// Where a write goes: the job's owning entry and the consumer running it.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub entry: &'a str,
    pub consumer: &'a str,
}

/// What the writer of a terminal state knows of the job's other keys, and
/// whether the same step may acknowledge the entry.
#[derive(Debug, Clone)]
pub struct Terminal {
    /// The job's files (`dockhand:{<q>}:job:<id>:files`) may exist.
    pub files: bool,
    /// Its log stream may exist.
    pub log: bool,
    /// It had `after` (its wait hash may exist).
    pub wait: bool,
    /// Acknowledge the entry (this stream, this id) in the same step, unless
    /// jobs wait for this one. Only when nothing else must come between the
    /// terminal write and the ack (deliveries, a batch, the dead stream).
    pub ack: Option<(String, String)>,
}

impl Default for Terminal {
    /// Knows nothing: every key may exist, no ack.
    fn default() -> Self {
        Terminal {
            files: true,
            log: true,
            wait: true,
            ack: None,
        }
    }
}

/// What [`write_with`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// The state was written (this entry owns the job).
    pub written: bool,
    /// The entry was acknowledged in the same step.
    pub acked: bool,
    /// Jobs wait for this one (a terminal write only): their release is due.
    pub dependents: bool,
}

/// Writes `record` (plus `extra` fields), publishing `event` (e.g. `job.started`).
#[allow(clippy::too_many_arguments)]
pub async fn write(
    conn: &mut Conn,
    keys: &Keys,
    owner: Owner<'_>,
    record: &JobRecord,
    event: &str,
    extra: &[(&str, String)],
    retention_seconds: u64,
    events_max_len: usize,
) -> Result<bool, StoreError> {
    let w = write_with(
        conn,
        keys,
        owner,
        record,
        event,
        extra,
        retention_seconds,
        events_max_len,
        &Terminal::default(),
    )
    .await?;
    Ok(w.written)
}

/// [`write`], with what the caller knows for a terminal write.
#[allow(clippy::too_many_arguments)]
pub async fn write_with(
    conn: &mut Conn,
    keys: &Keys,
    owner: Owner<'_>,
    record: &JobRecord,
    event: &str,
    extra: &[(&str, String)],
    retention_seconds: u64,
    events_max_len: usize,
    terminal: &Terminal,
) -> Result<Written, StoreError> {
    let body = if event.is_empty() {
        String::new()
    } else {
        record.event(event)
    };
    write_prepared(
        conn,
        keys,
        owner,
        record,
        (event, &body),
        extra,
        retention_seconds,
        events_max_len,
        terminal,
    )
    .await
}

/// [`write_with`], with the event's body made by the caller (`''` for none).
#[allow(clippy::too_many_arguments)]
pub async fn write_prepared(
    conn: &mut Conn,
    keys: &Keys,
    owner: Owner<'_>,
    record: &JobRecord,
    (event, body): (&str, &str),
    extra: &[(&str, String)],
    retention_seconds: u64,
    events_max_len: usize,
    terminal: &Terminal,
) -> Result<Written, StoreError> {
    let ttl = if record.is_terminal() {
        retention_seconds
    } else {
        0
    };
    let q = &record.queue;
    let status_index = keys.index(q, "status", record.status.as_str());
    let reason_index = match record.reason {
        Some(r) => keys.index(q, "reason", r.as_str()),
        None => status_index.clone(),
    };
    let (stream, entry_id) = terminal
        .ack
        .clone()
        .unwrap_or_else(|| (keys.jobs(&record.queue), String::new()));
    let mut flags = String::new();
    for (on, f) in [
        (terminal.files, 'f'),
        (terminal.log, 'l'),
        (terminal.wait, 'w'),
        (record.reason.is_some(), 'r'),
        (terminal.ack.is_some(), 'a'),
    ] {
        if on {
            flags.push(f);
        }
    }
    let mut inv = WRITE.key(keys.job(q, &record.id));
    inv.key(keys.events(q))
        .key(keys.files(q, &record.id))
        .key(keys.log(q, &record.id))
        .key(status_index)
        .key(reason_index)
        .key(keys.wait(q, &record.id))
        .key(stream);
    inv.arg(owner.entry)
        .arg(owner.consumer)
        .arg(keys.events_channel())
        .arg(body)
        .arg(ttl)
        .arg(event)
        .arg(&record.id)
        .arg(events_max_len)
        .arg(flags)
        .arg(crate::listing::millis(&record.created_at))
        .arg(crate::queue::GROUP)
        .arg(entry_id);
    for (field, value) in record.fields().iter().chain(extra.iter()) {
        inv.arg(*field).arg(value);
    }
    let code: i64 = inv.invoke_async(conn).await?;
    Ok(Written {
        written: code & 1 == 1,
        acked: code & 2 == 2,
        dependents: code & 4 == 4,
    })
}

/// The metrics a written state of `record` moves, for the writer to count once
/// the write returned written (so a job is counted once, by the write that
/// ended it): a terminal state is a finished job and its duration (from its
/// last start); the first `job.started` is the job's queue wait (from its
/// submission).
pub fn observed(record: &JobRecord, event: &str) -> Vec<metrics::Inc> {
    let mut incs = Vec::new();
    let queue = record.queue.as_str();
    if record.is_terminal() {
        let reason = record.reason.map(Reason::as_str).unwrap_or_default();
        incs.push(metrics::JOBS_FINISHED.inc(&[queue, record.status.as_str(), reason]));
        if let (Some(start), Some(end)) = (&record.started_at, &record.finished_at) {
            if let Some(s) = metrics::seconds_between(start, end) {
                incs.extend(metrics::JOB_DURATION.observe(&[queue], s));
            }
        }
    } else if event == "job.started" && record.attempt == 1 {
        if let Some(start) = &record.started_at {
            if let Some(s) = metrics::seconds_between(&record.created_at, start) {
                incs.extend(metrics::QUEUE_WAIT.observe(&[queue], s));
            }
        }
    }
    incs
}

/// Records a cancel request for a job that has not finished. Returns the job's
/// status (`None` when no worker has seen it yet: the request waits in a hash of its
/// own that expires after `ttl`), or the terminal status it already has.
static REQUEST_CANCEL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local status = redis.call('HGET', KEYS[1], 'status')
        if status == 'completed' or status == 'aborted' then return status end
        redis.call('HSET', KEYS[1], 'cancel_requested', '1')
        if not status then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
        return status or ''
        ",
    )
});

pub async fn request_cancel(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    id: &str,
    ttl: u64,
) -> Result<Option<String>, StoreError> {
    let status: String = REQUEST_CANCEL
        .key(keys.job(queue, id))
        .arg(ttl)
        .invoke_async(conn)
        .await?;
    let job = crate::job::JobRef::new(queue, id).to_string();
    let _: i64 = conn.publish(keys.cancel_channel(), job).await?;
    Ok((!status.is_empty()).then_some(status))
}

/// Which of these jobs (queue, id) have a cancel request.
pub async fn cancel_requested(
    conn: &mut Conn,
    keys: &Keys,
    jobs: &[(String, String)],
) -> Result<Vec<bool>, StoreError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (queue, id) in jobs {
        pipe.hexists(keys.job(queue, id), "cancel_requested");
    }
    Ok(pipe.query_async(conn).await?)
}

/// Publishes an event that changes no state (`job.duplicate`), and keeps it in the
/// queue's events stream.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    kind: &str,
    job: &str,
    body: &str,
    events_max_len: usize,
) -> Result<(), StoreError> {
    redis::pipe()
        .atomic()
        .publish(keys.events_channel(), body)
        .ignore()
        .xadd_maxlen(
            keys.events(queue),
            redis::streams::StreamMaxlen::Approx(events_max_len),
            "*",
            &[("type", kind), ("job", job), ("event", body)],
        )
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Records a job's returned files (`<prefix>:{<q>}:job:<id>:files`, name → bytes).
pub async fn store_files(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    id: &str,
    files: &[(String, Vec<u8>)],
) -> Result<(), StoreError> {
    if files.is_empty() {
        return Ok(());
    }
    let key = keys.files(queue, id);
    let mut pipe = redis::pipe();
    pipe.atomic().del(&key).ignore();
    for (name, content) in files {
        pipe.hset(&key, name, content.as_slice()).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// Adds the raw entry of a job that could not run to the queue's dead stream.
pub async fn bury(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    max_len: usize,
    fields: &[(&str, &[u8])],
) -> Result<(), StoreError> {
    let _: String = conn
        .xadd_maxlen(
            keys.dead(queue),
            redis::streams::StreamMaxlen::Approx(max_len),
            "*",
            fields,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_field_is_written() {
        let r = JobRecord::new("j", "q", "t".into());
        let names: Vec<&str> = r.fields().iter().map(|(k, _)| *k).collect();
        for f in [
            "id",
            "queue",
            "status",
            "reason",
            "attempt",
            "created_at",
            "started_at",
            "finished_at",
            "worker",
            "exit_code",
            "image",
            "result_text",
            "result_data",
            "error",
        ] {
            assert!(names.contains(&f), "missing {f}");
        }
    }

    #[test]
    fn events_carry_type_timestamp_and_state() {
        let mut r = JobRecord::new("j", "q", "t".into());
        r.metadata = Some(serde_json::json!({"k": 1}));
        r.abort(Reason::Timeout, "too slow");
        let v: serde_json::Value = serde_json::from_str(&r.event("job.aborted")).unwrap();
        assert_eq!(v["type"], "job.aborted");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["data"]["status"], "aborted");
        assert_eq!(v["data"]["reason"], "timeout");
        assert_eq!(v["data"]["metadata"]["k"], 1);
    }

    #[test]
    fn an_event_past_the_cap_leaves_out_its_largest_parts_and_says_which() {
        let mut r = JobRecord::new("j", "q", "2026-01-01T00:00:00Z".into());
        r.complete();
        r.log_tail = vec!["x".repeat(16 << 10); 200];
        r.result_data = Some(serde_json::json!({"blob": "d".repeat(300 << 10)}));
        r.result_text = Some("small".into());
        let text = r.event("job.completed");
        assert!(text.len() <= MAX_EVENT_BYTES, "{}", text.len());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["data"]["left_out"],
            serde_json::json!(["log_tail", "result_data"])
        );
        assert_eq!(v["data"]["result_text"], "small", "what fits is kept");
        assert_eq!(v["data"]["status"], "completed");
        let small = JobRecord::new("j", "q", "2026-01-01T00:00:00Z".into()).event("job.queued");
        assert!(!small.contains("left_out"));
    }
}
