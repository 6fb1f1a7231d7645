//! Redis Sentinel: workers, `dockhand serve` and the CLI in sentinel mode, against
//! a real group (one master, two replicas, three sentinels; `common::sentinel`),
//! through a real failover: the master SIGKILLed while jobs run.

use crate::common::receiver::Receiver;
use crate::common::sentinel::{query, SentinelGroup, MASTER_NAME};
use crate::common::{free_port, image, spec, wait_until, Env, Worker};
use deadpool_redis::redis::{self, AsyncCommands};
use dockhand::webhook::Secret;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The dockhand binary with this test's prefix, in sentinel mode on `group`.
fn dockhand(env: &Env, group: &SentinelGroup) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"));
    cmd.env_remove("REDIS_URL")
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .stdin(Stdio::null());
    for (k, v) in group.settings() {
        cmd.env(k, v);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_sentinel_mode_runs_a_job_end_to_end() {
    let group = SentinelGroup::start().await;
    let env = Env::at(SentinelGroup::url_of(group.master_port().await));
    let receiver = Receiver::start(&[]).await;
    let secret = Secret::generate().unwrap();
    let sentinel = group.settings();
    let worker = Worker::start(env.settings(&["default"], 1, &pairs(&sentinel)));
    let id = format!("{}-e2e", env.prefix);
    let command = r#"echo hello; echo '{"result_text":"fine"}' > /dockhand/output/result.json"#;
    env.xadd(
        "default",
        &serde_json::json!({"id": id, "image": image(), "command": command,
            "webhooks": [{"url": receiver.url(), "secret": secret.to_whsec()}]})
        .to_string(),
    )
    .await;

    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(job["result_text"], "fine");
    assert_eq!(env.lines(&id, "stdout").await, vec!["hello"]);
    let seen = receiver.wait_for(1).await;
    let body = seen[0].json();
    assert_eq!(body["type"], "job.completed");
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["result_text"], "fine");
    // The job's writes reached the replicas too: the group is real.
    let replica_view = wait_until("the job's state on a replica", || async {
        let master = group.master_port().await;
        for port in group.server_ports() {
            if port == master {
                continue;
            }
            let status: Option<String> =
                query(port, redis::cmd("HGET").arg(env.job_key(&id)).arg("status"))
                    .await
                    .ok()?;
            if status.as_deref() == Some("completed") {
                return Some(port);
            }
        }
        None
    })
    .await;
    assert_ne!(replica_view, group.master_port().await);
    // doctor names the mode, each sentinel's answer and the replicas.
    let doctor = dockhand(&env, &group).arg("doctor").output().await.unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout);
    let master = group.master_port().await;
    assert!(
        said.contains(&format!(
            "ok    redis.mode = sentinel, master {MASTER_NAME:?}"
        )),
        "{said}"
    );
    for port in group.sentinel_ports() {
        assert!(
            said.contains(&format!(
                "ok    sentinel redis://127.0.0.1:{port} answers: master {MASTER_NAME:?} is at 127.0.0.1:{master}"
            )),
            "{said}"
        );
    }
    assert!(
        said.contains("ok    the master has 2 replica(s) in sync"),
        "{said}"
    );
    worker.stop().await;
}

/// Counts container starts as the Docker engine reports them, live from when
/// it is made: independent of what Redis kept. (Asking afterwards with
/// `docker events --since` is not enough: the engine keeps only its last few
/// hundred events, which a busy host overwrites within seconds.)
struct StartWatch(Child);

impl StartWatch {
    fn new() -> StartWatch {
        let child = Command::new("docker")
            .args([
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=start",
            ])
            .args(["--filter", "label=dockhand.job"])
            .args(["--format", r#"{{index .Actor.Attributes "dockhand.job"}}"#])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker CLI");
        StartWatch(child)
    }

    /// How many times each of `ids` started so far.
    fn starts(mut self, ids: &[String]) -> HashMap<String, usize> {
        let _ = self.0.kill();
        let mut text = String::new();
        if let Some(mut out) = self.0.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
        }
        let mut starts: HashMap<String, usize> = ids.iter().map(|i| (i.clone(), 0)).collect();
        for line in text.lines() {
            if let Some(n) = starts.get_mut(line.trim()) {
                *n += 1;
            }
        }
        starts
    }
}

impl Drop for StartWatch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 GET on loopback; the status code and body.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_serve_and_the_cli_follow_a_failover_and_no_submitted_job_is_lost() {
    let mut group = SentinelGroup::start().await;
    let old = group.master_port().await;
    let env = Env::at(SentinelGroup::url_of(old));
    let watch = StartWatch::new();

