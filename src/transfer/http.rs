//! One guarded HTTP exchange for inputs and uploads: the host resolved once,
//! every address checked by the SSRF guard before any connection, the
//! connection made to a checked address (TLS verified for the URL's host,
//! never resolving it again), one request, the response's head.
//!
//! Invariants:
//! - Nothing connects before [`resolve_checked`] passed; a refused address
//!   refuses the name (as `webhook::send` does), so no packet reaches it.
//! - Redirects are not followed (a 3xx is a failure): following one would
//!   bypass the guard.
//! - Connecting and the response's head are bounded by `connect`; the body's
//!   pace is the caller's to bound (see `Body`).
//! - URLs appear in errors only as `job::public_url` gives them (no query).

use super::outbound::TransferError;
use crate::ssrf::Guard;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST, USER_AGENT};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A URL whose host resolved to addresses that all passed the guard.
#[derive(Clone)]
pub struct Checked {
    host: String,
    port: u16,
    tls: bool,
    path_and_query: String,
    host_header: String,
    addrs: Vec<SocketAddr>,
    /// For messages: the URL without its query.
    pub public: String,
}

impl Checked {
    /// The same checked host and addresses, for another URL on it (an upload
    /// rule's URL with `{name}` filled in); refused if the host or port differ.
    pub fn for_url(&self, what: &str, url: &str) -> Result<Checked, TransferError> {
        let public = crate::job::public_url(url);
        let bad = || TransferError::Url {
            what: what.to_string(),
            url: public.clone(),
        };
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let authority = uri.authority().ok_or_else(bad)?;
        let tls = uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if authority.host() != self.host || port != self.port || tls != self.tls {
            return Err(bad());
        }
        Ok(Checked {
            host: self.host.clone(),
            port,
            tls,
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            host_header: self.host_header.clone(),
            addrs: self.addrs.clone(),
            public,
        })
    }
}

/// A response with its connection's driver, which stops when this is dropped.
pub struct Exchange {
    pub response: Response<Incoming>,
    pub(super) driver: AbortOnDrop,
}

pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves `url`'s host once and checks every address with `guard`.
/// `what` names the job's field in errors (`inputs[0] (a.bin)`).
pub async fn resolve_checked(
    what: &str,
    url: &str,
    guard: &Guard,
    within: Duration,
) -> Result<Checked, TransferError> {
    let public = crate::job::public_url(url);
    let uri: Uri = url.parse().map_err(|_| TransferError::Url {
        what: what.to_string(),
        url: public.clone(),
    })?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(TransferError::Url {
            what: what.to_string(),
            url: public,
        });
    };
    let tls = scheme.eq_ignore_ascii_case("https");
    let host = authority.host().to_string();
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let lookup = tokio::net::lookup_host(format!("{host}:{port}"));
    let addrs: Vec<SocketAddr> = match timeout(within, lookup).await {
        Err(_) => {
            return Err(TransferError::Timeout {
                what: what.to_string(),
                url: public,
                phase: "resolving the host",
            })
        }
        Ok(Err(source)) => {
            return Err(TransferError::Resolve {
                what: what.to_string(),
                host,
                source,
            })
        }
        Ok(Ok(a)) => a.collect(),
    };
    if addrs.is_empty() {
        return Err(TransferError::Resolve {
            what: what.to_string(),
            host,
            source: std::io::Error::other("no addresses"),
        });
    }
    guard
        .check_all(addrs.iter().map(SocketAddr::ip))
        .map_err(|source| TransferError::Refused {
            what: what.to_string(),
            host: host.clone(),
            source,
        })?;
    Ok(Checked {
        host_header: match authority.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        },
        host,
        port,
        tls,
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        addrs,
        public,
    })
}

/// Sends one request to a checked URL and returns the response's head (any
/// status: the caller judges it). Connecting (and TLS) must take at most
/// `within`; the response's head then at most `answer` (for an upload, that
/// includes sending the body, whose pace the caller bounds).
#[allow(clippy::too_many_arguments)]
pub async fn send(
    what: &str,
    to: &Checked,
    method: hyper::Method,
    headers: &[(String, String)],
    length: Option<u64>,
    body: BoxBody<Bytes, std::io::Error>,
    tls: &Arc<tokio_rustls::rustls::ClientConfig>,
    within: Duration,
    answer: Duration,
) -> Result<Exchange, TransferError> {
    let late = |phase| TransferError::Timeout {
        what: what.to_string(),
        url: to.public.clone(),
        phase,
    };
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| TransferError::Http {
        what: what.to_string(),
        url: to.public.clone(),
        source,
    };
    let mut req = Request::builder()
        .method(method)
        .uri(to.path_and_query.as_str())
        .header(HOST, to.host_header.as_str())
        .header(USER_AGENT, concat!("dockhand/", env!("CARGO_PKG_VERSION")));
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(n) = length {
        req = req.header(CONTENT_LENGTH, n);
    }
    let req = req.body(body).map_err(|e| fail(Box::new(e)))?;
    let connected = async {
        let tcp = connect(&to.addrs).await.map_err(|e| fail(Box::new(e)))?;
        if !to.tls {
            return handshake(tcp).await.map_err(fail);
        }
        let bare = to.host.trim_start_matches('[').trim_end_matches(']');
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(bare.to_string())
            .map_err(|e| fail(Box::new(e)))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| fail(Box::new(e)))?;
        handshake(stream).await.map_err(fail)
    };
    let (mut sender, driver) = timeout(within, connected)
        .await
        .map_err(|_| late("connecting (policy.transfer_connect_seconds)"))??;
    let response = timeout(answer, sender.send_request(req))
        .await
        .map_err(|_| late("waiting for the response"))?
        .map_err(|e| fail(Box::new(e)))?;
    Ok(Exchange { response, driver })
}

type Sender = hyper::client::conn::http1::SendRequest<BoxBody<Bytes, std::io::Error>>;

async fn handshake<S>(
    io: S,
) -> Result<(Sender, AbortOnDrop), Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    Ok((sender, driver))
}

/// The first address that accepts, in the resolver's order; only checked ones.
async fn connect(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}
