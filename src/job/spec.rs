//! The job spec as producers write it (contract section 2). Unknown fields are
//! refused, so a typo never silently changes what runs.

use crate::config::ByteSize;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub id: Option<String>,
    pub profile: Option<String>,
    /// Where the job runs: `docker` (the default) or `local` (a host process).
    pub executor: Option<String>,
    /// With `"executor": "ssh"`: the name of one of the worker's SSH hosts.
    pub host: Option<String>,
    pub image: Option<String>,
    pub git: Option<GitSpec>,
    pub command: Option<Command>,
    pub entrypoint: Option<Command>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub script: Option<Script>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secret: given to the container, never
    /// stored in the job state, events or webhooks, and masked in its log lines.
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
    #[serde(default)]
    pub inputs: Vec<Input>,
    /// `true`/`false` (collect `/dockhand/output` into Redis or not), or rules
    /// sending some files to upload URLs instead (the rest still collected).
    pub outputs: Option<Outputs>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub volumes: Vec<String>,
    pub network: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    pub retry: Option<Retry>,
    pub delay_seconds: Option<u64>,
    pub run_at: Option<String>,
    #[serde(default)]
    pub webhooks: Vec<serde_json::Value>,
    pub metadata: Option<serde_json::Value>,
    /// A fleet-wide key whose concurrency or rate limit (`dockhand limit set`)
    /// this job counts against.
    pub concurrency_key: Option<String>,
    /// Higher runs first within its queue: an integer from -9 to 9 (default 0),
    /// which picks the queue's stream it goes to (`queue::lanes`).
    pub priority: Option<i64>,
    /// Within this many seconds of the first submission, a job with the same `id`
    /// is a duplicate; after it, once the job has ended, the id runs afresh.
    pub unique_for_seconds: Option<u64>,
    /// Jobs this one waits for (their ids); see `crate::deps`.
    #[serde(default)]
    pub after: Vec<String>,
    /// `all_completed` (the default: every parent completed) or `all_finished`
    /// (every parent ended, however).
    pub after_policy: Option<String>,
    /// The batch this job counts in; see `crate::batch`.
    pub batch: Option<String>,
    /// How many jobs the batch has, given by at least one of them (or by
    /// `dockhand batch open`), so that it knows when it is whole.
    pub batch_size: Option<u64>,
}

/// Where to build the job's image from: a repository, one ref, and the build's inputs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSpec {
    pub url: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub commit: Option<String>,
    /// Check submodules out, recursively (default true).
    pub submodules: Option<bool>,
    /// Relative to `context` (default `Dockerfile`).
    pub dockerfile: Option<String>,
    /// Relative to the repository's root (default `.`).
    pub context: Option<String>,
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
}

/// A sidecar container on the job's private network, reachable by `alias`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub image: String,
    pub alias: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub command: Option<Command>,
}

/// A port to publish: `8080`, `"8080"`, `"9000:8080"`, `"127.0.0.1:9000:8080/udp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Port {
    Number(u16),
    Text(String),
}

/// A command: an argument vector, or one string run with `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    Argv(Vec<String>),
    Shell(String),
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of strings, or a string run with `sh -c`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Command, E> {
                Ok(Command::Shell(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Command, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                Ok(Command::Argv(argv))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    pub content: String,
    pub filename: Option<String>,
    pub interpreter: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub path: String,
    pub content: Option<String>,
    pub content_base64: Option<String>,
    /// http(s) URL fetched by the worker (see `crate::transfer`).
    pub url: Option<String>,
    /// Lowercase hex sha256 the input must have; a mismatch aborts the job.
    pub sha256: Option<String>,
    /// A `url` input fed through a named pipe while the job runs, instead of
    /// being downloaded before it starts.
    pub stream: Option<bool>,
}

/// What becomes of `/dockhand/output`: collected or not, or collected with some
/// files sent elsewhere (upload rules).
#[derive(Debug, Clone, PartialEq)]
pub enum Outputs {
    Collect(bool),
    Rules(Vec<OutputRule>),
}

impl<'de> Deserialize<'de> for Outputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Outputs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false, or a list of output rules ({path | glob, upload})")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Outputs, E> {
                Ok(Outputs::Collect(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Outputs, A::Error> {
                let mut rules = Vec::new();
                while let Some(rule) = seq.next_element::<OutputRule>()? {
                    rules.push(rule);
                }
                Ok(Outputs::Rules(rules))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Output files (one `path`, or those matching a `glob`) sent to `upload`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRule {
    pub path: Option<String>,
    pub glob: Option<String>,
    pub upload: Upload,
    /// `always` (default): matching files go to the upload; `overflow`: only
    /// those that do not fit within `limits.output_bytes`.
    pub when: Option<String>,
    /// `path` is a named pipe the job writes while it runs, streamed to the upload.
    pub pipe: Option<bool>,
}

/// Where an output file is sent: an http(s) URL (a presigned object-store URL,
/// typically) with its method and headers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    pub url: String,
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory: Option<ByteSize>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    pub timeout_seconds: Option<u64>,
    pub log_bytes: Option<ByteSize>,
    pub output_bytes: Option<ByteSize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    pub max_attempts: Option<u32>,
    pub backoff_seconds: Option<f64>,
    pub on: Option<Vec<String>>,
    pub exit_codes: Option<Vec<i64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_a_list_or_a_string() {
        let a: Command = serde_json::from_str(r#"["echo","hi"]"#).unwrap();
        assert_eq!(a, Command::Argv(vec!["echo".into(), "hi".into()]));
        let s: Command = serde_json::from_str(r#""echo hi""#).unwrap();
        assert_eq!(s, Command::Shell("echo hi".into()));
        let err = serde_json::from_str::<Command>("42")
            .unwrap_err()
            .to_string();
        assert!(err.contains("array of strings"), "{err}");
        assert!(serde_json::from_str::<Command>("[1]").is_err());
    }
}
