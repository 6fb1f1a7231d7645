//! `GET /events`: every job event, as Server-Sent Events, read from the capped
//! events stream `<prefix>:events` with `XREAD BLOCK`.
//!
//! Invariants:
//! - Each event is sent once and in the stream's order: the stream entry's id is
//!   the SSE `id`, and each read starts after the last id sent, so
//!   `Last-Event-ID` (or `?after=`) resumes exactly where a client left off (as
//!   far back as the stream's cap keeps).
//! - Without a resume point the stream starts after the newest event at the time
//!   of the request (resolved before the answer is sent), so an event recorded
//!   after the answer arrives is never missed.
//! - Each client reads on a connection of its own, outside the pools: a blocking
//!   read held for as long as a client stays must not starve the handlers.

use super::error::{ApiError, ApiResult};
use super::state::AppState;
use crate::backoff::Backoff;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

/// How long one `XREAD` blocks before it is issued again.
const BLOCK: Duration = Duration::from_secs(10);
/// Entries read per round trip.
const COUNT: usize = 200;

/// `GET /events[?job=<id>][&type=<type>[,<type>...]][&after=<entry id>]`.
pub async fn stream(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut job = None;
    let mut types: Vec<String> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match &*k {
            "job" if !v.is_empty() => job = Some(crate::admin::job_id(&v)?.to_string()),
            "type" => types.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    let start = match super::sse::resume_point(&headers, query.as_deref())? {
        Some(id) if is_entry_id(&id) => id,
        Some(id) => {
            return Err(ApiError::bad_request(format!(
                "the point to resume after ({id:?}) is not an event id (like 1700000000000-0)"
            )))
        }
        None => {
            let mut conn = app.conn().await?;
            let newest: redis::streams::StreamRangeReply =
                conn.xrevrange_count(app.keys.events(), "+", "-", 1).await?;
            newest
                .ids
                .into_iter()
                .next()
                .map_or_else(|| "0-0".to_string(), |e| e.id)
        }
    };
    let reader = Reader {
        app,
        conn: None,
        last: start,
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

/// A stream entry id: `<ms>` or `<ms>-<n>`.
fn is_entry_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    parts.next().is_some_and(digits) && parts.next().is_none_or(digits)
}

struct Reader {
    app: AppState,
    conn: Option<redis::aio::MultiplexedConnection>,
    /// The id of the last entry read (sent or filtered out).
    last: String,
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
            if let Err(e) = self.read().await {
                self.conn = None;
                if !said {
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "reading the events stream failed; retrying");
                    said = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }

    /// One blocking read: what it returns, filtered, goes to the buffer.
    async fn read(&mut self) -> Result<(), crate::store::StoreError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.app.store.dedicated(BLOCK).await?),
        };
        let options = redis::streams::StreamReadOptions::default()
            .block(BLOCK.as_millis() as usize)
            .count(COUNT);
        let reply: Option<redis::streams::StreamReadReply> = conn
            .xread_options(&[self.app.keys.events()], &[&self.last], &options)
            .await
            .map_err(crate::store::StoreError::from)?;
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            self.last = entry.id.clone();
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
                    .id(entry.id.as_str())
                    .event(kind)
                    .data(field("event")),
            );
        }
        Ok(())
    }
}
