//! The indexes that list jobs, newest first, and the paged reads over them.
//!
//! A job hash has no order of its own and `SCAN` over 100,000 of them is slow, so
//! each recorded job is also a member of a few sorted sets of its queue, scored
//! by its creation time in milliseconds (the member is the job id):
//!
//! - `<prefix>:{<q>}:index:all`: added once (`NX`) when a worker first records
//!   the job (in the claim's own Lua step, `state::claim`);
//! - `<prefix>:{<q>}:index:status:<completed|aborted>` and
//!   `<prefix>:{<q>}:index:reason:<r>`: added when it ends (in the terminal
//!   write's own step, `state::write_with`).
//!
//! They carry the queue's hash tag, so those steps stay in one Redis Cluster
//! slot; a listing over every queue merges the queues' indexes.
//!
//! Invariants:
//! - An index may hold a stale member (the job expired, or was run again and is
//!   not finished now), never miss a live one: every read checks the job's hash
//!   and skips what does not match, so a listing is always correct.
//! - Members whose hash has expired are removed from the oldest end by [`prune`]
//!   (a worker's upkeep), so the indexes stay bounded by `jobs.retention_seconds`.
//! - Rows are ordered by (score, `<queue>/<id>`), both descending. A cursor
//!   `<score>:<queue>/<id>` names the last row a page showed; the next page
//!   starts strictly after it, whatever was added since, so paging never repeats
//!   or skips a row.
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
    /// The smallest index of `queue` that holds every job of it the filter keeps.
    fn index(&self, keys: &Keys, queue: &str) -> String {
        if let Some(r) = self.reason {
            keys.index(queue, "reason", r.as_str())
        } else if let Some(s) = self
            .status
            .filter(|s| matches!(s, Status::Completed | Status::Aborted))
        {
            keys.index(queue, "status", s.as_str())
        } else {
            keys.index(queue, "all", "")
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

/// Where a page starts: just after the row with this score and `<queue>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub score: i64,
    pub member: String,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (score, member) = s.split_once(':')?;
        Some(Cursor {
            score: score.parse().ok()?,
            member: member.to_string(),
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.score, self.member)
    }
}

/// A candidate row: its queue, id and score.
struct Candidate {
    queue: String,
    id: String,
    score: i64,
}

impl Candidate {
    fn member(&self) -> String {
        format!("{}/{}", self.queue, self.id)
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

/// Up to `limit` jobs that `filter` keeps, newest first, after `after`: of
/// the filter's queue, or else of every queue in `queues`.
pub async fn page(
    conn: &mut Conn,
    keys: &Keys,
    queues: &[String],
    filter: &Filter,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Page, StoreError> {
    let queues: Vec<&str> = match &filter.queue {
        Some(q) => vec![q.as_str()],
        None => queues.iter().map(String::as_str).collect(),
    };
    let floor = filter
        .since_ms
        .map(|s| s.to_string())
        .unwrap_or_else(|| "-inf".to_string());
    let mut at = after;
    let mut out = Page::default();
    let mut checked = 0;
    let mut gone: Vec<(String, String)> = Vec::new();
    while out.rows.len() < limit && checked < SCAN_BUDGET {
        // Each queue's next members; the newest BATCH of them all come next
        // (none of a queue's later members can come before its own first BATCH).
        let mut batch = Vec::new();
        for q in &queues {
            let index = filter.index(keys, q);
            batch.extend(candidates(conn, &index, q, &floor, at.as_ref()).await?);
        }
        batch.sort_by_key(|c| std::cmp::Reverse((c.score, c.member())));
        batch.truncate(BATCH);
        let Some(last) = batch.last() else {
            at = None; // every index is exhausted
            break;
        };
        let last = Cursor {
            score: last.score,
            member: last.member(),
        };
        checked += batch.len();
        let rows = rows(
            conn,
            keys,
            batch.iter().map(|c| (c.queue.as_str(), c.id.as_str())),
        )
        .await?;
        for (c, row) in batch.into_iter().zip(rows) {
            let Some(row) = row else {
                gone.push((filter.index(keys, &c.queue), c.id));
                continue;
            };
            if filter.keeps(&row) {
                out.rows.push(row);
                if out.rows.len() == limit {
                    at = Some(Cursor {
                        score: c.score,
                        member: c.member(),
                    });
                    break;
                }
            }
        }
        if out.rows.len() < limit {
            at = Some(last);
        }
    }
    for (index, id) in gone {
        let _: () = conn.zrem(&index, id).await?;
    }
    out.next = at;
    Ok(out)
}

/// The next members of `queue`'s `index` below `after` (or the newest), down
/// to `floor`, with scores. Members tied with `after`'s score come first: those
/// whose `<queue>/<id>` sorts below its own.
async fn candidates(
    conn: &mut Conn,
    index: &str,
    queue: &str,
    floor: &str,
    after: Option<&Cursor>,
) -> Result<Vec<Candidate>, StoreError> {
    let mut out = Vec::new();
    let candidate = |id: String, score: i64| Candidate {
        queue: queue.to_string(),
        id,
        score,
    };
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
                    .map(|id| candidate(id, c.score))
                    .filter(|cand| cand.member() < c.member)
                    .take(BATCH),
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
    out.extend(more.into_iter().map(|(id, s)| candidate(id, s as i64)));
    Ok(out)
}

/// The listing fields of each job (queue, id); `None` for a job whose hash is gone.
async fn rows<'a>(
    conn: &mut Conn,
    keys: &Keys,
    jobs: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Option<HashMap<String, String>>>, StoreError> {
    let mut pipe = redis::pipe();
    for (queue, id) in jobs {
        pipe.cmd("HMGET").arg(keys.job(queue, id)).arg(ROW_FIELDS);
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

/// Removes, from every index of `queues`, members at the oldest end whose job
/// hash has expired. Looks only at members created before `before_ms`, at most
/// `budget` per index; returns how many it removed.
///
/// A worker passes now minus `jobs.retention_seconds`: a job expires that long
/// after it ended, so one created since cannot have expired yet, and looking at
/// it would cost a command per listed job per pass for nothing. (A job deleted
/// by hand, or started afresh by `unique_for_seconds`, is left out of listings by
/// the check every read makes, and pruned once it is that old.)
pub async fn prune(
    conn: &mut Conn,
    keys: &Keys,
    queues: &[String],
    budget: usize,
    before_ms: i64,
) -> Result<usize, StoreError> {
    let mut removed = 0;
    for queue in queues {
        let mut indexes = vec![keys.index(queue, "all", "")];
        for status in [Status::Completed, Status::Aborted] {
            indexes.push(keys.index(queue, "status", status.as_str()));
        }
        for reason in Reason::ALL {
            indexes.push(keys.index(queue, "reason", reason.as_str()));
        }
        for index in indexes {
            removed += prune_one(conn, keys, queue, &index, budget, before_ms).await?;
        }
    }
    Ok(removed)
}

async fn prune_one(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    index: &str,
    budget: usize,
    before_ms: i64,
) -> Result<usize, StoreError> {
    let oldest: Vec<String> = redis::cmd("ZRANGE")
        .arg(index)
        .arg("-inf")
        .arg(format!("({before_ms}"))
        .arg("BYSCORE")
        .arg("LIMIT")
        .arg(0)
        .arg(budget)
        .query_async(&mut **conn)
        .await?;
    if oldest.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for id in &oldest {
        pipe.exists(keys.job(queue, id));
    }
    let alive: Vec<bool> = pipe.query_async(&mut **conn).await?;
    let gone: Vec<&String> = oldest
        .iter()
        .zip(alive)
        .filter_map(|(id, alive)| (!alive).then_some(id))
        .collect();
    if !gone.is_empty() {
        let _: () = conn.zrem(index, &gone).await?;
    }
    Ok(gone.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = Cursor {
            score: 1700000000123,
            member: "q/job-1.a".into(),
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
        assert_eq!(f.index(&keys, "q"), "t:{q}:index:all");
        f.status = Some(Status::Running);
        assert_eq!(
            f.index(&keys, "q"),
            "t:{q}:index:all",
            "running has no index of its own"
        );
        f.status = Some(Status::Aborted);
        assert_eq!(f.index(&keys, "q"), "t:{q}:index:status:aborted");
        f.reason = Some(Reason::Timeout);
        assert_eq!(f.index(&keys, "q"), "t:{q}:index:reason:timeout");
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
