//! A worker that runs in a container (as docker-compose.yml runs it: the Docker
//! socket mounted, a fixed hostname) serves result URLs: it connects its own
//! container to `dockhand-results` and serves on its address there.
//!
//! No registry is reachable, so the worker's image is built FROM scratch out of
//! the test's own `dockhand` binary by `scripts/image`, as an operator builds it. Redis
//! listens on the gateway of a Docker network this test makes, the worker's
//! container is on that network only, and everything the test made (containers,
//! network, image) is removed when it ends, passed or failed.

use crate::common::docker::{docker, Made};
use crate::common::{image, wait_until, Env, RedisServer};
use std::net::IpAddr;
use std::process::Command;

/// The worker's settings, as `docker run -e` arguments.
fn worker_env(env: &Env) -> Vec<String> {
    [
        format!("REDIS_URL={}", env.url),
        format!("DOCKHAND__REDIS__PREFIX={}", env.prefix),
        "DOCKHAND__WORKER__BLOCK_MS=300".into(),
        "DOCKHAND__WORKER__LEASE_SECONDS=2".into(),
        "DOCKHAND__WORKER__STOP_GRACE_SECONDS=1".into(),
    ]
    .into_iter()
    .flat_map(|e| ["-e".to_string(), e])
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_a_container_serves_result_urls_on_the_results_network() {
    let job_image = image();
    let tag = format!(
        "dockhand-it-worker:{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let label = format!("dockhand.test={}", tag.replace(':', "-"));
    let mut made = Made::new(&label);
    // The network Redis and the worker meet on; Redis listens on its gateway.
    let network = tag.replace(':', "-");
    docker(&["network", "create", "--label", &label, &network]);
    made.network = Some(network.clone());
    let gateway: IpAddr = docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        &network,
    ])
    .parse()
    .expect("the test network has an IPv4 gateway");
    let env = Env::on(RedisServer::start_on(gateway));
    // The worker runs as `--id <prefix>`: job containers it leaves go too.
    made.worker_ids.push(env.prefix.clone());
    crate::common::build_dockhand_image(&tag);
    made.image = Some(tag.clone());

    // As docker-compose.yml runs it: the socket mounted, a hostname of its own
    // (so not the container id: the id must come from /proc/self/mountinfo).
    let run = |name: &str, detach: bool, args: &[&str]| {
        let mut cmd: Vec<String> = vec!["run".into(), "--name".into(), name.into()];
        if detach {
            cmd.push("-d".into());
        }
        cmd.extend(
            [
                "--label",
                &label,
                "--hostname",
                "dockhand-worker-1",
                "--network",
                &network,
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
            ]
            .map(String::from),
        );
        cmd.extend(worker_env(&env));
        cmd.push(tag.clone());
        cmd.extend(args.iter().map(|a| a.to_string()));
        let out = Command::new("docker").args(&cmd).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

    // doctor, before any worker: it finds its container and says a worker joins it.
    let doctor = format!("{network}-doctor");
    let (_, report) = run(&doctor, false, &["doctor"]);
    assert!(
        report.contains("ok    result URLs can be served from this container")
            && report.contains("found in /proc/self/mountinfo"),
        "{report}"
    );
    docker(&["rm", "-f", &doctor]);

    let worker = format!("{network}-worker");
    let (ok, out) = run(
        &worker,
        true,
        &["worker", "--queue", "default", "--id", &env.prefix],
    );
    assert!(ok, "docker run of the worker failed: {out}");
    made.workers.push(worker.clone());
    env.wait_until_worker_ready(&env.prefix, None).await;

    // The worker's container is on dockhand-results now; its address there is
    // where the job's RESPONSE_URL points.
    let address = wait_until("the worker's container to be on dockhand-results", || async {
        let ip = docker(&[
            "inspect",
            "-f",
            r#"{{with index .NetworkSettings.Networks "dockhand-results"}}{{.IPAddress}}{{end}}"#,
            &worker,
        ]);
        (!ip.is_empty()).then_some(ip)
    })
    .await;

    let id = format!("{}-posts", env.prefix);
    let command = r#"echo "url $RESPONSE_URL"; wget -q -O- --header 'Content-Type: application/json' --post-data '{"result_text":"posted from a bridge job","result_data":{"n":1}}' "$RESPONSE_URL"; exit 3"#;
    let spec = serde_json::json!({
        "id": id, "image": job_image, "network": "bridge", "command": command,
    });
    env.xadd("default", &spec.to_string()).await;
    let job = env.finished(&id).await;
    let stdout = env.lines(&id, "stdout").await;
    assert_eq!(job["status"], "completed", "{job:?} {stdout:?}");
    assert_eq!(
        job["exit_code"], "3",
        "completed by the POST, not the exit code"
    );
    assert_eq!(job["result_text"], "posted from a bridge job");
    assert_eq!(job["result_data"], r#"{"n":1}"#);
    assert!(
        stdout
            .iter()
            .any(|l| l.starts_with(&format!("url http://{address}:"))),
        "RESPONSE_URL is on the worker's address {address}: {stdout:?}"
    );

    // doctor, inside the running worker's container, says the same.
    let report = docker(&["exec", &worker, "/bin/dockhand", "doctor"]);
    assert!(
        report.contains(&format!(
            "ok    result URLs can be served on {address}: this runs in a container that is on dockhand-results"
        )),
        "{report}"
    );
    // A second worker with no --id (as under `docker compose up --scale worker=N`)
    // is named after its container, not its (shared) hostname.
    let second = format!("{network}-w2");
    let (ok, out) = run(&second, true, &["worker", "--queue", "default"]);
    assert!(ok, "docker run of the second worker failed: {out}");
    wait_until(
        "the second worker announces itself by its container's name",
        || async {
            env.beats()
                .await
                .iter()
                .any(|b| b["worker"] == second.as_str())
                .then_some(())
        },
    )
    .await;
    docker(&["rm", "-f", &second]);
    drop(made);
}
