//! Log lines: caps, long lines, both streams.

use crate::common::{spec, Env};
use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_cap_keeps_a_prefix_and_says_so() {
    let env = Env::new();
    let id = format!("{}-cap", env.prefix);
    let worker = env.worker(&["default"], 1);
    // 200 lines of 9 bytes each ("line 0001"); only the text counts.
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": "i=0; while [ $i -lt 200 ]; do printf 'line %04d\\n' $i; i=$((i+1)); done", "limits": {"log_bytes": 95}})),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed");
    let log = env.log(&id).await;
    let seqs: Vec<u64> = log.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "seq has no gaps"
    );
    let stdout: Vec<String> = log
        .iter()
        .filter(|(_, s, _)| s == "stdout")
        .map(|(_, _, l)| l.clone())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("line {i:04}")).collect();
    assert_eq!(
        stdout, expected,
        "9 bytes each: the first 10 lines fit in 95 bytes"
    );
    let system: Vec<&str> = log
        .iter()
        .filter(|(_, s, _)| s == "system")
        .map(|(_, _, l)| l.as_str())
        .collect();
    assert_eq!(system.len(), 1);
    assert!(system[0].contains("log limit reached"), "{system:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_split_and_marked() {
    let env = Env::new();
    let id = format!("{}-long", env.prefix);
    let settings = env.settings(
        &["default"],
        1,
        &[("DOCKHAND__JOBS__MAX_LINE_BYTES", "100")],
    );
    let worker = crate::common::Worker::start(settings);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "head -c 250 /dev/zero | tr '\\0' x; echo; echo short"}),
        ),
    )
    .await;
    assert_eq!(env.finished(&id).await["status"], "completed");
    let mut c = env.conn().await;
    let reply: redis::streams::StreamRangeReply = c.xrange_all(env.log_key(&id)).await.unwrap();
    // A piece marked partial is an entry of its own; the last piece may share
    // one with the lines after it (joined by "\n").
    let parts: Vec<(usize, bool)> = reply
        .ids
        .iter()
        .flat_map(|e| {
            let line = e.get::<String>("line").unwrap();
            if e.get::<String>("partial").is_some() {
                vec![(line.len(), true)]
            } else {
                line.split('\n').map(|l| (l.len(), false)).collect()
            }
        })
        .collect();
    assert_eq!(
        parts,
        vec![(100, true), (100, true), (50, false), (5, false)]
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_are_kept_apart_and_a_last_line_without_newline_is_kept() {
    let env = Env::new();
    let id = format!("{}-streams", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "echo out; echo err >&2; printf 'no newline'"}),
        ),
    )
    .await;
    assert_eq!(env.finished(&id).await["status"], "completed");
    assert_eq!(env.lines(&id, "stdout").await, vec!["out", "no newline"]);
    assert_eq!(env.lines(&id, "stderr").await, vec!["err"]);
    worker.stop().await;
}

/// A job that writes faster than the worker reads: Docker must keep all of it
/// until the worker has read it (a daemon's default log rotation would drop the
/// start), and every line arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_job_loses_no_line() {
    let env = Env::new();
    let id = format!("{}-chatty", env.prefix);
    let worker = env.worker(&["default"], 1);
    let n = 450_000u64; // about 34 MB of Docker's json-file log: past a 3 x 10 MB rotation
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": format!("seq 1 {n}"), "limits": {"log_bytes": "64m"}}),
        ),
    )
    .await;
    // A long job by design: a generous guard against a hang, not a speed limit.
    let job = env.finished_within(&id, Duration::from_secs(600)).await;
    assert_eq!(job["status"], "completed");
    let log = env.log(&id).await;
    let expected: Vec<(u64, String, String)> = (1..=n)
        .map(|i| (i, "stdout".to_string(), i.to_string()))
        .collect();
    assert!(
        log == expected,
        "one stored line per printed line, in order"
    );
    // `seq` writes blocks of hundreds of lines: those that reach the worker
    // together share an entry, so Redis stores far fewer entries than lines.
    let entries = env.log_entries(&id).await;
    assert!(
        (entries.len() as u64) * 2 < n,
        "{} entries for {n} lines",
        entries.len()
    );
    assert!(entries.iter().all(|(_, count, _, text)| {
        *count as usize == text.split('\n').count() && text.len() <= 65536
    }));
    worker.stop().await;
}

