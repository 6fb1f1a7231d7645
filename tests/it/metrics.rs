//! `GET /metrics` on `dockhand serve` (through `api::router()`) and a worker's own
//! `/metrics` and `/healthz` (over a real socket), each body read by the Prometheus
//! client's own text parser (`prometheus_client`, from PyPI, run as a python3
//! script): the format is accepted, and the counters and histogram counts move as
//! a completed and an aborted job finish and a webhook fails once, then arrives.

use crate::common::receiver::Receiver;
use crate::common::{free_port, image, spec, wait_until, Env};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use dockhand::api::{router, AppState};
use dockhand::webhook::Secret;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// Parses a text exposition with `prometheus_client`'s parser and prints every
/// family's type and every sample; a body it refuses fails the script.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"types": {}, "samples": []}
for family in text_string_to_metric_families(sys.stdin.read()):
    out["types"][family.name] = family.type
    for s in family.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// What the parser read: each family's type, and the samples.
struct Parsed {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Parsed {
    /// The value of the sample `name` whose labels include `labels`; 0 when absent
    /// (a counter not yet moved has no sample).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    }

    /// Every histogram's buckets are cumulative and its `+Inf` bucket is its count.
    fn check_histograms(&self) {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let counts: Vec<_> = self
                .samples
                .iter()
                .filter(|(n, _, _)| *n == format!("{family}_count"))
                .collect();
            for (_, labels, count) in counts {
                let buckets: Vec<f64> = self
                    .samples
                    .iter()
                    .filter(|(n, l, _)| {
                        *n == format!("{family}_bucket")
                            && labels.iter().all(|(k, v)| l.get(k) == Some(v))
                    })
                    .map(|(_, _, v)| *v)
                    .collect();
                assert!(
                    buckets.windows(2).all(|w| w[0] <= w[1]),
                    "{family} {labels:?}: buckets not cumulative: {buckets:?}"
                );
                assert_eq!(
                    buckets.last(),
                    Some(count),
                    "{family} {labels:?}: +Inf is the count"
                );
            }
        }
    }
}

async fn parse(body: &str) -> Parsed {
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/lib.sh installs prometheus_client)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the body: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Parsed {
        types: serde_json::from_value(v["types"].clone()).unwrap(),
        samples: v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s[0].as_str().unwrap().to_string(),
                    serde_json::from_value(s[1].clone()).unwrap(),
                    s[2].as_f64().unwrap(),
                )
            })
            .collect(),
    }
}

/// `GET /metrics` through the router: 200, the text content type, parsed.
async fn scrape(api: &axum::Router) -> Parsed {
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let res = api.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let kind = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let body = axum::body::to_bytes(res.into_body(), 16 << 20)
        .await
        .unwrap();
    parse(std::str::from_utf8(&body).unwrap()).await
}

