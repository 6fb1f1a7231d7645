//! What a job posts to its result URLs (docs/results.md): the URLs are opened
//! before its container starts, and what was posted is applied after it exits. A POST to `RESPONSE_URL` completes the job with the posted
//! result whatever its exit code (which is still recorded); a POST to `ABORT_URL`
//! aborts it with reason `aborted_by_job`. A timeout or a cancel still wins.

use crate::config::{ResultSettings, Settings};
use crate::executor::network::RESULTS_NETWORK;
use crate::executor::placement::Placement;
use crate::executor::Executor;
use crate::job::{Job, Reason};
use crate::logs::LogSender;
use crate::result_server::{Limits, PostKind, Posted, Registration, ResultServer};
use crate::state::{FileInfo, JobRecord};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The result server, and the network (`dockhand-results`, by id) that `bridge`
/// jobs are put on so that they reach it.
pub(crate) struct ResultsHost {
    pub server: Arc<ResultServer>,
    pub network: Option<String>,
}

/// Starts the result server where containers can reach it: with `results.bind`
/// empty, the gateway of the `dockhand-results` network when this worker runs on
/// the Docker host, or its own address on that network when it runs in a
/// container (which it connects to the network: `executor::placement`); else
/// `results.bind`. `None`, with a warning saying what was tried and what to do,
/// when it cannot: jobs then run without result URLs (they can still write
/// result.json).
pub(super) async fn start(settings: &Settings, executor: &Executor) -> Option<ResultsHost> {
    if settings.policy.networks.iter().all(|n| n == "none") {
        return None; // no job may have a network, so none could reach the URLs
    }
    const STILL: &str = "jobs still run, and can hand back results in /dockhand/output/result.json";
    let r = &settings.results;
    let mut network = None;
    let ip: IpAddr = if settings.results.bind.is_empty() {
        let net = match executor.results_network().await {
            Ok(net) => net,
            Err(e) => {
                tracing::warn!(
                    error = %crate::telemetry::error_chain(&e),
                    "no result URLs: cannot find or make the Docker network {RESULTS_NETWORK}; {STILL}. \
                     Check that the worker may manage networks on the Docker engine, or set results.bind"
                );
                return None;
            }
        };
        match executor.place_on(&net, true).await {
            Ok(placement) => {
                if let Placement::OnNetwork {
                    joined: Some(c), ..
                } = &placement
                {
                    tracing::info!(
                        container = %c.short_id(),
                        found_in = c.found_by,
                        "this worker runs in a container: connected it to {RESULTS_NETWORK} to serve result URLs"
                    );
                }
                network = Some(net.id);
                placement.ip()?
            }
            Err(e) => {
                tracing::warn!(
                    error = %crate::telemetry::error_chain(&e),
                    "no result URLs: {STILL}. To serve them: {}",
                    e.advice()
                );
                return None;
            }
        }
    } else {
        settings.results.bind.parse().ok()?
    };
    match ResultServer::start_with(ip, r.port, ip.to_string(), limits(r)).await {
        Ok(server) => {
            tracing::info!(address = %server.local_addr(), "serving result URLs");
            Some(ResultsHost {
                server: Arc::new(server),
                network,
            })
        }
        Err(e) => {
            tracing::warn!(
                error = %crate::telemetry::error_chain(&e),
                "no result URLs: cannot listen on {ip} port {}; {STILL}. Free the port or change results.port, or set results.bind",
                r.port
            );
            None
        }
    }
}

/// For local jobs (`executors.local`): a second server on loopback, a free
/// port, with the same limits. A local job runs on this host, so loopback is
/// where it reaches the worker; nothing outside the host can. `None`, with a
/// warning, when it cannot listen (local jobs can still write result.json).
pub(super) async fn start_local(settings: &Settings) -> Option<ResultsHost> {
    let ip = IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
    match ResultServer::start_with(ip, 0, ip.to_string(), limits(&settings.results)).await {
        Ok(server) => {
            tracing::info!(address = %server.local_addr(), "serving result URLs to local jobs");
            Some(ResultsHost {
                server: Arc::new(server),
                network: None,
            })
        }
        Err(e) => {
            tracing::warn!(
                error = %crate::telemetry::error_chain(&e),
                "no result URLs for local jobs: cannot listen on loopback; they can still write result.json"
            );
            None
        }
    }
}

/// The server's limits, from `[results]`.
fn limits(r: &ResultSettings) -> Limits {
    Limits {
        max_connections: r.max_connections,
        max_connections_per_job: r.max_connections_per_job,
        fields_bytes: r.fields_bytes.0,
        read_timeout: Duration::from_secs(r.read_timeout_seconds),
        max_fields: r.max_fields,
        max_files: r.max_files,
    }
}

impl ResultsHost {
    /// For a job with a network: moves it onto the results network (for `bridge`),
    /// opens its three URLs and puts them in its environment.
    pub(super) fn open(&self, job: &mut Job) -> Option<Registration> {
        let host = self;
        // A local job has no network of its own: it shares the host's loopback.
        if job.network == "none" && job.executor != crate::job::ExecutorKind::Local {
            return None;
        }
        if let (true, Some(id)) = (job.network == "bridge", &host.network) {
            job.network = id.clone();
        }
        let urls = match host.server.register(&job.id, job.limits.output_bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::error_chain(&e), "no result URLs for this job");
                return None;
            }
        };
        job.env
            .insert("RESPONSE_URL".into(), urls.response_url().to_string());
        job.env
            .insert("ABORT_URL".into(), urls.abort_url().to_string());
        job.env
            .insert("PROGRESS_URL".into(), urls.progress_url().to_string());
        Some(urls)
    }
}

/// Applies what the job posted to its record and files.
pub(super) async fn apply(
    record: &mut JobRecord,
    files: &mut Vec<(String, Vec<u8>)>,
    posted: Posted,
    log: &LogSender,
) {
    let overruled = matches!(record.reason, Some(Reason::Timeout | Reason::Cancelled));
    if overruled {
        log.system(
            "a result was posted, but the job timed out or was cancelled: the post is ignored",
        )
        .await;
        return;
    }
    for (name, content) in posted.files {
        files.retain(|(n, _)| *n != name);
        record.files.retain(|f| f.name != name);
        record.files.push(FileInfo {
            name: name.clone(),
            size: content.len() as u64,
            sha256: hex::encode(Sha256::digest(&content)),
            location: crate::state::IN_REDIS.to_string(),
        });
        files.push((name, content));
    }
    match posted.kind {
        PostKind::Response => {
            record.result_text = posted.text;
            record.result_data = posted.data;
            let exit = record.exit_code;
            record.complete();
            record.error = exit.filter(|c| *c != 0).map(|c| {
                format!("completed by its posted result; the container exited with code {c}")
            });
        }
        PostKind::Abort => {
            record.result_data = posted.data;
            let why = posted
                .text
                .unwrap_or_else(|| "the job aborted itself (ABORT_URL)".into());
            record.abort(Reason::AbortedByJob, why);
        }
    }
    debug_assert!(record.status.is_terminal());
}
