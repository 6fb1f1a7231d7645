//! Runs one job's container with Docker, through bollard.
//!
//! Invariants:
//! - Every container is created with the labels `dockhand.job` and `dockhand.worker`,
//!   all capabilities dropped (but the policy's), `no-new-privileges`, memory and
//!   pids limits, and no network unless the job asked and the policy allowed.
//! - A container this module created is removed before [`Executor::run`] returns,
//!   whatever happened: exit, timeout, or a Docker error half-way. (Only a killed
//!   worker process can leave one behind; the orphan sweep is for that.)
//! - Output is read from Docker's log at our own pace; the container never waits on us.
//! - A non-zero exit is an outcome, not an error: errors are Docker failing us.

pub mod build;
mod container;
mod error;
mod files;
mod follow;
mod health;
pub mod network;
mod services;
pub mod sweep;

pub use container::{LABEL_CONSUMER, LABEL_DEPLOYMENT, LABEL_ENTRY, LABEL_JOB, LABEL_WORKER};
pub use error::{unreachable, ExecError};
pub use files::{JobOutput, ResultFile};

use crate::config::{PullPolicy, Settings};
use crate::job::Job;
use crate::logs::LogSender;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// How a container run ended.
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
}

#[derive(Clone)]
pub struct Executor {
    docker: Docker,
    health: std::sync::Arc<health::Health>,
    worker_id: String,
    /// This worker process's consumer name, a label on its containers.
    consumer: String,
    settings: std::sync::Arc<Settings>,
}

