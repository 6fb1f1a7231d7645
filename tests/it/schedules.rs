//! Periodic jobs: three schedulers racing over the same ticks enqueue each tick
//! once; missed ticks after a gap follow `skip` or `one`; pause, resume and rm;
//! definitions written by hand with `redis-cli`, good and bad; a time zone; a
//! worker that runs a schedule's job; and the `schedule` commands of the binary.
//!
//! Time is driven by the tests: each pass is given its `now`, nothing waits for
//! a clock, except in the one test with a real worker.

use crate::common::{cli, image, Env, Worker};
use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, AsyncCommands};
use dockhand::admin::schedules;
use dockhand::config::Settings;
use dockhand::queue::cron::{self, Definition, Event, Missed};
use dockhand::queue::Keys;
use dockhand::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;

/// The `late` bound a pass gets, as `schedules.late_seconds` gives it.
const LATE: Duration = Duration::from_secs(60);

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn def(cron: &str, queue: &str, missed: Missed) -> Definition {
    Definition {
        cron: cron.into(),
        tz: "UTC".into(),
        queue: queue.into(),
        // No Docker here: the spec is only checked and enqueued.
        job: serde_json::json!({"image": "dockhand-busybox:latest", "command": "true"}),
        missed,
        paused: false,
    }
}

/// A store of its own: a scheduler with its own connections, as a worker has.
fn store(settings: &Settings) -> Store {
    Store::new(&settings.redis, Duration::from_millis(300), 1).unwrap()
}

async fn add(env: &Env, settings: &Settings, name: &str, d: Definition, now: DateTime<Utc>) {
    let mut conn = store(settings).conn().await.unwrap();
    schedules::add(&mut conn, &env.keys, settings, name, d, now)
        .await
        .unwrap();
}

/// One pass by each scheduler at `now`, all released at once; every event.
async fn pass(schedulers: &[Store], keys: &Keys, now: DateTime<Utc>) -> Vec<Event> {
    let barrier = Arc::new(Barrier::new(schedulers.len()));
    let tasks: Vec<_> = schedulers
        .iter()
        .map(|s| {
            let (s, keys, barrier) = (s.clone(), keys.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut conn = s.conn().await.unwrap();
                barrier.wait().await;
                cron::run_due(&mut conn, &keys, now, LATE).await.unwrap()
            })
        })
        .collect();
    let mut events = Vec::new();
    for t in tasks {
        events.extend(t.await.unwrap());
    }
    events
}

