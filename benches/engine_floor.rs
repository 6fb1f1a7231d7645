//! The engine floor: the fastest a client can run `true` containers through the
//! Docker API, with nothing else around it -- no queue, no Redis, no log reading,
//! no output collection. It is the baseline of the container comparison of
//! `scripts/bench` (phase k, `benches/dockhand_bench/containers.py`): Dockhand's
//! jobs/s against this loop's shows what the queue costs above the engine.
//!
//! Invariants: every container it creates it removes (force, with its anonymous
//! volumes), also after a failed start or wait; at most `--concurrency` containers
//! exist at once; it prints one JSON line on stdout and nothing else there, and
//! exits non-zero if any run failed (the figure would then not be a floor).
//!
//! ```sh
//! cargo bench --bench engine_floor -- --jobs 200 --concurrency 4 --image dockhand-busybox:latest
//! ```
//!
//! Each of `--concurrency` tasks takes the next job number from a shared counter
//! and does create, start, wait, remove, the calls a worker makes per container.
//! The containers get no network, as a Dockhand job's does by default: network
//! mode `none` and `NetworkDisabled`, with which the engine skips the network
//! hook it otherwise runs (a process of its own) at every start.
//! `--network-hook` leaves `NetworkDisabled` out (network mode `none` only, as
//! `docker run --network none` makes them), to show what that hook costs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

/// What the command line says; unknown arguments (cargo bench adds `--bench`)
/// are ignored.
struct Args {
    jobs: usize,
    concurrency: usize,
    image: String,
    network_hook: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        jobs: 200,
        concurrency: 1,
        image: "dockhand-busybox:latest".to_string(),
        network_hook: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--jobs" => {
                args.jobs = value("--jobs")?
                    .parse()
                    .map_err(|e| format!("--jobs: {e}"))?
            }
            "--concurrency" => {
                args.concurrency = value("--concurrency")?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--image" => args.image = value("--image")?,
            "--network-hook" => args.network_hook = true,
            _ => {}
        }
    }
    if args.jobs == 0 || args.concurrency == 0 {
        return Err("--jobs and --concurrency must be at least 1".to_string());
    }
    Ok(args)
}

/// One container: create, start, wait for its exit, remove. The removal runs
/// whatever happened before it, so that a failure leaves nothing behind.
async fn one(docker: &Docker, image: &str, network_hook: bool) -> Result<(), String> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["true".to_string()]),
        network_disabled: Some(!network_hook),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(None, body)
        .await
        .map_err(|e| format!("create: {e}"))?
        .id;
    let run = async {
        docker
            .start_container(&id, None)
            .await
            .map_err(|e| format!("start: {e}"))?;
        let mut wait = docker.wait_container(&id, None);
        while let Some(r) = wait.next().await {
            r.map_err(|e| format!("wait: {e}"))?;
        }
        Ok::<(), String>(())
    };
    let ran = run.await;
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let removed = docker
        .remove_container(&id, Some(opts))
        .await
        .map_err(|e| format!("remove: {e}"));
    ran.and(removed)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("engine_floor: {e}");
            std::process::exit(2);
        }
    };
    let docker = match Docker::connect_with_local_defaults() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("engine_floor: cannot connect to Docker: {e}");
            std::process::exit(2);
        }
    };
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (docker, next, failed) = (docker.clone(), next.clone(), failed.clone());
        let (image, jobs, hook) = (args.image.clone(), args.jobs, args.network_hook);
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                if let Err(e) = one(&docker, &image, hook).await {
                    eprintln!("engine_floor: {e}");
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            eprintln!("engine_floor: a task failed: {e}");
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "{{\"jobs\": {}, \"concurrency\": {}, \"seconds\": {:.4}, \"jobs_per_s\": {:.3}, \"failed\": {}}}",
        args.jobs,
        args.concurrency,
        secs,
        args.jobs as f64 / secs,
        failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
