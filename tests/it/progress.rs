//! Progress from inside a job (docs/results.md, "Progress"): POSTed to
//! PROGRESS_URL or written to progress.json, it reaches the job hash, the events
//! stream and the subscribers that opted in. The container waits for files the
//! test puts in it (`docker exec touch`) once the hash shows a report, so no
//! step depends on how fast anything runs.

use crate::common::receiver::Receiver;
use crate::common::{cli, containers_with_label, image, wait_until, Env};
use deadpool_redis::redis::AsyncCommands;
use dockhand::webhook::Secret;

/// Shell: post `$1` as JSON to PROGRESS_URL, printing the answer (or wget's error).
const POST: &str = r#"post() { wget -q -O- --header 'Content-Type: application/json' --post-data "$1" "$PROGRESS_URL" 2>&1; echo; }
wait_for() { n=0; until [ -e "$1" ]; do n=$((n+1)); [ $n -lt 1200 ] || exit 9; sleep 0.1; done; }"#;

/// The job's `progress` field, parsed, once it has `progress` = `want`.
async fn hash_shows(env: &Env, id: &str, want: f64) -> serde_json::Value {
    wait_until(&format!("progress {want} in the hash of {id}"), || async {
        let v: serde_json::Value = serde_json::from_str(env.job(id).await.get("progress")?).ok()?;
        (v["progress"].as_f64() == Some(want)).then_some(v)
    })
    .await
}

/// Lets the job's container go on past `wait_for <file>`.
fn touch(id: &str, file: &str) {
    let container = containers_with_label(&format!("dockhand.job={id}"));
    assert_eq!(container.len(), 1, "one container for {id}: {container:?}");
    let ok = std::process::Command::new("docker")
        .args(["exec", &container[0], "touch", file])
        .status()
        .unwrap()
        .success();
    assert!(ok, "docker exec touch {file}");
}

/// The events kept in the stream for `id`, as (type, body).
async fn events(env: &Env, id: &str) -> Vec<(String, serde_json::Value)> {
    let mut c = env.conn().await;
    let reply: deadpool_redis::redis::streams::StreamRangeReply =
        c.xrange_all(env.keys.events("default")).await.unwrap();
    reply
        .ids
        .iter()
        .filter(|e| e.get::<String>("job").as_deref() == Some(id))
        .map(|e| {
            let body: String = e.get("event").unwrap();
            (e.get("type").unwrap(), serde_json::from_str(&body).unwrap())
        })
        .collect()
}

fn progress_values(events: &[(String, serde_json::Value)]) -> Vec<f64> {
    events
        .iter()
        .filter(|(t, _)| t == "job.progress")
        .map(|(_, b)| b["data"]["progress"].as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_posted_to_progress_url_reaches_the_stream_and_the_hash() {
    let env = Env::new();
    // Every report its own event, to see each one; the rate limit is tested below.
    let settings = env.settings(
        &["default"],
        1,
        &[("DOCKHAND__JOBS__PROGRESS_INTERVAL_MS", "0")],
    );
    let worker = crate::common::Worker::start(settings);
    let id = format!("{}-posted", env.prefix);
    let command = format!(
        r#"{POST}
post '{{"progress":0.25,"message":"frame 1/4"}}'
wait_for /tmp/go1
post '{{"progress":0.5,"message":"frame 2/4"}}'
wait_for /tmp/go2
post '{{"progress":2}}'
post '{{"progress":0.5,"eta":3}}'
post '{{"progress":1,"message":"done"}}'"#
    );
    let spec =
        serde_json::json!({"id": id, "image": image(), "network": "bridge", "command": command});
    env.xadd("default", &spec.to_string()).await;
    let first = hash_shows(&env, &id, 0.25).await;
    assert_eq!(first["message"], "frame 1/4");
    assert!(first["at"].as_str().unwrap().ends_with('Z'), "{first}");
    touch(&id, "/tmp/go1");
    hash_shows(&env, &id, 0.5).await;
    touch(&id, "/tmp/go2");
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");

    let last: serde_json::Value = serde_json::from_str(&job["progress"]).unwrap();
    assert_eq!(
        (last["progress"].as_f64(), last["message"].as_str()),
        (Some(1.0), Some("done"))
    );
    let stdout = env.lines(&id, "stdout").await;
    let answers: Vec<&String> = stdout.iter().filter(|l| !l.is_empty()).collect();
    assert_eq!(answers.len(), 5, "{stdout:?}");
    assert!(answers[0].contains(r#"{"ok":true}"#), "{stdout:?}");
    assert!(answers[2].contains("400"), "out of range: {stdout:?}");
    assert!(answers[3].contains("400"), "an unknown field: {stdout:?}");

    let events = events(&env, &id).await;
    assert_eq!(progress_values(&events), vec![0.25, 0.5, 1.0], "{events:?}");
    let (_, body) = events.iter().find(|(t, _)| t == "job.progress").unwrap();
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["message"], "frame 1/4");
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types.last(),
        Some(&"job.completed"),
        "progress comes before the end: {types:?}"
    );

    let status = cli(&env, &["status", &id]).await;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("progress") && l.contains("\"done\"")),
        "{text}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_events_are_rate_limited_and_the_last_report_is_never_lost() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-burst", env.prefix);
    let command = format!(
        r#"{POST}
i=1; while [ $i -le 40 ]; do post "{{\"progress\":0.0$i}}" > /dev/null; i=$((i+1)); done
post '{{"progress":1,"message":"last"}}'"#
    );
    let spec =
        serde_json::json!({"id": id, "image": image(), "network": "bridge", "command": command});
    env.xadd("default", &spec.to_string()).await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    let last: serde_json::Value = serde_json::from_str(&job["progress"]).unwrap();
    assert_eq!(last["progress"].as_f64(), Some(1.0));
    let values = progress_values(&events(&env, &id).await);
    assert_eq!(
        values.last(),
        Some(&1.0),
        "the last report is published: {values:?}"
    );
    // One event per second of the run (jobs.progress_interval_ms), plus the first
    // and the flush at the end, whatever the job posted.
    let at = |f: &str| chrono::DateTime::parse_from_rfc3339(&job[f]).unwrap();
    let ran = (at("finished_at") - at("started_at")).num_seconds().max(0) as usize;
    assert!(
        values.len() <= ran + 3,
        "{} events in {ran} s: {values:?}",
        values.len()
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_network_reports_progress_in_progress_json() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    progress_json_is_read(&env).await;
    worker.stop().await;
}

/// The same, with the output folder copied out through the Docker API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_network_reports_progress_in_progress_json_when_copied() {
    let env = Env::new();
    let worker = crate::common::Worker::start(env.settings(
        &["default"],
        1,
        &[("DOCKHAND__WORKER__JOB_FOLDERS", "copy")],
    ));
    progress_json_is_read(&env).await;
    worker.stop().await;
}

