//! Containers hand back results through RESPONSE_URL and ABORT_URL (contract 7).

use crate::common::{image, Env};
use deadpool_redis::redis::AsyncCommands;
use std::collections::HashMap;

fn spec(id: &str, command: &str) -> String {
    serde_json::json!({"id": id, "image": image(), "network": "bridge", "command": command})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_post_to_response_url_completes_the_job_with_its_file() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-post", env.prefix);
    // busybox wget has no multipart support: the body is written by hand.
    let command = r#"B=XyZzY; printf -- "--$B\r\nContent-Disposition: form-data; name=\"result_text\"\r\n\r\nrendered\r\n--$B\r\nContent-Disposition: form-data; name=\"result_data\"\r\n\r\n{\"pages\": 2}\r\n--$B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"report.txt\"\r\nContent-Type: text/plain\r\n\r\nhello report\r\n--$B--\r\n" > /tmp/body; wget -q -O- --header "Content-Type: multipart/form-data; boundary=$B" --post-file /tmp/body "$RESPONSE_URL"; echo; exit 3"#;
    env.xadd("default", &spec(&id, command)).await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(job["exit_code"], "3", "the exit code is still recorded");
    assert_eq!(job["result_text"], "rendered");
    assert_eq!(job["result_data"], r#"{"pages":2}"#);
    let mut c = env.conn().await;
    let files: HashMap<String, Vec<u8>> = c.hgetall(env.keys.files(&id)).await.unwrap();
    assert_eq!(files["report.txt"], b"hello report");
    assert!(env
        .lines(&id, "stdout")
        .await
        .iter()
        .any(|l| l.contains("\"ok\":true")));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_abort_url_aborts_the_job_with_its_error_data() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-abort", env.prefix);
    let command = r#"wget -q -O- --header 'Content-Type: application/json' --post-data '{"error_text":"input was empty","error_data":{"line":3}}' "$ABORT_URL""#;
    env.xadd("default", &spec(&id, command)).await;
    let job = env.finished(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["reason"].as_str()),
        ("aborted", "aborted_by_job")
    );
    assert_eq!(job["error"], "input was empty");
    assert_eq!(job["result_data"], r#"{"line":3}"#);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_urls_are_per_job_unguessable_and_absent_without_network() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let (with, without) = (
        format!("{}-with", env.prefix),
        format!("{}-without", env.prefix),
    );
    env.xadd(
        "default",
        &spec(&with, "echo $RESPONSE_URL; echo $ABORT_URL"),
    )
    .await;
    let none =
        serde_json::json!({"id": without, "image": image(), "command": "echo \"[$RESPONSE_URL]\""})
            .to_string();
    env.xadd("default", &none).await;
    assert_eq!(env.finished(&with).await["status"], "completed");
    let urls = env.lines(&with, "stdout").await;
    let token = urls[0].split('/').rev().nth(1).unwrap();
    assert_eq!(token.len(), 32, "128-bit token in hex: {}", urls[0]);
    assert!(urls[0].ends_with("/response") && urls[1].ends_with("/abort"));
    assert_eq!(env.finished(&without).await["status"], "completed");
    assert_eq!(
        env.lines(&without, "stdout").await,
        vec!["[]"],
        "network none: result.json instead"
    );
    worker.stop().await;
}
