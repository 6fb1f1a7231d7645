//! `dockhand serve`'s streams and description: a job's log over Server-Sent
//! Events (every `seq` once, in order, even while the job prints fast; resumed
//! with `Last-Event-ID`), `/events` (a job's events, resumed), `/openapi.json`
//! (exactly the routes served), and schemathesis run against a real `serve`.

use crate::common::{free_port, image, wait_until, Env, GUARD};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use dockhand::api::{router, AppState};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tower::ServiceExt;

/// One Server-Sent Event as received.
#[derive(Debug, Clone, Default)]
struct Sse {
    id: Option<String>,
    event: String,
    data: String,
}

/// An open SSE answer, read event by event.
struct SseReader {
    body: Body,
    buf: String,
}

impl SseReader {
    /// The next event (comments are skipped); `None` once the stream has ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse {
                    event: "message".into(),
                    ..Default::default()
                };
                let mut any = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => ev.id = Some(value.to_string()),
                        "event" => ev.event = value.to_string(),
                        "data" => ev.data.push_str(value),
                        _ => continue,
                    }
                    any = true;
                }
                if any {
                    return Some(ev);
                }
                continue;
            }
            let frame = tokio::time::timeout(GUARD, self.body.frame())
                .await
                .expect("an SSE event (or a keep-alive) came within the guard")?
                .expect("the SSE body reads");
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

async fn open(app: &axum::Router, uri: &str, last_event_id: Option<&str>) -> SseReader {
    let mut req = Request::builder().uri(uri);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{uri}");
    assert_eq!(res.headers()["content-type"], "text/event-stream", "{uri}");
    SseReader {
        body: res.into_body(),
        buf: String::new(),
    }
}

/// Reads `line` events until `end`: their seqs, their stdout texts, and the end's data.
async fn read_log(mut r: SseReader) -> (Vec<u64>, Vec<String>, Value) {
    let (mut seqs, mut stdout) = (Vec::new(), Vec::new());
    while let Some(ev) = r.next().await {
        match ev.event.as_str() {
            "line" => {
                let line: Value = serde_json::from_str(&ev.data).unwrap();
                let seq = line["seq"].as_u64().unwrap();
                assert_eq!(ev.id.as_deref(), Some(seq.to_string().as_str()));
                seqs.push(seq);
                if line["stream"] == "stdout" {
                    stdout.push(line["line"].as_str().unwrap().to_string());
                }
            }
            "end" => {
                let end: Value = serde_json::from_str(&ev.data).unwrap();
                assert!(r.next().await.is_none(), "the stream closes after `end`");
                return (seqs, stdout, end);
            }
            other => panic!("unexpected event {other}: {ev:?}"),
        }
    }
    panic!("the stream closed without `end`");
}

