//! Step one of a claimed entry's turn: is there a job to run? The entry is parsed,
//! the job id claimed in its hash, the profile applied and the spec validated;
//! then the checks that may end the turn before anything runs (a duplicate, a
//! finished job redelivered, a cancel, a job lost too often, a job not due yet).
//!
//! Invariants:
//! - The job hash is claimed (made or taken over by this entry) before anything
//!   else is written; from then on every write checks that this entry owns it.
//! - A job that cannot be parsed or validated is refused naming the field, and
//!   its raw entry is kept (see [`Ending::Reject`]); nothing about it is lost.

use super::context::Ctx;
use super::ending::Ending;
use super::running::Registration;
use crate::job::{self, Job, JobSpec, Reason, Rejection, Status};
use crate::queue::Entry;
use crate::state::{self, Claim, Claimed, JobRecord};
use crate::store::StoreError;

/// What step one decided.
pub(super) enum Admission {
    /// The job runs now: its record (attempts so far, creation time) and the job.
    Run(JobRecord, Box<Job>),
    /// The job was started in the claim's own step: its record as written
    /// (`running`, this attempt's), and the job.
    Started(JobRecord, Box<Job>),
    /// The turn ends without a run.
    End(Ending),
}

/// Decides whether the entry's job runs now. `stored` is the entry with its
/// secret values redacted: what the job hash keeps.
pub(super) async fn admit(
    ctx: &Ctx,
    entry: &Entry,
    registration: &Registration,
    stored: &[u8],
) -> Result<Admission, StoreError> {
    let (id, parsed) = read(entry);
    tracing::Span::current().record("job_id", id.as_str());
    registration.set_job(&entry.queue, &id);

    let created = crate::time::from_stream_id(&entry.id).unwrap_or_else(crate::time::now);
    let mut record = JobRecord::new(&id, &entry.queue, created);
    if let Ok(spec) = &parsed {
        record.metadata = metadata(spec);
        record.image = spec.image.clone();
    }
    let unique = parsed
        .as_ref()
        .ok()
        .and_then(|s| s.unique_for_seconds)
        .unwrap_or(0);
    // A producer's own entry (no requeue token) is most likely a new job: it is
    // validated before the claim, and when it can run at once (see
    // [`at_once`]), claimed and started in one step. Its delays count from the
    // entry's time, which for a new job is its submission.
    let mut early = None;
    if entry.token.is_empty() {
        if let Ok(spec) = &parsed {
            early = Some(validate(ctx, entry, &mut record, Ok(spec.clone())).await?);
        }
    }
    let start = match &early {
        Some(Ok(job)) if at_once(job) => Some(super::attempt::running(
            super::attempt::begun(ctx, record.clone()),
            job,
        )),
        _ => None,
    };
    let claimed = claim(ctx, entry, &record, stored, unique, start.as_ref()).await?;
    match &claimed.claim {
        Claim::Duplicate { status } => {
            tracing::info!(existing_status = %status, "duplicate job id; not run again");
            let event = serde_json::json!({
                "type": "job.duplicate",
                "timestamp": crate::time::now(),
                "data": { "id": id, "queue": entry.queue, "entry": entry.id, "status": status, "metadata": record.metadata },
            });
            let event = event.to_string();
            return Ok(Admission::End(Ending::Duplicate { id, event }));
        }
        Claim::Redelivered { status } if Status::parse(status).is_some_and(Status::is_terminal) => {
            return Ok(Admission::End(Ending::AlreadyFinished { id }));
        }
        _ => {}
    }
    // From here this worker owns the job; every write checks that it still does.
    record.attempt = claimed.attempt;
    // A hash this claim made (or started afresh) has no log beside it yet.
    record.absent.log = claimed.claim == Claim::New;
    if !claimed.created_at.is_empty() {
        record.created_at = claimed.created_at.clone();
    }
    let early = match (claimed.started, start, early) {
        (true, Some(mut started), Some(Ok(job))) => {
            started.absent.log = true; // the claim made the hash
            super::ending::count(ctx, &started, "job.started");
            return Ok(Admission::Started(started, Box::new(job)));
        }
        (_, _, early) => early,
    };
    // Validated before the claim only if the claim made the job: else its
    // delays count from the hash's creation time, read by the claim.
    let validated = match early {
        Some(v) if claimed.claim == Claim::New => v,
        _ => validate(ctx, entry, &mut record, parsed).await?,
    };
    let job = match validated {
        Ok(job) => job,
        Err(rejection) => return Ok(Admission::End(Ending::Reject(record, rejection))),
    };
    Ok(before_running(ctx, &claimed, record, job))
}

/// The spec's `metadata` for the record and its events, unless it is over
/// [`job::MAX_METADATA_BYTES`] (then validation refuses the job, and its events
/// must not carry it either).
fn metadata(spec: &JobSpec) -> Option<serde_json::Value> {
    let m = spec.metadata.as_ref()?;
    (job::metadata_bytes(m) <= job::MAX_METADATA_BYTES).then(|| m.clone())
}

