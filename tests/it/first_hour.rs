//! A new user's first hour with the `dockhand` binary: what `submit` accepts and
//! refuses, what `queues`, `status` and `cancel` say about jobs no worker has read,
//! a closed stdout, a Redis URL without a scheme, and the help text.

use crate::common::{image, Env};
use deadpool_redis::redis::AsyncCommands;
use std::process::{Output, Stdio};
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

/// The binary with this test's Redis and prefix, plus `env` variables.
fn command(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dockhand"));
    cmd.arg("--redis-url")
        .arg(&env.url)
        .args(args)
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .env_remove("REDIS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

async fn run(env: &Env, args: &[&str], stdin: Option<&str>, vars: &[(&str, &str)]) -> Output {
    let mut child = command(env, args, vars).spawn().expect("the binary runs");
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().await.unwrap()
}

async fn dockhand(env: &Env, args: &[&str], stdin: Option<&str>) -> Output {
    run(env, args, stdin, &[]).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn stream_len(env: &Env, queue: &str) -> u64 {
    let mut c = env.conn().await;
    c.xlen(env.keys.jobs(queue)).await.unwrap()
}

/// The row of `queue` in `dockhand queues`, split on whitespace.
fn row(out: &str, queue: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(queue))
        .unwrap_or_else(|| panic!("no row for {queue}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_accepts_jobs_from_a_profile_or_from_git() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let mut c = env.conn().await;
    let profile = serde_json::json!({"image": image(), "command": "echo from $WHO"});
    let _: i64 = c
        .hset(env.keys.profiles(), "greet", profile.to_string())
        .await
        .unwrap();
    let id = format!("{}-profile", env.prefix);
    let spec = serde_json::json!({"id": id, "profile": "greet", "env": {"WHO": "profile"}});
    let out = dockhand(&env, &["submit", "-"], Some(&spec.to_string())).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), id);
    assert_eq!(env.finished(&id).await["status"], "completed");
    assert_eq!(env.lines(&id, "stdout").await, vec!["from profile"]);
    worker.stop().await;

    // A job built from git: accepted and queued (no worker serves `builds`, and
    // nothing is fetched by `submit`).
    let id = format!("{}-git", env.prefix);
    let spec = serde_json::json!({"id": id, "git": {"url": "https://git.example.invalid/app.git", "branch": "main"}});
    let out = dockhand(
        &env,
        &["submit", "-", "--queue", "builds"],
        Some(&spec.to_string()),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), id);
    assert_eq!(stream_len(&env, "builds").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_refuses_what_no_worker_would_run_and_warns_of_policy() {
    let env = Env::new();
    let img = image();
    for (spec, field) in [
        (
            serde_json::json!({"image": img, "comand": "echo typo"}),
            "comand",
        ),
        (
            serde_json::json!({"image": img, "limits": {"pids": "many"}}),
            "`limits.pids`",
        ),
        (serde_json::json!({"image": img, "id": "a:b"}), "`id`"),
        (
            serde_json::json!({"image": img, "command": []}),
            "`command`",
        ),
    ] {
        let out = dockhand(&env, &["submit", "-"], Some(&spec.to_string())).await;
        assert_eq!(out.status.code(), Some(2), "{spec}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(field),
            "{spec}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stdout).is_empty(), "no id printed for {spec}");
    }
    let out = dockhand(
        &env,
        &["submit", "--image", &img, "--cmd", "true", "--id", "bad id"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("`id`"), "{}", text(&out.stderr));
    assert_eq!(
        stream_len(&env, "default").await,
        0,
        "nothing was submitted"
    );

    // What only this machine's policy refuses is submitted, with a warning: the
    // worker that claims the job has its own policy.
    let out = run(
        &env,
        &["submit", "--image", &img, "--cmd", "true"],
        None,
        &[("DOCKHAND__POLICY__IMAGES", "only-this-image")],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("policy.images"),
        "{stderr}"
    );
    assert_eq!(stream_len(&env, "default").await, 1);
}

/// A reader that stops early (`| head -1`) ends the command quietly: no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_commands_quietly() {
    let env = Env::new();
    let mut c = env.conn().await;
    let _: () = c
        .hset_multiple(
            env.job_key("shown"),
            &[
                ("id", "shown"),
                ("status", "completed"),
                ("queue", "default"),
            ],
        )
        .await
        .unwrap();
    for args in [
        &["queues"][..],
        &["status", "shown"],
        &["dead"],
        &["workers"],
    ] {
        let mut child = command(&env, args, &[]).spawn().unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is written
        drop(child.stdin.take());
        let out = child.wait_with_output().await.unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_status_and_submit_say_when_no_worker_serves_a_queue() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    env.wait_until_worker_ready(&env.prefix, None).await;
    let id = format!("{}-lonely", env.prefix);
    let out = dockhand(
        &env,
        &[
            "submit",
            "--image",
            &image(),
            "--cmd",
            "true",
            "--id",
            &id,
            "-q",
            "lonely",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no live worker serves queue \"lonely\""),
        "{}",
        text(&out.stderr)
    );

    // A job scheduled for later in a queue of its own shows too.
    let mut c = env.conn().await;
    let _: i64 = c
        .zadd(
            env.keys.scheduled("later"),
            r#"{"job":"{}","token":"t"}"#,
            i64::MAX / 2,
        )
        .await
        .unwrap();

    let out = dockhand(&env, &["queues"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let header = row(&table, "QUEUE");
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(row(&table, "lonely")[col("WAITING")], "1", "{table}");
    assert_eq!(row(&table, "lonely")[col("WORKERS")], "none", "{table}");
    assert_eq!(row(&table, "later")[col("SCHEDULED")], "1", "{table}");
    assert_eq!(row(&table, "default")[col("WORKERS")], "1", "{table}");
    assert!(
        text(&out.stderr).contains("lonely"),
        "{}",
        text(&out.stderr)
    );

    // `status` of the waiting job says what it is, not "not found".
    let out = dockhand(&env, &["status", &id], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert_eq!(row(&shown, "status"), ["status", "queued"], "{shown}");
    assert_eq!(row(&shown, "queue"), ["queue", "lonely"], "{shown}");
    assert!(
        row(&shown, "claimed").contains(&"not".to_string()),
        "{shown}"
    );
    assert!(text(&out.stderr).contains("no live worker serves"));
    let json = dockhand(&env, &["status", &id, "--json"], None).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["status"], "queued");
    assert_eq!(v["queue"], "lonely");

    // `submit --follow` says why nothing happens, and keeps waiting.
    let mut follow = command(
        &env,
        &[
            "submit",
            "--image",
            &image(),
            "--cmd",
            "true",
            "-q",
            "lonely",
            "--follow",
        ],
        &[],
    )
    .spawn()
    .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stderr.take().unwrap()).lines();
    let hint = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("no live worker serves queue \"lonely\"") {
                return line;
            }
        }
        panic!("stderr ended without the hint");
    })
    .await
    .expect("a hint on stderr");
    assert!(hint.contains("dockhand worker --queue lonely"), "{hint}");
    follow.kill().await.unwrap();
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_status_of_an_unknown_id_fail_and_leave_no_trap() {
    let env = Env::new();
    let typo = format!("{}-typo", env.prefix);
    let out = dockhand(&env, &["cancel", &typo], None).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("no job {typo}")),
        "{}",
        text(&out.stderr)
    );
    let mut c = env.conn().await;
    let exists: bool = c.exists(env.job_key(&typo)).await.unwrap();
    assert!(!exists, "nothing written");
    let out = dockhand(&env, &["status", &typo], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    // A job waiting in its queue, unread by any worker, can be cancelled...
    let waiting = format!("{}-waiting", env.prefix);
    let spec = crate::common::spec(&waiting, serde_json::json!({"command": "echo ran"}));
    env.xadd("default", &spec).await;
    let out = dockhand(&env, &["cancel", &waiting], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = dockhand(&env, &["status", &waiting], None).await;
    assert!(row(&text(&out.stdout), "cancel").contains(&"requested:".to_string()));

    // ...and the id the first cancel mistyped runs when a job takes it.
    let worker = env.worker(&["default"], 1);
    let spec = crate::common::spec(&typo, serde_json::json!({"command": "echo ran"}));
    env.xadd("default", &spec).await;
    assert_eq!(env.finished(&typo).await["status"], "completed");
    let cancelled = env.finished(&waiting).await;
    assert_eq!(cancelled["reason"], "cancelled", "{cancelled:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_url_without_a_scheme_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["--redis-url", "localhost:6379", "queues"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("redis://host:port/"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_gives_examples_and_exit_codes() {
    let help = |args: &'static [&'static str]| async move {
        let out = Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        text(&out.stdout)
    };
    let main = help(&["--help"]).await;
    assert!(main.contains("Exit codes:"), "{main}");
    for code in ["0 ", "1 ", "2 "] {
        assert!(
            main.lines().any(|l| l.trim_start().starts_with(code)),
            "{main}"
        );
    }
    for args in [
        &["--help"][..],
        &["submit", "--help"],
        &["status", "--help"],
        &["logs", "--help"],
    ] {
        let shown = help(args).await;
        assert!(shown.contains("Examples:"), "{args:?}: {shown}");
    }
    // Every positional has a description (clap leaves the line bare otherwise).
    for args in [
        &["status", "--help"][..],
        &["logs", "--help"],
        &["cancel", "--help"],
    ] {
        let shown = help(args).await;
        let id = shown
            .lines()
            .find(|l| l.trim_start().starts_with("<ID>"))
            .unwrap();
        assert!(id.trim().len() > "<ID>".len(), "{args:?}: {shown}");
    }
}
