//! One delivery attempt: a signed POST to a subscriber's URL, and what came of it.
//!
//! No retries, no storage: the caller decides what an [`AttemptOutcome`] means for
//! the durable queue. Invariants:
//!
//! - The host is resolved once, every resolved address is checked by the SSRF
//!   [`Guard`] before any connection is made (one refused address refuses them
//!   all: a name that mixes public and internal addresses is an attack or a
//!   mistake), and the connection goes to a checked address itself. Nothing
//!   resolves the name again, so DNS rebinding cannot slip past the guard.
//! - A new connection resolves and checks again. The delivery loop keeps a
//!   connection open for the next attempt to the same receiver
//!   ([`attempt_on`], `pool`): it goes to the address checked when it was made,
//!   for at most `pool::KEEP_IDLE` of idleness. [`attempt`] alone closes its
//!   connection afterwards.
//! - Redirects are never followed (a 3xx is a failure, as the Standard Webhooks
//!   spec recommends); following one would also bypass the guard.
//! - The whole attempt, from resolving to the first KiB of the response body, is
//!   bounded by `timeout`; running out after the status arrived keeps the status.
//! - `webhook-timestamp` is the time of this attempt (the spec's replay
//!   protection), while `webhook-id` stays the same across attempts.
//! - `https://` is delivered over TLS (rustls, see [`super::tls`]) on the connection
//!   to the checked address; the certificate is verified for the URL's host, and
//!   TLS never resolves the name itself. A certificate that does not verify is a
//!   failed attempt like a network error. Other schemes are refused.

use super::sign::{sign, Secret};
use crate::ssrf::{Guard, Refused};
use crate::telemetry::error_chain;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use hyper::http::response::Parts;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

pub const USER_AGENT_VALUE: &str = concat!("Dockhand-Webhooks/", env!("CARGO_PKG_VERSION"));
/// How much of a response body is kept for the attempt record.
pub const BODY_PREFIX_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid webhook URL {url:?}")]
    Url {
        url: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    #[error("webhook URL {0:?} must be absolute, like http://host:port/path")]
    NotAbsolute(String),
    #[error("{0:?} is not a name a TLS certificate can be checked for")]
    TlsName(String),
    #[error("TLS handshake with {addr} failed")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("unsupported URL scheme {0:?}: only http:// and https:// are supported")]
    Scheme(String),
    #[error("credentials in a webhook URL are not supported")]
    Credentials,
    #[error(
        "invalid webhook message id {0:?}: use 1-128 characters of A-Z a-z 0-9 _ : - (no dots)"
    )]
    MessageId(String),
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} resolved to no addresses")]
    NoAddresses(String),
    #[error("refused to connect to {host}")]
    Refused {
        host: String,
        #[source]
        source: Refused,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the request")]
    Request(#[source] hyper::http::Error),
    #[error("HTTP exchange with {addr} failed")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("timed out after {timeout:?} {phase}")]
    Timeout {
        timeout: Duration,
        phase: &'static str,
    },
}

impl SendError {
    /// How an attempt that failed with this error is classified.
    pub fn verdict(&self) -> Verdict {
        match self {
            SendError::Refused { .. } => Verdict::Refused,
            SendError::Url { .. }
            | SendError::NotAbsolute(_)
            | SendError::TlsName(_)
            | SendError::Scheme(_)
            | SendError::Credentials
            | SendError::MessageId(_)
            | SendError::Request(_) => Verdict::Invalid,
            // A name that does not resolve today may resolve tomorrow.
            SendError::Resolve { .. }
            | SendError::NoAddresses(_)
            | SendError::Connect { .. }
            | SendError::Http { .. }
            // A certificate that does not verify today may be renewed tomorrow.
            | SendError::Tls { .. }
            | SendError::Timeout { .. } => Verdict::Retry,
        }
    }
}

/// What the caller should do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx: done.
    Delivered,
    /// A network error, a timeout, or a non-2xx other than 410 (3xx included):
    /// try again later, after `retry_after` if the receiver gave one.
    Retry,
    /// 410 Gone: the receiver wants no more deliveries; disable the subscriber.
    Gone,
    /// The SSRF guard refused every address: permanent, retrying cannot help
    /// until an operator changes `webhooks.allow_networks`.
    Refused,
    /// The URL or message cannot be sent at all (bad URL, a scheme other than
    /// http or https, credentials in the URL, a host no certificate can name):
    /// permanent until the subscriber is fixed.
    Invalid,
}

