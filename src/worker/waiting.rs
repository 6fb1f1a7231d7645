//! Between admission and the limit gate: a job with `after` waits for its
//! parents (see `crate::deps`). It is parked (status `waiting`, its entry
//! acknowledged, nothing held) until the step that records its last parent's
//! end adds it to its queue again; then it runs here with its parents' files
//! staged under `/dockhand/input/<parent-id>/`, or is aborted
//! `dependency_failed` naming the parent.
//!
//! Invariants:
//! - Parking and every look at the wait happen in one Lua step that checks
//!   that this entry owns the job, so a release is never lost between a look
//!   and a park, and an entry that parked a job already released only lets go.
//! - The parents' files and the job's own inputs together stay within
//!   [`job::MAX_STAGED_BYTES`], like inputs alone; past it the job is refused
//!   (`invalid_spec`, naming `after`) rather than run with part of them.

use super::context::Ctx;
use super::ending::Ending;
use crate::deps::{self, WaitFor, Waited};
use crate::job::{self, Job, Reason, StagedFile, Status, INPUT_DIR};
use crate::queue::Entry;
use crate::state::JobRecord;
use crate::store::StoreError;

/// What the wait decided.
pub(super) enum Wait {
    /// Run now.
    Run(JobRecord, Box<Job>),
    /// Not now, or never.
    End(Ending),
}

/// Parks the job until its parents have ended, or lets it through.
pub(super) async fn gate(
    ctx: &Ctx,
    entry: &Entry,
    raw: &[u8],
    mut record: JobRecord,
    mut job: Box<Job>,
) -> Result<Wait, StoreError> {
    let me = job::JobRef::new(&entry.queue, &record.id);
    let Ok(Some(after)) = job::After::of(&job.spec, &me) else {
        return Ok(Wait::Run(record, job));
    };
    let wait_ms = ctx
        .settings
        .jobs
        .dependency_wait_seconds
        .saturating_mul(1000);
    let deadline_ms = chrono::Utc::now()
        .timestamp_millis()
        .saturating_add(i64::try_from(wait_ms).unwrap_or(i64::MAX));
    let mut parked = record.clone();
    parked.set_status(Status::Waiting);
    let event = parked.event("job.waiting");
    let waited = ctx
        .store
        .persist(|mut conn| {
            let w = WaitFor {
                id: &record.id,
                queue: &entry.queue,
                entry: &entry.id,
                consumer: &ctx.consumer,
                spec: raw,
                after: &after,
                deadline_ms,
                event: &event,
            };
            let max = ctx.settings.jobs.events_max_len;
            async move { deps::wait(&mut conn, &ctx.keys, &w, max).await }
        })
        .await?;
    match waited {
        Waited::NotOwned => Ok(Wait::End(Ending::NotOwned)),
        Waited::Stale => Ok(Wait::End(Ending::LetGo)),
        Waited::Waiting => {
            tracing::info!(parents = ?after.parents, "job waits for its parents");
            Ok(Wait::End(Ending::LetGo))
        }
        Waited::Failed { parent, why } => {
            tracing::info!(%parent, %why, "a parent failed the job's policy");
            record.abort(Reason::DependencyFailed, why);
            Ok(Wait::End(Ending::Finish(record, job)))
        }
        Waited::Ready => match stage_parent_files(ctx, &after.parents, &mut job).await? {
            Ok(()) => Ok(Wait::Run(record, job)),
            Err(rejection) => Ok(Wait::End(Ending::Reject(record, rejection))),
        },
    }
}

/// Adds the parents' returned files to what is staged into the container, at
/// `/dockhand/input/<parent-id>/<name>`.
async fn stage_parent_files(
    ctx: &Ctx,
    parents: &[job::JobRef],
    job: &mut Job,
) -> Result<Result<(), job::Rejection>, StoreError> {
    let files = ctx
        .store
        .persist(|mut conn| async move { deps::parent_files(&mut conn, &ctx.keys, parents).await })
        .await?;
    let mut total: usize = job.files.iter().map(|f| f.content.len()).sum();
    for (parent, name, content) in files {
        total += content.len();
        if total > job::MAX_STAGED_BYTES {
            return Ok(Err(job::Rejection::invalid(
                "after",
                format!(
                    "the parents' files and the job's inputs add up to more than {} bytes (the most staged into one job)",
                    job::MAX_STAGED_BYTES
                ),
            )));
        }
        job.files.push(StagedFile {
            path: format!("{INPUT_DIR}/{parent}/{name}"),
            content,
            mode: 0o644,
        });
    }
    Ok(Ok(()))
}
