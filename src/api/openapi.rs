//! `GET /openapi.json`: the OpenAPI 3.0 description of every route served.
//!
//! Invariant: the document (`openapi.json` beside this file, embedded in the
//! binary) names exactly the paths of [`super::paths`] with exactly the methods
//! each serves; a test checks both directions against `router()`, and
//! schemathesis checks the answers against its schemas.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /openapi.json`.
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
