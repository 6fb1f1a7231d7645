//! `/subscribers`, `/profiles` and a job's webhook deliveries: the registries
//! the CLI's `subscriber`, `profile` and `webhooks` commands manage.
//!
//! Invariants: a subscriber's secret is in an answer only when this request
//! made it (creation without a secret, or a rotation); listings mask it. A
//! profile's `secret_env` values are always masked when shown. Delivery bodies
//! and per-job webhook secrets are never shown.

use super::error::{ApiError, ApiResult};
use super::state::AppState;
use crate::admin::{self, subscribers::NewSubscriber};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// `GET /subscribers`.
pub async fn subscribers(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    let mut conn = app.conn().await?;
    let list = admin::subscribers::list(&mut conn, &app.keys).await?;
    Ok(Json(json!({ "subscribers": list })))
}

#[derive(Debug, serde::Deserialize)]
pub struct NewNamed {
    name: String,
    #[serde(flatten)]
    subscriber: NewSubscriber,
}

/// `POST /subscribers`: `{name, url, events?, queues?, secret?}`; 201, with the
/// secret when one was generated (shown this once) and any warnings.
pub async fn add_subscriber(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let new: NewNamed = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"name\", \"url\", \"events\"?, \"queues\"?, \"secret\"?}}: {e}"
        ))
    })?;
    let mut conn = app.conn().await?;
    let added = admin::subscribers::add(
        &mut conn,
        &app.keys,
        &app.settings,
        &new.name,
        new.subscriber,
    )
    .await?;
    let s = &added.subscriber;
    let body = json!({
        "name": new.name, "url": s.url, "events": s.events, "queues": s.queues,
        "secret": added.generated_secret, "warnings": added.warnings,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /subscribers/{name}`.
pub async fn remove_subscriber(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let mut conn = app.conn().await?;
    admin::subscribers::remove(&mut conn, &app.keys, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct Rotation {
    secret: Option<String>,
}

/// `POST /subscribers/{name}/rotate`: `{secret?}`; answers the new secret.
pub async fn rotate_subscriber(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let rotation: Rotation = if body.is_empty() {
        Rotation::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body must be {{\"secret\"?}}: {e}")))?
    };
    let mut conn = app.conn().await?;
    let secret =
        admin::subscribers::rotate(&mut conn, &app.keys, &app.settings, &name, rotation.secret)
            .await?;
    Ok(Json(json!({
        "name": name, "secret": secret,
        "previous_valid_seconds": app.settings.webhooks.rotation_overlap_seconds,
    })))
}

fn check_profile_name(name: &str) -> ApiResult<()> {
    if crate::profile::is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{name:?} is not a profile name ([A-Za-z0-9_.-], 1 to 64)"
        )))
    }
}

/// `GET /profiles`: every profile, its secrets masked.
pub async fn profiles(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    let mut conn = app.conn().await?;
    let all = crate::profile::list(&mut conn, &app.keys).await?;
    let list: Vec<Value> = all
        .iter()
        .map(|(name, spec)| json!({"name": name, "spec": crate::profile::shown(spec)}))
        .collect();
    Ok(Json(json!({ "profiles": list })))
}

/// `GET /profiles/{name}`.
pub async fn profile(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    check_profile_name(&name)?;
    let mut conn = app.conn().await?;
    let stored = crate::profile::get(&mut conn, &app.keys, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no profile named {name:?}")))?;
    let spec = crate::profile::shown(&String::from_utf8_lossy(&stored));
    Ok(Json(json!({"name": name, "spec": spec})))
}

/// `PUT /profiles/{name}`: the body is the profile's JSON spec.
pub async fn put_profile(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    check_profile_name(&name)?;
    let spec: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    crate::profile::check(&spec)
        .map_err(|e| ApiError::bad_request(format!("not a valid profile: {e}")))?;
    let mut conn = app.conn().await?;
    crate::profile::put(&mut conn, &app.keys, &name, &spec).await?;
    Ok(Json(json!({"name": name, "registered": true})))
}

/// `DELETE /profiles/{name}`.
pub async fn remove_profile(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    check_profile_name(&name)?;
    let mut conn = app.conn().await?;
    if !crate::profile::remove(&mut conn, &app.keys, &name).await? {
        return Err(ApiError::not_found(format!("no profile named {name:?}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /jobs/{id}/webhooks`: the job's deliveries, each with every attempt.
pub async fn deliveries(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    admin::job_id(&id)?;
    let mut conn = app.conn().await?;
    let all = crate::webhook::outbox::for_job(&mut conn, &app.keys, &id).await?;
    let list: Vec<Value> = all
        .into_iter()
        .map(|(d, attempts)| {
            let attempts: Vec<Value> = attempts
                .iter()
                .map(|a| serde_json::from_str(a).unwrap_or_else(|_| Value::String(a.clone())))
                .collect();
            json!({
                "id": d.id, "event": d.event, "subscriber": d.subscriber, "status": d.status,
                "attempts": attempts,
            })
        })
        .collect();
    Ok(Json(json!({ "deliveries": list })))
}

/// `POST /webhooks/{delivery}/replay`: send a delivery again.
pub async fn replay(
    State(app): State<AppState>,
    Path(delivery): Path<String>,
) -> ApiResult<Response> {
    let mut conn = app.conn().await?;
    if !crate::webhook::outbox::replay(&mut conn, &app.keys, &delivery).await? {
        return Err(ApiError::not_found(format!("no delivery {delivery}")));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": delivery, "status": "pending"})),
    )
        .into_response())
}

fn check_limit_key(key: &str) -> ApiResult<()> {
    if crate::config::is_valid_queue_name(key) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{key:?} is not a key name ([A-Za-z0-9_.-], 1 to 64 characters)"
        )))
    }
}

/// `GET /limits`: every fleet-wide limit, with how many jobs hold a slot now.
pub async fn limits(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    let mut conn = app.conn().await?;
    let all = crate::limits::list(&mut conn, &app.keys).await?;
    let list: Vec<Value> = all
        .into_iter()
        .map(|(key, limit, running)| json!({"key": key, "limit": limit, "running": running}))
        .collect();
    Ok(Json(json!({ "limits": list })))
}

/// `PUT /limits/{key}`: `{"concurrency"?, "rate"?, "per_seconds"?}`.
pub async fn put_limit(
    State(app): State<AppState>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    check_limit_key(&key)?;
    let limit: crate::limits::Limit = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"concurrency\"?, \"rate\"?, \"per_seconds\"?}}: {e}"
        ))
    })?;
    limit.check().map_err(ApiError::bad_request)?;
    let mut conn = app.conn().await?;
    crate::limits::set(&mut conn, &app.keys, &key, &limit).await?;
    Ok(Json(json!({"key": key, "limit": limit})))
}

/// `DELETE /limits/{key}`.
pub async fn remove_limit(
    State(app): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    check_limit_key(&key)?;
    let mut conn = app.conn().await?;
    if !crate::limits::remove(&mut conn, &app.keys, &key).await? {
        return Err(ApiError::not_found(format!("no limit is set on {key}")));
    }
    Ok(StatusCode::NO_CONTENT)
}
