//! Getting jobs in: XADD and LPUSH, bad specs, duplicates, the inbox mover.

use crate::common::{image, wait_until, Env, Worker};
use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

fn spec(id: &str, command: &str) -> String {
    serde_json::json!({ "id": id, "image": image(), "command": command }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_recorded_kept_and_the_next_job_still_runs() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let entry = env.xadd("default", r#"{"image": 42"#).await;
    let good = format!("{}-good", env.prefix);
    env.xadd("default", &spec(&good, "echo still serving"))
        .await;

    let bad = env.finished(&entry).await;
    assert_eq!(bad["status"], "aborted");
    assert_eq!(bad["reason"], "invalid_spec");
    assert!(bad["error"].contains("not valid JSON"), "{}", bad["error"]);
    let next = env.finished(&good).await;
    assert_eq!(next["status"], "completed");

    let mut c = env.conn().await;
    let dead: redis::streams::StreamRangeReply =
        c.xrange_all(env.keys.dead("default")).await.unwrap();
    assert_eq!(dead.ids.len(), 1);
    let kept = &dead.ids[0];
    assert_eq!(
        kept.get::<String>("job").unwrap(),
        r#"{"image": 42"#,
        "the raw entry is kept as it came"
    );
    assert_eq!(kept.get::<String>("reason").unwrap(), "invalid_spec");
    assert_eq!(kept.get::<String>("id").unwrap(), entry);
    // The entry is acknowledged (and deleted) just after the job's state is written.
    wait_until("finished entries are acknowledged and deleted", || async {
        let left: usize = env
            .conn()
            .await
            .xlen(env.keys.jobs("default"))
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_spec_names_its_field() {
    let env = Env::new();
    let worker = env.worker(&["default"], 2);
    let img = image();
    let cases = [
        (
            "type",
            serde_json::json!({"image": img, "command": "true", "limits": {"pids": "many"}}),
            "`limits.pids`",
        ),
        (
            "unknown",
            serde_json::json!({"image": img, "command": "true", "imagee": "x"}),
            "imagee",
        ),
        (
            "empty",
            serde_json::json!({"image": img, "command": []}),
            "`command`",
        ),
        (
            "range",
            serde_json::json!({"image": img, "command": "true", "limits": {"timeout_seconds": 0}}),
            "`limits.timeout_seconds`",
        ),
        (
            "escape",
            serde_json::json!({"image": img, "inputs": [{"path": "../etc/x", "content": "1"}]}),
            "`inputs[0].path`",
        ),
        ("noimage", serde_json::json!({"command": "true"}), "`image`"),
    ];
    for (name, mut body, _) in cases.clone() {
        body["id"] = format!("{}-{name}", env.prefix).into();
        env.xadd("default", &body.to_string()).await;
    }
    for (name, _, field) in cases {
        let job = env.finished(&format!("{}-{name}", env.prefix)).await;
        assert_eq!(job["status"], "aborted", "{name}");
        assert_eq!(job["reason"], "invalid_spec", "{name}");
        assert!(job["error"].contains(field), "{name}: {}", job["error"]);
    }
    // A bad id is refused too, and recorded under the entry id.
    let entry = env
        .xadd(
            "default",
            &serde_json::json!({"id": "has space", "image": img}).to_string(),
        )
        .await;
    let job = env.finished(&entry).await;
    assert!(job["error"].starts_with("`id`"), "{}", job["error"]);
    // A policy violation has its own reason.
    let host = format!("{}-host", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({"id": host, "image": img, "network": "host"}).to_string(),
    )
    .await;
    let job = env.finished(&host).await;
    assert_eq!(job["reason"], "policy_denied");
    assert!(job["error"].contains("`network`"), "{}", job["error"]);

    // Every refused entry is kept in the dead stream.
    crate::common::dead_entries_become(&env, "default", 8).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lpush_jobs_run_oldest_first() {
    let env = Env::new();
    let ids: Vec<String> = (0..3).map(|i| format!("{}-l{i}", env.prefix)).collect();
    for id in &ids {
        env.lpush("default", &spec(id, "echo from the inbox")).await;
    }
    let worker = env.worker(&["default"], 1);
    let mut started = Vec::new();
    for id in &ids {
        let job = env.finished(id).await;
        assert_eq!(job["status"], "completed");
        assert_eq!(env.lines(id, "stdout").await, vec!["from the inbox"]);
        started.push(job["started_at"].clone());
    }
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(started, sorted, "FIFO: LPUSH order is run order");
    let mut c = env.conn().await;
    let inbox: usize = c.llen(env.keys.inbox("default")).await.unwrap();
    assert_eq!(inbox, 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_runs_once_and_says_so() {
    let env = Env::new();
    let id = format!("{}-once", env.prefix);
    let mut pubsub = env.client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(env.keys.events_channel()).await.unwrap();
    let worker = env.worker(&["default"], 1);
    env.xadd("default", &spec(&id, "echo ran")).await;
    let second = env.xadd("default", &spec(&id, "echo ran")).await;
    env.lpush("default", &spec(&id, "echo ran")).await;

    let mut messages = pubsub.on_message();
    let mut duplicates = Vec::new();
    while duplicates.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        if v["type"] == "job.duplicate" && v["data"]["id"] == id.as_str() {
            duplicates.push(v["data"]["entry"].as_str().unwrap().to_string());
        }
    }
    assert!(duplicates.contains(&second));
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(
        env.lines(&id, "stdout").await,
        vec!["ran"],
        "ran exactly once"
    );
    assert_eq!(job["deliveries"], "1");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_added_before_any_worker_existed_are_served() {
    let env = Env::new();
    let id = format!("{}-early", env.prefix);
    env.xadd("default", &spec(&id, "echo early")).await;
    let worker = env.worker(&["default"], 1);
    assert_eq!(env.finished(&id).await["status"], "completed");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_several_queues() {
    let env = Env::new();
    let (a, b) = (format!("{}-qa", env.prefix), format!("{}-qb", env.prefix));
    let worker = env.worker(&["alpha", "beta"], 2);
    env.xadd("alpha", &spec(&a, "echo a")).await;
    env.lpush("beta", &spec(&b, "echo b")).await;
    assert_eq!(env.finished(&a).await["queue"], "alpha");
    assert_eq!(env.finished(&b).await["queue"], "beta");
    worker.stop().await;
}

/// The inbox mover's script is its only step, so concurrent movers (several workers)
/// can neither lose nor double an entry, and the stream keeps the push order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inbox_movers_lose_and_double_nothing() {
    let env = Env::new();
    let settings = env.settings(&["mv"], 1, &[]);
    let block = std::time::Duration::from_millis(settings.worker.block_ms);
    let store = dockhand::store::Store::new(&settings.redis, block, 1).unwrap();
    let mut c = env.conn().await;
    let n = 2000;
    for i in 0..n {
        let _: i64 = c
            .lpush(env.keys.inbox("mv"), format!("job-{i}"))
            .await
            .unwrap();
    }
    let movers: Vec<_> = (0..4)
        .map(|_| {
            let (store, keys) = (store.clone(), env.keys.clone());
            tokio::spawn(async move {
                let mut conn = store.conn().await.unwrap();
                let mut total = 0;
                loop {
                    let moved = dockhand::queue::move_inbox(&mut conn, &keys, "mv", 7)
                        .await
                        .unwrap();
                    if moved == 0 {
                        return total;
                    }
                    total += moved;
                }
            })
        })
        .collect();
    let mut total = 0;
    for m in movers {
        total += m.await.unwrap();
    }
    assert_eq!(total, n);
    let entries: redis::streams::StreamRangeReply =
        c.xrange_all(env.keys.jobs("mv")).await.unwrap();
    let jobs: Vec<String> = entries
        .ids
        .iter()
        .map(|e| e.get::<String>("job").unwrap())
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("job-{i}")).collect();
    assert_eq!(jobs, expected, "every entry once, oldest first");
}

/// An id with a `:` could name another job's keys (`v:log` is job `v`'s log
/// stream, `v:files` its files): such ids are refused, recorded under their entry
/// id, and job `v` runs as if they had never been sent, before or after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_that_would_name_another_jobs_keys_is_refused() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let v = format!("{}-v", env.prefix);
    let before = env
        .xadd("default", &spec(&format!("{v}:log"), "echo not me"))
        .await;
    env.xadd("default", &spec(&v, "echo from v")).await;
    let after = env
        .xadd("default", &spec(&format!("{v}:files"), "echo not me"))
        .await;

    for entry in [&before, &after] {
        let refused = env.finished(entry).await;
        assert_eq!(refused["status"], "aborted", "{refused:?}");
        assert_eq!(refused["reason"], "invalid_spec");
        assert!(
            refused["error"].starts_with("`id`") && refused["error"].contains("no `:`"),
            "{refused:?}"
        );
    }
    let job = env.finished(&v).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(env.lines(&v, "stdout").await, vec!["from v"]);
    let mut c = env.conn().await;
    let files: HashMap<String, String> = c.hgetall(env.files_key(&v)).await.unwrap();
    assert!(files.is_empty(), "nothing wrote into v's files: {files:?}");
    let kind: String = redis::cmd("TYPE")
        .arg(env.log_key(&v))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(kind, "stream", "v's log is still its own stream");
    worker.stop().await;
}

/// Waits until every entry of `queue` has been acknowledged (and so deleted).
async fn all_acknowledged(env: &Env, queue: &str) {
    let key = env.keys.jobs(queue);
    wait_until(
        &format!("every entry of {queue} to be acknowledged"),
        || {
            let key = key.clone();
            async move {
                let mut c = env.conn().await;
                let left: usize = c.xlen(&key).await.unwrap();
                (left == 0).then_some(())
            }
        },
    )
    .await
}

/// Bytes that are not UTF-8 where producers and operators write (an entry, a
/// subscriber, a profile) end the job with a clear refusal and are acknowledged:
/// nothing stays pending to be retried for ever, and other deliveries still go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_utf8_are_refused_and_acknowledged() {
    let env = Env::new();
    let mut c = env.conn().await;
    // A subscriber that is not UTF-8, beside one that is fine.
    let _: i64 = c
        .hset(env.keys.subscribers(), "broken", &b"{\"url\":\"\xff\"}"[..])
        .await
        .unwrap();
    let fine = serde_json::json!({"url": "http://127.0.0.1:9/hook", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "events": ["*"], "queues": ["*"]});
    let _: i64 = c
        .hset(env.keys.subscribers(), "fine", fine.to_string())
        .await
        .unwrap();
    let _: i64 = c
        .hset(env.keys.profiles(), "bytes", &b"{\"image\":\"\xff\"}"[..])
        .await
        .unwrap();
    let worker = env.worker(&["default"], 1);

    let raw: String = redis::cmd("XADD")
        .arg(env.keys.jobs("default"))
        .arg("*")
        .arg("job")
        .arg(&b"{\"image\":\"\xff\xfe\"}"[..])
        .query_async(&mut c)
        .await
        .unwrap();
    let profiled = format!("{}-profiled", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({"id": profiled, "profile": "bytes"}).to_string(),
    )
    .await;
    let good = format!("{}-good", env.prefix);
    env.xadd("default", &spec(&good, "echo fine")).await;

    let refused = env.finished(&raw).await;
    assert_eq!(refused["reason"], "invalid_spec", "{refused:?}");
    assert!(refused["error"].contains("not valid JSON"), "{refused:?}");
    let refused = env.finished(&profiled).await;
    assert_eq!(refused["reason"], "invalid_spec", "{refused:?}");
    assert!(
        refused["error"].contains("profile \"bytes\" is not JSON"),
        "{refused:?}"
    );
    assert_eq!(env.finished(&good).await["status"], "completed");
    all_acknowledged(&env, "default").await;
    // The good subscriber's deliveries were made for every job, the broken one skipped.
    for job in [raw.as_str(), profiled.as_str(), good.as_str()] {
        let made: Vec<String> = c.smembers(env.keys.job_deliveries(job)).await.unwrap();
        assert_eq!(made.len(), 1, "{job}: {made:?}");
    }
    worker.stop().await;
}

/// An entry without a `job` field is refused, and the dead stream keeps every
/// field it had: nothing that was sent is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_without_a_job_field_keeps_its_payload() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let mut c = env.conn().await;
    let entry: String = c
        .xadd(
            env.keys.jobs("default"),
            "*",
            &[("jbo", r#"{"image":"x"}"#), ("note", "typo")],
        )
        .await
        .unwrap();
    let refused = env.finished(&entry).await;
    assert_eq!(refused["reason"], "invalid_spec", "{refused:?}");
    all_acknowledged(&env, "default").await;
    let dead: redis::streams::StreamRangeReply =
        c.xrange_all(env.keys.dead("default")).await.unwrap();
    let kept: serde_json::Value =
        serde_json::from_str(&dead.ids[0].get::<String>("job").unwrap()).unwrap();
    assert_eq!(
        kept,
        serde_json::json!({"jbo": r#"{"image":"x"}"#, "note": "typo"})
    );
    worker.stop().await;
}

/// A Redis step that fails with an error (not a lost connection) no longer leaves
/// its entry pending for ever under a live worker: the turn is tried again
/// `worker.max_deliveries` times, then the entry goes to the dead stream with the
/// error, is acknowledged, and the worker goes on with the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_redis_steps_keep_failing_ends_in_the_dead_stream() {
    let env = Env::new();
    let poisoned = format!("{}-poisoned", env.prefix);
    let mut c = env.conn().await;
    // The job hash's key holds a string: every step on it answers WRONGTYPE.
    let _: () = c.set(env.job_key(&poisoned), "not a hash").await.unwrap();
    let worker = Worker::start(env.settings(
        &["default"],
        1,
        &[("DOCKHAND__WORKER__MAX_DELIVERIES", "2")],
    ));
    env.xadd("default", &spec(&poisoned, "echo never")).await;
    let next = format!("{}-next", env.prefix);
    env.xadd("default", &spec(&next, "echo next")).await;

    assert_eq!(env.finished(&next).await["status"], "completed");
    all_acknowledged(&env, "default").await;
    let dead: redis::streams::StreamRangeReply =
        c.xrange_all(env.keys.dead("default")).await.unwrap();
    assert_eq!(dead.ids.len(), 1, "{:?}", dead.ids);
    let kept = &dead.ids[0];
    assert_eq!(kept.get::<String>("id").unwrap(), poisoned);
    assert_eq!(kept.get::<String>("reason").unwrap(), "redis_error");
    assert!(
        kept.get::<String>("error").unwrap().contains("WRONGTYPE"),
        "{:?}",
        kept.get::<String>("error")
    );
    assert!(kept.get::<String>("job").unwrap().contains("echo never"));
    worker.stop().await;
}

/// `unique_for_seconds`: inside the window the same id is a duplicate (not run,
/// and refused by `submit`); once the window since the first submission is over
/// and the job has ended, the id runs afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_window_refuses_the_id_inside_it_and_frees_it_after() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-unique", env.prefix);
    let body = serde_json::json!({"id": id, "image": image(), "command": "echo run", "unique_for_seconds": 3600})
        .to_string();
    let first_entry = env.xadd("default", &body).await;
    assert_eq!(env.finished(&id).await["status"], "completed");

    // Inside the window: a duplicate, acknowledged without a run.
    env.xadd("default", &body).await;
    wait_until("the duplicate is acknowledged", || async {
        let left: usize = env
            .conn()
            .await
            .xlen(env.keys.jobs("default"))
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    let h = env.job(&id).await;
    assert_eq!(h["entry"], first_entry, "the first run's record stands");
    let out = crate::common::cli(
        &env,
        &["submit", "--id", &id, "--image", &image(), "--cmd", "true"],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "submit refuses an id a job holds"
    );

    // The window over (its start brought back an hour, as time passing would):
    // the same id runs afresh, with a log of its own.
    let mut c = env.conn().await;
    let long_ago = chrono::Utc::now().timestamp_millis() - 3_601_000;
    let _: () = c
        .hset(env.job_key(&id), "created_ms", long_ago)
        .await
        .unwrap();
    let second_entry = env.xadd("default", &body).await;
    let h = wait_until("the id runs afresh", || async {
        let h = env.job(&id).await;
        (h.get("entry") == Some(&second_entry)
            && h.get("status").map(String::as_str) == Some("completed"))
        .then_some(h)
    })
    .await;
    assert_eq!(h["attempt"], "1", "a fresh job, not a retry: {h:?}");
    assert_eq!(
        env.lines(&id, "stdout").await,
        vec!["run"],
        "the old run's log was dropped"
    );
    worker.stop().await;
}
