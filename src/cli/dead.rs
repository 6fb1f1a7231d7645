//! `dockhand dead`: lists the dead entries, and retries or deletes one or all of
//! them, through [`admin::dead`] (which says what a retry keeps and refuses).

use super::{connect, CliResult, Failure};
use crate::admin::{self, dead::Dead};
use crate::config::Settings;
use crate::queue::Keys;
use crate::store::Conn;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only this queue (default: every queue that has dead entries).
    #[arg(long)]
    pub queue: Option<String>,
    /// At most this many entries per queue, newest first.
    #[arg(long, default_value_t = 20)]
    pub count: usize,
    /// One JSON object per entry, a line each.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List dead entries (the default).
    List(ListArgs),
    /// Run a dead job again: by its job id or its dead entry id, or every one with --all.
    Retry {
        /// The job id, or the dead entry id (as `dead` lists them).
        #[arg(value_name = "ID", required_unless_present = "all")]
        target: Option<String>,
        /// Every dead entry (of --queue, or of every queue), oldest first.
        #[arg(long, conflicts_with = "target")]
        all: bool,
        /// The queue whose dead stream holds it (needed when a job id is in several).
        #[arg(long)]
        queue: Option<String>,
    },
    /// Delete a dead entry: by its job id or its dead entry id, or every one with --all.
    Rm {
        /// The job id, or the dead entry id (as `dead` lists them).
        #[arg(value_name = "ID", required_unless_present = "all")]
        target: Option<String>,
        /// Every dead entry (of --queue, or of every queue).
        #[arg(long, conflicts_with = "target")]
        all: bool,
        /// The queue whose dead stream holds it (needed when a job id is in several).
        #[arg(long)]
        queue: Option<String>,
    },
}

pub async fn run(settings: &Settings, args: Args) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    match args.action {
        None => list(&mut conn, &keys, args.list).await,
        Some(Action::List(l)) => list(&mut conn, &keys, l).await,
        Some(Action::Retry {
            all: true, queue, ..
        }) => {
            let bulk = admin::dead::all(&mut conn, &keys, queue.as_deref(), false).await?;
            report_bulk("queued again", bulk)
        }
        Some(Action::Rm {
            all: true, queue, ..
        }) => {
            let bulk = admin::dead::all(&mut conn, &keys, queue.as_deref(), true).await?;
            report_bulk("deleted", bulk)
        }
        Some(Action::Retry { target, queue, .. }) => {
            let target = target.unwrap_or_default();
            let dead = admin::dead::find(&mut conn, &keys, &target, queue.as_deref()).await?;
            let r = admin::dead::retry(&mut conn, &keys, &dead).await?;
            outln!(
                "job {} queued again on {} (entry {}); was {}: {}",
                r.job,
                r.queue,
                r.entry,
                dead.get("reason"),
                dead.get("error").lines().next().unwrap_or("")
            );
            Ok(())
        }
        Some(Action::Rm { target, queue, .. }) => {
            let target = target.unwrap_or_default();
            let dead = admin::dead::find(&mut conn, &keys, &target, queue.as_deref()).await?;
            admin::dead::remove(&mut conn, &keys, &dead).await?;
            outln!(
                "deleted dead entry {} ({}) of queue {}",
                dead.id,
                dead.get("id"),
                dead.queue
            );
            Ok(())
        }
    }
}

fn report_bulk(what: &str, bulk: admin::dead::Bulk) -> CliResult {
    outln!("{} dead entries {what}", bulk.done);
    for (id, why) in &bulk.refused {
        eprintln!("dockhand: dead entry {id} left alone: {why}");
    }
    if bulk.refused.is_empty() {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "{} dead entries could not be {what}",
            bulk.refused.len()
        )))
    }
}

async fn list(conn: &mut Conn, keys: &Keys, args: ListArgs) -> CliResult {
    let queues = match args.queue {
        Some(q) => vec![q],
        None => admin::dead::queues(conn, keys).await?,
    };
    let mut shown = 0;
    if !args.json {
        outln!(
            "{:<20} {:<24} {:<16} {:<26} {:<14} ERROR",
            "DEAD ENTRY",
            "AT",
            "QUEUE",
            "JOB",
            "REASON"
        );
    }
    for q in queues {
        let entries: Vec<Dead> = admin::dead::read(conn, keys, &q, Some(args.count)).await?;
        for d in entries {
            shown += 1;
            if args.json {
                outln!("{}", d.to_json());
            } else {
                let at = crate::time::from_stream_id(&d.id).unwrap_or_default();
                let error = d.get("error").lines().next().unwrap_or("");
                outln!(
                    "{:<20} {:<24} {:<16} {:<26} {:<14} {error}",
                    d.id,
                    at,
                    d.queue,
                    d.get("id"),
                    d.get("reason"),
                );
            }
        }
    }
    if shown == 0 && !args.json {
        outln!("(no dead entries)");
    }
    Ok(())
}
