//! Never losing a job: dead workers, retries, delays, cancellation, drain.

use crate::common::{containers_with_label, eventually, signal, spec, Env};
use std::time::Duration;

/// A job that only finishes on its second attempt (the first one hangs).
const SECOND_TIME_LUCKY: &str =
    "echo attempt $DOCKHAND_ATTEMPT; [ $DOCKHAND_ATTEMPT -ge 2 ] || sleep 120";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_runs_to_completion_elsewhere_and_its_container_is_removed() {
    let env = Env::new();
    let id = format!("{}-lost", env.prefix);
    let first_id = format!("{}-a", env.prefix);
    let mut first = env.spawn_worker(&first_id, &[]);
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": SECOND_TIME_LUCKY})),
    )
    .await;
    // Its container runs: it printed its first line.
    env.wait_for_log_line(&id, "stdout", "attempt 1").await;

    first.kill().unwrap(); // SIGKILL: no cleanup at all
    first.wait().unwrap();
    let second = env.worker(&["default"], 1);
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(job["attempt"], "2");
    assert_eq!(job["deliveries"], "2");
    assert_ne!(job["worker"], first_id);
    assert_eq!(
        env.lines(&id, "stdout").await,
        vec!["attempt 1", "attempt 2"],
        "one log, seq continued"
    );

    // The worker that took the job over removed the dead worker's container
    // (still running `sleep`) before it ran the job again: never two at once.
    assert_eq!(
        containers_with_label(&format!("dockhand.worker={first_id}")),
        Vec::<String>::new()
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_deliveries_a_job_is_worker_lost_and_dead_lettered() {
    let env = Env::new();
    let id = format!("{}-twice", env.prefix);
    let mut first = env.spawn_worker(
        &format!("{}-a", env.prefix),
        &[("DOCKHAND__WORKER__MAX_DELIVERIES", "1")],
    );
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "echo started; sleep 120"}),
        ),
    )
    .await;
    // Killed once its container runs, so that the clean-up below finds it.
    env.wait_for_log_line(&id, "stdout", "started").await;
    first.kill().unwrap();
    first.wait().unwrap();
    let settings = env.settings(
        &["default"],
        1,
        &[("DOCKHAND__WORKER__MAX_DELIVERIES", "1")],
    );
    let second = crate::common::Worker::start(settings);
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "aborted");
    assert_eq!(job["reason"], "worker_lost");
    assert!(job["error"].contains("lost 1 times"), "{}", job["error"]);
    // Its entry goes to the dead stream in the step after the state is written.
    crate::common::wait_until("the entry is in the dead stream", || async {
        let mut c = env.conn().await;
        let dead: usize =
            deadpool_redis::redis::AsyncCommands::xlen(&mut c, env.keys.dead("default"))
                .await
                .unwrap();
        (dead == 1).then_some(())
    })
    .await;
    second.stop().await;
    // Clean up the container the killed worker left running.
    for c in containers_with_label(&format!("dockhand.job={id}")) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &c])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_and_then_succeeds() {
    let env = Env::new();
    let id = format!("{}-retry", env.prefix);
    let mut pubsub = env.client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(env.keys.events_channel()).await.unwrap();
    let worker = env.worker(&["default"], 1);
    let command = "echo attempt $DOCKHAND_ATTEMPT; [ $DOCKHAND_ATTEMPT -ge 2 ] || exit 3";
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": command, "retry": {"max_attempts": 3, "backoff_seconds": 0.2, "on": ["failed"]}})),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(job["attempt"], "2");
    assert_eq!(
        env.lines(&id, "stdout").await,
        vec!["attempt 1", "attempt 2"]
    );

    use futures_util::StreamExt;
    let mut messages = pubsub.on_message();
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("job.completed") {
        let msg = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        if v["data"]["id"] == id.as_str() {
            kinds.push(v["type"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        kinds,
        vec![
            "job.queued",
            "job.started",
            "job.retrying",
            "job.started",
            "job.completed"
        ]
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_max_attempts_and_skip_unlisted_exit_codes() {
    let env = Env::new();
    let (always, other) = (
        format!("{}-always", env.prefix),
        format!("{}-other", env.prefix),
    );
    let worker = env.worker(&["default"], 2);
    let retry = serde_json::json!({"max_attempts": 2, "backoff_seconds": 0.1, "on": ["failed"], "exit_codes": [3]});
    env.xadd(
        "default",
        &spec(
            &always,
            serde_json::json!({"command": "exit 3", "retry": retry}),
        ),
    )
    .await;
    env.xadd(
        "default",
        &spec(
            &other,
            serde_json::json!({"command": "exit 4", "retry": retry}),
        ),
    )
    .await;
    let a = env.finished(&always).await;
    assert_eq!(
        (
            a["status"].as_str(),
            a["reason"].as_str(),
            a["attempt"].as_str()
        ),
        ("aborted", "exit_code", "2")
    );
    let o = env.finished(&other).await;
    assert_eq!(
        (o["status"].as_str(), o["attempt"].as_str()),
        ("aborted", "1"),
        "exit code 4 is not retried"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_waits_scheduled_then_runs() {
    let env = Env::new();
    let id = format!("{}-later", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "echo later", "delay_seconds": 2}),
        ),
    )
    .await;
    let scheduled = env.status_becomes(&id, "scheduled").await;
    assert!(!scheduled["run_at"].is_empty());
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed");
    let created = chrono::DateTime::parse_from_rfc3339(&job["created_at"]).unwrap();
    let started = chrono::DateTime::parse_from_rfc3339(&job["started_at"]).unwrap();
    assert!(
        started - created >= chrono::Duration::seconds(2),
        "not before its delay: {job:?}"
    );
    worker.stop().await;
}

async fn cancel(env: &Env, id: &str) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["--redis-url", &env.url, "cancel", id])
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_queued_scheduled_and_running_jobs() {
    let env = Env::new();
    let queued = format!("{}-queued", env.prefix);
    let scheduled = format!("{}-scheduled", env.prefix);
    let running = format!("{}-running", env.prefix);

    // Queued: no worker has seen it yet.
    env.xadd(
        "default",
        &spec(
            &queued,
            serde_json::json!({"command": "echo should not run"}),
        ),
    )
    .await;
    assert!(cancel(&env, &queued).await.status.success());
    let worker = env.worker(&["default"], 2);
    let job = env.finished(&queued).await;
    assert_eq!(
        (job["status"].as_str(), job["reason"].as_str()),
        ("aborted", "cancelled")
    );
    assert!(env.log(&queued).await.is_empty(), "it never started");

    // Scheduled: waiting for its delay.
    env.xadd(
        "default",
        &spec(
            &scheduled,
            serde_json::json!({"command": "echo no", "delay_seconds": 1}),
        ),
    )
    .await;
    env.status_becomes(&scheduled, "scheduled").await;
    assert!(cancel(&env, &scheduled).await.status.success());
    let job = env.finished(&scheduled).await;
    assert_eq!(job["reason"], "cancelled");
    assert!(job["started_at"].is_empty(), "it never started");

    // Running: stopped, container removed.
    env.xadd(
        "default",
        &spec(
            &running,
            serde_json::json!({"command": "echo started; sleep 120"}),
        ),
    )
    .await;
    env.status_becomes(&running, "running").await;
    eventually("the container runs", || {
        !containers_with_label(&format!("dockhand.job={running}")).is_empty()
    })
    .await;
    let out = cancel(&env, &running).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = env.finished(&running).await;
    assert_eq!(
        (job["status"].as_str(), job["reason"].as_str()),
        ("aborted", "cancelled")
    );
    // Removed beside the outcome's write, not before it: wait for it.
    let label = format!("dockhand.job={running}");
    crate::common::eventually("the running job's container is removed", || {
        containers_with_label(&label).is_empty()
    })
    .await;
    assert!(env
        .lines(&running, "system")
        .await
        .iter()
        .any(|l| l.contains("cancelled")));

    // A finished job cannot be cancelled: exit code 1.
    assert_eq!(cancel(&env, &running).await.status.code(), Some(1));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_puts_the_running_job_back_for_another_worker() {
    let env = Env::new();
    let id = format!("{}-drain", env.prefix);
    let mut first = env.spawn_worker(
        &format!("{}-a", env.prefix),
        &[("DOCKHAND__WORKER__DRAIN_SECONDS", "1")],
    );
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": SECOND_TIME_LUCKY})),
    )
    .await;
    // Its container runs (it printed its first line) when the signal comes.
    env.wait_for_log_line(&id, "stdout", "attempt 1").await;
    signal(&first, "TERM");
    assert!(first.wait().unwrap().success(), "a drained worker exits 0");
    let job = env.status_becomes(&id, "queued").await;
    assert_eq!(job["attempt"], "1");
    // Nothing of the stopped run reads as the job's: no exit code, start or worker.
    for field in [
        "exit_code",
        "started_at",
        "finished_at",
        "worker",
        "reason",
        "error",
    ] {
        assert_eq!(
            job[field], "",
            "{field} of the stopped run is left: {job:?}"
        );
    }
    assert!(
        containers_with_label(&format!("dockhand.job={id}")).is_empty(),
        "its container was stopped and removed"
    );

    let second = env.worker(&["default"], 1);
    let job = env.finished(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempt"].as_str()),
        ("completed", "2")
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_is_not_taken_over_while_its_worker_lives() {
    let env = Env::new();
    let id = format!("{}-long", env.prefix);
    let a = env.worker(&["default"], 1);
    let b = env.worker(&["default"], 1);
    // Both are up (two heartbeats) and the consumer group exists before the job
    // comes: whichever does not run it could take it over.
    crate::common::wait_until("both workers to be up", || async {
        (env.beats().await.len() == 2 && env.has_group("default").await).then_some(())
    })
    .await;
    // Runs for three leases (2 s each): renewals keep it with its worker.
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": "sleep 6; echo done"})),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["deliveries"], "1", "delivered once: never reclaimed");
    assert_eq!(job["attempt"], "1");
    a.stop().await;
    b.stop().await;
}

/// Makes a stopped container carrying `labels`, as a crashed worker would leave.
fn leftover(labels: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new("docker");
    cmd.arg("create");
    for (k, v) in labels {
        cmd.args(["--label", &format!("{k}={v}")]);
    }
    let out = cmd
        .args([&crate::common::image(), "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn exists(container: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", "--type", "container", container])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_this_deployments_leftovers_and_nothing_else() {
    use deadpool_redis::redis::AsyncCommands;
    let env = Env::new();
    let mut c = env.conn().await;
    let deployment = format!("{}-dep", env.prefix);
    let _: () = c.set(env.keys.deployment(), &deployment).await.unwrap();
    let p = &env.prefix;
    // A worker host that is gone (another worker id), same deployment: its job is unknown.
    let gone = leftover(&[
        ("dockhand.job", &format!("{p}-unknown")),
        ("dockhand.worker", &format!("{p}-gone-host")),
        ("dockhand.consumer", &format!("{p}-gone-host:1:x")),
        ("dockhand.deployment", &deployment),
    ]);
    // This worker id, made before containers carried the deployment label.
    let legacy = leftover(&[
        ("dockhand.job", &format!("{p}-legacy")),
        ("dockhand.worker", p),
        ("dockhand.consumer", &format!("{p}:1:old")),
    ]);
    // Another deployment sharing this Docker host, even under the same worker id
    // (both default to the hostname): not ours to judge.
    let foreign = leftover(&[
        ("dockhand.job", &format!("{p}-foreign")),
        ("dockhand.worker", p),
        ("dockhand.consumer", &format!("{p}:1:foreign")),
        ("dockhand.deployment", "another-deployment"),
    ]);
    // A live worker of this deployment running its job.
    let busy_consumer = format!("{p}-busy-host:1:x");
    let busy_job = format!("{p}-busy");
    let _: () = c
        .set_ex(env.keys.alive(&busy_consumer), "1", 120)
        .await
        .unwrap();
    let _: () = c
        .hset(env.job_key(&busy_job), "status", "running")
        .await
        .unwrap();
    let busy = leftover(&[
        ("dockhand.job", &busy_job),
        ("dockhand.worker", &format!("{p}-busy-host")),
        ("dockhand.consumer", &busy_consumer),
        ("dockhand.deployment", &deployment),
    ]);

    let worker = env.worker(&["default"], 1); // sweeps at start
    eventually(
        "the sweep removes the gone host's and the legacy container",
        || !exists(&gone) && !exists(&legacy),
    )
    .await;
    assert!(
        exists(&foreign),
        "another deployment's container was removed"
    );
    assert!(
        exists(&busy),
        "a live worker's running container was removed"
    );
    worker.stop().await;
    for id in [foreign, busy] {
        std::process::Command::new("docker")
            .args(["rm", "-f", &id])
            .output()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_missed_on_pub_sub_is_found_in_the_job_hash() {
    use deadpool_redis::redis::AsyncCommands;
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-missed", env.prefix);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "echo started; sleep 120"}),
        ),
    )
    .await;
    env.status_becomes(&id, "running").await;
    // What `dockhand cancel` writes first; its announcement on pub/sub is "lost"
    // (never sent), as when the worker's subscription was down at that moment.
    let mut c = env.conn().await;
    let _: () = c
        .hset(env.job_key(&id), "cancel_requested", "1")
        .await
        .unwrap();
    let job = env.finished(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["reason"].as_str()),
        ("aborted", "cancelled")
    );
    // Removed beside the outcome's write, not before it: wait for it.
    let label = format!("dockhand.job={id}");
    crate::common::eventually("the job's container is removed", || {
        containers_with_label(&label).is_empty()
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_the_drain_at_once_and_still_cleans_up() {
    let env = Env::new();
    let id = format!("{}-second-signal", env.prefix);
    // A drain that would wait ten minutes for the job.
    let mut worker = env.spawn_worker(
        &format!("{}-a", env.prefix),
        &[("DOCKHAND__WORKER__DRAIN_SECONDS", "600")],
    );
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "echo started; sleep 300"}),
        ),
    )
    .await;
    env.status_becomes(&id, "running").await;
    eventually("the container runs", || {
        !containers_with_label(&format!("dockhand.job={id}")).is_empty()
    })
    .await;
    crate::common::wait_until("the worker's cancel listener to subscribe", || async {
        (cancel_listeners(&env).await == 1).then_some(())
    })
    .await;
    signal(&worker, "TERM");
    // The worker has taken the first signal: it stopped its chores, so its cancel
    // listener left the cancel channel...
    crate::common::wait_until(
        "the worker to begin its shutdown (cancel listener gone)",
        || async { (cancel_listeners(&env).await == 0).then_some(()) },
    )
    .await;
    // ...and a heartbeat after that still lists the job as running: it drains.
    let draining = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    env.wait_for_beat("a heartbeat of the draining worker with its job", |b| {
        b["pid"].as_u64() == Some(worker.id().into())
            && b["beat_at"].as_str().is_some_and(|t| t > draining.as_str())
            && b["running"]
                .as_array()
                .is_some_and(|r| r.iter().any(|j| j == id.as_str()))
    })
    .await;
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the first signal drains: the worker waits for its job"
    );
    assert_eq!(
        containers_with_label(&format!("dockhand.job={id}")).len(),
        1,
        "the job's container still runs during the drain"
    );
    signal(&worker, "TERM");
    // Well before the 600 s drain would end; this only keeps a broken test from hanging.
    let mut status = None;
    for _ in 0..1200 {
        status = worker.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.expect("the second signal did not stop the worker");
    assert!(status.success(), "{status:?}");
    let job = env.status_becomes(&id, "queued").await;
    assert_eq!(job["attempt"], "1", "{job:?}");
    assert!(
        containers_with_label(&format!("dockhand.job={id}")).is_empty(),
        "its container was stopped and removed"
    );
}

/// How many connections listen on the cancel channel (one per live worker).
async fn cancel_listeners(env: &Env) -> u64 {
    let mut c = env.conn().await;
    let (_, n): (String, u64) = deadpool_redis::redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(env.keys.cancel_channel())
        .query_async(&mut c)
        .await
        .unwrap();
    n
}
