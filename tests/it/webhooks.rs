//! Durable, signed webhook delivery end to end: a real worker, real jobs, a real
//! HTTP receiver on loopback, the `dockhand` CLI.

use crate::common::receiver::Receiver;
use crate::common::{image, wait_until, Env};
use deadpool_redis::redis::AsyncCommands;
use dockhand::store::Store;
use dockhand::webhook::outbox::{self, NewDelivery};
use dockhand::webhook::{deliver, Secret};
use std::collections::HashMap;
use std::time::Duration;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

async fn dockhand(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .arg("--redis-url")
        .arg(&env.url)
        .args(args)
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .env_remove("REDIS_URL")
        .output()
        .await
        .unwrap()
}

/// Adds a subscriber with the CLI and returns the secret it printed.
async fn subscribe(env: &Env, name: &str, url: &str, extra: &[&str]) -> Secret {
    let mut args = vec!["subscriber", "add", name, url];
    args.extend_from_slice(extra);
    let out = dockhand(env, &args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("a generated secret is printed");
    secret.parse().unwrap()
}

async fn run_job(env: &Env, id: &str, command: &str) {
    let spec = serde_json::json!({"id": id, "image": image(), "command": command, "metadata": {"order": 42}});
    env.xadd("default", &spec.to_string()).await;
    env.finished(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_delivered_signed_with_its_result_and_files() {
    let env = Env::new();
    let receiver = Receiver::start(&[]).await;
    let secret = subscribe(&env, "billing", &receiver.url(), &[]).await;
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-hooked", env.prefix);
    run_job(&env, &id, r#"echo working; echo 7 > /dockhand/output/n.txt; echo '{"result_text":"done","result_data":{"n":7}}' > /dockhand/output/result.json"#).await;
    let seen = receiver.wait_for(1).await;
    assert_eq!(seen.len(), 1);
    seen[0].assert_signed(&secret);
    assert!(seen[0].headers["webhook-id"].starts_with("msg_"));
    let body = seen[0].json();
    assert_eq!(body["type"], "job.completed");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    let data = &body["data"];
    assert_eq!(data["id"], id.as_str());
    assert_eq!(data["status"], "completed");
    assert_eq!(data["result_text"], "done");
    assert_eq!(data["result_data"]["n"], 7);
    assert_eq!(data["metadata"]["order"], 42);
    assert_eq!(data["files"][0]["name"], "n.txt");
    assert_eq!(data["files"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(data["log_tail"], serde_json::json!(["working"]));

    let attempts = dockhand(&env, &["webhooks", "attempts", &id]).await;
    let text = String::from_utf8_lossy(&attempts.stdout);
    assert!(
        text.contains("[delivered] 1 attempt(s)") && text.contains("\"status\":200"),
        "{text}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_the_same_webhook_id_and_every_attempt_recorded() {
    let env = Env::new();
    let receiver = Receiver::start(&[500, 500, 200]).await;
    let secret = subscribe(&env, "flaky", &receiver.url(), &[]).await;
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-flaky", env.prefix);
    run_job(&env, &id, "exit 2").await;
    let seen = receiver.wait_for(3).await;
    let ids: Vec<&str> = seen
        .iter()
        .map(|s| s.headers["webhook-id"].as_str())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one delivery, one id: {ids:?}"
    );
    for s in &seen {
        s.assert_signed(&secret);
        assert_eq!(s.json()["type"], "job.aborted");
    }
    // The 200 is recorded: the delivery is done and no longer due, so no attempt
    // can follow it (an attempt reaches the receiver before it is recorded).
    let delivery = ids[0].to_string();
    let mut c = env.conn().await;
    let done = wait_until("the delivery to be recorded as delivered", || async {
        let h: HashMap<String, String> = env
            .conn()
            .await
            .hgetall(env.keys.delivery(&delivery))
            .await
            .unwrap();
        (h.get("status").map(String::as_str) == Some("delivered")).then_some(h)
    })
    .await;
    assert_eq!(done["attempts"], "3", "{done:?}");
    let due: Option<f64> = c
        .zscore(env.keys.deliveries_due(), &delivery)
        .await
        .unwrap();
    assert_eq!(due, None, "nothing more is due");
    assert_eq!(receiver.seen().len(), 3, "no attempt after the success");
    let attempts = dockhand(&env, &["webhooks", "attempts", &id]).await;
    let text = String::from_utf8_lossy(&attempts.stdout);
    assert!(text.contains("[delivered] 3 attempt(s)"), "{text}");
    assert_eq!(text.matches("\"status\":500").count(), 2, "{text}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_every_attempt_is_dead_lettered_then_replayed() {
    let env = Env::new();
    let port = crate::common::free_port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    subscribe(&env, "down", &url, &[]).await;
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-down", env.prefix);
    run_job(&env, &id, "true").await;
    // Three attempts (the first and two retries), all refused, then the dead letter.
    let mut c = env.conn().await;
    let mut dead = 0usize;
    for _ in 0..600 {
        dead = deadpool_redis::redis::AsyncCommands::xlen(&mut c, env.keys.deliveries_dead())
            .await
            .unwrap();
        if dead > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead, 1);
    let text =
        String::from_utf8_lossy(&dockhand(&env, &["webhooks", "attempts", &id]).await.stdout)
            .into_owned();
    assert!(text.contains("[dead] 3 attempt(s)"), "{text}");

    let receiver = Receiver::on(&format!("127.0.0.1:{port}"), &[]).await;
    let replay = dockhand(&env, &["webhooks", "replay", "--dead"]).await;
    assert!(replay.status.success());
    let seen = receiver.wait_for(1).await;
    assert_eq!(seen[0].json()["data"]["id"], id.as_str());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_subscriber_and_says_so() {
    let env = Env::new();
    let receiver = Receiver::start(&[410]).await;
    subscribe(&env, "leaving", &receiver.url(), &[]).await;
    let worker = env.worker(&["default"], 1);
    run_job(&env, &format!("{}-first", env.prefix), "true").await;
    receiver.wait_for(1).await;
    let mut listed = String::new();
    for _ in 0..100 {
        listed = String::from_utf8_lossy(&dockhand(&env, &["subscriber", "list"]).await.stdout)
            .into_owned();
        if listed.contains("DISABLED") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        listed.contains("DISABLED") && listed.contains("410"),
        "{listed}"
    );
    // A control subscriber: a job's deliveries are made in one step, for every
    // subscriber that wants its event, before any goes out. So once the control
    // has the second job's webhook, a delivery to the disabled one would exist.
    let control = Receiver::start(&[]).await;
    subscribe(&env, "control", &control.url(), &[]).await;
    let second = format!("{}-second", env.prefix);
    run_job(&env, &second, "true").await;
    let got = control.wait_for(1).await;
    assert_eq!(got[0].json()["data"]["id"], second.as_str());
    let mut c = env.conn().await;
    let made: Vec<String> = c.smembers(env.keys.job_deliveries(&second)).await.unwrap();
    let mut to = Vec::new();
    for id in &made {
        let sub: String = c.hget(env.keys.delivery(id), "subscriber").await.unwrap();
        to.push(sub);
    }
    assert_eq!(
        to,
        vec!["control"],
        "no delivery made for the disabled subscriber"
    );
    assert_eq!(
        receiver.seen().len(),
        1,
        "a disabled subscriber gets nothing more"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_address_is_never_connected_to() {
    let env = Env::new();
    // Allowed: 127.0.0.1 only (the test settings). The receiver listens on 127.0.0.2.
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    subscribe(&env, "internal", &url, &[]).await;
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-ssrf", env.prefix);
    run_job(&env, &id, "true").await;
    let mut text = String::new();
    for _ in 0..200 {
        text =
            String::from_utf8_lossy(&dockhand(&env, &["webhooks", "attempts", &id]).await.stdout)
                .into_owned();
        if text.contains("[dead]") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("[dead] 1 attempt(s)") && text.contains("127.0.0.2"),
        "{text}"
    );
    // The attempt is recorded after it ended, so a connection it made would be
    // waiting in the listener's backlog by now (the kernel completes it unasked).
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("the guard let a connection through from {from}"),
        Err(e) => panic!("accept: {e}"),
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_both_secrets_sign() {
    let env = Env::new();
    let receiver = Receiver::start(&[]).await;
    let old = subscribe(&env, "rotating", &receiver.url(), &[]).await;
    let out = dockhand(&env, &["subscriber", "rotate", "rotating"]).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let new: Secret = text
        .lines()
        .find_map(|l| l.strip_prefix("subscriber rotating: new secret "))
        .unwrap()
        .parse()
        .unwrap();
    let worker = env.worker(&["default"], 1);
    run_job(&env, &format!("{}-rot", env.prefix), "true").await;
    let seen = receiver.wait_for(1).await;
    assert_eq!(seen[0].headers["webhook-signature"].split(' ').count(), 2);
    seen[0].assert_signed(&old);
    seen[0].assert_signed(&new);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_own_webhook_gets_its_events() {
    let env = Env::new();
    let receiver = Receiver::start(&[]).await;
    let secret = Secret::generate().unwrap();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-own", env.prefix);
    let spec = serde_json::json!({"id": id, "image": image(), "command": "exit 5",
        "webhooks": [{"url": receiver.url(), "secret": secret.to_whsec()}]});
    env.xadd("default", &spec.to_string()).await;
    let seen = receiver.wait_for(1).await;
    seen[0].assert_signed(&secret);
    assert_eq!(seen[0].json()["data"]["exit_code"], 5);
    // A bad target is refused up front, naming it.
    let bad = format!("{}-badhook", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({"id": bad, "image": image(), "webhooks": [{"url": "ftp://x"}]})
            .to_string(),
    )
    .await;
    let job = env.finished(&bad).await;
    assert_eq!(job["reason"], "invalid_spec");
    assert!(
        job["error"].starts_with("`webhooks[0]`"),
        "{}",
        job["error"]
    );
    worker.stop().await;
}

/// Every worker is killed after the job ended and before its webhook got through:
/// the delivery waits in Redis and a new worker sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_survives_every_worker_being_killed() {
    let env = Env::new();
    let receiver = Receiver::start(&[503]).await;
    let secret = subscribe(&env, "patient", &receiver.url(), &[]).await;
    // The first attempt fails; the retry is due in 4 s, after this worker is dead
    // (if it took it again first, the second worker gets it after the 3 s lease).
    let mut first = env.spawn_worker(
        &format!("{}-a", env.prefix),
        &[("DOCKHAND__WEBHOOKS__RETRY_SCHEDULE_SECONDS", "4")],
    );
    let id = format!("{}-durable", env.prefix);
    run_job(&env, &id, "echo bye").await;
    receiver.wait_for(1).await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(receiver.seen().len(), 1);

    let second = env.worker(&["default"], 1);
    let seen = receiver.wait_for(2).await;
    assert_eq!(seen[0].headers["webhook-id"], seen[1].headers["webhook-id"]);
    seen[1].assert_signed(&secret);
    assert_eq!(seen[1].json()["data"]["id"], id.as_str());
    second.stop().await;
}

/// `subscriber add` accepts event types that are never delivered as webhooks (they
/// are real types, on `dockhand:events`), but says so on stderr, naming them and the
/// ones that are; and indeed only the terminal event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_events_never_delivered_warns_and_only_the_terminal_one_arrives() {
    let env = Env::new();
    let receiver = Receiver::start(&[]).await;
    let events = "job.started,job.queued,job.completed";
    let out = dockhand(
        &env,
        &[
            "subscriber",
            "add",
            "eager",
            &receiver.url(),
            "--events",
            events,
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "a warning, not a refusal: {stderr}");
    assert!(
        stderr.contains(
            "warning: no webhook is ever delivered for job.started, job.queued; \
             only for job.completed, job.aborted, job.progress and batch.completed."
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:events", env.prefix)),
        "{stderr}"
    );
    let mut c = env.conn().await;
    let stored: String =
        deadpool_redis::redis::AsyncCommands::hget(&mut c, env.keys.subscribers(), "eager")
            .await
            .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        stored["events"],
        serde_json::json!(events.split(',').collect::<Vec<_>>())
    );

    // Nothing to say for the defaults, `*`, or terminal events only.
    for extra in [&[][..], &["--events", "*"], &["--events", "job.aborted"]] {
        let mut args = vec!["subscriber", "add", "quiet", "http://127.0.0.1:9/x"];
        args.extend_from_slice(extra);
        let out = dockhand(&env, &args).await;
        assert!(out.status.success());
        // (The loopback URL draws the SSRF guard's warning; that is another test's.)
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !said.contains("no webhook is ever delivered"),
            "{extra:?}: {said}"
        );
    }
    assert!(dockhand(&env, &["subscriber", "rm", "quiet"])
        .await
        .status
        .success());

    let worker = env.worker(&["default"], 1);
    let id = format!("{}-eager", env.prefix);
    run_job(&env, &id, "echo started").await;
    let seen = receiver.wait_for(1).await;
    assert_eq!(seen[0].json()["type"], "job.completed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let types: Vec<String> = receiver
        .seen()
        .iter()
        .map(|s| s.json()["type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        types,
        ["job.completed"],
        "job.started and job.queued never arrive"
    );
    worker.stop().await;
}

/// Every shape in which a submitter hands over a credential: it is masked before
/// anything is stored, so it is in no job hash, no dead entry and no log line,
/// while the job's own webhook is still signed with its real secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_is_stored_in_clear_whatever_its_shape() {
    let env = Env::new();
    let receiver = Receiver::start(&[]).await;
    let worker = env.worker(&["default"], 1);
    let secret = Secret::generate().unwrap();
    let p = &env.prefix;
    let hooked = format!("{p}-hooked");
    let image = image();
    let specs = [
        serde_json::json!({"id": hooked, "image": image, "command": "echo $TOKEN",
            "secret_env": {"TOKEN": "hunter22-a"},
            "webhooks": [{"url": receiver.url(), "secret": secret.to_whsec()}]})
        .to_string(),
        serde_json::json!({"id": format!("{p}-list"), "image": image, "secret_env": ["T=hunter22-b"]})
            .to_string(),
        format!(r#"{{"id":"{p}-twice","image":"{image}","secret_env":{{"T":"hunter22-c"}},"secret_env":{{"T":"x"}}}}"#),
        format!(r#"{{"id":"{p}-broken","image":"{image}","secret_env":{{"T":"hunter22-d"}}"#),
        serde_json::json!({"id": format!("{p}-gitpass"), "git": {"url": "https://bot:hunter22-e@127.0.0.2:9/x.git"}})
            .to_string(),
        serde_json::json!({"id": format!("{p}-gittoken"), "git": {"url": "https://hunter22-f@127.0.0.2:9/x.git"}})
            .to_string(),
    ];
    let mut ids = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let entry = env.xadd("default", spec).await;
        // The broken one cannot name its id: it is recorded under its entry.
        ids.push(if i == 3 {
            entry
        } else {
            serde_json::from_str::<serde_json::Value>(spec)
                .map(|v| v["id"].as_str().unwrap().to_string())
                .unwrap_or(entry)
        });
    }
    for id in &ids {
        env.finished(id).await;
    }
    let seen = receiver.wait_for(1).await;
    seen[0].assert_signed(&secret);
    assert_eq!(env.lines(&hooked, "stdout").await, vec!["***"]);

    let mut c = env.conn().await;
    let mut stored = Vec::new();
    for id in &ids {
        let hash: Vec<(Vec<u8>, Vec<u8>)> = c.hgetall(env.job_key(id)).await.unwrap();
        stored.extend(hash.into_iter().flat_map(|(k, v)| [k, v]));
        stored.extend(stream_values(&mut c, &env.log_key(id)).await);
    }
    crate::common::dead_entries_become(&env, "default", 2).await;
    let dead = stream_values(&mut c, &env.keys.dead("default")).await;
    // The list and the broken entry are refused at validation (the two git ones
    // when their host is checked; `secret_env` given twice runs with the last).
    assert_eq!(dead.len(), 2 * 5, "two dead entries of five fields");
    stored.extend(dead);
    let whsec = secret.to_whsec();
    for value in &stored {
        let text = String::from_utf8_lossy(value);
        assert!(!text.contains("hunter22"), "stored in clear: {text}");
        assert!(
            !text.contains(&whsec),
            "the webhook secret stored in clear: {text}"
        );
    }
    worker.stop().await;
}

/// Every field value of every entry of a stream, as bytes.
async fn stream_values(
    c: &mut impl deadpool_redis::redis::aio::ConnectionLike,
    key: &str,
) -> Vec<Vec<u8>> {
    type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let entries: Entries = deadpool_redis::redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(c)
        .await
        .unwrap();
    entries
        .into_iter()
        .flat_map(|(_, fields)| fields.into_iter().map(|(_, v)| v))
        .collect()
}

/// `subscriber add` with a URL the SSRF guard would refuse (here loopback) warns,
/// naming the address's kind and the setting that allows it; once the setting
/// allows it, no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_subscriber_the_guard_refuses_says_which_setting_allows_it() {
    let env = Env::new();
    let add = |allow: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dockhand"));
        cmd.arg("--redis-url")
            .arg(&env.url)
            .args(["subscriber", "add", "local", "http://127.0.0.1:9/hook"])
            .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
            .env_remove("REDIS_URL")
            .env_remove("DOCKHAND__WEBHOOKS__ALLOW_NETWORKS");
        if let Some(allow) = allow {
            cmd.env("DOCKHAND__WEBHOOKS__ALLOW_NETWORKS", allow);
        }
        cmd.output()
    };
    let out = add(None).await.unwrap();
    assert!(out.status.success(), "a warning, not a refusal: {out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("will be dead-lettered")
            && said.contains("127.0.0.1 is a loopback address")
            && said.contains("webhooks.allow_networks"),
        "{said}"
    );
    let out = add(Some("127.0.0.1/32")).await.unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{out:?}"
    );
}

/// Many deliveries due at once: one delivery loop sends them concurrently
/// (`webhooks.concurrency`), on connections it keeps open, each exactly once,
/// signed, with its one attempt recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_due_deliveries_are_each_sent_once_signed_on_kept_connections() {
    const N: usize = 300;
    let env = Env::new();
    let receiver = Receiver::start(&[]).await;
    let secret = subscribe(&env, "many", &receiver.url(), &[]).await;
    let settings = env.settings(
        &["default"],
        1,
        &[("DOCKHAND__WEBHOOKS__CONCURRENCY", "16")],
    );
    let store = Store::new(&settings.redis, Duration::from_millis(300), 1).unwrap();
    let mut conn = store.conn().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..N {
        let job = format!("{}-{i}", env.prefix);
        let body = serde_json::json!({"type": "job.completed", "data": {"id": job}}).to_string();
        let target = NewDelivery {
            subscriber: "many".into(),
            url: None,
            secret: None,
        };
        let made = outbox::make(
            &mut conn,
            &env.keys,
            &job,
            "1-0",
            "job.completed",
            &body,
            vec![target],
            3600,
        )
        .await
        .unwrap();
        assert_eq!(made, 1);
        ids.push(outbox::delivery_id(&job, "1-0", "job.completed", "many"));
    }

    let token = CancellationToken::new();
    let deliveries = tokio::spawn(deliver::run(
        settings,
        store,
        Default::default(),
        token.clone(),
    ));
    wait_until("every delivery to be recorded as delivered", || async {
        let mut c = env.conn().await;
        let mut pipe = deadpool_redis::redis::pipe();
        for id in &ids {
            pipe.hget(env.keys.delivery(id), "status");
        }
        let statuses: Vec<Option<String>> = pipe.query_async(&mut c).await.unwrap();
        statuses
            .iter()
            .all(|s| s.as_deref() == Some("delivered"))
            .then_some(())
    })
    .await;
    token.cancel();
    deliveries.await.unwrap();

    let seen = receiver.seen();
    assert_eq!(seen.len(), N, "each delivery sent once");
    let mut sent: Vec<&str> = seen
        .iter()
        .map(|s| s.headers["webhook-id"].as_str())
        .collect();
    sent.sort_unstable();
    sent.dedup();
    assert_eq!(sent.len(), N, "no delivery sent twice");
    for s in &seen {
        s.assert_signed(&secret);
        let id = s.headers["webhook-id"].as_str();
        let job = &s.json()["data"]["id"];
        let at = ids
            .iter()
            .position(|i| i == id)
            .expect("a delivery made here");
        assert_eq!(job.as_str(), Some(format!("{}-{at}", env.prefix).as_str()));
    }
    let mut c = env.conn().await;
    for id in &ids {
        let attempts: Vec<String> = c
            .lrange(env.keys.delivery_attempts(id), 0, -1)
            .await
            .unwrap();
        assert_eq!(attempts.len(), 1, "{id}: {attempts:?}");
        assert!(
            attempts[0].contains("\"verdict\":\"delivered\""),
            "{attempts:?}"
        );
    }
    let due: usize = c.zcard(env.keys.deliveries_due()).await.unwrap();
    assert_eq!(due, 0, "nothing left due");
    assert!(
        receiver.connections() < N,
        "connections are kept between attempts: {} for {N} deliveries",
        receiver.connections()
    );
}
