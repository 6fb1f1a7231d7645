//! Fleet-wide limits on a `concurrency_key`: a key limited to 2 never has 3
//! containers running, across three worker processes, even while workers are
//! SIGKILLed mid-run (judged from Docker's own start and die events); a rate
//! holds a job back until the limit is lifted.

use crate::common::{cli, signal, spec, wait_until, Env};
use deadpool_redis::redis::AsyncCommands;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_two_never_runs_three_even_while_workers_die() {
    let env = Env::new();
    let out = cli(&env, &["limit", "set", "gpu", "--concurrency", "2"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Docker's own record of this deployment's containers, read live (the
    // engine keeps only its last few hundred events, and the suite makes many).
    // The deployment id, set before any worker makes one (they keep what is there).
    let deployment = format!("dep-{}", env.prefix);
    let mut c = env.conn().await;
    let _: () = c
        .set(format!("{}:deployment", env.prefix), &deployment)
        .await
        .unwrap();
    let events = Events::watch(&deployment);
    let names: Vec<String> = (0..3).map(|i| format!("{}-w{i}", env.prefix)).collect();
    // Three workers of two permits each: six containers could run, were it not for the limit.
    let mut workers: Vec<std::process::Child> =
        names.iter().map(|n| env.spawn_worker(n, &[])).collect();
    let ids: Vec<String> = (0..10).map(|i| format!("{}-g{i}", env.prefix)).collect();
    for id in &ids {
        env.xadd(
            "default",
            &spec(id, json!({"command": "sleep 2", "concurrency_key": "gpu"})),
        )
        .await;
    }
    // Twice: SIGKILL the worker of a running job, mid-run, and start it again.
    for round in 0..2 {
        let victim = wait_until("a limited job runs", || async {
            for id in &ids {
                let h = env.job(id).await;
                if h.get("status").map(String::as_str) == Some("running") {
                    if let Some(i) = names.iter().position(|n| Some(n) == h.get("worker")) {
                        return Some(i);
                    }
                }
            }
            None
        })
        .await;
        signal(&workers[victim], "KILL");
        let _ = workers[victim].wait();
        eprintln!("round {round}: killed worker {victim}");
        workers[victim] = env.spawn_worker(&names[victim], &[]);
    }
    for id in &ids {
        let h = env.finished(id).await;
        assert_eq!(h["status"], "completed", "{id}: {h:?}");
    }
    for w in &workers {
        signal(w, "TERM");
    }
    for mut w in workers {
        let _ = w.wait();
    }
    // Every container has died; then the timeline is whole.
    let text = wait_until("every container's die event arrived", || async {
        let text = events.text();
        let (starts, dies) = (
            text.matches(" start ").count(),
            text.matches(" die ").count(),
        );
        (starts >= ids.len() && starts == dies).then_some(text)
    })
    .await;
    let mut timeline: Vec<(i64, i32)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let t: i64 = parts.next()?.parse().ok()?;
            let delta = match parts.next()? {
                "start" => 1,
                "die" => -1,
                _ => return None,
            };
            Some((t, delta))
        })
        .collect();
    // At one instant, a die is counted before a start.
    timeline.sort();
    let (mut alive, mut most) = (0, 0);
    for (_, delta) in &timeline {
        alive += delta;
        most = most.max(alive);
    }
    assert!(
        most <= 2,
        "{most} containers of key gpu ran at once:\n{text}"
    );
    assert_eq!(most, 2, "the limit's two slots were used at once:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_holds_jobs_back_until_it_is_lifted() {
    let env = Env::new();
    let out = cli(&env, &["limit", "set", "api-x", "--rate", "2/h"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&env, &["limit", "set", "api-x", "--rate", "2/fortnight"]).await;
    assert_eq!(out.status.code(), Some(2), "a bad rate is a usage error");
    let worker = env.worker(&["default"], 2);
    let ids: Vec<String> = (0..3).map(|i| format!("{}-r{i}", env.prefix)).collect();
    for id in &ids {
        env.xadd(
            "default",
            &spec(id, json!({"command": "true", "concurrency_key": "api-x"})),
        )
        .await;
    }
    // Two run; the third waits, scheduled, for the window to have room.
    let mut done = 0;
    let mut waiting = None;
    for id in &ids {
        let h = wait_until("each job runs or waits", || async {
            let h = env.job(id).await;
            matches!(
                h.get("status").map(String::as_str),
                Some("completed" | "scheduled")
            )
            .then_some(h)
        })
        .await;
        if h["status"] == "completed" {
            done += 1;
        } else {
            waiting = Some(id.clone());
        }
    }
    let waiting = waiting.expect("one job waits under the rate");
    assert_eq!(done, 2);
    let out = cli(&env, &["limit", "list", "--json"]).await;
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        row["limit"],
        json!({"rate": 2, "per_seconds": 3600}),
        "{row}"
    );
    let out = cli(&env, &["limit", "rm", "api-x"]).await;
    assert!(out.status.success());
    assert_eq!(env.finished(&waiting).await["status"], "completed");
    assert_eq!(
        env.job(&waiting).await["attempt"],
        "1",
        "waiting used no attempt"
    );
    worker.stop().await;
}

/// `docker events` for one deployment's containers (start and die), read as they
/// come, from a little before the watch began.
struct Events {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Events {
    fn watch(deployment: &str) -> Events {
        use std::io::BufRead;
        let since = (chrono::Utc::now().timestamp() - 1).to_string();
        let mut child = std::process::Command::new("docker")
            .args([
                "events",
                "--since",
                &since,
                "--filter",
                "type=container",
                "--filter",
                &format!("label=dockhand.deployment={deployment}"),
                "--filter",
                "event=start",
                "--filter",
                "event=die",
                "--format",
                "{{.TimeNano}} {{.Action}} {{.Actor.ID}}",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("docker events runs");
        let out = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push_str(" \n");
            }
        });
        Events { child, lines }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
