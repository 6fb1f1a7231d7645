//! The `dockhand` binary: parse arguments, load settings once, set up tracing, run.
//! Exit codes: 0 ok, 1 the thing asked for failed, 2 bad usage.

use clap::{Parser, Subcommand};
use dockhand::cli;
use dockhand::config::{Overrides, Settings};
use dockhand::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const MAIN_AFTER_HELP: &str = "\
Examples:
  dockhand worker --queue default --concurrency 4
  dockhand submit --image dockhand-busybox:latest --cmd 'echo hi' --follow
  dockhand submit job.json --queue builds
  dockhand status <id>
  dockhand logs <id> --follow
  dockhand queues
  dockhand jobs --status aborted
  dockhand schedule add nightly '0 3 * * *' job.json --tz Europe/Paris
  dockhand serve --listen 127.0.0.1:8080
  dockhand --redis-url redis://10.0.0.5:6379/ workers

Redis: --redis-url, else REDIS_URL, else redis.url (redis://127.0.0.1:6379/).
Write it as redis://host:port/ (rediss:// for TLS, unix:///path for a socket).

Exit codes:
  0    ok
  1    the thing asked for failed (for `submit --follow`: the job did not complete)
  2    bad usage: unknown arguments, an invalid job spec or id, a bad config or URL
  141  stdout was closed before everything was written (`dockhand queues | head -1`)";

const STATUS_AFTER_HELP: &str = "\
Examples:
  dockhand status report-42
  dockhand status report-42 --json | jq -r .status

A job that waits in its queue unread by any worker has no state yet: status says
so (`claimed  not yet`). An id found nowhere exits 1.";

const LOGS_AFTER_HELP: &str = "\
Examples:
  dockhand logs report-42
  dockhand logs report-42 --follow
  dockhand logs report-42 --json | jq -r .line

stdout lines go to stdout; stderr and Dockhand's own lines to stderr.";

#[derive(Parser)]
#[command(
    name = "dockhand",
    version,
    about = "A Redis-backed task queue whose jobs are containers",
    after_help = MAIN_AFTER_HELP
)]
struct Cli {
    /// A TOML file overriding config/default.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where Redis is (overrides REDIS_URL and redis.url).
    #[arg(long, global = true, value_name = "URL")]
    redis_url: Option<String>,
    /// How the process logs to stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Claim and run jobs from one or more queues (until SIGINT/SIGTERM).
    Worker {
        /// A queue to serve (repeat for several); default from worker.queues.
        #[arg(long = "queue", value_name = "QUEUE")]
        queues: Vec<String>,
        /// Jobs run at the same time; default worker.concurrency.
        #[arg(long, value_name = "N")]
        concurrency: Option<usize>,
        /// This worker host's stable id (labels its containers); default the host name.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
    },
    /// Submit a job: a JSON spec from a file or `-` (stdin), and/or flags.
    Submit(cli::submit::Args),
    /// Show a job's state.
    #[command(after_help = STATUS_AFTER_HELP)]
    Status {
        /// The job id (the spec's `id`, or the stream entry id `submit` printed).
        id: String,
        /// Print the whole job hash as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's log lines; with --follow, keep printing until the job ends.
    #[command(after_help = LOGS_AFTER_HELP)]
    Logs {
        /// The job id.
        id: String,
        /// Keep printing new lines until the job ends (waits for a job not started yet).
        #[arg(long, short)]
        follow: bool,
        /// Print each line as its JSON message.
        #[arg(long)]
        json: bool,
    },
    /// List queues: waiting, running, scheduled, inbox and dead counts, and live workers.
    Queues {
        /// One JSON object per queue and line, with numbers as numbers.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a queued or scheduled one never starts, a running one is stopped.
    Cancel {
        /// The job id; an id no worker and no queue knows exits 1.
        id: String,
    },
    /// List worker processes and whether they are alive.
    Workers {
        /// One JSON object per worker process and line: what it announced, and `alive`.
        #[arg(long)]
        json: bool,
    },
    /// List recorded jobs, newest first, filtered by queue, status, reason, time.
    Jobs(cli::jobs::Args),
    /// Run a finished job again: the same id, as its next attempt.
    Retry {
        /// The job id (it must have ended: completed or aborted).
        id: String,
    },
    /// Pause or resume a queue: workers claim nothing from a paused queue.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Fleet-wide limits on a job's `concurrency_key`: set, remove, list.
    Limit {
        #[command(subcommand)]
        action: cli::limit::Action,
    },
    /// Periodic jobs: add, list, remove, pause or resume a cron schedule.
    Schedule {
        #[command(subcommand)]
        action: cli::schedule::Action,
    },
    /// Batches: give one its size, or see how many of its jobs ended.
    Batch {
        #[command(subcommand)]
        action: cli::batch::Action,
    },
    /// Serve the HTTP API, live logs and events (SSE), metrics and the dashboard.
    Serve {
        /// Where to listen (overrides api.listen), e.g. 127.0.0.1:8080.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Check what a worker needs with this configuration (Redis, Docker, images,
    /// result URLs, the SSRF guards) and say what to do about what is missing.
    Doctor,
    /// Entries a queue could not run: list them, run one again, or delete one.
    Dead(cli::dead::Args),
    /// Manage profiles (job templates), and build a profile's image on every worker.
    Profile {
        #[command(subcommand)]
        action: cli::profile::Action,
    },
    /// Manage webhook subscribers.
    Subscriber {
        #[command(subcommand)]
        action: cli::subscriber::Action,
    },
    /// Webhook deliveries: replay, list attempts, or run only the delivery loop.
    Webhooks {
        #[command(subcommand)]
        action: cli::webhooks::Action,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Stop claiming from the queue (running jobs finish; nothing is lost).
    Pause {
        /// The queue name.
        queue: String,
    },
    /// Claim from the queue again.
    Resume {
        /// The queue name.
        queue: String,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    telemetry::init(args.log_format);
    let mut overrides = Overrides {
        redis_url: args.redis_url.clone(),
        ..Default::default()
    };
    if let Command::Worker {
        queues,
        concurrency,
        id,
    } = &args.command
    {
        overrides.queues = queues.clone();
        overrides.concurrency = *concurrency;
        overrides.worker_id = id.clone();
    }
    let settings = match Settings::load(args.config.as_deref(), &overrides) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("dockhand: {}", telemetry::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dockhand: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Worker { .. } => {
                let (shutdown, stop_now) = shutdown_signals();
                dockhand::worker::run_with(settings, shutdown, stop_now)
                    .await
                    .map_err(|e| cli::Failure::from_error(&e))
            }
            Command::Submit(submit) => cli::submit::run(&settings, submit).await,
            Command::Status { id, json } => cli::status::run(&settings, &id, json).await,
            Command::Logs { id, follow, json } => {
                cli::logs::run(&settings, &id, follow, json).await
            }
            Command::Queues { json } => cli::queues::run(&settings, json).await,
            Command::Cancel { id } => cli::cancel::run(&settings, &id).await,
            Command::Workers { json } => cli::workers::run(&settings, json).await,
            Command::Doctor => cli::doctor::run(settings.clone()).await,
            Command::Jobs(args) => cli::jobs::run(&settings, args).await,
            Command::Retry { id } => cli::jobs::retry(&settings, &id).await,
            Command::Queue { action } => match action {
                QueueAction::Pause { queue } => {
                    cli::queues::set_paused(&settings, &queue, true).await
                }
                QueueAction::Resume { queue } => {
                    cli::queues::set_paused(&settings, &queue, false).await
                }
            },
            Command::Limit { action } => cli::limit::run(&settings, action).await,
            Command::Schedule { action } => cli::schedule::run(&settings, action).await,
            Command::Batch { action } => cli::batch::run(&settings, action).await,
            Command::Serve { listen } => {
                let (shutdown, _) = shutdown_signals();
                cli::serve::run(settings, listen, shutdown).await
            }
            Command::Dead(args) => cli::dead::run(&settings, args).await,
            Command::Profile { action } => cli::profile::run(&settings, action).await,
            Command::Subscriber { action } => cli::subscriber::run(&settings, action).await,
            Command::Webhooks { action } => {
                let (shutdown, _) = shutdown_signals();
                cli::webhooks::run(settings, action, shutdown).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("dockhand: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Two futures: the first completes on the first SIGINT or SIGTERM (drain), the
/// second on the next one (stop running jobs now).
fn shutdown_signals() -> (
    impl std::future::Future<Output = ()>,
    impl std::future::Future<Output = ()>,
) {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut signals = Signals::new();
        signals.next().await;
        eprintln!("dockhand: stopping: running jobs may finish (signal again to stop them now)");
        let _ = first_tx.send(());
        signals.next().await;
        let _ = second_tx.send(());
    });
    (
        async move {
            let _ = first_rx.await;
        },
        async move {
            let _ = second_rx.await;
        },
    )
}

/// SIGINT or SIGTERM, as a stream.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every positional and flag of every command says what it is.
    #[test]
    fn every_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "dockhand", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:#?}");
        Cli::command().debug_assert();
    }
}
