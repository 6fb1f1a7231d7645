//! One webhook delivery attempt against a real HTTP receiver on loopback: the
//! request a subscriber gets, how each kind of answer is classified, the SSRF
//! guard, and the signature checked by the Standard Webhooks reference verifier.
//!
//! Every address here is a loopback address; nothing leaves the machine. Redis and
//! Docker are not needed.

use bytes::Bytes;
use dockhand::webhook::{
    attempt, attempt_on, tls, verify, Connections, Guard, Message, Outbound, Secret, Target,
    Verdict,
};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Long enough never to be the reason a healthy local exchange fails.
const TIMEOUT: Duration = Duration::from_secs(10);
const BODY: &str =
    r#"{"type":"job.completed","timestamp":"2026-11-22T10:29:43.123Z","data":{"id":"j1"}}"#;

/// What the receiver answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
}

/// A request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

/// A tiny HTTP/1 server that records each request and answers with `reply`.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(reply: Reply) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, reply) = (log.clone(), reply.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (log, reply) = (log.clone(), reply.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            log.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                target: parts.uri.to_string(),
                                headers: parts.headers,
                                body: body.unwrap_or_default(),
                            });
                            tokio::time::sleep(reply.delay).await;
                            let mut response = Response::new(Full::new(Bytes::from(reply.body)));
                            *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                            for (name, value) in reply.headers {
                                response.headers_mut().insert(name, value.parse().unwrap());
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deliveries as an operator would allow them to reach a receiver on this host:
/// `allow` in `webhooks.allow_networks`, the public TLS roots only.
fn allowing(allow: &[&str]) -> Outbound {
    let nets: Vec<_> = allow.iter().map(|n| n.parse().unwrap()).collect();
    Outbound {
        guard: Guard::new(&nets),
        tls: tls::public_roots(),
    }
}

fn loopback_guard() -> Outbound {
    allowing(&["127.0.0.1/32"])
}

fn target(url: String, secrets: &[Secret]) -> Target {
    Target {
        url,
        secrets: secrets.to_vec(),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Sends BODY once to `reply`; returns the outcome and what the receiver saw.
async fn deliver_to(
    reply: Reply,
    timeout: Duration,
) -> (dockhand::webhook::AttemptOutcome, Vec<Seen>) {
    let receiver = Receiver::start(reply).await;
    let secret = Secret::generate().unwrap();
    let outcome = attempt(
        &target(receiver.url("/hook"), &[secret]),
        &Message::new(BODY),
        &loopback_guard(),
        timeout,
    )
    .await;
    (outcome, receiver.seen())
}

#[tokio::test]
async fn a_delivery_arrives_with_the_standard_headers_and_a_valid_signature() {
    let mut reply = Reply::status(200);
    reply.body = "thanks".into();
    let receiver = Receiver::start(reply).await;
    // Two secrets, as during a rotation: each must verify on its own.
    let (old, new) = (Secret::generate().unwrap(), Secret::generate().unwrap());
    let msg = Message::new(BODY);
    let outcome = attempt(
        &target(
            receiver.url("/hooks/dockhand?team=a"),
            &[new.clone(), old.clone()],
        ),
        &msg,
        &loopback_guard(),
        TIMEOUT,
    )
    .await;

    assert_eq!(outcome.verdict, Verdict::Delivered, "{outcome:?}");
    assert_eq!(outcome.status, Some(200));
    assert_eq!(outcome.body, "thanks");
    assert_eq!(outcome.error, None);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let req = &seen[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/hooks/dockhand?team=a");
    assert_eq!(req.body, BODY.as_bytes());
    assert_eq!(req.header("host"), receiver.addr.to_string());
    assert_eq!(req.header("content-type"), "application/json");
    assert_eq!(
        req.header("user-agent"),
        format!("Dockhand-Webhooks/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(req.header("content-length"), BODY.len().to_string());
    assert_eq!(req.header("webhook-id"), msg.id());
    assert_eq!(
        req.header("webhook-timestamp"),
        outcome.timestamp.to_string()
    );
    let signatures = req.header("webhook-signature");
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    for secret in [&old, &new] {
        verify(
            secret,
            req.header("webhook-id"),
            req.header("webhook-timestamp"),
            signatures,
            &req.body,
            now(),
            Duration::from_secs(300),
        )
        .unwrap();
    }
    let tampered = verify(
        &old,
        req.header("webhook-id"),
        req.header("webhook-timestamp"),
        signatures,
        br#"{"type":"job.aborted"}"#,
        now(),
        Duration::from_secs(300),
    );
    assert!(tampered.is_err());
}

#[tokio::test]
async fn a_500_is_retried_with_the_status_and_the_body_prefix_recorded() {
    let mut reply = Reply::status(500);
    reply.body = format!("database down\n{}", "x".repeat(4000));
    let (outcome, seen) = deliver_to(reply, TIMEOUT).await;
    assert_eq!(outcome.verdict, Verdict::Retry, "{outcome:?}");
    assert_eq!(outcome.status, Some(500));
    assert!(
        outcome.body.starts_with("database down\nxxx"),
        "{}",
        outcome.body
    );
    assert_eq!(outcome.body.len(), 1024);
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.retry_after, None);
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn a_410_means_the_subscriber_is_gone() {
    let (outcome, _) = deliver_to(Reply::status(410), TIMEOUT).await;
    assert_eq!(outcome.verdict, Verdict::Gone, "{outcome:?}");
    assert_eq!(outcome.status, Some(410));
}

#[tokio::test]
async fn a_429_with_retry_after_says_when_to_come_back() {
    let mut reply = Reply::status(429);
    reply.headers.push(("retry-after", "7".into()));
    let (outcome, _) = deliver_to(reply, TIMEOUT).await;
    assert_eq!(outcome.verdict, Verdict::Retry, "{outcome:?}");
    assert_eq!(outcome.status, Some(429));
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let mut reply = Reply::status(200);
    reply.delay = Duration::from_secs(60);
    let (outcome, seen) = deliver_to(reply, Duration::from_millis(300)).await;
    assert_eq!(outcome.verdict, Verdict::Retry, "{outcome:?}");
    assert_eq!(outcome.status, None);
    let error = outcome.error.unwrap();
    assert!(
        error.contains("timed out") && error.contains("waiting for the response"),
        "{error}"
    );
    // It did arrive; only the answer was late.
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let elsewhere = Receiver::start(Reply::status(200)).await;
    let mut reply = Reply::status(302);
    reply.headers.push(("location", elsewhere.url("/moved")));
    let (outcome, seen) = deliver_to(reply, TIMEOUT).await;
    assert_eq!(outcome.verdict, Verdict::Retry, "{outcome:?}");
    assert_eq!(outcome.status, Some(302));
    assert_eq!(seen.len(), 1);
    assert!(elsewhere.seen().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error_to_retry() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let outcome = attempt(
        &target(format!("http://127.0.0.1:{port}/"), &[]),
        &Message::new(BODY),
        &loopback_guard(),
        TIMEOUT,
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::Retry, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(
        error.starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")),
        "{error}"
    );
}

/// A one-shot https receiver on 127.0.0.1 with a certificate made for the test;
/// returns its port, the CA file to trust, and what it read.
async fn tls_receiver(
    dir: &std::path::Path,
) -> (u16, std::path::PathBuf, tokio::task::JoinHandle<String>) {
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls;
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the request head and body (it is small), then answer 204.
        while !String::from_utf8_lossy(&seen).contains(BODY) {
            let n = tls.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        tls.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        tls.shutdown().await.ok();
        String::from_utf8_lossy(&seen).into_owned()
    });
    (port, ca, task)
}

#[tokio::test]
async fn https_is_delivered_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca, seen) = tls_receiver(dir.path()).await;
    // Without the test CA the certificate does not verify: a failure to retry.
    let untrusted = attempt(
        &target(
            format!("https://127.0.0.1:{port}/hook"),
            &[Secret::generate().unwrap()],
        ),
        &Message::new(BODY),
        &loopback_guard(),
        TIMEOUT,
    )
    .await;
    assert_eq!(untrusted.verdict, Verdict::Retry, "{untrusted:?}");
    assert!(
        untrusted
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("TLS"),
        "{untrusted:?}"
    );
    seen.abort();

    let (port, ca2, seen) = tls_receiver(dir.path()).await;
    let _ = ca;
    let trusting = Outbound {
        tls: tls::client_config(ca2.to_str().unwrap()).unwrap(),
        ..loopback_guard()
    };
    let outcome = attempt(
        &target(
            format!("https://127.0.0.1:{port}/hook"),
            &[Secret::generate().unwrap()],
        ),
        &Message::new(BODY),
        &trusting,
        TIMEOUT,
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::Delivered, "{outcome:?}");
    assert_eq!(outcome.status, Some(204));
    let request = seen.await.unwrap();
    assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
    assert!(request.contains("webhook-signature: v1,"), "{request}");
}

/// True when something connected to `listener` within a short wait.
async fn saw_a_connection(listener: &TcpListener) -> bool {
    tokio::time::timeout(Duration::from_millis(300), listener.accept())
        .await
        .is_ok()
}

#[tokio::test]
async fn the_guard_refuses_before_connecting() {
    // Loopback only: 127.0.0.2 is refused because only 127.0.0.1/32 is allowed.
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let outcome = attempt(
        &target(format!("http://127.0.0.2:{port}/"), &[]),
        &Message::new(BODY),
        &loopback_guard(),
        TIMEOUT,
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::Refused, "{outcome:?}");
    assert_eq!(outcome.status, None);
    let error = outcome.error.unwrap();
    assert!(
        error.contains("127.0.0.2 is a loopback address; allow it with webhooks.allow_networks"),
        "{error}"
    );
    assert!(
        !saw_a_connection(&listener).await,
        "the guard let a connection through"
    );

    // The control: once allowed, the same attempt does reach the listener, so the
    // check above can see a connection when there is one.
    let allowed = allowing(&["127.0.0.2/32"]);
    let (to, msg) = (
        target(format!("http://127.0.0.2:{port}/"), &[]),
        Message::new(BODY),
    );
    let (outcome, connected) = tokio::join!(
        attempt(&to, &msg, &allowed, Duration::from_millis(500)),
        saw_a_connection(&listener)
    );
    assert!(connected, "{outcome:?}");
}

#[tokio::test]
async fn a_name_is_refused_when_it_resolves_to_a_refused_address() {
    // `localhost` resolves to loopback addresses only; with no exceptions, every
    // one of them is refused and nothing connects.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let outcome = attempt(
        &target(format!("http://localhost:{port}/"), &[]),
        &Message::new(BODY),
        &allowing(&[]),
        TIMEOUT,
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::Refused, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(
        error.starts_with("refused to connect to localhost: ")
            && error.contains("is a loopback address"),
        "{error}"
    );
    assert!(
        !saw_a_connection(&listener).await,
        "the guard let a connection through"
    );
}

/// Runs the Standard Webhooks reference verifier (PyPI `standardwebhooks`) on a
/// delivery; Ok(stdout) when it accepts it, Err(output) when it rejects it.
async fn python_verify(secret: &Secret, seen: &Seen, body: &[u8]) -> Result<String, String> {
    const SCRIPT: &str = r#"
import sys
from standardwebhooks.webhooks import Webhook
secret, msg_id, timestamp, signature = sys.argv[1:5]
Webhook(secret).verify(sys.stdin.buffer.read(), {
    "webhook-id": msg_id,
    "webhook-timestamp": timestamp,
    "webhook-signature": signature,
})
print("verified")
"#;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(secret.to_whsec())
        .arg(seen.header("webhook-id"))
        .arg(seen.header("webhook-timestamp"))
        .arg(seen.header("webhook-signature"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named 'standardwebhooks'"),
        "the reference verifier is missing: python3 -m pip install standardwebhooks \
         (scripts/test installs it)"
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[tokio::test]
async fn the_reference_verifier_accepts_a_real_delivery() {
    let receiver = Receiver::start(Reply::status(204)).await;
    let (old, new) = (Secret::generate().unwrap(), Secret::generate().unwrap());
    let outcome = attempt(
        &target(receiver.url("/"), &[new.clone(), old.clone()]),
        &Message::new(BODY),
        &loopback_guard(),
        TIMEOUT,
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::Delivered, "{outcome:?}");
    let seen = receiver.seen();
    let delivery = &seen[0];

    for secret in [&new, &old] {
        let accepted = python_verify(secret, delivery, &delivery.body).await;
        assert!(
            matches!(&accepted, Ok(out) if out.contains("verified")),
            "{accepted:?}"
        );
    }
    let tampered = String::from_utf8(delivery.body.to_vec())
        .unwrap()
        .replace("j1", "j2");
    let rejected = python_verify(&new, delivery, tampered.as_bytes()).await;
    assert!(
        matches!(&rejected, Err(out) if out.contains("WebhookVerificationError")),
        "{rejected:?}"
    );
    let stranger = Secret::generate().unwrap();
    let rejected = python_verify(&stranger, delivery, &delivery.body).await;
    assert!(
        matches!(&rejected, Err(out) if out.contains("WebhookVerificationError")),
        "{rejected:?}"
    );
}

/// A receiver that answers one request per connection (as if it kept it alive:
/// no `connection: close`) and then closes it; counts the connections.
async fn one_request_per_connection() -> (u16, Arc<std::sync::atomic::AtomicUsize>, JoinHandle<()>)
{
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then as much body as it announces.
            let complete = |buf: &[u8]| {
                let text = String::from_utf8_lossy(buf);
                let Some(end) = text.find("\r\n\r\n") else {
                    return false;
                };
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                buf.len() >= end + 4 + length
            };
            while !complete(&buf) {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
        }
    });
    (port, accepted, task)
}

#[tokio::test]
async fn a_kept_connection_the_receiver_closed_is_not_a_failed_attempt() {
    let (port, accepted, task) = one_request_per_connection().await;
    let connections = Connections::new(4);
    let to = target(
        format!("http://127.0.0.1:{port}/hook"),
        &[Secret::generate().unwrap()],
    );
    for n in 1..=3 {
        let outcome = attempt_on(
            &to,
            &Message::new(BODY),
            &loopback_guard(),
            Some(&connections),
            TIMEOUT,
        )
        .await;
        assert_eq!(
            outcome.verdict,
            Verdict::Delivered,
            "attempt {n}: {outcome:?}"
        );
        // The receiver closes the connection this attempt left in `connections`.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    task.abort();
}

#[tokio::test]
async fn a_kept_connection_carries_the_next_attempt() {
    let receiver = Receiver::start(Reply::status(200)).await;
    let connections = Connections::new(4);
    let secret = Secret::generate().unwrap();
    for _ in 0..3 {
        let outcome = attempt_on(
            &target(receiver.url("/hook"), std::slice::from_ref(&secret)),
            &Message::new(BODY),
            &loopback_guard(),
            Some(&connections),
            TIMEOUT,
        )
        .await;
        assert_eq!(outcome.verdict, Verdict::Delivered, "{outcome:?}");
    }
    assert_eq!(receiver.seen().len(), 3);
    assert_eq!(
        connections.idle(),
        1,
        "one connection, kept after each attempt"
    );
}
