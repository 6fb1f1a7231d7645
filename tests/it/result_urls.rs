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
    let files: HashMap<String, Vec<u8>> = c.hgetall(env.files_key(&id)).await.unwrap();
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

// One job cannot stall its worker through its result URLs (docs/security.md,
// "Result URLs"): each of these runs a second job on the same worker beside the
// one that misbehaves, and checks that no lease lapsed (attempt 1, no fencing).

use crate::common::{containers_with_label, Worker};

/// Shell that splits `$RESPONSE_URL` into `$h` (host), `$port`, `$hp`
/// (host:port) and `$p` (path), for requests written by hand to `nc`.
const SPLIT_URL: &str =
    r#"u=${RESPONSE_URL#http://}; hp=${u%%/*}; p=/${u#*/}; h=${hp%:*}; port=${hp##*:}"#;

/// Neither job was fenced: its first attempt ran to the end on this worker.
async fn ran_once(env: &Env, id: &str, job: &HashMap<String, String>) {
    assert_eq!(job["attempt"], "1", "{job:?}");
    let system = env.lines(id, "system").await;
    assert!(
        !system.iter().any(|l| l.contains("lease")),
        "a lease lapsed: {system:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_holding_half_sent_posts_stalls_neither_its_worker_nor_its_own_result() {
    let env = Env::new();
    let per_job = [("DOCKHAND__RESULTS__MAX_CONNECTIONS_PER_JOB", "4")];
    let worker = Worker::start(env.settings(&["default"], 2, &per_job));
    let greedy = format!("{}-greedy", env.prefix);
    // Twelve POSTs whose body never comes, three times the job's share, held
    // until the test says go; then the job drops them and posts its result.
    let command = format!(
        r#"{SPLIT_URL}
pids=""; i=0
while [ $i -lt 12 ]; do
  {{ printf 'POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"result_text":' "$p" "$hp"; sleep 600; }} | nc "$h" "$port" > /tmp/held$i 2>&1 &
  pids="$pids $!"; i=$((i+1))
done
n=0; until grep -q ' 429 ' /tmp/held* 2>/dev/null; do n=$((n+1)); [ $n -lt 600 ] || exit 9; sleep 0.1; done
grep -h ' 429 ' /tmp/held* | head -n 1
grep -h 'max_connections_per_job' /tmp/held* | head -n 1
echo holding
n=0; until [ -e /tmp/go ]; do n=$((n+1)); [ $n -lt 1200 ] || exit 8; sleep 0.1; done
kill $pids
n=0; until wget -q -O- --header 'Content-Type: application/json' --post-data '{{"result_text":"held and done"}}' "$RESPONSE_URL"; do n=$((n+1)); [ $n -lt 100 ] || exit 7; sleep 0.2; done
echo; exit 5"#
    );
    env.xadd("default", &spec(&greedy, &command)).await;
    let lines = env.wait_for_log_line(&greedy, "stdout", "holding").await;
    assert!(lines.iter().any(|l| l.contains(" 429 ")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("more than 4 requests") && l.contains("max_connections_per_job")),
        "{lines:?}"
    );

    // While it holds them, another job on the same worker runs and posts.
    let other = format!("{}-other", env.prefix);
    let post = r#"wget -q -O- --header 'Content-Type: application/json' --post-data '{"result_text":"other done"}' "$RESPONSE_URL""#;
    env.xadd("default", &spec(&other, post)).await;
    let job = env.finished(&other).await;
    assert_eq!(
        (job["status"].as_str(), job["result_text"].as_str()),
        ("completed", "other done"),
        "{job:?}"
    );
    ran_once(&env, &other, &job).await;
    assert_eq!(
        env.job(&greedy).await["status"],
        "running",
        "it waits for go"
    );

    // Then the greedy job's own POST still completes it.
    let container = containers_with_label(&format!("dockhand.job={greedy}"));
    let touched = std::process::Command::new("docker")
        .args(["exec", &container[0], "touch", "/tmp/go"])
        .status()
        .unwrap();
    assert!(touched.success());
    let job = env.finished(&greedy).await;
    assert_eq!(
        (job["status"].as_str(), job["result_text"].as_str()),
        ("completed", "held and done"),
        "{job:?}"
    );
    assert_eq!(job["exit_code"], "5", "completed by its post, not its exit");
    ran_once(&env, &greedy, &job).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_200_000_fields_is_refused_by_name_and_stalls_nothing() {
    let env = Env::new();
    let worker = env.worker(&["default"], 2);
    let (many, other) = (
        format!("{}-many", env.prefix),
        format!("{}-other", env.prefix),
    );
    let command = format!(
        r#"{SPLIT_URL}
awk 'BEGIN {{ for (i = 0; i < 200000; i++) printf "f%d=&", i; printf "result_text=x" }}' > /tmp/body
len=$(wc -c < /tmp/body)
{{ printf 'POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %s\r\nConnection: close\r\n\r\n' "$p" "$hp" "$len"; cat /tmp/body; }} | nc "$h" "$port" | tr -d '\r'
echo
wget -q -O- --header 'Content-Type: application/json' --post-data '{{"result_text":"fewer fields"}}' "$RESPONSE_URL"
echo"#
    );
    env.xadd("default", &spec(&many, &command)).await;
    let post = r#"wget -q -O- --header 'Content-Type: application/json' --post-data '{"result_text":"other done"}' "$RESPONSE_URL""#;
    env.xadd("default", &spec(&other, post)).await;

    let job = env.finished(&many).await;
    let stdout = env.lines(&many, "stdout").await;
    assert!(
        stdout.iter().any(|l| l.starts_with("HTTP/1.1 413 ")),
        "{stdout:?}"
    );
    assert!(
        stdout
            .iter()
            .any(|l| l == "the body has more than 100 fields (results.max_fields)"),
        "{stdout:?}"
    );
    assert_eq!(
        (job["status"].as_str(), job["result_text"].as_str()),
        ("completed", "fewer fields"),
        "{job:?}"
    );
    ran_once(&env, &many, &job).await;
    let job = env.finished(&other).await;
    assert_eq!(
        (job["status"].as_str(), job["result_text"].as_str()),
        ("completed", "other done"),
        "{job:?}"
    );
    ran_once(&env, &other, &job).await;
    worker.stop().await;
}
