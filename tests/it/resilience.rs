//! Faults: Redis or the Docker engine going away and coming back.

use crate::common::{image, Env};
use std::time::Duration;

fn spec(id: &str, command: &str) -> String {
    serde_json::json!({ "id": id, "image": image(), "command": command }).to_string()
}

/// Redis restarts (losing everything, like a restart without persistence) while the
/// worker is idle: the worker reconnects, re-creates its consumer group, and serves
/// both XADD and LPUSH jobs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_while_idle_does_not_stop_the_worker() {
    let mut env = Env::own_server();
    let worker = env.worker(&["default"], 1);
    let before = format!("{}-before", env.prefix);
    env.xadd("default", &spec(&before, "echo before")).await;
    assert_eq!(env.finished(&before).await["status"], "completed");

    let server = env.server.as_mut().unwrap();
    server.kill();
    // Down until the worker has noticed: its reads fail and it tries again (twice:
    // a retry after a failed reconnect, not just one new connection).
    server.wait_for_reconnect_attempts(2).await;
    server.restart();

    let after = format!("{}-after", env.prefix);
    env.xadd("default", &spec(&after, "echo after")).await;
    let job = env.finished(&after).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(env.lines(&after, "stdout").await, vec!["after"]);

    let pushed = format!("{}-pushed", env.prefix);
    env.lpush("default", &spec(&pushed, "echo pushed")).await;
    assert_eq!(env.finished(&pushed).await["status"], "completed");
    worker.stop().await;
}

/// A worker started while Redis is down waits for it instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_redis_waits_for_it() {
    let mut env = Env::own_server();
    env.server.as_mut().unwrap().kill();
    let worker = env.worker(&["default"], 1);
    // The worker is up and keeps trying to reach Redis, rather than exiting.
    env.server
        .as_ref()
        .unwrap()
        .wait_for_reconnect_attempts(2)
        .await;
    assert!(!worker.is_finished(), "the worker gave up without Redis");
    env.server.as_mut().unwrap().restart();
    let id = format!("{}-late", env.prefix);
    env.xadd("default", &spec(&id, "echo late")).await;
    assert_eq!(env.finished(&id).await["status"], "completed");
    worker.stop().await;
}

/// Redis is SIGKILLed mid-run (AOF on) and restarted: every job still ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_with_aof_loses_no_job() {
    let mut env = Env::own_server_with_aof();
    let worker = env.worker(&["default"], 2);
    let ids: Vec<String> = (0..6).map(|i| format!("{}-j{i}", env.prefix)).collect();
    for id in &ids {
        env.xadd("default", &spec(id, "echo start; sleep 1; echo end"))
            .await;
    }
    // Mid-run: the first job's container has printed its first line.
    env.wait_for_log_line(&ids[0], "stdout", "start").await;
    let server = env.server.as_mut().unwrap();
    server.kill();
    server.wait_for_reconnect_attempts(2).await;
    server.restart();
    for id in &ids {
        let job = env.finished(id).await;
        assert_eq!(job["status"], "completed", "{id}: {job:?}");
        assert!(
            env.lines(id, "stdout")
                .await
                .ends_with(&["end".to_string()]),
            "{id}"
        );
    }
    worker.stop().await;
}

/// Redis is away for longer than the lease: the worker stops its containers
/// (fencing) and, finding nobody took the jobs over, puts them back; they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_fences_then_requeues() {
    let mut env = Env::own_server_with_aof();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-fenced", env.prefix);
    env.xadd(
        "default",
        &spec(
            &id,
            "echo attempt $DOCKHAND_ATTEMPT; [ $DOCKHAND_ATTEMPT -ge 2 ] || sleep 60",
        ),
    )
    .await;
    // The container runs (it printed its first line) before Redis goes away.
    env.wait_for_log_line(&id, "stdout", "attempt 1").await;
    let label = format!("dockhand.job={id}");
    assert_eq!(crate::common::containers_with_label(&label).len(), 1);
    env.server.as_mut().unwrap().kill();
    // Down until the worker, unable to renew its lease (2 s in tests), has fenced:
    // it stopped and removed the container, which would otherwise sleep 60 s.
    crate::common::eventually("the worker fences: the job's container is removed", || {
        crate::common::containers_with_label(&label).is_empty()
    })
    .await;
    env.server.as_mut().unwrap().restart();
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(job["attempt"], "2");
    crate::common::eventually("the second run's container is removed", || {
        crate::common::containers_with_label(&label).is_empty()
    })
    .await;
    worker.stop().await;
}

