//! What the Server-Sent Events routes (`/jobs/{id}/logs`, `/events`) share.
//!
//! Invariant: a client resumes after the id it last received, given as the
//! `Last-Event-ID` header (what a browser's EventSource sends when it
//! reconnects) or as `?after=` (for clients that cannot set headers on the first
//! request); the header wins, and an empty value means "from the start point".

use super::error::{ApiError, ApiResult};

/// Where an SSE client resumes: the `Last-Event-ID` header (what a browser's
/// EventSource sends when it reconnects), else `?after=`; `None` when neither.
pub fn resume_point(
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
) -> ApiResult<Option<String>> {
    if let Some(value) = headers.get("last-event-id") {
        let value = value
            .to_str()
            .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))?;
        let value = value.trim();
        return Ok((!value.is_empty()).then(|| value.to_string()));
    }
    Ok(form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "after")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty()))
}
