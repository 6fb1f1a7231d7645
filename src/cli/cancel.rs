//! `dockhand cancel <id>`: the request is written to the job hash first, then
//! announced on pub/sub, so a worker that misses the announcement still finds it.
//! A job no worker has read yet has no hash: it is looked for in the queues, and
//! an id found nowhere is refused with nothing written (a request left under a
//! mistyped id would cancel a later job of that id).

use super::{connect, lookup, CliResult, Failure};
use crate::config::Settings;
use crate::queue::Keys;
use deadpool_redis::redis::AsyncCommands;

pub async fn run(settings: &Settings, id: &str) -> CliResult {
    if !crate::job::is_valid_job_id(id) {
        return Err(Failure::usage(format!("{id:?} is not a job id")));
    }
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let mut waiting = None;
    if !recorded(&mut conn, &keys, id).await? {
        waiting = lookup::unclaimed(&mut conn, &keys, settings, id).await?;
        // A worker may have read it while we looked.
        if waiting.is_none() && !recorded(&mut conn, &keys, id).await? {
            return Err(Failure::failed(format!(
                "no job {id}: no worker has recorded it and no queue holds it"
            )));
        }
    }
    let status =
        crate::state::request_cancel(&mut conn, &keys, id, settings.jobs.retention_seconds).await?;
    match (status.as_deref(), waiting) {
        (Some(s @ ("completed" | "aborted")), _) => Err(Failure::failed(format!(
            "job {id} already ended {s}; nothing to cancel"
        ))),
        (Some(s), _) => {
            outln!("cancel requested for job {id} ({s})");
            Ok(())
        }
        (None, found) => {
            let queue = found.map(|f| format!(" in queue {}", f.queue));
            outln!(
                "cancel requested for job {id} (waiting{}, not read by a worker yet: it will not run)",
                queue.unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// Whether a worker has recorded job `id` (its hash has a `status`).
async fn recorded(
    conn: &mut crate::store::Conn,
    keys: &Keys,
    id: &str,
) -> Result<bool, crate::store::StoreError> {
    Ok(conn.hexists(keys.job(id), "status").await?)
}
