//! The indexes that list jobs, newest first, and the paged reads over them.
//!
//! A job hash has no order of its own and `SCAN` over 100,000 of them is slow, so
//! each recorded job is also a member of a few sorted sets, scored by its creation
//! time in milliseconds:
//!
//! - `index:all` and `index:queue:<q>`: added once (`NX`) when a worker first
//!   records the job (in the claim's own Lua step, `state::claim`);
//! - `index:status:<completed|aborted>` and `index:reason:<r>`: added when it ends
//!   (in the terminal write's own step, `state::write_with`).
//!
//! Invariants:
//! - An index may hold a stale member (the job expired, or was run again and is
//!   not finished now), never miss a live one: every read checks the job's hash
//!   and skips what does not match, so a listing is always correct.
//! - Members whose hash has expired are removed from the oldest end by [`prune`]
//!   (a worker's upkeep), so the indexes stay bounded by `jobs.retention_seconds`.
//! - Rows are ordered by (score, id), both descending. A cursor `<score>:<id>`
//!   names the last row a page showed; the next page starts strictly after it,
//!   whatever was added since, so paging never repeats or skips a row.
//! - One page reads a bounded number of candidates ([`SCAN_BUDGET`]): a filter that
//!   matches little returns a short page with a cursor to go on, never a long wait.

use crate::job::{Reason, Status};
use crate::queue::Keys;
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::HashMap;

/// Candidates read per round trip.
const BATCH: usize = 200;
/// Candidates one page may check before it returns what it found.
pub const SCAN_BUDGET: usize = 5_000;
/// The fields a listing row holds (the spec, result and log tail are left to
/// the job's own page).
pub const ROW_FIELDS: &[&str] = &[
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
    "error",
];

/// Milliseconds since the epoch of a time Dockhand wrote (RFC 3339); 0 if unreadable.
pub fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

/// What a listing keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub queue: Option<String>,
    pub status: Option<Status>,
    pub reason: Option<Reason>,
    /// Only jobs created at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
}

impl Filter {
    /// The smallest index that holds every job the filter keeps.
    fn index(&self, keys: &Keys) -> String {
        if let Some(r) = self.reason {
            keys.index("reason", r.as_str())
        } else if let Some(s) = self
            .status
            .filter(|s| matches!(s, Status::Completed | Status::Aborted))
        {
            keys.index("status", s.as_str())
        } else if let Some(q) = &self.queue {
            keys.index("queue", q)
        } else {
            keys.index("all", "")
        }
    }

    fn keeps(&self, row: &HashMap<String, String>) -> bool {
        let is = |field: &str, want: Option<&str>| {
            want.is_none_or(|w| row.get(field).map(String::as_str) == Some(w))
        };
        is("queue", self.queue.as_deref())
            && is("status", self.status.map(Status::as_str))
            && is("reason", self.reason.map(Reason::as_str))
    }
}

/// Where a page starts: just after the row with this score and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub score: i64,
    pub id: String,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (score, id) = s.split_once(':')?;
        Some(Cursor {
            score: score.parse().ok()?,
            id: id.to_string(),
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.score, self.id)
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The rows, each the [`ROW_FIELDS`] the hash has.
    pub rows: Vec<HashMap<String, String>>,
    /// Where the next page starts; `None` when the index holds nothing further.
    pub next: Option<Cursor>,
}

