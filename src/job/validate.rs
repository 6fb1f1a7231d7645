//! From a parsed [`JobSpec`] to a [`Job`] the executor can run: defaults applied,
//! ranges checked, policy enforced, files to stage decoded.

use super::checks::{check_env, check_env_named, image_allowed, safe_relative_path};
use super::{Command, GitSpec, JobSpec, Rejection, INPUT_DIR, WORK_DIR};
use crate::config::{LimitSettings, PolicySettings};
use crate::source::{GitSource, Reference, RepoUrl, FILE_URLS_KEY};
use base64::Engine;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};
use std::time::Duration;

/// Docker refuses memory limits below 6 MiB.
const MIN_MEMORY: u64 = 6 << 20;
/// Inputs travel inside the job entry; keep one job's staged files (inputs and
/// the script) reasonable.
pub const MAX_STAGED_BYTES: usize = 64 << 20;
/// `metadata` is copied into the job hash, every event and every webhook body.
pub const MAX_METADATA_BYTES: usize = 64 << 10;
/// Variables in `env` and `secret_env` together, and their names and values' bytes.
const MAX_ENV_VARS: usize = 1000;
const MAX_ENV_BYTES: usize = 1 << 20;

/// A validated job, ready to hand to the executor.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub queue: String,
    pub spec: JobSpec,
    /// The image to run. For a job from `git`, empty until the worker has built
    /// (or found) the image and put its tag here.
    pub image: String,
    /// Where to build the image from, for a job from `git`.
    pub git: Option<GitBuild>,
    /// Where it runs; a local job has no image, network or attachments.
    pub executor: super::ExecutorKind,
    /// The container's command; `None` keeps the image's default.
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Secret variables (see [`JobSpec::secret_env`]); their values are masked.
    pub secret_env: BTreeMap<String, String>,
    pub network: String,
    /// Sidecars started first on a private network of the job's own.
    pub services: Vec<super::ServiceRun>,
    pub mounts: Vec<super::Mount>,
    pub ports: Vec<super::Publish>,
    pub limits: ResolvedLimits,
    /// Files written into the container before it starts (inputs and the script).
    pub files: Vec<StagedFile>,
    /// Inputs the worker fetches by URL (`crate::transfer`).
    pub remote_inputs: Vec<super::RemoteInput>,
    pub collect_outputs: bool,
    /// Output files sent to upload URLs instead of Redis (`crate::transfer`).
    pub uploads: Vec<super::UploadRule>,
    pub retry: super::RetryPolicy,
    /// When the first run may start (`delay_seconds`, `run_at`); `None` is now.
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLimits {
    pub memory: u64,
    pub cpus: Option<f64>,
    pub pids: i64,
    pub timeout: Duration,
    pub log_bytes: u64,
    pub output_bytes: u64,
}

/// A job's `git` field, checked: what to fetch and how to build it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitBuild {
    pub source: GitSource,
    /// The URL without a password, for image tags, labels and messages.
    pub public_url: String,
    /// Relative to `context`.
    pub dockerfile: String,
    /// Relative to the repository's root.
    pub context: String,
    pub build_args: BTreeMap<String, String>,
}

/// A file to place in the container; `path` is absolute inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

/// Checks `spec` against the worker's limits and policy.
pub fn validate(
    spec: JobSpec,
    id: String,
    queue: &str,
    limits: &LimitSettings,
    policy: &PolicySettings,
) -> Result<Job, Rejection> {
    validate_at(spec, id, queue, limits, policy, chrono::Utc::now())
}

/// [`validate`], with the job's submission time (delays count from it). Each step
/// checks one part of the spec and names the field at fault.
pub fn validate_at(
    spec: JobSpec,
    id: String,
    queue: &str,
    limits: &LimitSettings,
    policy: &PolicySettings,
    created: chrono::DateTime<chrono::Utc>,
) -> Result<Job, Rejection> {
    job_webhooks(&spec)?;
    let retry = super::retry::policy(&spec)?;
    let not_before = super::retry::first_run(&spec, created)?;
    let executor = super::executor::choose(&spec)?;
    let (image, git, network) = match executor {
        super::ExecutorKind::Docker => {
            let (image, git) = image_source(&spec, policy)?;
            (image, git, network(&spec, policy)?)
        }
        // No container: nothing to pull, and no network of its own to give.
        super::ExecutorKind::Local | super::ExecutorKind::Ssh => {
            (String::new(), None, "none".to_string())
        }
    };
    let services = super::attach::services(&spec, policy)?;
    let mounts = super::attach::volumes(&spec, policy)?;
    let ports = super::attach::ports(&spec, &network, policy)?;
    let limits = resolve_limits(&spec, limits)?;
    environment(&spec)?;
    metadata(&spec)?;
    concurrency_key(&spec)?;
    priority(&spec)?;
    unique(&spec)?;
    super::after::after(&spec, &super::JobRef::new(queue, &id))?;
    super::after::batch(&spec)?;
    let (mut files, remote_inputs) = stage_inputs(&spec)?;
    let (collect_outputs, uploads) = super::transfer::outputs(&spec.outputs)?;
    let entrypoint = entrypoint(&spec)?;
    let mut workdir = workdir(&spec)?;
    user(&spec)?;
    let command = command(&spec, &mut files, &mut workdir)?;
    Ok(Job {
        id,
        queue: queue.to_string(),
        image,
        git,
        executor,
        command,
        entrypoint,
        workdir,
        user: spec.user.clone(),
        env: spec.env.clone(),
        secret_env: spec.secret_env.clone(),
        network,
        services,
        mounts,
        ports,
        limits,
        files,
        remote_inputs,
        collect_outputs,
        uploads,
        retry,
        not_before,
        spec,
    })
}

