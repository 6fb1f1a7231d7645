//! Dependencies (`after`): a diamond submitted in reverse order runs in order
//! and passes files along; a failed parent aborts its dependents, naming it,
//! transitively; a parent that never arrives ends the wait.

use crate::common::{cli, spec, Env};
use std::collections::HashMap;

fn time(job: &HashMap<String, String>, field: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&job[field])
        .unwrap_or_else(|e| panic!("{field} of {job:?}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// A → B, A → C, B + C → D, submitted D first. Each job gets its direct
/// parents' files under /dockhand/input/<parent>/: B passes A's on in its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_submitted_in_reverse_runs_in_order_and_passes_files_along() {
    let env = Env::new();
    let worker = env.worker(&["default"], 4);
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| format!("{}-{n}", env.prefix));

    let d_cmd =
        format!("cat /dockhand/input/{b}/b.txt /dockhand/input/{c}/c.txt > /dockhand/output/d.txt");
    env.xadd(
        "default",
        &spec(&d, serde_json::json!({"after": [&b, &c], "command": d_cmd})),
    )
    .await;
    // D is parked before its parents exist, and says what it waits for.
    env.status_becomes(&d, "waiting").await;
    let status = cli(&env, &["status", &d]).await;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    assert!(text.contains("waiting (all_completed)"), "{text}");
    assert!(text.contains(&format!("{b}: waiting")), "{text}");

    for (id, cmd) in [
        (
            &c,
            format!("cat /dockhand/input/{a}/a.txt; echo c > /dockhand/output/c.txt"),
        ),
        (
            &b,
            format!("(cat /dockhand/input/{a}/a.txt; echo b) > /dockhand/output/b.txt"),
        ),
    ] {
        env.xadd(
            "default",
            &spec(id, serde_json::json!({"after": [&a], "command": cmd})),
        )
        .await;
    }
    env.status_becomes(&b, "waiting").await;
    env.status_becomes(&c, "waiting").await;
    env.xadd(
        "default",
        &spec(
            &a,
            serde_json::json!({"command": "sleep 0.2; echo a > /dockhand/output/a.txt"}),
        ),
    )
    .await;

    let done = env.finished(&d).await;
    let jobs: HashMap<&str, HashMap<String, String>> = [
        ("a", env.finished(&a).await),
        ("b", env.finished(&b).await),
        ("c", env.finished(&c).await),
        ("d", done),
    ]
    .into_iter()
    .collect();
    for (name, job) in &jobs {
        assert_eq!(job["status"], "completed", "{name}: {job:?}");
        assert_eq!(job["attempt"], "1", "{name} ran once: {job:?}");
    }
    // Ordering from the hashes: each started after its parents finished.
    let (ja, jb, jc, jd) = (&jobs["a"], &jobs["b"], &jobs["c"], &jobs["d"]);
    assert!(time(ja, "finished_at") <= time(jb, "started_at"));
    assert!(time(ja, "finished_at") <= time(jc, "started_at"));
    assert!(time(jb, "finished_at") <= time(jd, "started_at"));
    assert!(time(jc, "finished_at") <= time(jd, "started_at"));

    let mut conn = env.conn().await;
    let out: Vec<u8> =
        deadpool_redis::redis::AsyncCommands::hget(&mut conn, env.files_key(&d), "d.txt")
            .await
            .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "a\nb\nc\n",
        "A's file via B, and C's"
    );

    let status = cli(&env, &["status", &d, "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["after"]["state"], "released", "{v}");
    assert_eq!(v["after"]["outcome"], "ready", "{v}");
    worker.stop().await;
}

/// P fails; Q (after P) and R (after Q) are aborted `dependency_failed` naming
/// their parent; S (after P, all_finished) runs anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_parent_aborts_its_dependents_transitively() {
    let env = Env::new();
    let worker = env.worker(&["default"], 2);
    let [p, q, r, s] = ["p", "q", "r", "s"].map(|n| format!("{}-{n}", env.prefix));
    let ok = serde_json::json!("echo should-not-run");
    env.xadd(
        "default",
        &spec(&r, serde_json::json!({"after": [&q], "command": ok})),
    )
    .await;
    env.xadd(
        "default",
        &spec(&q, serde_json::json!({"after": [&p], "command": ok})),
    )
    .await;
    env.xadd(
        "default",
        &spec(
            &s,
            serde_json::json!({"after": [&p], "after_policy": "all_finished", "command": "echo ran"}),
        ),
    )
    .await;
    env.status_becomes(&q, "waiting").await;
    env.xadd(
        "default",
        &spec(&p, serde_json::json!({"command": "exit 3"})),
    )
    .await;

    let jp = env.finished(&p).await;
    assert_eq!(
        (jp["status"].as_str(), jp["reason"].as_str()),
        ("aborted", "exit_code")
    );
    for (child, parent) in [(&q, &p), (&r, &q)] {
        let job = env.finished(child).await;
        assert_eq!(job["status"], "aborted", "{job:?}");
        assert_eq!(job["reason"], "dependency_failed", "{job:?}");
        assert!(
            job["error"].contains(&format!("parent {parent} ended aborted")),
            "{job:?}"
        );
        assert_eq!(job["attempt"], "0", "never started: {job:?}");
        assert!(job["started_at"].is_empty(), "{job:?}");
    }
    let js = env.finished(&s).await;
    assert_eq!(js["status"], "completed", "{js:?}");
    worker.stop().await;
}

/// A parent that never arrives ends the wait after `jobs.dependency_wait_seconds`;
/// a job naming itself is refused at validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_never_arrives_ends_the_wait_and_a_self_reference_is_refused() {
    let env = Env::new();
    let settings = env.settings(
        &["default"],
        2,
        &[("DOCKHAND__JOBS__DEPENDENCY_WAIT_SECONDS", "1")],
    );
    let worker = crate::common::Worker::start(settings);
    let [orphan, ghost, selfish] =
        ["orphan", "ghost", "self"].map(|n| format!("{}-{n}", env.prefix));
    env.xadd(
        "default",
        &spec(
            &orphan,
            serde_json::json!({"after": [&ghost], "command": "true"}),
        ),
    )
    .await;
    env.xadd(
        "default",
        &spec(
            &selfish,
            serde_json::json!({"after": [&selfish], "command": "true"}),
        ),
    )
    .await;

    let job = env.finished(&orphan).await;
    assert_eq!(job["reason"], "dependency_failed", "{job:?}");
    assert!(
        job["error"].contains(&format!("parent {ghost} never arrived")),
        "{job:?}"
    );
    let job = env.finished(&selfish).await;
    assert_eq!(job["reason"], "invalid_spec", "{job:?}");
    assert!(job["error"].starts_with("`after[0]`"), "{job:?}");
    worker.stop().await;
}
