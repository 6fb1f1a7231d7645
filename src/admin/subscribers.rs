//! The webhook subscriber registry (`dockhand:subscribers`): add, list, remove,
//! rotate a secret.
//!
//! Invariants:
//! - A secret is shown once: in what [`add`] or [`rotate`] returns when it made
//!   it. Listings carry it masked.
//! - A subscriber is checked before it is saved (URL, events, queues, secret); a
//!   URL that this configuration's SSRF guard would refuse, or events that are
//!   never delivered, are saved all the same (workers read their own settings)
//!   and come back as warnings that name the setting to change.

use super::AdminError;
use crate::config::Settings;
use crate::queue::Keys;
use crate::store::Conn;
use crate::webhook::{subscribers, Secret, SendError, Subscriber};
use deadpool_redis::redis::AsyncCommands;
use std::collections::BTreeMap;

/// A subscriber to register.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct NewSubscriber {
    pub url: String,
    /// Empty: job.completed and job.aborted.
    #[serde(default)]
    pub events: Vec<String>,
    /// Empty: every queue.
    #[serde(default)]
    pub queues: Vec<String>,
    /// A `whsec_...` secret; none: one is generated.
    #[serde(default)]
    pub secret: Option<String>,
}

/// A subscriber registered.
#[derive(Debug, Clone)]
pub struct Added {
    pub subscriber: Subscriber,
    /// The secret, when it was generated here (shown this once).
    pub generated_secret: Option<String>,
    pub warnings: Vec<String>,
}

fn check_name(name: &str) -> Result<(), AdminError> {
    if name.is_empty()
        || name.len() > 128
        || name.contains(char::is_whitespace)
        || name.starts_with("job:")
    {
        return Err(AdminError::Invalid(format!(
            "{name:?} is not a subscriber name (1 to 128 characters, no spaces, not starting with job:)"
        )));
    }
    Ok(())
}

fn new_secret() -> Result<String, AdminError> {
    Secret::generate()
        .map(|s| s.to_whsec())
        .map_err(|e| AdminError::Conflict(format!("cannot make a secret: {e}")))
}

/// Registers (or replaces) subscriber `name`.
pub async fn add(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    name: &str,
    new: NewSubscriber,
) -> Result<Added, AdminError> {
    check_name(name)?;
    let generated = new.secret.is_none();
    let secret = match new.secret {
        Some(s) => s,
        None => new_secret()?,
    };
    let sub = Subscriber {
        url: new.url,
        secret: secret.clone(),
        events: if new.events.is_empty() {
            subscribers::default_events()
        } else {
            new.events
        },
        queues: if new.queues.is_empty() {
            vec!["*".into()]
        } else {
            new.queues
        },
        disabled: None,
        previous_secret: None,
        previous_until: None,
    };
    subscribers::check(&sub).map_err(AdminError::Invalid)?;
    save(conn, keys, name, &sub).await?;
    let mut warnings = Vec::new();
    // Accepted (the types are real, and a later version may deliver them), but
    // said: otherwise the subscriber waits for webhooks that never come.
    let never = subscribers::never_delivered(&sub.events);
    if !never.is_empty() {
        warnings.push(format!(
            "no webhook is ever delivered for {}; only for {}. Every event is published on {} \
             (pub/sub, and kept in its queue's events stream)",
            never.join(", "),
            delivered_list(),
            keys.events_channel()
        ));
    }
    if let Some(refused) = refused_by_guard(settings, &sub.url).await {
        warnings.push(format!(
            "deliveries to {} will be dead-lettered: {refused}",
            sub.url
        ));
    }
    Ok(Added {
        subscriber: sub,
        generated_secret: generated.then_some(secret),
        warnings,
    })
}

/// The delivered event types in words: `a, b and c`.
fn delivered_list() -> String {
    match subscribers::DELIVERED_EVENTS.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Why the SSRF guard, set as this configuration sets it, would refuse every
/// delivery to `url` (the message names the setting that allows it). `None` when
/// the guard lets the URL's addresses through, or the URL cannot be checked here.
async fn refused_by_guard(settings: &Settings, url: &str) -> Option<String> {
    let guard = crate::webhook::Guard::new(&settings.webhooks.allow_networks);
    match crate::webhook::send::precheck(url, &guard).await {
        Err(SendError::Refused { source, .. }) => Some(source.to_string()),
        _ => None,
    }
}

/// Every subscriber by name, secrets masked; an unreadable entry says so.
pub async fn list(conn: &mut Conn, keys: &Keys) -> Result<Vec<serde_json::Value>, AdminError> {
    let all: BTreeMap<String, String> = conn.hgetall(keys.subscribers()).await?;
    Ok(all
        .into_iter()
        .map(
            |(name, raw)| match serde_json::from_str::<Subscriber>(&raw) {
                Ok(s) => serde_json::json!({
                    "name": name, "url": s.url, "events": s.events, "queues": s.queues,
                    "secret": s.masked_secret(), "disabled": s.disabled,
                }),
                Err(e) => serde_json::json!({"name": name, "error": format!("unreadable: {e}")}),
            },
        )
        .collect())
}

/// Removes subscriber `name`; its pending deliveries are dead-lettered when next tried.
pub async fn remove(conn: &mut Conn, keys: &Keys, name: &str) -> Result<(), AdminError> {
    let removed: i64 = conn.hdel(keys.subscribers(), name).await?;
    if removed == 0 {
        return Err(AdminError::NotFound(format!("no subscriber named {name}")));
    }
    announce(conn, keys, name).await
}

/// Tells the workers that the registry changed, so that they read it again
/// (see `webhook::outbox::Registry`).
async fn announce(conn: &mut Conn, keys: &Keys, name: &str) -> Result<(), AdminError> {
    let _: i64 = conn.publish(keys.subscribers_channel(), name).await?;
    Ok(())
}

/// Gives subscriber `name` a new secret (`secret`, or a generated one); the old
/// one also signs for `webhooks.rotation_overlap_seconds`. Returns the new secret.
pub async fn rotate(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    name: &str,
    secret: Option<String>,
) -> Result<String, AdminError> {
    let raw: Option<String> = conn.hget(keys.subscribers(), name).await?;
    let mut sub: Subscriber = raw
        .and_then(|r| serde_json::from_str(&r).ok())
        .ok_or_else(|| AdminError::NotFound(format!("no subscriber named {name}")))?;
    let new = match secret {
        Some(s) => s,
        None => new_secret()?,
    };
    let overlap = settings.webhooks.rotation_overlap_seconds as i64 * 1000;
    sub.previous_secret = Some(std::mem::replace(&mut sub.secret, new.clone()));
    sub.previous_until = Some(chrono::Utc::now().timestamp_millis() + overlap);
    subscribers::check(&sub).map_err(AdminError::Invalid)?;
    save(conn, keys, name, &sub).await?;
    Ok(new)
}

async fn save(
    conn: &mut Conn,
    keys: &Keys,
    name: &str,
    sub: &Subscriber,
) -> Result<(), AdminError> {
    let json = serde_json::to_string(sub)
        .map_err(|e| AdminError::Invalid(format!("the subscriber cannot be stored: {e}")))?;
    let _: i64 = conn.hset(keys.subscribers(), name, json).await?;
    announce(conn, keys, name).await
}
