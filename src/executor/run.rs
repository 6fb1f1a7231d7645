//! One run of a job's container, as the steps of [`JobExecutor`]: its services
//! first, its `/dockhand` folders (bound or, after create, copied in) and the
//! container (prepare), start (attached to its output just before), the
//! output's reader, the wait, the stop, the outcome read from the engine and the
//! output files (collect), and the container, its folders and its services
//! removed (clean up).
//!
//! Invariant: whatever happens (exit, timeout, stop, a Docker error half-way),
//! the container and the job's services are removed before [`Executor::run`]
//! returns, or its removal is started on a task of its own that the caller
//! waits for ([`super::RunContext::remove_later`]: the removal decides nothing,
//! so the outcome is written and the slot freed without waiting for it); a
//! failure to reach the engine marks it unreachable.

use super::progress::FileReport;
use super::runner::{self, Ended, JobExecutor};
use super::sweep::Labelled;
use super::{
    attach, container, files, folders, progress, services, ExecError, Executor, RunContext,
    RunOutcome,
};
use crate::job::Job;
use bollard::query_parameters::StopContainerOptionsBuilder;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// A job's container and its services, between the steps of a run.
pub struct DockerRun {
    id: String,
    sidecars: services::Sidecars,
    /// Its `/dockhand` folders, when they are bound (`folders`).
    folders: Option<folders::RunFolders>,
    /// Its inputs and uploads by URL (`crate::transfer`); their pipes' folder goes
    /// when this is dropped. Behind a lock: the wait watches a streamed input's
    /// failure while the other steps share the run.
    transfers: tokio::sync::Mutex<crate::transfer::Transfers>,
    /// The container's output, attached by `start` before it starts and taken by
    /// `stream_logs` (or why attaching failed). A std Mutex: never held across an await.
    attached: std::sync::Mutex<Option<Result<attach::Attached, String>>>,
    /// Set once the engine said the container no longer runs: the output's
    /// reader then takes the attach stream's end for the output's, without
    /// asking the engine again.
    exited: tokio::sync::watch::Sender<bool>,
}

impl Executor {
    /// Creates, stages, starts and waits for the job's container, collects its
    /// output, and removes it. A failure to reach the engine marks it unreachable
    /// (see [`Executor::until_reachable`]).
    pub async fn run(&self, job: &Job, ctx: RunContext<'_>) -> Result<RunOutcome, ExecError> {
        let result = runner::drive(self, job, &ctx).await;
        if let Err(e) = &result {
            if e.is_transient() {
                let why = crate::telemetry::error_chain(e);
                self.health.mark_unreachable(&self.docker, &why);
            }
        }
        result
    }

    /// The image, the services, the folders, the container: what
    /// [`JobExecutor::prepare`] makes before staging. The sidecars and folders
    /// made are in `sidecars` and `folders` also on failure.
    async fn make(
        &self,
        job: &Job,
        ctx: &RunContext<'_>,
        sidecars: &mut services::Sidecars,
        folders: &mut Option<folders::RunFolders>,
        transfers: &crate::transfer::Transfers,
    ) -> Result<String, ExecError> {
        self.ensure_image(&job.image, job.limits.timeout).await?;
        if !job.services.is_empty() {
            self.start_services(job, ctx, sidecars).await?;
        }
        let network = sidecars.network.as_deref().unwrap_or(&job.network);
        let name = container::name(&job.id, ctx.attempt);
        let labels = container::Labels {
            worker: &self.worker_id,
            consumer: &self.consumer,
            entry: ctx.entry,
            deployment: ctx.deployment,
        };
        let mut body = container::body(job, ctx.attempt, &labels, &self.settings.policy, network);
        super::transfers::add_mounts(&mut body, transfers);
        if let Some(root) = self.bind_root(job, ctx.attempt, &labels, &name).await {
            let made = folders::RunFolders::make(&root, &name, &job.files).await?;
            let host = body.host_config.get_or_insert_with(Default::default);
            host.mounts
                .get_or_insert_with(Vec::new)
                .extend(made.mounts());
            *folders = Some(made);
        }
        self.create(&name, body, &job.image, "create the container")
            .await
    }

    /// Where this process binds the runs' folders from, or `None` (copied):
    /// decided with the first job that lets a probe conclude (`folders::decide`).
    async fn bind_root(
        &self,
        job: &Job,
        attempt: u32,
        who: &container::Labels<'_>,
        name: &str,
    ) -> Option<std::path::PathBuf> {
        let decided = self
            .bind_root
            .get_or_try_init(|| async {
                let labels = container::labels(job, attempt, who);
                let decision =
                    folders::decide(self, &job.image, labels, name).await;
                match decision {
                    folders::Decision::Bind(root) => {
                        tracing::info!(root = %root.display(), "job folders: bound from this worker's cache (the engine sees it)");
                        Ok(Some(root))
                    }
                    folders::Decision::Copy(why) => {
                        tracing::info!(why = %why, "job folders: copied through the Docker API");
                        Ok(None)
                    }
                    folders::Decision::Undecided(why) => Err(why),
                }
            })
            .await;
        match decided {
            Ok(root) => root.clone(),
            Err(why) => {
                tracing::debug!(why = %why, "job folders: undecided; this job's are copied");
                None
            }
        }
    }
}

impl JobExecutor for Executor {
    type Run = DockerRun;

