//! Periodic jobs: schedules in the hash `dockhand:schedules` (name → JSON
//! `{"cron","tz","queue","job","missed","paused"}`), and the pass every worker
//! makes over them to enqueue the ticks that came due.
//!
//! Invariants:
//! - Each tick of a schedule is enqueued at most once, however many workers make
//!   the pass at once: one Lua step compares the schedule's cursor (the last tick
//!   handled, in `dockhand:{<q>}:schedule:<name>`) with what this worker read,
//!   moves it to the tick and `XADD`s the job to the queue's stream, all or
//!   nothing. A worker that lost the race changes nothing.
//! - The job's id is `<name>-<tick in epoch seconds>`, so even an entry added twice
//!   by other means is one job to the workers (the second is a duplicate).
//! - The entry is `job <spec>`, exactly what a producer `XADD`s; from there the job
//!   is like any other.
//! - A pass enqueues at most one job per schedule. A tick older than the pass's
//!   `late` bound (an outage: no worker made a pass) is missed: policy `skip` drops
//!   it, `one` runs it (only the latest; the cursor moves past the others). While
//!   a schedule is paused its ticks are passed over, so resuming runs nothing old.
//! - A schedule starts from the moment its cursor is made (`schedule add`, or the
//!   first pass that sees an entry written by hand): earlier ticks never run.
//! - Time is a parameter (`now`), never read here, so a test drives it.
//! - A definition that cannot be used (not JSON, a bad cron or time zone) is
//!   reported in the pass's events and skipped; the others go on.

use super::Keys;
use crate::store::{Conn, StoreError};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use deadpool_redis::redis::{self, AsyncCommands};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

/// What to do with a tick no worker enqueued in time (see the module's doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Enqueue nothing for it; the next tick runs as usual.
    #[default]
    Skip,
    /// Enqueue one job, for the most recent missed tick.
    One,
}

impl Missed {
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::One => "one",
        }
    }
}

/// A schedule as stored: the JSON value of its field in `dockhand:schedules`.
/// Unknown fields are refused so that a typo (`"timezone"`) is not silently UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first.
    pub cron: String,
    /// An IANA time zone name; the cron fields are read on its wall clock.
    #[serde(default = "utc")]
    pub tz: String,
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The job spec, as a producer would write it, without `id`.
    pub job: serde_json::Value,
    #[serde(default)]
    pub missed: Missed,
    #[serde(default)]
    pub paused: bool,
}

fn utc() -> String {
    "UTC".to_string()
}

fn default_queue() -> String {
    "default".to_string()
}

/// A schedule's name: `[A-Za-z0-9_.-]`, 1 to 64 characters, so that
/// `<name>-<tick>` is a valid job id and the name fits in a key.
pub fn is_valid_name(name: &str) -> bool {
    crate::config::is_valid_queue_name(name)
}

