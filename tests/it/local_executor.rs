//! The local executor (`"executor": "local"`): the suite's core cases as host
//! processes, against the real Redis and a real worker; and refused where the
//! worker does not enable it.

use crate::common::{wait_until, Env, Worker};
use deadpool_redis::redis::AsyncCommands;
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// A job spec for the local executor with this `id`, plus the fields of `extra`.
fn local(id: &str, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({ "id": id, "executor": "local" });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v.to_string()
}

/// A worker with the local executor on, its working directories under `base`.
fn local_worker(env: &Env, base: &Path) -> Worker {
    let base = base.to_string_lossy().into_owned();
    Worker::start(env.settings(
        &["default"],
        2,
        &[
            ("DOCKHAND__EXECUTORS__LOCAL__ENABLED", "true"),
            ("DOCKHAND__EXECUTORS__LOCAL__BASE_DIR", &base),
        ],
    ))
}

/// Every file left under `base` (the worker's own folder aside).
fn left_under(base: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for worker in std::fs::read_dir(base).unwrap().flatten() {
        for run in std::fs::read_dir(worker.path()).unwrap().flatten() {
            left.push(run.path().to_string_lossy().into_owned());
        }
    }
    left
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
async fn exit_codes_logs_and_the_working_directory() {
    let env = Env::new();
    let base = tempfile::tempdir().unwrap();
    let worker = local_worker(&env, base.path());
    let ok = format!("{}-ok", env.prefix);
    let failed = format!("{}-failed", env.prefix);
    let command = "echo one; echo two >&2; echo three; \
                   echo \"$DOCKHAND_JOB_ID $DOCKHAND_ATTEMPT $GREETING $TOKEN\"; \
                   test -d \"$DOCKHAND_INPUT\" && test -d \"$DOCKHAND_OUTPUT\" && \
                   test \"$PWD\" = \"$DOCKHAND_WORK\" && echo layout-ok; \
                   test -z \"$DOCKHAND__REDIS__PREFIX\" && echo clean-env";
    env.xadd(
        "default",
        &local(
            &ok,
            serde_json::json!({"command": command, "env": {"GREETING": "hi"},
                "secret_env": {"TOKEN": "s3cr3t-value"}}),
        ),
    )
    .await;
    env.xadd(
        "default",
        &local(
            &failed,
            serde_json::json!({"command": ["sh", "-c", "exit 3"]}),
        ),
    )
    .await;

    let job = env.finished(&ok).await;
    assert_eq!(
        (job["status"].as_str(), job["exit_code"].as_str()),
        ("completed", "0"),
        "{job:?}"
    );
    assert_eq!(job["image"], "", "a local job runs no image");
    let log = env.log(&ok).await;
    let seqs: Vec<u64> = log.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "gap-free seq: {log:?}"
    );
    let stdout = env.lines(&ok, "stdout").await;
    assert_eq!(
        stdout,
        vec![
            "one".to_string(),
            "three".into(),
            format!("{ok} 1 hi ***"),
            "layout-ok".into(),
            "clean-env".into(),
        ],
        "in order, the secret masked"
    );
    assert_eq!(env.lines(&ok, "stderr").await, vec!["two".to_string()]);
    let system = env.lines(&ok, "system").await.join("\n");
    assert!(
        system.contains("without isolation") && system.contains("RLIMIT_AS"),
        "the limits are said: {system}"
    );
    assert!(
        system.contains("RLIMIT_NPROC"),
        "the pids limit is said, applied or not: {system}"
    );

    let job = env.finished(&failed).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["reason"].as_str(),
            job["exit_code"].as_str()
        ),
        ("aborted", "exit_code", "3"),
        "{job:?}"
    );
    assert!(job["error"].contains("exited with code 3"), "{job:?}");
    assert!(left_under(base.path()).is_empty(), "working dirs removed");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_inputs_outputs_and_result_json() {
    let env = Env::new();
    let base = tempfile::tempdir().unwrap();
    let worker = local_worker(&env, base.path());
    let id = format!("{}-files", env.prefix);
    let script = "cat \"$DOCKHAND_INPUT/data/in.txt\" > \"$DOCKHAND_OUTPUT/copy.txt\"\n\
                  mkdir -p \"$DOCKHAND_OUTPUT/sub\"; echo nested > \"$DOCKHAND_OUTPUT/sub/n.txt\"\n\
                  head -c 5000 /dev/zero > \"$DOCKHAND_OUTPUT/big.bin\"\n\
                  echo '{\"result_text\": \"from a file\", \"result_data\": {\"n\": 2}}' > \"$DOCKHAND_OUTPUT/result.json\"\n";
    env.xadd(
        "default",
        &local(
            &id,
            serde_json::json!({
                "script": {"content": script, "interpreter": "sh"},
                "inputs": [{"path": "data/in.txt", "content": "input text"}],
                "limits": {"output_bytes": "1k"},
            }),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(job["result_text"], "from a file");
    assert_eq!(job["result_data"], r#"{"n":2}"#);
    let mut c = env.conn().await;
    let files: HashMap<String, Vec<u8>> = c.hgetall(env.files_key(&id)).await.unwrap();
    assert_eq!(
        files.get("copy.txt").map(Vec::as_slice),
        Some(&b"input text"[..])
    );
    assert_eq!(
        files.get("sub/n.txt").map(Vec::as_slice),
        Some(&b"nested\n"[..])
    );
    assert!(!files.contains_key("big.bin") && !files.contains_key("result.json"));
    assert!(
        job["files_dropped"].contains("big.bin")
            && job["files_dropped"].contains("limits.output_bytes"),
        "{job:?}"
    );
    assert!(left_under(base.path()).is_empty(), "working dirs removed");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_url_on_loopback_completes_the_job() {
    let env = Env::new();
    let base = tempfile::tempdir().unwrap();
    let worker = local_worker(&env, base.path());
    let id = format!("{}-posted", env.prefix);
    let post = r#"case "$RESPONSE_URL" in http://127.0.0.1:*) ;; *) echo "not loopback: $RESPONSE_URL"; exit 9;; esac;
curl -sf -H 'Content-Type: application/json' -d '{"result_text":"posted"}' "$RESPONSE_URL"; echo; exit 4"#;
    env.xadd("default", &local(&id, serde_json::json!({"command": post})))
        .await;
    let job = env.finished(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["result_text"].as_str(),
            job["exit_code"].as_str()
        ),
        ("completed", "posted", "4"),
        "{job:?} {:?}",
        env.log(&id).await
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_and_a_cancel_kill_the_whole_process_group() {
    let env = Env::new();
    let base = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    let worker = local_worker(&env, base.path());
    let timed = format!("{}-timed", env.prefix);
    let cancelled = format!("{}-cancelled", env.prefix);
    // A child in the background that ignores nothing, and a leader waiting on it;
    // the child's pid is written where the test can read it.
    let job = |mark: &str| {
        format!("sleep 1000 & echo $! > {mark}.tmp; mv {mark}.tmp {mark}; echo started; wait")
    };
    let timed_mark = marks.path().join("timed").to_string_lossy().into_owned();
    let cancel_mark = marks.path().join("cancel").to_string_lossy().into_owned();
    env.xadd(
        "default",
        &local(
            &timed,
            serde_json::json!({"command": job(&timed_mark), "limits": {"timeout_seconds": 1}}),
        ),
    )
    .await;
    env.xadd(
        "default",
        &local(
            &cancelled,
            serde_json::json!({"command": job(&cancel_mark)}),
        ),
    )
    .await;

    let job = env.finished(&timed).await;
    assert_eq!(
        (job["status"].as_str(), job["reason"].as_str()),
        ("aborted", "timeout"),
        "{job:?}"
    );
    gone(&std::fs::read_to_string(&timed_mark).unwrap()).await;

    env.wait_for_log_line(&cancelled, "stdout", "started").await;
    let child = std::fs::read_to_string(&cancel_mark).unwrap();
    assert!(alive(&child), "the child runs before the cancel");
    assert!(cancel(&env, &cancelled).await.status.success());
    let job = env.finished(&cancelled).await;
    assert_eq!(
        (job["status"].as_str(), job["reason"].as_str()),
        ("aborted", "cancelled"),
        "{job:?}"
    );
    gone(&child).await;
    assert!(left_under(base.path()).is_empty(), "working dirs removed");
    worker.stop().await;
}

/// The limits hold in the job and its children, set before its program runs: a
/// buffer past `limits.memory` cannot be had, `/proc` shows the job's limits,
/// and the job's process leads a process group of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_hold_in_the_job_and_its_children() {
    let env = Env::new();
    let base = tempfile::tempdir().unwrap();
    let worker = local_worker(&env, base.path());
    let id = format!("{}-limited", env.prefix);
    // `$$` is the job's own process (the shell that runs the command).
    let command = "cat /proc/self/limits; \
                   dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null && echo allocated; \
                   dd if=/dev/zero of=/dev/null bs=1M count=1 2>/dev/null && echo small-ok; \
                   test \"$(cut -d' ' -f5 /proc/$$/stat)\" = \"$$\" && echo leads-its-group";
    env.xadd(
        "default",
        &local(
            &id,
            serde_json::json!({"command": command, "limits": {"memory": "64m", "pids": 77}}),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    let stdout = env.lines(&id, "stdout").await;
    let limit = |name: &str| -> Vec<String> {
        let line = stdout
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {stdout:?}"));
        line[name.len()..]
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        limit("Max address space")[..2],
        ["67108864", "67108864"],
        "limits.memory as RLIMIT_AS, soft and hard"
    );
    // Root is not bound by RLIMIT_NPROC: the worker does not set it then.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert_eq!(limit("Max processes")[..2], ["77", "77"], "limits.pids");
    }
    assert!(
        !stdout.contains(&"allocated".to_string()),
        "100 MiB past a 64 MiB limit: {stdout:?}"
    );
    assert!(stdout.contains(&"small-ok".to_string()), "{stdout:?}");
    assert!(
        stdout.contains(&"leads-its-group".to_string()),
        "{stdout:?}"
    );
    worker.stop().await;
}

/// Whether process `pid` runs (a zombie waiting for its reaper does not).
fn alive(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
    stat.is_ok_and(|s| {
        let state = s[s.rfind(')').unwrap() + 1..].split_whitespace().next();
        !matches!(state, Some("Z" | "X"))
    })
}

async fn gone(pid: &str) {
    wait_until(&format!("process {} gone", pid.trim()), || async {
        (!alive(pid)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_where_not_enabled_and_for_what_only_docker_gives() {
    let env = Env::new();
    let off = format!("{}-off", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &local(&off, serde_json::json!({"command": "echo no"})),
    )
    .await;
    let job = env.finished(&off).await;
    assert_eq!(
        (job["status"].as_str(), job["reason"].as_str()),
        ("aborted", "policy_denied"),
        "{job:?}"
    );
    assert!(
        job["error"].contains("`executor`") && job["error"].contains("executors.local.enabled"),
        "{job:?}"
    );
    assert!(env.log(&off).await.is_empty(), "nothing ran");
    worker.stop().await;

    let base = tempfile::tempdir().unwrap();
    let worker = local_worker(&env, base.path());
    let imaged = format!("{}-imaged", env.prefix);
    env.xadd(
        "default",
        &local(
            &imaged,
            serde_json::json!({"command": "echo no", "image": "busybox"}),
        ),
    )
    .await;
    let job = env.finished(&imaged).await;
    assert_eq!(job["reason"], "policy_denied", "{job:?}");
    assert!(job["error"].starts_with("`image`"), "{job:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_stops_and_removes_what_a_dead_worker_left() {
    let env = Env::new();
    let base = tempfile::tempdir().unwrap();
    let deployment = "dep-of-this-test";
    let mut c = env.conn().await;
    let _: () = c.set(env.keys.deployment(), deployment).await.unwrap();
    // A run of a worker process that is gone (no liveness key): its directory,
    // its record, and its process group still running.
    let dir = base.path().join("gone-worker").join("job-1");
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let sleeper = |work: &std::path::Path| {
        std::process::Command::new("sleep")
            .arg("1000")
            .env("DOCKHAND_WORK", work)
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let mut orphan = sleeper(&dir.join("work"));
    // One of the run's processes that left its group (as after `setsid`).
    let mut escaped = sleeper(&dir.join("work"));
    // Another run's process (a live worker's, say): not this run's to stop.
    let mut bystander = sleeper(&base.path().join("other-worker/job-2/work"));
    // As a worker writes it: no process group (the sweep finds the run's
    // processes by their DOCKHAND_WORK).
    let record = serde_json::json!({
        "job": "job", "worker": "gone-worker", "consumer": "gone-worker:1:x",
        "entry": "1-0", "deployment": deployment,
    });
    let record_path = base.path().join("gone-worker").join("job-1.json");
    std::fs::write(&record_path, record.to_string()).unwrap();

    let worker = local_worker(&env, base.path());
    wait_until("the orphaned run stopped and removed", || {
        let stopped = orphan.try_wait().unwrap().is_some() && escaped.try_wait().unwrap().is_some();
        let done = stopped && !dir.exists() && !record_path.exists();
        async move { done.then_some(()) }
    })
    .await;
    worker.stop().await;
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "a process of another run's directory runs on"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}
