//! The places that run jobs, behind one interface ([`JobExecutor`], driven by
//! [`runner::drive`]): Docker through bollard ([`Executor`], the default), and
//! the worker's own host ([`local::LocalExecutor`], `executors.local`), and
//! the hosts of `executors.ssh.hosts` ([`ssh::SshExecutor`]). What
//! only Docker gives (image builds, services, volumes, ports, networks, the
//! results network) stays behind [`Executor`]; a job asking a worker for an
//! executor it does not offer is refused ([`offered`]).
//!
//! Invariants of the Docker executor:
//! - Every container is created with the labels `dockhand.job` and `dockhand.worker`,
//!   all capabilities dropped (but the policy's), `no-new-privileges`, memory and
//!   pids limits, and no network unless the job asked and the policy allowed.
//! - A container this module created is removed before [`Executor::run`] returns,
//!   whatever happened: exit, timeout, or a Docker error half-way. (Only a killed
//!   worker process can leave one behind; the orphan sweep is for that.)
//! - Output is read from Docker's attach stream, attached before start (see
//!   `attach`); the container waits on us for at most a second, then the rest is
//!   read from Docker's log at our own pace.
//! - A non-zero exit is an outcome, not an error: errors are Docker failing us.

mod attach;
pub mod build;
mod container;
mod error;
mod files;
pub mod folders;
mod follow;
mod health;
pub mod local;
pub mod network;
pub mod placement;
pub mod progress;
mod run;
pub mod runner;
mod services;
pub mod ssh;
pub mod sweep;
mod transfers;

pub use container::{
    LABEL_CONSUMER, LABEL_DEPLOYMENT, LABEL_ENTRY, LABEL_JOB, LABEL_QUEUE, LABEL_WORKER,
};
pub use error::{unreachable, ExecError, SshFailure};
pub use files::{JobOutput, ResultFile};
pub use runner::{Ended, JobExecutor};

