//! Faults: Redis going away and coming back.

use crate::common::{image, Env};
use std::time::Duration;

fn spec(id: &str, command: &str) -> String {
    serde_json::json!({ "id": id, "image": image(), "command": command }).to_string()
}

/// Redis restarts (losing everything, like a restart without persistence) while the
/// worker is idle: the worker reconnects, re-creates its consumer group, and serves
/// both XADD and LPUSH jobs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_while_idle_does_not_stop_the_worker() {
    let mut env = Env::own_server();
    let worker = env.worker(&["default"], 1);
    let before = format!("{}-before", env.prefix);
    env.xadd("default", &spec(&before, "echo before")).await;
    assert_eq!(env.finished(&before).await["status"], "completed");

    env.server.as_mut().unwrap().kill();
    // Down for a while: the worker's blocking reads and inbox waits fail and retry.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.server.as_mut().unwrap().restart();

    let after = format!("{}-after", env.prefix);
    env.xadd("default", &spec(&after, "echo after")).await;
    let job = env.finished(&after).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(env.lines(&after, "stdout").await, vec!["after"]);

    let pushed = format!("{}-pushed", env.prefix);
    env.lpush("default", &spec(&pushed, "echo pushed")).await;
    assert_eq!(env.finished(&pushed).await["status"], "completed");
    worker.stop().await;
}

/// A worker started while Redis is down waits for it instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_redis_waits_for_it() {
    let mut env = Env::own_server();
    env.server.as_mut().unwrap().kill();
    let worker = env.worker(&["default"], 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    env.server.as_mut().unwrap().restart();
    let id = format!("{}-late", env.prefix);
    env.xadd("default", &spec(&id, "echo late")).await;
    assert_eq!(env.finished(&id).await["status"], "completed");
    worker.stop().await;
}

/// Redis is SIGKILLed mid-run (AOF on) and restarted: every job still ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_with_aof_loses_no_job() {
    let mut env = Env::own_server_with_aof();
    let worker = env.worker(&["default"], 2);
    let ids: Vec<String> = (0..6).map(|i| format!("{}-j{i}", env.prefix)).collect();
    for id in &ids {
        env.xadd("default", &spec(id, "echo start; sleep 1; echo end"))
            .await;
    }
    env.status_becomes(&ids[0], "running").await;
    env.server.as_mut().unwrap().kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    env.server.as_mut().unwrap().restart();
    for id in &ids {
        let job = env.finished(id).await;
        assert_eq!(job["status"], "completed", "{id}: {job:?}");
        assert!(
            env.lines(id, "stdout")
                .await
                .ends_with(&["end".to_string()]),
            "{id}"
        );
    }
    worker.stop().await;
}

/// Redis is away for longer than the lease: the worker stops its containers
/// (fencing) and, finding nobody took the jobs over, puts them back; they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_fences_then_requeues() {
    let mut env = Env::own_server_with_aof();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-fenced", env.prefix);
    env.xadd(
        "default",
        &spec(
            &id,
            "echo attempt $DOCKHAND_ATTEMPT; [ $DOCKHAND_ATTEMPT -ge 2 ] || sleep 60",
        ),
    )
    .await;
    env.status_becomes(&id, "running").await;
    env.server.as_mut().unwrap().kill();
    tokio::time::sleep(Duration::from_millis(3500)).await; // the test lease is 2 s
    env.server.as_mut().unwrap().restart();
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(job["attempt"], "2");
    assert!(crate::common::containers_with_label(&format!("dockhand.job={id}")).is_empty());
    worker.stop().await;
}
