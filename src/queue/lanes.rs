//! Priorities within a queue: one stream per priority, read highest first.
//!
//! A job's `priority` (an integer from [`MIN`] to [`MAX`], default 0) picks its
//! lane: priority 0 is the queue's stream `dockhand:{<q>}:jobs` itself, any other
//! is `dockhand:{<q>}:jobs:p<n>` (same hash tag, so one Lua step may read them
//! all). Every lane is read through the same consumer group, with the same
//! leases, takeover and acks as the main stream.
//!
//! Invariants:
//! - Whatever Dockhand itself adds to a queue (the inbox mover, `dockhand submit`
//!   and `POST /jobs`, retries, delays, schedules, hand-backs) goes to the lane of
//!   the spec's priority. A producer that `XADD`s by hand picks the lane by the
//!   key it writes to (the spec's `priority` does not move an entry that is
//!   already in a stream).
//! - A claim takes the oldest unread entry of the highest non-empty lane, except
//!   that one claim in [`FAIR_EVERY`] takes the entry that has waited longest in
//!   any lane: a low priority job waits behind newer high priority ones, but
//!   never without bound.
//! - A lane's consumer group is made the first time a claim finds the lane (at
//!   id 0, so nothing added before is skipped).

use super::{Entry, Keys, GROUP};
use crate::store::{Conn, StoreError};
use deadpool_redis::redis;
use std::sync::LazyLock;

/// The lowest and highest priority.
pub const MIN: i64 = -9;
pub const MAX: i64 = 9;
/// One claim in this many takes the longest-waiting entry of any lane.
pub const FAIR_EVERY: u64 = 10;

/// Every lane of `queue`, highest priority first (the main stream among them).
pub fn all(keys: &Keys, queue: &str) -> Vec<(i64, String)> {
    (MIN..=MAX)
        .rev()
        .map(|p| (p, keys.lane(queue, p)))
        .collect()
}

/// A Lua prelude that reads a spec's priority like [`of`]: `lane_of(job)` is the
/// index in `all`'s order (1 = highest), given `KEYS` laid out from `first`.
pub const LUA_LANE_OF: &str = r#"
local function lane_of(job, first)
    local p = 0
    if type(job) == 'string' and string.find(job, '"priority"', 1, true) then
        local ok, spec = pcall(cjson.decode, job)
        if ok and type(spec) == 'table' and type(spec.priority) == 'number'
            and spec.priority == math.floor(spec.priority)
            and spec.priority >= -9 and spec.priority <= 9 then
            p = spec.priority
        end
    end
    return KEYS[first + 9 - p]
end
"#;

/// KEYS: the 19 lanes, highest first (so KEYS[10] is the main stream). ARGV: group, consumer, '1' for a fair
/// claim. Returns {lane index (1-based), id, fields} or nil.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local group, consumer = ARGV[1], ARGV[2]
        local function read(key)
            local ok, r = pcall(redis.call, 'XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', key, '>')
            if not ok then
                -- A lane seen for the first time: make its group (at 0) and read again.
                pcall(redis.call, 'XGROUP', 'CREATE', key, group, '0')
                ok, r = pcall(redis.call, 'XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', key, '>')
            end
            if ok and type(r) == 'table' and r[1] and #r[1][2] > 0 then return r[1][2][1] end
            return nil
        end
        local function older(a, b)
            local am, as = string.match(a, '(%d+)-(%d+)')
            local bm, bs = string.match(b, '(%d+)-(%d+)')
            am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
            return am < bm or (am == bm and as < bs)
        end
        local function first_unread(key)
            local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
            local from = '-'
            if ok then
                for _, g in ipairs(groups) do
                    local name, last
                    for i = 1, #g, 2 do
                        if g[i] == 'name' then name = g[i + 1] end
                        if g[i] == 'last-delivered-id' then last = g[i + 1] end
                    end
                    if name == group and last then from = '(' .. last end
                end
            end
            local e = redis.call('XRANGE', key, from, '+', 'COUNT', 1)
            if #e > 0 then return e[1][1] end
            return nil
        end
        -- Which lanes exist. Usually only the main stream (KEYS[10], priority 0)
        -- does: one EXISTS over the 18 others says so, instead of one per lane.
        local present, others = {}, {}
        for i = 1, #KEYS do if i ~= 10 then others[#others + 1] = KEYS[i] end end
        if redis.call('EXISTS', unpack(others)) == 0 then
            for i = 1, #KEYS do present[i] = (i == 10) end
        else
            for i = 1, #KEYS do present[i] = redis.call('EXISTS', KEYS[i]) == 1 end
        end
        if ARGV[3] == '1' then
            local best, best_id = nil, nil
            for i = 1, #KEYS do
                if present[i] then
                    local id = first_unread(KEYS[i])
                    if id and (not best_id or older(id, best_id)) then best, best_id = i, id end
                end
            end
            if best then
                local e = read(KEYS[best])
                if e then return {best, e[1], e[2]} end
            end
        end
        for i = 1, #KEYS do
            if present[i] then
                local e = read(KEYS[i])
                if e then return {i, e[1], e[2]} end
            end
        end
        return nil
        ",
    )
});