/// Where to deliver: a subscriber's URL and its current secrets (several during
/// a rotation; each signs the message).
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub secrets: Vec<Secret>,
}

/// What to deliver: an id that stays the same across attempts, and the exact
/// body bytes that are signed and sent.
#[derive(Debug, Clone)]
pub struct Message {
    id: String,
    body: Bytes,
}

impl Message {
    /// A message with a new id, `msg_<ULID>`.
    pub fn new(body: impl Into<Bytes>) -> Message {
        Message {
            id: format!("msg_{}", ulid::Ulid::new()),
            body: body.into(),
        }
    }

    /// A message with a known id (a retry of a stored delivery). The id is
    /// signed as `<id>.<timestamp>.<body>`, so a dot in it would make two
    /// different (id, timestamp) pairs sign the same bytes: refused.
    pub fn with_id(id: impl Into<String>, body: impl Into<Bytes>) -> Result<Message, SendError> {
        let id = id.into();
        let valid = (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'));
        if !valid {
            return Err(SendError::MessageId(id));
        }
        Ok(Message {
            id,
            body: body.into(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// The record of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub verdict: Verdict,
    /// The response status, when a response arrived.
    pub status: Option<u16>,
    /// From the start of the attempt (name resolution included) to its end.
    pub duration: Duration,
    /// The `webhook-timestamp` sent (or that would have been sent).
    pub timestamp: i64,
    /// The first [`BODY_PREFIX_BYTES`] of the response body, as lossy UTF-8.
    pub body: String,
    /// Why the attempt failed before a response, with its causes.
    pub error: Option<String>,
    /// `Retry-After` in delta-seconds, read from any response. The HTTP-date form
    /// is not supported and reads as absent; the caller decides what it is worth
    /// (the delivery loop waits at least this long before a retry, at most 24 h).
    pub retry_after: Option<Duration>,
}

/// Where and how a delivery may connect: the SSRF guard every address must pass,
/// and the TLS client configuration for https (see `tls`). Made once by whoever
/// runs deliveries and passed to each attempt; cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    pub guard: Guard,
    pub tls: Arc<tokio_rustls::rustls::ClientConfig>,
}

/// Makes one attempt to deliver `msg` to `target`, connecting only as `outbound`
/// allows, all within `timeout`, on a connection of its own, closed afterwards.
/// Never fails: every failure is in the outcome.
pub async fn attempt(
    target: &Target,
    msg: &Message,
    outbound: &Outbound,
    timeout: Duration,
) -> AttemptOutcome {
    attempt_on(target, msg, outbound, None, timeout).await
}

/// [`attempt`], on an open connection of `connections` to the same receiver if
/// one is kept there, and keeping its connection there afterwards if it can be
/// used again. A kept connection the receiver has closed meanwhile is not a
/// failed attempt: the request goes on a new one (a receiver that took the
/// request and then closed without answering may get it twice, which
/// at-least-once delivery allows: the `webhook-id` is the same).
pub async fn attempt_on(
    target: &Target,
    msg: &Message,
    outbound: &Outbound,
    connections: Option<&Connections>,
    timeout: Duration,
) -> AttemptOutcome {
    let started = Instant::now();
    let timestamp = unix_now();
    let mut outcome = AttemptOutcome {
        verdict: Verdict::Retry,
        status: None,
        duration: Duration::ZERO,
        timestamp,
        body: String::new(),
        error: None,
        retry_after: None,
    };
    let deadline = started + timeout;
    match deliver(
        target,
        msg,
        outbound,
        connections,
        timestamp,
        deadline,
        timeout,
    )
    .await
    {
        Ok((response, body)) => {
            let status = response.status;
            outcome.status = Some(status.as_u16());
            outcome.verdict = if status.is_success() {
                Verdict::Delivered
            } else if status == hyper::StatusCode::GONE {
                Verdict::Gone
            } else {
                Verdict::Retry
            };
            outcome.retry_after = response.headers.get(RETRY_AFTER).and_then(retry_after);
            outcome.body = lossy_prefix(&body);
        }
        Err(e) => {
            outcome.verdict = e.verdict();
            outcome.error = Some(error_chain(&e));
        }
    }
    outcome.duration = started.elapsed();
    outcome
}

/// Checks that `url` could be delivered to (scheme, host, no credentials),
/// without resolving it: for rejecting a subscriber's URL when it is added.
pub fn check_url(url: &str) -> Result<(), SendError> {
    Endpoint::parse(url).map(|_| ())
}

/// The parts of a URL an attempt needs.
struct Endpoint {
    /// As written in the URL, brackets kept for IPv6 (valid in `host:port`).
    host: String,
    port: u16,
    /// The `Host` header: the host, and the port when the URL gives one.
    host_header: String,
    /// https: the connection is wrapped in TLS, verified for `host`.
    tls: bool,
    path_and_query: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, SendError> {
        let uri: Uri = url.parse().map_err(|source| SendError::Url {
            url: url.to_string(),
            source,
        })?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(SendError::NotAbsolute(url.to_string()));
        };
        let (default_port, tls) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (80, false),
            "https" => (443, true),
            other => return Err(SendError::Scheme(other.to_string())),
        };
        if authority.as_str().contains('@') {
            return Err(SendError::Credentials);
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(SendError::NotAbsolute(url.to_string()));
        }
        let host_header = match authority.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(Endpoint {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(default_port),
            host_header,
            tls,
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        })
    }
}

async fn deliver(
    target: &Target,
    msg: &Message,
    outbound: &Outbound,
    connections: Option<&Connections>,
    timestamp: i64,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Parts, Vec<u8>), SendError> {
    let within = |phase| move |_| SendError::Timeout { timeout, phase };
    let endpoint = Endpoint::parse(&target.url)?;
    let key = (endpoint.tls, endpoint.host.clone(), endpoint.port);
    // A kept connection goes to an address the guard passed when it was made.
    while let Some(open) = connections.and_then(|c| c.take(&key, |o| !o.sender.is_closed())) {
        let request = build_request(&endpoint, target, msg, timestamp)?;
        match exchange(open, request, deadline, timeout).await {
            Ok((parts, body, open)) => {
                if let (Some(c), Some(open)) = (connections, open) {
                    c.put(key, open);
                }
                return Ok((parts, body));
            }
            // Closed by the receiver while it was idle: another one, or a new one.
            Err(SendError::Http { source, .. })
                if source.is_canceled() || source.is_closed() || source.is_incomplete_message() => {
            }
            Err(e) => return Err(e),
        }
    }
    let addrs = timeout_at(deadline, resolve(&endpoint))
        .await
        .map_err(within("resolving the host"))??;
    check_all(&outbound.guard, &endpoint.host, &addrs)?;
    let stream = timeout_at(deadline, connect(&addrs))
        .await
        .map_err(within("connecting"))??;
    let request = build_request(&endpoint, target, msg, timestamp)?;
    let open = if !endpoint.tls {
        handshake(stream, deadline, timeout).await?
    } else {
        // The name is checked against the certificate; the connection already goes
        // to the address the guard passed, so TLS never resolves anything itself.
        let bare = endpoint
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(bare)
            .map_err(|_| SendError::TlsName(endpoint.host.clone()))?;
        let addr = stream.peer_addr;
        let connector = tokio_rustls::TlsConnector::from(outbound.tls.clone());
        let tls = timeout_at(deadline, connector.connect(name, stream.io))
            .await
            .map_err(within("in the TLS handshake"))?
            .map_err(|source| SendError::Tls { addr, source })?;
        let tls = Connected {
            io: tls,
            peer_addr: addr,
        };
        handshake(tls, deadline, timeout).await?
    };
    let (parts, body, open) = exchange(open, request, deadline, timeout).await?;
    if let (Some(c), Some(open)) = (connections, open) {
        c.put(key, open);
    }
    Ok((parts, body))
}

/// Idle HTTP connections kept between attempts, by receiver (see `pool`).
pub type Connections = super::pool::Pool<Open>;

/// An HTTP/1.1 connection after its handshake, driven by a task of its own that
/// is aborted (closing the connection) when this is dropped: nothing outlives
/// its attempt unless a [`Connections`] keeps it.
pub struct Open {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    _driver: AbortOnDrop,
}

/// Starts HTTP/1.1 on a connected stream: a plain TCP stream for http, a TLS
/// stream over it for https.
async fn handshake<S>(
    stream: Connected<S>,
    deadline: Instant,
    timeout: Duration,
) -> Result<Open, SendError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = stream.peer_addr;
    let (sender, connection) = timeout_at(
        deadline,
        hyper::client::conn::http1::handshake(TokioIo::new(stream.io)),
    )
    .await
    .map_err(|_| SendError::Timeout {
        timeout,
        phase: "starting HTTP",
    })?
    .map_err(|source| SendError::Http { addr, source })?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    Ok(Open {
        sender,
        addr,
        _driver: driver,
    })
}

/// Sends `request` on an open connection and reads the response's status,
/// headers and the first [`BODY_PREFIX_BYTES`] of its body; gives the
/// connection back when it can carry another request (the whole body was read
/// and the receiver did not close it).
async fn exchange(
    mut open: Open,
    request: Request<Full<Bytes>>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Parts, Vec<u8>, Option<Open>), SendError> {
    let within = |phase| move |_| SendError::Timeout { timeout, phase };
    let addr = open.addr;
    let http = |source| SendError::Http { addr, source };
    let response = timeout_at(deadline, open.sender.send_request(request))
        .await
        .map_err(within("waiting for the response"))?
        .map_err(http)?;
    let (parts, mut body) = response.into_parts();
    // Past this point the status is known: running out of time or a broken body
    // only shortens the kept prefix.
    let mut prefix = Vec::new();
    let mut ended = false;
    while prefix.len() < BODY_PREFIX_BYTES {
        match timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let room = BODY_PREFIX_BYTES - prefix.len();
                    prefix.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Ok(None) => {
                ended = true;
                break;
            }
            _ => break,
        }
    }
    ended = ended || body.is_end_stream();
    let open = if ended && matches!(timeout_at(deadline, open.sender.ready()).await, Ok(Ok(()))) {
        Some(open)
    } else {
        None
    };
    Ok((parts, prefix, open))
}

