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

/// Every file left under `base` (the worker's own folder aside), but the
/// worker processes' pools of spare run directories (`.spares-*`).
fn left_under(base: &Path) -> Vec<String> {
    entries_under(base)
        .into_iter()
        .filter(|p| !is_pool(p))
        .collect()
}

/// Every entry in the worker folders under `base`.
fn entries_under(base: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for worker in std::fs::read_dir(base).unwrap().flatten() {
        for run in std::fs::read_dir(worker.path()).unwrap().flatten() {
            left.push(run.path().to_string_lossy().into_owned());
        }
    }
    left
}

fn is_pool(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(".spares-"))
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
    // The spare run directories of a worker process that is gone (nobody holds
    // the pool's lock), and of one that lives (this test holds it).
    let dead_pool = base.path().join("gone-worker/.spares-gone-worker:1:x");
    let live_pool = base.path().join("other-worker/.spares-other-worker:2:y");
    for pool in [&dead_pool, &live_pool] {
        for folder in ["input", "work", "output"] {
            std::fs::create_dir_all(pool.join("0").join(folder)).unwrap();
        }
        std::fs::write(pool.join("0.json"), "{}").unwrap();
    }
    let live_lock = std::fs::File::open(&live_pool).unwrap();
    live_lock.try_lock().unwrap();
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
        let done = stopped && !dir.exists() && !record_path.exists() && !dead_pool.exists();
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
    assert!(
        live_pool.join("0/work").is_dir(),
        "the pool of a worker process that lives is kept"
    );
    drop(live_lock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_working_directory_is_as_a_fresh_one() {
    let env = Env::new();
    let base = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("keep"), "not the job's").unwrap();
    let worker = local_worker(&env, base.path());
    // What a job sees of its directory: each folder's inode and mode, the
    // directory's mode and entries, and whatever is in the folders.
    let look = r#"cd "$DOCKHAND_WORK/.." && stat -c '%n %a' . && ls -A . | tr '\n' ' ' && echo &&
        for f in input work output; do test -d "$f" && ! test -L "$f" && stat -c '%n %a %i' "$f"; done &&
        find input work output -mindepth 1 | sort | sed 's/^/found /'"#;
    let mut n = 0;
    let mut run = |script: String| {
        n += 1;
        let id = format!("{}-{n}", env.prefix);
        let env = &env;
        async move {
            env.xadd(
                "default",
                &local(&id, serde_json::json!({"command": ["sh", "-c", script]})),
            )
            .await;
            let job = env.finished(&id).await;
            assert_eq!(job["status"], "completed", "{job:?}");
            env.lines(&id, "stdout").await
        }
    };
    let inode = |seen: &[String], folder: &str| {
        seen.iter()
            .find_map(|l| l.strip_prefix(&format!("{folder} ")))
            .map(|rest| rest.split(' ').nth(1).unwrap().to_string())
            .unwrap_or_else(|| panic!("no {folder}/ in {seen:?}"))
    };

    // The first run's directory is a fresh one: what the others must look like.
    let fresh = run(look.to_string()).await;
    let strip_inodes = |seen: &[String]| -> Vec<String> {
        seen.iter()
            .map(|l| match l.rsplit_once(' ') {
                Some((head, _))
                    if ["input ", "work ", "output "]
                        .iter()
                        .any(|f| l.starts_with(f)) =>
                {
                    head.to_string()
                }
                _ => l.clone(),
            })
            .collect()
    };
    assert_eq!(
        strip_inodes(&fresh),
        vec![
            ". 700".to_string(),
            "input output work".into(),
            format!("input {}", fresh[2].split(' ').nth(1).unwrap()),
            format!("work {}", fresh[2].split(' ').nth(1).unwrap()),
            format!("output {}", fresh[2].split(' ').nth(1).unwrap()),
        ],
        "a fresh directory: three empty folders of one mode"
    );

    // A spare changed while it waits in the pool (by a process that outlived
    // its job, say): a stray file in one folder, another folder now a symlink.
    let pool = entries_under(base.path())
        .into_iter()
        .find(|p| is_pool(p))
        .expect("the first run's directory is kept as a spare");
    let spares: Vec<_> = std::fs::read_dir(&pool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(spares.len(), 1, "{spares:?}");
    std::fs::write(spares[0].join("work/stray"), "left").unwrap();
    std::fs::remove_dir(spares[0].join("input")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), spares[0].join("input")).unwrap();
    let after = run(look.to_string()).await;
    assert_eq!(strip_inodes(&after), strip_inodes(&fresh), "{after:?}");
    assert!(
        !spares[0].join("work/stray").exists()
            && !std::fs::symlink_metadata(spares[0].join("input")).is_ok_and(|m| m.is_symlink()),
        "the changed spare is gone (its name may hold a clean one again)"
    );
    assert!(
        elsewhere.path().join("keep").exists(),
        "what the symlink named is untouched"
    );

    // Files, folders and a symlink left in every folder, and every mode changed.
    let messy = r#"echo i > "$DOCKHAND_INPUT/i" && mkdir -p sub/deeper && echo w > sub/deeper/f &&
        ln -s /etc/passwd link && echo o > "$DOCKHAND_OUTPUT/o.txt" &&
        chmod 777 "$DOCKHAND_WORK" && chmod 750 "$DOCKHAND_OUTPUT/.." && chmod 1700 "$DOCKHAND_INPUT" &&
        stat -c '%i' "$DOCKHAND_WORK""#;
    let left = run(messy.to_string()).await;
    let after = run(look.to_string()).await;
    assert_eq!(
        strip_inodes(&after),
        strip_inodes(&fresh),
        "emptied and its modes reset"
    );
    assert_eq!(
        inode(&after, "work"),
        left[0],
        "the directory the messy job left was used again: {after:?}"
    );

    // A folder replaced by a symlink, one by a file, an entry beside them:
    // the directory is not used again, and nothing the symlink names is touched.
    let target = elsewhere.path().to_string_lossy().into_owned();
    let odd = format!(
        r#"rm -rf "$DOCKHAND_INPUT" && ln -s '{target}' "$DOCKHAND_INPUT" &&
        touch "$DOCKHAND_WORK/../extra" && cd / && rmdir "$DOCKHAND_WORK" && echo x > "$DOCKHAND_WORK""#
    );
    run(odd).await;
    let after = run(look.to_string()).await;
    assert_eq!(strip_inodes(&after), strip_inodes(&fresh), "{after:?}");
    assert_eq!(
        std::fs::read_to_string(elsewhere.path().join("keep")).unwrap(),
        "not the job's",
        "what the symlink named is untouched"
    );

    assert!(
        left_under(base.path()).is_empty(),
        "only spares left: {:?}",
        entries_under(base.path())
    );
    worker.stop().await;
    assert!(
        entries_under(base.path()).is_empty(),
        "a stopped worker leaves no spares: {:?}",
        entries_under(base.path())
    );
}
