//! `dockhand limit set|rm|list`: fleet-wide limits on a `concurrency_key`
//! (`crate::limits` says how slots are held and why none leaks).

use super::{connect, CliResult, Failure};
use crate::config::Settings;
use crate::limits::{self, Limit};
use crate::queue::Keys;

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Set (replace) a key's limit: at most N running, and/or N starts per window.
    #[command(after_help = "Examples:
  dockhand limit set gpu --concurrency 3
  dockhand limit set api-x --rate 10/min
  dockhand limit set render --concurrency 4 --rate 100/h

Jobs count against a key through the spec's `concurrency_key`. A job that finds
no room waits (status scheduled) and looks again when a slot may be free; it
holds no worker slot meanwhile. The change applies to the next job that starts.")]
    Set {
        /// The key, as jobs name it in `concurrency_key`.
        key: String,
        /// Jobs of the key running at once, across every worker.
        #[arg(long, value_name = "N")]
        concurrency: Option<u32>,
        /// Starts of the key per window: N/s, N/min, N/h or N/<seconds>s.
        #[arg(long, value_name = "N/WINDOW")]
        rate: Option<String>,
    },
    /// Remove a key's limit (its jobs then run as permits allow).
    Rm {
        /// The key.
        key: String,
    },
    /// List the limits, with how many jobs hold a slot of each now.
    List {
        /// One JSON object per key and line.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: &Settings, action: Action) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    match action {
        Action::Set {
            key,
            concurrency,
            rate,
        } => {
            check_key(&key)?;
            let (rate, per_seconds) = match rate.as_deref().map(Limit::parse_rate).transpose() {
                Ok(Some((n, s))) => (Some(n), Some(s)),
                Ok(None) => (None, None),
                Err(e) => return Err(Failure::usage(e)),
            };
            let limit = Limit {
                concurrency,
                rate,
                per_seconds,
            };
            limit.check().map_err(Failure::usage)?;
            let (_store, mut conn) = connect(settings).await?;
            limits::set(&mut conn, &keys, &key, &limit).await?;
            outln!("limit {key}: {}", describe(&limit));
            Ok(())
        }
        Action::Rm { key } => {
            check_key(&key)?;
            let (_store, mut conn) = connect(settings).await?;
            if !limits::remove(&mut conn, &keys, &key).await? {
                return Err(Failure::failed(format!("no limit is set on {key}")));
            }
            outln!("limit {key} removed");
            Ok(())
        }
        Action::List { json } => {
            let (_store, mut conn) = connect(settings).await?;
            let all = limits::list(&mut conn, &keys).await?;
            if !json {
                outln!("{:<24} {:>8} LIMIT", "KEY", "RUNNING");
            }
            for (key, limit, running) in all {
                if json {
                    let v = serde_json::json!({"key": key, "limit": limit, "running": running});
                    outln!("{v}");
                } else {
                    let shown = limit
                        .map(|l| describe(&l))
                        .unwrap_or_else(|| "(unreadable JSON)".into());
                    outln!("{key:<24} {running:>8} {shown}");
                }
            }
            Ok(())
        }
    }
}

fn check_key(key: &str) -> Result<(), Failure> {
    if crate::config::is_valid_queue_name(key) {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{key:?} is not a key name ([A-Za-z0-9_.-], 1 to 64 characters)"
        )))
    }
}

fn describe(l: &Limit) -> String {
    let mut parts = Vec::new();
    if let Some(n) = l.concurrency {
        parts.push(format!("at most {n} running"));
    }
    if let (Some(n), Some(s)) = (l.rate, l.per_seconds) {
        parts.push(format!("at most {n} starts per {s} s"));
    }
    parts.join(", ")
}
