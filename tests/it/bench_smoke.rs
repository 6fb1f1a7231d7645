//! `scripts/bench --smoke` runs every phase of the benchmark end to end (tiny
//! sizes, the debug binary, the suite's Redis) and each produces its figures, so
//! that the harness cannot rot between full runs. Speed is not asserted: only
//! that every phase measured something.

use crate::common::Env;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// The figure at `path` (keys separated by `/`; a number indexes an array).
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('/').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn positive(v: &Value, path: &str) {
    let x = at(v, path);
    assert!(
        x.as_f64().is_some_and(|x| x > 0.0),
        "{path} should be a positive figure, is {x}"
    );
}

/// `scripts/bench` in its smoke mode, on `env`'s Redis, with the suite's binary.
fn bench_command(env: &Env) -> Command {
    let mut cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench"));
    cmd.arg("--smoke")
        .env("REDIS_URL", &env.url)
        .env("DOCKHAND_BIN", env!("CARGO_BIN_EXE_dockhand"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_of_the_benchmark_produces_its_figures() {
    // A standalone Redis of its own: phase j fills databases 1 and 2, which the
    // suite's Redis (a one-node cluster, see scripts/test) does not have.
    let env = Env::own_server();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = bench_command(&env)
        .args(["--no-progress", "--json"])
        .arg(&json)
        .output()
        .await
        .expect("scripts/bench runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/bench --smoke failed:\n{text}"
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["failures"], Value::Array(vec![]), "{text}");

    // The old phases, a to j: one figure each.
    positive(&v, "a/ratio_median");
    positive(&v, "b/stored_stdout");
    positive(&v, "c/peak_rss_kib");
    positive(&v, "d/deliveries_per_s");
    positive(&v, "e/git_cached/median");
    positive(&v, "e/build_ratio");
    positive(&v, "f/trials/0/seconds");
    positive(&v, "g/bytes_per_job_at_all_terminal");
    positive(&v, "h/ratio_median");
    positive(&v, "i/variants/plain/per_job_s/0");
    positive(&v, "i/variants/after/ratio_commands");
    positive(&v, "j/requests/jobs_first/large/median");
    positive(&v, "j/requests/queues/small/median");

    // k: every system at every concurrency, and the ratios.
    for row in 0..2 {
        for s in ["dockhand", "celery", "rq", "docker", "floor"] {
            positive(&v, &format!("k/table/{row}/{s}/median"));
        }
        for s in ["floor", "celery", "rq", "docker"] {
            positive(&v, &format!("k/table/{row}/ratios/{s}"));
        }
    }
    // l: the three systems, the ratios, the worker's memory.
    for s in ["dockhand", "celery", "rq"] {
        positive(&v, &format!("l/median_jobs_per_s/{s}"));
    }
    positive(&v, "l/ratios/celery");
    positive(&v, "l/ratios/rq");
    positive(&v, "l/dockhand_rss_idle_kib");
    // m: every job got a verified delivery, with a rate and latencies.
    assert_eq!(at(&v, "m/bad_signatures"), &Value::from(0), "{text}");
    assert_eq!(at(&v, "m/jobs_delivered"), at(&v, "m/jobs"), "{text}");
    positive(&v, "m/deliveries_per_s");
    assert!(at(&v, "m/latency_p99_s").is_number(), "{text}");
    // m, delivery only: the burst and the wave, every delivery arrived and verified.
    for pass in ["burst", "wave"] {
        let fig = |f: &str| at(&v, &format!("m/delivery/{pass}/{f}"));
        assert_eq!(fig("bad_signatures"), &Value::from(0), "{text}");
        assert_eq!(fig("distinct"), at(&v, "m/delivery/deliveries"), "{text}");
        assert!(fig("latency_p99_s").is_number(), "{text}");
    }
    positive(&v, "m/delivery/burst/deliveries_per_s");
    // n: both kinds at both worker counts, with Redis's figures.
    for kind in ["container", "process"] {
        for i in 0..2 {
            positive(&v, &format!("n/{kind}/{i}/jobs_per_s"));
            positive(&v, &format!("n/{kind}/{i}/redis_commands_per_s"));
            assert!(at(&v, &format!("n/{kind}/{i}/redis_cpu_share")).is_number());
        }
    }
}

/// The command lines of the live processes that belong to a benchmark run on
/// the Redis at `url`: every process scripts/bench starts inherits `REDIS_URL`,
/// and the workers name it on their command line too.
fn bench_processes(url: &str) -> Vec<String> {
    let env_entry = format!("REDIS_URL={url}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process gone meanwhile, or a zombie (empty files), is not running.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = cmdline.contains(url)
            || environ
                .split(|b| *b == 0)
                .any(|var| var == env_entry.as_bytes());
        if ours {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// A benchmark stopped half-way, as Ctrl-C or a SIGTERM to scripts/bench stops
/// it, leaves nothing running: not its own workers, nor the peers', which run in
/// sessions of their own (no signal to the benchmark's group reaches them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_benchmark_leaves_no_worker_running() {
    let env = Env::own_server();
    // Phase l with a backlog far too large to finish: it is surely running when
    // the signal comes. It starts Dockhand's, Celery's and RQ's workers before
    // its first drain, RQ's last.
    let mut bench = bench_command(&env)
        .args(["--no-progress", "--phases", "l", "--l-jobs", "1000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("scripts/bench starts");
    // Bounded generously: on a fresh machine this may first make the bench's
    // virtualenv (or wait for the other test making it).
    let mut peers_up = false;
    for _ in 0..6000 {
        let running = bench_processes(&env.url);
        if running.iter().any(|c| c.contains("rq.cli"))
            && running.iter().any(|c| c.contains("celery"))
        {
            peers_up = true;
            break;
        }
        if let Some(status) = bench.try_wait().unwrap() {
            panic!("scripts/bench ended ({status}) before phase l's workers were up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(peers_up, "phase l's workers never came up");

    let pid = bench.id().expect("still running") as libc::pid_t;
    // SAFETY: kill sends a signal to a process of ours; nothing else is touched.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(300), bench.wait())
        .await
        .expect("scripts/bench ends after SIGTERM")
        .unwrap();
    assert!(!status.success(), "a stopped benchmark does not exit 0");
    let left = bench_processes(&env.url);
    // Not left for the rest of the suite, whatever the verdict.
    for line in &left {
        if let Some(pid) = line.split(':').next().and_then(|p| p.parse().ok()) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    assert!(
        left.is_empty(),
        "left running after the benchmark ended: {left:#?}"
    );
}
