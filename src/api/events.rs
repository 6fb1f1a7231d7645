//! `GET /events`: every job event, as Server-Sent Events, read from the queues'
//! capped events streams `<prefix>:{<q>}:events`.
//!
//! Invariants:
//! - Each event is sent once and, within its queue, in the stream's order. The
//!   SSE `id` is the position in every queue read (`<q>=<entry id>,...`), and
//!   each read starts after those positions, so `Last-Event-ID` (or `?after=`)
//!   resumes exactly where a client left off (as far back as the streams' caps
//!   keep). A plain entry id (`1700000000000-0`) resumes every queue after that
//!   time.
//! - Without a resume point each stream starts after its newest event at the
//!   time of the request (resolved before the answer is sent), so an event
//!   recorded after the answer arrives is never missed. A queue that appears
//!   later is read from the time of the request.
//! - Each read names one stream per command, never two: the queues' streams are
//!   in different Redis Cluster slots. Between reads the reader waits for the
//!   events channel to say something happened (or a timeout), on a pub/sub
//!   connection of its own, so an idle client costs no command.

use super::error::{ApiError, ApiResult};
use super::state::AppState;
use crate::backoff::Backoff;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

/// How long the reader waits for a sign of a new event before it reads (and
/// looks for new queues) again.
const IDLE: Duration = Duration::from_secs(10);
/// Entries read per stream per round trip.
const COUNT: usize = 200;

/// `GET /events[?queue=<q>[,<q>...]][&job=<id>|<q>/<id>][&type=<type>[,<type>...]][&after=<position>]`.
pub async fn stream(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut job = None;
    let mut queues: Vec<String> = Vec::new();
    let mut types: Vec<String> = Vec::new();
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    };
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match &*k {
            "job" if !v.is_empty() => {
                let (queue, id) = crate::admin::job_ref(&v)?;
                queues.extend(queue.map(str::to_string));
                job = Some(id.to_string());
            }
            "queue" => {
                for q in list(&v) {
                    crate::admin::queue_name(&q)?;
                    queues.push(q);
                }
            }
            "type" => types.extend(list(&v)),
            _ => {}
        }
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut conn = app.conn().await?;
    let fixed = !queues.is_empty();
    if !fixed {
        queues = crate::admin::lookup::queues(&mut conn, &app.keys, &app.settings)
            .await?
            .into_iter()
            .collect();
    }
    let mut positions: BTreeMap<String, String> = BTreeMap::new();
    match super::sse::resume_point(&headers, query.as_deref())? {
        Some(text) => {
            let (given, floor) = parse_position(&text).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "the point to resume after ({text:?}) is not an event id \
                     (like q1=1700000000000-0,q2=1700000000001-0, or 1700000000000-0)"
                ))
            })?;
            for q in &queues {
                let at = given.get(q).cloned().or_else(|| floor.clone());
                positions.insert(q.clone(), at.unwrap_or_else(|| "0-0".into()));
            }
            for (q, at) in given {
                if !fixed {
                    positions.entry(q).or_insert(at);
                }
            }
        }
        None => {
            for q in &queues {
                let newest: redis::streams::StreamRangeReply = conn
                    .xrevrange_count(app.keys.events(q), "+", "-", 1)
                    .await?;
                let at = newest
                    .ids
                    .into_iter()
                    .next()
                    .map_or_else(|| "0-0".to_string(), |e| e.id);
                positions.insert(q.clone(), at);
            }
        }
    }
    drop(conn);
    let reader = Reader {
        app,
        live: None,
        positions,
        discover: !fixed,
        since: format!("{now_ms}-0"),
        buffer: VecDeque::new(),
        job,
        types,
    };
    let events = futures_util::stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await;
        Some((Ok::<_, Infallible>(event), reader))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A resume point: `<q>=<entry id>` pairs joined by `,`, or one plain entry id
/// (the floor for every queue).
fn parse_position(text: &str) -> Option<(BTreeMap<String, String>, Option<String>)> {
    if is_entry_id(text) {
        return Some((BTreeMap::new(), Some(text.to_string())));
    }
    let mut given = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (q, id) = pair.split_once('=')?;
        if !crate::job::is_valid_queue_name(q) || !is_entry_id(id) {
            return None;
        }
        given.insert(q.to_string(), id.to_string());
    }
    (!given.is_empty()).then_some((given, None))
}