/// A `concurrency_key` names a key as queue names are written, so that it can sit
/// in a Redis key and a CLI argument as it is.
fn concurrency_key(spec: &JobSpec) -> Result<(), Rejection> {
    match &spec.concurrency_key {
        Some(k) if !crate::config::is_valid_queue_name(k) => Err(Rejection::invalid(
            "concurrency_key",
            format!("{k:?} is not a key name ([A-Za-z0-9_.-], 1 to 64 characters)"),
        )),
        _ => Ok(()),
    }
}

/// A uniqueness window is about an id the producer chose, and is at most a year.
fn unique(spec: &JobSpec) -> Result<(), Rejection> {
    match spec.unique_for_seconds {
        Some(_) if spec.id.is_none() => Err(Rejection::invalid(
            "unique_for_seconds",
            "needs an `id`: the window is about jobs submitted again with the same id",
        )),
        Some(w) if !(1..=31_536_000).contains(&w) => Err(Rejection::invalid(
            "unique_for_seconds",
            format!("{w} is out of range: 1 to 31536000 (a year)"),
        )),
        _ => Ok(()),
    }
}

/// A priority is a whole number within the lanes a queue has.
fn priority(spec: &JobSpec) -> Result<(), Rejection> {
    use crate::queue::lanes::{MAX, MIN};
    match spec.priority {
        Some(p) if !(MIN..=MAX).contains(&p) => Err(Rejection::invalid(
            "priority",
            format!("{p} is out of range: a priority is a whole number from {MIN} to {MAX} (higher runs first)"),
        )),
        _ => Ok(()),
    }
}

/// The image to run (allowed by `policy.images`), or the `git` build to make it
/// from (then the image is empty until the worker has it): exactly one of them.
fn image_source(
    spec: &JobSpec,
    policy: &PolicySettings,
) -> Result<(String, Option<GitBuild>), Rejection> {
    match (spec.image.as_deref(), &spec.git) {
        (Some(_), Some(_)) => Err(Rejection::invalid(
            "git",
            "give either `image` or `git`, not both",
        )),
        (None, None) => Err(Rejection::invalid(
            "image",
            "is required (the name of a local image), unless `git` says where to build one",
        )),
        (None, Some(g)) => Ok((String::new(), Some(git_build(g, policy)?))),
        (Some(i), None) if i.trim().is_empty() || i.chars().any(char::is_whitespace) => Err(
            Rejection::invalid("image", format!("{i:?} is not an image name")),
        ),
        (Some(i), None) if !image_allowed(i, &policy.images) => Err(Rejection::denied(
            "image",
            format!("{i:?} is not in this worker's allow-list (policy.images)"),
        )),
        (Some(i), None) => Ok((i.to_string(), None)),
    }
}

/// The job's network: `none` unless it names one `policy.networks` allows;
/// never the host's.
fn network(spec: &JobSpec, policy: &PolicySettings) -> Result<String, Rejection> {
    let network = spec.network.clone().unwrap_or_else(|| "none".to_string());
    if network == "host" {
        return Err(Rejection::denied(
            "network",
            "the host network is never allowed",
        ));
    }
    if !policy.networks.contains(&network) {
        return Err(Rejection::denied(
            "network",
            format!(
                "{network:?} is not allowed (policy.networks: {:?})",
                policy.networks
            ),
        ));
    }
    Ok(network)
}

/// The size of `metadata` as JSON, which [`MAX_METADATA_BYTES`] bounds.
pub fn metadata_bytes(metadata: &serde_json::Value) -> usize {
    metadata.to_string().len()
}

/// `metadata`, within [`MAX_METADATA_BYTES`] as JSON.
fn metadata(spec: &JobSpec) -> Result<(), Rejection> {
    let size = spec.metadata.as_ref().map_or(0, metadata_bytes);
    if size > MAX_METADATA_BYTES {
        return Err(Rejection::invalid(
            "metadata",
            format!("is {size} bytes as JSON, over the {MAX_METADATA_BYTES}-byte limit (it is copied into every event and webhook; keep large data in inputs or files)"),
        ));
    }
    Ok(())
}

