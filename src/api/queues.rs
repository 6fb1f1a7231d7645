//! `/queues` (numbers, pause, resume, dead entries), `/workers` and `/healthz`.
//!
//! Invariant: each handler is one call into [`crate::admin`]; a dead entry is
//! named by its dead-stream id or its job id, as the CLI names it.

use super::error::ApiResult;
use super::state::AppState;
use crate::admin;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// `GET /queues`.
pub async fn list(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    let mut conn = app.conn().await?;
    let stats = admin::queues::stats(&mut conn, &app.keys, &app.settings).await?;
    Ok(Json(json!({ "queues": stats })))
}

async fn set_paused(app: AppState, queue: String, pause: bool) -> ApiResult<Json<Value>> {
    let mut conn = app.conn().await?;
    let changed = admin::queues::set_paused(&mut conn, &app.keys, &queue, pause).await?;
    Ok(Json(
        json!({"queue": queue, "paused": pause, "changed": changed}),
    ))
}

/// `POST /queues/{queue}/pause`.
pub async fn pause(
    State(app): State<AppState>,
    Path(queue): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(app, queue, true).await
}

/// `POST /queues/{queue}/resume`.
pub async fn resume(
    State(app): State<AppState>,
    Path(queue): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(app, queue, false).await
}

#[derive(Debug, serde::Deserialize)]
pub struct DeadQuery {
    count: Option<usize>,
}

/// `GET /queues/{queue}/dead?count=`: newest first.
pub async fn dead(
    State(app): State<AppState>,
    Path(queue): Path<String>,
    Query(q): Query<DeadQuery>,
) -> ApiResult<Json<Value>> {
    admin::queue_name(&queue)?;
    let count = q.count.unwrap_or(100);
    if !(1..=1000).contains(&count) {
        return Err(super::error::ApiError::bad_request(format!(
            "count {count} is not between 1 and 1000"
        )));
    }
    let mut conn = app.conn().await?;
    let entries = admin::dead::read(&mut conn, &app.keys, &queue, Some(count)).await?;
    let entries: Vec<Value> = entries.iter().map(|d| d.to_json()).collect();
    Ok(Json(json!({ "dead": entries })))
}

/// `POST /queues/{queue}/dead/{entry}/retry`.
pub async fn dead_retry(
    State(app): State<AppState>,
    Path((queue, entry)): Path<(String, String)>,
) -> ApiResult<Response> {
    admin::queue_name(&queue)?;
    let mut conn = app.conn().await?;
    let d = admin::dead::find(&mut conn, &app.keys, &entry, Some(&queue)).await?;
    let r = admin::dead::retry(&mut conn, &app.keys, &d).await?;
    let body = json!({"id": r.job, "queue": r.queue, "entry": r.entry});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `DELETE /queues/{queue}/dead/{entry}`.
pub async fn dead_delete(
    State(app): State<AppState>,
    Path((queue, entry)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    admin::queue_name(&queue)?;
    let mut conn = app.conn().await?;
    let d = admin::dead::find(&mut conn, &app.keys, &entry, Some(&queue)).await?;
    admin::dead::remove(&mut conn, &app.keys, &d).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /queues/{queue}/dead/retry`: every dead entry of the queue, oldest first.
pub async fn dead_retry_all(
    State(app): State<AppState>,
    Path(queue): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut conn = app.conn().await?;
    let bulk = admin::dead::all(&mut conn, &app.keys, Some(&queue), false).await?;
    Ok(Json(
        json!({"retried": bulk.done, "refused": refused(&bulk)}),
    ))
}

/// `DELETE /queues/{queue}/dead`: every dead entry of the queue.
pub async fn dead_delete_all(
    State(app): State<AppState>,
    Path(queue): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut conn = app.conn().await?;
    let bulk = admin::dead::all(&mut conn, &app.keys, Some(&queue), true).await?;
    Ok(Json(
        json!({"deleted": bulk.done, "refused": refused(&bulk)}),
    ))
}

fn refused(bulk: &admin::dead::Bulk) -> Vec<Value> {
    bulk.refused
        .iter()
        .map(|(id, why)| json!({"dead_id": id, "error": why}))
        .collect()
}

/// `GET /workers`.
pub async fn workers(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    let mut conn = app.conn().await?;
    let workers = admin::workers::list(&mut conn, &app.keys).await?;
    Ok(Json(json!({ "workers": workers })))
}

/// `GET /healthz`: 200 while Redis answers `PING`, else 503.
pub async fn healthz(State(app): State<AppState>) -> Response {
    let ping = async {
        let mut conn = app.store.conn().await?;
        let pong: String = deadpool_redis::redis::cmd("PING")
            .query_async(&mut conn)
            .await?;
        Ok::<_, crate::store::StoreError>(pong)
    }
    .await;
    match ping {
        Ok(_) => Json(json!({"status": "ok", "redis": "ok"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %crate::telemetry::error_chain(&e), "health check: Redis does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "redis": "unreachable"})),
            )
                .into_response()
        }
    }
}
