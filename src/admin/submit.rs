//! Submitting a job: the spec checked as a worker will check it, then `XADD`ed
//! exactly as any producer would.
//!
//! The check runs the worker's own parsing and validation twice. First against the
//! widest policy and limits any worker could have: what fails there (a typo, a
//! wrong type, an unknown field, a bad id, an empty command, a value out of every
//! range) no worker would run, and is refused, naming the field. Then against this
//! machine's settings: what fails only there depends on the policy and limits of
//! the worker that claims the job, which may differ, so it is a warning and the
//! job is submitted all the same.
//!
//! Invariant: a spec with an `id` that a job already holds (recorded, or waiting
//! unread in a queue) is refused as a conflict before anything is written; one
//! racing past this check is still a duplicate to the worker, never run twice.

use super::{lookup, AdminError};
use crate::config::{ByteSize, LimitSettings, PolicySettings, Settings};
use crate::job::{self, JobSpec};
use crate::queue::Keys;
use crate::store::Conn;
use deadpool_redis::redis::AsyncCommands;

/// A job put in its queue.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The job id: the spec's `id`, else the stream entry's id.
    pub id: String,
    pub entry: String,
    pub queue: String,
    /// What this machine's policy or limits would refuse (another worker may not).
    pub warnings: Vec<String>,
}

/// Checks `spec` and adds it to `queue`'s stream.
pub async fn submit(
    conn: &mut Conn,
    keys: &Keys,
    settings: &Settings,
    queue: &str,
    spec: &serde_json::Value,
) -> Result<Submitted, AdminError> {
    super::queue_name(queue)?;
    if !spec.is_object() {
        return Err(AdminError::Invalid(
            "the job spec must be a JSON object".into(),
        ));
    }
    let raw = spec.to_string();
    let profile = match spec.get("profile").and_then(|p| p.as_str()) {
        Some(name) => Some((
            name.to_string(),
            crate::profile::get(conn, keys, name).await?,
        )),
        None => None,
    };
    let warnings = check(raw.as_bytes(), queue, profile, settings).map_err(AdminError::Invalid)?;
    let own_id = spec.get("id").and_then(|v| v.as_str());
    if let Some(id) = own_id {
        // Ids are unique within a queue: a job's keys are its queue's.
        let recorded = recorded(conn, keys, queue, id, spec).await?;
        let waiting = if recorded {
            None
        } else {
            lookup::unclaimed(conn, keys, settings, Some(queue), id).await?
        };
        if recorded || waiting.is_some() {
            return Err(AdminError::Conflict(format!(
                "a job with id {id} exists already (it is not run twice); \
                 to run it again use retry, submit with another id, or give the spec \
                 `unique_for_seconds` so the id frees once that long has passed"
            )));
        }
    }
    let lane = keys.lane(queue, job::requested_priority(raw.as_bytes()));
    let entry: String = conn.xadd(lane, "*", &[("job", &raw)]).await?;
    Ok(Submitted {
        id: own_id.map(str::to_string).unwrap_or_else(|| entry.clone()),
        entry,
        queue: queue.to_string(),
        warnings,
    })
}

/// Whether a job holds `id` now: recorded and, if the spec has a
/// `unique_for_seconds` window, not yet free again (finished, and the window
/// since its first submission over; the worker's claim applies the same rule).
async fn recorded(
    conn: &mut Conn,
    keys: &Keys,
    queue: &str,
    id: &str,
    spec: &serde_json::Value,
) -> Result<bool, AdminError> {
    let (status, created_ms): (Option<String>, Option<i64>) = deadpool_redis::redis::cmd("HMGET")
        .arg(keys.job(queue, id))
        .arg("status")
        .arg("created_ms")
        .query_async(&mut **conn)
        .await?;
    let Some(status) = status else {
        return Ok(false);
    };
    let window = spec.get("unique_for_seconds").and_then(|w| w.as_u64());
    let finished = status == "completed" || status == "aborted";
    let free = match window {
        Some(w) if finished => {
            created_ms.unwrap_or(0) + w as i64 * 1000 <= chrono::Utc::now().timestamp_millis()
        }
        _ => false,
    };
    Ok(!free)
}

/// Checks the entry `raw` as a worker serving `queue` would. `profile` is the
/// profile the spec names and its registered JSON (`None`: not registered).
/// Returns the warnings (what this machine's policy and limits would refuse), or
/// the message naming the field at fault for what no worker would run.
pub fn check(
    raw: &[u8],
    queue: &str,
    profile: Option<(String, Option<Vec<u8>>)>,
    settings: &Settings,
) -> Result<Vec<String>, String> {
    let invalid = |message: &str| format!("invalid job spec: {message}");
    let own = job::parse(raw).map_err(|r| invalid(&r.message))?;
    let id = match own.id.clone() {
        Some(id) if !job::is_valid_job_id(&id) => {
            return Err(invalid(&format!(
                "`id`: {id:?} is not a job id ([A-Za-z0-9_.-], 1 to 128 characters; no `:`)"
            )))
        }
        Some(id) => id,
        None => "submitted".to_string(),
    };
    let spec = match profile {
        None => own,
        Some((name, None)) => {
            return Ok(vec![format!(
                "`profile`: no profile named {name:?} is registered yet; the job is refused \
                 unless one is before a worker reads it (`dockhand profile list`). \
                 Only the job's own fields were checked."
            )])
        }
        Some((name, Some(template))) => {
            crate::profile::apply(raw, &name, Some(&template)).map_err(|r| invalid(&r.message))?
        }
    };
    job::validate(
        spec.clone(),
        id.clone(),
        queue,
        &widest_limits(),
        &widest_policy(&spec, &settings.policy),
    )
    .map_err(|r| invalid(&r.message))?;
    Ok(
        match job::validate(spec, id, queue, &settings.jobs.limits, &settings.policy) {
            Ok(_) => Vec::new(),
            Err(r) => vec![format!(
                "{} (by this machine's settings; the worker that claims the job may allow it)",
                r.message
            )],
        },
    )
}