impl Executor {
    /// Connects to the Docker engine and agrees on an API version with it.
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
        })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Creates, stages, starts and waits for the job's container, collects its
    /// output, and removes it. A failure to reach the engine marks it unreachable
    /// (see [`Executor::until_reachable`]).
    pub async fn run(&self, job: &Job, ctx: RunContext<'_>) -> Result<RunOutcome, ExecError> {
        // Removed below whatever happens, also after a failure half-way through.
        let mut sidecars = services::Sidecars::default();
        let result = async {
            self.ensure_image(&job.image).await?;
            if !job.services.is_empty() {
                self.start_services(job, &ctx, &mut sidecars).await?;
            }
            let network = sidecars.network.as_deref().unwrap_or(&job.network);
            self.run_container(job, &ctx, network).await
        }
        .await;
        self.remove_sidecars(sidecars).await;
        if let Err(e) = &result {
            if e.is_transient() {
                let why = crate::telemetry::error_chain(e);
                self.health.mark_unreachable(&self.docker, &why);
            }
        }
        result
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

    async fn run_container(
        &self,
        job: &Job,
        ctx: &RunContext<'_>,
        network: &str,
    ) -> Result<RunOutcome, ExecError> {
        let name = container::name(&job.id, ctx.attempt);
        let labels = container::Labels {
            worker: &self.worker_id,
            consumer: &self.consumer,
            entry: ctx.entry,
            deployment: ctx.deployment,
        };
        let body = container::body(job, ctx.attempt, &labels, &self.settings.policy, network);
        let id = self
            .create(&name, body, &job.image, "create the container")
            .await?;
        let result = self.run_created(&id, job, ctx).await;
        self.remove(&id).await;
        result
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

    async fn ensure_image(&self, image: &str) -> Result<(), ExecError> {
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
        let mut pull = self.docker.create_image(Some(opts), None, None);
        while let Some(progress) = pull.next().await {
            progress.map_err(|source| ExecError::Pull {
                image: image.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    async fn run_created(
        &self,
        id: &str,
        job: &Job,
        ctx: &RunContext<'_>,
    ) -> Result<RunOutcome, ExecError> {
        let into = if self.settings.policy.read_only_rootfs {
            files::StageInto::DockhandVolume
        } else {
            files::StageInto::Root
        };
        files::stage(&self.docker, id, &job.files, into).await?;
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError { message, .. } => {
                    ExecError::Start { message }
                }
                source => ExecError::Docker {
                    action: "start the container",
                    source,
                },
            })?;
        self.after_start(id, job, ctx)
            .await
            .map_err(|e| ExecError::AfterStart(Box::new(e)))
    }

    /// Follows the started container to its end, and reads what it left.
    async fn after_start(
        &self,
        id: &str,
        job: &Job,
        ctx: &RunContext<'_>,
    ) -> Result<RunOutcome, ExecError> {
        let follower = tokio::spawn(follow::follow_logs(
            self.docker.clone(),
            id.to_string(),
            ctx.logs.clone(),
            self.settings.jobs.max_line_bytes,
        ));

        let (timed_out, stopped) = tokio::select! {
            waited = timeout(job.limits.timeout, self.wait(id)) => (waited.is_err(), false),
            _ = ctx.stop.cancelled() => (false, true),
        };
        if timed_out {
            ctx.logs
                .system(format!(
                    "timed out after {} s (limits.timeout_seconds); stopping the container",
                    job.limits.timeout.as_secs()
                ))
                .await;
        }
        if timed_out || stopped {
            self.stop(id).await?;
        }
        // The log stream ends when the container does, but a chatty job can leave
        // much of its output still to read: Docker keeps it until the container is
        // removed, so wait for all of it (bounded by the job's own time limit, in
        // case Docker never closes the stream).
        let reading = job.limits.timeout.max(Duration::from_secs(60));
        let mut follower = follower;
        if timeout(reading, &mut follower).await.is_err() {
            follower.abort();
            ctx.logs
                .system("the container's log did not close; some output may be missing")
                .await;
        }

        let inspect = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|source| ExecError::Docker {
                action: "inspect the container",
                source,
            })?;
        let state = inspect.state.unwrap_or_default();
        let exit_code = state.exit_code.unwrap_or(-1);
        let mut oom_killed = state.oom_killed.unwrap_or(false);
        if exit_code == 137 && !oom_killed {
            oom_killed = self.oom_noticed_late(id).await;
        }
        let output = files::collect(&self.docker, id, job).await?;
        Ok(RunOutcome {
            exit_code,
            oom_killed,
            timed_out,
            stopped,
            image_id: inspect.image,
            output,
        })
    }

    /// Docker handles a container's exit and its OOM kill as two events, and may
    /// record the exit first (seen under load: exit 137, `OOMKilled` false, then
    /// true a moment later). So a SIGKILLed container is looked at again, briefly.
    async fn oom_noticed_late(&self, id: &str) -> bool {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(inspect) = self.docker.inspect_container(id, None).await else {
                return false;
            };
            if inspect.state.and_then(|s| s.oom_killed).unwrap_or(false) {
                return true;
            }
        }
        false
    }

    /// Waits until the container is not running. A non-zero exit is reported by
    /// bollard as an error; that is an outcome, read later from `inspect`.
    async fn wait(&self, id: &str) {
        let mut wait = self.docker.wait_container(id, None);
        while let Some(item) = wait.next().await {
            if let Err(e) = item {
                if !matches!(e, bollard::errors::Error::DockerContainerWaitError { .. }) {
                    tracing::warn!(container = %id, error = %e, "waiting for the container failed; checking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    wait = self.docker.wait_container(id, None);
                    continue;
                }
            }
            return;
        }
    }

    /// SIGTERM, `worker.stop_grace_seconds`, then SIGKILL (Docker's stop does all three).
    async fn stop(&self, id: &str) -> Result<(), ExecError> {
        let grace = self.settings.worker.stop_grace_seconds;
        let opts = StopContainerOptionsBuilder::default()
            .t(grace as i32)
            .build();
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(source) => {
                return Err(ExecError::Docker {
                    action: "stop the container",
                    source,
                })
            }
        }
        timeout(Duration::from_secs(grace + 30), self.wait(id))
            .await
            .ok();
        Ok(())
    }

    /// Removes the container and its anonymous volumes. Failure is logged, not
    /// returned: the job's outcome is already known, and the sweep retries later.
    async fn remove(&self, id: &str) {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = self.docker.remove_container(id, Some(opts)).await {
            tracing::warn!(container = %id, error = %e, "could not remove the container");
        }
    }
}