/// A usable schedule: its definition with the cron and the time zone parsed.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub def: Definition,
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// Checks a definition; the message names the field at fault.
    pub fn new(name: &str, def: Definition) -> Result<Schedule, String> {
        if !is_valid_name(name) {
            return Err(format!(
                "{name:?} is not a schedule name ([A-Za-z0-9_.-], 1 to 64 characters)"
            ));
        }
        let cron = parse_cron(&def.cron)?;
        let tz = parse_tz(&def.tz)?;
        if !crate::config::is_valid_queue_name(&def.queue) {
            return Err(format!(
                "`queue`: {:?} is not a queue name ([A-Za-z0-9_.-], 1 to 64 characters)",
                def.queue
            ));
        }
        let Some(job) = def.job.as_object() else {
            return Err("`job`: must be a JSON object (a job spec)".to_string());
        };
        if job.contains_key("id") {
            return Err(format!(
                "`job.id`: a schedule's jobs are named `{name}-<tick in epoch seconds>`; \
                 leave `id` out of the spec"
            ));
        }
        Ok(Schedule {
            name: name.to_string(),
            def,
            cron,
            tz,
        })
    }

    /// Parses a stored definition (the hash field's value).
    pub fn parse(name: &str, raw: &[u8]) -> Result<Schedule, String> {
        let def: Definition = serde_json::from_slice(raw)
            .map_err(|e| format!("the schedule is not a valid definition: {e}"))?;
        Schedule::new(name, def)
    }

    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The latest tick at or before `now`, if the pattern ever matched.
    pub fn latest_tick(&self, now: DateTime<Utc>) -> Option<DateTime<Tz>> {
        self.cron
            .find_previous_occurrence(&now.with_timezone(&self.tz), true)
            .ok()
    }

    /// The first tick after `now`; `None` if the pattern never matches again.
    pub fn next_tick(&self, now: DateTime<Utc>) -> Option<DateTime<Tz>> {
        self.cron
            .find_next_occurrence(&now.with_timezone(&self.tz), false)
            .ok()
    }

    /// The job id of one tick.
    pub fn job_id(&self, tick: i64) -> String {
        format!("{}-{tick}", self.name)
    }

    /// The lane its jobs go to: the spec's `priority` when it is one (see `lanes`).
    fn priority(&self) -> i64 {
        self.def
            .job
            .get("priority")
            .and_then(|p| p.as_i64())
            .filter(|p| (super::lanes::MIN..=super::lanes::MAX).contains(p))
            .unwrap_or(0)
    }

    /// The spec `XADD`ed for one tick: the schedule's job with the tick's id.
    pub fn job_for(&self, tick: i64) -> String {
        let mut job = self.def.job.clone();
        // `new` made sure it is an object without an `id` of its own.
        if let Some(obj) = job.as_object_mut() {
            obj.insert("id".to_string(), self.job_id(tick).into());
        }
        job.to_string()
    }
}

/// Standard cron: 5 fields, or 6 with seconds first; names (`MON`, `JAN`) and
/// `@daily`-style nicknames; no year field.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    let cron = parser.parse(expr).map_err(|e| {
        format!(
            "`cron`: {expr:?} is not a cron expression ({e}); write 5 fields, \
             minute hour day-of-month month day-of-week, e.g. '0 3 * * *'"
        )
    })?;
    // A pattern that never matches (30 February) would never run: say so now.
    if cron.find_next_occurrence(&Utc::now(), false).is_err() {
        return Err(format!("`cron`: {expr:?} never matches a date"));
    }
    Ok(cron)
}

/// An IANA time zone name (`Europe/Paris`, `UTC`).
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("`tz`: {name:?} is not a time zone; use an IANA name such as Europe/Paris or UTC")
    })
}

/// The stored definitions, by name, raw (a value someone wrote by hand may not parse).
pub async fn definitions(
    conn: &mut Conn,
    keys: &Keys,
) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    Ok(conn.hgetall(keys.schedules()).await?)
}

/// A schedule's progress, as kept in its state hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last tick handled (enqueued, skipped or passed over while paused), or
    /// when the schedule started, in epoch seconds.
    pub cursor: Option<i64>,
    /// The last tick enqueued, its job id and stream entry.
    pub last_tick: Option<i64>,
    pub last_job: Option<String>,
    pub last_entry: Option<String>,
}

/// Reads a schedule's progress.
pub async fn progress(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    name: &str,
) -> Result<Progress, StoreError> {
    let fields: BTreeMap<String, String> = conn.hgetall(keys.schedule_state(queue, name)).await?;
    Ok(Progress {
        cursor: fields.get("cursor").and_then(|c| c.parse().ok()),
        last_tick: fields.get("last_tick").and_then(|c| c.parse().ok()),
        last_job: fields.get("last_job").cloned(),
        last_entry: fields.get("last_entry").cloned(),
    })
}