/// Limits no job value exceeds: only the ranges fixed in the code remain.
fn widest_limits() -> LimitSettings {
    LimitSettings {
        memory: ByteSize(512 << 20),
        max_memory: ByteSize(u64::MAX),
        cpus: 0.0,
        max_cpus: f64::MAX,
        pids: 512,
        max_pids: i64::MAX,
        timeout_seconds: 3600,
        max_timeout_seconds: u64::MAX,
        log_bytes: ByteSize(10 << 20),
        max_log_bytes: ByteSize(u64::MAX),
        output_bytes: ByteSize(10 << 20),
        max_output_bytes: ByteSize(u64::MAX),
    }
}

/// A policy that allows whatever some worker's policy could allow for `spec`:
/// any image and git host, local repositories, every mount and port, and the
/// network the job names. What it still refuses, the code refuses always (the
/// host network, privileged settings).
fn widest_policy(spec: &JobSpec, base: &PolicySettings) -> PolicySettings {
    PolicySettings {
        networks: vec![spec.network.clone().unwrap_or_else(|| "none".to_string())],
        images: Vec::new(),
        git_hosts: Vec::new(),
        git_file_urls: true,
        bind_allow: vec!["/".to_string()],
        volumes_allow: vec!["*".to_string()],
        allow_ports: true,
        ..base.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(env: &[(&str, &str)]) -> Settings {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(None, &env, &crate::config::Overrides::default()).unwrap()
    }

    fn checked(
        spec: serde_json::Value,
        profile: Option<(&str, Option<&str>)>,
    ) -> Result<Vec<String>, String> {
        let profile = profile.map(|(n, p)| (n.to_string(), p.map(|p| p.as_bytes().to_vec())));
        let s = settings(&[("DOCKHAND__POLICY__IMAGES", "allowed*")]);
        check(spec.to_string().as_bytes(), "default", profile, &s)
    }

    #[test]
    fn what_no_worker_would_run_is_refused_naming_the_field() {
        for (spec, field) in [
            (
                serde_json::json!({"image": "allowed", "comand": "true"}),
                "comand",
            ),
            (
                serde_json::json!({"image": "allowed", "limits": {"pids": "many"}}),
                "`limits.pids`",
            ),
            (
                serde_json::json!({"image": "allowed", "id": "bad id"}),
                "`id`",
            ),
            (serde_json::json!({"image": "allowed", "id": "a:b"}), "`id`"),
            (serde_json::json!({"command": "true"}), "`image`"),
            (
                serde_json::json!({"image": "allowed", "command": ""}),
                "`command`",
            ),
            (
                serde_json::json!({"image": "allowed", "network": "host"}),
                "`network`",
            ),
            (
                serde_json::json!({"image": "allowed", "limits": {"memory": "1k"}}),
                "`limits.memory`",
            ),
        ] {
            let err = checked(spec.clone(), None).unwrap_err();
            assert!(err.contains(field), "{spec}: {err}");
        }
    }

    #[test]
    fn what_only_a_policy_refuses_is_a_warning() {
        let warnings = checked(
            serde_json::json!({"image": "other", "network": "mine"}),
            None,
        )
        .unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("`image`"), "{warnings:?}");
        let warnings = checked(
            serde_json::json!({"image": "allowed", "limits": {"memory": "100g"}}),
            None,
        )
        .unwrap();
        assert!(warnings[0].contains("`limits.memory`"), "{warnings:?}");
        assert!(checked(serde_json::json!({"image": "allowed:1"}), None)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn git_and_profile_jobs_are_accepted() {
        let git =
            serde_json::json!({"git": {"url": "https://example.com/app.git", "branch": "main"}});
        assert!(checked(git, None).is_ok());
        let job = serde_json::json!({"profile": "p", "env": {"A": "1"}});
        let registered = r#"{"image": "allowed", "command": "true"}"#;
        assert!(checked(job.clone(), Some(("p", Some(registered))))
            .unwrap()
            .is_empty());
        let warnings = checked(job.clone(), Some(("p", None))).unwrap();
        assert!(warnings[0].contains("`profile`"), "{warnings:?}");
        // The job's own fields are checked even when the profile is unknown.
        let typo = serde_json::json!({"profile": "p", "evn": {}});
        assert!(checked(typo, Some(("p", None))).is_err());
        // The merged spec is checked against the profile's fields.
        let err = checked(job, Some(("p", Some(r#"{"command": "true"}"#)))).unwrap_err();
        assert!(err.contains("`image`"), "{err}");
    }
}
