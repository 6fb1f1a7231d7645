//! The `dockhand` binary: submit, status, logs (replay and follow), queues, exit codes.

use crate::common::{image, Env};
use std::process::Output;
use tokio::process::Command;

async fn dockhand(env: &Env, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dockhand"));
    cmd.arg("--redis-url")
        .arg(&env.url)
        .args(args)
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .env_remove("REDIS_URL");
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("the dockhand binary runs");
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_status_and_logs_from_the_command_line() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-cli", env.prefix);
    let img = image();
    let out = dockhand(
        &env,
        &[
            "submit",
            "--image",
            &img,
            "--cmd",
            "echo $WHO says hi; echo bye",
            "--env",
            "WHO=cli",
            "--id",
            &id,
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), id);
    assert_eq!(env.finished(&id).await["status"], "completed");

    let status = dockhand(&env, &["status", &id], None).await;
    assert!(status.status.success());
    let shown = text(&status.stdout);
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["status", "completed"]),
        "{shown}"
    );

    let json = dockhand(&env, &["status", &id, "--json"], None).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["status"], "completed");
    assert!(
        v["spec"].is_object(),
        "the spec is JSON, not a string of it: {v}"
    );
    assert!(v["spec"].to_string().contains("WHO"));
    // Typed: numbers as numbers, JSON fields as JSON, empty fields as null.
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["attempt"], 1);
    assert!(v["files"].is_array(), "{v}");
    assert!(v["reason"].is_null(), "{v}");

    let queues = dockhand(&env, &["queues", "--json"], None).await;
    let row: serde_json::Value = serde_json::from_str(
        text(&queues.stdout)
            .lines()
            .find(|l| l.contains("\"default\""))
            .expect("the default queue is listed"),
    )
    .unwrap();
    assert_eq!(row["waiting"], 0, "{row}");
    assert!(row["workers"].is_u64(), "{row}");
    let workers = dockhand(&env, &["workers", "--json"], None).await;
    let listed: Vec<serde_json::Value> = text(&workers.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        listed
            .iter()
            .any(|w| w["alive"] == true && w["consumer"].is_string()),
        "{listed:?}"
    );

    let logs = dockhand(&env, &["logs", &id], None).await;
    assert!(logs.status.success());
    assert_eq!(text(&logs.stdout), "cli says hi\nbye\n");

    let queues = dockhand(&env, &["queues"], None).await;
    assert!(queues.status.success());
    assert!(
        text(&queues.stdout)
            .lines()
            .any(|l| l.starts_with("default ")),
        "{}",
        text(&queues.stdout)
    );
    worker.stop().await;
}