/// A chatty job writing to both streams: a subscriber gets every line once, in
/// `seq` order without a gap, and exactly what the stored stream holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_job_reaches_a_subscriber_whole_and_as_stored() {
    let env = Env::new();
    let id = format!("{}-live", env.prefix);
    let mut pubsub = env.client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(env.keys.log_channel(&id)).await.unwrap();
    let worker = env.worker(&["default"], 1);
    let n = 50_000u64;
    // stderr lines among the stdout ones, and a last line without a newline.
    let command = format!(
        "seq 1 {n} | while read i; do echo $i; case $i in *000) echo e$i >&2;; esac; done; printf end"
    );
    env.xadd(
        "default",
        &spec(&id, serde_json::json!({"command": command})),
    )
    .await;
    let job = env.finished_within(&id, Duration::from_secs(600)).await;
    assert_eq!(job["status"], "completed");
    let stored = env.log(&id).await;
    let mut live = Vec::new();
    let mut messages = pubsub.on_message();
    while live.len() < stored.len() {
        let msg = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .expect("every stored line is published")
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        live.extend(crate::common::published_lines(&v));
    }
    assert_eq!(live, stored, "live and stored are the same lines");
    let seqs: Vec<u64> = stored.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    let mut out: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    out.push("end".into());
    let err: Vec<String> = (1..=n / 1000).map(|k| format!("e{}", k * 1000)).collect();
    let of = |stream: &str| -> Vec<String> {
        stored
            .iter()
            .filter(|(_, s, _)| s == stream)
            .map(|(_, _, l)| l.clone())
            .collect()
    };
    assert_eq!(of("stdout"), out);
    assert_eq!(of("stderr"), err);
    assert_eq!(stored.len(), out.len() + err.len(), "{:?}", of("system"));
    worker.stop().await;
}

/// When Redis stops taking writes for a while, the worker lets the container's
/// attach stream go and reads on from Docker's log: no line is lost or repeated,
/// `seq` stays gap-free, and a `system` line says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_reads_on_from_the_log_losing_nothing() {
    // A server of its own: the pause must not hold up other tests' workers.
    let env = Env::own_server();
    let id = format!("{}-stall", env.prefix);
    // A lease that outlasts the pause (the heartbeat cannot write meanwhile).
    let settings = env.settings(
        &["default"],
        1,
        &[("DOCKHAND__WORKER__LEASE_SECONDS", "60")],
    );
    let worker = crate::common::Worker::start(settings);
    // Far more than Docker and the worker buffer between the job and Redis, so
    // the job still writes when its first line is stored.
    let n = 600_000u64;
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": format!("seq 1 {n}"), "limits": {"log_bytes": "64m"}}),
        ),
    )
    .await;
    let (e, key) = (&env, env.log_key(&id));
    crate::common::wait_until("the first line stored", || {
        let key = key.clone();
        async move {
            let len: u64 = e.conn().await.xlen(key).await.unwrap();
            (len > 0).then_some(())
        }
    })
    .await;
    // Writes wait 2.5 s: past the reader's 1 s, under the 5 s command timeout.
    let mut c = env.conn().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2500)
        .arg("WRITE")
        .query_async(&mut c)
        .await
        .unwrap();
    let job = env.finished_within(&id, Duration::from_secs(600)).await;
    assert_eq!(job["status"], "completed");
    let log = env.log(&id).await;
    let seqs: Vec<u64> = log.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(seqs, (1..=log.len() as u64).collect::<Vec<_>>());
    let system: Vec<&str> = log
        .iter()
        .filter(|(_, s, _)| s == "system")
        .map(|(_, _, l)| l.as_str())
        .collect();
    assert_eq!(system.len(), 1, "{system:?}");
    assert!(
        system[0].contains("reading the rest of the output from the container's log"),
        "{system:?}"
    );
    let out: Vec<u64> = log
        .iter()
        .filter(|(_, s, _)| s == "stdout")
        .map(|(_, _, l)| l.parse().unwrap())
        .collect();
    assert_eq!(out.len() as u64, n, "one stored line per printed line");
    assert!(out.iter().copied().eq(1..=n), "every number once, in order");
    worker.stop().await;
}