/// A plain HTTP/1.1 GET over a socket: the status code and the body.
async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_move_as_jobs_finish_and_webhooks_are_sent() {
    let env = Env::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let settings = env.settings(
        &["default"],
        2,
        &[("DOCKHAND__WORKER__METRICS_LISTEN", &listen)],
    );
    let api = router(AppState::new(settings.clone()).unwrap());
    let worker = crate::common::Worker::start(settings.clone());
    env.wait_until_worker_ready(&env.prefix, None).await;

    let before = scrape(&api).await;
    before.check_histograms();
    for (family, kind) in [
        ("dockhand_jobs_finished", "counter"),
        ("dockhand_build_cache", "counter"),
        ("dockhand_webhook_attempts", "counter"),
        ("dockhand_job_duration_seconds", "histogram"),
        ("dockhand_job_queue_wait_seconds", "histogram"),
        ("dockhand_image_build_seconds", "histogram"),
        ("dockhand_webhook_delivery_latency_seconds", "histogram"),
        ("dockhand_queue_waiting", "gauge"),
        ("dockhand_queue_paused", "gauge"),
        ("dockhand_workers_alive", "gauge"),
    ] {
        assert_eq!(
            before.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    assert!(before.value("dockhand_workers_alive", &[]) >= 1.0);
    assert_eq!(
        before.value(
            "dockhand_worker_docker_reachable",
            &[("worker", &env.prefix)]
        ),
        1.0
    );
    let q = [("queue", "default")];
    assert_eq!(before.value("dockhand_queue_paused", &q), 0.0);

    // One job completes; one fails, and its own webhook answers 500 once, then 200.
    let receiver = Receiver::start(&[500]).await;
    let secret = Secret::generate().unwrap();
    let ok = format!("{}-ok", env.prefix);
    let bad = format!("{}-bad", env.prefix);
    env.xadd("default", &spec(&ok, json!({"command": "echo fine"})))
        .await;
    let hooked = json!({"id": bad, "image": image(), "command": "exit 3",
        "webhooks": [{"url": receiver.url(), "secret": secret.to_whsec()}]});
    env.xadd("default", &hooked.to_string()).await;
    env.finished(&ok).await;
    env.finished(&bad).await;

    // Counted by the worker once each terminal write returned, and written to
    // Redis with its next flush (worker.metrics_flush_ms): waited for. Both
    // jobs' counts come in whole (one job's finished count, duration and queue
    // wait are added in one pipeline), so nothing is half there.
    let finished = |p: &Parsed, status: &str, reason: &str| {
        p.value(
            "dockhand_jobs_finished_total",
            &[("queue", "default"), ("status", status), ("reason", reason)],
        )
    };
    let after = wait_until("both jobs to be counted", || async {
        let p = scrape(&api).await;
        let done = finished(&p, "completed", "") - finished(&before, "completed", "");
        let failed =
            finished(&p, "aborted", "exit_code") - finished(&before, "aborted", "exit_code");
        (done >= 1.0 && failed >= 1.0).then_some(p)
    })
    .await;
    after.check_histograms();
    assert_eq!(
        finished(&after, "completed", "") - finished(&before, "completed", ""),
        1.0
    );
    assert_eq!(
        finished(&after, "aborted", "exit_code") - finished(&before, "aborted", "exit_code"),
        1.0
    );
    for h in [
        "dockhand_job_duration_seconds",
        "dockhand_job_queue_wait_seconds",
    ] {
        let count = format!("{h}_count");
        assert_eq!(
            after.value(&count, &q) - before.value(&count, &q),
            2.0,
            "{h}"
        );
    }

    // The webhook: one failed attempt, then one delivered, and its latency.
    let delivered = wait_until("the webhook's delivery to be counted", || async {
        let p = scrape(&api).await;
        (p.value(
            "dockhand_webhook_attempts_total",
            &[("verdict", "delivered")],
        ) >= 1.0)
            .then_some(p)
    })
    .await;
    delivered.check_histograms();
    assert_eq!(
        delivered.value("dockhand_webhook_attempts_total", &[("verdict", "failed")]),
        1.0
    );
    assert_eq!(
        delivered.value("dockhand_webhook_delivery_latency_seconds_count", &[]),
        1.0
    );
    assert_eq!(receiver.seen().len(), 2);

    // Pausing shows.
    let req = Request::post("/queues/default/pause")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        api.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(scrape(&api).await.value("dockhand_queue_paused", &q), 1.0);

    // The worker's own endpoint: its process view (it counts a job once its
    // terminal write has returned, and frees the job's permit after the ack: both
    // just after the state is seen, so they are waited for), and its health.
    let done = "dockhand_worker_process_jobs_finished_total";
    let own = wait_until(
        "the worker to count both jobs and free their permits",
        || async {
            let (code, body) = http_get(port, "/metrics").await;
            assert_eq!(code, 200, "{body}");
            let own = parse(&body).await;
            let settled = own.value(done, &[("status", "completed")]) == 1.0
                && own.value(done, &[("status", "aborted")]) == 1.0
                && own.value("dockhand_worker_process_running_jobs", &[]) == 0.0;
            settled.then_some(own)
        },
    )
    .await;
    assert_eq!(own.value("dockhand_worker_process_permits", &[]), 2.0);
    // The claim loop holds a permit while it waits to read: one or two are free.
    let free = own.value("dockhand_worker_process_permits_free", &[]);
    assert!((1.0..=2.0).contains(&free), "{free}");
    assert_eq!(
        own.value("dockhand_worker_process_redis_reachable", &[]),
        1.0
    );
    assert_eq!(
        own.value("dockhand_worker_process_docker_reachable", &[]),
        1.0
    );
    let (code, body) = http_get(port, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["redis"], "ok");
    assert_eq!(health["docker"], "ok");
    let (code, _) = http_get(port, "/nothing").await;
    assert_eq!(code, 404);

    worker.stop().await;
}
