//! `dockhand submit`: builds a job spec from a file and/or flags, checks it as the
//! worker will, and `XADD`s it, exactly as any producer would. Prints the job id.
//!
//! The check runs the worker's own parsing and validation twice. First against the
//! widest policy and limits any worker could have: what fails there (a typo, a
//! wrong type, an unknown field, a bad id, an empty command, a value out of every
//! range) no worker would run, and is refused with exit code 2, naming the field.
//! Then against this machine's settings: what fails only there depends on the
//! policy and limits of the worker that claims the job, which may differ, so it is
//! a warning on stderr and the job is submitted all the same.

use super::{connect, lookup, CliResult, Failure};
use crate::config::{ByteSize, LimitSettings, PolicySettings, Settings};
use crate::job::{self, JobSpec};
use crate::queue::Keys;
use deadpool_redis::redis::AsyncCommands;
use std::io::Read;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  dockhand submit --image dockhand-busybox:latest --cmd 'echo hi' --follow
  dockhand submit job.json --queue builds
  echo '{\"image\":\"dockhand-busybox:latest\",\"command\":[\"date\"]}' | dockhand submit -
  dockhand submit job.json --id report-42 --env NAME=x

The spec is checked before it is sent: a typo, a wrong type or a bad id exits 2
naming the field. What only a worker's policy decides (allowed images, networks,
volumes, limits above this config's maxima) is a warning: the worker that claims
the job has the last word.")]
pub struct Args {
    /// A JSON job spec: a file path, or `-` for stdin. Flags override its fields.
    #[arg(value_name = "FILE")]
    pub file: Option<String>,
    /// The queue to submit to.
    #[arg(long, short, default_value = "default")]
    pub queue: String,
    /// The image to run (a local image name).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The command: once for a shell string, several times for an argument vector.
    #[arg(long = "cmd", value_name = "CMD")]
    pub cmd: Vec<String>,
    /// An environment variable, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A client id, also the idempotency key: [A-Za-z0-9_.-], 1 to 128 characters.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Print the job's log until it ends, then its state; exit 1 unless it completed.
    #[arg(long)]
    pub follow: bool,
}

pub async fn run(settings: &Settings, args: Args) -> CliResult {
    let spec = build_spec(&args)?;
    if !crate::job::is_valid_queue_name(&args.queue) {
        return Err(Failure::usage(format!(
            "{:?} is not a queue name ([A-Za-z0-9_.-], 1 to 64)",
            args.queue
        )));
    }
    let raw = spec.to_string();
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let profile = match spec.get("profile").and_then(|p| p.as_str()) {
        Some(name) => Some((
            name.to_string(),
            crate::profile::get(&mut conn, &keys, name).await?,
        )),
        None => None,
    };
    for warning in check(raw.as_bytes(), &args.queue, profile, settings)? {
        eprintln!("dockhand: warning: {warning}");
    }
    let entry: String = conn
        .xadd(keys.jobs(&args.queue), "*", &[("job", &raw)])
        .await
        .map_err(crate::store::StoreError::from)?;
    let id = spec
        .get("id")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or(entry);
    outln!("{id}");
    if let Some(hint) = lookup::unserved_hint(&mut conn, &keys, &args.queue).await? {
        eprintln!("dockhand: {hint}");
    }
    if args.follow {
        super::logs::run(settings, &id, true, false).await?;
        let status = super::logs::final_status(settings, &id).await?;
        super::status::run(settings, &id, false).await?;
        if status != "completed" {
            return Err(Failure::failed(format!("job {id} ended {status}")));
        }
    }
    Ok(())
}

/// Checks the entry `raw` as a worker serving `queue` would. `profile` is the
/// profile the spec names and its registered JSON (`None`: not registered).
/// Returns the warnings (what this machine's policy and limits would refuse), or
/// a usage failure for what no worker would run.
fn check(
    raw: &[u8],
    queue: &str,
    profile: Option<(String, Option<Vec<u8>>)>,
    settings: &Settings,
) -> Result<Vec<String>, Failure> {
    let invalid = |message: &str| Failure::usage(format!("invalid job spec: {message}"));
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

fn build_spec(args: &Args) -> Result<serde_json::Value, Failure> {
    let mut spec = match args.file.as_deref() {
        None => serde_json::json!({}),
        Some(path) => {
            let text = if path == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
                s
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| Failure::usage(format!("cannot read {path}: {e}")))?
            };
            serde_json::from_str(&text)
                .map_err(|e| Failure::usage(format!("{path} is not valid JSON: {e}")))?
        }
    };
    let Some(obj) = spec.as_object_mut() else {
        return Err(Failure::usage("the job spec must be a JSON object"));
    };
    if let Some(image) = &args.image {
        obj.insert("image".into(), image.clone().into());
    }
    match args.cmd.len() {
        0 => {}
        1 => {
            obj.insert("command".into(), args.cmd[0].clone().into());
        }
        _ => {
            obj.insert("command".into(), args.cmd.clone().into());
        }
    }
    if !args.env.is_empty() {
        let env = obj.entry("env").or_insert_with(|| serde_json::json!({}));
        let Some(env) = env.as_object_mut() else {
            return Err(Failure::usage("`env` in the spec must be an object"));
        };
        for pair in &args.env {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Failure::usage(format!("--env {pair:?} must be KEY=VALUE")))?;
            env.insert(k.to_string(), v.into());
        }
    }
    if let Some(id) = &args.id {
        obj.insert("id".into(), id.clone().into());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &[&str], env: &[&str]) -> Args {
        Args {
            file: None,
            queue: "default".into(),
            image: Some("img".into()),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            id: Some("x1".into()),
            follow: false,
        }
    }

    #[test]
    fn flags_make_a_spec() {
        let spec = build_spec(&args(&["echo hi"], &["A=1", "B=x=y"])).unwrap();
        assert_eq!(
            spec,
            serde_json::json!({"image":"img","command":"echo hi","env":{"A":"1","B":"x=y"},"id":"x1"})
        );
        let spec = build_spec(&args(&["echo", "hi"], &[])).unwrap();
        assert_eq!(spec["command"], serde_json::json!(["echo", "hi"]));
    }

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
    ) -> Result<Vec<String>, Failure> {
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
            assert_eq!(err.code, 2, "{spec}");
            assert!(err.message.contains(field), "{spec}: {}", err.message);
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
        assert_eq!(checked(typo, Some(("p", None))).unwrap_err().code, 2);
        // The merged spec is checked against the profile's fields.
        let err = checked(job, Some(("p", Some(r#"{"command": "true"}"#)))).unwrap_err();
        assert!(err.message.contains("`image`"), "{}", err.message);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let err = build_spec(&args(&[], &["NOEQUALS"])).unwrap_err();
        assert_eq!(err.code, 2);
    }
}