/// Starts a schedule at `now` unless it has started already (`HSETNX`): ticks up
/// to `now` never run.
pub async fn start(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    name: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(conn
        .hset_nx(keys.schedule_state(queue, name), "cursor", now.timestamp())
        .await?)
}

/// Forgets a schedule's progress (it was removed, or moved to another queue).
pub async fn forget(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    name: &str,
) -> Result<(), StoreError> {
    let _: i64 = conn.del(keys.schedule_state(queue, name)).await?;
    Ok(())
}

/// What a pass did with one schedule.
#[derive(Debug)]
pub enum Event {
    /// First seen (written by hand): started at `now`, nothing enqueued.
    Started { name: String },
    /// The tick's job was added to the queue's stream.
    Enqueued {
        name: String,
        queue: String,
        tick: i64,
        job: String,
        entry: String,
        /// The tick was missed (older than `late`) and run by policy `one`.
        late: bool,
    },
    /// The cursor moved past the tick without a job: missed under `skip`, or paused.
    Passed {
        name: String,
        tick: i64,
        paused: bool,
    },
    /// The stored definition cannot be used; skipped.
    Invalid { name: String, error: String },
    /// Redis refused this schedule's step (say a state key of the wrong type).
    Failed { name: String, error: StoreError },
}

/// KEYS[1] the schedule's state hash, KEYS[2] its queue's stream. ARGV: the cursor
/// read, the tick, "1" to enqueue, the job id, the spec, the time. Returns nil
/// when the cursor moved meanwhile (another worker did it), "" when nothing was
/// enqueued, else the entry id.
static ADVANCE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('HGET', KEYS[1], 'cursor') ~= ARGV[1] then
            return false
        end
        redis.call('HSET', KEYS[1], 'cursor', ARGV[2])
        if ARGV[3] ~= '1' then
            return ''
        end
        local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[5])
        redis.call('HSET', KEYS[1], 'last_tick', ARGV[2], 'last_job', ARGV[4],
            'last_entry', entry, 'last_at', ARGV[6])
        return entry
        ",
    )
});

/// One pass over every schedule at `now`: enqueues each tick that came due since
/// its cursor (see the module's doc). A tick more than `late` old is missed.
/// Only reading the definitions fails the pass; a schedule that fails is an event.
pub async fn run_due(
    conn: &mut Conn,
    keys: &Keys,
    now: DateTime<Utc>,
    late: Duration,
) -> Result<Vec<Event>, StoreError> {
    let mut events = Vec::new();
    for (name, raw) in definitions(conn, keys).await? {
        let schedule = match Schedule::parse(&name, &raw) {
            Ok(s) => s,
            Err(error) => {
                events.push(Event::Invalid { name, error });
                continue;
            }
        };
        match step(conn, keys, &schedule, now, late).await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => {}
            Err(error) => events.push(Event::Failed { name, error }),
        }
    }
    Ok(events)
}

