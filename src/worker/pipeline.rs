//! The turn of one claimed entry, top to bottom: admit (parse, claim the id,
//! validate) → attempt (prepare the image, run, conclude, record) → end (write
//! the outcome, acknowledge). Each step returns what happens next, and the next
//! step consumes it; no step calls back into an earlier one.
//!
//! Invariants:
//! - The entry is acknowledged only after the job's terminal state is written (or
//!   the entry is found to be a duplicate or an already-finished redelivery).
//! - A job that cannot be parsed or validated is recorded `aborted` with reason
//!   `invalid_spec` (or `policy_denied`) and its raw entry kept in the dead stream.
//! - If Redis is unreachable when the outcome must be written, the write is retried
//!   (`Store::persist`); if that fails for good the entry stays pending, to be run
//!   again, never lost.

use super::admit::{admit, Admission};
use super::attempt::attempt;
use super::context::Ctx;
use super::ending::Turn;
use super::running::Registration;
use crate::job;
use crate::queue::Entry;
use crate::store::StoreError;
use crate::telemetry::error_chain;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// Handles one entry while holding `permit`; `registration` keeps its lease renewed.
pub(super) async fn run(
    ctx: Ctx,
    entry: Entry,
    registration: Registration,
    permit: OwnedSemaphorePermit,
) {
    let span = tracing::info_span!("job", queue = %entry.queue, entry = %entry.id, job_id = tracing::field::Empty);
    if let Err(e) = turn(&ctx, &entry, &registration).instrument(span).await {
        tracing::error!(
            queue = %entry.queue,
            entry = %entry.id,
            error = %error_chain(&e),
            "could not record the job's outcome; the entry stays pending"
        );
    }
    drop(registration);
    drop(permit);
}

async fn turn(ctx: &Ctx, entry: &Entry, registration: &Registration) -> Result<(), StoreError> {
    let raw: &[u8] = entry.job.as_deref().unwrap_or_default();
    // What is stored (job hash, dead stream): the entry without its secret values.
    let stored = job::redact(raw);
    let turn = Turn {
        ctx,
        entry,
        raw,
        stored: &stored,
    };
    let ending = match admit(ctx, entry, registration, &stored).await? {
        Admission::Run(record, job) => attempt(&turn, registration, record, job).await?,
        Admission::End(ending) => ending,
    };
    turn.end(ending).await
}
