//! `dockhand status <id>`: the job hash, readable, or as typed JSON with `--json`
//! ([`admin::jobs::typed`]); for a job still waiting in its queue unread by any
//! worker, what the queue says.

use super::{connect, CliResult};
use crate::admin;
use crate::admin::jobs::Found;
use crate::admin::lookup::{self, Unclaimed};
use crate::config::Settings;
use crate::queue::Keys;

/// Fields in the order a person reads them; the raw spec is shown only with --json.
const ORDER: &[&str] = &[
    "id",
    "queue",
    "status",
    "reason",
    "error",
    "exit_code",
    "attempt",
    "created_at",
    "started_at",
    "finished_at",
    "worker",
    "image",
    "image_id",
    "progress",
    "result_text",
    "result_data",
    "files",
    "files_dropped",
    "metadata",
    "deliveries",
];

pub async fn run(settings: &Settings, text: &str, json: bool) -> CliResult {
    let (_, id) = admin::job_ref(text)?;
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let found = admin::jobs::find(&mut conn, &keys, settings, text).await?;
    // What a job with `after` waits for (or waited for), from its wait hash.
    let wait = match &found {
        Found::Recorded(hash) => {
            let queue = hash.get("queue").map(String::as_str).unwrap_or_default();
            let job = crate::job::JobRef::new(queue, id);
            crate::deps::wait_state(&mut conn, &keys, &job).await?
        }
        Found::Unclaimed { .. } => None,
    };
    if json {
        let mut value = found.to_json(id);
        if let (Some(w), Some(obj)) = (&wait, value.as_object_mut()) {
            obj.insert("after".into(), serde_json::to_value(w).unwrap_or_default());
        }
        outln!("{value}");
    }
    match found {
        Found::Recorded(hash) if !json => {
            for field in ORDER {
                if let Some(value) = hash.get(*field).filter(|v| !v.is_empty() && *v != "[]") {
                    outln!("{field:<13} {value}");
                }
            }
            if let Some(w) = wait {
                print_wait(&w);
            }
        }
        Found::Recorded(_) => {}
        Found::Unclaimed { at, cancel } => {
            if !json {
                print_unclaimed(id, &at, cancel);
            }
            if let Some(hint) = lookup::unserved_hint(&mut conn, &keys, &at.queue).await? {
                eprintln!("dockhand: {hint}");
            }
        }
    }
    Ok(())
}

/// The parents of a job with `after`, each with how it ended or `waiting`.
fn print_wait(w: &crate::deps::WaitState) {
    let deadline = w.deadline.as_deref().unwrap_or("?");
    match w.state.as_str() {
        "waiting" => outln!("{:<13} waiting ({}), until {deadline}", "after", w.policy),
        _ => outln!(
            "{:<13} released ({}): {}",
            "after",
            w.policy,
            w.why.as_deref().or(w.outcome.as_deref()).unwrap_or("")
        ),
    }
    for (parent, how) in &w.parents {
        outln!("{:<13}   {parent}: {how}", "");
    }
}

/// A job waiting in its queue that no worker has read yet: it has no hash, so
/// only what the queue says is shown (`status` is `queued`, as the hash will say).
fn print_unclaimed(id: &str, found: &Unclaimed, cancel: bool) {
    let claimed = match &found.entry {
        Some(_) => "not yet (waiting in the queue's stream)",
        None => "not yet (waiting in the queue's inbox)",
    };
    outln!("{:<13} {id}", "id");
    outln!("{:<13} {}", "queue", found.queue);
    outln!("{:<13} queued", "status");
    outln!("{:<13} {claimed}", "claimed");
    if let Some(entry) = &found.entry {
        outln!("{:<13} {entry}", "entry");
    }
    if cancel {
        outln!("{:<13} requested: it will not run", "cancel");
    }
}
