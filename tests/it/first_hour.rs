//! A new user's first hour with the `dockhand` binary.

use tokio::process::Command;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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
