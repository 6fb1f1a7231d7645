//! One HTTP request to a result URL: route, method, token, size, then the body.
//!
//! Every answer other than 200 carries a one-line reason in plain text. A refused
//! request's unread body is read on and thrown away (up to [`DRAIN_BYTES`], for
//! [`DRAIN_TIME`]) before answering: closing a socket with unread data makes the
//! kernel send a reset, and the client would see "connection reset" instead of
//! the reason. The exception is a client waiting for `100 Continue` whose body was
//! never asked for: reading it would invite the upload just refused.

use super::parse::{body_too_large, read_post, BoxError, Refusal};
use super::registry::{Lookup, Registry};
use super::{PostKind, FIELDS_BYTES};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use hyper::{Method, Request, Response, StatusCode};
use std::pin::Pin;
use std::time::Duration;
use tracing::{debug, info};

/// How much of a refused body is read and discarded so the answer arrives.
const DRAIN_BYTES: u64 = 1 << 20;
/// How long draining a refused body may take.
const DRAIN_TIME: Duration = Duration::from_secs(1);

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

pub(crate) async fn handle(
    registry: &Registry,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let mut body: Body = Box::pin(body.into_data_stream().map(|r| r.map_err(BoxError::from)));
    let mut body_read = false;
    let answer = answer(registry, &parts, &mut body, &mut body_read).await;
    let waits_for_continue = parts
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if answer.status() != StatusCode::OK && (body_read || !waits_for_continue) {
        drain(&mut body).await;
    }
    answer
}

async fn answer(
    registry: &Registry,
    parts: &hyper::http::request::Parts,
    body: &mut Body,
    body_read: &mut bool,
) -> Response<Full<Bytes>> {
    let Some((token, kind)) = route(parts.uri.path()) else {
        return refuse(StatusCode::NOT_FOUND, "no such result URL");
    };
    if parts.method != Method::POST {
        let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, "only POST is allowed");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let (job_id, limit_bytes) = match registry.lookup(token) {
        Lookup::Open {
            job_id,
            limit_bytes,
        } => (job_id, limit_bytes),
        other => return not_open(other),
    };
    let max_body = limit_bytes.saturating_add(FIELDS_BYTES);
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return refused(&job_id, kind, body_too_large(max_body, limit_bytes));
    }
    let content_type = match parts.headers.get(CONTENT_TYPE).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(ct)) => Some(ct),
        Some(Err(_)) => {
            return refused(
                &job_id,
                kind,
                Refusal::BadRequest("the Content-Type is not ASCII".into()),
            )
        }
    };
    *body_read = true;
    let posted = match read_post(kind, content_type, body, limit_bytes, max_body).await {
        Ok(posted) => posted,
        Err(refusal) => return refused(&job_id, kind, refusal),
    };
    let files = posted.files.len();
    let ignored = posted.dropped.clone();
    if let Err(lookup) = registry.commit(token, posted) {
        return not_open(lookup);
    }
    info!(job_id = %job_id, kind = kind.url_name(), files, "result posted");
    let mut reply = serde_json::json!({ "ok": true });
    if !ignored.is_empty() {
        reply["ignored"] = ignored.into();
    }
    let mut r = Response::new(Full::new(Bytes::from(reply.to_string())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `/results/<token>/response` or `/results/<token>/abort`.
fn route(path: &str) -> Option<(&str, PostKind)> {
    let rest = path.strip_prefix("/results/")?;
    let (token, kind) = rest.split_once('/')?;
    let kind = match kind {
        "response" => PostKind::Response,
        "abort" => PostKind::Abort,
        _ => return None,
    };
    (!token.is_empty()).then_some((token, kind))
}

fn not_open(lookup: Lookup) -> Response<Full<Bytes>> {
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

fn refused(job_id: &str, kind: PostKind, refusal: Refusal) -> Response<Full<Bytes>> {
    let (status, reason) = match refusal {
        Refusal::BadRequest(reason) => (StatusCode::BAD_REQUEST, reason),
        Refusal::TooLarge(reason) => (StatusCode::PAYLOAD_TOO_LARGE, reason),
    };
    debug!(job_id = %job_id, kind = kind.url_name(), status = status.as_u16(), reason = %reason, "result refused");
    refuse(status, &reason)
}

fn refuse(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    // One line, whatever the reason quotes.
    let line = reason.replace(['\r', '\n'], " ");
    let mut r = Response::new(Full::new(Bytes::from(format!("{line}\n"))));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/results/ab12/response"),
            Some(("ab12", PostKind::Response))
        );
        assert_eq!(
            route("/results/ab12/abort"),
            Some(("ab12", PostKind::Abort))
        );
        for bad in [
            "/results//abort",
            "/results/ab12",
            "/results/ab12/other",
            "/x/ab12/abort",
            "/",
        ] {
            assert_eq!(route(bad), None, "{bad}");
        }
    }
}
