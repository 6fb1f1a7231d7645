//! Fleet-wide limits on a `concurrency_key`: at most N jobs of the key running at
//! once across every worker, and/or at most N starts per window.
//!
//! A limit is a field of the hash `dockhand:limits` (key → JSON
//! `{"concurrency": 3}`, `{"rate": 10, "per_seconds": 60}`, or both), set with
//! `dockhand limit set` or `redis-cli HSET`; every worker reads it at each start,
//! so a change applies to the next job.
//!
//! Invariants:
//! - A running job holds a slot: its id in the sorted set `limit:{key}:running`,
//!   scored by a lease expiry that its worker's heartbeat renews. A worker that
//!   dies stops renewing, so its slots lapse (after three leases: by then the
//!   other workers on its host have removed its containers) and never leak; a
//!   slot is released as soon as its job's run ends.
//! - Taking a slot is one Lua step (drop lapsed holders, count, add), so two
//!   workers cannot both take the last one. A job that already holds a slot (it
//!   was taken over or retried) keeps it rather than taking a second.
//! - A rate counts starts in the sorted set `limit:{key}:starts`, trimmed to the
//!   window at every start; what is older is never read again.
//! - A job that finds no room is not failed and does not hold a worker's permit
//!   while it waits: the caller schedules it again for when room may be free.

use crate::queue::Keys;
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use std::sync::LazyLock;
use std::time::Duration;

/// One key's limit, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub concurrency: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub rate: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub per_seconds: Option<u64>,
}

/// A field that is there holds a number: `null` is refused, not read as absent.
fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Limit {
    /// Refuses a limit that could never let a job run, or a rate without a window.
    pub fn check(&self) -> Result<(), String> {
        if self.concurrency == Some(0) || self.rate == Some(0) {
            return Err("a limit of 0 would never run a job; remove the limit to stop none, pause the queue to stop all".into());
        }
        if self.rate.is_some() != self.per_seconds.is_some() {
            return Err("a rate needs both `rate` and `per_seconds` (e.g. --rate 10/min)".into());
        }
        if self.per_seconds == Some(0) {
            return Err("`per_seconds` must be at least 1".into());
        }
        if self.concurrency.is_none() && self.rate.is_none() {
            return Err("give a concurrency, a rate, or both".into());
        }
        Ok(())
    }

    /// Reads `10/min`, `5/s`, `100/h` or `7/30s` as a rate.
    pub fn parse_rate(s: &str) -> Result<(u32, u64), String> {
        let bad = || format!("{s:?} is not a rate: write N/s, N/min, N/h or N/<seconds>s");
        let (n, per) = s.split_once('/').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let secs = match per.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            other => other
                .strip_suffix('s')
                .and_then(|d| d.parse::<u64>().ok())
                .filter(|d| *d > 0)
                .ok_or_else(bad)?,
        };
        Ok((n, secs))
    }
}

/// What [`acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// The job may start (it holds a slot, if the key has a concurrency limit).
    Taken,
    /// No room: try again after `retry_in`; `why` says which limit is full.
    Full { retry_in: Duration, why: String },
}

/// KEYS: running set, starts set. ARGV: job id, now (ms), lease (ms), concurrency
/// (0: none), rate (0: none), window (ms). Returns {1} or {0, retry in ms, which}.
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local id, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
        local conc, rate, window = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        local holding = redis.call('ZSCORE', KEYS[1], id)
        if conc > 0 and not holding and redis.call('ZCARD', KEYS[1]) >= conc then
            local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
            return {0, tonumber(first[2]) - now, 'concurrency'}
        end
        if rate > 0 and not holding then
            redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
            if redis.call('ZCARD', KEYS[2]) >= rate then
                local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
                return {0, tonumber(first[2]) + window - now, 'rate'}
            end
            redis.call('ZADD', KEYS[2], now, id .. '@' .. now)
            redis.call('PEXPIRE', KEYS[2], window)
        end
        redis.call('ZADD', KEYS[1], now + lease, id)
        redis.call('PEXPIRE', KEYS[1], lease * 2)
        return {1}
        ",
    )
});

/// The limit of `key`, if one is set (one that cannot be read counts as none,
/// and says so in the worker's log).
pub async fn get(conn: &mut Conn, keys: &Keys, key: &str) -> Result<Option<Limit>, StoreError> {
    let raw: Option<String> = conn.hget(keys.limits(), key).await?;
    Ok(raw.and_then(|r| match serde_json::from_str::<Limit>(&r) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(key, error = %e, "the limit of this key is not valid JSON; ignored (fix it with `dockhand limit set`)");
            None
        }
    }))
}