/// The job's id and its parsed spec. The id is the spec's `id` if it is valid,
/// else the stream entry id; a spec whose `id` is invalid is itself rejected,
/// naming the field.
fn read(entry: &Entry) -> (String, Result<JobSpec, Rejection>) {
    let parsed = match &entry.job {
        None => Err(Rejection::invalid(
            "job",
            "the stream entry has no `job` field",
        )),
        Some(raw) => job::parse(raw),
    };
    match parsed {
        Ok(spec) => match spec.id.clone() {
            None => (entry.id.clone(), Ok(spec)),
            Some(id) if job::is_valid_job_id(&id) => (id, Ok(spec)),
            Some(id) => (
                entry.id.clone(),
                Err(Rejection::invalid(
                    "id",
                    format!("{id:?} is not a job id ([A-Za-z0-9_.-], 1 to 128 characters; no `:`)"),
                )),
            ),
        },
        Err(rejection) => {
            let id = entry
                .job
                .as_deref()
                .and_then(job::requested_id)
                .unwrap_or_else(|| entry.id.clone());
            (id, Err(rejection))
        }
    }
}

/// Makes or takes over the job hash for this entry (one Lua step). The hash keeps
/// the spec as text that every reader can read: bytes that are not UTF-8 become
/// U+FFFD there (the dead stream keeps a refused entry's bytes as they came).
async fn claim(
    ctx: &Ctx,
    entry: &Entry,
    record: &JobRecord,
    stored: &[u8],
    unique_for_seconds: u64,
    start: Option<&JobRecord>,
) -> Result<Claimed, StoreError> {
    let spec = String::from_utf8_lossy(stored);
    let stored = spec.as_bytes();
    ctx.store
        .persist(|mut conn| async move {
            let claimed = state::claim(
                &mut conn,
                &ctx.keys,
                &entry.id,
                record,
                stored,
                &ctx.consumer,
                &entry.token,
                ctx.settings.jobs.events_max_len,
                unique_for_seconds,
                start,
            )
            .await?;
            // Replication is one ordered stream: this also covers the
            // XREADGROUP that delivered the entry, made before on another connection.
            let stream = entry.stream(&ctx.keys);
            ctx.store.replicate(&mut conn, "claim", &stream).await;
            Ok(claimed)
        })
        .await
}

/// The spec with its profile applied, checked against the worker's limits and
/// policy. Delays count from the job's first submission.
async fn validate(
    ctx: &Ctx,
    entry: &Entry,
    record: &mut JobRecord,
    parsed: Result<JobSpec, Rejection>,
) -> Result<Result<Job, Rejection>, StoreError> {
    let raw: &[u8] = entry.job.as_deref().unwrap_or_default();
    let parsed = match parsed {
        Ok(spec) => with_profile(ctx, raw, spec).await?,
        Err(rejection) => Err(rejection),
    };
    if let (Ok(spec), None) = (&parsed, &record.metadata) {
        record.metadata = metadata(spec); // from the profile
    }
    let created = chrono::DateTime::parse_from_rfc3339(&record.created_at)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    Ok(parsed.and_then(|spec| {
        job::validate_at(
            spec,
            record.id.clone(),
            &entry.queue,
            &ctx.settings.jobs.limits,
            &ctx.settings.policy,
            created,
        )
        .and_then(|job| crate::executor::offered(&ctx.settings, &job).map(|()| job))
    }))
}

/// The spec of a job naming a profile: the profile's fields, overridden by the
/// job's. An unknown profile is a rejection naming it.
async fn with_profile(
    ctx: &Ctx,
    raw: &[u8],
    spec: JobSpec,
) -> Result<Result<JobSpec, Rejection>, StoreError> {
    let Some(name) = spec.profile.clone() else {
        return Ok(Ok(spec));
    };
    let profile = ctx
        .store
        .persist(|mut conn| {
            let name = &name;
            async move { crate::profile::get(&mut conn, &ctx.keys, name).await }
        })
        .await?;
    Ok(crate::profile::apply(raw, &name, profile.as_deref()))
}

/// True when nothing comes between a new job's claim and its start: it waits
/// for no parent, counts against no limit, is not due later, and needs no image
/// made from git (those write states of their own first).
fn at_once(job: &Job) -> bool {
    job.spec.after.is_empty()
        && job.spec.concurrency_key.is_none()
        && job.git.is_none()
        && due_later(job).is_none()
}

/// When the job is due, if that is later than now (50 ms of slack: a delay
/// that has as good as passed runs now).
fn due_later(job: &Job) -> Option<chrono::DateTime<chrono::Utc>> {
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(50);
    job.not_before.filter(|at| *at > soon)
}

/// What ends a valid job's turn before it runs: a cancel asked for already, a
/// job whose worker was lost too often, or a new job that is not due yet.
fn before_running(ctx: &Ctx, claimed: &Claimed, mut record: JobRecord, job: Job) -> Admission {
    let job = Box::new(job);
    if claimed.cancel_requested {
        record.abort(Reason::Cancelled, "cancelled before it started");
        return Admission::End(Ending::Finish(record, job));
    }
    let lost_runs = claimed.deliveries.saturating_sub(1);
    let max = ctx.settings.worker.max_deliveries;
    if matches!(claimed.claim, Claim::Redelivered { .. }) && lost_runs >= max {
        let why = format!("its worker was lost {lost_runs} times (worker.max_deliveries = {max})");
        record.abort(Reason::WorkerLost, why);
        return Admission::End(Ending::Finish(record, job));
    }
    if claimed.claim == Claim::New {
        if let Some(at) = due_later(&job) {
            tracing::info!(run_at = %at, "job scheduled for later");
            let event = "job.queued";
            return Admission::End(Ending::Schedule { record, at, event });
        }
    }
    Admission::Run(record, job)
}
