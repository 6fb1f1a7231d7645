//! The baseline for the log phase of `scripts/bench`: a bare client of Docker's
//! attach stream, with nothing between the engine and a line counter.
//!
//! It creates a container running `seq 1 N` in the test image (json-file log
//! driver, like a job's), attaches before it starts so that no byte is missed,
//! counts the newlines of its stdout and stderr frames until the stream ends,
//! removes the container, and prints one JSON object:
//! `{"lines": N, "seconds": s, "lines_per_s": r}` (from the first frame to the end).
//!
//!     cargo bench --bench attach_reader -- [--lines N] [--image IMAGE]
//!
//! Invariant: it exits non-zero (and says why) unless it counted exactly N lines.

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Instant;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lines: u64 = arg(&args, "--lines")
        .map(|s| s.parse().expect("--lines takes a number"))
        .unwrap_or(1_000_000);
    let image = arg(&args, "--image").unwrap_or_else(|| "dockhand-busybox:latest".to_string());
    match run(lines, &image).await {
        Ok((counted, seconds)) => {
            println!(
                "{{\"lines\": {counted}, \"seconds\": {seconds:.4}, \"lines_per_s\": {:.0}}}",
                counted as f64 / seconds
            );
            if counted != lines {
                eprintln!("counted {counted} lines, expected {lines}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("attach_reader: {e}");
            std::process::exit(2);
        }
    }
}

async fn run(lines: u64, image: &str) -> Result<(u64, f64), bollard::errors::Error> {
    let docker = Docker::connect_with_local_defaults()?;
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["seq".into(), "1".into(), lines.to_string()]),
        tty: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        labels: Some(HashMap::from([(
            "dockhand.bench".to_string(),
            "attach_reader".to_string(),
        )])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), (256u64 << 20).to_string()),
                    ("max-file".to_string(), "1".to_string()),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!("dockhand-bench-attach-{}", std::process::id());
    let opts = CreateContainerOptionsBuilder::default().name(&name).build();
    let id = docker.create_container(Some(opts), body).await?.id;
    let result = count(&docker, &id).await;
    let rm = RemoveContainerOptionsBuilder::default().force(true).build();
    docker.remove_container(&id, Some(rm)).await.ok();
    result
}

async fn count(docker: &Docker, id: &str) -> Result<(u64, f64), bollard::errors::Error> {
    let opts = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut attached = docker.attach_container(id, Some(opts)).await?;
    docker.start_container(id, None).await?;
    let mut counted = 0u64;
    let mut first: Option<Instant> = None;
    while let Some(frame) = attached.output.next().await {
        let frame = frame?;
        first.get_or_insert_with(Instant::now);
        let bytes = frame.into_bytes();
        counted += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok((counted, seconds))
}