async fn progress_json_is_read(env: &Env) {
    let id = format!("{}-file", env.prefix);
    let wait_for = POST.lines().nth(1).unwrap();
    let command = format!(
        r#"{wait_for}
cd /dockhand/output
echo '{{"progress":0.5,"message":"half"}}' > progress.json
wait_for /tmp/go1
rm progress.json; mkfifo progress.json
wait_for /tmp/go2
rm progress.json; echo '{{"progress":1,"message":"whole"}}' > progress.json"#
    );
    let spec =
        serde_json::json!({"id": id, "image": image(), "network": "none", "command": command});
    env.xadd("default", &spec.to_string()).await;
    // Read while the container runs: it waits until the hash has it.
    assert_eq!(hash_shows(env, &id, 0.5).await["message"], "half");
    touch(&id, "/tmp/go1");
    // A FIFO is no report, said once in the job's log.
    env.wait_for_log_line(&id, "system", "progress.json ignored: it is a FIFO")
        .await;
    touch(&id, "/tmp/go2");
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    // Written just before the exit: read once more after it.
    let last: serde_json::Value = serde_json::from_str(&job["progress"]).unwrap();
    assert_eq!(last["message"], "whole");
    let values = progress_values(&events(env, &id).await);
    assert_eq!(values.first(), Some(&0.5), "{values:?}");
    assert_eq!(values.last(), Some(&1.0), "{values:?}");
    assert!(
        !job["files"].contains("progress.json"),
        "not a result file: {job:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_names_job_progress_gets_it_signed() {
    let env = Env::new();
    let receiver = Receiver::start(&[]).await;
    let out = cli(
        &env,
        &[
            "subscriber",
            "add",
            "watcher",
            &receiver.url(),
            "--events",
            "job.progress",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning: no webhook"),
        "job.progress is delivered"
    );
    let secret: Secret = stdout
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("a generated secret")
        .parse()
        .unwrap();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-hooked", env.prefix);
    let command = format!("{POST}\npost '{{\"progress\":0.75,\"message\":\"nearly\"}}'");
    let spec =
        serde_json::json!({"id": id, "image": image(), "network": "bridge", "command": command});
    env.xadd("default", &spec.to_string()).await;
    let seen = receiver.wait_for(1).await;
    seen[0].assert_signed(&secret);
    let body = seen[0].json();
    assert_eq!(body["type"], "job.progress");
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["progress"], 0.75);
    assert_eq!(body["data"]["message"], "nearly");
    assert_eq!(env.finished(&id).await["status"], "completed");
    // Durable like every delivery: recorded with its attempt, for `webhooks attempts`.
    let mut c = env.conn().await;
    let made: Vec<String> = c.smembers(env.keys.job_deliveries(&id)).await.unwrap();
    assert_eq!(
        made.len(),
        1,
        "one report, one event, one delivery: {made:?}"
    );
    worker.stop().await;
}
