//! The subscriber registry: `dockhand:subscribers`, name → JSON, so that
//! `redis-cli HSET dockhand:subscribers <name> '{"url","secret","events","queues"}'`
//! works as well as `dockhand subscriber add`.
//!
//! Invariants: a stored subscriber always has a parseable URL and secret (the CLI
//! checks them; one written by hand that does not parse is reported when used, and
//! its deliveries are dead-lettered with the reason). Secrets never appear in logs
//! or in `list` output.

use super::{Secret, Target};
use serde::{Deserialize, Serialize};

/// The event types a job (or a batch) produces.
pub const EVENT_TYPES: &[&str] = &[
    "job.queued",
    "job.waiting",
    "job.started",
    "job.retrying",
    "job.completed",
    "job.aborted",
    "job.duplicate",
    "job.progress",
    "batch.completed",
];

/// The event types this version makes webhook deliveries for: a job's terminal
/// event, the one stored with its terminal state (see `outbox::enqueue_for_job`),
/// and its progress, made with each (rate-limited) `job.progress` event in the
/// same step (see `state::progress`), and a batch's `batch.completed`, stored with
/// the batch's last count (see `batch`). The other types are published on
/// `dockhand:events` only.
pub const DELIVERED_EVENTS: &[&str] = &[
    "job.completed",
    "job.aborted",
    "job.progress",
    "batch.completed",
];

/// Delivered only to a target that names them: `*` does not include them, so a
/// subscriber made for the terminal events is not flooded by a new type.
pub const OPT_IN_EVENTS: &[&str] = &["job.progress"];

/// Whether `named`, one entry of a target's `events`, asks for `event`.
pub fn names(named: &str, event: &str) -> bool {
    named == event || (named == "*" && !OPT_IN_EVENTS.contains(&event))
}

/// The event types in `events` that a subscriber may name but never gets as a
/// webhook, in the order given. `*` names none: it asks for whatever is delivered.
pub fn never_delivered(events: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for e in events {
        if e != "*" && !DELIVERED_EVENTS.contains(&e.as_str()) && !out.contains(&e.as_str()) {
            out.push(e);
        }
    }
    out
}

/// Which events a subscriber gets when it names none.
pub fn default_events() -> Vec<String> {
    vec!["job.completed".into(), "job.aborted".into()]
}

fn all_queues() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscriber {
    pub url: String,
    pub secret: String,
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    #[serde(default = "all_queues")]
    pub queues: Vec<String>,
    /// Set when a receiver answered 410 Gone: no more deliveries until re-added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
    /// The secret before the last rotation, still signing until `previous_until` (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_until: Option<i64>,
}

impl Subscriber {
    pub fn wants(&self, event: &str, queue: &str) -> bool {
        self.disabled.is_none()
            && self.events.iter().any(|e| names(e, event))
            && self.queues.iter().any(|q| q == queue || q == "*")
    }

    /// The delivery target at `now_ms`: the current secret, plus the previous one
    /// while its overlap lasts (both signatures are sent).
    pub fn target(&self, now_ms: i64) -> Result<Target, String> {
        let mut secrets = vec![parse_secret(&self.secret)?];
        if let (Some(old), Some(until)) = (&self.previous_secret, self.previous_until) {
            if now_ms < until {
                secrets.push(parse_secret(old)?);
            }
        }
        Ok(Target {
            url: self.url.clone(),
            secrets,
        })
    }

    /// The secret shown to a person: its first characters only.
    pub fn masked_secret(&self) -> String {
        let shown: String = self.secret.chars().take(10).collect();
        format!("{shown}…")
    }
}

fn parse_secret(text: &str) -> Result<Secret, String> {
    text.parse::<Secret>()
        .map_err(|e| format!("the subscriber's secret is unusable: {e}"))
}

