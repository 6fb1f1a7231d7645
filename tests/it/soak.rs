//! A soak under faults: jobs across three worker processes while workers are
//! SIGKILLed and restarted at random and Redis (AOF on) is killed and restarted
//! once. Every job must end, none may be lost or stuck; the runs per job are
//! reported. `DOCKHAND_SOAK_JOBS` sets the count (default 150 in the suite;
//! `DOCKHAND_SOAK_JOBS=1000 scripts/test soak` for the full soak).

use crate::common::{containers_with_label, image, signal, Env, GUARD};
use deadpool_redis::redis::{self, AsyncCommands};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_killed_workers_and_a_redis_restart() {
    let n: usize = std::env::var("DOCKHAND_SOAK_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut env = Env::own_server_with_aof();
    let ids: Vec<String> = (0..3).map(|i| format!("{}-w{i}", env.prefix)).collect();
    let mut workers: Vec<std::process::Child> =
        ids.iter().map(|id| env.spawn_worker(id, &[])).collect();

    let jobs: Vec<String> = (0..n).map(|i| format!("{}-j{i}", env.prefix)).collect();
    {
        let mut c = env.conn().await;
        for chunk in jobs.chunks(100) {
            let mut pipe = redis::pipe();
            for id in chunk {
                let spec = serde_json::json!({"id": id, "image": image(), "command": "sleep 0.3; echo ok"});
                pipe.xadd(env.keys.jobs("default"), "*", &[("job", spec.to_string())])
                    .ignore();
            }
            let _: () = pipe.query_async(&mut c).await.unwrap();
        }
    }

    // Every worker is up and claiming before the chaos starts.
    for (id, w) in ids.iter().zip(&workers) {
        env.wait_until_worker_ready(id, Some(w.id())).await;
    }

    // Chaos until every job has ended, paced by progress rather than by the clock:
    // each round waits until `step` more jobs have ended (bounded; this asserts
    // nothing about speed), then SIGKILLs (every other round, six at most) a worker
    // whose heartbeat says it is running a job. Redis is killed once, half-way.
    let step = (n / 20).max(1);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    let mut redis_restarted = false;
    let mut finished = 0;
    let mut round = 0;
    while finished < n {
        let target = (finished + step).min(n);
        let progress = tokio::time::timeout(GUARD, async {
            loop {
                let f = count_finished(&env, &jobs).await;
                if f >= target {
                    return f;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        match progress {
            Ok(f) => finished = f,
            Err(_) => {
                // Stuck: the checks below say which statuses the jobs are left in.
                eprintln!("soak: fewer than {target} jobs ended within {GUARD:?} (round {round})");
                break;
            }
        }
        if finished == n {
            break;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if round % 2 == 0 && kills < 6 {
            // The busy workers, by their latest heartbeat (pid and running jobs).
            let beats = env.beats().await;
            let busy: Vec<usize> = (0..workers.len())
                .filter(|&i| {
                    beats.iter().any(|b| {
                        b["pid"].as_u64() == Some(workers[i].id().into())
                            && b["running"].as_array().is_some_and(|r| !r.is_empty())
                    })
                })
                .collect();
            if !busy.is_empty() {
                let victim = busy[(rng % busy.len() as u64) as usize];
                workers[victim].kill().unwrap();
                workers[victim].wait().unwrap();
                workers[victim] = env.spawn_worker(&ids[victim], &[]);
                kills += 1;
            }
        }
        if !redis_restarted && finished >= n / 2 {
            let server = env.server.as_mut().unwrap();
            server.kill();
            // Down until the workers have noticed and are trying to reconnect.
            server.wait_for_reconnect_attempts(3).await;
            server.restart();
            redis_restarted = true;
        }
        round += 1;
    }

    let mut c = env.conn().await;
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for id in &jobs {
        let (status, attempt): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(env.job_key(id))
            .arg("status")
            .arg("attempt")
            .query_async(&mut c)
            .await
            .unwrap();
        *statuses
            .entry(status.unwrap_or_else(|| "missing".into()))
            .or_default() += 1;
        *runs.entry(attempt.unwrap_or_default()).or_default() += 1;
    }
    eprintln!("soak: {n} jobs, {kills} worker SIGKILLs, redis restarted: {redis_restarted}; statuses {statuses:?}; runs per job {runs:?}");
    assert!(redis_restarted, "the soak must include a Redis restart");
    assert!(kills >= 1, "the soak must include killed workers");
    assert_eq!(finished, n, "every job ended: {statuses:?}");
    assert_eq!(
        statuses.get("completed").copied().unwrap_or(0),
        n,
        "{statuses:?}"
    );
    let left: usize = c.xlen(env.keys.jobs("default")).await.unwrap();
    assert_eq!(left, 0, "no entry stuck in the stream");

    for w in &workers {
        signal(w, "TERM");
    }
    for w in &mut workers {
        assert!(w.wait().unwrap().success());
    }
    // A restarted worker removes what its killed predecessor left running.
    let mut restarted: Vec<std::process::Child> =
        ids.iter().map(|id| env.spawn_worker(id, &[])).collect();
    crate::common::eventually("no container of these workers is left", || {
        ids.iter()
            .all(|id| containers_with_label(&format!("dockhand.worker={id}")).is_empty())
    })
    .await;
    for w in &restarted {
        signal(w, "TERM");
    }
    for w in &mut restarted {
        w.wait().unwrap();
    }
}

async fn count_finished(env: &Env, jobs: &[String]) -> usize {
    let Ok(mut c) = env.client.get_multiplexed_async_connection().await else {
        return 0;
    };
    let mut pipe = redis::pipe();
    for id in jobs {
        pipe.hget(env.job_key(id), "status");
    }
    let statuses: Vec<Option<String>> = pipe.query_async(&mut c).await.unwrap_or_default();
    statuses
        .iter()
        .filter(|s| matches!(s.as_deref(), Some("completed" | "aborted")))
        .count()
}
