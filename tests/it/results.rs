//! The result-URL server against real HTTP clients on loopback: what a job can
//! post to its `RESPONSE_URL` / `ABORT_URL`, what the worker then takes, and every
//! refusal a job can meet. Raw `TcpStream` requests, so each test says exactly
//! what went over the wire. No Redis, no Docker.

use dockhand::result_server::{PostKind, Posted, Registration, ResultServer};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const BOUNDARY: &str = "dockhand-test-boundary";

async fn server() -> ResultServer {
    ResultServer::start(LOOPBACK, 0, "127.0.0.1".into())
        .await
        .unwrap()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// `http://127.0.0.1:<port>/<path>` → the address and the path.
fn split(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (authority, path) = rest.split_once('/').unwrap();
    (authority.parse().unwrap(), format!("/{path}"))
}

/// Sends `head` (request line and headers, without the blank line) and `body`,
/// then reads the whole answer (every request says `Connection: close`).
async fn exchange(addr: SocketAddr, head: &str, body: Vec<u8>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // Written beside the read, as a real client would: the server may answer
    // before it has read everything.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&body).await;
        write
    });
    let mut raw = Vec::new();
    read.read_to_end(&mut raw).await.unwrap();
    drop(writer.await);
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

async fn post(url: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    let (addr, path) = split(url);
    let mut head = format!("POST {path} HTTP/1.1\r\nContent-Length: {}", body.len());
    if let Some(ct) = content_type {
        head.push_str(&format!("\r\nContent-Type: {ct}"));
    }
    exchange(addr, &head, body.to_vec()).await
}

async fn post_json(url: &str, body: serde_json::Value) -> Reply {
    post(url, Some("application/json"), body.to_string().as_bytes()).await
}

/// A `multipart/form-data` body: `(name, file name, content)` per part.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file_name, content) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(f) = file_name {
            disposition.push_str(&format!(
                "; filename=\"{f}\"\r\nContent-Type: application/octet-stream"
            ));
        }
        body.extend_from_slice(format!("{disposition}\r\n\r\n").as_bytes());
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn assert_ok(reply: &Reply) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, r#"{"ok":true}"#);
}

/// A refusal: the status, and a one-line reason that contains `needle`.
fn assert_refused(reply: &Reply, status: u16, needle: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    let line = reply.body.strip_suffix('\n').unwrap_or(&reply.body);
    assert!(
        !line.contains('\n'),
        "the reason is not one line: {reply:?}"
    );
    assert!(line.contains(needle), "expected {needle:?} in {reply:?}");
}

fn taken(reg: &Registration) -> Posted {
    reg.take().expect("the post was kept")
}

#[tokio::test]
async fn urls_are_unguessable_and_name_the_bound_port() {
    let server = server().await;
    let port = server.local_addr().port();
    assert_ne!(port, 0);
    let a = server.register("job-a", 1000).unwrap();
    let b = server.register("job-a", 1000).unwrap();
    let prefix = format!("http://127.0.0.1:{port}/results/");
    let token = a
        .response_url()
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix("/response"))
        .unwrap();
    assert_eq!(token.len(), 32);
    assert!(token.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(a.abort_url(), format!("{prefix}{token}/abort"));
    assert_ne!(a.response_url(), b.response_url());
    assert!(!format!("{a:?}").contains(token), "Debug shows the token");
}

