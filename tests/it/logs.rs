//! Log lines: caps, long lines, both streams.

use crate::common::{spec, Env};
use deadpool_redis::redis::{self, AsyncCommands};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_cap_keeps_a_prefix_and_says_so() {
    let env = Env::new();
    let id = format!("{}-cap", env.prefix);
    let worker = env.worker(&["default"], 1);
    // 200 lines of 9 bytes each ("line 0001"); only the text counts.
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": "i=0; while [ $i -lt 200 ]; do printf 'line %04d\\n' $i; i=$((i+1)); done", "limits": {"log_bytes": 95}})),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed");
    let log = env.log(&id).await;
    let seqs: Vec<u64> = log.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "seq has no gaps"
    );
    let stdout: Vec<String> = log
        .iter()
        .filter(|(_, s, _)| s == "stdout")
        .map(|(_, _, l)| l.clone())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("line {i:04}")).collect();
    assert_eq!(
        stdout, expected,
        "9 bytes each: the first 10 lines fit in 95 bytes"
    );
    let system: Vec<&str> = log
        .iter()
        .filter(|(_, s, _)| s == "system")
        .map(|(_, _, l)| l.as_str())
        .collect();
    assert_eq!(system.len(), 1);
    assert!(system[0].contains("log limit reached"), "{system:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_split_and_marked() {
    let env = Env::new();
    let id = format!("{}-long", env.prefix);
    let settings = env.settings(
        &["default"],
        1,
        &[("DOCKHAND__JOBS__MAX_LINE_BYTES", "100")],
    );
    let worker = crate::common::Worker::start(settings);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "head -c 250 /dev/zero | tr '\\0' x; echo; echo short"}),
        ),
    )
    .await;
    assert_eq!(env.finished(&id).await["status"], "completed");
    let mut c = env.conn().await;
    let reply: redis::streams::StreamRangeReply = c.xrange_all(env.keys.log(&id)).await.unwrap();
    let parts: Vec<(usize, bool)> = reply
        .ids
        .iter()
        .map(|e| {
            (
                e.get::<String>("line").unwrap().len(),
                e.get::<String>("partial").is_some(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec![(100, true), (100, true), (50, false), (5, false)]
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_are_kept_apart_and_a_last_line_without_newline_is_kept() {
    let env = Env::new();
    let id = format!("{}-streams", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "echo out; echo err >&2; printf 'no newline'"}),
        ),
    )
    .await;
    assert_eq!(env.finished(&id).await["status"], "completed");
    assert_eq!(env.lines(&id, "stdout").await, vec!["out", "no newline"]);
    assert_eq!(env.lines(&id, "stderr").await, vec!["err"]);
    worker.stop().await;
}

/// A job that writes faster than the worker reads: Docker must keep all of it
/// until the worker has read it (a daemon's default log rotation would drop the
/// start), and every line arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_job_loses_no_line() {
    let env = Env::new();
    let id = format!("{}-chatty", env.prefix);
    let worker = env.worker(&["default"], 1);
    let n = 450_000u64; // about 34 MB of Docker's json-file log: past a 3 x 10 MB rotation
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": format!("seq 1 {n}"), "limits": {"log_bytes": "64m"}}),
        ),
    )
    .await;
    // A long job by design: a generous guard against a hang, not a speed limit.
    let job = env.finished_within(&id, Duration::from_secs(600)).await;
    assert_eq!(job["status"], "completed");
    let mut c = env.conn().await;
    let len: u64 = c.xlen(env.keys.log(&id)).await.unwrap();
    assert_eq!(len, n, "one stored line per printed line");
    // Spot-check the order and the ends without reading 600,000 entries.
    let first: redis::streams::StreamRangeReply = c
        .xrange_count(env.keys.log(&id), "-", "+", 1)
        .await
        .unwrap();
    let last: redis::streams::StreamRangeReply = c
        .xrevrange_count(env.keys.log(&id), "+", "-", 1)
        .await
        .unwrap();
    assert_eq!(first.ids[0].get::<String>("line").unwrap(), "1");
    assert_eq!(last.ids[0].get::<String>("line").unwrap(), n.to_string());
    assert_eq!(last.ids[0].get::<String>("seq").unwrap(), n.to_string());
    worker.stop().await;
}
