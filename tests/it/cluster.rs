//! Dockhand in `redis.mode = "cluster"` on a Redis Cluster of three masters and
//! three replicas (`common::cluster`), with its queues on different masters: a
//! job's steps run where its queue's slot is, a dependency and a listing cross
//! the masters, and a master or a worker killed mid-run loses no job.

use crate::common::cluster::Cluster;
use crate::common::receiver::Receiver;
use crate::common::{image, wait_until, Env, Worker};
use deadpool_redis::redis::{self, AsyncCommands};
use dockhand::webhook::Secret;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

/// The dockhand binary with this test's prefix, in cluster mode.
async fn dockhand(env: &Env, cluster: &Cluster, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"));
    cmd.args(args)
        .env_remove("REDIS_URL")
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .stdin(Stdio::null());
    for (k, v) in cluster.settings() {
        cmd.env(k, v);
    }
    cmd.output().await.expect("the dockhand binary runs")
}

/// One queue name for each master, so that the test's jobs cross them.
async fn one_queue_per_master(cluster: &Cluster, env: &Env) -> Vec<String> {
    let mut by_master: HashMap<u16, String> = HashMap::new();
    for i in 0..64 {
        let q = format!("q{i}");
        let master = cluster.master_of(&env.keys.jobs(&q)).await;
        by_master.entry(master).or_insert(q);
        if by_master.len() == 3 {
            break;
        }
    }
    assert_eq!(by_master.len(), 3, "three masters serve the queues");
    let mut queues: Vec<String> = by_master.into_values().collect();
    queues.sort();
    queues
}

/// An in-process worker in cluster mode on `cluster`, serving `queues`.
fn cluster_worker(
    env: &Env,
    cluster: &Cluster,
    queues: &[String],
    concurrency: usize,
    more: &[(&str, &str)],
) -> Worker {
    let settings = cluster.settings();
    let mut extra: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    extra.extend_from_slice(more);
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    Worker::start(env.settings(&queues, concurrency, &extra))
}

async fn hash(
    c: &mut redis::cluster_async::ClusterConnection,
    key: &str,
) -> HashMap<String, String> {
    c.hgetall(key).await.unwrap_or_default()
}

/// Waits until the job's hash says it ended, and returns it.
async fn finished(env: &Env, cluster: &Cluster, queue: &str, id: &str) -> HashMap<String, String> {
    let key = env.keys.job(queue, id);
    wait_until(&format!("job {queue}/{id} to end"), || {
        let key = key.clone();
        async move {
            let mut c = cluster.conn().await;
            let h = hash(&mut c, &key).await;
            matches!(
                h.get("status").map(String::as_str),
                Some("completed" | "aborted")
            )
            .then_some(h)
        }
    })
    .await
}