async fn post_job(app: &axum::Router, body: Value) -> String {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/jobs")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = serde_json::from_slice(
        &axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_log_streams_every_seq_once_in_order_and_resumes() {
    const LINES: u64 = 50_000;
    let env = Env::new();
    let settings = env.settings(&["default"], 1, &[]);
    let app = router(AppState::new(settings.clone()).unwrap());
    let id = format!("{}-fast", env.prefix);
    post_job(
        &app,
        json!({"id": id, "image": image(), "command": format!("seq 1 {LINES}")}),
    )
    .await;
    // One reader from before any worker has the job (it waits for it), one that
    // joins while the job prints (stored lines, then live ones).
    let early = tokio::spawn(read_log(
        open(&app, &format!("/jobs/{id}/logs"), None).await,
    ));
    let worker = crate::common::Worker::start(settings.clone());
    wait_until("the job has printed some lines", || async {
        (env.log(&id).await.len() >= 1000).then_some(())
    })
    .await;
    let late = read_log(open(&app, &format!("/jobs/{id}/logs"), None).await).await;
    let early = early.await.unwrap();
    let stored = env.log(&id).await.len() as u64;
    assert!(stored >= LINES, "{stored}");
    let every: Vec<u64> = (1..=stored).collect();
    let expected: Vec<String> = (1..=LINES).map(|i| i.to_string()).collect();
    for (seqs, stdout, end) in [&early, &late] {
        assert!(
            *seqs == every,
            "seq not 1..={stored} once each: {} received",
            seqs.len()
        );
        assert!(*stdout == expected, "the lines are the job's output");
        assert_eq!(end["status"], "completed");
        assert_eq!(end["job"], id.as_str());
    }
    // Resumed after a seq (the header, or ?after=): the lines after it, then `end`.
    let (seqs, _, end) = read_log(
        open(
            &app,
            &format!("/jobs/{id}/logs"),
            Some(&(stored - 5).to_string()),
        )
        .await,
    )
    .await;
    assert_eq!(seqs, (stored - 4..=stored).collect::<Vec<_>>());
    assert_eq!(end["status"], "completed");
    let (seqs, _, _) =
        read_log(open(&app, &format!("/jobs/{id}/logs?after={}", stored - 1), None).await).await;
    assert_eq!(seqs, vec![stored]);
    // An unknown job is a 404, a bad resume point a 400: both JSON.
    for (uri, code) in [
        ("/jobs/no-such-job/logs".to_string(), StatusCode::NOT_FOUND),
        (format!("/jobs/{id}/logs?after=x"), StatusCode::BAD_REQUEST),
    ] {
        let res = app
            .clone()
            .oneshot(Request::builder().uri(&uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), code, "{uri}");
        assert_eq!(res.headers()["content-type"], "application/json");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_a_jobs_events_and_resume_after_an_id() {
    let env = Env::new();
    let settings = env.settings(&["default"], 1, &[]);
    let app = router(AppState::new(settings.clone()).unwrap());
    let worker = crate::common::Worker::start(settings.clone());
    let id = format!("{}-ev", env.prefix);
    // Opened before the job exists: it starts after the newest event, and sees
    // everything recorded from then on.
    let mut all = open(&app, &format!("/events?job={id}"), None).await;
    post_job(
        &app,
        json!({"id": id, "image": image(), "command": "echo hi"}),
    )
    .await;
    let mut seen = Vec::new();
    loop {
        let ev = all.next().await.expect("events keep coming");
        let body: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(body["type"], ev.event.as_str());
        assert_eq!(body["data"]["id"], id.as_str());
        seen.push((ev.id.clone().unwrap(), ev.event.clone()));
        if ev.event == "job.completed" {
            break;
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, ["job.queued", "job.started", "job.completed"]);
    // Resumed after the first: the others, in order, each once.
    let mut resumed = open(&app, &format!("/events?job={id}"), Some(&seen[0].0)).await;
    for (want_id, want_kind) in &seen[1..] {
        let ev = resumed.next().await.unwrap();
        assert_eq!((ev.id.as_ref().unwrap(), &ev.event), (want_id, want_kind));
    }
    // Filtered by type, from the start of the stream.
    let mut done = open(
        &app,
        &format!("/events?job={id}&type=job.completed&after=0"),
        None,
    )
    .await;
    let ev = done.next().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.id.as_deref()),
        ("job.completed", Some(seen[2].0.as_str()))
    );
    let res = app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/events?after=yesterday")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_exactly_the_routes_served() {
    let env = Env::new();
    let app = router(AppState::new(env.settings(&["default"], 1, &[])).unwrap());
    let res = app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = serde_json::from_slice(
        &axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let documented: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let served: BTreeSet<&str> = dockhand::api::paths().into_iter().collect();
    assert_eq!(documented, served, "documented paths == served paths");
    // Per path, a method is served (anything but 405) exactly when documented.
    for path in served {
        let uri = path
            .replace("{id}", "no-such-job")
            .replace("{queue}", &format!("{}-q", env.prefix))
            .replace("{name}", "f")
            .replace("{entry}", "0-1");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let res = app
                .clone()
                .oneshot(
                    Request::builder()
                        .method(method)
                        .uri(&uri)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let op = &doc["paths"][path][method.to_lowercase()];
            let served = res.status() != StatusCode::METHOD_NOT_ALLOWED;
            assert_eq!(served, op.is_object(), "{method} {path}: {}", res.status());
            if served {
                let code = res.status().as_u16().to_string();
                assert!(
                    op["responses"].get(&code).is_some(),
                    "{method} {path} answered {code}, which is not documented"
                );
            } else {
                assert_eq!(res.headers()["content-type"], "application/json");
            }
        }
    }
}

/// schemathesis (PyPI; installed by scripts/lib.sh) generates requests from the
/// served document and checks every answer against it: status codes, content
/// types, bodies, auth. The two streams are left out: they do not end while a
/// job is waiting, and the tests above read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_against_a_real_serve() {
    let env = Env::new();
    let port = free_port();
    let admin = "fedcba9876543210fedc";
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["--redis-url", &env.url, "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .env(
            "DOCKHAND__API__TOKENS",
            format!("read:0123456789abcdef0123,admin:{admin}"),
        )
        .env_remove("REDIS_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the dockhand binary runs");
    wait_until("serve listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/schemathesis.toml");
    // It keeps a cache (`.schemathesis/`) in its working directory: not in the repo.
    let scratch = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        GUARD * 5,
        tokio::process::Command::new("schemathesis")
            .current_dir(scratch.path())
            .args(["--config-file", config, "--no-color", "run"])
            .arg(format!("http://127.0.0.1:{port}/openapi.json"))
            .args(["-H", &format!("Authorization: Bearer {admin}")])
            .args(["--max-examples", "15", "--request-timeout", "10"])
            .args(["--exclude-path-regex", "(/logs$|^/events$)"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis finished within the guard")
    .expect("schemathesis runs (scripts/lib.sh installs it)");
    let _ = serve.kill().await;
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
