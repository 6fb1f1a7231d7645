//! Periodic schedules as an operator manages them: add, list (with the next and
//! last run), remove, pause and resume. The workers enqueue the ticks
//! (`queue::cron`); this only reads and writes the definitions.
//!
//! Invariants:
//! - A schedule is stored only when its name, cron, time zone and queue are
//!   valid and its job spec passes `submit::check` (the worker's own parsing and
//!   validation, as for `submit`), so what no worker would run is refused,
//!   naming the field, before any tick comes.
//! - Everything is written to the hash a person may write with `redis-cli`;
//!   nothing here is needed for a schedule to run.
//! - Replacing a schedule keeps its progress (no tick runs twice, none is
//!   backfilled); moving it to another queue starts it again from `now`.
//! - Time is a parameter, so a test drives it.

use super::AdminError;
use crate::config::Settings;
use crate::queue::cron::{self, Definition, Schedule};
use crate::queue::Keys;
use crate::store::Conn;
use chrono::{DateTime, Utc};
use deadpool_redis::redis::AsyncCommands;
use serde::Serialize;

/// A schedule stored by [`add`].
#[derive(Debug, Clone)]
pub struct Added {
    /// Its next tick, on its own wall clock (RFC 3339 with the offset).
    pub next_run: Option<String>,
    /// What this machine's policy or limits would refuse of its job (another
    /// worker may allow it), as `submit` warns.
    pub warnings: Vec<String>,
    /// A schedule of that name was there and is replaced.
    pub replaced: bool,
}

/// One schedule as `schedule list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub name: String,
    pub cron: String,
    pub tz: String,
    pub queue: String,
    pub missed: String,
    pub paused: bool,
    /// The next tick after now, on the schedule's wall clock.
    pub next_run: Option<String>,
    /// The last tick enqueued, on the schedule's wall clock, and its job.
    pub last_run: Option<String>,
    pub last_job: Option<String>,
    /// Why workers skip this schedule (a definition written by hand that cannot
    /// be used); the other fields are then what could be read of it.
    pub error: Option<String>,
}

/// Checks and stores a schedule (replacing one of the same name); it starts at
/// `now`. Refusals are [`AdminError::Invalid`], naming the field.
pub async fn add(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    name: &str,
    def: Definition,
    now: DateTime<Utc>,
) -> Result<Added, AdminError> {
    let schedule = Schedule::new(name, def).map_err(AdminError::Invalid)?;
    let spec = &schedule.def.job;
    let profile = match spec.get("profile").and_then(|p| p.as_str()) {
        Some(p) => Some((p.to_string(), crate::profile::get(conn, keys, p).await?)),
        None => None,
    };
    // Checked with the id a tick's job gets, so the id's rule is checked too.
    let raw = schedule.job_for(now.timestamp());
    let warnings = super::submit::check(raw.as_bytes(), &schedule.def.queue, profile, settings)
        .map_err(|e| AdminError::Invalid(format!("`job`: {e}")))?;
    let old: Option<Vec<u8>> = conn.hget(keys.schedules(), name).await?;
    if let Some(old_queue) = old.as_deref().and_then(stored_queue) {
        if old_queue != schedule.def.queue {
            cron::forget(conn, keys, &old_queue, name).await?;
        }
    }
    let json = serde_json::to_string(&schedule.def).expect("a definition serializes");
    let _: i64 = conn.hset(keys.schedules(), name, json).await?;
    cron::start(conn, keys, &schedule.def.queue, name, now).await?;
    Ok(Added {
        next_run: schedule
            .next_tick(now)
            .map(|t| cron::shown(t.timestamp(), schedule.tz())),
        warnings,
        replaced: old.is_some(),
    })
}

/// Every schedule, by name, with its next run after `now` and its last run.
pub async fn list(
    conn: &mut Conn,
    keys: &Keys,
    now: DateTime<Utc>,
) -> Result<Vec<Listed>, AdminError> {
    let mut out = Vec::new();
    for (name, raw) in cron::definitions(conn, keys).await? {
        let schedule = match Schedule::parse(&name, &raw) {
            Ok(s) => s,
            Err(error) => {
                out.push(unusable(name, &raw, error));
                continue;
            }
        };
        let progress = cron::progress(conn, keys, &schedule.def.queue, &name).await?;
        let d = &schedule.def;
        out.push(Listed {
            next_run: schedule
                .next_tick(now)
                .map(|t| cron::shown(t.timestamp(), schedule.tz())),
            last_run: progress.last_tick.map(|t| cron::shown(t, schedule.tz())),
            last_job: progress.last_job,
            cron: d.cron.clone(),
            tz: d.tz.clone(),
            queue: d.queue.clone(),
            missed: d.missed.as_str().to_string(),
            paused: d.paused,
            error: None,
            name,
        });
    }
    Ok(out)
}

/// A stored definition workers skip, shown with what can be read of it.
fn unusable(name: String, raw: &[u8], error: String) -> Listed {
    let v: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
    let text = |field: &str, default: &str| {
        v.get(field)
            .and_then(|x| x.as_str())
            .unwrap_or(default)
            .to_string()
    };
    Listed {
        cron: text("cron", "?"),
        tz: text("tz", "UTC"),
        queue: text("queue", "default"),
        missed: text("missed", "skip"),
        paused: v.get("paused").and_then(|p| p.as_bool()).unwrap_or(false),
        next_run: None,
        last_run: None,
        last_job: None,
        error: Some(error),
        name,
    }
}

/// The queue a stored definition names, read loosely (it may be unusable).
fn stored_queue(raw: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    Some(
        v.get("queue")
            .and_then(|q| q.as_str())
            .unwrap_or("default")
            .to_string(),
    )
}

/// Removes a schedule and its progress; jobs already enqueued stay.
pub async fn remove(conn: &mut Conn, keys: &Keys, name: &str) -> Result<(), AdminError> {
    let raw: Option<Vec<u8>> = conn.hget(keys.schedules(), name).await?;
    let Some(raw) = raw else {
        return Err(not_found(name));
    };
    let _: i64 = conn.hdel(keys.schedules(), name).await?;
    if let Some(queue) = stored_queue(&raw) {
        cron::forget(conn, keys, &queue, name).await?;
    }
    Ok(())
}

/// Pauses or resumes a schedule (its `paused` field). Ticks that come while it
/// is paused are passed over, never run later. Returns whether it changed.
pub async fn set_paused(
    conn: &mut Conn,
    keys: &Keys,
    name: &str,
    paused: bool,
) -> Result<bool, AdminError> {
    let raw: Option<Vec<u8>> = conn.hget(keys.schedules(), name).await?;
    let Some(raw) = raw else {
        return Err(not_found(name));
    };
    let mut schedule = Schedule::parse(name, &raw).map_err(|e| {
        AdminError::Conflict(format!(
            "schedule {name} cannot be used ({e}); replace it with `dockhand schedule add`"
        ))
    })?;
    if schedule.def.paused == paused {
        return Ok(false);
    }
    schedule.def.paused = paused;
    let json = serde_json::to_string(&schedule.def).expect("a definition serializes");
    let _: i64 = conn.hset(keys.schedules(), name, json).await?;
    Ok(true)
}

fn not_found(name: &str) -> AdminError {
    AdminError::NotFound(format!(
        "no schedule named {name:?} (`dockhand schedule list`)"
    ))
}
