//! A new user's first hour with the `dockhand` binary.

use crate::common::Env;
use deadpool_redis::redis::AsyncCommands;
use std::process::Stdio;
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A reader that stops early (`| head -1`) ends the command quietly: no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_commands_quietly() {
    let env = Env::new();
    let mut c = env.conn().await;
    let _: () = c
        .hset_multiple(
            env.keys.job("shown"),
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