/// What a claimer last saw of one queue's lanes: that none but the main stream
/// existed, and when. While it drains the main stream, it looks for new lanes
/// again only once `fresh` has passed (see [`claim`]).
#[derive(Debug, Clone)]
pub struct Seen {
    only_main_at: Option<std::time::Instant>,
    fresh: std::time::Duration,
}

impl Seen {
    pub fn new(fresh: std::time::Duration) -> Seen {
        Seen {
            only_main_at: None,
            fresh,
        }
    }

    fn only_main(&self) -> bool {
        self.only_main_at
            .is_some_and(|at| at.elapsed() < self.fresh)
    }
}

/// Claims the next entries of `queue` by priority (see the module's rules),
/// without blocking: at most `count` from the main stream when it is the only
/// lane, else one; none when every lane is empty.
///
/// Usually no lane but the main stream exists: one `EXISTS` over the others
/// says so, and the main stream is then read directly (two commands, where the
/// script costs three with its own call). While the main stream keeps giving
/// entries, that answer is trusted for `seen`'s freshness (the worker's
/// `block_ms`, the time within which a pause takes effect too): a priority lane
/// made meanwhile is read from the first claim after that. A read that finds
/// the main stream empty forgets it. Otherwise, for a fair claim, or when the
/// main stream has no group yet, the script decides.
pub async fn claim(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    consumer: &str,
    fair: bool,
    count: usize,
    seen: &mut Seen,
) -> Result<Vec<Entry>, StoreError> {
    let lanes = all(keys, queue);
    if !fair {
        let mut only_main = seen.only_main();
        if !only_main {
            let others: Vec<&String> = lanes
                .iter()
                .filter(|(p, _)| *p != 0)
                .map(|(_, k)| k)
                .collect();
            let present: usize = redis::cmd("EXISTS")
                .arg(&others)
                .query_async(&mut **conn)
                .await?;
            only_main = present == 0;
            seen.only_main_at = only_main.then(std::time::Instant::now);
        }
        if only_main {
            let opts = redis::streams::StreamReadOptions::default()
                .group(GROUP, consumer)
                .count(count.max(1));
            let read: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                redis::AsyncCommands::xread_options(
                    &mut **conn,
                    &[keys.jobs(queue)],
                    &[">"],
                    &opts,
                )
                .await;
            match read {
                Ok(reply) => {
                    let ids = reply
                        .and_then(|r| r.keys.into_iter().next())
                        .map(|k| k.ids)
                        .unwrap_or_default();
                    if ids.is_empty() {
                        seen.only_main_at = None;
                    }
                    return Ok(ids
                        .into_iter()
                        .map(|id| Entry::from_stream(queue, 0, id))
                        .collect());
                }
                Err(e) if e.code() == Some("NOGROUP") => seen.only_main_at = None,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut inv = CLAIM.prepare_invoke();
    for (_, key) in &lanes {
        inv.key(key);
    }
    inv.arg(GROUP)
        .arg(consumer)
        .arg(if fair { "1" } else { "0" });
    let reply: Option<(usize, String, Vec<Vec<u8>>)> = inv.invoke_async(&mut **conn).await?;
    Ok(Vec::from_iter(reply.map(|(index, id, flat)| {
        let priority = lanes[index - 1].0;
        let map = flat
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv[0]).into_owned(),
                    redis::Value::BulkString(kv[1].clone()),
                )
            })
            .collect();
        Entry::from_stream(
            queue,
            priority,
            redis::streams::StreamId {
                id,
                map,
                ..Default::default()
            },
        )
    })))
}

/// The lanes of `queue` other than the main stream that exist now.
pub async fn present(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
) -> Result<Vec<(i64, String)>, StoreError> {
    let lanes: Vec<(i64, String)> = all(keys, queue)
        .into_iter()
        .filter(|(p, _)| *p != 0)
        .collect();
    let mut pipe = redis::pipe();
    for (_, key) in &lanes {
        pipe.exists(key);
    }
    let exists: Vec<bool> = pipe.query_async(&mut **conn).await?;
    Ok(lanes
        .into_iter()
        .zip(exists)
        .filter_map(|(l, e)| e.then_some(l))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_run_from_highest_to_lowest_with_the_main_stream_at_zero() {
        let keys = Keys::new("t");
        let lanes = all(&keys, "q");
        assert_eq!(lanes.len(), 19);
        assert_eq!(lanes[0], (9, "t:{q}:jobs:p9".to_string()));
        assert_eq!(lanes[9], (0, "t:{q}:jobs".to_string()));
        assert_eq!(lanes[18], (-9, "t:{q}:jobs:p-9".to_string()));
    }
}
