//! `dockhand cancel <id>`: the request is written to the job hash first, then
//! announced on pub/sub, so a worker that misses the announcement still finds it.

use super::{connect, CliResult, Failure};
use crate::config::Settings;
use crate::queue::Keys;

pub async fn run(settings: &Settings, id: &str) -> CliResult {
    if !crate::job::is_valid_job_id(id) {
        return Err(Failure::usage(format!("{id:?} is not a job id")));
    }
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let status =
        crate::state::request_cancel(&mut conn, &keys, id, settings.jobs.retention_seconds).await?;
    match status.as_deref() {
        Some(s @ ("completed" | "aborted")) => Err(Failure::failed(format!(
            "job {id} already ended {s}; nothing to cancel"
        ))),
        Some(s) => {
            outln!("cancel requested for job {id} ({s})");
            Ok(())
        }
        None => {
            outln!("cancel requested for job {id} (not seen by a worker yet: it will not run)");
            Ok(())
        }
    }
}
