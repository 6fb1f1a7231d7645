//! The dashboard, in a real headless Chromium (Debian's `chromium`) driven over
//! the DevTools Protocol (through `tests/it/cdp.py`), against a real `dockhand
//! serve` process and an in-process worker: the page loads, pausing a queue from
//! it pauses the queue in Redis, a job goes from queued to completed on its page
//! without a reload, its log lines stream in, and new jobs appear in the listing
//! live. Every wait is on a DOM condition, polled, bounded by `GUARD`.
//!
//! Also, without a browser: the page and its assets are served without a token
//! (with a strict Content-Security-Policy and their cache headers) while the API
//! still asks for one.
//!
//! Screenshots are written to `$DOCKHAND_SCREENSHOTS` when set (`scripts/screenshots`
//! sets it to `docs/`), else to a temporary directory: the test never rewrites docs/.

use crate::common::{free_port, spec, wait_until, Env, Worker};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use deadpool_redis::redis::AsyncCommands;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tower::ServiceExt;

/// The `chromium` binary (scripts/lib.sh installs Debian's package).
fn chromium() -> String {
    std::env::var("DOCKHAND_CHROMIUM").unwrap_or_else(|_| "chromium".to_string())
}

/// A headless Chromium with one page, and the bridge that drives it. Dropping it
/// kills both (kill_on_drop), and its profile directory goes with the TempDir.
struct Browser {
    _chromium: Child,
    bridge: Child,
    to_bridge: ChildStdin,
    from_bridge: Lines<BufReader<ChildStdout>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut chromium = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox", // the tests run as root
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                // 0: the kernel picks the port; Chromium says which on stderr.
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium runs (scripts/lib.sh installs Debian's chromium package)");
        let mut stderr = BufReader::new(chromium.stderr.take().unwrap()).lines();
        let port = tokio::time::timeout(crate::common::GUARD, async {
            while let Some(line) = stderr.next_line().await.unwrap() {
                if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                    return rest.split('/').next().unwrap().parse::<u16>().unwrap();
                }
            }
            panic!("chromium exited before it listened for DevTools");
        })
        .await
        .expect("chromium says where DevTools listens");
        // Chromium keeps writing to stderr: read it on, or it would block on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/cdp.py");
        let mut bridge = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let to_bridge = bridge.stdin.take().unwrap();
        let from_bridge = BufReader::new(bridge.stdout.take().unwrap()).lines();
        let mut b = Browser {
            _chromium: chromium,
            bridge,
            to_bridge,
            from_bridge,
            _profile: profile,
        };
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    /// One DevTools command; its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let line = json!({"method": method, "params": params}).to_string() + "\n";
        self.to_bridge.write_all(line.as_bytes()).await.unwrap();
        let reply = tokio::time::timeout(crate::common::GUARD, self.from_bridge.next_line())
            .await
            .unwrap_or_else(|_| panic!("no answer to {method}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the DevTools bridge ended at {method}"));
        let v: Value = serde_json::from_str(&reply).unwrap();
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr} threw: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is truthy in the page, polling it.
    async fn wait_for(&mut self, what: &str, expr: &str) {
        let deadline = tokio::time::Instant::now() + crate::common::GUARD;
        loop {
            let v = self.eval(&format!("!!({expr})")).await;
            if v == true {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let body = self.eval("document.getElementById('view').innerText").await;
                panic!(
                    "waited {:?} for {what} ({expr}); the page shows:\n{body}",
                    crate::common::GUARD
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// A PNG of the page as it is on screen, written to `path`.
    async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // kill_on_drop kills Chromium; the bridge too, and it is reaped here.
        let _ = self.bridge.start_kill();
    }
}

/// `dockhand serve` as its own process, on a free loopback port.
struct Serve {
    _child: Child,
    base: String,
}

impl Serve {
    async fn start(env: &Env) -> Serve {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(["--redis-url", &env.url, "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the dockhand binary runs");
        wait_until("dockhand serve listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        Serve {
            _child: child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// Where screenshots go: `$DOCKHAND_SCREENSHOTS`, else a temporary directory.
fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var("DOCKHAND_SCREENSHOTS") {
        Ok(dir) if !dir.is_empty() => (PathBuf::from(dir), None),
        _ => {
            let tmp = tempfile::tempdir().unwrap();
            (tmp.path().to_path_buf(), Some(tmp))
        }
    }
}

/// The job the page follows: lines on stdout and stderr, a result and a file.
const JOB: &str = r#"echo first line; echo a warning >&2; mkdir -p /dockhand/output; printf 'a,b\n1,2\n' > /dockhand/output/table.csv; echo '{"result_text":"2 rows","result_data":{"rows":2,"ok":true}}' > /dockhand/output/result.json; echo last line"#;

/// A JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_and_steers_queues_and_jobs_live() {
    let env = Env::new();
    let worker = Worker::start(env.settings(&["default", "reports"], 2, &[]));
    let serve = Serve::start(&env).await;
    let mut b = Browser::start().await;
    let (shots, _tmp) = screenshot_dir();

    // The page loads: the queue the worker serves is listed, with its worker.
    b.navigate(&format!("{}/#/", serve.base)).await;
    b.wait_for(
        "the default queue's row",
        r#"document.querySelector('tr[data-queue="default"] button[data-action="pause"]')"#,
    )
    .await;
    b.wait_for(
        "the worker's row",
        "document.querySelector('#workers tr[data-worker] .badge.alive')",
    )
    .await;
    // Marks this page load: still there at the end means nothing reloaded the page.
    b.eval("window.__sameLoad = true").await;
    // Its stylesheet applied under the Content-Security-Policy, and nothing came
    // from another origin.
    assert_eq!(
        b.eval("getComputedStyle(document.querySelector('.top')).position")
            .await,
        "sticky"
    );
    assert_eq!(
        b.eval("performance.getEntriesByType('resource').every(e => e.name.startsWith(location.origin))")
            .await,
        true
    );

    // Pause from the page: the row says so, and Redis has it.
    b.eval(
        r#"document.querySelector('tr[data-queue="default"] button[data-action="pause"]').click()"#,
    )
    .await;
    b.wait_for(
        "the queue shown as paused",
        r#"document.querySelector('tr[data-queue="default"][data-paused="true"] .badge.paused')"#,
    )
    .await;
    let mut conn = env.conn().await;
    let paused: bool = conn.sismember(env.keys.paused(), "default").await.unwrap();
    assert!(paused, "{} holds default", env.keys.paused());
    // A read the worker began before the pause may still take from the queue (for
    // up to worker.block_ms). A job of the other queue, submitted now, is taken by
    // that read or a later one; once it has run, every read knows of the pause (as
    // in api.rs).
    let fence = format!("{}-fence", env.prefix);
    env.xadd("reports", &spec(&fence, json!({"command": "true"})))
        .await;
    env.finished(&fence).await;

    // A job submitted to the paused queue waits: its page says queued, and why.
    let id = format!("{}-dash", env.prefix);
    env.xadd("default", &spec(&id, json!({"command": JOB})))
        .await;
    b.eval(&format!("location.hash = {}", js(&format!("#/jobs/{id}"))))
        .await;
    b.wait_for(
        "the job shown as queued",
        "document.querySelector('#job-status [data-badge=\"queued\"]')",
    )
    .await;
    b.wait_for(
        "the paused queue's banner",
        "document.querySelector('#paused-banner button[data-action=\"resume\"]')",
    )
    .await;

    // Resume from the job's page: it runs, and its page follows it to completed.
    b.eval("document.querySelector('#paused-banner button[data-action=\"resume\"]').click()")
        .await;
    b.wait_for(
        "the job shown as completed",
        "document.querySelector('#job-status [data-badge=\"completed\"]')",
    )
    .await;
    let paused: bool = conn.sismember(env.keys.paused(), "default").await.unwrap();
    assert!(!paused, "resumed");
    b.wait_for(
        "its result data and file",
        "document.getElementById('result-data').textContent.includes('\"rows\": 2') && document.querySelector('#files a').textContent === 'table.csv'",
    )
    .await;
    assert_eq!(
        b.eval("window.__sameLoad === true").await,
        true,
        "no reload"
    );

    // Its log: streamed over SSE where `GET /jobs/{id}/logs` is served, told apart
    // by stream. A server without that route answers 404, and the page says it
    // keeps to polling the job's state (checked above) and shows what it can.
    b.wait_for(
        "the log view to settle on a mode",
        "document.getElementById('log').dataset.logMode !== 'connecting'",
    )
    .await;
    let mode = b
        .eval("document.getElementById('log').dataset.logMode")
        .await;
    if mode == "sse" {
        b.wait_for(
            "the stdout lines",
            "[...document.querySelectorAll('#log .line.s-stdout .text')].map(e => e.textContent).join('|') === 'first line|last line'",
        )
        .await;
        b.wait_for(
            "the stderr line, told apart",
            "[...document.querySelectorAll('#log .line.s-stderr .text')].some(e => e.textContent === 'a warning')",
        )
        .await;
    } else {
        assert_eq!(mode, "poll");
        eprintln!(
            "NOTE: this server has no GET /jobs/{{id}}/logs yet: the job page fell back to \
             polling; the log streaming checks run once that route is served"
        );
        b.wait_for(
            "the page saying the log stream is unavailable",
            "document.querySelector('.log-panel .hint').textContent.includes('No live log stream')",
        )
        .await;
    }
    b.eval("document.getElementById('toasts').replaceChildren()")
        .await;
    b.screenshot(&shots.join("dashboard-job.png")).await;

    // The listing: the finished job is there, and new ones appear and finish in it
    // live.
    b.eval("location.hash = '#/jobs'").await;
    b.wait_for(
        "the first job in the listing",
        &format!(
            "document.querySelector('tr[data-job={}][data-status=completed]')",
            js(&id)
        ),
    )
    .await;
    let second = format!("{}-dash2", env.prefix);
    let failing = format!("{}-dash3", env.prefix);
    env.xadd("default", &spec(&second, json!({"command": "echo again"})))
        .await;
    env.xadd("reports", &spec(&failing, json!({"command": "exit 3"})))
        .await;
    b.wait_for(
        "the second job listed, completed",
        &format!(
            "document.querySelector('tr[data-job={}][data-status=completed]')",
            js(&second)
        ),
    )
    .await;
    b.wait_for(
        "the failing job listed, aborted",
        &format!(
            "document.querySelector('tr[data-job={}][data-status=aborted]')",
            js(&failing)
        ),
    )
    .await;
    assert_eq!(
        b.eval("window.__sameLoad === true").await,
        true,
        "no reload"
    );

    // The overview, for its screenshot: both queues, active, with the worker.
    b.eval("location.hash = '#/'").await;
    b.wait_for(
        "both queues active",
        r#"document.querySelector('tr[data-queue="default"][data-paused="false"]') && document.querySelector('tr[data-queue="reports"]')"#,
    )
    .await;
    b.wait_for(
        "the worker's row",
        "document.querySelector('#workers tr[data-worker]')",
    )
    .await;
    b.eval("document.getElementById('toasts').replaceChildren()")
        .await;
    b.screenshot(&shots.join("dashboard-queues.png")).await;

    drop(b);
    worker.stop().await;
}

/// One request through `router()`: status, headers and body.
async fn get(app: &axum::Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let res = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn the_page_is_served_without_a_token_and_the_api_still_asks_for_one() {
    let env = Env::new();
    let settings = env.settings(
        &["default"],
        1,
        &[("DOCKHAND__API__TOKENS", "read:0123456789abcdef0123")],
    );
    let app = dockhand::api::router(dockhand::api::AppState::new(settings).unwrap());

    let (code, h, page) = get(&app, "/").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(h["cache-control"], "no-cache");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );

    // Every asset the page names is served, hashed and cached for good.
    let assets: Vec<&str> = page
        .split('"')
        .filter(|s| s.starts_with("/assets/"))
        .collect();
    assert_eq!(assets.len(), 4, "css, js and the icon twice: {assets:?}");
    for a in assets {
        let (code, h, body) = get(&app, a).await;
        assert_eq!(code, StatusCode::OK, "{a}");
        assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
        assert!(
            !body.contains("https://"),
            "{a} fetches nothing from elsewhere"
        );
    }
    let (code, _, _) = get(&app, "/assets/app-000000000000.js").await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // The data still needs the token.
    for uri in ["/queues", "/jobs", "/workers"] {
        let (code, _, _) = get(&app, uri).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{uri}");
    }
}
