//! `dockhand submit`: builds a job spec from a file and/or flags and `XADD`s it,
//! exactly as any producer would. Prints the job id.

use super::{connect, lookup, CliResult, Failure};
use crate::config::Settings;
use crate::queue::Keys;
use deadpool_redis::redis::AsyncCommands;
use std::io::Read;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A JSON job spec: a file path, or `-` for stdin. Flags override its fields.
    pub file: Option<String>,
    /// The queue to submit to.
    #[arg(long, short, default_value = "default")]
    pub queue: String,
    /// The image to run.
    #[arg(long)]
    pub image: Option<String>,
    /// The command: once for a shell string, several times for an argument vector.
    #[arg(long = "cmd", value_name = "CMD")]
    pub cmd: Vec<String>,
    /// An environment variable, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A client id, also the idempotency key.
    #[arg(long)]
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
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let entry: String = conn
        .xadd(keys.jobs(&args.queue), "*", &[("job", spec.to_string())])
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
    if !obj.contains_key("image") {
        return Err(Failure::usage(
            "a job needs an image: give --image or a spec file with \"image\"",
        ));
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
        let mut a = args(&[], &[]);
        a.image = None;
        assert_eq!(build_spec(&a).unwrap_err().code, 2);
    }
}
