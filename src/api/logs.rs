//! `GET /jobs/{id}/logs`: a job's log as Server-Sent Events, the stored lines
//! first and then the live ones, until the job ends.
//!
//! Invariants:
//! - Each line is one `line` event whose `id` is its `seq` and whose data is the
//!   line's JSON message (as published on the job's log channel); every `seq` is
//!   sent once, in order, with no gap ([`crate::admin::logs::Follower`]).
//! - `Last-Event-ID` (or `?after=`) resumes after that `seq`, so a client that
//!   reconnects misses and repeats nothing.
//! - The stream ends with one `end` event carrying the job's final status; a
//!   job not picked up yet is waited for. A lost Redis is waited out, then the
//!   stream goes on from its place.

use super::error::{ApiError, ApiResult};
use super::state::AppState;
use crate::admin::logs::{Follower, Item};
use crate::backoff::Backoff;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deadpool_redis::redis::AsyncCommands;
use std::convert::Infallible;
use std::time::Duration;

/// `GET /jobs/{id}/logs[?after=<seq>]`.
pub async fn follow(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (queue, bare) = crate::admin::job_ref(&id)?;
    let after = match super::sse::resume_point(&headers, query.as_deref())? {
        None => 0,
        Some(s) => s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "the point to resume after ({s:?}) is not a line's seq (a whole number)"
            ))
        })?,
    };
    // A job nobody knows (no line, no state, no entry waiting in a queue) is a 404
    // rather than a stream that waits forever.
    let mut conn = app.conn().await?;
    let job =
        crate::admin::lookup::locate(&mut conn, &app.keys, &app.settings, queue, bare).await?;
    let job = match job {
        Some(job) => job,
        None => {
            // The 404 of `find`, with its words; or, if a worker recorded it
            // in the meantime, where.
            let found = crate::admin::jobs::find(&mut conn, &app.keys, &app.settings, &id).await?;
            let queue = found.to_json(bare)["queue"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            crate::job::JobRef::new(&queue, bare)
        }
    };
    let stored: usize = conn.xlen(app.keys.log(&job.queue, &job.id)).await?;
    if stored == 0 {
        crate::admin::jobs::find(&mut conn, &app.keys, &app.settings, &job.to_string()).await?;
    }
    drop(conn);
    let follower = Follower::new(app.store.clone(), app.keys.clone(), &job, after);
    let events = futures_util::stream::unfold(Some(follower), |state| async move {
        let mut follower = state?;
        let event = next_event(&mut follower).await?;
        Some((Ok::<_, Infallible>(event), Some(follower)))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The next event to send, or `None` to close the stream.
async fn next_event(follower: &mut Follower) -> Option<Event> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut said = false;
    loop {
        match follower.next().await {
            Ok(Some(Item::Line(line))) => {
                let data = serde_json::to_string(&line).expect("a log message always serializes");
                return Some(
                    Event::default()
                        .id(line.seq.to_string())
                        .event("line")
                        .data(data),
                );
            }
            Ok(Some(Item::Waiting)) => {
                return Some(Event::default().comment("waiting for a worker to pick up the job"))
            }
            Ok(Some(Item::End { status })) => {
                let data =
                    serde_json::json!({ "job": follower.id(), "status": status }).to_string();
                return Some(Event::default().event("end").data(data));
            }
            Ok(None) => return None,
            Err(e) if e.is_connection() => {
                if !said {
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "lost Redis while streaming a job's log; reconnecting");
                    said = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                // The client may reconnect with Last-Event-ID and go on from there.
                tracing::warn!(error = %crate::telemetry::error_chain(&e), "streaming a job's log failed; closing the stream");
                return None;
            }
        }
    }
}
