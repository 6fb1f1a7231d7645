//! The turn of one claimed entry, top to bottom: admit (parse, claim the id,
//! validate) → attempt (prepare the image, run, conclude, record) → end (write
//! the outcome, acknowledge). Each step returns what happens next, and the next
//! step consumes it; no step calls back into an earlier one.
//!
//! Invariants:
//! - The entry is acknowledged only after the job's terminal state is written (or
//!   the entry is found to be a duplicate or an already-finished redelivery).
//! - The permit is given back as soon as the turn's outcome is written; the
//!   container's removal runs beside that write, and the turn waits for it
//!   after the permit is free (inside the tracked task, so a draining worker
//!   waits for it too).
//! - A job that cannot be parsed or validated is recorded `aborted` with reason
//!   `invalid_spec` (or `policy_denied`) and its raw entry kept in the dead stream.
//! - If Redis is unreachable when the outcome must be written, the write is retried
//!   (`Store::persist`); if that fails for good the entry stays pending, to be run
//!   again, never lost.
//! - A Redis step that fails for another reason (Redis answered with an error)
//!   gets the whole turn tried again, `worker.max_deliveries` times in all; then
//!   the entry goes to the dead stream with the error and is acknowledged, so no
//!   entry stays pending for ever under a live worker.

use super::admit::{admit, Admission};
use super::attempt::attempt;
use super::context::Ctx;
use super::ending::Turn;
use super::limit::{self, Gate};
use super::running::Registration;
use super::waiting::{self, Wait};
use crate::backoff::Backoff;
use crate::job;
use crate::queue::Entry;
use crate::store::StoreError;
use crate::telemetry::error_chain;
use std::time::Duration;
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
    let raw: &[u8] = entry.job.as_deref().unwrap_or_default();
    // What is stored (job hash, dead stream): the entry without its secret values;
    // for an entry without `job`, every field it has.
    let stored = match &entry.fields {
        Some(fields) => job::for_storage(fields),
        None => job::for_storage(raw),
    };
    let remove_later = std::sync::Mutex::new(Vec::new());
    let turn = Turn {
        ctx: &ctx,
        entry: &entry,
        raw,
        stored: &stored,
        remove_later: &remove_later,
    };
    let tries = ctx.settings.worker.max_deliveries.max(1);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    for tried in 1..=tries {
        let error = match take(&turn, &registration).instrument(span.clone()).await {
            Ok(()) => break,
            Err(e) => e,
        };
        if error.is_connection() {
            tracing::error!(parent: &span, error = %error_chain(&error), "could not record the job's outcome; the entry stays pending");
            break;
        }
        if tried < tries {
            tracing::warn!(parent: &span, error = %error_chain(&error), tried, "a Redis step of this entry failed; its turn is taken again");
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        tracing::error!(parent: &span, error = %error_chain(&error), tried, "a Redis step of this entry keeps failing; the entry goes to the dead stream");
        if let Err(e) = turn.give_up(&error).await {
            tracing::error!(parent: &span, error = %error_chain(&e), "could not move the entry to the dead stream; it stays pending");
        }
    }
    // The outcome is written: the slot is free for the next job whether or not
    // the container's removal (started when the run ended, and deciding
    // nothing) is done. The registration stays until it is, so the orphan
    // sweep leaves the container to us, and a drain waits for its removal.
    drop(permit);
    let removals = std::mem::take(&mut *remove_later.lock().unwrap_or_else(|e| e.into_inner()));
    for removal in removals {
        let _ = removal.await;
    }
    drop(registration);
}

/// One try at the entry's turn, from admission to its end.
async fn take(turn: &Turn<'_>, registration: &Registration) -> Result<(), StoreError> {
    let (ctx, entry) = (turn.ctx, turn.entry);
    let ending = match admit(ctx, entry, registration, turn.stored).await? {
        // Nothing to wait for, no limit: see `admit::at_once`.
        Admission::Started(record, job) => attempt(turn, registration, record, job, true).await?,
        Admission::Run(record, job) => match waiting::gate(ctx, entry, turn.raw, record, job)
            .await?
        {
            Wait::Run(record, job) => match limit::gate(ctx, registration, record, job).await? {
                Gate::Pass(record, job) => {
                    let (id, key) = (record.id.clone(), job.spec.concurrency_key.clone());
                    let ending = attempt(turn, registration, record, job, false).await;
                    limit::release(ctx, registration, &ctx.keys, key.as_deref(), &id).await;
                    ending?
                }
                Gate::Wait(ending) => ending,
            },
            Wait::End(ending) => ending,
        },
        Admission::End(ending) => ending,
    };
    turn.end(ending).await
}