use crate::config::{PullPolicy, Settings};
use crate::logs::LogSender;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Refuses a job for an executor this worker's config does not offer, naming
/// the key that would.
pub fn offered(settings: &Settings, job: &crate::job::Job) -> Result<(), crate::job::Rejection> {
    use crate::job::ExecutorKind;
    match job.executor {
        ExecutorKind::Docker => Ok(()),
        ExecutorKind::Local if settings.executors.local.enabled => Ok(()),
        ExecutorKind::Local => Err(crate::job::Rejection::denied(
            "executor",
            "\"local\" is not offered: executors.local.enabled is false on this worker",
        )),
        ExecutorKind::Ssh => {
            let hosts = &settings.executors.ssh.hosts;
            if hosts.is_empty() {
                return Err(crate::job::Rejection::denied(
                    "executor",
                    "\"ssh\" is not offered: this worker has no executors.ssh.hosts",
                ));
            }
            let name = job.spec.host.as_deref().unwrap_or_default();
            let Some(host) = hosts.get(name) else {
                return Err(crate::job::Rejection::denied(
                    "host",
                    format!("{name:?} is not one of this worker's executors.ssh.hosts"),
                ));
            };
            match job.spec.script.as_ref().and_then(|s| s.interpreter.as_deref()) {
                Some(i) if !host.interpreters.contains_key(i) => {
                    Err(crate::job::Rejection::denied(
                        "script.interpreter",
                        format!(
                            "{i:?} is not offered by host {name:?} (executors.ssh.hosts.{name}.interpreters)"
                        ),
                    ))
                }
                _ => Ok(()),
            }
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub exit_code: i64,
    pub oom_killed: bool,
    pub timed_out: bool,
    /// Stopped because [`RunContext::stop`] fired (cancel, drain, lost lease).
    pub stopped: bool,
    pub image_id: Option<String>,
    pub output: JobOutput,
}

/// What a run needs besides the job.
pub struct RunContext<'a> {
    pub attempt: u32,
    /// Where the container's lines go.
    pub logs: &'a LogSender,
    /// Fires when the container must be stopped before it ends by itself.
    pub stop: &'a CancellationToken,
    /// The stream entry being run (a container label, for the orphan sweep).
    pub entry: &'a str,
    /// The deployment's id (a container label, for the orphan sweep).
    pub deployment: &'a str,
    /// Where `progress.json` is sent while the container runs; `None`: not read.
    pub progress: Option<&'a progress::ProgressFile>,
    /// Where the removal of the job's container goes once its outcome is read:
    /// it runs on its own task, beside the writing of the outcome, and the
    /// caller waits for it after the job's slot is free. `None`: removed before
    /// [`Executor::run`] returns. A job with services has its container removed
    /// before them either way (their network needs it).
    pub remove_later: Option<&'a std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

#[derive(Clone)]
pub struct Executor {
    docker: Docker,
    health: std::sync::Arc<health::Health>,
    worker_id: String,
    /// This worker process's consumer name, a label on its containers.
    consumer: String,
    settings: std::sync::Arc<Settings>,
    /// Where the runs' bound folders go (`folders`), once decided for this
    /// process: `None` when they are copied through the API.
    bind_root: std::sync::Arc<tokio::sync::OnceCell<Option<std::path::PathBuf>>>,
}

impl Executor {
    /// Connects to the Docker engine and agrees on an API version with it.
    /// Names the worker process this executor labels its containers with, once
    /// its id is known (it may come from the engine: see `own_container_name`).
    pub fn set_identity(&mut self, worker_id: &str, consumer: &str) {
        self.worker_id = worker_id.to_string();
        self.consumer = consumer.to_string();
    }

    pub async fn connect(
        settings: std::sync::Arc<Settings>,
        consumer: &str,
    ) -> Result<Executor, ExecError> {
        let host = settings.worker.docker_host.clone();
        let endpoint = if host.is_empty() {
            "the local default socket".to_string()
        } else {
            host.clone()
        };
        let docker = if host.is_empty() {
            Docker::connect_with_local_defaults()
        } else if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(&host, 120, bollard::API_DEFAULT_VERSION)
        }
        .map_err(|source| ExecError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
        // bollard's default API version is newer than many engines speak.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| ExecError::Connect { endpoint, source })?;
        Ok(Executor {
            docker,
            health: Default::default(),
            worker_id: settings.worker_id(),
            consumer: consumer.to_string(),
            settings,
            bind_root: Default::default(),
        })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Returns once the engine answers; at once unless a run found it unreachable.
    pub async fn until_reachable(&self) {
        self.health.until_reachable().await
    }

    /// False from a failure to reach the engine until it answers again.
    pub fn is_reachable(&self) -> bool {
        self.health.is_reachable()
    }

    /// Records that the engine did not answer another caller (an image build).
    pub fn mark_unreachable(&self, why: &str) {
        self.health.mark_unreachable(&self.docker, why);
    }

    /// Creates a container; Docker's 404 (the image is not on this host) becomes
    /// [`ExecError::ImageNotFound`] naming `image`.
    pub(super) async fn create(
        &self,
        name: &str,
        body: bollard::models::ContainerCreateBody,
        image: &str,
        action: &'static str,
    ) -> Result<String, ExecError> {
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        match self.docker.create_container(Some(opts), body).await {
            Ok(created) => Ok(created.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(ExecError::ImageNotFound(image.to_string())),
            Err(source) => Err(ExecError::Docker { action, source }),
        }
    }

    /// Makes sure `image` is on this host, pulling it when `worker.pull` says so,
    /// within `limit`: a registry that stalls must not hold the job's slot.
    pub(super) async fn ensure_image(&self, image: &str, limit: Duration) -> Result<(), ExecError> {
        if self.settings.worker.pull == PullPolicy::Never {
            return Ok(()); // create_container answers 404 for a missing image
        }
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(source) => {
                return Err(ExecError::Docker {
                    action: "inspect the image",
                    source,
                })
            }
        }
        let opts = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let pull = async {
            let mut pull = self.docker.create_image(Some(opts), None, None);
            while let Some(progress) = pull.next().await {
                progress.map_err(|source| ExecError::Pull {
                    image: image.to_string(),
                    source,
                })?;
            }
            Ok(())
        };
        tokio::time::timeout(limit, pull).await.unwrap_or_else(|_| {
            Err(ExecError::PullTimedOut {
                image: image.to_string(),
                seconds: limit.as_secs(),
            })
        })
    }

    /// Removes the container and its anonymous volumes. Failure is logged, not
    /// returned: the job's outcome is already known, and the sweep retries later.
    pub(super) async fn remove(&self, id: &str) {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = self.docker.remove_container(id, Some(opts)).await {
            tracing::warn!(container = %id, error = %e, "could not remove the container");
        }
    }
}
