//! Step two of a job's turn: the image. A job from `git` gets the image of its
//! commit (built, or found cached) and runs that; a job that names an image runs
//! it as it is.
//!
//! Invariants:
//! - Resolving the ref, fetching, checking out and building together get the
//!   job's `limits.timeout_seconds` (a stalled git server fails a step sooner, after
//!   `worker.git_timeout_seconds`). Past the deadline, or on a cancel, the future
//!   is dropped, which stops the blocking git work and the context archiving too
//!   (see `source::git` and `executor::build`), and releases the mirror lock.
//! - A failure says why in the job's terms (a [`Failure`]), and whether the
//!   Docker engine did not answer, in which case nothing of the job ran.

use super::images::{Images, PrepareError};
use crate::job::{Job, Reason};
use crate::logs::LogSender;
use crate::state::JobRecord;
use crate::telemetry::error_chain;

/// Why a job's image is not ready: the reason and a message naming the ref, the
/// URL or the builder's error.
pub(super) struct Failure {
    pub reason: Reason,
    pub message: String,
    /// The Docker engine did not answer: nothing of the job ran, it may run again.
    pub docker_unreachable: bool,
}

/// Makes the image of a job from `git` ready and points `job.image` at it; the
/// commit and image id go into `record`, and the metrics of a cache hit or a
/// build into `observed`.
pub(super) async fn git_image(
    images: &Images,
    job: &mut Job,
    record: &mut JobRecord,
    log: &LogSender,
    observed: &mut Vec<crate::metrics::Inc>,
) -> Result<(), Failure> {
    let Some(git) = job.git.clone() else {
        return Ok(());
    };
    let fail = |e: PrepareError| Failure {
        reason: e.reason(),
        message: error_chain(&e),
        docker_unreachable: e.docker_unreachable(),
    };
    // Git work and a build that never end must not hold the job (and its permit)
    // for ever: they get the same time limit as the run that follows.
    let limit = job.limits.timeout;
    let prepared = async {
        let commit = images.resolve(&git).await.map_err(PrepareError::from)?;
        // Recorded at once: a cancel or the deadline may come during the build.
        record.commit = Some(commit.clone());
        let ready = images.ensure(&git, &commit, log).await?;
        Ok::<_, PrepareError>((commit, ready))
    };
    let (commit, ready) = match tokio::time::timeout(limit, prepared).await {
        Ok(prepared) => prepared.map_err(fail)?,
        Err(_) => {
            return Err(Failure {
                reason: Reason::Timeout,
                message: format!(
                    "the image was not ready after {} s (limits.timeout_seconds)",
                    limit.as_secs()
                ),
                docker_unreachable: false,
            })
        }
    };
    observed.extend(ready.observed());
    if ready.built {
        tracing::info!(commit = %commit, image = %ready.tag, "image built for the job");
    } else {
        log.system(format!(
            "image {} (commit {commit}) is cached; not building",
            ready.tag
        ))
        .await;
    }
    record.image_id = Some(ready.image_id);
    record.image = Some(ready.tag.clone());
    job.image = ready.tag;
    Ok(())
}
