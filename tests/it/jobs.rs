//! Running image jobs: outcomes, limits, the container's environment.

use crate::common::{containers_with_label, spec, Env};
use futures_util::StreamExt;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_lines_complete_with_gap_free_seq_live_and_stored() {
    let env = Env::new();
    let id = format!("{}-three", env.prefix);
    let mut pubsub = env.client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(env.keys.log_channel(&id)).await.unwrap();
    pubsub.subscribe(env.keys.events_channel()).await.unwrap();
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "echo one; echo two; echo three"}),
        ),
    )
    .await;

    let mut live = Vec::new();
    let mut events = Vec::new();
    let mut bodies = Vec::new();
    let mut messages = pubsub.on_message();
    while events.last().map(String::as_str) != Some("job.completed") {
        let msg = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        if msg.get_channel_name().ends_with(":events") {
            if v["data"]["id"] == id.as_str() {
                events.push(v["type"].as_str().unwrap().to_string());
                bodies.push(msg.get_payload::<String>().unwrap());
            }
        } else {
            assert_eq!(v["job"], id.as_str());
            assert!(v["ts"].as_str().unwrap().ends_with('Z'));
            live.extend(crate::common::published_lines(&v));
        }
    }
    let expected: Vec<(u64, String, String)> = vec![
        (1, "stdout".into(), "one".into()),
        (2, "stdout".into(), "two".into()),
        (3, "stdout".into(), "three".into()),
    ];
    assert_eq!(live, expected, "lines seen by a subscriber");
    assert_eq!(env.log(&id).await, expected, "lines in the stored stream");
    assert_eq!(events, vec!["job.queued", "job.started", "job.completed"]);
    // The same events, in the same order, kept in the events stream for late readers.
    let kept: Vec<(String, String)> = events_kept(&env)
        .await
        .into_iter()
        .filter(|(_, job, _)| job == &id)
        .map(|(kind, _, body)| (kind, body))
        .collect();
    let published: Vec<(String, String)> = events.iter().cloned().zip(bodies).collect();
    assert_eq!(kept, published);

    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["exit_code"], "0");
    assert_eq!(job["reason"], "");
    assert_eq!(job["attempt"], "1");
    assert_eq!(job["queue"], "default");
    assert_eq!(job["worker"], env.prefix);
    assert!(job["finished_at"] >= job["started_at"] && job["started_at"] >= job["created_at"]);
    let mut c = env.conn().await;
    let ttl: i64 = deadpool_redis::redis::cmd("TTL")
        .arg(env.job_key(&id))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 604_800,
        "a finished job expires after the retention (ttl {ttl})"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_exit_is_aborted_with_its_code() {
    let env = Env::new();
    let id = format!("{}-exit3", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": ["sh", "-c", "echo failing >&2; exit 3"]}),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "aborted");
    assert_eq!(job["reason"], "exit_code");
    assert_eq!(job["exit_code"], "3");
    assert!(
        job["error"].contains("exited with code 3"),
        "{}",
        job["error"]
    );
    assert_eq!(env.lines(&id, "stderr").await, vec!["failing"]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_stops_the_container_and_removes_it() {
    let env = Env::new();
    let id = format!("{}-slow", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": "echo started; sleep 60", "limits": {"timeout_seconds": 1}})),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "aborted");
    assert_eq!(job["reason"], "timeout");
    assert!(
        job["error"].contains("timed out after 1 s"),
        "{}",
        job["error"]
    );
    assert_eq!(env.lines(&id, "stdout").await, vec!["started"]);
    assert!(env.lines(&id, "system").await[0].contains("timed out"));
    // Removed beside the outcome's write, not before it: wait for it.
    let label = format!("dockhand.job={id}");
    crate::common::eventually("the container is gone", || {
        containers_with_label(&label).is_empty()
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_named() {
    let env = Env::new();
    let id = format!("{}-noimage", env.prefix);
    let worker = env.worker(&["default"], 1);
    let missing = "dockhand-test/does-not-exist:1";
    env.xadd(
        "default",
        &serde_json::json!({"id": id, "image": missing, "command": "true"}).to_string(),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "aborted");
    assert_eq!(job["reason"], "image_not_found");
    assert!(job["error"].contains(missing), "{}", job["error"]);
    // Removed beside the outcome's write, not before it: wait for it.
    let label = format!("dockhand.job={id}");
    crate::common::eventually("the job's container is removed", || {
        containers_with_label(&label).is_empty()
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_runs_with_its_interpreter_and_sees_its_environment() {
    let env = Env::new();
    let id = format!("{}-script", env.prefix);
    let worker = env.worker(&["default"], 1);
    let script = "echo \"job $DOCKHAND_JOB_ID attempt $DOCKHAND_ATTEMPT\"\necho \"greeting $GREETING\"\npwd\nls /sys/class/net\nid -u\n";
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({
                "script": {"content": script, "filename": "run.sh", "interpreter": "sh -e"},
                "env": {"GREETING": "hello"},
                "user": "65534",
            }),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(
        env.lines(&id, "stdout").await,
        vec![
            format!("job {id} attempt 1"),
            "greeting hello".into(),
            "/dockhand/work".into(),
            "lo".into(),
            "65534".into()
        ],
        "env, script location, no network but loopback, user override"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_memory_says_so() {
    let env = Env::new();
    let id = format!("{}-oom", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "x=$(head -c 200m /dev/zero | tr '\\0' a); echo ${#x}", "limits": {"memory": "16m"}}),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "aborted");
    assert_eq!(job["reason"], "exit_code");
    assert_eq!(job["exit_code"], "137");
    assert!(
        job["error"].contains("OOMKilled") && job["error"].contains("16 MiB"),
        "{}",
        job["error"]
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_does_not_exist_exits_127() {
    let env = Env::new();
    let id = format!("{}-nocmd", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": ["no-such-program", "x"]}),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "aborted");
    assert_eq!(job["reason"], "exit_code");
    assert_eq!(job["exit_code"], "127");
    assert!(job["error"].contains("no-such-program"), "{}", job["error"]);
    // Removed beside the outcome's write, not before it: wait for it.
    let label = format!("dockhand.job={id}");
    crate::common::eventually("the job's container is removed", || {
        containers_with_label(&label).is_empty()
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_refusal_is_reported_with_the_daemons_message() {
    let env = Env::new();
    let id = format!("{}-nouser", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "true", "user": "nosuchuser"}),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "aborted");
    assert_eq!(job["reason"], "docker_error");
    assert!(job["error"].contains("nosuchuser"), "{}", job["error"]);
    // Removed beside the outcome's write, not before it: wait for it.
    let label = format!("dockhand.job={id}");
    crate::common::eventually("the job's container is removed", || {
        containers_with_label(&label).is_empty()
    })
    .await;
    worker.stop().await;
}

/// Prints `start <t>` and `end <t>` around what it runs, `t` being /proc/uptime:
/// one clock for every container on the host, in hundredths of a second.
fn timed(body: &str) -> String {
    format!("read t _ < /proc/uptime; echo start $t; {body}; read t _ < /proc/uptime; echo end $t")
}

/// The (start, end) a job printed with [`timed`].
async fn printed_times(env: &Env, id: &str) -> (f64, f64) {
    let lines = env.lines(id, "stdout").await;
    let at = |what: &str| -> f64 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(what)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("job {id} printed no `{what} <time>`: {lines:?}"))
    };
    (at("start"), at("end"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_run_at_once_with_concurrency_two() {
    let env = Env::new();
    let a = format!("{}-a", env.prefix);
    let b = format!("{}-b", env.prefix);
    let worker = env.worker(&["default"], 2);
    // Each job holds until the test lets it go (a file appears; 2 minutes at most),
    // so they can only both be running if the worker runs two at once.
    let hold =
        "i=0; until [ -e /dockhand/work/go ] || [ $i -ge 1200 ]; do sleep 0.1; i=$((i+1)); done";
    for id in [&a, &b] {
        env.xadd(
            "default",
            &spec(id, serde_json::json!({"command": timed(hold)})),
        )
        .await;
    }
    for id in [&a, &b] {
        env.wait_for_log_line(id, "stdout", "start").await;
    }
    for id in [&a, &b] {
        let containers = containers_with_label(&format!("dockhand.job={id}"));
        assert_eq!(containers.len(), 1, "{id}: {containers:?}");
        let out = std::process::Command::new("docker")
            .args(["exec", &containers[0], "touch", "/dockhand/work/go"])
            .output()
            .unwrap();
        assert!(out.status.success(), "docker exec: {out:?}");
    }
    let (ja, jb) = (env.finished(&a).await, env.finished(&b).await);
    assert_eq!(
        (ja["status"].as_str(), jb["status"].as_str()),
        ("completed", "completed"),
        "{ja:?} {jb:?}"
    );
    // Overlap: each started before the other ended, by the jobs' own clock...
    let ((a0, a1), (b0, b1)) = (printed_times(&env, &a).await, printed_times(&env, &b).await);
    assert!(a0 < b1 && b0 < a1, "a ran {a0}..{a1}, b {b0}..{b1}");
    // ...and by the job hashes (RFC 3339 UTC strings of one width sort by time).
    assert!(
        ja["started_at"] < jb["finished_at"] && jb["started_at"] < ja["finished_at"],
        "{ja:?} {jb:?}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_runs_jobs_one_after_another() {
    let env = Env::new();
    let a = format!("{}-a", env.prefix);
    let b = format!("{}-b", env.prefix);
    let worker = env.worker(&["default"], 1);
    // Each runs a while (its own sleep), so that an overlap would show in the times.
    for id in [&a, &b] {
        env.xadd(
            "default",
            &spec(id, serde_json::json!({"command": timed("sleep 1")})),
        )
        .await;
    }
    let (ja, jb) = (env.finished(&a).await, env.finished(&b).await);
    assert_eq!(
        (ja["status"].as_str(), jb["status"].as_str()),
        ("completed", "completed"),
        "{ja:?} {jb:?}"
    );
    // No overlap: whichever started first ended before the other started, by the
    // jobs' own clock and by the job hashes.
    let (ta, tb) = (printed_times(&env, &a).await, printed_times(&env, &b).await);
    let (first, then) = if ta.0 <= tb.0 { (ta, tb) } else { (tb, ta) };
    assert!(
        then.0 >= first.1,
        "one permit means no overlap: ran {first:?} and {then:?}"
    );
    let (first, then) = if ja["started_at"] <= jb["started_at"] {
        (&ja, &jb)
    } else {
        (&jb, &ja)
    };
    assert!(
        then["started_at"] >= first["finished_at"],
        "one permit means no overlap: {ja:?} {jb:?}"
    );
    worker.stop().await;
}

/// The events stream, oldest first: (type, job, event JSON).
async fn events_kept(env: &Env) -> Vec<(String, String, String)> {
    let mut c = env.conn().await;
    let reply: deadpool_redis::redis::streams::StreamRangeReply =
        deadpool_redis::redis::AsyncCommands::xrange_all(&mut c, env.keys.events("default"))
            .await
            .unwrap();
    reply
        .ids
        .iter()
        .map(|e| {
            (
                e.get::<String>("type").unwrap(),
                e.get::<String>("job").unwrap(),
                e.get::<String>("event").unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_stream_is_capped() {
    let env = Env::new();
    let worker = crate::common::Worker::start(env.settings(
        &["default"],
        2,
        &[("DOCKHAND__JOBS__EVENTS_MAX_LEN", "50")],
    ));
    // Refused at validation: two events each (queued, aborted), no container.
    let mut c = env.conn().await;
    let mut pipe = deadpool_redis::redis::pipe();
    for i in 0..300 {
        let job =
            serde_json::json!({"id": format!("{}-{i}", env.prefix), "image": "x", "command": []});
        pipe.xadd(env.keys.jobs("default"), "*", &[("job", job.to_string())])
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    env.finished(&format!("{}-299", env.prefix)).await;
    for i in 0..300 {
        env.finished(&format!("{}-{i}", env.prefix)).await;
    }
    let kept = events_kept(&env).await;
    // 600 events were published; `MAXLEN ~` trims whole stream nodes (100 entries
    // each by default), so somewhat more than the cap may stay, never all.
    assert!(
        (50..=200).contains(&kept.len()),
        "{} events kept",
        kept.len()
    );
    assert_eq!(
        kept.last().map(|(kind, _, _)| kind.as_str()),
        Some("job.aborted"),
        "the newest are kept"
    );
    worker.stop().await;
}

/// With `worker.pull = "missing"`, a registry that accepts the connection and
/// never answers (here a listener on loopback) does not hold the job's slot: the
/// pull counts against the job's time limit, and the job ends `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_from_a_stalled_registry_ends_at_the_jobs_time_limit() {
    let env = Env::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            let _ = seen.send(());
            open.push(conn); // held open, never answered
        }
    });
    let worker = crate::common::Worker::start(env.settings(
        &["default"],
        1,
        &[("DOCKHAND__WORKER__PULL", "missing")],
    ));
    let id = format!("{}-stalled", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({
            "id": id, "image": format!("127.0.0.1:{port}/stalled:1"), "command": "true",
            "limits": {"timeout_seconds": 2},
        })
        .to_string(),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["reason"], "timeout", "{job:?}");
    assert!(
        job["error"].contains("was not pulled within 2 s (limits.timeout_seconds)"),
        "{}",
        job["error"]
    );
    assert!(
        connected.try_recv().is_ok(),
        "the engine did reach the registry"
    );
    held.abort();
    worker.stop().await;
}
