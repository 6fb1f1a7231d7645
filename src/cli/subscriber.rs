//! `dockhand subscriber add|list|rm|rotate`: the webhook subscriber registry
//! ([`crate::admin::subscribers`] says what is checked and what is shown once).

use super::{connect, CliResult};
use crate::admin::subscribers::{self, NewSubscriber};
use crate::config::Settings;
use crate::queue::Keys;

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Register (or replace) a subscriber; a secret is generated and printed once when none is given.
    Add {
        /// The subscriber's name, for `list`, `rm` and `rotate`.
        name: String,
        /// Where to POST the signed webhooks (http or https).
        url: String,
        /// Event types, comma-separated (default job.completed,job.aborted; `*` for all).
        /// Only job.completed, job.aborted and job.progress (named, not by `*`) are
        /// delivered; naming another warns.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Queues, comma-separated (default every queue).
        #[arg(long, value_delimiter = ',')]
        queues: Vec<String>,
        /// A `whsec_...` secret to use instead of a generated one.
        #[arg(long)]
        secret: Option<String>,
    },
    /// List subscribers (secrets masked).
    List {
        /// One JSON object per subscriber and line.
        #[arg(long)]
        json: bool,
    },
    /// Remove a subscriber; its pending deliveries are dead-lettered when next tried.
    Rm {
        /// The subscriber's name.
        name: String,
    },
    /// Give a subscriber a new secret; the old one keeps signing for webhooks.rotation_overlap_seconds.
    Rotate {
        /// The subscriber's name.
        name: String,
        /// A `whsec_...` secret to use instead of a generated one.
        #[arg(long)]
        secret: Option<String>,
    },
}

pub async fn run(settings: &Settings, action: Action) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    match action {
        Action::Add {
            name,
            url,
            events,
            queues,
            secret,
        } => {
            let new = NewSubscriber {
                url,
                events,
                queues,
                secret,
            };
            let added = subscribers::add(&mut conn, &keys, settings, &name, new).await?;
            let sub = &added.subscriber;
            outln!(
                "subscriber {name} -> {} ({})",
                sub.url,
                sub.events.join(",")
            );
            for w in &added.warnings {
                eprintln!("warning: {w}");
            }
            if let Some(secret) = added.generated_secret {
                outln!("secret: {secret}");
            }
            Ok(())
        }
        Action::List { json } => {
            for s in subscribers::list(&mut conn, &keys).await? {
                if json {
                    outln!("{s}");
                    continue;
                }
                let name = s["name"].as_str().unwrap_or("");
                if let Some(e) = s["error"].as_str() {
                    outln!("{name:<20} {e}");
                    continue;
                }
                let join = |v: &serde_json::Value| {
                    v.as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default()
                };
                outln!(
                    "{name:<20} {:<40} events={} queues={} secret={}{}",
                    s["url"].as_str().unwrap_or(""),
                    join(&s["events"]),
                    join(&s["queues"]),
                    s["secret"].as_str().unwrap_or(""),
                    s["disabled"]
                        .as_str()
                        .map(|d| format!(" DISABLED: {d}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        Action::Rm { name } => {
            subscribers::remove(&mut conn, &keys, &name).await?;
            outln!("subscriber {name} removed");
            Ok(())
        }
        Action::Rotate { name, secret } => {
            let new = subscribers::rotate(&mut conn, &keys, settings, &name, secret).await?;
            outln!("subscriber {name}: new secret {new}");
            outln!(
                "the old secret also signs for {} s",
                settings.webhooks.rotation_overlap_seconds
            );
            Ok(())
        }
    }
}
