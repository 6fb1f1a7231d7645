//! `dockhand jobs`: recorded jobs, newest first, filtered by queue, status,
//! reason and age ([`admin::jobs::list`]); `dockhand retry <id>`: a finished job
//! run again under the same id, as its next attempt ([`admin::jobs::retry`]).

use super::{connect, CliResult};
use crate::admin;
use crate::config::Settings;
use crate::queue::Keys;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  dockhand jobs
  dockhand jobs --queue builds --status aborted --reason timeout
  dockhand jobs --since 2026-12-01T00:00:00Z --json | jq -r .id

Lists the jobs workers have recorded, newest first. With --limit rows shown, a
last line (stderr) gives the --cursor to see the next page.")]
pub struct Args {
    /// Only this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only this status: queued, scheduled, building, running, completed, aborted.
    #[arg(long)]
    pub status: Option<String>,
    /// Only this reason (aborted jobs): exit_code, timeout, cancelled, ...
    #[arg(long)]
    pub reason: Option<String>,
    /// Only jobs created at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// At most this many jobs (1 to 500).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Start after this cursor (printed by the previous page).
    #[arg(long)]
    pub cursor: Option<String>,
    /// One JSON object per job and line, with typed values.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: &Settings, args: Args) -> CliResult {
    let filter = admin::jobs::filter(
        args.queue.as_deref(),
        args.status.as_deref(),
        args.reason.as_deref(),
        args.since.as_deref(),
    )?;
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let (rows, next) = admin::jobs::list(
        &mut conn,
        &keys,
        settings,
        &filter,
        args.cursor.as_deref(),
        args.limit,
    )
    .await?;
    if !args.json {
        outln!(
            "{:<28} {:<16} {:<10} {:<16} {:>4} {:<24}",
            "JOB",
            "QUEUE",
            "STATUS",
            "REASON",
            "EXIT",
            "CREATED"
        );
    }
    let shown = rows.len();
    for row in rows {
        if args.json {
            outln!("{row}");
            continue;
        }
        let s = |k: &str| row[k].as_str().unwrap_or("").to_string();
        let exit = row["exit_code"]
            .as_i64()
            .map(|c| c.to_string())
            .unwrap_or_default();
        outln!(
            "{:<28} {:<16} {:<10} {:<16} {:>4} {:<24}",
            s("id"),
            s("queue"),
            s("status"),
            s("reason"),
            exit,
            s("created_at")
        );
    }
    if let Some(next) = next.filter(|_| shown > 0 || args.cursor.is_some()) {
        eprintln!("dockhand: more may follow: --cursor {next}");
    }
    Ok(())
}

/// `dockhand retry <id>`.
pub async fn retry(settings: &Settings, id: &str) -> CliResult {
    admin::job_ref(id)?;
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let r = admin::jobs::retry(&mut conn, &keys, settings, id).await?;
    outln!(
        "job {id} queued again on {} as attempt {} (entry {})",
        r.queue,
        r.attempt,
        r.entry
    );
    Ok(())
}