/// The job ids in a queue's stream, in order; each entry is `job <spec>` only.
async fn queued(env: &Env, queue: &str) -> Vec<String> {
    let mut c = env.conn().await;
    let reply: redis::streams::StreamRangeReply = c.xrange_all(env.keys.jobs(queue)).await.unwrap();
    reply
        .ids
        .iter()
        .map(|e| {
            assert_eq!(e.map.len(), 1, "a producer's entry: {:?}", e.map);
            let spec: serde_json::Value =
                serde_json::from_str(&e.get::<String>("job").unwrap()).unwrap();
            spec["id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn enqueued(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Enqueued { job, .. } => Some(job.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_cron_schedule_with_three_workers_makes_one_job_per_tick() {
    let env = Env::new();
    let settings = env.settings(&["default"], 1, &[]);
    let start = at("2030-01-01T00:00:30Z");
    add(
        &env,
        &settings,
        "every-minute",
        def("* * * * *", "default", Missed::Skip),
        start,
    )
    .await;
    let schedulers: Vec<Store> = (0..3).map(|_| store(&settings)).collect();
    let mut expected = Vec::new();
    for minute in 1..=5 {
        let tick = at("2030-01-01T00:00:00Z") + chrono::Duration::minutes(minute);
        expected.push(format!("every-minute-{}", tick.timestamp()));
        // Around each tick: before it, on it, and a few passes after it.
        for offset_ms in [-700, -1, 0, 1, 250, 999, 20_000] {
            let now = tick + chrono::Duration::milliseconds(offset_ms);
            let events = pass(&schedulers, &env.keys, now).await;
            let made = enqueued(&events);
            if offset_ms == 0 {
                assert_eq!(made, vec![expected.last().unwrap().clone()], "at the tick");
            } else {
                assert!(made.is_empty(), "{offset_ms} ms from the tick: {made:?}");
            }
        }
    }
    assert_eq!(queued(&env, "default").await, expected);
    let mut conn = store(&settings).conn().await.unwrap();
    let listed = schedules::list(&mut conn, &env.keys, at("2030-01-01T00:05:30Z"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_run.as_deref(), Some("2030-01-01T00:05:00Z"));
    assert_eq!(listed[0].next_run.as_deref(), Some("2030-01-01T00:06:00Z"));
    assert_eq!(
        listed[0].last_job.as_deref(),
        expected.last().map(String::as_str)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn missed_ticks_are_skipped_or_run_once_by_policy() {
    let env = Env::new();
    let settings = env.settings(&["default"], 1, &[]);
    let start = at("2030-01-01T00:10:00Z");
    add(
        &env,
        &settings,
        "skipper",
        def("0 * * * *", "a", Missed::Skip),
        start,
    )
    .await;
    add(
        &env,
        &settings,
        "catcher",
        def("0 * * * *", "b", Missed::One),
        start,
    )
    .await;
    let schedulers: Vec<Store> = (0..3).map(|_| store(&settings)).collect();
    let id = |name: &str, t: &str| format!("{name}-{}", at(t).timestamp());

    // A new schedule starts now: the 00:00 tick is not backfilled.
    assert!(enqueued(&pass(&schedulers, &env.keys, start).await).is_empty());
    // On time.
    let events = pass(&schedulers, &env.keys, at("2030-01-01T01:00:00.400Z")).await;
    assert_eq!(enqueued(&events).len(), 2);
    // No worker ran from 01:30 to 04:30: the 02:00, 03:00 and 04:00 ticks were missed.
    let events = pass(&schedulers, &env.keys, at("2030-01-01T04:30:00Z")).await;
    assert_eq!(
        enqueued(&events),
        vec![id("catcher", "2030-01-01T04:00:00Z")]
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Enqueued { late: true, .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Passed { name, paused: false, .. } if name == "skipper")));
    // The next tick runs as usual; one seen 30 s late (under `late`) is on time.
    pass(&schedulers, &env.keys, at("2030-01-01T05:00:01Z")).await;
    pass(&schedulers, &env.keys, at("2030-01-01T06:00:30Z")).await;

    let ticks = |name: &str, hours: &[&str]| -> Vec<String> {
        hours
            .iter()
            .map(|h| id(name, &format!("2030-01-01T{h}:00:00Z")))
            .collect()
    };
    assert_eq!(
        queued(&env, "a").await,
        ticks("skipper", &["01", "05", "06"])
    );
    assert_eq!(
        queued(&env, "b").await,
        ticks("catcher", &["01", "04", "05", "06"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_paused_schedule_passes_its_ticks_and_a_removed_one_stops() {
    let env = Env::new();
    let settings = env.settings(&["default"], 1, &[]);
    let schedulers: Vec<Store> = (0..3).map(|_| store(&settings)).collect();
    let mut conn = store(&settings).conn().await.unwrap();
    let keys = &env.keys;
    add(
        &env,
        &settings,
        "p",
        def("* * * * *", "default", Missed::One),
        at("2030-01-01T00:00:30Z"),
    )
    .await;

    assert!(schedules::set_paused(&mut conn, keys, "p", true)
        .await
        .unwrap());
    assert!(!schedules::set_paused(&mut conn, keys, "p", true)
        .await
        .unwrap());
    let listed = schedules::list(&mut conn, keys, at("2030-01-01T00:00:40Z"))
        .await
        .unwrap();
    assert!(listed[0].paused);
    let events = pass(&schedulers, keys, at("2030-01-01T00:01:00.500Z")).await;
    assert!(enqueued(&events).is_empty(), "{events:?}");
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Passed { paused: true, .. })));

    // Resumed: the tick that came while paused is not run later, even under `one`.
    assert!(schedules::set_paused(&mut conn, keys, "p", false)
        .await
        .unwrap());
    assert!(enqueued(&pass(&schedulers, keys, at("2030-01-01T00:01:10Z")).await).is_empty());
    let events = pass(&schedulers, keys, at("2030-01-01T00:02:00.500Z")).await;
    let tick = at("2030-01-01T00:02:00Z").timestamp();
    assert_eq!(enqueued(&events), vec![format!("p-{tick}")]);

    schedules::remove(&mut conn, keys, "p").await.unwrap();
    assert!(enqueued(&pass(&schedulers, keys, at("2030-01-01T00:03:00.500Z")).await).is_empty());
    assert_eq!(queued(&env, "default").await, vec![format!("p-{tick}")]);
    let state: bool = conn
        .exists(keys.schedule_state("default", "p"))
        .await
        .unwrap();
    assert!(!state, "rm forgets the schedule's progress");
    assert!(schedules::list(&mut conn, keys, at("2030-01-01T00:04:00Z"))
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        schedules::remove(&mut conn, keys, "p").await,
        Err(dockhand::admin::AdminError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn schedules_written_with_redis_cli_run_and_bad_ones_are_skipped() {
    let env = Env::new();
    let settings = env.settings(&["default"], 1, &[]);
    let schedulers: Vec<Store> = (0..3).map(|_| store(&settings)).collect();
    let mut c = env.conn().await;
    let hash = env.keys.schedules();
    let _: () = c
        .hset_multiple(
            &hash,
            &[
                ("byhand", r#"{"cron": "0 3 * * *", "tz": "Europe/Paris", "job": {"image": "img", "command": "true"}}"#),
                ("broken", "not json"),
                ("badcron", r#"{"cron": "99 * * * *", "job": {"image": "img"}}"#),
                ("withid", r#"{"cron": "* * * * *", "job": {"image": "img", "id": "fixed"}}"#),
            ],
        )
        .await
        .unwrap();

    // First seen: started from now (nothing backfilled); the bad ones are named.
    let events = pass(&schedulers, &env.keys, at("2030-01-10T00:00:00Z")).await;
    let started = events
        .iter()
        .filter(|e| matches!(e, Event::Started { name } if name == "byhand"))
        .count();
    assert_eq!(started, 1, "one scheduler starts it: {events:?}");
    for bad in ["broken", "badcron", "withid"] {
        // Each of the three schedulers reports it, and goes on with the others.
        let n = events
            .iter()
            .filter(|e| matches!(e, Event::Invalid { name, .. } if name == bad))
            .count();
        assert_eq!(n, 3, "{bad}: {events:?}");
    }
    // 03:00 in Paris in winter is 02:00 UTC.
    assert!(enqueued(&pass(&schedulers, &env.keys, at("2030-01-10T01:59:59Z")).await).is_empty());
    let events = pass(&schedulers, &env.keys, at("2030-01-10T02:00:00.300Z")).await;
    let tick = at("2030-01-10T02:00:00Z").timestamp();
    assert_eq!(enqueued(&events), vec![format!("byhand-{tick}")]);
    assert_eq!(
        queued(&env, "default").await,
        vec![format!("byhand-{tick}")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_enqueues_and_runs_a_schedules_job() {
    let env = Env::new();
    let settings = env.settings(&["default"], 1, &[("DOCKHAND__SCHEDULES__POLL_MS", "200")]);
    let d = Definition {
        cron: "* * * * * *".into(), // every second
        tz: "UTC".into(),
        queue: "default".into(),
        job: serde_json::json!({"image": image(), "command": "echo tick"}),
        missed: Missed::Skip,
        paused: false,
    };
    add(&env, &settings, "each-second", d, Utc::now()).await;
    let worker = Worker::start(settings.clone());
    let conn_store = store(&settings);
    let job = crate::common::wait_until("a tick enqueued by the worker", || async {
        let mut conn = conn_store.conn().await.ok()?;
        cron::progress(&mut conn, &env.keys, "default", "each-second")
            .await
            .ok()?
            .last_job
    })
    .await;
    let mut conn = conn_store.conn().await.unwrap();
    schedules::remove(&mut conn, &env.keys, "each-second")
        .await
        .unwrap();
    let finished = env.finished(&job).await;
    assert_eq!(
        finished.get("status").map(String::as_str),
        Some("completed"),
        "{finished:?}"
    );
    assert_eq!(env.lines(&job, "stdout").await, vec!["tick".to_string()]);
    worker.stop().await;
}

#[tokio::test]
async fn the_schedule_commands_check_list_pause_and_remove() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("job.json");
    std::fs::write(
        &good,
        r#"{"image": "dockhand-busybox:latest", "command": "date"}"#,
    )
    .unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"image": "dockhand-busybox:latest", "comand": "date"}"#,
    )
    .unwrap();
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    for (cron, file, tz, field) in [
        ("not a cron", good, "UTC", "`cron`"),
        ("0 3 * * *", bad, "UTC", "`comand`"),
        ("0 3 * * *", good, "Europe/Pariss", "`tz`"),
    ] {
        let out = cli(
            &env,
            &["schedule", "add", "nightly", cron, file, "--tz", tz],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{cron} {file} {tz}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains(field), "{}", text(&out.stderr));
    }
    let out = cli(&env, &["schedule", "list"]).await;
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "only the header: nothing was added"
    );

    let out = cli(
        &env,
        &[
            "schedule",
            "add",
            "nightly",
            "0 3 * * *",
            good,
            "--tz",
            "Europe/Paris",
            "--missed",
            "one",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(&env, &["schedule", "list"]).await;
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("nightly"))
        .expect(&stdout);
    assert!(
        line.contains("0 3 * * *") && line.contains("Europe/Paris"),
        "{line}"
    );
    // The next run, on Paris's wall clock: 03:00 at +01:00 or +02:00.
    assert!(line.contains("T03:00:00+0"), "{line}");
    assert!(line.ends_with("no"), "{line}");

    assert!(cli(&env, &["schedule", "pause", "nightly"])
        .await
        .status
        .success());
    let out = cli(&env, &["schedule", "list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["paused"], true);
    assert_eq!(listed["missed"], "one");
    assert!(listed["next_run"].as_str().unwrap().contains("T03:00:00+0"));
    assert!(cli(&env, &["schedule", "resume", "nightly"])
        .await
        .status
        .success());
    assert!(cli(&env, &["schedule", "rm", "nightly"])
        .await
        .status
        .success());
    assert_eq!(
        cli(&env, &["schedule", "rm", "nightly"])
            .await
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        cli(&env, &["schedule", "pause", "nightly"])
            .await
            .status
            .code(),
        Some(1)
    );
}