/// `logs --follow` started before the job runs replays nothing, follows the live
/// lines, and exits when the job ends, with every line exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_each_line_once_and_ends_with_the_job() {
    let env = Env::new();
    let id = format!("{}-follow", env.prefix);
    let follower = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dockhand"));
        cmd.args(["--redis-url", &env.url, "logs", &id, "--follow", "--json"])
            .env("DOCKHAND__REDIS__PREFIX", &env.prefix);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let worker = env.worker(&["default"], 1);
    // Lines before and after a pause, so the follower sees both stored and live ones.
    let command =
        "for i in 1 2 3; do echo early $i; done; sleep 1; for i in 1 2 3; do echo late $i; done";
    env.xadd(
        "default",
        &serde_json::json!({"id": id, "image": image(), "command": command}).to_string(),
    )
    .await;
    let out = follower.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let seqs: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);

    // A late reader gets the same lines from the stored stream.
    let late = dockhand(&env, &["logs", &id, "--follow"], None).await;
    assert!(late.status.success());
    assert_eq!(text(&late.stdout).lines().count(), 6);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_from_stdin_with_follow_reports_the_outcome_in_its_exit_code() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-stdin", env.prefix);
    let spec = serde_json::json!({"id": id, "image": image(), "command": "echo failing; exit 4"})
        .to_string();
    let out = dockhand(&env, &["submit", "-", "--follow"], Some(&spec)).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "the job failed, so the command did: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("failing"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["reason", "exit_code"]),
        "{stdout}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_follow_the_contract() {
    let env = Env::new();
    let missing = dockhand(&env, &["status", "no-such-job"], None).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("not found"));
    let no_image = dockhand(&env, &["submit", "--cmd", "true"], None).await;
    assert_eq!(no_image.status.code(), Some(2));
    let bad_json = dockhand(&env, &["submit", "-"], Some("{not json")).await;
    assert_eq!(bad_json.status.code(), Some(2));
    let unknown = dockhand(&env, &["frobnicate"], None).await;
    assert_eq!(unknown.status.code(), Some(2));
    let bad_config = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dockhand"));
        cmd.args(["status", "x"])
            .env("DOCKHAND__WORKER__CONCURRENCY", "0");
        cmd.output().await.unwrap()
    };
    assert_eq!(bad_config.status.code(), Some(2));
    assert!(text(&bad_config.stderr).contains("worker.concurrency"));
    let unreachable = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dockhand"));
        let port = crate::common::free_port();
        cmd.args([
            "--redis-url",
            &format!("redis://127.0.0.1:{port}/"),
            "status",
            "x",
        ]);
        cmd.output().await.unwrap()
    };
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        text(&unreachable.stderr).contains("cannot reach Redis"),
        "{}",
        text(&unreachable.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lists_retries_and_deletes_what_a_queue_could_not_run() {
    let env = Env::new();
    // A worker whose policy refuses the test image: the jobs go to the dead stream.
    let strict = crate::common::Worker::start(env.settings(
        &["default"],
        1,
        &[("DOCKHAND__POLICY__IMAGES", "only-this-image")],
    ));
    let p = &env.prefix;
    let (again, gone, secret) = (
        format!("{p}-again"),
        format!("{p}-gone"),
        format!("{p}-secret"),
    );
    for (id, extra) in [
        (&again, serde_json::json!({"command": "echo ran again"})),
        (&gone, serde_json::json!({"command": "true"})),
        (
            &secret,
            serde_json::json!({"command": "true", "secret_env": {"K": "v"}}),
        ),
    ] {
        env.xadd("default", &crate::common::spec(id, extra)).await;
        assert_eq!(env.finished(id).await["reason"], "policy_denied");
    }
    strict.stop().await;

    let listed = dockhand(&env, &["dead"], None).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed = text(&listed.stdout);
    for id in [&again, &gone, &secret] {
        let line = listed
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not listed: {listed}"));
        assert!(
            line.contains("policy_denied") && line.contains("policy.images"),
            "{line}"
        );
    }
    let json = dockhand(
        &env,
        &["dead", "--queue", "default", "--json", "--count", "1"],
        None,
    )
    .await;
    let rows: Vec<serde_json::Value> = text(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "--count 1");
    assert_eq!(rows[0]["id"], secret.as_str(), "newest first");
    assert_eq!(rows[0]["queue"], "default");

    // Secrets were masked when the entry was stored: it cannot run as it was.
    let refused = dockhand(&env, &["dead", "retry", &secret], None).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("secret_env"),
        "{}",
        text(&refused.stderr)
    );

    // With the policy fixed, a retry runs the same job id to completion.
    let worker = env.worker(&["default"], 1);
    let retried = dockhand(&env, &["dead", "retry", &again], None).await;
    assert!(retried.status.success(), "{}", text(&retried.stderr));
    // The retry set the hash back to `queued` in the same step, so no old state shows.
    let done = env.finished(&again).await;
    assert_eq!(done["status"], "completed", "{done:?}");
    assert_eq!(
        done["attempt"], "1",
        "refused entries never started an attempt"
    );
    assert_eq!(env.lines(&again, "stdout").await, vec!["ran again"]);
    let mut c = env.conn().await;
    let ttl: i64 = deadpool_redis::redis::AsyncCommands::ttl(&mut c, env.job_key(&again))
        .await
        .unwrap();
    assert!(ttl > 0, "finished again, it expires again");
    let twice = dockhand(&env, &["dead", "retry", &again], None).await;
    assert_eq!(twice.status.code(), Some(1), "it left the dead stream");

    let rm = dockhand(&env, &["dead", "rm", &gone], None).await;
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    let left = text(&dockhand(&env, &["dead", "--json"], None).await.stdout);
    let ids: Vec<String> = left
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, vec![secret.clone()]);
    worker.stop().await;
}

/// `dockhand doctor` checks Redis, the Docker engine, the profiles' images, the
/// result URLs and the guards, says what to do about each thing missing, and exits
/// 1 only when a worker could not run jobs (here: no Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_what_a_worker_needs_and_what_to_do() {
    let env = Env::new();
    let profile = format!("{}-p", env.prefix);
    let mut c = env.conn().await;
    let _: i64 = deadpool_redis::redis::AsyncCommands::hset(
        &mut c,
        env.keys.profiles(),
        &profile,
        r#"{"image":"dockhand-no-such-image:1"}"#,
    )
    .await
    .unwrap();
    let out = dockhand(&env, &["doctor"], None).await;
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(
        said.contains("ok    Redis at") && said.contains("answers (version"),
        "{said}"
    );
    assert!(said.contains("ok    the Docker engine answers"), "{said}");
    assert!(
        said.contains(&format!(
            "warn  image dockhand-no-such-image:1 (profile {profile}) is not on this host"
        )) && said.contains("-> build or load it"),
        "{said}"
    );
    assert!(said.contains("result URLs"), "{said}");
    assert!(said.contains("webhooks.allow_networks"), "{said}");

    let dead = format!("redis://127.0.0.1:{}/", crate::common::free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["--redis-url", &dead, "doctor"])
        .env_remove("REDIS_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("fail  Redis at {dead}")) && said.contains("-> start redis-server"),
        "{said}"
    );
}