/// Up to `limit` jobs that `filter` keeps, newest first, after `after`.
pub async fn page(
    conn: &mut Conn,
    keys: &Keys,
    filter: &Filter,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Page, StoreError> {
    let index = filter.index(keys);
    let floor = filter
        .since_ms
        .map(|s| s.to_string())
        .unwrap_or_else(|| "-inf".to_string());
    let mut at = after;
    let mut out = Page::default();
    let mut checked = 0;
    let mut gone = Vec::new();
    while out.rows.len() < limit && checked < SCAN_BUDGET {
        let batch = candidates(conn, &index, &floor, at.as_ref()).await?;
        let Some(last) = batch.last() else {
            at = None; // the index is exhausted
            break;
        };
        let last = Cursor {
            score: last.1,
            id: last.0.clone(),
        };
        checked += batch.len();
        let rows = rows(conn, keys, batch.iter().map(|(id, _)| id.as_str())).await?;
        for ((id, score), row) in batch.into_iter().zip(rows) {
            let Some(row) = row else {
                gone.push(id);
                continue;
            };
            if filter.keeps(&row) {
                out.rows.push(row);
                if out.rows.len() == limit {
                    at = Some(Cursor { score, id });
                    break;
                }
            }
        }
        if out.rows.len() < limit {
            at = Some(last);
        }
    }
    if !gone.is_empty() {
        let _: () = conn.zrem(&index, gone).await?;
    }
    out.next = at;
    Ok(out)
}

/// The next members below `after` (or the newest), down to `floor`, with scores.
/// Members tied with `after`'s score come first: those whose id sorts below its id.
async fn candidates(
    conn: &mut Conn,
    index: &str,
    floor: &str,
    after: Option<&Cursor>,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut out = Vec::new();
    let top = match after {
        Some(c) => {
            let tied: Vec<String> = redis::cmd("ZRANGE")
                .arg(index)
                .arg(c.score)
                .arg(c.score)
                .arg("BYSCORE")
                .arg("REV")
                .query_async(&mut **conn)
                .await?;
            out.extend(
                tied.into_iter()
                    .filter(|id| id.as_str() < c.id.as_str())
                    .take(BATCH)
                    .map(|id| (id, c.score)),
            );
            format!("({}", c.score)
        }
        None => "+inf".to_string(),
    };
    if out.len() >= BATCH {
        return Ok(out);
    }
    let more: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(index)
        .arg(&top)
        .arg(floor)
        .arg("BYSCORE")
        .arg("REV")
        .arg("LIMIT")
        .arg(0)
        .arg(BATCH - out.len())
        .arg("WITHSCORES")
        .query_async(&mut **conn)
        .await?;
    out.extend(more.into_iter().map(|(id, s)| (id, s as i64)));
    Ok(out)
}

/// The listing fields of each job; `None` for a job whose hash is gone.
async fn rows<'a>(
    conn: &mut Conn,
    keys: &Keys,
    ids: impl Iterator<Item = &'a str>,
) -> Result<Vec<Option<HashMap<String, String>>>, StoreError> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HMGET").arg(keys.job(id)).arg(ROW_FIELDS);
    }
    let replies: Vec<Vec<Option<String>>> = pipe.query_async(&mut **conn).await?;
    Ok(replies
        .into_iter()
        .map(|values| {
            let row: HashMap<String, String> = ROW_FIELDS
                .iter()
                .zip(values)
                .filter_map(|(k, v)| Some((k.to_string(), v?)))
                .collect();
            row.contains_key("status").then_some(row)
        })
        .collect())
}

/// Removes, from every index, members at the oldest end whose job hash has expired.
/// Looks only at members created before `before_ms`, at most `budget` per index;
/// returns how many it removed.
///
/// A worker passes now minus `jobs.retention_seconds`: a job expires that long
/// after it ended, so one created since cannot have expired yet, and looking at
/// it would cost a command per listed job per pass for nothing. (A job deleted
/// by hand, or started afresh by `unique_for_seconds`, is left out of listings by
/// the check every read makes, and pruned once it is that old.)
pub async fn prune(
    conn: &mut Conn,
    keys: &Keys,
    budget: usize,
    before_ms: i64,
) -> Result<usize, StoreError> {
    let indexes: Vec<String> = {
        let mut iter = conn.scan_match::<_, String>(keys.index_pattern()).await?;
        let mut v = Vec::new();
        while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
            v.push(k?);
        }
        v
    };
    let mut removed = 0;
    for index in indexes {
        let oldest: Vec<String> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg("-inf")
            .arg(format!("({before_ms}"))
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(budget)
            .query_async(&mut **conn)
            .await?;
        if oldest.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for id in &oldest {
            pipe.exists(keys.job(id));
        }
        let alive: Vec<bool> = pipe.query_async(&mut **conn).await?;
        let gone: Vec<&String> = oldest
            .iter()
            .zip(alive)
            .filter_map(|(id, alive)| (!alive).then_some(id))
            .collect();
        if !gone.is_empty() {
            removed += gone.len();
            let _: () = conn.zrem(&index, gone).await?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = Cursor {
            score: 1700000000123,
            id: "job-1.a".into(),
        };
        assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        assert_eq!(Cursor::parse("abc"), None);
        assert_eq!(Cursor::parse("12x:id"), None);
    }

    #[test]
    fn the_filter_picks_the_smallest_index_and_checks_every_field() {
        let keys = Keys::new("t");
        let mut f = Filter {
            queue: Some("q".into()),
            ..Default::default()
        };
        assert_eq!(f.index(&keys), "t:index:queue:q");
        f.status = Some(Status::Running);
        assert_eq!(
            f.index(&keys),
            "t:index:queue:q",
            "running has no index of its own"
        );
        f.status = Some(Status::Aborted);
        assert_eq!(f.index(&keys), "t:index:status:aborted");
        f.reason = Some(Reason::Timeout);
        assert_eq!(f.index(&keys), "t:index:reason:timeout");
        let row: HashMap<String, String> =
            [("queue", "q"), ("status", "aborted"), ("reason", "timeout")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert!(f.keeps(&row));
        f.queue = Some("other".into());
        assert!(!f.keeps(&row));
    }

    #[test]
    fn times_read_back_as_millis() {
        assert_eq!(millis("2023-11-14T22:13:20.123Z"), 1700000000123);
        assert_eq!(millis("garbage"), 0);
    }
}