/// A unix-socket relay to the real Docker engine that the test can cut: while it is
/// down it drops every connection, old and new, as a restarting daemon would.
struct DockerRelay {
    path: std::path::PathBuf,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<tokio::sync::Notify>,
    /// Connections dropped while down: each is someone trying the engine.
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl DockerRelay {
    fn start() -> DockerRelay {
        use std::sync::atomic::Ordering;
        let upstream = match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("unix://") => h.trim_start_matches("unix://").to_string(),
            Ok(h) if !h.is_empty() => panic!("this test relays a unix socket, not {h}"),
            _ => "/var/run/docker.sock".to_string(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (up2, cut2, refused2) = (up.clone(), cut.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    refused2.fetch_add(1, Ordering::SeqCst);
                    continue; // dropped: the client sees the connection close
                }
                let (upstream, cut) = (upstream.clone(), cut2.clone());
                tokio::spawn(async move {
                    let Ok(mut engine) = tokio::net::UnixStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut engine) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        DockerRelay {
            path,
            up,
            cut,
            refused,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` more connections than `since` were refused: the
    /// worker tried the engine again and found it still away.
    async fn wait_for_refusals(&self, since: usize, n: usize) {
        crate::common::wait_until(
            &format!("{n} connection(s) to the downed engine after the first {since}"),
            || async { (self.refused() >= since + n).then_some(()) },
        )
        .await
    }
}

/// Waits (10 s at most) until the worker's heartbeat says `want` of Docker
/// (`dockhand:workers`); returns what it said last.
async fn docker_health(env: &Env, want: &str) -> String {
    let mut said = String::new();
    for _ in 0..100 {
        let mut c = env.conn().await;
        let workers: std::collections::HashMap<String, String> =
            deadpool_redis::redis::AsyncCommands::hgetall(&mut c, env.keys.workers())
                .await
                .unwrap();
        let info: serde_json::Value =
            serde_json::from_str(workers.values().next().map(String::as_str).unwrap_or("{}"))
                .unwrap();
        said = info["docker"].as_str().unwrap_or("").to_string();
        // A beat comes every third of the lease (2 s here).
        if said == want {
            return said;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    said
}

/// The Docker engine stops answering: a job that could not start (its container,
/// or the image of a job from git) is scheduled to run again without using up an
/// attempt, the worker claims nothing more meanwhile,
/// and once the engine answers both jobs run. With `docker_retries` used up the job
/// ends `docker_error` naming the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_docker_engine_defers_jobs_until_it_answers() {
    let env = Env::new();
    let relay = DockerRelay::start();
    let url = relay.url();
    let repo = crate::git_jobs::Repo::new();
    let cache = repo.cache_dir();
    let worker = crate::common::Worker::start(env.settings(
        &["default"],
        1,
        &[
            ("DOCKHAND__WORKER__DOCKER_HOST", &url),
            ("DOCKHAND__WORKER__CACHE_DIR", &cache),
            // The job from git builds from a folder on this host.
            ("DOCKHAND__POLICY__GIT_FILE_URLS", "true"),
        ],
    ));
    let warm = format!("{}-warm", env.prefix);
    env.xadd("default", &spec(&warm, "echo warm")).await;
    assert_eq!(env.finished(&warm).await["status"], "completed");

    // A job from git: its checkout needs no Docker, its image does.
    relay.down();
    let built = format!("{}-built", env.prefix);
    let git = serde_json::json!({"url": repo.url, "commit": repo.a});
    env.xadd(
        "default",
        &serde_json::json!({"id": built, "git": git, "command": "cat /app/app.txt"}).to_string(),
    )
    .await;
    let scheduled = env.status_becomes(&built, "scheduled").await;
    assert_eq!(scheduled["docker_retries"], "1", "{scheduled:?}");
    relay.up();
    let done = env.finished(&built).await;
    assert_eq!(done["status"], "completed", "{done:?}");
    assert_eq!(env.lines(&built, "stdout").await, vec!["A"]);

    relay.down();
    let first = format!("{}-first", env.prefix);
    env.xadd("default", &spec(&first, "echo attempt $DOCKHAND_ATTEMPT"))
        .await;
    let scheduled = env.status_becomes(&first, "scheduled").await;
    assert_eq!(scheduled["docker_retries"], "1", "{scheduled:?}");
    assert_eq!(scheduled["attempt"], "0", "no attempt used: {scheduled:?}");
    let said = env.lines(&first, "system").await;
    assert!(
        said.iter().any(|l| l.contains("nothing of the job ran")),
        "{said:?}"
    );
    // The worker says so where operators look.
    assert_eq!(docker_health(&env, "unreachable").await, "unreachable");
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["--redis-url", &env.url, "workers"])
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.contains(" yes ") && l.contains("unreachable")),
        "{listed}"
    );
    // Not claimed while the engine is away. By the time the worker has pinged the
    // engine again after the XADD (and found it still away) and beaten its heart
    // again, an unguarded claim loop (block_ms 300) would have read the entry.
    let second = format!("{}-second", env.prefix);
    let since = relay.refused();
    let added = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    env.xadd("default", &spec(&second, "echo second")).await;
    relay.wait_for_refusals(since, 1).await;
    env.wait_for_beat(
        "a heartbeat after the XADD saying Docker is unreachable",
        |b| {
            b["docker"] == "unreachable"
                && b["beat_at"].as_str().is_some_and(|t| t > added.as_str())
        },
    )
    .await;
    assert_eq!(
        env.job(&second).await.get("status"),
        None,
        "claimed while Docker was away"
    );

    relay.up();
    let done = env.finished(&first).await;
    assert_eq!(done["status"], "completed", "{done:?}");
    assert_eq!(done["attempt"], "1");
    assert_eq!(env.lines(&first, "stdout").await, vec!["attempt 1"]);
    assert_eq!(env.finished(&second).await["status"], "completed");
    assert_eq!(docker_health(&env, "ok").await, "ok");
    worker.stop().await;

    // No retries left: the job ends docker_error with what failed.
    let strict = crate::common::Worker::start(env.settings(
        &["default"],
        1,
        &[
            ("DOCKHAND__WORKER__DOCKER_HOST", &url),
            ("DOCKHAND__WORKER__DOCKER_RETRIES", "0"),
        ],
    ));
    let warm = format!("{}-warm2", env.prefix);
    env.xadd("default", &spec(&warm, "true")).await;
    assert_eq!(env.finished(&warm).await["status"], "completed");
    relay.down();
    let gone = format!("{}-gone", env.prefix);
    env.xadd("default", &spec(&gone, "true")).await;
    let done = env.finished(&gone).await;
    assert_eq!(done["reason"], "docker_error", "{done:?}");
    assert!(
        done["error"].contains("worker.docker_retries = 0"),
        "{}",
        done["error"]
    );
    relay.up();
    strict.stop().await;
}

/// A worker started while the Docker engine does not answer waits for it, then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_docker_waits_for_it() {
    let env = Env::new();
    let relay = DockerRelay::start();
    relay.down();
    let url = relay.url();
    let worker = crate::common::Worker::start(env.settings(
        &["default"],
        1,
        &[("DOCKHAND__WORKER__DOCKER_HOST", &url)],
    ));
    let id = format!("{}-later", env.prefix);
    env.xadd("default", &spec(&id, "echo docker is back")).await;
    // The worker is up and tries the engine again and again instead of exiting.
    relay.wait_for_refusals(0, 2).await;
    assert!(!worker.is_finished(), "the worker gave up without Docker");
    assert_eq!(
        env.job(&id).await.get("status"),
        None,
        "nothing ran without Docker"
    );
    relay.up();
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(env.lines(&id, "stdout").await, vec!["docker is back"]);
    worker.stop().await;
}

/// `dockhand logs --follow` outlives a Redis restart: it reconnects and goes on
/// after the last line it printed, so every line comes once, in order, and it
/// exits 0 when the job ends. The job holds its second half until the test lets
/// it go (a file), so the restart falls between the halves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_outlives_a_redis_restart() {
    let mut env = Env::own_server_with_aof();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-followed", env.prefix);
    env.xadd(
        "default",
        &spec(
            &id,
            "for i in $(seq 1 10); do echo $i; done; \
             while [ ! -f /dockhand/work/go ]; do sleep 0.1; done; \
             for i in $(seq 11 20); do echo $i; done",
        ),
    )
    .await;
    env.wait_for_log_line(&id, "stdout", "10").await;
    let mut follower = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["--redis-url", &env.url, "logs", &id, "--follow"])
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .env_remove("REDIS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // It follows once it has printed the first half.
    use tokio::io::AsyncBufReadExt;
    let mut stdout = tokio::io::BufReader::new(follower.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    while printed.last().map(String::as_str) != Some("10") {
        printed.push(
            stdout
                .next_line()
                .await
                .unwrap()
                .expect("the follower printed 1..10"),
        );
    }
    let server = env.server.as_mut().unwrap();
    server.kill();
    // The worker and the follower both notice, and try again.
    server.wait_for_reconnect_attempts(3).await;
    server.restart();
    let container = crate::common::containers_with_label(&format!("dockhand.job={id}"));
    let released = std::process::Command::new("docker")
        .args(["exec", &container[0], "touch", "/dockhand/work/go"])
        .output()
        .unwrap();
    assert!(released.status.success(), "{released:?}");
    while let Some(line) = stdout.next_line().await.unwrap() {
        printed.push(line);
    }
    let out = follower.wait_with_output().await.unwrap();
    let expected: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    assert_eq!(
        printed,
        expected,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    worker.stop().await;
}