async fn resolve(endpoint: &Endpoint) -> Result<Vec<SocketAddr>, SendError> {
    // An IP literal is parsed, not looked up; a name is looked up exactly once.
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host(format!("{}:{}", endpoint.host, endpoint.port))
            .await
            .map_err(|source| SendError::Resolve {
                host: endpoint.host.clone(),
                source,
            })?
            .collect();
    if addrs.is_empty() {
        return Err(SendError::NoAddresses(endpoint.host.clone()));
    }
    Ok(addrs)
}

/// Passes only when every address does: one refused address refuses the name.
fn check_all(guard: &Guard, host: &str, addrs: &[SocketAddr]) -> Result<(), SendError> {
    guard
        .check_all(addrs.iter().map(SocketAddr::ip))
        .map_err(|source| SendError::Refused {
            host: host.to_string(),
            source,
        })
}

/// Whether a delivery to `url` would pass the guard: the URL is one Dockhand
/// sends to, and every address its host resolves to is allowed. What an attempt
/// checks before it connects, without connecting (`subscriber add` warns with it).
pub async fn precheck(url: &str, guard: &Guard) -> Result<(), SendError> {
    let endpoint = Endpoint::parse(url)?;
    let addrs = resolve(&endpoint).await?;
    check_all(guard, &endpoint.host, &addrs)
}