    // Submitted as a careful producer does: XADD, then WAIT until both
    // replicas have it, so the submission itself survives the failover.
    // The first job prints across the failover, followed by `dockhand logs
    // --follow` (a pub/sub subscriber); the others take a moment each.
    let follow = format!("{}-follow", env.prefix);
    let ids: Vec<String> = std::iter::once(follow.clone())
        .chain((0..10).map(|n| format!("{}-f{n}", env.prefix)))
        .collect();
    let mut producer = env.conn().await;
    for id in &ids {
        let command = if id == &follow {
            "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 1; done"
        } else {
            "sleep 2; echo done"
        };
        let job = spec(id, serde_json::json!({ "command": command }));
        let _: String = producer
            .xadd(env.keys.jobs("default"), "*", &[("job", job.as_str())])
            .await
            .unwrap();
        let replicated: u32 = redis::cmd("WAIT")
            .arg(2)
            .arg(5000)
            .query_async(&mut producer)
            .await
            .unwrap();
        assert_eq!(replicated, 2, "both replicas have the submission");
    }

    // Two workers, two jobs each at once; the lease outlasts a failover (a few
    // seconds here), and each claim, terminal write and ack waits for a replica.
    let mut sentinel = group.settings();
    sentinel.push(("DOCKHAND__WORKER__LEASE_SECONDS", "10".into()));
    sentinel.push(("DOCKHAND__REDIS__WAIT_REPLICAS", "1".into()));
    sentinel.push(("DOCKHAND__REDIS__WAIT_TIMEOUT_MS", "500".into()));
    let workers: Vec<Killed> = ["w1", "w2"]
        .iter()
        .map(|w| Killed(env.spawn_worker(&format!("{}-{w}", env.prefix), &pairs(&sentinel))))
        .collect();
    let port = free_port();
    let serve = dockhand(&env, &group)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the dockhand binary runs");
    wait_until("serve to answer for a queued job", || async {
        let (status, _) = get(port, &format!("/jobs/{}", ids[0])).await?;
        (status == 200).then_some(())
    })
    .await;

    let follower = dockhand(&env, &group)
        .args(["logs", "--follow", &follow])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the dockhand binary runs");
    env.wait_for_log_line(&follow, "stdout", "line1").await;

    // Kill the master while jobs run and more wait.
    wait_until("two jobs to be running", || async {
        let mut running = 0;
        for id in &ids {
            running +=
                (env.job(id).await.get("status").map(String::as_str) == Some("running")) as usize;
        }
        (running >= 2).then_some(())
    })
    .await;
    group.kill_server(old);
    let new = group.wait_for_new_master(old).await;
    let env = env.moved_to(SentinelGroup::url_of(new));

    let mut ended = Vec::new();
    for id in &ids {
        let job = env.finished(id).await;
        assert_eq!(job["status"], "completed", "job {id}: {job:?}");
        ended.push(job);
    }
    // Every job ran, and none more than once more than a failover may cause
    // (docs/scaling.md: with the lease longer than the failover, at most one
    // extra run, of a job being claimed or ending as the master died).
    let starts = watch.starts(&ids);
    for (id, n) in &starts {
        assert!(
            (1..=2).contains(n),
            "job {id} started {n} times: {starts:?}"
        );
    }
    let twice = starts.values().filter(|n| **n == 2).count();
    eprintln!(
        "container starts per job: {starts:?} ({twice} of {} ran twice)",
        ids.len()
    );

    // The follower resubscribed on the new master and printed every line once,
    // in order, then ended with the job.
    let followed = tokio::time::timeout(crate::common::GUARD, follower.wait_with_output())
        .await
        .expect("`logs --follow` ends with the job")
        .unwrap();
    assert!(followed.status.success());
    let printed: Vec<String> = String::from_utf8_lossy(&followed.stdout)
        .lines()
        .filter(|l| l.contains("line"))
        .map(str::to_string)
        .collect();
    eprintln!("logs --follow printed: {printed:?}");
    let expected: Vec<String> = (1..=8).map(|i| format!("line{i}")).collect();
    assert!(
        printed.len() >= 8
            && printed[..8]
                .iter()
                .zip(&expected)
                .all(|(p, e)| p.ends_with(e.as_str())),
        "{printed:?}"
    );

