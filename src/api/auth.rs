//! Bearer tokens: `read` for every `GET`, `admin` for everything else.
//!
//! Invariants:
//! - With tokens configured, a request without a valid one is answered 401, and
//!   one whose token lacks the scope 403, before any handler runs.
//! - With none configured, every request is let through: `serve` then listens on
//!   loopback only (`ApiSettings::check`), as it says at start.
//! - `/healthz` is open to all, so a load balancer or Compose can probe it; so is
//!   `GET` of the dashboard's page and assets ([`dashboard::is_public`]), which hold
//!   no data: the page then asks for a token when the API answers 401.
//! - The browser's EventSource cannot send headers, so a `GET` may carry the token
//!   as `?token=` instead; the dashboard does so for its live views.

use super::dashboard;
use super::error::ApiError;
use super::state::AppState;
use crate::config::Scope;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

pub async fn require(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let api = &app.settings.api;
    if api.tokens.is_empty()
        || req.uri().path() == "/healthz"
        || dashboard::is_public(req.method(), req.uri().path())
    {
        return Ok(next.run(req).await);
    }
    let needed = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Scope::Read
    } else {
        Scope::Admin
    };
    let secret = bearer(&req).or_else(|| query_token(&req));
    let Some(scope) = secret.as_deref().and_then(|s| api.scope_of(s)) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is needed (Authorization: Bearer <token>)",
        ));
    };
    if scope < needed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this token may only read; changing anything needs an admin token",
        ));
    }
    Ok(next.run(req).await)
}

fn bearer(req: &Request) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (kind, token) = value.split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn query_token(req: &Request) -> Option<String> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}
