//! The listener and its connections, and the handle of one job's URLs.
//!
//! The server runs until [`ResultServer::shutdown`] or until it is dropped: one
//! accept task and one task per connection, all stopped by one cancellation
//! token. Registrations keep the registry alive on their own, so dropping the
//! server before them is harmless (their URLs just stop answering).
//!
//! Each connection holds a permit of one semaphore of `max_connections`; a
//! connection accepted when none is left is answered 503 if its socket takes it
//! at once, and closed: it never waits in a queue, and the server never holds
//! more sockets than the cap. Requests are routed by axum ([`super::handler`])
//! on hyper's HTTP/1 connections, whose headers must arrive within the read
//! timeout (an idle keep-alive connection is closed after it too).

use super::handler::{parse_slots, router, Shared};
use super::progress::Progress;
use super::registry::Registry;
use super::{Limits, Posted, ResultsError};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// How long requests in flight may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// At most one warning this often about connections refused at the cap.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// What a connection over the cap is told, if its socket takes it at once.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 68\r\n\r\n\
too many connections to the result server (results.max_connections)\n";

/// The HTTP server behind every job's result URLs.
pub struct ResultServer {
    registry: Arc<Registry>,
    local_addr: SocketAddr,
    /// `http://<host>:<port>`, the start of every URL handed out.
    base_url: String,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for ResultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultServer")
            .field("local_addr", &self.local_addr)
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl ResultServer {
    /// [`start_with`](Self::start_with) the default [`Limits`].
    pub async fn start(
        bind: IpAddr,
        port: u16,
        base_url_host: String,
    ) -> Result<ResultServer, ResultsError> {
        ResultServer::start_with(bind, port, base_url_host, Limits::default()).await
    }

    /// Listens on `bind:port` (port 0: any free port) and serves until
    /// [`shutdown`](Self::shutdown) or drop, within `limits`. URLs name
    /// `base_url_host` (a name or an IP address) and the port actually bound.
    /// Must run inside a Tokio runtime.
    pub async fn start_with(
        bind: IpAddr,
        port: u16,
        base_url_host: String,
        limits: Limits,
    ) -> Result<ResultServer, ResultsError> {
        let addr = SocketAddr::new(bind, port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ResultsError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(ResultsError::LocalAddr)?;
        let host = match base_url_host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => base_url_host,
        };
        let registry = Arc::new(Registry::default());
        let server = ResultServer {
            registry: registry.clone(),
            local_addr,
            base_url: format!("http://{host}:{}", local_addr.port()),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let header_timeout = limits.read_timeout;
        let shared = Arc::new(Shared {
            registry,
            limits,
            parsing: Semaphore::new(parse_slots()),
        });
        server.tracker.spawn(accept(
            listener,
            Accept {
                router: router(shared),
                connections,
                header_timeout,
                stop: server.stop.clone(),
                tracker: server.tracker.clone(),
            },
        ));
        Ok(server)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Opens the three URLs of one job, whose result files may total `limit_bytes`.
    pub fn register(&self, job_id: &str, limit_bytes: u64) -> Result<Registration, ResultsError> {
        let (token, progress) = self.registry.insert(job_id, limit_bytes)?;
        Ok(Registration {
            response_url: format!("{}/results/{token}/response", self.base_url),
            abort_url: format!("{}/results/{token}/abort", self.base_url),
            progress_url: format!("{}/results/{token}/progress", self.base_url),
            progress,
            job_id: job_id.to_string(),
            registry: self.registry.clone(),
            token,
        })
    }

    /// Stops accepting, lets requests in flight finish (for a few seconds at
    /// most), and returns when every connection is closed.
    pub async fn shutdown(self) {
        let tracker = self.tracker.clone();
        drop(self);
        tracker.close();
        tracker.wait().await;
    }
}

impl Drop for ResultServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the accept loop hands each connection.
struct Accept {
    router: Router,
    connections: Arc<Semaphore>,
    header_timeout: Duration,
    stop: CancellationToken,
    tracker: TaskTracker,
}

async fn accept(listener: TcpListener, a: Accept) {
    let mut refused: u64 = 0;
    let mut warned: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = a.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match a.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    a.tracker.spawn(serve(
                        stream,
                        permit,
                        a.router.clone(),
                        a.header_timeout,
                        a.stop.clone(),
                    ));
                }
                Err(_) => {
                    // Not queued: the socket is closed now, so the cap holds.
                    let _ = stream.try_write(OVER_CAP);
                    drop(stream);
                    refused += 1;
                    debug!(%peer, "result server at its connection cap: connection closed");
                    if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        warn!(refused, "result server at its connection cap (results.max_connections): closing new connections");
                        warned = Some(Instant::now());
                    }
                }
            },
            Err(e) => {
                // Out of file descriptors, mostly: pause rather than spin.
                warn!(error = %e, "result server cannot accept a connection");
                tokio::select! {
                    _ = a.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

async fn serve(
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    router: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // A client that shuts down its sending side once its request is out
        // (`nc`, a shell's printf | nc) still gets the answer. Without this,
        // hyper closes at that EOF while the body is being parsed.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, connection).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "result connection ended with an error");
    }
}

/// One job's `RESPONSE_URL`, `ABORT_URL` and `PROGRESS_URL`; dropping it closes
/// them (404).
pub struct Registration {
    registry: Arc<Registry>,
    token: String,
    job_id: String,
    response_url: String,
    abort_url: String,
    progress_url: String,
    progress: watch::Receiver<Option<Progress>>,
}

impl std::fmt::Debug for Registration {
    // The URLs are the job's secret: not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The value of `RESPONSE_URL` in the job's container.
    pub fn response_url(&self) -> &str {
        &self.response_url
    }

    /// The value of `ABORT_URL` in the job's container.
    pub fn abort_url(&self) -> &str {
        &self.abort_url
    }

    /// The value of `PROGRESS_URL` in the job's container.
    pub fn progress_url(&self) -> &str {
        &self.progress_url
    }

    /// The job's progress reports: the last one posted (a watch keeps only the
    /// latest), changed with each valid POST to `PROGRESS_URL`.
    pub fn progress(&self) -> watch::Receiver<Option<Progress>> {
        self.progress.clone()
    }

    /// What the job posted, once: later calls return `None`, and the URLs keep
    /// answering 409 to further POSTs until the registration is dropped.
    pub fn take(&self) -> Option<Posted> {
        self.registry.take(&self.token)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(&self.token);
    }
}
