//! `dockhand serve`'s API, driven through `api::router()` against a real Redis
//! and a real worker: submit, read, list (paged, filtered, past retention),
//! cancel, retry, pause and resume, dead entries, auth scopes; and the CLI's
//! `jobs`, `retry`, `queue pause|resume` and `dead retry --all`.

use crate::common::{image, spec, wait_until, Env};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use deadpool_redis::redis::AsyncCommands;
use dockhand::api::{router, AppState};
use serde_json::{json, Value};
use std::collections::HashSet;
use tower::ServiceExt;

/// The router of a `serve` with these settings.
struct Api(axum::Router);

impl Api {
    fn new(settings: std::sync::Arc<dockhand::config::Settings>) -> Api {
        Api(router(
            AppState::new(settings).expect("the API state builds"),
        ))
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let res = self.0.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 64 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None, None).await
    }

    async fn post(&self, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(Method::POST, uri, None, body).await
    }

    /// Waits until `GET /jobs/{id}` says `status`.
    async fn status_becomes(&self, id: &str, status: &str) -> Value {
        wait_until(&format!("job {id} is {status} through the API"), || async {
            let (code, v) = self.get(&format!("/jobs/{id}")).await;
            (code == StatusCode::OK && v["status"] == status).then_some(v)
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_submitted_read_listed_cancelled_and_retried() {
    let env = Env::new();
    let settings = env.settings(&["default"], 2, &[]);
    let api = Api::new(settings.clone());
    let worker = dockhand_worker(&settings);

    // Submit: 201 and the id; a typo is a 400 naming the field; a second
    // submission of the id a 409.
    let id = format!("{}-a", env.prefix);
    let body = json!({"id": id, "image": image(), "command": "echo hello"});
    let (code, v) = api.post("/jobs", Some(body.clone())).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(v["id"], id.as_str());
    let (code, v) = api
        .post("/jobs", Some(json!({"image": image(), "comand": "true"})))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("comand"), "{v}");
    let (code, v) = api.post("/jobs", Some(body)).await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    let (code, v) = api
        .post("/jobs?queue=bad%20name", Some(json!({"image": image()})))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");

    // Read it, typed: numbers as numbers.
    let done = api.status_becomes(&id, "completed").await;
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["attempt"], 1);
    assert!(
        done.get("owner").is_none(),
        "bookkeeping fields stay inside: {done}"
    );
    let (code, _) = api.get("/jobs/no-such-job").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = api.get("/jobs/bad:id").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    // Cancel of a finished job: 409; retry: the same id runs again as attempt 2.
    let (code, _) = api
        .call(Method::DELETE, &format!("/jobs/{id}"), None, None)
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    let (code, v) = api.post(&format!("/jobs/{id}/retry"), None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["attempt"], 2);
    wait_until("the retry runs as attempt 2", || async {
        let (_, v) = api.get(&format!("/jobs/{id}")).await;
        (v["status"] == "completed" && v["attempt"] == 2).then_some(())
    })
    .await;
    let (code, _) = api.post("/jobs/nothing-here/retry", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // A long job is cancelled through DELETE.
    let long = format!("{}-long", env.prefix);
    let (code, _) = api
        .post(
            "/jobs",
            Some(json!({"id": long, "image": image(), "command": "sleep 300"})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    api.status_becomes(&long, "running").await;
    let (code, v) = api
        .call(Method::DELETE, &format!("/jobs/{long}"), None, None)
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{v}");
    let v = api.status_becomes(&long, "aborted").await;
    assert_eq!(v["reason"], "cancelled");
    worker.stop().await;
}

fn dockhand_worker(settings: &std::sync::Arc<dockhand::config::Settings>) -> crate::common::Worker {
    crate::common::Worker::start(settings.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_without_repeats_filter_and_forget_expired_jobs() {
    let env = Env::new();
    let settings = env.settings(&["default"], 2, &[]);
    let api = Api::new(settings.clone());
    let worker = dockhand_worker(&settings);
    let mut ids = Vec::new();
    for i in 0..7 {
        let id = format!("{}-{i}", env.prefix);
        let command = if i % 2 == 0 { "true" } else { "exit 3" };
        env.xadd("default", &spec(&id, json!({"command": command})))
            .await;
        ids.push(id);
    }
    for id in &ids {
        env.finished(id).await;
    }
    // While they live: pages of 3 give every job once, newest first.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (code, v) = api.get(&format!("/jobs?limit=3&cursor={cursor}")).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        seen.extend(
            v["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string()),
        );
        match v["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
        assert!(seen.len() <= ids.len(), "paging repeats: {seen:?}");
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{seen:?}");
    assert_eq!(seen.len(), ids.len(), "{seen:?}");
    // Filters: by status, by reason, by queue.
    let (_, v) = api.get("/jobs?status=aborted&limit=100").await;
    let aborted: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(aborted.len(), 3, "{v}");
    assert!(v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["exit_code"] == 3));
    let (_, v) = api.get("/jobs?reason=exit_code&queue=default").await;
    assert_eq!(v["jobs"].as_array().unwrap().len(), 3, "{v}");
    let (_, v) = api.get("/jobs?status=completed").await;
    assert_eq!(v["jobs"].as_array().unwrap().len(), 4, "{v}");
    let (code, _) = api.get("/jobs?status=done").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = api.get("/jobs?cursor=garbage").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    // Past retention: each hash has the expiry the worker set; bring it forward
    // (time passing, without waiting a retention out), and the listing shows none
    // of them, and pruning empties the indexes.
    let mut c = env.conn().await;
    for id in &ids {
        let ttl: i64 = c.ttl(env.job_key(id)).await.unwrap();
        assert!(ttl > 0, "a finished job expires");
        let _: bool = c.pexpire(env.job_key(id), 1).await.unwrap();
    }
    wait_until("the finished jobs expire", || async {
        let mut c = env.conn().await;
        let n: usize = c
            .exists(ids.iter().map(|id| env.job_key(id)).collect::<Vec<_>>())
            .await
            .unwrap();
        (n == 0).then_some(())
    })
    .await;
    let (_, v) = api.get("/jobs").await;
    assert_eq!(v["jobs"], json!([]), "{v}");
    let mut conn =
        dockhand::store::Store::new(&settings.redis, std::time::Duration::from_millis(300), 1)
            .unwrap()
            .conn()
            .await
            .unwrap();
    // Every member, however new (a worker looks only at those older than the
    // retention: these were made to expire early).
    dockhand::listing::prune(
        &mut conn,
        &env.keys,
        &["default".to_string()],
        1000,
        i64::MAX,
    )
    .await
    .unwrap();
    let mut c = env.conn().await;
    for key in [
        env.keys.index("default", "all", ""),
        env.keys.index("default", "status", "completed"),
    ] {
        let n: usize = c.zcard(&key).await.unwrap();
        assert_eq!(n, 0, "{key} still holds expired jobs");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_keeps_its_jobs_until_it_is_resumed() {
    let env = Env::new();
    let settings = env.settings(&["held", "free"], 1, &[]);
    let api = Api::new(settings.clone());
    let worker = dockhand_worker(&settings);
    let (code, v) = api.post("/queues/held/pause", None).await;
    assert_eq!(
        (code, v["paused"].clone()),
        (StatusCode::OK, json!(true)),
        "{v}"
    );
    // A job on the other queue, submitted after the pause, runs: the worker's
    // reads from then on know of the pause.
    let first = format!("{}-free1", env.prefix);
    env.xadd("free", &spec(&first, json!({"command": "true"})))
        .await;
    env.finished(&first).await;
    // Now a job on the paused queue, then one on the other: the read that takes the
    // second would have taken the first too, were its queue not paused.
    let held = format!("{}-held", env.prefix);
    env.xadd("held", &spec(&held, json!({"command": "true"})))
        .await;
    let second = format!("{}-free2", env.prefix);
    env.xadd("free", &spec(&second, json!({"command": "true"})))
        .await;
    env.finished(&second).await;
    assert!(
        env.job(&held).await.is_empty(),
        "a paused queue's job was claimed"
    );
    // The throughput is written with the workers' metrics (every
    // worker.metrics_flush_ms): waited for.
    let v = wait_until("the free queue's two jobs to be counted", || async {
        let (_, v) = api.get("/queues").await;
        let counted = v["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|q| q["queue"] == "free" && q["finished_last_minute"] == 2);
        counted.then_some(v)
    })
    .await;
    let row = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "held")
        .unwrap()
        .clone();
    assert_eq!(
        (row["paused"].clone(), row["waiting"].clone()),
        (json!(true), json!(1)),
        "{v}"
    );
    assert!(row["oldest_waiting_seconds"].is_number(), "{row}");
    let free = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "free")
        .unwrap()
        .clone();
    assert_eq!(free["finished_last_minute"], 2, "{free}");
    // Resumed, it runs.
    let (code, _) = api.post("/queues/held/resume", None).await;
    assert_eq!(code, StatusCode::OK);
    let done = env.finished(&held).await;
    assert_eq!(done["status"], "completed");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_needed_and_their_scope_is_enforced() {
    let env = Env::new();
    let read = "read:0123456789abcdef0123";
    let admin = "admin:fedcba9876543210fedc";
    let settings = env.settings(
        &["default"],
        1,
        &[("DOCKHAND__API__TOKENS", &format!("{read},{admin}"))],
    );
    let api = Api::new(settings);
    let read = read.split_once(':').unwrap().1;
    let admin = admin.split_once(':').unwrap().1;
    let (code, v) = api.call(Method::GET, "/queues", None, None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"].is_string());
    let (code, _) = api
        .call(
            Method::GET,
            "/queues",
            Some("wrong-token-wrong-token"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = api.call(Method::GET, "/queues", Some(read), None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .call(Method::GET, &format!("/queues?token={read}"), None, None)
        .await;
    assert_eq!(
        code,
        StatusCode::OK,
        "a GET may carry its token in the query (EventSource)"
    );
    let (code, _) = api
        .call(Method::POST, "/queues/default/pause", Some(read), None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = api
        .call(
            Method::POST,
            &format!("/queues/default/pause?token={admin}"),
            None,
            None,
        )
        .await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "only a GET takes its token from the query"
    );
    let (code, _) = api
        .call(Method::POST, "/queues/default/pause", Some(admin), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, v) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((code, v["redis"].clone()), (StatusCode::OK, json!("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_entries_are_listed_and_retried_one_or_all() {
    let env = Env::new();
    let settings = env.settings(&["default"], 1, &[]);
    let api = Api::new(settings.clone());
    let worker = dockhand_worker(&settings);
    // Three entries no worker can run (invalid specs) end in the dead stream.
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = format!("{}-d{i}", env.prefix);
        env.xadd(
            "default",
            &json!({"id": id, "image": image(), "commandd": "true"}).to_string(),
        )
        .await;
        ids.push(id);
    }
    for id in &ids {
        let h = env.finished(id).await;
        assert_eq!(h["reason"], "invalid_spec");
    }
    let (code, v) = api.get("/queues/default/dead").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["dead"].as_array().unwrap().len(), 3, "{v}");
    // One by job id: it runs again (and dies again, being still invalid).
    let (code, v) = api
        .post(&format!("/queues/default/dead/{}/retry", ids[0]), None)
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{v}");
    // The rest at once, from the CLI.
    let out = crate::common::cli(&env, &["dead", "retry", "--all", "--queue", "default"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("every retried entry died again", || async {
        let (_, v) = api.get("/queues/default/dead").await;
        (v["dead"].as_array().unwrap().len() == 3).then_some(())
    })
    .await;
    let (code, v) = api
        .call(Method::DELETE, "/queues/default/dead", None, None)
        .await;
    assert_eq!(
        (code, v["deleted"].clone()),
        (StatusCode::OK, json!(3)),
        "{v}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_jobs_retries_and_pauses() {
    let env = Env::new();
    let settings = env.settings(&["default"], 1, &[]);
    let worker = dockhand_worker(&settings);
    let id = format!("{}-c", env.prefix);
    env.xadd("default", &spec(&id, json!({"command": "exit 4"})))
        .await;
    env.finished(&id).await;
    let out = crate::common::cli(&env, &["jobs", "--status", "aborted", "--json"]).await;
    assert!(out.status.success());
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["id"].as_str(), rows[0]["exit_code"].as_i64()),
        (Some(id.as_str()), Some(4))
    );
    let out = crate::common::cli(&env, &["jobs", "--status", "finished"]).await;
    assert_eq!(out.status.code(), Some(2), "a bad status is a usage error");
    let out = crate::common::cli(&env, &["retry", &id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the retry ends as attempt 2", || async {
        let h = env.job(&id).await;
        (h.get("attempt").map(String::as_str) == Some("2")
            && h.get("status").map(String::as_str) == Some("aborted"))
        .then_some(())
    })
    .await;
    let out = crate::common::cli(&env, &["retry", "no-such-job"]).await;
    assert_eq!(out.status.code(), Some(1));
    let out = crate::common::cli(&env, &["queue", "pause", "default"]).await;
    assert!(out.status.success());
    let out = crate::common::cli(&env, &["queues", "--json"]).await;
    let row: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(row["paused"], true, "{row}");
    let out = crate::common::cli(&env, &["queue", "resume", "default"]).await;
    assert!(out.status.success());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_to_listen_off_loopback_without_a_token() {
    let env = Env::new();
    let out = crate::common::cli(&env, &["serve", "--listen", "0.0.0.0:0"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api.tokens"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_profiles_and_deliveries_are_managed_through_the_api() {
    let env = Env::new();
    let settings = env.settings(&["default"], 1, &[]);
    let api = Api::new(settings.clone());
    let receiver = crate::common::receiver::Receiver::start(&[200]).await;

    // A subscriber: its generated secret is in the creation's answer only.
    let (code, v) = api
        .post(
            "/subscribers",
            Some(json!({"name": "ops", "url": receiver.url()})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{v}");
    let (_, v) = api.get("/subscribers").await;
    let listed = v["subscribers"][0].clone();
    assert_eq!(listed["name"], "ops");
    assert!(
        !listed.to_string().contains(&secret[6..]),
        "a listing shows no secret: {listed}"
    );
    let (code, v) = api
        .post(
            "/subscribers",
            Some(json!({"name": "bad name", "url": "http://x"})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let (code, v) = api.post("/subscribers/ops/rotate", None).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_ne!(v["secret"].as_str().unwrap(), secret);

    // A job's deliveries and their attempts.
    let worker = dockhand_worker(&settings);
    let id = format!("{}-hook", env.prefix);
    env.xadd("default", &spec(&id, json!({"command": "true"})))
        .await;
    receiver.wait_for(1).await;
    let v = wait_until("the delivery is recorded as delivered", || async {
        let (_, v) = api.get(&format!("/jobs/{id}/webhooks")).await;
        (v["deliveries"][0]["status"] == "delivered").then_some(v)
    })
    .await;
    assert!(
        !v["deliveries"][0]["attempts"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{v}"
    );
    assert!(!v.to_string().contains("whsec_"), "{v}");
    let delivery = v["deliveries"][0]["id"].as_str().unwrap().to_string();
    let (code, _) = api
        .post(&format!("/webhooks/{delivery}/replay"), None)
        .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    receiver.wait_for(2).await;
    let (code, _) = api
        .call(Method::DELETE, "/subscribers/ops", None, None)
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = api
        .call(Method::DELETE, "/subscribers/ops", None, None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // A profile: registered, shown with its secrets masked, removed.
    let profile = json!({"image": image(), "command": "true", "secret_env": {"TOKEN": "hunter2"}});
    let (code, v) = api
        .call(Method::PUT, "/profiles/render", None, Some(profile))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (_, v) = api.get("/profiles/render").await;
    assert_eq!(v["spec"]["secret_env"]["TOKEN"], "***", "{v}");
    let (code, _) = api
        .call(
            Method::PUT,
            "/profiles/render",
            None,
            Some(json!({"comand": 1})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = api
        .call(Method::DELETE, "/profiles/render", None, None)
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = api.get("/profiles/render").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    worker.stop().await;
}

/// Every listing command takes `--json`: one object a line, with typed values
/// (embedded JSON as JSON, numbers as numbers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listing_command_speaks_typed_json() {
    let env = Env::new();
    let lines = |out: &std::process::Output| -> Vec<Value> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    };
    let cli = |args: &'static [&'static str]| crate::common::cli(&env, args);
    assert!(
        cli(&["subscriber", "add", "ops", "https://example.invalid/hook"])
            .await
            .status
            .success()
    );
    let subs = lines(&cli(&["subscriber", "list", "--json"]).await);
    assert_eq!(subs[0]["name"], "ops");
    assert!(subs[0]["events"].is_array(), "{subs:?}");
    let mut c = env.conn().await;
    let _: () = c
        .hset(
            env.keys.profiles(),
            "p",
            json!({"image": image(), "secret_env": {"K": "v"}}).to_string(),
        )
        .await
        .unwrap();
    let profiles = lines(&cli(&["profile", "list", "--json"]).await);
    assert_eq!(
        profiles[0]["spec"]["secret_env"]["K"], "***",
        "{profiles:?}"
    );
    // A dead entry: its raw job is JSON again when it was JSON.
    let worker = dockhand_worker(&env.settings(&["default"], 1, &[]));
    let id = format!("{}-dead", env.prefix);
    env.xadd(
        "default",
        &json!({"id": id, "image": image(), "comand": "x"}).to_string(),
    )
    .await;
    env.finished(&id).await;
    let dead = lines(&cli(&["dead", "--json"]).await);
    assert_eq!(dead[0]["job"]["comand"], "x", "{dead:?}");
    let queues = lines(&cli(&["queues", "--json"]).await);
    assert!(queues[0]["dead"].is_number(), "{queues:?}");
    let workers = lines(&cli(&["workers", "--json"]).await);
    assert_eq!(workers[0]["alive"], true, "{workers:?}");
    let jobs = lines(&cli(&["jobs", "--json"]).await);
    assert!(jobs[0]["attempt"].is_number(), "{jobs:?}");
    worker.stop().await;
}
