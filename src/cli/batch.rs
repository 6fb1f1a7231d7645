//! `dockhand batch open|status`: a batch's size, and how many of its jobs ended
//! (`crate::batch` says how each is counted once and the batch completes once).

use super::{connect, CliResult, Failure};
use crate::batch::{self, Counted};
use crate::config::Settings;
use crate::queue::Keys;

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Say how many jobs the batch has (instead of a job's `batch_size`).
    #[command(after_help = "Examples:
  dockhand batch open frames-42 200
  redis-cli HGETALL dockhand:batch:frames-42

A batch completes when that many of its jobs have ended; then one
batch.completed event is published on dockhand:events (and kept in the stream
of that name) and delivered to the subscribers that list it.")]
    Open {
        /// The batch id, as its jobs name it in `batch`.
        id: String,
        /// How many jobs it has.
        size: u64,
    },
    /// Show the batch's size and how many of its jobs ended, by status and reason.
    Status {
        /// The batch id.
        id: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: &Settings, action: Action) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let (retention, max) = (
        settings.jobs.retention_seconds,
        settings.jobs.events_max_len,
    );
    match action {
        Action::Open { id, size } => {
            check_id(&id)?;
            if size == 0 {
                return Err(Failure::usage("a batch has at least 1 job"));
            }
            match batch::open(&mut conn, &keys, &id, size, max, retention).await? {
                Counted::Conflict { size: had } => Err(Failure::failed(format!(
                    "batch {id} has size {had} already"
                ))),
                Counted::Completed { .. } => {
                    outln!("batch {id}: size {size}; complete");
                    Ok(())
                }
                Counted::Open => {
                    outln!("batch {id}: size {size}");
                    Ok(())
                }
            }
        }
        Action::Status { id, json } => {
            check_id(&id)?;
            let Some(state) = batch::state(&mut conn, &keys, &id).await? else {
                return Err(Failure::failed(format!(
                    "no batch {id} (none of its jobs ended yet, nor was it opened; or it expired)"
                )));
            };
            if json {
                outln!("{}", serde_json::to_value(&state).unwrap_or_default());
                return Ok(());
            }
            let size = state
                .size
                .map_or("unknown yet".to_string(), |n| n.to_string());
            outln!("{:<13} {}", "id", state.id);
            outln!("{:<13} {size}", "size");
            outln!("{:<13} {}", "ended", state.ended);
            for (status, n) in &state.counts {
                outln!("{:<13} {n}", status);
            }
            for (reason, n) in &state.reasons {
                outln!("{:<13} {n}", format!("  {reason}"));
            }
            if let Some(at) = &state.completed_at {
                outln!("{:<13} {at}", "completed_at");
            }
            Ok(())
        }
    }
}

fn check_id(id: &str) -> Result<(), Failure> {
    if crate::job::is_valid_job_id(id) {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{id:?} is not a batch id ([A-Za-z0-9_.-], 1 to 128 characters; no `:`)"
        )))
    }
}
