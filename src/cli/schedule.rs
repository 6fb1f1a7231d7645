//! `dockhand schedule add|list|rm|pause|resume`: periodic jobs, through
//! [`admin::schedules`]. A bad name, cron, time zone, `--missed` or job spec exits
//! 2 naming the field; an unknown schedule exits 1.

use super::{connect, CliResult, Failure};
use crate::admin;
use crate::config::Settings;
use crate::queue::cron::{Definition, Missed};
use crate::queue::Keys;
use std::io::Read;

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Add a schedule, or replace the one of that name (it keeps its last run).
    #[command(after_help = "Examples:
  dockhand schedule add nightly-index '0 3 * * *' job.json
  dockhand schedule add report '30 8 * * MON-FRI' report.json --tz Europe/Paris --queue reports
  echo '{\"image\":\"dockhand-busybox:latest\",\"command\":\"date\"}' | dockhand schedule add tick '*/5 * * * *' -

Each tick enqueues one job, `<name>-<tick in epoch seconds>`, once however many
workers run. The spec is checked as `submit` checks it (exit 2 naming the field);
it may not have an `id`. A new schedule starts now: earlier ticks do not run.")]
    Add {
        /// The schedule's name: [A-Za-z0-9_.-], 1 to 64 characters.
        name: String,
        /// Cron: minute hour day-of-month month day-of-week (or 6 fields, seconds first).
        cron: String,
        /// The job spec: a JSON file, or `-` for stdin.
        file: String,
        /// The queue its jobs go to.
        #[arg(long, short, default_value = "default")]
        queue: String,
        /// The time zone the cron is read in (an IANA name; daylight saving is followed).
        #[arg(long, default_value = "UTC", value_name = "ZONE")]
        tz: String,
        /// Ticks missed while no worker ran: `skip` them, or run `one` job for the latest.
        #[arg(long, default_value = "skip", value_parser = ["skip", "one"])]
        missed: String,
    },
    /// List the schedules: cron, time zone, queue, next and last run, paused.
    List {
        /// One JSON object per schedule and line.
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule (jobs already enqueued stay).
    Rm {
        /// The schedule's name.
        name: String,
    },
    /// Pause a schedule: its ticks pass without a job, and are not run later.
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Resume a paused schedule from its next tick.
    Resume {
        /// The schedule's name.
        name: String,
    },
}

pub async fn run(settings: &Settings, action: Action) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let now = chrono::Utc::now();
    match action {
        Action::Add {
            name,
            cron,
            file,
            queue,
            tz,
            missed,
        } => {
            let def = Definition {
                cron,
                tz,
                queue,
                job: read_spec(&file)?,
                missed: if missed == "one" {
                    Missed::One
                } else {
                    Missed::Skip
                },
                paused: false,
            };
            let (_store, mut conn) = connect(settings).await?;
            let added = admin::schedules::add(&mut conn, &keys, settings, &name, def, now).await?;
            for warning in &added.warnings {
                eprintln!("dockhand: warning: {warning}");
            }
            let verb = if added.replaced { "replaced" } else { "added" };
            let next = added.next_run.as_deref().unwrap_or("never");
            outln!("schedule {name} {verb}; next run {next}");
            Ok(())
        }
        Action::List { json } => {
            let (_store, mut conn) = connect(settings).await?;
            let all = admin::schedules::list(&mut conn, &keys, now).await?;
            if !json {
                outln!(
                    "{:<24} {:<16} {:<16} {:<12} {:<25} {:<25} PAUSED",
                    "NAME",
                    "CRON",
                    "TZ",
                    "QUEUE",
                    "NEXT RUN",
                    "LAST RUN"
                );
            }
            for s in all {
                if json {
                    outln!("{}", serde_json::to_value(&s).unwrap_or_default());
                    continue;
                }
                outln!(
                    "{:<24} {:<16} {:<16} {:<12} {:<25} {:<25} {}",
                    s.name,
                    s.cron,
                    s.tz,
                    s.queue,
                    s.next_run.as_deref().unwrap_or("-"),
                    s.last_run.as_deref().unwrap_or("-"),
                    if s.paused { "yes" } else { "no" }
                );
                if let Some(error) = &s.error {
                    eprintln!(
                        "dockhand: schedule {} is skipped by workers: {error}",
                        s.name
                    );
                }
            }
            Ok(())
        }
        Action::Rm { name } => {
            let (_store, mut conn) = connect(settings).await?;
            admin::schedules::remove(&mut conn, &keys, &name).await?;
            outln!("schedule {name} removed");
            Ok(())
        }
        Action::Pause { name } => set_paused(settings, &keys, &name, true).await,
        Action::Resume { name } => set_paused(settings, &keys, &name, false).await,
    }
}

async fn set_paused(settings: &Settings, keys: &Keys, name: &str, paused: bool) -> CliResult {
    let (_store, mut conn) = connect(settings).await?;
    let changed = admin::schedules::set_paused(&mut conn, keys, name, paused).await?;
    match (changed, paused) {
        (true, true) => outln!("schedule {name} paused"),
        (true, false) => outln!("schedule {name} resumed"),
        (false, true) => outln!("schedule {name} was paused already"),
        (false, false) => outln!("schedule {name} is not paused"),
    }
    Ok(())
}

fn read_spec(file: &str) -> Result<serde_json::Value, Failure> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Failure::usage(format!("cannot read {file}: {e}")))?
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("{file} is not valid JSON: {e}")))
}
