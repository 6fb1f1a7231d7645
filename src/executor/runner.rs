//! The executor interface: what the worker needs from a place that runs jobs, as
//! steps (prepare, start, stream logs, wait, cancel, collect, clean up, and the
//! sweep of what a dead worker left), and [`drive`], the one order in which a run
//! takes them. Docker ([`super::Executor`]) and the host
//! ([`super::local::LocalExecutor`]) implement the steps; the time limit, the
//! stop, the progress polling and the log's last lines are [`drive`]'s, so they
//! behave the same whichever executor runs the job.
//!
//! Invariants:
//! - What [`JobExecutor::prepare`] made is cleaned up by [`JobExecutor::clean_up`]
//!   before [`drive`] returns, whatever happened after it; a `prepare` that fails
//!   half-way cleans up its own part before returning.
//! - A failure after [`JobExecutor::start`] succeeded is wrapped in
//!   [`ExecError::AfterStart`]: the job may have done part of its work, so it is
//!   never retried as if nothing ran.
//! - A non-zero exit is an outcome, not an error.

use super::progress::{FileReport, ProgressFile, POLL};
use super::sweep::Labelled;
use super::{ExecError, RunContext, RunOutcome};
use crate::job::Job;
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How the wait for a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The job's `limits.timeout_seconds` ran out.
    pub timed_out: bool,
    /// [`RunContext::stop`] fired (cancel, drain, lost lease).
    pub stopped: bool,
}

/// One place that runs jobs. Each step gets the run that [`JobExecutor::prepare`]
/// made; all but the last borrow it, so that waiting and polling can share it.
pub trait JobExecutor: Sync {
    /// What one run holds between its steps (a container's id, a process).
    type Run: Send + Sync;

    /// What runs the job, in the job's system log lines ("the container").
    fn what(&self) -> &'static str;

    /// Makes the place ready: the image and the container, or a working
    /// directory; the job's files staged in it.
    fn prepare(
        &self,
        job: &Job,
        ctx: &RunContext<'_>,
    ) -> impl Future<Output = Result<Self::Run, ExecError>> + Send;

    /// Starts the job's command.
    fn start(
        &self,
        run: &Self::Run,
        job: &Job,
        ctx: &RunContext<'_>,
    ) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Sends the job's output into `ctx.logs`, line by line, until it ends.
    fn stream_logs(&self, run: &Self::Run, ctx: &RunContext<'_>) -> JoinHandle<()>;

    /// Returns when the job has ended by itself (without a limit: [`drive`]
    /// applies the job's time limit).
    fn wait(&self, run: &Self::Run) -> impl Future<Output = ()> + Send;

    /// Stops the job: gracefully, then after `worker.stop_grace_seconds` hard.
    fn cancel(&self, run: &Self::Run) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Resolves when something the run feeds the job fails while it runs (a
    /// streamed input whose digest does not match, say): the job is stopped and
    /// the run ends with that error. Never, by default.
    fn failed(&self, _run: &Self::Run) -> impl Future<Output = ExecError> + Send {
        std::future::pending()
    }

    /// `progress.json` as it is now; `None` when absent or unreadable.
    fn read_progress(&self, run: &Self::Run) -> impl Future<Output = Option<FileReport>> + Send;

    /// How the ended job went: its exit, and its outputs by the output rules
    /// (`limits.output_bytes`, names, `result.json`).
    fn collect(
        &self,
        run: &Self::Run,
        job: &Job,
        ended: Ended,
    ) -> impl Future<Output = Result<RunOutcome, ExecError>> + Send;

    /// Removes everything the run made. Failures are logged, not returned: the
    /// outcome is known already, and the sweep tries again.
    fn clean_up(&self, run: Self::Run) -> impl Future<Output = ()> + Send;

    /// Like [`JobExecutor::clean_up`], but may start the removal on a task of its
    /// own, pushed to `later` for the caller to wait for once the job's outcome
    /// is written and its slot free (the removal decides nothing). By default it
    /// cleans up at once.
    fn clean_up_later(
        &self,
        run: Self::Run,
        later: &std::sync::Mutex<Vec<JoinHandle<()>>>,
    ) -> impl Future<Output = ()> + Send {
        let _ = later;
        self.clean_up(run)
    }

    /// What runs of any worker left on this executor (for the sweep to judge).
    fn leftovers(&self) -> impl Future<Output = Result<Vec<Labelled>, ExecError>> + Send;

    /// Removes one leftover that nobody runs any more (stopping it if it still runs).
    fn remove_leftover(&self, leftover: &Labelled) -> impl Future<Output = ()> + Send;
}

/// One run of `job` on `exec`, from prepare to clean up.
pub async fn drive<E: JobExecutor>(
    exec: &E,
    job: &Job,
    ctx: &RunContext<'_>,
) -> Result<RunOutcome, ExecError> {
    let run = exec.prepare(job, ctx).await?;
    let result = async {
        exec.start(&run, job, ctx).await?;
        follow(exec, &run, job, ctx)
            .await
            .map_err(|e| ExecError::AfterStart(Box::new(e)))
    }
    .await;
    match ctx.remove_later {
        Some(later) => exec.clean_up_later(run, later).await,
        None => exec.clean_up(run).await,
    }
    result
}

/// Follows the started job to its end, and reads what it left.
async fn follow<E: JobExecutor>(
    exec: &E,
    run: &E::Run,
    job: &Job,
    ctx: &RunContext<'_>,
) -> Result<RunOutcome, ExecError> {
    let follower = exec.stream_logs(run, ctx);
    let polling = async {
        match ctx.progress {
            Some(to) => loop {
                tokio::time::sleep(POLL).await;
                offer(to, exec.read_progress(run).await);
            },
            None => std::future::pending().await,
        }
    };
    let mut fed_failed = None;
    let (timed_out, stopped) = tokio::select! {
        waited = timeout(job.limits.timeout, exec.wait(run)) => (waited.is_err(), false),
        _ = ctx.stop.cancelled() => (false, true),
        // Never ends: it stops when the job does.
        () = polling => (false, false),
        e = exec.failed(run) => {
            fed_failed = Some(e);
            (false, true)
        }
    };
    if timed_out {
        ctx.logs
            .system(format!(
                "timed out after {} s (limits.timeout_seconds); stopping {}",
                job.limits.timeout.as_secs(),
                exec.what()
            ))
            .await;
    }
    if timed_out || stopped {
        exec.cancel(run).await?;
    }
    // The output ends when the job does, but a chatty job can leave much of it
    // still to read: wait for all of it (bounded by the job's own time limit, in
    // case the stream never closes).
    let reading = job.limits.timeout.max(Duration::from_secs(60));
    let mut follower = follower;
    if timeout(reading, &mut follower).await.is_err() {
        follower.abort();
        ctx.logs
            .system(format!(
                "the log of {} did not close; some output may be missing",
                exec.what()
            ))
            .await;
    }
    if let Some(to) = ctx.progress {
        // What the job wrote last, between the last poll and its exit.
        offer(to, exec.read_progress(run).await);
    }
    if let Some(e) = fed_failed {
        return Err(e);
    }
    exec.collect(run, job, Ended { timed_out, stopped }).await
}

/// Sends a read of `progress.json` when it differs from the last one.
fn offer(to: &ProgressFile, found: Option<FileReport>) {
    if let Some(found) = found {
        to.send_if_modified(|last| {
            let changed = last.as_ref() != Some(&found);
            if changed {
                *last = Some(found);
            }
            changed
        });
    }
}