/// `env` and `secret_env`: valid names and values, no name in both, and within
/// [`MAX_ENV_VARS`] and [`MAX_ENV_BYTES`] together.
fn environment(spec: &JobSpec) -> Result<(), Rejection> {
    let all = spec.env.iter().chain(&spec.secret_env);
    let (count, bytes) = all.fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len()));
    if count > MAX_ENV_VARS || bytes > MAX_ENV_BYTES {
        return Err(Rejection::invalid(
            "env",
            format!("{count} variables of {bytes} bytes with `secret_env`; at most {MAX_ENV_VARS} and {MAX_ENV_BYTES} bytes"),
        ));
    }
    for (key, value) in &spec.env {
        check_env(key, value)?;
    }
    for (key, value) in &spec.secret_env {
        check_env_named(&format!("secret_env.{key}"), key, value)?;
        if spec.env.contains_key(key) {
            return Err(Rejection::invalid(
                &format!("secret_env.{key}"),
                "is also in `env`; give it once",
            ));
        }
    }
    Ok(())
}

fn entrypoint(spec: &JobSpec) -> Result<Option<Vec<String>>, Rejection> {
    match &spec.entrypoint {
        None => Ok(None),
        Some(Command::Shell(s)) if s.is_empty() => {
            Err(Rejection::invalid("entrypoint", "must not be empty"))
        }
        Some(Command::Shell(s)) => Ok(Some(vec![s.clone()])),
        Some(Command::Argv(v)) => Ok(Some(v.clone())),
    }
}

/// Whether one of two clean relative paths is a folder holding the other.
fn nested(a: &str, b: &str) -> bool {
    let inside = |outer: &str, inner: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    inside(a, b) || inside(b, a)
}

fn workdir(spec: &JobSpec) -> Result<Option<String>, Rejection> {
    match &spec.workdir {
        Some(w) if !w.starts_with('/') || w.contains('\0') || w.len() > 4096 => Err(
            Rejection::invalid("workdir", format!("{w:?} must be an absolute path")),
        ),
        other => Ok(other.clone()),
    }
}

fn user(spec: &JobSpec) -> Result<(), Rejection> {
    match &spec.user {
        Some(u) if u.is_empty() || u.contains(char::is_whitespace) => Err(Rejection::invalid(
            "user",
            format!("{u:?} is not a user (name, uid or uid:gid)"),
        )),
        _ => Ok(()),
    }
}

/// The container's command: the `command` as given (a string runs under
/// `sh -c`), or a `script`, staged into the work folder (which becomes the
/// working directory unless `workdir` says otherwise) and run by its interpreter.
fn command(
    spec: &JobSpec,
    files: &mut Vec<StagedFile>,
    workdir: &mut Option<String>,
) -> Result<Option<Vec<String>>, Rejection> {
    match (&spec.script, &spec.command) {
        (Some(_), Some(_)) => Err(Rejection::invalid(
            "script",
            "give either `script` or `command`, not both",
        )),
        (Some(script), None) => {
            let filename = script.filename.clone().unwrap_or_else(|| "job".to_string());
            if filename.is_empty() || filename.contains('/') || filename == "." || filename == ".."
            {
                return Err(Rejection::invalid(
                    "script.filename",
                    format!("{filename:?} must be a plain file name"),
                ));
            }
            let mut argv: Vec<String> = match &script.interpreter {
                Some(i) if i.trim().is_empty() => {
                    return Err(Rejection::invalid(
                        "script.interpreter",
                        "must not be empty",
                    ))
                }
                Some(i) => i.split_whitespace().map(str::to_string).collect(),
                None => Vec::new(),
            };
            let path = format!("{WORK_DIR}/{filename}");
            files.push(StagedFile {
                path: path.clone(),
                content: script.content.clone().into_bytes(),
                mode: 0o755,
            });
            workdir.get_or_insert_with(|| WORK_DIR.to_string());
            argv.push(path);
            Ok(Some(argv))
        }
        (None, Some(Command::Shell(s))) if s.trim().is_empty() => {
            Err(Rejection::invalid("command", "must not be empty"))
        }
        (None, Some(Command::Shell(s))) => Ok(Some(vec!["sh".into(), "-c".into(), s.clone()])),
        (None, Some(Command::Argv(v))) if v.is_empty() || v[0].is_empty() => {
            Err(Rejection::invalid("command", "must not be empty"))
        }
        (None, Some(Command::Argv(v))) => Ok(Some(v.clone())),
        (None, None) => Ok(None),
    }
}

/// The job's own `webhooks[]`, checked here rather than at delivery, so a producer
/// hears of a bad one at once.
fn job_webhooks(spec: &JobSpec) -> Result<(), Rejection> {
    for (i, hook) in spec.webhooks.iter().enumerate() {
        crate::webhook::subscribers::check_job_webhook(hook)
            .map_err(|why| Rejection::invalid(&format!("webhooks[{i}]"), why))?;
    }
    Ok(())
}

