//! `/jobs`: submit, list, read, cancel, retry, and a job's files.
//!
//! Invariant: each handler is one call into [`crate::admin::jobs`] or
//! [`crate::admin::submit`]; what it answers is what the CLI prints, as JSON.

use super::error::{ApiError, ApiResult};
use super::state::AppState;
use crate::admin;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
pub struct SubmitQuery {
    queue: Option<String>,
}

/// `POST /jobs[?queue=]`: the body is a job spec; 201 with the id, 400 naming the
/// field at fault, 409 for an id a job already holds.
pub async fn submit(
    State(app): State<AppState>,
    Query(q): Query<SubmitQuery>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let spec: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    // The queue may come with the spec (`"queue"` is not a spec field: it is taken
    // out) or in the query string.
    let mut spec = spec;
    let in_body = spec
        .as_object_mut()
        .and_then(|o| o.remove("queue"))
        .and_then(|v| v.as_str().map(str::to_string));
    let queue = q.queue.or(in_body).unwrap_or_else(|| "default".to_string());
    let mut conn = app.conn().await?;
    let s = admin::submit::submit(&mut conn, &app.keys, &app.settings, &queue, &spec).await?;
    let body = json!({"id": s.id, "queue": s.queue, "entry": s.entry, "warnings": s.warnings});
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/jobs/{}", s.id))],
        Json(body),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    queue: Option<String>,
    status: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /jobs?queue=&status=&reason=&since=&cursor=&limit=`: newest first;
/// `next` is the cursor of the following page (`null`: nothing further).
pub async fn list(
    State(app): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let filter = admin::jobs::filter(
        q.queue.as_deref().filter(|s| !s.is_empty()),
        q.status.as_deref().filter(|s| !s.is_empty()),
        q.reason.as_deref().filter(|s| !s.is_empty()),
        q.since.as_deref().filter(|s| !s.is_empty()),
    )?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is not between 1 and 500"
        )));
    }
    let mut conn = app.conn().await?;
    let (jobs, next) = admin::jobs::list(
        &mut conn,
        &app.keys,
        &app.settings,
        &filter,
        q.cursor.as_deref().filter(|s| !s.is_empty()),
        limit,
    )
    .await?;
    Ok(Json(json!({"jobs": jobs, "next": next})))
}

/// `GET /jobs/{id}`: the typed job, or what its queue says of an unread one.
pub async fn get(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let mut conn = app.conn().await?;
    let found = admin::jobs::find(&mut conn, &app.keys, &app.settings, &id).await?;
    Ok(Json(found.to_json(admin::job_ref(&id)?.1)))
}

/// `DELETE /jobs/{id}`: cancel. 202: asked; 409: it has ended already.
pub async fn cancel(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let mut conn = app.conn().await?;
    let c = admin::jobs::cancel(&mut conn, &app.keys, &app.settings, &id).await?;
    let body = json!({"id": id, "cancel_requested": true, "status": c.status.unwrap_or_else(|| "queued".into()), "waiting_in": c.waiting_in});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /jobs/{id}/retry`: a finished job runs again, same id, next attempt.
pub async fn retry(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let mut conn = app.conn().await?;
    let r = admin::jobs::retry(&mut conn, &app.keys, &app.settings, &id).await?;
    let body = json!({"id": id, "queue": r.queue, "entry": r.entry, "attempt": r.attempt});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `GET /jobs/{id}/files/{name}`: the bytes, as a download.
pub async fn file(
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let mut conn = app.conn().await?;
    let bytes = admin::jobs::file(&mut conn, &app.keys, &app.settings, &id, &name).await?;
    // Served as opaque bytes, never rendered: a job's file must not run as a page
    // of this origin.
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe}\""),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        bytes,
    )
        .into_response())
}