/// The SSE id for these positions.
fn position(positions: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = positions
        .iter()
        .map(|(q, id)| format!("{q}={id}"))
        .collect();
    pairs.join(",")
}

/// A stream entry id: `<ms>` or `<ms>-<n>`.
fn is_entry_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    parts.next().is_some_and(digits) && parts.next().is_none_or(digits)
}

struct Reader {
    app: AppState,
    /// Subscribed to the events channel: a message says there may be more to read.
    live: Option<redis::aio::PubSub>,
    /// Each queue read, and the id of the last entry read of it (sent or filtered out).
    positions: BTreeMap<String, String>,
    /// Look for queues that appear later (no `queue` was asked for).
    discover: bool,
    /// Where a queue that appears later is read from: the time of the request.
    since: String,
    buffer: VecDeque<Event>,
    job: Option<String>,
    types: Vec<String>,
}

impl Reader {
    /// The next matching event; waits (retrying through a lost Redis) until one comes.
    async fn next(&mut self) -> Event {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut said = false;
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return event;
            }
            match self.read().await {
                Ok(true) => {}
                Ok(false) => self.wait().await,
                Err(e) => {
                    self.live = None;
                    if !said {
                        tracing::warn!(error = %crate::telemetry::error_chain(&e), "reading the events streams failed; retrying");
                        said = true;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Waits until the events channel says something (or [`IDLE`] passes).
    async fn wait(&mut self) {
        if let Some(live) = &mut self.live {
            let mut messages = live.on_message();
            let _ = tokio::time::timeout(IDLE, messages.next()).await;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One read of every stream after its position: what it returns, filtered,
    /// goes to the buffer. True when anything was read.
    async fn read(&mut self) -> Result<bool, crate::store::StoreError> {
        if self.live.is_none() {
            // Subscribed before the read, so no event between the two is missed.
            let mut pubsub = self.app.store.pubsub().await?;
            pubsub.subscribe(self.app.keys.events_channel()).await?;
            self.live = Some(pubsub);
            if self.discover {
                let mut conn = self.app.store.conn().await?;
                let queues =
                    crate::admin::lookup::queues(&mut conn, &self.app.keys, &self.app.settings)
                        .await?;
                for q in queues {
                    self.positions
                        .entry(q)
                        .or_insert_with(|| self.since.clone());
                }
            }
        }
        let mut conn = self.app.store.conn().await?;
        let options = redis::streams::StreamReadOptions::default().count(COUNT);
        let mut pipe = redis::pipe();
        for (q, at) in &self.positions {
            pipe.xread_options(&[self.app.keys.events(q)], &[at], &options);
        }
        let replies: Vec<Option<redis::streams::StreamReadReply>> =
            pipe.query_async(&mut *conn).await?;
        let queues: Vec<String> = self.positions.keys().cloned().collect();
        let mut any = false;
        for (q, reply) in queues.iter().zip(replies) {
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                any = true;
                self.positions.insert(q.clone(), entry.id.clone());
                let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
                let kind = field("type");
                if self.job.as_deref().is_some_and(|j| j != field("job")) {
                    continue;
                }
                if !self.types.is_empty() && !self.types.contains(&kind) {
                    continue;
                }
                self.buffer.push_back(
                    Event::default()
                        .id(position(&self.positions))
                        .event(kind)
                        .data(field("event")),
                );
            }
        }
        if !any && self.discover {
            // Now and then, a queue that appeared since.
            let known = self.positions.len();
            let mut conn = self.app.store.conn().await?;
            let queues =
                crate::admin::lookup::queues(&mut conn, &self.app.keys, &self.app.settings).await?;
            for q in queues {
                self.positions
                    .entry(q)
                    .or_insert_with(|| self.since.clone());
            }
            any = self.positions.len() > known;
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_a_plain_id_is_a_floor() {
        let mut p = BTreeMap::new();
        p.insert("a".to_string(), "1-0".to_string());
        p.insert("b.c".to_string(), "2-3".to_string());
        let text = position(&p);
        assert_eq!(text, "a=1-0,b.c=2-3");
        assert_eq!(parse_position(&text), Some((p, None)));
        assert_eq!(
            parse_position("1700000000000-0"),
            Some((BTreeMap::new(), Some("1700000000000-0".into())))
        );
        assert_eq!(parse_position("a=x"), None);
        assert_eq!(parse_position("a:b=1-0"), None);
    }
}
