//! The routes of the result URLs, and one request to them: method, token, the
//! job's share of connections, size, then the body (read with a deadline,
//! parsed on a blocking thread).
//!
//! Every answer other than 200 carries a one-line reason in plain text. A refused
//! request's unread body is read on and thrown away (up to [`DRAIN_BYTES`], for
//! [`DRAIN_TIME`]) before answering: closing a socket with unread data makes the
//! kernel send a reset, and the client would see "connection reset" instead of
//! the reason. The exceptions are a client waiting for `100 Continue` whose body
//! was never asked for (reading it would invite the upload just refused) and a
//! body that timed out (its client is too slow to be waited for again).

use super::parse::{self, body_too_large, BoxError, PostLimits, Refusal};
use super::progress::{Progress, PROGRESS_MAX_BYTES};
use super::registry::{Entered, Lookup, Registry};
use super::{Limits, PostKind};
use axum::body::Body as AxumBody;
use axum::extract::{Path, Request, State};
use axum::http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use axum::http::{request::Parts, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// How much of a refused body is read and discarded so the answer arrives.
const DRAIN_BYTES: u64 = 1 << 20;
/// How long draining a refused body may take.
const DRAIN_TIME: Duration = Duration::from_secs(1);

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// What every request shares.
pub(crate) struct Shared {
    pub registry: Arc<Registry>,
    pub limits: Limits,
    /// Bodies parsed at once, each on a blocking thread: as many as there are
    /// cores, so that parsing never crowds out the runtime.
    pub parsing: Semaphore,
}

/// The routes: the three URLs of every job, and 404 for anything else.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/results/{token}/{kind}", any(result_url))
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "no such result URL") })
        .with_state(shared)
}

/// The number of bodies parsed at once.
pub(crate) fn parse_slots() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

async fn result_url(
    State(shared): State<Arc<Shared>>,
    Path((token, kind)): Path<(String, String)>,
    request: Request,
) -> Response {
    let kind = match kind.as_str() {
        "response" => Some(PostKind::Response),
        "abort" => Some(PostKind::Abort),
        "progress" => None,
        _ => return refuse(StatusCode::NOT_FOUND, "no such result URL"),
    };
    let (parts, body) = request.into_parts();
    let mut body: Body =
        Box::pin(AxumBody::into_data_stream(body).map(|r| r.map_err(BoxError::from)));
    let mut body_read = false;
    // Held until the answer is drained, so that the job's share counts the
    // connection for as long as this request holds it.
    let (answer, _entered) = match kind {
        Some(kind) => answer(&shared, &token, kind, &parts, &mut body, &mut body_read).await,
        None => progress(&shared, &token, &parts, &mut body, &mut body_read).await,
    };
    let waits_for_continue = parts
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let timed_out = answer.status() == StatusCode::REQUEST_TIMEOUT;
    if answer.status() != StatusCode::OK && !timed_out && (body_read || !waits_for_continue) {
        drain(&mut body).await;
    }
    answer
}

