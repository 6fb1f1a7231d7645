//! Priorities within a queue and the order between queues: jobs run highest
//! priority first (routed by the inbox mover, by `dockhand submit`, or written to
//! a lane by hand), one claim in ten takes the longest-waiting job, and a worker
//! with `strict_priority` empties its first queue before it looks at the next.

use crate::common::{cli, spec, wait_until, Env, Worker};
use deadpool_redis::redis::AsyncCommands;
use serde_json::json;

/// The job ids in the order their runs started (`started_at`).
async fn start_order(env: &Env, ids: &[String]) -> Vec<String> {
    let mut started = Vec::new();
    for id in ids {
        let h = env.finished(id).await;
        assert_eq!(h["status"], "completed", "{id}: {h:?}");
        started.push((h["started_at"].clone(), id.clone()));
    }
    started.sort();
    started.into_iter().map(|(_, id)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highest_priority_runs_first_whatever_the_way_in() {
    let env = Env::new();
    let settings = env.settings(&["default", "other"], 1, &[]);
    let worker = Worker::start(settings.clone());
    // Pause the queue, and make sure the worker knows before anything arrives: a job
    // on its other queue, submitted after the pause, ran.
    assert!(cli(&env, &["queue", "pause", "default"])
        .await
        .status
        .success());
    let marker = format!("{}-marker", env.prefix);
    env.xadd("other", &spec(&marker, json!({"command": "true"})))
        .await;
    env.finished(&marker).await;

    // Six jobs: four LPUSHed (the inbox mover routes them by priority), two
    // through `dockhand submit`.
    let priorities = [0, 5, -3, 2, 0, 5];
    let ids: Vec<String> = (0..6).map(|i| format!("{}-j{i}", env.prefix)).collect();
    for (i, (id, p)) in ids.iter().zip(priorities).enumerate() {
        let body = spec(id, json!({"command": "true", "priority": p}));
        if i < 4 {
            env.lpush("default", &body).await;
        } else {
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
                .args(["--redis-url", &env.url, "submit", "-", "--queue", "default"])
                .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
                .env_remove("REDIS_URL")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(body.as_bytes()).await.unwrap();
            drop(stdin);
            assert!(child.wait().await.unwrap().success());
        }
    }
    // All six are in their lanes: two in the queue's stream, the rest in p5, p2, p-3.
    wait_until("the inbox is routed into the lanes", || async {
        let mut c = env.conn().await;
        let mut lens = Vec::new();
        for p in [5, 2, 0, -3] {
            let n: usize = c.xlen(env.keys.lane("default", p)).await.unwrap();
            lens.push(n);
        }
        (lens == vec![2, 1, 2, 1]).then_some(())
    })
    .await;
    let out = cli(&env, &["queues", "--json"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let row: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["queue"] == "default")
        .unwrap();
    assert_eq!(row["waiting"], 6, "every lane counts as waiting: {row}");

    assert!(cli(&env, &["queue", "resume", "default"])
        .await
        .status
        .success());
    let order = start_order(&env, &ids).await;
    let expected: Vec<String> = [1, 5, 3, 0, 4, 2].iter().map(|i| ids[*i].clone()).collect();
    assert_eq!(
        order, expected,
        "priority 5 (oldest first), 2, 0, 0, then -3"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_claim_in_ten_takes_the_longest_waiting_job() {
    let env = Env::new();
    // Written by hand: the low job to the queue's stream first, then eleven to the
    // priority 3 lane, before any worker runs.
    let low = format!("{}-low", env.prefix);
    let mut c = env.conn().await;
    let _: String = c
        .xadd(
            env.keys.lane("default", -1),
            "*",
            &[("job", spec(&low, json!({"command": "true"})))],
        )
        .await
        .unwrap();
    let mut ids = vec![low.clone()];
    for i in 0..11 {
        let id = format!("{}-high{i}", env.prefix);
        let _: String = c
            .xadd(
                env.keys.lane("default", 3),
                "*",
                &[("job", spec(&id, json!({"command": "true"})))],
            )
            .await
            .unwrap();
        ids.push(id);
    }
    let worker = Worker::start(env.settings(&["default"], 1, &[]));
    let order = start_order(&env, &ids).await;
    let at = order.iter().position(|id| *id == low).unwrap();
    assert_eq!(at, 9, "the tenth claim took the oldest job: {order:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_queues_empty_the_first_before_the_next() {
    let env = Env::new();
    let mut ids = Vec::new();
    for q in ["low", "high"] {
        for i in 0..3 {
            let id = format!("{}-{q}{i}", env.prefix);
            env.xadd(q, &spec(&id, json!({"command": "true"}))).await;
            ids.push(id);
        }
    }
    let settings = env.settings(
        &["high", "low"],
        1,
        &[("DOCKHAND__WORKER__STRICT_PRIORITY", "true")],
    );
    let worker = Worker::start(settings);
    let order = start_order(&env, &ids).await;
    assert!(
        order[..3].iter().all(|id| id.contains("-high")),
        "{order:?}"
    );
    assert!(order[3..].iter().all(|id| id.contains("-low")), "{order:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_out_of_range_is_refused_naming_the_field() {
    let env = Env::new();
    let body = json!({"image": crate::common::image(), "priority": 10}).to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["--redis-url", &env.url, "submit", "-"])
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .env_remove("REDIS_URL")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("priority"));
}
