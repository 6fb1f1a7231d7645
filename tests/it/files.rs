//! Files into and out of jobs: inputs, outputs within their limit, result.json.

use crate::common::{spec, wait_until, Env, Worker};
use deadpool_redis::redis::AsyncCommands;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A worker that copies the job's folders through the Docker API
/// (`worker.job_folders = "copy"`) instead of binding them.
fn copying_worker(env: &Env) -> Worker {
    Worker::start(env.settings(
        &["default"],
        1,
        &[("DOCKHAND__WORKER__JOB_FOLDERS", "copy")],
    ))
}

async fn files(env: &Env, id: &str) -> HashMap<String, Vec<u8>> {
    let mut c = env.conn().await;
    c.hgetall(env.files_key(id)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_files_and_result_json_come_back() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    outputs_come_back(&env).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_files_and_result_json_come_back_when_copied() {
    let env = Env::new();
    let worker = copying_worker(&env);
    outputs_come_back(&env).await;
    worker.stop().await;
}

async fn outputs_come_back(env: &Env) {
    let id = format!("{}-out", env.prefix);
    let command = r#"mkdir -p /dockhand/output/sub && printf 'a,b\n1,2\n' > /dockhand/output/table.csv && echo deep > /dockhand/output/sub/x.txt && echo '{"result_text":"2 rows","result_data":{"rows":2,"ok":true}}' > /dockhand/output/result.json"#;
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": command})),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(job["result_text"], "2 rows");
    let data: serde_json::Value = serde_json::from_str(&job["result_data"]).unwrap();
    assert_eq!(data, serde_json::json!({"rows": 2, "ok": true}));

    let stored = files(env, &id).await;
    assert_eq!(
        stored.len(),
        2,
        "result.json is the result, not a file: {:?}",
        stored.keys()
    );
    assert_eq!(stored["table.csv"], b"a,b\n1,2\n");
    assert_eq!(stored["sub/x.txt"], b"deep\n");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&job["files"]).unwrap();
    let csv = listed.iter().find(|f| f["name"] == "table.csv").unwrap();
    assert_eq!(csv["size"], 8);
    assert_eq!(
        csv["sha256"],
        "492d5ea496056f1a6a6592241032fab764c321596317930b4fa0e1e8bc3b7470"
    ); // printf 'a,b\n1,2\n' | sha256sum
    let mut c = env.conn().await;
    let ttl: i64 = c.ttl(env.files_key(&id)).await.unwrap();
    assert!(ttl > 0, "files expire with the job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_staged_before_start() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    inputs_are_staged(&env).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_staged_before_start_when_copied() {
    let env = Env::new();
    let worker = copying_worker(&env);
    inputs_are_staged(&env).await;
    worker.stop().await;
}

async fn inputs_are_staged(env: &Env) {
    let id = format!("{}-in", env.prefix);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({
                "command": "cat /dockhand/input/params/a.txt; cat /dockhand/input/b.bin; echo; ls /dockhand",
                "inputs": [
                    {"path": "params/a.txt", "content": "text input\n"},
                    {"path": "b.bin", "content_base64": "aGVsbG8gYmFzZTY0"},
                ],
            }),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(
        env.lines(&id, "stdout").await,
        vec!["text input", "hello base64", "input", "output", "work"]
    );
}

/// The folder of the worker's runs (`<cache_dir>/<worker id>/runs`; the
/// suite's workers are named after the test's prefix).
fn runs_root(env: &Env) -> PathBuf {
    Path::new("/var/tmp/dockhand")
        .join(&env.prefix)
        .join("runs")
}

/// The one run folder under `root` holding `work/<file>`, if any.
fn run_with(root: &Path, file: &str) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|run| run.join("work").join(file).exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_folders_are_the_workers_own_follow_no_link_and_go_with_the_container() {
    let env = Env::new();
    let id = format!("{}-bound", env.prefix);
    let worker = env.worker(&["default"], 1);
    // The job goes on once `go` appears in its work folder: the test puts it
    // there from the host, so the folder it sees is the worker's.
    let command = "echo up > /dockhand/work/ready; \
        until [ -e /dockhand/work/go ]; do sleep 0.05; done; \
        echo real > /dockhand/output/real.txt; \
        ln -s /etc/hostname /dockhand/output/leak; ln -s /etc /dockhand/output/etc; \
        mkfifo /dockhand/output/pipe";
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": command})),
    )
    .await;
    let root = runs_root(&env);
    let run = wait_until(
        "the job's ready file in a run folder of the worker's",
        || async { run_with(&root, "ready") },
    )
    .await;
    let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "runs/ is root's alone");
    std::fs::write(run.join("work").join("go"), b"").unwrap();

    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    let stored = files(&env, &id).await;
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        vec!["real.txt"],
        "links and the FIFO are not files: {job:?}"
    );
    assert_eq!(stored["real.txt"], b"real\n");
    let dropped: Vec<String> = serde_json::from_str(&job["files_dropped"]).unwrap();
    for name in ["leak", "etc", "pipe"] {
        assert!(
            dropped
                .iter()
                .any(|d| d.starts_with(&format!("{name} (not a regular file"))),
            "{name}: {dropped:?}"
        );
    }
    // Removed with the container, after the outcome is written.
    wait_until("the run's folder removed", || async {
        (!run.exists()).then_some(())
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_over_the_limit_are_named_not_silently_dropped() {
    let env = Env::new();
    let id = format!("{}-big", env.prefix);
    let worker = env.worker(&["default"], 1);
    let command = "head -c 5000 /dev/zero > /dockhand/output/big.bin; echo small > /dockhand/output/small.txt";
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": command, "limits": {"output_bytes": 1000}}),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    let stored = files(&env, &id).await;
    assert_eq!(stored.keys().collect::<Vec<_>>(), vec!["small.txt"]);
    let dropped: Vec<String> = serde_json::from_str(&job["files_dropped"]).unwrap();
    assert_eq!(dropped.len(), 1);
    assert!(dropped[0].starts_with("big.bin (5000 bytes"), "{dropped:?}");
    assert!(
        job["error"].contains("1 output file(s) not kept"),
        "{}",
        job["error"]
    );
    let system = env.lines(&id, "system").await;
    assert!(system.iter().any(|l| l.contains("big.bin")), "{system:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_outputs_only_the_result_is_read() {
    let env = Env::new();
    let id = format!("{}-noout", env.prefix);
    let worker = env.worker(&["default"], 1);
    let command = r#"echo x > /dockhand/output/x.txt; echo '{"result_text":"r"}' > /dockhand/output/result.json"#;
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": command, "outputs": false}),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result_text"], "r");
    assert!(files(&env, &id).await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_can_abort_itself_through_result_json() {
    let env = Env::new();
    let id = format!("{}-selfabort", env.prefix);
    let worker = env.worker(&["default"], 1);
    let command = r#"echo '{"error_text":"input was empty","error_data":{"field":"rows"}}' > /dockhand/output/result.json"#;
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": command})),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "aborted");
    assert_eq!(job["reason"], "aborted_by_job");
    assert_eq!(job["error"], "input was empty");
    assert_eq!(job["result_data"], r#"{"field":"rows"}"#);
    assert_eq!(job["exit_code"], "0");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_result_json_is_reported_and_the_exit_code_decides() {
    let env = Env::new();
    let id = format!("{}-badresult", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "echo '{oops' > /dockhand/output/result.json"}),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed");
    assert!(
        job["error"].contains("result.json is not valid JSON"),
        "{}",
        job["error"]
    );
    worker.stop().await;
}

/// Bytes in Redis per job, as `MEMORY USAGE` counts them, of the given keys.
async fn usage(env: &Env, keys: &[String]) -> u64 {
    let mut c = env.conn().await;
    let mut total = 0;
    for key in keys {
        let n: Option<u64> = deadpool_redis::redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut c)
            .await
            .unwrap();
        total += n.unwrap_or(0);
    }
    total
}

/// What a job leaves in Redis stays in proportion to its limits: 3,000 empty
/// output files with 200-byte names are bounded by `limits.output_bytes` (names
/// count) and the file cap, the files not kept are summarised in a short list and
/// a short system line, and a 20 MB `metadata` is refused without being copied
/// into the job's record or its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_job_leaves_in_redis_stays_within_its_limits() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-many", env.prefix);
    let long = "n".repeat(190);
    let command = format!(
        "cd /dockhand/output && i=0; while [ $i -lt 3000 ]; do : > $i-{long}; i=$((i+1)); done"
    );
    let output_bytes: u64 = 1 << 20;
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": command, "limits": {"output_bytes": output_bytes, "timeout_seconds": 300}}),
        ),
    )
    .await;
    let job = env
        .finished_within(&id, std::time::Duration::from_secs(300))
        .await;
    assert_eq!(job["status"], "completed", "{job:?}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&job["files"]).unwrap();
    assert_eq!(listed.len(), 1000, "the file cap");
    let dropped: Vec<String> = serde_json::from_str(&job["files_dropped"]).unwrap();
    assert_eq!(dropped.len(), 21, "{dropped:?}");
    assert_eq!(dropped[20], "and 1980 more files not kept");
    let system = env.lines(&id, "system").await;
    assert!(system.iter().all(|l| l.len() <= 4096 + 64), "{system:?}");
    // Files hash, job hash (with its listing) and log: a small multiple of output_bytes.
    let used = usage(
        &env,
        &[env.files_key(&id), env.job_key(&id), env.log_key(&id)],
    )
    .await;
    assert!(
        used < 3 * output_bytes,
        "{used} bytes in Redis for a {output_bytes}-byte limit"
    );

    let meta = format!("{}-meta", env.prefix);
    let mut events = env.client.get_async_pubsub().await.unwrap();
    events.subscribe(env.keys.events_channel()).await.unwrap();
    env.xadd(
        "default",
        &spec(
            &meta,
            serde_json::json!({"command": "true", "metadata": {"blob": "m".repeat(20 << 20)}}),
        ),
    )
    .await;
    let refused = env.finished(&meta).await;
    assert_eq!(refused["reason"], "invalid_spec", "{refused:?}");
    assert!(
        refused["error"].starts_with("`metadata`"),
        "{}",
        refused["error"]
    );
    assert_eq!(refused["metadata"], "", "not copied into the record");
    let mut messages = events.on_message();
    loop {
        let msg = futures_util::StreamExt::next(&mut messages).await.unwrap();
        let body: String = msg.get_payload().unwrap();
        assert!(body.len() < 64 << 10, "an event of {} bytes", body.len());
        if body.contains("job.aborted") && body.contains(&meta) {
            break;
        }
    }
    worker.stop().await;
}