/// A connected stream and the checked address it goes to. For https, `io` is
/// the TLS stream over the TCP connection; the exchange is generic over the stream.
struct Connected<S> {
    io: S,
    peer_addr: SocketAddr,
}

/// Connects to the first address that answers, in the resolver's order. Only
/// addresses that passed the guard are passed in.
async fn connect(addrs: &[SocketAddr]) -> Result<Connected<TcpStream>, SendError> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(io) => {
                // Small requests: do not wait to fill a segment.
                let _ = io.set_nodelay(true);
                return Ok(Connected {
                    io,
                    peer_addr: addr,
                });
            }
            Err(source) => last = Some(SendError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| SendError::NoAddresses(String::new())))
}

fn build_request(
    endpoint: &Endpoint,
    target: &Target,
    msg: &Message,
    timestamp: i64,
) -> Result<Request<Full<Bytes>>, SendError> {
    let signature = sign(&target.secrets, &msg.id, timestamp, &msg.body);
    Request::builder()
        .method(Method::POST)
        // Origin-form: the connection is already to the right host.
        .uri(endpoint.path_and_query.as_str())
        .header(HOST, endpoint.host_header.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header("webhook-id", msg.id.as_str())
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(msg.body.clone()))
        .map_err(SendError::Request)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `Retry-After: <seconds>`; the HTTP-date form reads as absent.
fn retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(Duration::from_secs)
}