fn spec(id: &str, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({"id": id, "image": image()});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_cases_run_on_a_three_master_cluster() {
    let cluster = Cluster::start().await;
    let env = Env::at(format!("redis://127.0.0.1:{}/", cluster.ports()[0]));
    let queues = one_queue_per_master(&cluster, &env).await;
    let (qa, qb, qc) = (&queues[0], &queues[1], &queues[2]);
    let worker = cluster_worker(&env, &cluster, &queues, 3, &[]);
    let receiver = Receiver::start(&[]).await;
    let secret = Secret::generate().unwrap();
    let mut c = cluster.conn().await;
    let xadd = |queue: &str, job: String| {
        let key = env.keys.jobs(queue);
        let mut c = c.clone();
        async move {
            let _: String = c.xadd(key, "*", &[("job", job)]).await.unwrap();
        }
    };

    // A parent in one queue, its child in another (another master), a job that
    // fails in a third, and one to cancel there.
    let p = format!("{}-parent", env.prefix);
    let child = format!("{}-child", env.prefix);
    let fails = format!("{}-fails", env.prefix);
    let long = format!("{}-long", env.prefix);
    xadd(
        qb,
        spec(
            &child,
            serde_json::json!({"after": [format!("{qa}/{p}")], "command": format!("cat /dockhand/input/{p}/made.txt")}),
        ),
    )
    .await;
    xadd(
        qa,
        spec(
            &p,
            serde_json::json!({
                "command": "echo hello from the parent; echo made > /dockhand/output/made.txt",
                "webhooks": [{"url": receiver.url(), "secret": secret.to_whsec()}]}),
        ),
    )
    .await;
    xadd(qc, spec(&fails, serde_json::json!({"command": "exit 3"}))).await;
    // Through the inbox (the mover's step is the queue's slot), and a retry
    // that succeeds on the second attempt.
    let inboxed = format!("{}-inboxed", env.prefix);
    let retried = format!("{}-retried", env.prefix);
    let _: i64 = cluster
        .conn()
        .await
        .lpush(
            env.keys.inbox(qb),
            spec(
                &inboxed,
                serde_json::json!({"command": "echo via the inbox"}),
            ),
        )
        .await
        .unwrap();
    xadd(
        qc,
        spec(
            &retried,
            serde_json::json!({"command": "[ \"$DOCKHAND_ATTEMPT\" = 2 ] || exit 1",
                "retry": {"max_attempts": 2, "backoff_seconds": 0}}),
        ),
    )
    .await;
    xadd(qc, spec(&long, serde_json::json!({"command": "sleep 600"}))).await;

    let parent = finished(&env, &cluster, qa, &p).await;
    assert_eq!(parent["status"], "completed", "{parent:?}");
    let kid = finished(&env, &cluster, qb, &child).await;
    assert_eq!(kid["status"], "completed", "{kid:?}");
    let log: Vec<(String, HashMap<String, String>)> =
        c.xrange_all(env.keys.log(qb, &child)).await.unwrap();
    assert!(
        log.iter().any(|(_, f)| f
            .get("line")
            .is_some_and(|l| l.split('\n').any(|l| l == "made"))),
        "the child read its parent's file from another master: {log:?}"
    );
    let failed = finished(&env, &cluster, qc, &fails).await;
    assert_eq!(
        (failed["status"].as_str(), failed["reason"].as_str()),
        ("aborted", "exit_code")
    );
    let via_inbox = finished(&env, &cluster, qb, &inboxed).await;
    assert_eq!(via_inbox["status"], "completed", "{via_inbox:?}");
    let again = finished(&env, &cluster, qc, &retried).await;
    assert_eq!(
        (again["status"].as_str(), again["attempt"].as_str()),
        ("completed", "2"),
        "{again:?}"
    );
    let files: HashMap<String, String> = c.hgetall(env.keys.files(qa, &p)).await.unwrap();
    assert_eq!(files.get("made.txt").map(String::as_str), Some("made\n"));

    // The parent's webhook arrives signed (the outbox is its own slot).
    let seen = receiver.wait_for(1).await;
    seen[0].assert_signed(&secret);
    assert_eq!(seen[0].json()["data"]["id"], p.as_str());

    // Each queue keeps its own events.
    for (q, id) in [(qa, &p), (qb, &child), (qc, &fails)] {
        let events: Vec<(String, HashMap<String, String>)> =
            c.xrange_all(env.keys.events(q)).await.unwrap();
        assert!(
            events.iter().any(|(_, f)| f.get("job") == Some(id)),
            "{q}'s events stream has {id}'s"
        );
    }

    // The command line in cluster mode: a cancel by <queue>/<id> reaches the
    // worker (pub/sub crosses the nodes), and a bare id is found on any master.
    wait_until("the long job to run", || {
        let key = env.keys.job(qc, &long);
        let mut c = c.clone();
        async move {
            let s: Option<String> = c.hget(key, "status").await.ok()?;
            (s.as_deref() == Some("running")).then_some(())
        }
    })
    .await;
    let out = dockhand(&env, &cluster, &["cancel", &format!("{qc}/{long}")]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cancelled = finished(&env, &cluster, qc, &long).await;
    assert_eq!(cancelled["reason"], "cancelled", "{cancelled:?}");
    let out = dockhand(&env, &cluster, &["status", &child, "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(status["queue"], qb.as_str());
    assert_eq!(status["status"], "completed");

    // A listing of every queue merges the three masters' indexes.
    let out = dockhand(&env, &cluster, &["jobs", "--json", "--limit", "50"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One JSON object per line.
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|j| {
            format!(
                "{}/{}",
                j["queue"].as_str().unwrap(),
                j["id"].as_str().unwrap()
            )
        })
        .collect();
    ids.sort();
    let mut want = vec![
        format!("{qa}/{p}"),
        format!("{qb}/{child}"),
        format!("{qb}/{inboxed}"),
        format!("{qc}/{fails}"),
        format!("{qc}/{long}"),
        format!("{qc}/{retried}"),
    ];
    want.sort();
    assert_eq!(ids, want);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_loses_no_job() {
    let mut cluster = Cluster::start().await;
    let env = Env::at(format!("redis://127.0.0.1:{}/", cluster.ports()[0]));
    let queues = one_queue_per_master(&cluster, &env).await;
    // Each claim, terminal write and ack waits for a replica (docs/scaling.md):
    // what a worker recorded survives the master.
    let wait = [("DOCKHAND__REDIS__WAIT_REPLICAS", "1")];
    let worker = cluster_worker(&env, &cluster, &queues, 4, &wait);
    let c = cluster.conn().await;
    const PER_QUEUE: usize = 10;
    let mut jobs = Vec::new();
    for q in &queues {
        for i in 0..PER_QUEUE {
            let id = format!("{}-{q}-{i}", env.prefix);
            let mut c = c.clone();
            let _: String = c
                .xadd(
                    env.keys.jobs(q),
                    "*",
                    &[(
                        "job",
                        spec(&id, serde_json::json!({"command": "sleep 0.3"})),
                    )],
                )
                .await
                .unwrap();
            jobs.push((q.clone(), id));
        }
    }
    // Once a few have ended, the master of the first queue dies; a replica
    // takes over its slots.
    let first = &queues[0];
    wait_until("a few jobs of the first queue to end", || {
        let mut c = c.clone();
        let keys: Vec<String> = jobs
            .iter()
            .filter(|(q, _)| q == first)
            .map(|(q, id)| env.keys.job(q, id))
            .collect();
        async move {
            let mut done = 0;
            for k in keys {
                let s: Option<String> = c.hget(k, "status").await.ok()?;
                done += matches!(s.as_deref(), Some("completed")) as usize;
            }
            (done >= 2).then_some(())
        }
    })
    .await;
    let old = cluster.master_of(&env.keys.jobs(first)).await;
    cluster.kill(old);
    cluster
        .wait_for_new_master(&env.keys.jobs(first), old)
        .await;

    // Every job ends: none is lost (replication is asynchronous, so a job may
    // run again; see docs/scaling.md).
    for (q, id) in &jobs {
        let h = finished(&env, &cluster, q, id).await;
        assert_eq!(h["status"], "completed", "{q}/{id}: {h:?}");
    }
    worker.stop().await;
}

/// A child process killed when the test ends, however it ends (a worker left
/// running would go on trying a cluster that is gone).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker process in cluster mode, serving `queues`, running local jobs.
fn spawn_worker(env: &Env, cluster: &Cluster, id: &str, queues: &[String]) -> Killed {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dockhand"));
    cmd.arg("worker");
    for q in queues {
        cmd.args(["--queue", q]);
    }
    cmd.args(["--concurrency", "4", "--id", id])
        .env_remove("REDIS_URL")
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .env("DOCKHAND__REDIS__WAIT_REPLICAS", "1")
        .env("DOCKHAND__WORKER__BLOCK_MS", "300")
        .env("DOCKHAND__WORKER__LEASE_SECONDS", "2")
        .env("DOCKHAND__WORKER__STOP_GRACE_SECONDS", "1")
        .env("DOCKHAND__WORKER__RECONNECT_MAX_MS", "500")
        .env("DOCKHAND__EXECUTORS__LOCAL__ENABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in cluster.settings() {
        cmd.env(k, v);
    }
    Killed(cmd.spawn().expect("the dockhand binary starts"))
}

/// How many jobs the soak runs: `DOCKHAND_CLUSTER_SOAK_JOBS`, else 300 (the
/// full-size figure, 1,000, is in docs/scaling.md).
fn soak_jobs() -> usize {
    std::env::var("DOCKHAND_CLUSTER_SOAK_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_loses_no_job_when_a_master_and_a_worker_are_killed() {
    let mut cluster = Cluster::start().await;
    let env = Env::at(format!("redis://127.0.0.1:{}/", cluster.ports()[0]));
    let queues = one_queue_per_master(&cluster, &env).await;
    let mut workers = vec![
        spawn_worker(&env, &cluster, &format!("{}-w1", env.prefix), &queues),
        spawn_worker(&env, &cluster, &format!("{}-w2", env.prefix), &queues),
    ];
    let n = soak_jobs();
    let c = cluster.conn().await;
    let mut jobs = Vec::new();
    for i in 0..n {
        let q = &queues[i % queues.len()];
        let id = format!("{}-soak-{i}", env.prefix);
        let job = serde_json::json!({"id": id, "executor": "local", "command": ["sleep", "0.05"]});
        let mut c = c.clone();
        let _: String = c
            .xadd(env.keys.jobs(q), "*", &[("job", job.to_string())])
            .await
            .unwrap();
        jobs.push((q.clone(), id));
    }
    let ended = |c: &redis::cluster_async::ClusterConnection| {
        let mut c = c.clone();
        let keys: Vec<String> = jobs.iter().map(|(q, id)| env.keys.job(q, id)).collect();
        async move {
            let mut done = 0;
            for k in keys {
                let s: Option<String> = c.hget(k, "status").await.ok()?;
                done += matches!(s.as_deref(), Some("completed" | "aborted")) as usize;
            }
            Some(done)
        }
    };
    // A quarter in, a worker is SIGKILLed (its jobs are taken over after its
    // lease) and the master of the first queue dies (a replica takes over).
    wait_until("a quarter of the jobs to end", || async {
        ended(&c).await.filter(|d| *d >= n / 4).map(|_| ())
    })
    .await;
    let mut victim = workers.remove(0);
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    let old = cluster.master_of(&env.keys.jobs(&queues[0])).await;
    cluster.kill(old);
    cluster
        .wait_for_new_master(&env.keys.jobs(&queues[0]), old)
        .await;

    let c = cluster.conn().await;
    // Bounded only so that a broken run ends; it asserts nothing about speed.
    let mut last = 0;
    for _ in 0..1200 {
        last = ended(&c).await.unwrap_or(last);
        if last == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut c2 = c.clone();
    if last < n {
        let mut states: HashMap<String, usize> = HashMap::new();
        for (q, id) in &jobs {
            let h = hash(&mut c2, &env.keys.job(q, id)).await;
            let s = format!(
                "{q}:{}:{}",
                h.get("status").cloned().unwrap_or_default(),
                h.get("worker").cloned().unwrap_or_default()
            );
            *states.entry(s).or_default() += 1;
        }
        panic!("{last} of {n} jobs ended; by queue, status and worker: {states:?}");
    }
    for (q, id) in &jobs {
        let h = hash(&mut c2, &env.keys.job(q, id)).await;
        assert_eq!(h["status"], "completed", "{q}/{id}: {h:?}");
    }
    drop(workers);
}
