//! Many worker hosts, as `docker compose up --scale worker=3` runs them: three
//! worker containers of the image `scripts/image` builds from the test's own
//! binary, on a Docker network this test makes, against one Redis (listening on
//! that network's gateway), sharing the host's engine through its socket, each
//! named after its container. One is SIGKILLed (`docker kill`) mid-job: another
//! takes its job over after the lease, and a survivor's sweep removes the dead
//! worker's job container. Everything the test made is removed when it ends.

use crate::common::docker::{docker, Made};
use crate::common::{image, wait_until, Env, RedisServer};
use std::collections::HashMap;
use std::net::IpAddr;

/// Container ids that match a `docker ps` filter, running or not.
fn containers(filter: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", filter])
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_containers_share_one_redis_and_survive_one_killed_mid_job() {
    let job_image = image();
    let name = format!(
        "dockhand-it-scale-{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let label = format!("dockhand.test={name}");
    let mut made = Made::new(&label);
    docker(&["network", "create", "--label", &label, &name]);
    made.network = Some(name.clone());
    let gateway: IpAddr = docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        &name,
    ])
    .parse()
    .expect("the test network has an IPv4 gateway");
    let env = Env::on(RedisServer::start_on(gateway));

    // The image, as an operator builds it with no registry.
    let tag = format!("{name}:latest");
    crate::common::build_dockhand_image(&tag);
    made.image = Some(tag.clone());

    // Three workers, no worker.id (each is named after its container, as under
    // Compose), one job at a time each, a short lease and sweep.
    let workers: Vec<String> = (1..=3).map(|n| format!("{name}-worker-{n}")).collect();
    // Named after their containers, the workers' ids are their names.
    made.workers = workers.clone();
    made.worker_ids = workers.clone();
    for w in &workers {
        docker(&[
            "run",
            "-d",
            "--name",
            w,
            "--label",
            &label,
            "--network",
            &name,
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-e",
            &format!("REDIS_URL={}", env.url),
            "-e",
            &format!("DOCKHAND__REDIS__PREFIX={}", env.prefix),
            "-e",
            "DOCKHAND__WORKER__CONCURRENCY=1",
            "-e",
            "DOCKHAND__WORKER__BLOCK_MS=300",
            "-e",
            "DOCKHAND__WORKER__LEASE_SECONDS=3",
            "-e",
            "DOCKHAND__WORKER__STOP_GRACE_SECONDS=1",
            "-e",
            "DOCKHAND__WORKER__RECONNECT_MAX_MS=500",
            "-e",
            "DOCKHAND__WORKER__SWEEP_SECONDS=2",
            &tag,
            "worker",
        ]);
    }
    for w in &workers {
        env.wait_until_worker_ready(w, None).await;
    }

    // Jobs that take a moment: three run (one per worker), three wait.
    let ids: Vec<String> = (0..6).map(|n| format!("{}-j{n}", env.prefix)).collect();
    for id in &ids {
        let spec =
            serde_json::json!({"id": id, "image": job_image, "command": "sleep 8; echo done"});
        env.xadd("default", &spec.to_string()).await;
    }
    let running: HashMap<String, String> = wait_until("each worker to run a job", || async {
        let mut by_worker = HashMap::new();
        for id in &ids {
            let job = env.job(id).await;
            if job.get("status").map(String::as_str) == Some("running") {
                by_worker.insert(job["worker"].clone(), id.clone());
            }
        }
        (by_worker.len() == 3).then_some(by_worker)
    })
    .await;
    let victim = &workers[1];
    let orphaned = running[victim].clone();
    docker(&["kill", victim]);
    // Its job container outlives it (until swept): the job is still running
    // (it takes 8 s; the kill came as soon as all three ran).
    let left = containers(&format!("label=dockhand.job={orphaned}"));
    assert!(
        !left.is_empty(),
        "the killed worker's job container is there after the kill"
    );

    // Every job completes; the orphaned one on another worker, after the lease.
    for id in &ids {
        let job = env.finished(id).await;
        assert_eq!(job["status"], "completed", "job {id}: {job:?}");
        assert_eq!(
            env.lines(id, "stdout").await.last().map(String::as_str),
            Some("done")
        );
    }
    let taken = env.job(&orphaned).await;
    assert_ne!(&taken["worker"], victim, "{taken:?}");
    assert!(workers.contains(&taken["worker"]), "{taken:?}");
    let finishers: std::collections::HashSet<String> = {
        let mut set = std::collections::HashSet::new();
        for id in &ids {
            set.insert(env.job(id).await["worker"].clone());
        }
        set
    };
    assert!(
        finishers.len() >= 2,
        "the survivors shared the work: {finishers:?}"
    );

    // A survivor's sweep removed the dead worker's job container.
    wait_until(
        "a survivor to sweep the killed worker's job container",
        || async {
            containers(&format!("label=dockhand.worker={victim}"))
                .is_empty()
                .then_some(())
        },
    )
    .await;
    drop(made);
}