/// Takes a slot of `key` for job `id`, if its limit has room.
pub async fn acquire(
    conn: &mut Conn,
    keys: &Keys,
    key: &str,
    id: &str,
    lease: Duration,
) -> Result<Slot, StoreError> {
    let limit = get(conn, keys, key).await?.unwrap_or_default();
    let now = chrono::Utc::now().timestamp_millis();
    let reply: Vec<redis::Value> = ACQUIRE
        .key(keys.limit_running(key))
        .key(keys.limit_starts(key))
        .arg(id)
        .arg(now)
        .arg(lease.as_millis() as u64)
        .arg(limit.concurrency.unwrap_or(0))
        .arg(limit.rate.unwrap_or(0))
        .arg(limit.per_seconds.unwrap_or(0) * 1000)
        .invoke_async(&mut **conn)
        .await?;
    let int = |i: usize| -> i64 {
        reply
            .get(i)
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or(0)
    };
    if int(0) == 1 {
        return Ok(Slot::Taken);
    }
    let which: String = reply
        .get(2)
        .and_then(|v| redis::from_redis_value(v.clone()).ok())
        .unwrap_or_default();
    let why = match which.as_str() {
        "rate" => format!(
            "limit {key}: {} starts per {} s reached",
            limit.rate.unwrap_or(0),
            limit.per_seconds.unwrap_or(0)
        ),
        _ => format!("limit {key}: {} running", limit.concurrency.unwrap_or(0)),
    };
    Ok(Slot::Full {
        retry_in: Duration::from_millis(int(1).max(0) as u64),
        why,
    })
}

/// Extends the slots these jobs hold (`(key, job id)` pairs) by `lease`.
pub async fn renew(
    conn: &mut Conn,
    keys: &Keys,
    held: &[(String, String)],
    lease: Duration,
) -> Result<(), StoreError> {
    if held.is_empty() {
        return Ok(());
    }
    let until = chrono::Utc::now().timestamp_millis() + lease.as_millis() as i64;
    let mut pipe = redis::pipe();
    for (key, id) in held {
        pipe.cmd("ZADD")
            .arg(keys.limit_running(key))
            .arg("XX")
            .arg(until)
            .arg(id)
            .ignore()
            .pexpire(keys.limit_running(key), 2 * lease.as_millis() as i64)
            .ignore();
    }
    pipe.query_async::<()>(&mut **conn).await?;
    Ok(())
}

/// Gives back the slot job `id` holds of `key`.
pub async fn release(conn: &mut Conn, keys: &Keys, key: &str, id: &str) -> Result<(), StoreError> {
    let _: i64 = conn.zrem(keys.limit_running(key), id).await?;
    Ok(())
}

/// Sets (replaces) the limit of `key`.
pub async fn set(conn: &mut Conn, keys: &Keys, key: &str, limit: &Limit) -> Result<(), StoreError> {
    let json = serde_json::to_string(limit).unwrap_or_default();
    let _: i64 = conn.hset(keys.limits(), key, json).await?;
    Ok(())
}

/// Removes the limit of `key`; false when it had none.
pub async fn remove(conn: &mut Conn, keys: &Keys, key: &str) -> Result<bool, StoreError> {
    let n: i64 = conn.hdel(keys.limits(), key).await?;
    Ok(n == 1)
}

/// Every limit, with how many jobs hold a slot of it now.
pub async fn list(
    conn: &mut Conn,
    keys: &Keys,
) -> Result<Vec<(String, Option<Limit>, u64)>, StoreError> {
    let all: std::collections::BTreeMap<String, String> = conn.hgetall(keys.limits()).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut out = Vec::new();
    for (key, raw) in all {
        let running: u64 = conn.zcount(keys.limit_running(&key), now, "+inf").await?;
        out.push((key, serde_json::from_str(&raw).ok(), running));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_people_write_them() {
        assert_eq!(Limit::parse_rate("10/min"), Ok((10, 60)));
        assert_eq!(Limit::parse_rate("5/s"), Ok((5, 1)));
        assert_eq!(Limit::parse_rate("100/h"), Ok((100, 3600)));
        assert_eq!(Limit::parse_rate("7/30s"), Ok((7, 30)));
        for bad in ["10", "x/min", "10/fortnight", "3/0s"] {
            assert!(Limit::parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_limit_that_could_never_run_a_job_is_refused() {
        let ok = Limit {
            concurrency: Some(3),
            ..Default::default()
        };
        assert!(ok.check().is_ok());
        assert!(Limit {
            concurrency: Some(0),
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(Limit {
            rate: Some(5),
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(Limit::default().check().is_err());
        let rate = Limit {
            rate: Some(5),
            per_seconds: Some(60),
            ..Default::default()
        };
        assert!(rate.check().is_ok());
    }
}
