//! `dockhand logs <id> [--follow]`: the stored lines, then (with `--follow`) the
//! live ones until the job ends.
//!
//! Invariant: what is printed, and in which order, is what
//! [`crate::admin::logs::Follower`] yields (each `seq` once, none missed, the end
//! after the last line); this file only prints it, and keeps following through a
//! Redis restart (the follower keeps its place across a lost connection).

use super::{connect, job_hash, CliResult, Failure};
use crate::admin::logs::{Follower, Item, LogMessage};
use crate::backoff::Backoff;
use crate::config::Settings;
use crate::queue::Keys;
use std::time::Duration;

pub async fn run(settings: &Settings, id: &str, follow: bool, json: bool) -> CliResult {
    let Some((queue, bare)) = crate::job::JobRef::split(id) else {
        return Err(Failure::usage(format!(
            "{id:?} is not a job id (nor <queue>/<id>)"
        )));
    };
    let keys = Keys::new(&settings.redis.prefix);
    let (store, mut conn) = connect(settings).await?;
    let found = crate::admin::lookup::locate(&mut conn, &keys, settings, queue, bare).await?;
    // A job no queue holds yet may be about to be submitted: with --follow, wait
    // for it in the first queue this configuration serves (`default` unless
    // set), as `<queue>/<id>` names another.
    let first = settings.worker.queues.first().filter(|_| follow);
    let Some(job) = found.or_else(|| first.map(|q| crate::job::JobRef::new(q, bare))) else {
        return Err(Failure::failed(format!(
            "job {id} not found: no worker has recorded it and no queue holds it (a finished \
             job's log expires after jobs.retention_seconds)"
        )));
    };
    let mut follower = Follower::new(store, keys.clone(), &job, 0);

    if !follow {
        while let Some(line) = follower.next_stored().await? {
            print(json, &line);
        }
        if follower.last_seq() == 0
            && job_hash(&mut conn, &keys.job(&job.queue, &job.id))
                .await?
                .is_empty()
        {
            return Err(Failure::failed(format!(
                "job {id} not found: no worker has recorded it (a finished job's log expires \
                 after jobs.retention_seconds); `dockhand status {id}` also finds one still waiting in its queue"
            )));
        }
        return Ok(());
    }
    drop(conn);

    // Redis may restart while we follow: reconnect, and go on after the last
    // line printed.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut said_lost = false;
    loop {
        match follower.next().await {
            Ok(Some(Item::Line(line))) => print(json, &line),
            Ok(Some(Item::Waiting)) => {
                eprintln!("dockhand: waiting for job {id} to be picked up by a worker")
            }
            Ok(Some(Item::End { .. })) | Ok(None) => return Ok(()),
            Err(e) if e.is_connection() => {
                if !said_lost {
                    eprintln!(
                        "dockhand: lost Redis while following job {id} ({}); reconnecting",
                        crate::telemetry::error_chain(&e)
                    );
                    said_lost = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The status a finished job ended with, read after following its log.
pub async fn final_status(
    settings: &Settings,
    job: &crate::job::JobRef,
) -> Result<String, Failure> {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    Ok(job_hash(&mut conn, &keys.job(&job.queue, &job.id))
        .await?
        .remove("status")
        .unwrap_or_default())
}

fn print(json: bool, line: &LogMessage) {
    if json {
        let raw = serde_json::to_string(line).expect("a log message always serializes");
        outln!("{raw}");
        return;
    }
    match line.stream.as_str() {
        "stderr" => eprintln!("{}", line.line),
        "system" => eprintln!("[dockhand] {}", line.line),
        _ => outln!("{}", line.line),
    }
}
