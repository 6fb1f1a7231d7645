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
mod outbound;
mod pipes;
mod uploads;

pub use outbound::{Outbound, TransferError};
pub use uploads::{Uploaded, Uploader};

use crate::config::Settings;
use crate::job::Job;
use std::path::PathBuf;

/// `<worker.cache_dir>/<worker id>/streams`: the runs' folders of named pipes.
pub fn streams_root(settings: &Settings) -> PathBuf {
    settings.worker_folder("streams")
}

/// Removes the folders of pipes that an earlier run of this worker, killed
/// mid-job, left behind (they hold no data, only FIFOs). Called at start,
/// before any job runs; a worker id is one process's, so nothing in use is hit.
pub fn clear_leftovers(settings: &Settings) {
    let root = streams_root(settings);
    match std::fs::remove_dir_all(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %root.display(), error = %e, "could not remove leftover pipes")
        }
    }
}

/// One run's transfers, from before the container is made to after it is gone.
pub struct Transfers {
    out: Outbound,
    dir: Option<PathBuf>,
    inputs: inputs::Inputs,
    uploader: Uploader,
    pipes: pipes::Pipes,
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
        let any_pipe =
            job.remote_inputs.iter().any(|i| i.stream) || job.uploads.iter().any(|u| u.pipe);
        let dir = any_pipe.then(|| {
            streams_root(settings).join(format!("{}-{attempt}-{}", job.id, ulid::Ulid::new()))
        });
        let inputs = inputs::Inputs::prepare(job, &out, dir.as_deref()).await;
        let uploader = Uploader::prepare(job, &out).await;
        let mut t = Transfers {
            out,
            dir,
            inputs: inputs::Inputs::default(),
            uploader: Uploader::default(),
            pipes: pipes::Pipes::default(),
        };
        // Assigned before the checks' results are looked at, so that the
        // folder is removed (on drop) whichever failed.
        t.inputs = inputs?;
        t.uploader = uploader?;
        let pipe_rules = t.uploader.pipe_rules();
        if let (false, Some(dir)) = (pipe_rules.is_empty(), t.dir.as_deref()) {
            t.pipes = pipes::Pipes::prepare(pipe_rules, dir)?;
        }
        Ok(t)
    }

    /// Whether the run has anything to move: without, no hook does anything.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty() && self.uploader.is_empty()
    }

    /// Bind mounts for the container: each streamed input's pipe, read-only,
    /// at `/dockhand/input/<path>`, and each output pipe at
    /// `/dockhand/output/<path>`.
    pub fn mounts(&self) -> Vec<bollard::models::Mount> {
        let mut mounts = self.inputs.mounts();
        mounts.extend(self.pipes.mounts());
        mounts
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
        self.inputs.start_streams(&self.out).await?;
        self.pipes.start(&self.out);
        Ok(())
    }

    /// Resolves when a streamed input fails (the container is then stopped);
    /// never, otherwise.
    pub async fn failed(&mut self) -> TransferError {
        self.inputs.failed().await
    }

    /// After the container stopped: a feed still running is stopped (the job
    /// did not read all of its input, its own business), and a feed that
    /// failed is the run's error; the output pipes' uploads are waited for,
    /// and returned.
    pub async fn after_exit(&mut self) -> Result<Vec<Uploaded>, TransferError> {
        let fed = self.inputs.finish().await;
        let piped = self.pipes.finish().await;
        fed?;
        piped
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