/// Lines are published only while someone listens: a job nobody watches costs
/// Redis no `PUBLISH` a line, and one watched gets every line live. Both keep
/// every line in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_published_while_someone_listens() {
    // A server of its own: `INFO commandstats` counts this worker's commands only.
    let env = Env::own_server();
    // A line a message, so that each line is a `PUBLISH` or none.
    let settings = env.settings(&["default"], 1, &[("DOCKHAND__JOBS__LOG_ENTRY_BYTES", "0")]);
    let worker = crate::common::Worker::start(settings);
    let lines = 300u64;
    let command = format!("seq 1 {lines}");
    let publishes = || async {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut env.conn().await)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
            .map_or(0, |rest| {
                rest.split(',').next().unwrap().parse::<u64>().unwrap()
            })
    };

    let unwatched = format!("{}-unwatched", env.prefix);
    let before = publishes().await;
    env.xadd(
        "default",
        &spec(&unwatched, serde_json::json!({"command": command})),
    )
    .await;
    assert_eq!(env.finished(&unwatched).await["status"], "completed");
    let unwatched_publishes = publishes().await - before;

    let watched = format!("{}-watched", env.prefix);
    let mut pubsub = env.client.get_async_pubsub().await.unwrap();
    // Confirmed by the server when it returns: the first batch sees it.
    pubsub
        .subscribe(env.keys.log_channel(&watched))
        .await
        .unwrap();
    let before = publishes().await;
    env.xadd(
        "default",
        &spec(&watched, serde_json::json!({"command": command})),
    )
    .await;
    let mut received = Vec::new();
    {
        let mut messages = pubsub.on_message();
        while (received.len() as u64) < lines {
            let msg = tokio::time::timeout(Duration::from_secs(120), messages.next())
                .await
                .expect("a live line within 2 minutes")
                .expect("the subscription stays open");
            let body: serde_json::Value =
                serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
            if body["stream"] == "stdout" {
                received.push((
                    body["seq"].as_u64().unwrap(),
                    body["line"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    assert_eq!(env.finished(&watched).await["status"], "completed");
    let watched_publishes = publishes().await - before;

    let expected: Vec<String> = (1..=lines).map(|n| n.to_string()).collect();
    let live: Vec<String> = received.iter().map(|(_, l)| l.clone()).collect();
    assert_eq!(live, expected, "every line live, in order");
    for id in [&unwatched, &watched] {
        let stored: Vec<String> = env
            .log(id)
            .await
            .into_iter()
            .filter(|(_, s, _)| s == "stdout")
            .map(|(_, _, l)| l)
            .collect();
        assert_eq!(stored, expected, "{id}: every line stored");
    }
    // The job's events are published either way (a handful); the lines only
    // when watched.
    assert!(
        unwatched_publishes < lines,
        "no line published to nobody: {unwatched_publishes} PUBLISH calls"
    );
    assert!(
        watched_publishes >= lines,
        "every line published when watched: {watched_publishes} PUBLISH calls"
    );
    worker.stop().await;
}

/// A job's next attempt numbers its lines on from the last one stored, also
/// when that one ended an entry of several lines: `seq` stays gap-free across
/// attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_numbers_on_after_an_entry_of_several_lines() {
    let env = Env::new();
    let id = format!("{}-again", env.prefix);
    let worker = env.worker(&["default"], 1);
    env.xadd(
        "default",
        &spec(
            &id,
            serde_json::json!({"command": "seq 1 3000; [ $DOCKHAND_ATTEMPT -ge 2 ]",
                "retry": {"max_attempts": 2, "backoff_seconds": 0}}),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempt"].as_str()),
        ("completed", "2")
    );
    let log = env.log(&id).await;
    let seqs: Vec<u64> = log.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(seqs, (1..=log.len() as u64).collect::<Vec<_>>(), "{log:?}");
    let once: Vec<String> = (1..=3000).map(|i| i.to_string()).collect();
    assert_eq!(
        env.lines(&id, "stdout").await,
        [once.clone(), once].concat()
    );
    // What the first attempt stored last, before the second one's first line.
    let entries = env.log_entries(&id).await;
    let second = entries
        .iter()
        .position(|(seq, ..)| log[*seq as usize - 1].2 == "1" && *seq > 1)
        .expect("the second attempt's first line");
    // `seq` writes its last block (2561..3000 here) at once: those lines reach
    // the worker together, so the first attempt's log ends with an entry of many.
    let (_, count, stream, _) = &entries[second - 1];
    assert!(
        *count > 1 && stream == "stdout",
        "{:?}",
        entries[second - 1]
    );
    worker.stop().await;
}