/// Lossy UTF-8, without a replacement character for a multi-byte character
/// that the byte limit cut in half.
fn lossy_prefix(bytes: &[u8]) -> String {
    let end = match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => bytes.len(),
    };
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_anything_is_resolved() {
        let e = Endpoint::parse("http://Example.com/hook?x=1").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.host_header.as_str()),
            ("Example.com", 80, "Example.com")
        );
        assert_eq!(e.path_and_query, "/hook?x=1");
        let e = Endpoint::parse("http://[::1]:8080").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("[::1]", 8080));
        assert_eq!(
            (e.host_header.as_str(), e.path_and_query.as_str()),
            ("[::1]:8080", "/")
        );

        let err = |url: &str| Endpoint::parse(url).err().unwrap();
        let e = Endpoint::parse("https://example.com/x").unwrap();
        assert_eq!((e.port, e.tls), (443, true));
        assert!(matches!(err("ftp://example.com/"), SendError::Scheme(_)));
        assert!(matches!(err("/just/a/path"), SendError::NotAbsolute(_)));
        assert!(matches!(
            err("http://u:p@example.com/"),
            SendError::Credentials
        ));
        assert!(matches!(err("http://exa mple.com/"), SendError::Url { .. }));
        assert!(check_url("http://example.com:8080/x").is_ok());
    }

    #[test]
    fn one_refused_address_refuses_the_whole_name() {
        let guard = Guard::new(&["127.0.0.1/32".parse().unwrap()]);
        let addrs: Vec<SocketAddr> =
            vec!["127.0.0.1:80".parse().unwrap(), "[::1]:80".parse().unwrap()];
        let err = check_all(&guard, "both.example", &addrs).unwrap_err();
        assert_eq!(err.verdict(), Verdict::Refused);
        assert_eq!(
            error_chain(&err),
            "refused to connect to both.example: ::1 is a loopback address; \
             allow it with webhooks.allow_networks"
        );
        assert!(check_all(&guard, "one.example", &addrs[..1]).is_ok());
    }

    #[test]
    fn message_ids_may_not_contain_dots() {
        assert!(Message::with_id("msg_01J:abc-1", "{}").is_ok());
        for bad in ["", "a.b", "a b", &"x".repeat(129)] {
            assert!(Message::with_id(bad, "{}").is_err(), "{bad:?}");
        }
        let m = Message::new("{}");
        assert!(m.id().starts_with("msg_"));
        assert!(Message::with_id(m.id(), "{}").is_ok());
    }

    #[test]
    fn retry_after_reads_delta_seconds_only() {
        let v = |s: &'static str| retry_after(&HeaderValue::from_static(s));
        assert_eq!(v("7"), Some(Duration::from_secs(7)));
        assert_eq!(v(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(v("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(v("-1"), None);
        assert_eq!(v("1.5"), None);
    }

    #[test]
    fn a_cut_multibyte_character_is_dropped_not_replaced() {
        let text = "aé".as_bytes();
        assert_eq!(lossy_prefix(&text[..2]), "a");
        assert_eq!(lossy_prefix(text), "aé");
        assert_eq!(lossy_prefix(b"a\xffb"), "a\u{fffd}b");
    }
}