#[tokio::test]
async fn json_response_is_kept_once_and_a_second_post_conflicts() {
    let server = server().await;
    let reg = server.register("j1", 1000).unwrap();
    assert_eq!(reg.take(), None, "nothing posted yet");
    let reply = post_json(
        reg.response_url(),
        json!({"result_text": "done", "result_data": {"rows": 3}}),
    )
    .await;
    assert_ok(&reply);
    assert!(reply
        .head
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    let posted = taken(&reg);
    assert_eq!(posted.kind, PostKind::Response);
    assert_eq!(posted.text.as_deref(), Some("done"));
    assert_eq!(posted.data, Some(json!({"rows": 3})));
    assert!(posted.files.is_empty() && posted.dropped.is_empty());
    assert_eq!(reg.take(), None, "taken once");

    // Neither URL accepts another result, even after the first was taken.
    let again = post_json(reg.response_url(), json!({"result_text": "again"})).await;
    assert_refused(&again, 409, "already posted");
    let abort = post_json(reg.abort_url(), json!({"error_text": "late"})).await;
    assert_refused(&abort, 409, "already posted");
    assert_eq!(reg.take(), None);
}

#[tokio::test]
async fn form_response() {
    let server = server().await;
    let reg = server.register("j1", 1000).unwrap();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("result_text", "two words & more")
        .append_pair("result_data", r#"{"ok":[1,2]}"#)
        .append_pair("extra", "x")
        .finish();
    let reply = post(
        reg.response_url(),
        Some("application/x-www-form-urlencoded"),
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // Unknown fields are ignored, and the job is told which.
    let answer: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        answer,
        json!({"ok": true, "ignored": [r#"field "extra" (unknown, ignored)"#]})
    );
    let posted = taken(&reg);
    assert_eq!(posted.text.as_deref(), Some("two words & more"));
    assert_eq!(posted.data, Some(json!({"ok": [1, 2]})));
    assert_eq!(posted.dropped.len(), 1);
}

#[tokio::test]
async fn multipart_with_files_and_result_data() {
    let server = server().await;
    let reg = server.register("j1", 1000).unwrap();
    let binary: Vec<u8> = (0..=255).collect();
    let body = multipart(&[
        ("result_data", None, br#"{"sum":42}"#),
        ("file", Some("report.csv"), b"a,b\n1,2\n"),
        ("file2", Some("sub/dir/raw.bin"), &binary),
    ]);
    let reply = post(reg.response_url(), Some(&multipart_type()), &body).await;
    assert_ok(&reply);
    let posted = taken(&reg);
    assert_eq!(posted.kind, PostKind::Response);
    assert_eq!(posted.text, None);
    assert_eq!(posted.data, Some(json!({"sum": 42})));
    assert_eq!(
        posted.files,
        vec![
            ("report.csv".to_string(), b"a,b\n1,2\n".to_vec()),
            ("raw.bin".to_string(), binary),
        ]
    );
}

#[tokio::test]
async fn abort_with_error_data() {
    let server = server().await;
    let reg = server.register("j1", 1000).unwrap();
    let reply = post_json(
        reg.abort_url(),
        json!({"error_text": "input is empty", "error_data": {"code": 7}}),
    )
    .await;
    assert_ok(&reply);
    let posted = taken(&reg);
    assert_eq!(posted.kind, PostKind::Abort);
    assert_eq!(posted.text.as_deref(), Some("input is empty"));
    assert_eq!(posted.data, Some(json!({"code": 7})));

    // The simplest abort: an empty POST, as `curl -X POST "$ABORT_URL"` sends.
    let reg = server.register("j2", 1000).unwrap();
    assert_ok(&post(reg.abort_url(), None, b"").await);
    let posted = taken(&reg);
    assert_eq!(
        (posted.kind, posted.text, posted.data),
        (PostKind::Abort, None, None)
    );
}

#[tokio::test]
async fn unknown_tokens_and_finished_jobs_answer_404() {
    let server = server().await;
    let reg = server.register("j1", 1000).unwrap();
    let (addr, path) = split(reg.response_url());
    let unknown = format!("http://{addr}/results/{}/response", "0".repeat(32));
    assert_refused(
        &post_json(&unknown, json!({})).await,
        404,
        "unknown result URL",
    );
    let other_path = format!("http://{addr}/results");
    assert_refused(
        &post_json(&other_path, json!({})).await,
        404,
        "no such result URL",
    );

    let (response, abort) = (reg.response_url().to_string(), reg.abort_url().to_string());
    drop(reg);
    assert_refused(
        &post_json(&response, json!({"result_text": "x"})).await,
        404,
        "job is over",
    );
    assert_refused(&post_json(&abort, json!({})).await, 404, "job is over");
    // The path is well-formed, only its job is gone.
    assert!(path.ends_with("/response"));
}

#[tokio::test]
async fn only_post_is_allowed() {
    let server = server().await;
    let reg = server.register("j1", 1000).unwrap();
    let (addr, path) = split(reg.response_url());
    let reply = exchange(addr, &format!("GET {path} HTTP/1.1"), Vec::new()).await;
    assert_refused(&reply, 405, "only POST");
    assert!(
        reply.head.to_ascii_lowercase().contains("allow: post"),
        "{reply:?}"
    );
    assert_eq!(reg.take(), None);
}

#[tokio::test]
async fn bodies_over_the_limits_are_refused_with_413() {
    let server = server().await;
    let limit = 100;
    let reg = server.register("j1", limit).unwrap();

    // Files over the job's output limit: refused whole, not trimmed.
    let big = vec![b'x'; 60];
    let body = multipart(&[("a", Some("a.txt"), &big), ("b", Some("b.txt"), &big)]);
    let reply = post(reg.response_url(), Some(&multipart_type()), &body).await;
    assert_refused(
        &reply,
        413,
        "output limit of 100 bytes (limits.output_bytes)",
    );
    assert_eq!(reg.take(), None);

    // A declared length over the cap is refused before any of the body is read;
    // a client waiting for 100 Continue is never asked to send it.
    let (addr, path) = split(reg.response_url());
    let cap = limit + dockhand::result_server::FIELDS_BYTES;
    let head = format!(
        "POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue",
        cap + 1
    );
    let reply = exchange(addr, &head, Vec::new()).await;
    assert_refused(&reply, 413, &format!("over {cap} bytes"));
    assert!(!reply.head.contains("100 Continue"), "{reply:?}");

    // Without a declared length (chunked), the cap holds while reading.
    let mut chunked = Vec::new();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    chunked.extend_from_slice(b"1\r\n{\r\n");
    while sent <= cap {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
        sent += chunk.len() as u64;
    }
    chunked.extend_from_slice(b"1\r\n}\r\n0\r\n\r\n");
    let head = format!(
        "POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
    );
    let reply = exchange(addr, &head, chunked).await;
    assert_refused(&reply, 413, &format!("over {cap} bytes"));

    // A refusal keeps nothing: the job may post again within the limits.
    let body = multipart(&[("a", Some("a.txt"), &big)]);
    assert_ok(&post(reg.response_url(), Some(&multipart_type()), &body).await);
    assert_eq!(taken(&reg).files, vec![("a.txt".to_string(), big)]);
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_400_and_a_reason() {
    let server = server().await;
    let reg = server.register("j1", 1000).unwrap();
    let url = reg.response_url();
    let json = Some("application/json");
    let form = Some("application/x-www-form-urlencoded");
    assert_refused(
        &post(url, json, b"{\"result_text\":").await,
        400,
        "not valid JSON",
    );
    assert_refused(
        &post(url, json, br#"{"result_text":["a"]}"#).await,
        400,
        "`result_text` must be a string",
    );
    assert_refused(
        &post(url, form, b"result_data=%7Bnot+json").await,
        400,
        "`result_data` is not valid JSON",
    );
    let bad_part = multipart(&[("result_data", None, b"{oops")]);
    assert_refused(
        &post(url, Some(&multipart_type()), &bad_part).await,
        400,
        "`result_data` is not valid JSON",
    );
    assert_refused(
        &post(url, Some("text/plain"), b"done").await,
        400,
        "unsupported Content-Type \"text/plain\"",
    );
    assert_refused(&post(url, None, b"done").await, 400, "missing Content-Type");
    assert_refused(
        &post(url, Some("multipart/form-data"), b"x").await,
        400,
        "boundary",
    );
    // The other URL's fields name the mistake.
    assert_refused(
        &post(url, form, b"error_text=x").await,
        400,
        "`error_text` belongs to ABORT_URL",
    );
    let abort = post_json(reg.abort_url(), json!({"result_data": 1})).await;
    assert_refused(&abort, 400, "`result_data` belongs to RESPONSE_URL");
    // File names: no way out of the output folder, no duplicates.
    let dots = multipart(&[("f", Some(".."), b"1")]);
    assert_refused(
        &post(url, Some(&multipart_type()), &dots).await,
        400,
        "names no file",
    );
    let twice = multipart(&[("f", Some("a/r.txt"), b"1"), ("g", Some("r.txt"), b"2")]);
    assert_refused(
        &post(url, Some(&multipart_type()), &twice).await,
        400,
        "given twice",
    );
    // None of it was kept.
    assert_eq!(reg.take(), None);
    assert_ok(&post_json(url, json!({"result_text": "fixed"})).await);
}

#[tokio::test]
async fn registrations_do_not_see_each_others_posts() {
    let server = server().await;
    let a = server.register("job-a", 1000).unwrap();
    let b = server.register("job-b", 1000).unwrap();
    assert_ok(&post_json(a.response_url(), json!({"result_text": "from a"})).await);
    assert_eq!(b.take(), None);
    assert_ok(&post_json(b.abort_url(), json!({"error_text": "from b"})).await);
    let (pa, pb) = (taken(&a), taken(&b));
    assert_eq!(
        (pa.kind, pa.text.as_deref()),
        (PostKind::Response, Some("from a"))
    );
    assert_eq!(
        (pb.kind, pb.text.as_deref()),
        (PostKind::Abort, Some("from b"))
    );
    // Dropping one leaves the other open.
    let c = server.register("job-c", 1000).unwrap();
    drop(a);
    assert_ok(&post_json(c.response_url(), json!({})).await);
}

#[tokio::test]
async fn of_racing_posts_exactly_one_wins() {
    let server = server().await;
    let reg = server.register("j1", 1000).unwrap();
    let posts = (0..8).map(|i| {
        let url = if i % 2 == 0 {
            reg.response_url()
        } else {
            reg.abort_url()
        }
        .to_string();
        let body = if i % 2 == 0 {
            json!({"result_text": i.to_string()})
        } else {
            json!({"error_text": i.to_string()})
        };
        tokio::spawn(async move { post_json(&url, body).await.status })
    });
    let mut statuses = Vec::new();
    for p in posts {
        statuses.push(p.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409]);
    assert!(taken(&reg).text.is_some());
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let server = server().await;
    let addr = server.local_addr();
    let reg = server.register("j1", 1000).unwrap();
    server.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    // The registration outlives the server harmlessly.
    assert_eq!(reg.take(), None);
}

// The limits. Each test waits on what the server does (a close, an answer),
// bounded by `GUARD` only so that a broken server fails instead of hanging.

use crate::common::GUARD;
use dockhand::result_server::Limits;
use std::time::Duration;

async fn server_with(limits: Limits) -> ResultServer {
    ResultServer::start_with(LOOPBACK, 0, "127.0.0.1".into(), limits)
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or resets it); what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let read = tokio::time::timeout(GUARD, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await
        .unwrap_or_else(|_| panic!("the server kept the connection open for {GUARD:?}"));
    String::from_utf8_lossy(&raw).into_owned()
}

/// A POST to `url` whose headers are sent whole and whose body is never sent
/// beyond its first byte: a connection held half-sent.
async fn half_sent(url: &str) -> TcpStream {
    let (addr, path) = split(url);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn a_connection_past_the_cap_is_closed_at_once_and_the_cap_frees_up() {
    let server = server_with(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let reg = server.register("j1", 1000).unwrap();
    let addr = server.local_addr();
    // Two connections that say nothing hold both places (for the read timeout,
    // 30 s: far longer than this test waits for anything else).
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    // The third is accepted after them, finds no place, and is closed, not queued.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let said = read_until_closed(&mut third).await;
    assert!(
        said.is_empty() || (said.contains(" 503 ") && said.contains("results.max_connections")),
        "{said:?}"
    );
    // A place freed is usable again.
    drop(first);
    crate::common::wait_until("a connection under the cap to be served", || async {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            post_json(reg.response_url(), json!({"result_text": "in"})),
        )
        .await;
        reply.ok().filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(taken(&reg).text.as_deref(), Some("in"));
}

#[tokio::test]
async fn a_job_past_its_share_of_connections_gets_429_and_others_are_served() {
    let server = server_with(Limits {
        max_connections_per_job: 2,
        ..Limits::default()
    })
    .await;
    let greedy = server.register("greedy", 1000).unwrap();
    let other = server.register("other", 1000).unwrap();
    let holders = vec![
        half_sent(greedy.response_url()).await,
        half_sent(greedy.response_url()).await,
    ];
    // Once both are in their handler, a third request of the same job is refused
    // at once, naming the limit. (Until then it is a 400, so that it keeps nothing.)
    let refusal = crate::common::wait_until("a 429 for the third request", || async {
        let r = post_json(greedy.response_url(), json!({"result_text": 1})).await;
        (r.status == 429).then_some(r)
    })
    .await;
    assert_refused(&refusal, 429, "results.max_connections_per_job");
    assert_eq!(greedy.take(), None);
    // Another job is not counted against it.
    assert_ok(&post_json(other.response_url(), json!({"result_text": "other"})).await);
    assert_eq!(taken(&other).text.as_deref(), Some("other"));
    // Once the held connections go, the job posts its result.
    drop(holders);
    crate::common::wait_until("the job's own post to be accepted", || async {
        let r = post_json(greedy.response_url(), json!({"result_text": "mine"})).await;
        (r.status == 200).then_some(())
    })
    .await;
    assert_eq!(taken(&greedy).text.as_deref(), Some("mine"));
}

#[tokio::test]
async fn slow_and_silent_clients_are_cut_off_by_the_read_timeout() {
    let server = server_with(Limits {
        read_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let reg = server.register("j1", 1000).unwrap();
    let (addr, path) = split(reg.response_url());

    // Headers a byte at a time, for as long as the server takes them.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
    let dribble = tokio::spawn(async move {
        let mut bytes = head.into_bytes().into_iter().chain(std::iter::repeat(b'a'));
        let deadline = tokio::time::Instant::now() + GUARD;
        while tokio::time::Instant::now() < deadline {
            if write.write_all(&[bytes.next().unwrap()]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut raw = Vec::new();
    let closed = tokio::time::timeout(GUARD, read.read_to_end(&mut raw)).await;
    assert!(
        closed.is_ok(),
        "a client sending headers a byte at a time was never cut off"
    );
    assert!(!String::from_utf8_lossy(&raw).contains(" 200 "), "{raw:?}");
    dribble.abort();

    // A body a byte at a time: 408 (or a plain close), and nothing kept.
    let mut stream = half_sent(reg.response_url()).await;
    let (mut read, mut write) = stream.split();
    let said = tokio::select! {
        said = async {
            let mut raw = Vec::new();
            let _ = tokio::time::timeout(GUARD, read.read_to_end(&mut raw)).await;
            String::from_utf8_lossy(&raw).into_owned()
        } => said,
        _ = async {
            for _ in 0..(GUARD.as_millis() / 100) {
                if write.write_all(b" ").await.is_err() { break; }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            std::future::pending::<()>().await
        } => unreachable!(),
    };
    assert!(
        said.is_empty()
            || (said.contains(" 408 ") && said.contains("results.read_timeout_seconds")),
        "{said:?}"
    );
    assert_eq!(reg.take(), None);

    // A connection that says nothing at all is closed too.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "");

    // And the URL still works for a client that sends its request whole.
    assert_ok(&post_json(reg.response_url(), json!({"result_text": "ok"})).await);
}

#[tokio::test]
async fn a_post_with_too_many_fields_or_files_names_the_limit() {
    let server = server_with(Limits {
        max_fields: 10,
        max_files: 2,
        ..Limits::default()
    })
    .await;
    let reg = server.register("j1", 100_000).unwrap();
    // 100,000 fields in 1 MiB: refused after the tenth.
    let mut form = String::new();
    for i in 0..100_000 {
        form.push_str(&format!("f{i}=&"));
    }
    let reply = post(
        reg.response_url(),
        Some("application/x-www-form-urlencoded"),
        form.as_bytes(),
    )
    .await;
    assert_refused(&reply, 413, "more than 10 fields (results.max_fields)");
    let files = multipart(&[
        ("a", Some("a"), b"1"),
        ("b", Some("b"), b"2"),
        ("c", Some("c"), b"3"),
    ]);
    let reply = post(reg.response_url(), Some(&multipart_type()), &files).await;
    assert_refused(&reply, 413, "more than 2 files (results.max_files)");
    assert_eq!(reg.take(), None);
    assert_ok(&post_json(reg.response_url(), json!({"result_text": "ok"})).await);
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let server = server().await;
    let reg = server.register("j1", 1000).unwrap();
    let (addr, path) = split(reg.response_url());
    let body = r#"{"result_text":"sent, then shut"}"#;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap(); // as `printf ... | nc` does
    let said = read_until_closed(&mut stream).await;
    assert!(said.starts_with("HTTP/1.1 200 "), "{said:?}");
    assert_eq!(taken(&reg).text.as_deref(), Some("sent, then shut"));
}