/// One schedule's part of a pass.
async fn step(
    conn: &mut Conn,
    keys: &Keys,
    s: &Schedule,
    now: DateTime<Utc>,
    late: Duration,
) -> Result<Option<Event>, StoreError> {
    let state = keys.schedule_state(&s.def.queue, &s.name);
    let cursor: Option<String> = conn.hget(&state, "cursor").await?;
    let Some(cursor) = cursor else {
        return Ok(start(conn, keys, &s.def.queue, &s.name, now)
            .await?
            .then(|| Event::Started {
                name: s.name.clone(),
            }));
    };
    // A cursor someone wrote by hand that is not a number: start over from now
    // rather than stall (the compare-and-set below still guards the race).
    let handled = cursor.parse::<i64>().unwrap_or(now.timestamp());
    let Some(tick) = s.latest_tick(now) else {
        return Ok(None);
    };
    let tick_s = tick.timestamp();
    if tick_s <= handled {
        return Ok(None);
    }
    let age = now.signed_duration_since(tick.with_timezone(&Utc));
    let missed = age.to_std().unwrap_or_default() > late;
    let enqueue = !s.def.paused && (!missed || s.def.missed == Missed::One);
    let job = s.job_id(tick_s);
    let entry: Option<String> = ADVANCE
        .key(&state)
        .key(keys.lane(&s.def.queue, s.priority()))
        .arg(&cursor)
        .arg(tick_s)
        .arg(if enqueue { "1" } else { "0" })
        .arg(&job)
        .arg(s.job_for(tick_s))
        .arg(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .invoke_async(conn)
        .await?;
    Ok(match entry {
        None => None, // another worker handled this tick
        Some(entry) if entry.is_empty() => Some(Event::Passed {
            name: s.name.clone(),
            tick: tick_s,
            paused: s.def.paused,
        }),
        Some(entry) => Some(Event::Enqueued {
            name: s.name.clone(),
            queue: s.def.queue.clone(),
            tick: tick_s,
            job,
            entry,
            late: missed,
        }),
    })
}

/// A tick (epoch seconds) on the schedule's wall clock, for people to read.
pub fn shown(tick: i64, tz: Tz) -> String {
    match Utc.timestamp_opt(tick, 0).single() {
        Some(t) => t
            .with_timezone(&tz)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => tick.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(cron: &str, tz: &str) -> Definition {
        Definition {
            cron: cron.to_string(),
            tz: tz.to_string(),
            queue: "default".to_string(),
            job: serde_json::json!({"image": "x"}),
            missed: Missed::Skip,
            paused: false,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_fields_are_cron_and_others_are_not() {
        assert!(parse_cron("0 3 * * *").is_ok());
        assert!(parse_cron("*/10 * * * * *").is_ok());
        assert!(parse_cron("0 9 * * MON-FRI").is_ok());
        for bad in ["", "not a cron", "61 * * * *", "* * *", "0 0 30 2 *"] {
            let err = parse_cron(bad).unwrap_err();
            assert!(err.starts_with("`cron`"), "{bad}: {err}");
        }
        assert!(parse_tz("Europe/Paris").is_ok());
        assert!(parse_tz("Europe/Pariss").unwrap_err().starts_with("`tz`"));
    }

    #[test]
    fn a_definition_is_checked_field_by_field() {
        let ok: Definition =
            serde_json::from_str(r#"{"cron": "* * * * *", "job": {"image": "x"}}"#).unwrap();
        assert_eq!((ok.tz.as_str(), ok.queue.as_str()), ("UTC", "default"));
        assert_eq!((ok.missed, ok.paused), (Missed::Skip, false));
        assert!(Schedule::parse(
            "a",
            br#"{"cron": "* * * * *", "job": {}, "timezone": "UTC"}"#
        )
        .unwrap_err()
        .contains("timezone"));
        assert!(Schedule::parse("a", b"{nope").is_err());
        let mut d = def("* * * * *", "UTC");
        d.job = serde_json::json!({"image": "x", "id": "fixed"});
        assert!(Schedule::new("a", d).unwrap_err().contains("`job.id`"));
        assert!(Schedule::new("a b", def("* * * * *", "UTC")).is_err());
        let mut d = def("* * * * *", "UTC");
        d.queue = "a{b}".into();
        assert!(Schedule::new("a", d).unwrap_err().contains("`queue`"));
    }

    #[test]
    fn ticks_follow_the_time_zone_across_daylight_saving() {
        let s = Schedule::new("n", def("0 3 * * *", "Europe/Paris")).unwrap();
        // Winter: 03:00 in Paris is 02:00 UTC.
        let t = s.latest_tick(at("2030-01-10T02:00:00.500Z")).unwrap();
        assert_eq!(t.with_timezone(&Utc), at("2030-01-10T02:00:00Z"));
        // Summer: 01:00 UTC.
        let t = s.next_tick(at("2030-07-10T00:00:00Z")).unwrap();
        assert_eq!(t.with_timezone(&Utc), at("2030-07-10T01:00:00Z"));
        // 02:30 does not exist on 31 March 2030 in Paris (02:00 → 03:00): the
        // tick runs once, right after the gap, and not again that day.
        let s = Schedule::new("n", def("30 2 * * *", "Europe/Paris")).unwrap();
        let t = s.next_tick(at("2030-03-30T23:00:00Z")).unwrap();
        assert_eq!(t.with_timezone(&Utc), at("2030-03-31T01:00:00Z"));
        let after = s.next_tick(t.with_timezone(&Utc)).unwrap();
        assert_eq!(after.with_timezone(&Utc), at("2030-04-01T00:30:00Z"));
        // 02:30 happens twice on 27 October 2030 (03:00 → 02:00): it runs once.
        let t = s.next_tick(at("2030-10-26T23:00:00Z")).unwrap();
        let after = s.next_tick(t.with_timezone(&Utc)).unwrap();
        assert_eq!(after.with_timezone(&Utc), at("2030-10-28T01:30:00Z"));
        // A pass looks back from now: it must see the same ticks, or the gap's
        // tick would never run and the overlap's would run twice.
        let back = |now: &str| s.latest_tick(at(now)).unwrap().with_timezone(&Utc);
        assert_eq!(back("2030-03-31T01:00:00.400Z"), at("2030-03-31T01:00:00Z"));
        assert_eq!(back("2030-03-31T01:40:00Z"), at("2030-03-31T01:00:00Z"));
        assert_eq!(back("2030-10-27T00:30:00.400Z"), at("2030-10-27T00:30:00Z"));
        assert_eq!(back("2030-10-27T01:30:00.400Z"), at("2030-10-27T00:30:00Z"));
        // Steps match on the wall clock: none in the gap, each in the overlap.
        let s = Schedule::new("n", def("*/30 * * * *", "Europe/Paris")).unwrap();
        let mut t = at("2030-03-31T00:40:00Z");
        let mut seen = Vec::new();
        for _ in 0..2 {
            t = s.next_tick(t).unwrap().with_timezone(&Utc);
            seen.push(t);
        }
        assert_eq!(
            seen,
            [at("2030-03-31T01:00:00Z"), at("2030-03-31T01:30:00Z")]
        );
        let mut t = at("2030-10-27T00:10:00Z");
        let mut seen = Vec::new();
        for _ in 0..4 {
            t = s.next_tick(t).unwrap().with_timezone(&Utc);
            seen.push(t);
        }
        let every_half_hour =
            ["00:30", "01:00", "01:30", "02:00"].map(|hm| at(&format!("2030-10-27T{hm}:00Z")));
        assert_eq!(seen, every_half_hour);
    }

    #[test]
    fn names_and_nicknames_are_cron_too() {
        let s = Schedule::new("n", def("@daily", "UTC")).unwrap();
        let t = s.next_tick(at("2030-01-01T10:00:00Z")).unwrap();
        assert_eq!(t.with_timezone(&Utc), at("2030-01-02T00:00:00Z"));
        let s = Schedule::new("n", def("0 9 * JAN MON", "UTC")).unwrap();
        // 2030-01-07 is a Monday.
        let t = s.next_tick(at("2030-01-01T10:00:00Z")).unwrap();
        assert_eq!(t.with_timezone(&Utc), at("2030-01-07T09:00:00Z"));
    }

    #[test]
    fn a_ticks_job_carries_the_ticks_id() {
        let s = Schedule::new("nightly", def("0 3 * * *", "UTC")).unwrap();
        let job: serde_json::Value = serde_json::from_str(&s.job_for(1_893_466_800)).unwrap();
        assert_eq!(job["id"], "nightly-1893466800");
        assert_eq!(job["image"], "x");
        assert_eq!(
            shown(1_893_466_800, parse_tz("Europe/Paris").unwrap()),
            "2030-01-01T04:00:00+01:00"
        );
    }
}
