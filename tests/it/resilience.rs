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
