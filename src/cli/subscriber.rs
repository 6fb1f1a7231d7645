//! `dockhand subscriber add|list|rm|rotate`: the webhook subscriber registry.

use super::{connect, CliResult, Failure};
use crate::config::Settings;
use crate::queue::Keys;
use crate::store::StoreError;
use crate::webhook::{subscribers, Secret, SendError, Subscriber};
use deadpool_redis::redis::AsyncCommands;
use std::collections::BTreeMap;

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Register (or replace) a subscriber; a secret is generated and printed once when none is given.
    Add {
        /// The subscriber's name, for `list`, `rm` and `rotate`.
        name: String,
        /// Where to POST the signed webhooks (http or https).
        url: String,
        /// Event types, comma-separated (default job.completed,job.aborted; `*` for all).
        /// Only job.completed and job.aborted are delivered; naming another warns.
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
    List,
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

/// Why the SSRF guard, set as this configuration sets it, would refuse every
/// delivery to `url` (the message names the setting that allows it). Workers read
/// their own configuration, so this is a warning, not a refusal. `None` when the
/// guard lets the URL's addresses through, or the URL cannot be checked here.
async fn refused_by_guard(settings: &Settings, url: &str) -> Option<String> {
    let guard = crate::webhook::Guard::new(&settings.webhooks.allow_networks);
    match crate::webhook::send::precheck(url, &guard).await {
        Err(SendError::Refused { source, .. }) => Some(source.to_string()),
        _ => None,
    }
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
            let generated = secret.is_none();
            let secret = match secret {
                Some(s) => s,
                None => Secret::generate()
                    .map_err(|e| Failure::failed(e.to_string()))?
                    .to_whsec(),
            };
            let sub = Subscriber {
                url,
                secret: secret.clone(),
                events: if events.is_empty() {
                    subscribers::default_events()
                } else {
                    events
                },
                queues: if queues.is_empty() {
                    vec!["*".into()]
                } else {
                    queues
                },
                disabled: None,
                previous_secret: None,
                previous_until: None,
            };
            subscribers::check(&sub).map_err(Failure::usage)?;
            save(&mut conn, &keys, &name, &sub).await?;
            outln!(
                "subscriber {name} -> {} ({})",
                sub.url,
                sub.events.join(",")
            );
            // Accepted (the types are real, and a later version may deliver them),
            // but said: otherwise the subscriber waits for webhooks that never come.
            let never = subscribers::never_delivered(&sub.events);
            if !never.is_empty() {
                eprintln!(
                    "warning: no webhook is ever delivered for {}; only for {}. \
                     Every event is published on {} (pub/sub, and kept in the stream of that name)",
                    never.join(", "),
                    subscribers::DELIVERED_EVENTS.join(" and "),
                    keys.events_channel()
                );
            }
            if let Some(refused) = refused_by_guard(settings, &sub.url).await {
                eprintln!(
                    "warning: deliveries to {} will be dead-lettered: {refused}",
                    sub.url
                );
            }
            if generated {
                outln!("secret: {secret}");
            }
            Ok(())
        }
        Action::List => {
            let all: BTreeMap<String, String> = conn
                .hgetall(keys.subscribers())
                .await
                .map_err(StoreError::from)?;
            for (name, raw) in all {
                match serde_json::from_str::<Subscriber>(&raw) {
                    Ok(s) => outln!(
                        "{name:<20} {:<40} events={} queues={} secret={}{}",
                        s.url,
                        s.events.join(","),
                        s.queues.join(","),
                        s.masked_secret(),
                        s.disabled
                            .as_ref()
                            .map(|d| format!(" DISABLED: {d}"))
                            .unwrap_or_default()
                    ),
                    Err(e) => outln!("{name:<20} unreadable: {e}"),
                }
            }
            Ok(())
        }
        Action::Rm { name } => {
            let removed: i64 = conn
                .hdel(keys.subscribers(), &name)
                .await
                .map_err(StoreError::from)?;
            if removed == 0 {
                return Err(Failure::failed(format!("no subscriber named {name}")));
            }
            outln!("subscriber {name} removed");
            Ok(())
        }
        Action::Rotate { name, secret } => {
            let raw: Option<String> = conn
                .hget(keys.subscribers(), &name)
                .await
                .map_err(StoreError::from)?;
            let mut sub: Subscriber = raw
                .and_then(|r| serde_json::from_str(&r).ok())
                .ok_or_else(|| Failure::failed(format!("no subscriber named {name}")))?;
            let new = match secret {
                Some(s) => s,
                None => Secret::generate()
                    .map_err(|e| Failure::failed(e.to_string()))?
                    .to_whsec(),
            };
            let overlap = settings.webhooks.rotation_overlap_seconds as i64 * 1000;
            sub.previous_secret = Some(std::mem::replace(&mut sub.secret, new.clone()));
            sub.previous_until = Some(chrono::Utc::now().timestamp_millis() + overlap);
            subscribers::check(&sub).map_err(Failure::usage)?;
            save(&mut conn, &keys, &name, &sub).await?;
            outln!("subscriber {name}: new secret {new}");
            outln!(
                "the old secret also signs for {} s",
                settings.webhooks.rotation_overlap_seconds
            );
            Ok(())
        }
    }
}

async fn save(
    conn: &mut crate::store::Conn,
    keys: &Keys,
    name: &str,
    sub: &Subscriber,
) -> Result<(), Failure> {
    if name.is_empty() || name.contains(char::is_whitespace) || name.starts_with("job:") {
        return Err(Failure::usage(format!("{name:?} is not a subscriber name")));
    }
    let json = serde_json::to_string(sub).map_err(|e| Failure::failed(e.to_string()))?;
    let _: i64 = conn
        .hset(keys.subscribers(), name, json)
        .await
        .map_err(StoreError::from)?;
    Ok(())
}