/// Checks the `git` field: one ref at most, a URL this build can fetch from a host
/// the policy allows, and build paths that stay inside the checkout. (What needs
/// the worker's disk or a name lookup, the cache folder and the addresses, is
/// checked where the source is fetched.)
fn git_build(g: &GitSpec, policy: &PolicySettings) -> Result<GitBuild, Rejection> {
    let url = RepoUrl::parse(&g.url).map_err(|e| Rejection::invalid("git.url", e))?;
    if url.is_local() && !policy.git_file_urls {
        return Err(Rejection::denied(
            "git.url",
            format!(
                "a repository on the worker's own host (a path or file:// URL) is refused; \
                 {FILE_URLS_KEY} = true allows it"
            ),
        ));
    }
    if !url.allowed_by(&policy.git_hosts) {
        let what = match url.authority() {
            Some(host) => format!("the host {host:?} is"),
            None => "a repository on the worker's own host (`local`) is".to_string(),
        };
        return Err(Rejection::denied(
            "git.url",
            format!("{what} not in this worker's allow-list (policy.git_hosts)"),
        ));
    }
    let named = [&g.branch, &g.tag, &g.commit];
    if named.iter().filter(|r| r.is_some()).count() > 1 {
        return Err(Rejection::invalid(
            "git",
            "give at most one of `branch`, `tag` or `commit`",
        ));
    }
    let not_a_name = |n: &str| n.trim().is_empty() || n.chars().any(char::is_whitespace);
    let reference = match (&g.branch, &g.tag, &g.commit) {
        (Some(b), _, _) if not_a_name(b) => {
            return Err(Rejection::invalid(
                "git.branch",
                format!("{b:?} is not a branch name"),
            ))
        }
        (Some(b), _, _) => Reference::Branch(b.clone()),
        (_, Some(t), _) if not_a_name(t) => {
            return Err(Rejection::invalid(
                "git.tag",
                format!("{t:?} is not a tag name"),
            ))
        }
        (_, Some(t), _) => Reference::Tag(t.clone()),
        (_, _, Some(c)) if c.len() != 40 || !c.chars().all(|ch| ch.is_ascii_hexdigit()) => {
            return Err(Rejection::invalid(
                "git.commit",
                format!("{c:?} is not a full commit id (40 hex digits)"),
            ))
        }
        (_, _, Some(c)) => Reference::Commit(c.to_ascii_lowercase()),
        (None, None, None) => Reference::Default,
    };
    let context = g.context.clone().unwrap_or_else(|| ".".to_string());
    let inside = |p: &str| {
        !p.is_empty()
            && !p.contains('\0')
            && Path::new(p)
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    };
    if !inside(&context) {
        return Err(Rejection::invalid(
            "git.context",
            format!("{context:?} must be a relative path inside the repository"),
        ));
    }
    // The Dockerfile may sit beside the context (`../docker/app.Dockerfile`); the
    // builder checks that it stays inside the checkout.
    let dockerfile = g
        .dockerfile
        .clone()
        .unwrap_or_else(|| "Dockerfile".to_string());
    if dockerfile.trim().is_empty() || dockerfile.starts_with('/') || dockerfile.contains('\0') {
        return Err(Rejection::invalid(
            "git.dockerfile",
            format!("{dockerfile:?} must be a path relative to the context"),
        ));
    }
    for (key, value) in &g.build_args {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(Rejection::invalid(
                &format!("git.build_args.{key}"),
                "a build arg is a name without `=` and a value without NUL bytes",
            ));
        }
    }
    Ok(GitBuild {
        public_url: url.public().to_string(),
        source: GitSource {
            url: g.url.clone(),
            reference,
            submodules: g.submodules.unwrap_or(true),
        },
        dockerfile,
        context,
        build_args: g.build_args.clone(),
    })
}

fn resolve_limits(spec: &JobSpec, d: &LimitSettings) -> Result<ResolvedLimits, Rejection> {
    let l = &spec.limits;
    let memory = l.memory.unwrap_or(d.memory).0;
    if memory < MIN_MEMORY || memory > d.max_memory.0 {
        return Err(Rejection::invalid(
            "limits.memory",
            format!(
                "must be between 6 MiB and {} (got {memory} bytes)",
                d.max_memory
            ),
        ));
    }
    let cpus = l.cpus.unwrap_or(d.cpus);
    if !cpus.is_finite() || cpus < 0.0 || cpus > d.max_cpus || (l.cpus.is_some() && cpus < 0.01) {
        return Err(Rejection::invalid(
            "limits.cpus",
            format!("must be between 0.01 and {} (got {cpus})", d.max_cpus),
        ));
    }
    let pids = l.pids.unwrap_or(d.pids);
    if pids < 1 || pids > d.max_pids {
        return Err(Rejection::invalid(
            "limits.pids",
            format!("must be between 1 and {} (got {pids})", d.max_pids),
        ));
    }
    let timeout = l.timeout_seconds.unwrap_or(d.timeout_seconds);
    if timeout < 1 || timeout > d.max_timeout_seconds {
        return Err(Rejection::invalid(
            "limits.timeout_seconds",
            format!(
                "must be between 1 and {} (got {timeout})",
                d.max_timeout_seconds
            ),
        ));
    }
    let log_bytes = l.log_bytes.unwrap_or(d.log_bytes).0;
    if log_bytes > d.max_log_bytes.0 {
        return Err(Rejection::invalid(
            "limits.log_bytes",
            format!("must be at most {} (got {log_bytes})", d.max_log_bytes),
        ));
    }
    let output_bytes = l.output_bytes.unwrap_or(d.output_bytes).0;
    if output_bytes > d.max_output_bytes.0 {
        return Err(Rejection::invalid(
            "limits.output_bytes",
            format!(
                "must be at most {} (got {output_bytes})",
                d.max_output_bytes
            ),
        ));
    }
    Ok(ResolvedLimits {
        memory,
        cpus: (cpus > 0.0).then_some(cpus),
        pids,
        timeout: Duration::from_secs(timeout),
        log_bytes,
        output_bytes,
    })
}

