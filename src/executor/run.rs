//! One run of a job's container, from create to remove: its services first, the
//! staged files, start, the log follower, the wait with its time limit (or a
//! stop), the outcome read from the engine, and the output files.
//!
//! Invariant: whatever happens (exit, timeout, stop, a Docker error half-way),
//! the container and the job's services are removed before [`Executor::run`]
//! returns, or its removal is started on a task of its own that the caller
//! waits for ([`super::RunContext::remove_later`]: the removal decides nothing,
//! so the outcome is written and the slot freed without waiting for it); a
//! failure to reach the engine marks it unreachable.

use super::{
    container, files, follow, progress, services, ExecError, Executor, RunContext, RunOutcome,
};
use crate::job::Job;
use bollard::query_parameters::StopContainerOptionsBuilder;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::time::timeout;

impl Executor {
    /// Creates, stages, starts and waits for the job's container, collects its
    /// output, and removes it. A failure to reach the engine marks it unreachable
    /// (see [`Executor::until_reachable`]).
    pub async fn run(&self, job: &Job, ctx: RunContext<'_>) -> Result<RunOutcome, ExecError> {
        // Removed below whatever happens, also after a failure half-way through.
        let mut sidecars = services::Sidecars::default();
        let result = async {
            self.ensure_image(&job.image, job.limits.timeout).await?;
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
        match ctx.remove_later.filter(|_| job.services.is_empty()) {
            Some(later) => {
                let executor = self.clone();
                let removal = tokio::spawn(async move { executor.remove(&id).await });
                later
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(removal);
            }
            None => self.remove(&id).await,
        }
        result
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

        let polling = async {
            match ctx.progress {
                Some(to) => progress::poll(&self.docker, id, to).await,
                None => std::future::pending().await,
            }
        };
        let (timed_out, stopped) = tokio::select! {
            waited = timeout(job.limits.timeout, self.wait(id)) => (waited.is_err(), false),
            _ = ctx.stop.cancelled() => (false, true),
            // Never ends: it stops when the container does.
            () = polling => (false, false),
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
        if let Some(to) = ctx.progress {
            // What the job wrote last, between the last poll and its exit.
            progress::read_and_send(&self.docker, id, to).await;
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
}