    // `serve` and the CLI, which knew only the old master, answer from the new one.
    let last = ids.last().unwrap();
    let body = wait_until("serve to answer from the new master", || async {
        let (status, body) = get(port, &format!("/jobs/{last}")).await?;
        (status == 200).then_some(body)
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "completed", "{body}");
    let out = dockhand(&env, &group)
        .args(["status", last])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("completed"));
    let doctor = dockhand(&env, &group).arg("doctor").output().await.unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        said.contains(&format!("master {MASTER_NAME:?} is at 127.0.0.1:{new}")),
        "{said}"
    );
    drop(serve);
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_settings_that_cannot_work_get_a_clear_sentence() {
    let env = Env::new();
    // Sentinel mode without a master name: refused at start, exit 2.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["status", "any"])
        .env_remove("REDIS_URL")
        .env("DOCKHAND__REDIS__MODE", "sentinel")
        .env("DOCKHAND__REDIS__NODES", "redis://127.0.0.1:1")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("set redis.master_name"), "{err}");
    // Cluster mode without seed nodes: refused, with what to set.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["worker"])
        .env_remove("REDIS_URL")
        .env("DOCKHAND__REDIS__MODE", "cluster")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs seed nodes"), "{err}");
    // Sentinels that do not answer: the command fails (exit 1) and names each
    // one it tried; nothing panics.
    let (a, b) = (free_port(), free_port());
    let nodes = format!("redis://127.0.0.1:{a},redis://127.0.0.1:{b}");
    for args in [&["status", "any"][..], &["doctor"][..]] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(args)
            .env_remove("REDIS_URL")
            .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
            .env("DOCKHAND__REDIS__MODE", "sentinel")
            .env("DOCKHAND__REDIS__NODES", &nodes)
            .env("DOCKHAND__REDIS__MASTER_NAME", MASTER_NAME)
            .env("DOCKHAND__REDIS__COMMAND_TIMEOUT_MS", "1000")
            .output()
            .await
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        assert!(!said.contains("panicked"), "{said}");
        for port in [a, b] {
            assert!(
                said.contains(&format!("sentinel redis://127.0.0.1:{port}")),
                "{args:?} names sentinel {port}: {said}"
            );
        }
    }
}

/// A pooled connection that gets `READONLY` (its server became a replica) is not
/// handed out again: the next checkout makes a new connection, which in
/// sentinel mode asks for the master again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readonly_answer_retires_the_pooled_connection() {
    let other = crate::common::RedisServer::start();
    let env = Env::own_server();
    let settings = env.settings(&["default"], 1, &[]);
    let store =
        dockhand::store::Store::new(&settings.redis, std::time::Duration::from_millis(300), 1)
            .unwrap();
    let client_id = |mut conn: dockhand::store::Conn| async move {
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .unwrap();
        id
    };
    let first = client_id(store.conn().await.unwrap()).await;
    assert_eq!(
        client_id(store.conn().await.unwrap()).await,
        first,
        "the pool hands the same connection out again"
    );
    // The server becomes a replica (as an old master does after a failover).
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(other.port)
        .query_async(&mut env.conn().await)
        .await
        .unwrap();
    let mut conn = store.conn().await.unwrap();
    let refused: Result<(), redis::RedisError> = conn.set("k", "v").await;
    let refused = dockhand::store::StoreError::from(refused.unwrap_err());
    assert_eq!(refused.code(), Some("READONLY"));
    assert!(
        refused.is_connection(),
        "READONLY is retried like a lost connection"
    );
    drop(conn);
    assert_ne!(
        client_id(store.conn().await.unwrap()).await,
        first,
        "the connection that got READONLY was dropped"
    );
}

/// A planned failover (`SENTINEL FAILOVER`): the old master stays up and becomes
/// a replica. A worker that ran a job on it runs the next on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_follows_a_planned_failover_with_the_old_master_still_up() {
    let group = SentinelGroup::start().await;
    let old = group.master_port().await;
    let env = Env::at(SentinelGroup::url_of(old));
    let sentinel = group.settings();
    let worker = Worker::start(env.settings(&["default"], 1, &pairs(&sentinel)));
    let before = format!("{}-before", env.prefix);
    env.xadd(
        "default",
        &spec(&before, serde_json::json!({"command": "echo one"})),
    )
    .await;
    assert_eq!(env.finished(&before).await["status"], "completed");

    let _: String = query(
        group.sentinel_ports()[0],
        redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME),
    )
    .await
    .unwrap();
    let new = group.wait_for_new_master(old).await;
    // The old master is up, and a replica now.
    wait_until("the old master to answer ROLE as a replica", || async {
        let role: Vec<redis::Value> = query(old, &mut redis::cmd("ROLE")).await.ok()?;
        matches!(role.first(), Some(redis::Value::BulkString(b)) if b.as_slice() == b"slave")
            .then_some(())
    })
    .await;
    let env = env.moved_to(SentinelGroup::url_of(new));
    let after = format!("{}-after", env.prefix);
    env.xadd(
        "default",
        &spec(&after, serde_json::json!({"command": "echo two"})),
    )
    .await;
    let job = env.finished(&after).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(env.lines(&after, "stdout").await, vec!["two"]);
    worker.stop().await;
}