/// Checks what `dockhand subscriber add` is given.
pub fn check(sub: &Subscriber) -> Result<(), String> {
    super::check_url(&sub.url).map_err(|e| format!("url {:?}: {e}", sub.url))?;
    parse_secret(&sub.secret)?;
    for e in &sub.events {
        if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
            return Err(format!(
                "unknown event type {e:?} (one of {})",
                EVENT_TYPES.join(", ")
            ));
        }
    }
    for q in &sub.queues {
        if q != "*" && !crate::job::is_valid_queue_name(q) {
            return Err(format!("{q:?} is not a queue name"));
        }
    }
    Ok(())
}

/// Checks one of a job's own `webhooks: [{url, secret, events}]`.
pub fn check_job_webhook(hook: &serde_json::Value) -> Result<(), String> {
    let Some(obj) = hook.as_object() else {
        return Err("must be an object {url, secret, events}".into());
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["url", "secret", "events"].contains(&k.as_str()))
    {
        return Err(format!("unknown field `{k}`"));
    }
    let url = obj
        .get("url")
        .and_then(|v| v.as_str())
        .ok_or("`url` (a string) is required")?;
    let secret = obj
        .get("secret")
        .and_then(|v| v.as_str())
        .ok_or("`secret` (whsec_...) is required")?;
    let events: Vec<String> = match obj.get("events") {
        None => default_events(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| "`events` must be a list of event types")?,
    };
    check(&Subscriber {
        url: url.into(),
        secret: secret.into(),
        events,
        queues: all_queues(),
        disabled: None,
        previous_secret: None,
        previous_until: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Subscriber {
        serde_json::from_str(
            r#"{"url":"http://127.0.0.1:9/x","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_are_terminal_events_on_every_queue() {
        let s = sub();
        assert!(s.wants("job.completed", "any") && s.wants("job.aborted", "q"));
        assert!(!s.wants("job.started", "q"));
        let mut d = sub();
        d.disabled = Some("410".into());
        assert!(!d.wants("job.completed", "q"));
    }

    #[test]
    fn progress_is_delivered_only_when_named() {
        let mut s = sub();
        s.events = vec!["*".into()];
        assert!(s.wants("job.completed", "q") && !s.wants("job.progress", "q"));
        s.events = vec!["job.progress".into()];
        assert!(s.wants("job.progress", "q") && !s.wants("job.completed", "q"));
        assert!(check(&s).is_ok());
    }

    #[test]
    fn only_terminal_and_progress_events_are_delivered() {
        let events = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(never_delivered(&default_events()).is_empty());
        assert!(never_delivered(&events(&["*"])).is_empty());
        assert_eq!(
            never_delivered(&events(&[
                "job.started",
                "job.completed",
                "job.queued",
                "job.started"
            ])),
            vec!["job.started", "job.queued"]
        );
        for e in EVENT_TYPES {
            assert_eq!(
                never_delivered(&events(&[e])).is_empty(),
                DELIVERED_EVENTS.contains(e),
                "{e}"
            );
        }
    }

    #[test]
    fn a_rotated_secret_signs_until_its_overlap_ends() {
        let mut s = sub();
        s.previous_secret = Some(s.secret.clone());
        s.secret = Secret::generate().unwrap().to_whsec();
        s.previous_until = Some(1_000);
        assert_eq!(s.target(999).unwrap().secrets.len(), 2);
        assert_eq!(s.target(1_000).unwrap().secrets.len(), 1);
    }

    #[test]
    fn bad_subscribers_are_refused_with_a_reason() {
        let mut s = sub();
        s.events = vec!["job.finished".into()];
        assert!(check(&s).unwrap_err().contains("job.finished"));
        let mut s = sub();
        s.secret = "nope".into();
        assert!(check(&s).unwrap_err().contains("secret"));
        let mut s = sub();
        s.url = "ftp://x".into();
        assert!(check(&s).is_err());
        assert!(!sub().masked_secret().contains("LaLaSw"));
    }
}
