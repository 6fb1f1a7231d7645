//! `dockhand submit`: builds a job spec from a file and/or flags and submits it
//! through [`admin::submit`] (checked as a worker will check it, then `XADD`ed as
//! any producer would). Prints the job id. What no worker would run exits 2
//! naming the field; an id a job already holds exits 1.

use super::{connect, CliResult, Failure};
use crate::admin::{self, lookup};
use crate::config::Settings;
use crate::queue::Keys;
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
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let submitted = admin::submit::submit(&mut conn, &keys, settings, &args.queue, &spec).await?;
    for warning in &submitted.warnings {
        eprintln!("dockhand: warning: {warning}");
    }
    let id = submitted.id;
    outln!("{id}");
    if let Some(hint) = lookup::unserved_hint(&mut conn, &keys, &args.queue).await? {
        eprintln!("dockhand: {hint}");
    }
    if args.follow {
        // Named with its queue: no worker may have read it yet.
        let job = crate::job::JobRef::new(&submitted.queue, &id);
        let named = job.to_string();
        super::logs::run(settings, &named, true, false).await?;
        let status = super::logs::final_status(settings, &job).await?;
        super::status::run(settings, &named, false).await?;
        if status != "completed" {
            return Err(Failure::failed(format!("job {id} ended {status}")));
        }
    }
    Ok(())
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

    #[test]
    fn bad_flags_are_usage_errors() {
        let err = build_spec(&args(&[], &["NOEQUALS"])).unwrap_err();
        assert_eq!(err.code, 2);
    }
}