    fn what(&self) -> &'static str {
        "the container"
    }

    async fn prepare(&self, job: &Job, ctx: &RunContext<'_>) -> Result<DockerRun, ExecError> {
        // Hosts checked (and pipes made) before anything is created.
        let transfers =
            crate::transfer::Transfers::prepare(job, ctx.attempt, &self.settings).await?;
        // Removed here on a failure half-way; after it, by `clean_up`.
        let mut sidecars = services::Sidecars::default();
        let mut folders = None;
        let id = match self
            .make(job, ctx, &mut sidecars, &mut folders, &transfers)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                if let Some(folders) = folders {
                    folders.remove().await;
                }
                self.remove_sidecars(sidecars).await;
                return Err(e);
            }
        };
        let staged = folders.as_ref().is_some_and(|f| f.staged);
        let run = DockerRun {
            id,
            sidecars,
            folders,
            transfers: tokio::sync::Mutex::new(transfers),
            attached: std::sync::Mutex::new(None),
            exited: tokio::sync::watch::Sender::new(false),
        };
        let into = if self.settings.policy.read_only_rootfs {
            files::StageInto::DockhandVolume
        } else {
            files::StageInto::Root
        };
        if !staged {
            if let Err(e) = files::stage(&self.docker, &run.id, &job.files, into).await {
                self.clean_up(run).await;
                return Err(e);
            }
        }
        // Downloads into the created container; streamed inputs start feeding.
        let deadline = tokio::time::Instant::now() + job.limits.timeout;
        let fed = run
            .transfers
            .lock()
            .await
            .before_start(&self.docker, &run.id, into.path(), deadline)
            .await;
        if let Err(e) = fed {
            self.clean_up(run).await;
            return Err(e.into());
        }
        Ok(run)
    }

    async fn start(&self, run: &DockerRun, _: &Job, _: &RunContext<'_>) -> Result<(), ExecError> {
        // Before the start, so the stream has the output from its first byte.
        let attached = attach::attach(&self.docker, &run.id)
            .await
            .map_err(|e| e.to_string());
        *run.attached.lock().unwrap_or_else(|e| e.into_inner()) = Some(attached);
        self.docker
            .start_container(&run.id, None)
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError { message, .. } => {
                    ExecError::Start { message }
                }
                source => ExecError::Docker {
                    action: "start the container",
                    source,
                },
            })
    }

    fn stream_logs(&self, run: &DockerRun, ctx: &RunContext<'_>) -> JoinHandle<()> {
        let attached = run
            .attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| Err("the output was taken already".to_string()));
        tokio::spawn(attach::read_output(
            self.docker.clone(),
            run.id.clone(),
            attached,
            run.exited.subscribe(),
            ctx.logs.clone(),
            self.settings.jobs.max_line_bytes,
        ))
    }

    async fn wait(&self, run: &DockerRun) {
        self.wait_container(&run.id).await;
        run.exited.send_replace(true);
    }

    async fn cancel(&self, run: &DockerRun) -> Result<(), ExecError> {
        if self.stop(&run.id).await? {
            run.exited.send_replace(true);
        }
        Ok(())
    }

    async fn failed(&self, run: &DockerRun) -> ExecError {
        run.transfers.lock().await.failed().await.into()
    }

    async fn read_progress(&self, run: &DockerRun) -> Option<FileReport> {
        match &run.folders {
            Some(folders) => folders.read_progress().await,
            None => progress::read(&self.docker, &run.id).await,
        }
    }

    async fn collect(
        &self,
        run: &DockerRun,
        job: &Job,
        ended: Ended,
    ) -> Result<RunOutcome, ExecError> {
        let id = &run.id;
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
        let mut transfers = run.transfers.lock().await;
        let piped = transfers.after_exit().await?;
        let mut output = match &run.folders {
            Some(folders) => {
                let running = state.running.unwrap_or(false);
                folders.collect(running, job, transfers.uploader()).await?
            }
            None => files::collect(&self.docker, id, job, transfers.uploader()).await?,
        };
        output.uploaded.extend(piped);
        Ok(RunOutcome {
            exit_code,
            oom_killed,
            timed_out: ended.timed_out,
            stopped: ended.stopped,
            image_id: inspect.image,
            output,
        })
    }

    async fn clean_up_later(&self, run: DockerRun, later: &std::sync::Mutex<Vec<JoinHandle<()>>>) {
        if !run.sidecars.is_empty() {
            // Its network needs the container gone before the services go.
            return self.clean_up(run).await;
        }
        let executor = self.clone();
        let removal = tokio::spawn(async move { executor.clean_up(run).await });
        later
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(removal);
    }

    async fn clean_up(&self, run: DockerRun) {
        self.remove(&run.id).await;
        if let Some(folders) = run.folders {
            folders.remove().await;
        }
        self.remove_sidecars(run.sidecars).await;
    }

    async fn leftovers(&self) -> Result<Vec<Labelled>, ExecError> {
        self.labelled_containers().await
    }

    async fn remove_leftover(&self, leftover: &Labelled) {
        self.remove(&leftover.id).await;
    }
}

impl Executor {
    /// Docker handles a container's exit and its OOM kill as two events, and may
    /// record the exit first (seen under load: exit 137, `OOMKilled` false, then
    /// true a moment later; on a loaded host more than a second later). So a
    /// SIGKILLed container is looked at again, for up to three seconds: only a job
    /// killed by SIGKILL pays it, and its record then says why.
    async fn oom_noticed_late(&self, id: &str) -> bool {
        for _ in 0..30 {
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
    async fn wait_container(&self, id: &str) {
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

    /// SIGTERM, `worker.stop_grace_seconds`, then SIGKILL (Docker's stop does all
    /// three); true once the engine says the container no longer runs.
    async fn stop(&self, id: &str) -> Result<bool, ExecError> {
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
        let waited = timeout(Duration::from_secs(grace + 30), self.wait_container(id)).await;
        Ok(waited.is_ok())
    }
}