/// The inline inputs, decoded, within [`MAX_STAGED_BYTES`] together with the
/// script, and the URL inputs, checked (their sizes are bounded when fetched).
/// A size is checked before anything is decoded, and no input may sit inside
/// another (`a` and `a/b`: one would silently replace the other).
fn stage_inputs(spec: &JobSpec) -> Result<(Vec<StagedFile>, Vec<super::RemoteInput>), Rejection> {
    let mut files = Vec::new();
    let mut remote = Vec::new();
    let mut seen = BTreeSet::new();
    let mut total = spec.script.as_ref().map_or(0, |s| s.content.len());
    let over = || {
        Rejection::invalid(
            "inputs",
            "add up to more than 64 MiB with the script; pass large data by URL",
        )
    };
    if total > MAX_STAGED_BYTES {
        return Err(over());
    }
    for (i, input) in spec.inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        let rel = safe_relative_path(&input.path).ok_or_else(|| {
            Rejection::invalid(
                &format!("{field}.path"),
                format!(
                    "{:?} must be a relative path inside {INPUT_DIR} (no `..`, each name at most 255 bytes)",
                    input.path
                ),
            )
        })?;
        if let Some(other) = seen.iter().find(|p: &&String| nested(p, &rel)) {
            return Err(Rejection::invalid(
                &format!("{field}.path"),
                format!("{rel:?} and {other:?} cannot both be inputs: one is inside the other"),
            ));
        }
        if !seen.insert(rel.clone()) {
            return Err(Rejection::invalid(
                &format!("{field}.path"),
                format!("{rel:?} is given twice"),
            ));
        }
        let content = match (&input.content, &input.content_base64, &input.url) {
            (Some(text), None, None) => text.clone().into_bytes(),
            (None, Some(b64), None) => {
                // Three bytes per four characters: refused before decoding.
                if total + b64.trim().len() / 4 * 3 > MAX_STAGED_BYTES {
                    return Err(over());
                }
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| {
                        Rejection::invalid(
                            &format!("{field}.content_base64"),
                            format!("is not base64: {e}"),
                        )
                    })?
            }
            (None, None, Some(url)) => {
                remote.push(super::transfer::remote(i, rel, url, input)?);
                continue;
            }
            _ => {
                return Err(Rejection::invalid(
                    &field,
                    "give exactly one of `content`, `content_base64` or `url`",
                ))
            }
        };
        super::transfer::inline(i, input, &content)?;
        total += content.len();
        if total > MAX_STAGED_BYTES {
            return Err(over());
        }
        files.push(StagedFile {
            path: format!("{INPUT_DIR}/{rel}"),
            content,
            mode: 0o644,
        });
    }
    Ok((files, remote))
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Reason};
    use super::*;
    use crate::config::{Overrides, Settings};

    fn check(json: &str) -> Result<Job, Rejection> {
        let s = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        let spec = parse(json.as_bytes())?;
        validate(spec, "j1".into(), "default", &s.jobs.limits, &s.policy)
    }

    fn refused(json: &str) -> Rejection {
        check(json).expect_err("should be refused")
    }

    #[test]
    fn a_minimal_job_gets_defaults() {
        let job = check(r#"{"image":"busybox","command":"echo hi"}"#).unwrap();
        assert_eq!(
            job.command,
            Some(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(job.network, "none");
        assert_eq!(job.limits.memory, 512 << 20);
        assert_eq!(job.limits.cpus, None);
        assert_eq!(job.limits.timeout, Duration::from_secs(3600));
        assert!(job.collect_outputs);
    }

    #[test]
    fn a_script_is_staged_and_run_with_its_interpreter() {
        let job = check(r#"{"image":"py","script":{"content":"print(1)","filename":"run.py","interpreter":"python3 -u"}}"#).unwrap();
        assert_eq!(
            job.command,
            Some(vec![
                "python3".into(),
                "-u".into(),
                "/dockhand/work/run.py".into()
            ])
        );
        assert_eq!(job.files[0].path, "/dockhand/work/run.py");
        assert_eq!(job.files[0].mode, 0o755);
        assert_eq!(job.workdir.as_deref(), Some("/dockhand/work"));
    }

    #[test]
    fn inputs_are_decoded_and_kept_inside_the_input_folder() {
        let job = check(r#"{"image":"x","inputs":[{"path":"a/b.txt","content":"hi"},{"path":"./c.bin","content_base64":"AAE="}]}"#).unwrap();
        assert_eq!(job.files[0].path, "/dockhand/input/a/b.txt");
        assert_eq!(job.files[1].content, vec![0, 1]);
        for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
            let json = format!(r#"{{"image":"x","inputs":[{{"path":"{bad}","content":"1"}}]}}"#);
            let err = refused(&json);
            assert_eq!(err.reason, Reason::InvalidSpec);
            assert!(
                err.message.starts_with("`inputs[0].path`"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (r#"{"command":"x"}"#, "`image`"),
            (r#"{"image":"x","command":[]}"#, "`command`"),
            (r#"{"image":"x","command":"  "}"#, "`command`"),
            (
                r#"{"image":"x","limits":{"memory":"1k"}}"#,
                "`limits.memory`",
            ),
            (
                r#"{"image":"x","limits":{"memory":"1t"}}"#,
                "`limits.memory`",
            ),
            (r#"{"image":"x","limits":{"cpus":0}}"#, "`limits.cpus`"),
            (r#"{"image":"x","limits":{"pids":0}}"#, "`limits.pids`"),
            (
                r#"{"image":"x","limits":{"timeout_seconds":0}}"#,
                "`limits.timeout_seconds`",
            ),
            (
                r#"{"image":"x","limits":{"output_bytes":"2g"}}"#,
                "`limits.output_bytes`",
            ),
            (r#"{"image":"x","env":{"1X":"y"}}"#, "`env.1X`"),
            (
                r#"{"image":"x","env":{"DOCKHAND_JOB_ID":"y"}}"#,
                "`env.DOCKHAND_JOB_ID`",
            ),
            (r#"{"image":"x","workdir":"rel"}"#, "`workdir`"),
            (
                r#"{"image":"x","script":{"content":"x"},"command":"y"}"#,
                "`script`",
            ),
            (
                r#"{"image":"x","script":{"content":"x","filename":"a/b"}}"#,
                "`script.filename`",
            ),
            (r#"{"image":"x","git":{"url":"u"}}"#, "`git`"),
        ];
        for (json, field) in cases {
            let err = refused(json);
            assert_eq!(err.reason, Reason::InvalidSpec, "{json}");
            assert!(err.message.starts_with(field), "{json}: {}", err.message);
        }
    }

    #[test]
    fn policy_refusals_say_policy_denied() {
        for (json, field) in [
            (r#"{"image":"x","network":"host"}"#, "`network`"),
            (r#"{"image":"x","network":"corp"}"#, "`network`"),
            (r#"{"image":"x","volumes":["/:/host"]}"#, "`volumes[0]`"),
            (r#"{"image":"x","ports":[80]}"#, "`ports`"),
        ] {
            let err = refused(json);
            assert_eq!(err.reason, Reason::PolicyDenied, "{json}");
            assert!(err.message.starts_with(field), "{}", err.message);
        }
    }

    fn check_with(json: &str, git_hosts: &[&str]) -> Result<Job, Rejection> {
        let mut s = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        s.policy.git_hosts = git_hosts.iter().map(|h| h.to_string()).collect();
        s.policy.git_file_urls = true;
        let spec = parse(json.as_bytes())?;
        validate(spec, "j1".into(), "default", &s.jobs.limits, &s.policy)
    }

    #[test]
    fn a_git_job_gets_its_defaults() {
        let job =
            check(r#"{"git":{"url":"https://h.example/org/app.git","branch":"main"}}"#).unwrap();
        let git = job.git.unwrap();
        assert_eq!(job.image, "");
        assert_eq!(git.source.reference, Reference::Branch("main".into()));
        assert!(git.source.submodules);
        assert_eq!(git.dockerfile, "Dockerfile");
        assert_eq!(git.context, ".");
        let job = check_with(
            &format!(
            r#"{{"git":{{"url":"/srv/repo","commit":"{}","submodules":false,"context":"app","dockerfile":"../docker/Dockerfile","build_args":{{"V":"1"}}}}}}"#,
            "AB".repeat(20)
        ),
            &[],
        )
        .unwrap();
        let git = job.git.unwrap();
        assert_eq!(git.source.reference, Reference::Commit("ab".repeat(20)));
        assert!(!git.source.submodules);
        assert_eq!(git.build_args["V"], "1");
    }

    #[test]
    fn each_bad_git_field_is_named() {
        let cases = [
            (r#"{"image":"x","git":{"url":"/r"}}"#, "`git`"),
            (r#"{"git":{"url":"/r","branch":"a","tag":"b"}}"#, "`git`"),
            (r#"{"git":{"url":"/r","commit":"abc123"}}"#, "`git.commit`"),
            (r#"{"git":{"url":"/r","branch":" "}}"#, "`git.branch`"),
            (r#"{"git":{"url":"/r","tag":""}}"#, "`git.tag`"),
            (r#"{"git":{"url":"relative/repo"}}"#, "`git.url`"),
            (
                r#"{"git":{"url":"git@github.com:org/repo.git"}}"#,
                "`git.url`",
            ),
            (r#"{"git":{"url":"/r","context":"../up"}}"#, "`git.context`"),
            (r#"{"git":{"url":"/r","context":"/abs"}}"#, "`git.context`"),
            (
                r#"{"git":{"url":"/r","dockerfile":"/etc/Dockerfile"}}"#,
                "`git.dockerfile`",
            ),
            (
                r#"{"git":{"url":"/r","build_args":{"A=B":"1"}}}"#,
                "`git.build_args.A=B`",
            ),
            (r#"{"git":{"url":"/r","brnach":"x"}}"#, "`git.brnach`"),
        ];
        for (json, field) in cases {
            // Local repositories allowed, so that each case fails at its own field.
            let err = check_with(json, &[]).expect_err("should be refused");
            assert_eq!(err.reason, Reason::InvalidSpec, "{json}");
            assert!(err.message.starts_with(field), "{json}: {}", err.message);
        }
    }

    #[test]
    fn the_git_host_allow_list_is_policy() {
        let https = r#"{"git":{"url":"https://github.com/org/app.git"}}"#;
        let local = r#"{"git":{"url":"/srv/repo"}}"#;
        assert!(check_with(https, &[]).is_ok());
        assert!(check_with(local, &[]).is_ok());
        assert!(check_with(https, &["github.com"]).is_ok());
        assert!(check_with(https, &["*.github.com", "github.com:443"]).is_err());
        assert!(check_with(
            r#"{"git":{"url":"https://api.github.com/x"}}"#,
            &["*.github.com"]
        )
        .is_ok());
        assert!(check_with(local, &["local"]).is_ok());
        let err = check_with(https, &["gitlab.com"]).unwrap_err();
        assert_eq!(err.reason, Reason::PolicyDenied);
        assert!(err.message.starts_with("`git.url`"), "{}", err.message);
        assert!(
            err.message.contains("github.com") && err.message.contains("policy.git_hosts"),
            "{}",
            err.message
        );
        let err = check_with(local, &["github.com"]).unwrap_err();
        assert_eq!(err.reason, Reason::PolicyDenied);
        assert!(err.message.contains("local"), "{}", err.message);
    }

    #[test]
    fn local_repositories_need_git_file_urls() {
        for url in ["/srv/repo", "file:///srv/repo"] {
            let json = format!(r#"{{"git":{{"url":"{url}"}}}}"#);
            let err = refused(&json);
            assert_eq!(err.reason, Reason::PolicyDenied, "{url}");
            assert!(err.message.starts_with("`git.url`"), "{}", err.message);
            assert!(
                err.message.contains("policy.git_file_urls = true"),
                "{}",
                err.message
            );
            assert!(check_with(&json, &[]).is_ok(), "allowed with the setting");
        }
        // Hosts on the network are not this setting's business.
        assert!(check(r#"{"git":{"url":"http://127.0.0.1:1/x"}}"#).is_ok());
    }

    #[test]
    fn the_image_allow_list_takes_names_and_prefixes() {
        let allow = vec!["registry.local/*".to_string(), "busybox".to_string()];
        assert!(image_allowed("busybox", &allow));
        assert!(image_allowed("registry.local/tools:1", &allow));
        assert!(!image_allowed("busybox:evil", &allow));
        assert!(image_allowed("anything", &[]));
    }

    #[test]
    fn what_is_copied_or_staged_has_a_size() {
        let big_meta = format!(
            r#"{{"image":"x","metadata":{{"m":"{}"}}}}"#,
            "m".repeat(70_000)
        );
        let err = refused(&big_meta);
        assert!(
            err.message.starts_with("`metadata`") && err.message.contains("65536"),
            "{}",
            err.message
        );

        let env: Vec<String> = (0..1001).map(|i| format!(r#""V{i}":"x""#)).collect();
        let err = refused(&format!(r#"{{"image":"x","env":{{{}}}}}"#, env.join(",")));
        assert!(
            err.message.starts_with("`env`") && err.message.contains("1001 variables"),
            "{}",
            err.message
        );

        // The script counts against the staged bytes, with the inputs.
        let script = "s".repeat(40 << 20);
        let input = "i".repeat(30 << 20);
        let err = refused(&format!(
            r#"{{"image":"x","script":{{"content":"{script}"}},"inputs":[{{"path":"in","content":"{input}"}}]}}"#
        ));
        assert!(err.message.starts_with("`inputs`"), "{}", err.message);
        // A base64 input is measured before it is decoded (this one is not even base64).
        let b64 = "!".repeat(90 << 20);
        let err = refused(&format!(
            r#"{{"image":"x","inputs":[{{"path":"in","content_base64":"{b64}"}}]}}"#
        ));
        assert!(err.message.contains("more than 64 MiB"), "{}", err.message);
    }

    #[test]
    fn url_inputs_and_upload_rules_are_checked_naming_the_field() {
        let job = check(r#"{"image":"x","inputs":[{"path":"a","content":"1"},{"path":"d/big.bin","url":"https://h.example/big?sig=1","sha256":"AB00000000000000000000000000000000000000000000000000000000000000","stream":true}],
            "outputs":[{"path":"big.bin","upload":{"url":"https://s3.example/b/big.bin?X-Amz-Signature=1"}},{"glob":"**/*.log","when":"overflow","upload":{"url":"https://s3.example/b/{name}","method":"post","headers":{"x-amz-acl":"private"}}}]}"#).unwrap();
        assert_eq!(job.files.len(), 1);
        let input = &job.remote_inputs[0];
        assert_eq!(
            (input.index, input.path.as_str(), input.stream),
            (1, "d/big.bin", true)
        );
        assert!(input.sha256.as_deref().unwrap().starts_with("ab00"));
        assert!(job.collect_outputs);
        assert_eq!(job.uploads.len(), 2);
        assert_eq!(job.uploads[1].method, "POST");
        assert!(job.uploads[1].matches("x/y.log") && !job.uploads[1].matches("y.txt"));

        for (json, field) in [
            (
                r#"{"image":"x","inputs":[{"path":"a","url":"ftp://h/x"}]}"#,
                "`inputs[0].url`",
            ),
            (
                r#"{"image":"x","inputs":[{"path":"a","content":"1"},{"path":"b","url":"http://u:p@h/x"}]}"#,
                "`inputs[1].url`",
            ),
            (
                r#"{"image":"x","inputs":[{"path":"a","url":"/relative"}]}"#,
                "`inputs[0].url`",
            ),
            (
                r#"{"image":"x","inputs":[{"path":"a","url":"http://h/x","sha256":"abc"}]}"#,
                "`inputs[0].sha256`",
            ),
            (
                r#"{"image":"x","inputs":[{"path":"a","content":"1","stream":true}]}"#,
                "`inputs[0].stream`",
            ),
            (
                r#"{"image":"x","inputs":[{"path":"a","content":"1","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}]}"#,
                "`inputs[0].sha256`",
            ),
            (
                r#"{"image":"x","inputs":[{"path":"a","url":"http://h/x","content":"1"}]}"#,
                "`inputs[0]`",
            ),
            (
                r#"{"image":"x","outputs":[{"glob":"*.bin","upload":{"url":"http://h/one"}}]}"#,
                "`outputs[0].upload.url`",
            ),
            (
                r#"{"image":"x","outputs":[{"path":"a","glob":"*","upload":{"url":"http://h/a"}}]}"#,
                "`outputs[0]`",
            ),
            (
                r#"{"image":"x","outputs":[{"path":"../a","upload":{"url":"http://h/a"}}]}"#,
                "`outputs[0].path`",
            ),
            (
                r#"{"image":"x","outputs":[{"path":"a","upload":{"url":"http://h/a","method":"DELETE"}}]}"#,
                "`outputs[0].upload.method`",
            ),
            (
                r#"{"image":"x","outputs":[{"path":"a","upload":{"url":"http://h/a","headers":{"Host":"evil"}}}]}"#,
                "`outputs[0].upload.headers.Host`",
            ),
            (
                r#"{"image":"x","outputs":[{"path":"a","upload":{"url":"http://h/a","headers":{"x":"a\r\nb: c"}}}]}"#,
                "`outputs[0].upload.headers.x`",
            ),
            (
                r#"{"image":"x","outputs":[{"path":"a","when":"later","upload":{"url":"http://h/a"}}]}"#,
                "`outputs[0].when`",
            ),
            (
                r#"{"image":"x","outputs":[{"path":"result.json","upload":{"url":"http://h/a"}}]}"#,
                "`outputs[0].path`",
            ),
            (
                r#"{"image":"x","outputs":[{"path":"a","upload":{}}]}"#,
                "`outputs[0].upload`",
            ),
            (r#"{"image":"x","outputs":"yes"}"#, "`outputs`"),
        ] {
            let err = refused(json);
            assert_eq!(err.reason, Reason::InvalidSpec, "{json}");
            assert!(err.message.starts_with(field), "{json}: {}", err.message);
            assert!(!err.message.contains("u:p@"), "{}", err.message);
        }
    }

    #[test]
    fn inputs_and_paths_that_would_be_lost_or_leak_are_named() {
        let err = refused(
            r#"{"image":"x","inputs":[{"path":"a","content":"1"},{"path":"a/b","content":"2"}]}"#,
        );
        assert!(
            err.message.starts_with("`inputs[1].path`") && err.message.contains("inside"),
            "{}",
            err.message
        );
        let err = refused(
            r#"{"image":"x","inputs":[{"path":"a/b","content":"1"},{"path":"a","content":"2"}]}"#,
        );
        assert!(
            err.message.starts_with("`inputs[1].path`"),
            "{}",
            err.message
        );
        assert!(check(
            r#"{"image":"x","inputs":[{"path":"a","content":"1"},{"path":"ab/c","content":"2"}]}"#
        )
        .is_ok());
        let long = "n".repeat(256);
        let err = refused(&format!(
            r#"{{"image":"x","inputs":[{{"path":"{long}","content":"1"}}]}}"#
        ));
        assert!(err.message.contains("at most 255 bytes"), "{}", err.message);
        let err = refused(r#"{"image":"x","workdir":"/w\u0000x"}"#);
        assert!(err.message.starts_with("`workdir`"), "{}", err.message);
    }
}
