//! Data a job moves over the network: `inputs[].url` (downloaded into the
//! container before start, or fed through a named pipe while it runs) and
//! output uploads (files streamed from the container's archive to an http(s)
//! URL instead of Redis).
//!
//! Invariants:
//! - Every host (inputs and uploads alike) is resolved and every address
//!   checked by the SSRF guard (`policy.input_allow_networks`,
//!   `policy.upload_allow_networks`) in [`Transfers::prepare`], before the
//!   container is made and before any connection; connections then go only to
//!   the checked addresses ([`http`]).
//! - Nothing large is held: bodies move in chunks through bounded channels,
//!   never to the worker's disk; the only files the worker makes are the
//!   named pipes, in a folder of the run's own under `worker.cache_dir`, removed
//!   when the run ends ([`Transfers`]'s drop).
//! - A stored or logged URL is the public form (no query: a presigned URL's
//!   signature is a credential).
//! - Sizes and digests are checked as bytes pass: a streamed input's last chunk
//!   is held back until its digest is known, so a job never reads a whole input
//!   whose sha256 does not match.

pub mod http;
mod inputs;
mod uploads;

pub use uploads::{Uploaded, Uploader};

use crate::config::Settings;
use crate::job::Job;
use crate::ssrf::Guard;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What went wrong moving a job's data; each names the input or output file.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{what}: {url} is not an http(s) URL")]
    Url { what: String, url: String },
    #[error("{what}: cannot resolve {host}")]
    Resolve {
        what: String,
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: refused to connect to {host}")]
    Refused {
        what: String,
        host: String,
        #[source]
        source: crate::ssrf::Refused,
    },
    #[error("{what}: {url} timed out {phase}")]
    Timeout {
        what: String,
        url: String,
        phase: &'static str,
    },
    #[error("{what}: request to {url} failed")]
    Http {
        what: String,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: {url} answered {status}")]
    Status {
        what: String,
        url: String,
        status: u16,
    },
    #[error("{what}: larger than {limit} bytes ({setting})")]
    TooLarge {
        what: String,
        limit: u64,
        setting: &'static str,
    },
    #[error("{what}: {url} needs a Content-Length to be staged before start; give the input \"stream\": true, or serve its length")]
    NoLength { what: String, url: String },
    #[error("{what}: sha256 mismatch: expected {want}, got {got}")]
    Digest {
        what: String,
        want: String,
        got: String,
    },
    #[error("{what}: the body ended after {got} of {want} bytes")]
    Short { what: String, got: u64, want: u64 },
    #[error("{what}: cannot {action}")]
    Local {
        what: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: Docker failed to take the file")]
    Docker {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl TransferError {
    /// A refusal by the guard: the job asked for what the policy forbids.
    pub fn is_denied(&self) -> bool {
        matches!(self, TransferError::Refused { .. })
    }
}

/// How the worker may connect, made from its settings.
#[derive(Clone)]
pub struct Outbound {
    pub inputs: Guard,
    pub uploads: Guard,
    pub tls: Arc<tokio_rustls::rustls::ClientConfig>,
    pub connect: Duration,
    pub idle: Duration,
    pub input_max: u64,
    pub input_total: u64,
}

impl Outbound {
    pub fn from_settings(settings: &Settings) -> Result<Outbound, TransferError> {
        let p = &settings.policy;
        let tls = if settings.webhooks.ca_file.is_empty() {
            crate::webhook::tls::public_roots()
        } else {
            crate::webhook::tls::client_config(&settings.webhooks.ca_file).map_err(|e| {
                TransferError::Local {
                    what: "webhooks.ca_file".into(),
                    action: "read the CA certificates",
                    source: std::io::Error::other(crate::telemetry::error_chain(&e)),
                }
            })?
        };
        Ok(Outbound {
            inputs: Guard::for_setting("policy.input_allow_networks", &p.input_allow_networks),
            uploads: Guard::for_setting("policy.upload_allow_networks", &p.upload_allow_networks),
            tls,
            connect: Duration::from_secs(p.transfer_connect_seconds),
            idle: Duration::from_secs(p.transfer_idle_seconds),
            input_max: p.input_max_bytes.0,
            input_total: p.input_total_bytes.0,
        })
    }
}

/// One run's transfers, from before the container is made to after it is gone.
pub struct Transfers {
    out: Outbound,
    dir: Option<PathBuf>,
    inputs: inputs::Inputs,
    uploader: Uploader,
}

impl Transfers {
    /// Checks every input and upload host (no connection yet), and makes the
    /// named pipes of streamed inputs in a folder of this run's own under
    /// `<worker.cache_dir>/<worker.id>/streams/`.
    pub async fn prepare(
        job: &Job,
        attempt: u32,
        settings: &Settings,
    ) -> Result<Transfers, TransferError> {
        let out = Outbound::from_settings(settings)?;
        let dir = (job.remote_inputs.iter().any(|i| i.stream)).then(|| {
            settings
                .worker
                .cache_dir
                .join(&settings.worker.id)
                .join("streams")
                .join(format!("{}-{attempt}-{}", job.id, ulid::Ulid::new()))
        });
        let inputs = inputs::Inputs::prepare(job, &out, dir.as_deref()).await;
        let uploader = Uploader::prepare(job, &out).await;
        let mut t = Transfers {
            out,
            dir,
            inputs: inputs::Inputs::default(),
            uploader: Uploader::default(),
        };
        // Assigned before the checks' results are looked at, so that the
        // folder is removed (on drop) whichever failed.
        t.inputs = inputs?;
        t.uploader = uploader?;
        Ok(t)
    }

    /// Whether the run has anything to move: without, no hook does anything.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty() && self.uploader.is_empty()
    }

    /// Bind mounts for the container: each streamed input's pipe, read-only,
    /// at `/dockhand/input/<path>`.
    pub fn mounts(&self) -> Vec<bollard::models::Mount> {
        self.inputs.mounts()
    }

    /// Downloads the inputs that are not streamed into the created container
    /// (unpacked at `root`, as the staging archive is), then opens the streamed
    /// ones' downloads and starts feeding their pipes.
    pub async fn before_start(
        &mut self,
        docker: &bollard::Docker,
        container: &str,
        root: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), TransferError> {
        self.inputs
            .download_into(docker, container, root, &self.out, deadline)
            .await?;
        self.inputs.start_streams(&self.out).await
    }

    /// Resolves when a streamed input fails (the container is then stopped);
    /// never, otherwise.
    pub async fn failed(&mut self) -> TransferError {
        self.inputs.failed().await
    }

    /// After the container stopped: a feed still running is stopped (the job
    /// did not read all of its input, its own business), and a feed that
    /// failed is the run's error.
    pub async fn after_exit(&mut self) -> Result<(), TransferError> {
        self.inputs.finish().await
    }

    /// What output collection uses to send files to their uploads.
    pub fn uploader(&self) -> Uploader {
        self.uploader.clone()
    }
}

impl Drop for Transfers {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            // Only pipes live there: removing them is quick.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