async fn answer(
    shared: &Shared,
    token: &str,
    kind: PostKind,
    parts: &Parts,
    body: &mut Body,
    body_read: &mut bool,
) -> (Response, Option<Entered>) {
    let limits = &shared.limits;
    if parts.method != Method::POST {
        let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, "only POST is allowed");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return (r, None);
    }
    let (job_id, limit_bytes) = match shared.registry.lookup(token) {
        Lookup::Open {
            job_id,
            limit_bytes,
        } => (job_id, limit_bytes),
        other => return (not_open(other), None),
    };
    let Some(entered) = shared.registry.enter(token, limits.max_connections_per_job) else {
        let reason = too_many(&job_id, limits.max_connections_per_job);
        return (
            refused(&job_id, kind, StatusCode::TOO_MANY_REQUESTS, reason),
            None,
        );
    };
    let entered = Some(entered);
    let post_limits = PostLimits {
        limit_bytes,
        max_body: limit_bytes.saturating_add(limits.fields_bytes),
        max_fields: limits.max_fields,
        max_files: limits.max_files,
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > post_limits.max_body) {
        let refusal = body_too_large(post_limits.max_body, limit_bytes);
        return (refusal_answer(&job_id, kind, refusal), entered);
    }
    let content_type = match parts.headers.get(CONTENT_TYPE).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(ct)) => Some(ct),
        Some(Err(_)) => {
            let refusal = Refusal::BadRequest("the Content-Type is not ASCII".into());
            return (refusal_answer(&job_id, kind, refusal), entered);
        }
    };
    let format = match parse::format(content_type) {
        Ok(format) => format,
        Err(refusal) => return (refusal_answer(&job_id, kind, refusal), entered),
    };
    *body_read = true;
    // The headers are in; the body gets the same time again, as a whole, so
    // that a client sending it a byte at a time cannot hold the connection.
    let read = tokio::time::timeout(limits.read_timeout, parse::read_body(body, &post_limits));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(refusal)) => return (refusal_answer(&job_id, kind, refusal), entered),
        Err(_) => {
            let reason = format!(
                "the body did not arrive within {} s (results.read_timeout_seconds)",
                limits.read_timeout.as_secs_f64()
            );
            return (
                refused(&job_id, kind, StatusCode::REQUEST_TIMEOUT, reason),
                entered,
            );
        }
    };
    let posted = {
        let Ok(_slot) = shared.parsing.acquire().await else {
            return (
                refuse(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"),
                entered,
            );
        };
        let parsing =
            tokio::task::spawn_blocking(move || parse::parse(kind, format, bytes, &post_limits));
        match parsing.await {
            Ok(Ok(posted)) => posted,
            Ok(Err(refusal)) => return (refusal_answer(&job_id, kind, refusal), entered),
            Err(e) => {
                warn!(job_id = %job_id, error = %e, "parsing a posted result failed");
                let r = refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the body could not be parsed",
                );
                return (r, entered);
            }
        }
    };
    let files = posted.files.len();
    let ignored = posted.dropped.clone();
    if let Err(lookup) = shared.registry.commit(token, posted) {
        return (not_open(lookup), entered);
    }
    info!(job_id = %job_id, kind = kind.url_name(), files, "result posted");
    let mut reply = serde_json::json!({ "ok": true });
    if !ignored.is_empty() {
        reply["ignored"] = ignored.into();
    }
    let mut r = Response::new(AxumBody::from(reply.to_string()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (r, entered)
}

/// A POST to `PROGRESS_URL`: the same method, token and per-job checks as a
/// result, a body of at most [`PROGRESS_MAX_BYTES`] in JSON or form encoding,
/// parsed here (it is small) and handed to the job's registration.
async fn progress(
    shared: &Shared,
    token: &str,
    parts: &Parts,
    body: &mut Body,
    body_read: &mut bool,
) -> (Response, Option<Entered>) {
    const URL: &str = "PROGRESS_URL";
    let limits = &shared.limits;
    if parts.method != Method::POST {
        let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, "only POST is allowed");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return (r, None);
    }
    let Some(job_id) = shared.registry.job_of(token) else {
        return (not_open(Lookup::Missing), None);
    };
    let Some(entered) = shared.registry.enter(token, limits.max_connections_per_job) else {
        let reason = too_many(&job_id, limits.max_connections_per_job);
        return (
            refused_at(&job_id, URL, StatusCode::TOO_MANY_REQUESTS, reason),
            None,
        );
    };
    let entered = Some(entered);
    let too_large = || {
        Refusal::TooLarge(format!(
            "a progress report is at most {PROGRESS_MAX_BYTES} bytes"
        ))
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > PROGRESS_MAX_BYTES) {
        return (refusal_at(&job_id, URL, too_large()), entered);
    }
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = match parse::format(content_type) {
        Ok(f @ (parse::Format::Json | parse::Format::Form)) => f,
        Ok(_) => {
            let refusal = Refusal::BadRequest(
                "a progress report is application/json or application/x-www-form-urlencoded".into(),
            );
            return (refusal_at(&job_id, URL, refusal), entered);
        }
        Err(refusal) => return (refusal_at(&job_id, URL, refusal), entered),
    };
    *body_read = true;
    let post_limits = PostLimits {
        limit_bytes: 0,
        max_body: PROGRESS_MAX_BYTES,
        max_fields: limits.max_fields,
        max_files: 0,
    };
    let read = tokio::time::timeout(limits.read_timeout, parse::read_body(body, &post_limits));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(Refusal::TooLarge(_))) => return (refusal_at(&job_id, URL, too_large()), entered),
        Ok(Err(refusal)) => return (refusal_at(&job_id, URL, refusal), entered),
        Err(_) => {
            let reason = format!(
                "the body did not arrive within {} s (results.read_timeout_seconds)",
                limits.read_timeout.as_secs_f64()
            );
            let r = refused_at(&job_id, URL, StatusCode::REQUEST_TIMEOUT, reason);
            return (r, entered);
        }
    };
    // At most a few KiB: parsing it on the runtime's thread costs less than
    // handing it to a blocking one.
    let parsed = match format {
        parse::Format::Json => Progress::from_json(&bytes),
        _ => Progress::from_form(&bytes),
    };
    let report = match parsed {
        Ok(report) => report,
        Err(reason) => {
            let refusal = Refusal::BadRequest(reason);
            return (refusal_at(&job_id, URL, refusal), entered);
        }
    };
    if !shared.registry.report(token, report) {
        return (not_open(Lookup::Missing), entered);
    }
    debug!(job_id = %job_id, "progress reported");
    let mut r = Response::new(AxumBody::from(r#"{"ok":true}"#));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (r, entered)
}

fn not_open(lookup: Lookup) -> Response {
    match lookup {
        Lookup::Answered => refuse(
            StatusCode::CONFLICT,
            "a result was already posted for this job; only the first counts",
        ),
        _ => refuse(
            StatusCode::NOT_FOUND,
            "unknown result URL, or its job is over",
        ),
    }
}

fn refusal_answer(job_id: &str, kind: PostKind, refusal: Refusal) -> Response {
    refusal_at(job_id, kind.url_name(), refusal)
}

fn refusal_at(job_id: &str, url: &str, refusal: Refusal) -> Response {
    match refusal {
        Refusal::BadRequest(reason) => refused_at(job_id, url, StatusCode::BAD_REQUEST, reason),
        Refusal::TooLarge(reason) => refused_at(job_id, url, StatusCode::PAYLOAD_TOO_LARGE, reason),
    }
}

/// Why one more request to a job's URLs is refused (and the worker's log line).
fn too_many(job_id: &str, max: usize) -> String {
    warn!(job_id = %job_id, max, "a job holds too many requests to its result URLs at once");
    format!("more than {max} requests to this job's result URLs at once (results.max_connections_per_job)")
}

fn refused(job_id: &str, kind: PostKind, status: StatusCode, reason: String) -> Response {
    refused_at(job_id, kind.url_name(), status, reason)
}

fn refused_at(job_id: &str, url: &str, status: StatusCode, reason: String) -> Response {
    debug!(job_id = %job_id, kind = url, status = status.as_u16(), reason = %reason, "result refused");
    refuse(status, &reason)
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    // One line, whatever the reason quotes.
    let line = reason.replace(['\r', '\n'], " ");
    let mut r = Response::new(AxumBody::from(format!("{line}\n")));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // What is left of the body is not worth reading on for another request.
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn drain(body: &mut Body) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read: u64 = 0;
        while let Some(Ok(chunk)) = body.next().await {
            read = read.saturating_add(chunk.len() as u64);
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}
