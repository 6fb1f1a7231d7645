//! Typed settings, loaded once at start and passed down; nothing reads the
//! environment after this.
//!
//! Sources, later wins: `config/default.toml` (compiled in, so the binary needs no
//! files), an optional `--config FILE`, `DOCKHAND__SECTION__KEY` variables, and last
//! the Redis URL from `REDIS_URL` / `--redis-url`. [`Settings::validate`] rejects
//! values that would only fail later, so a bad config stops the process at start.

mod api;
mod network;
mod size;

pub use api::{ApiSettings, Scope, Token};

pub use network::{Network, NetworkError};
use serde::Deserialize;
pub use size::ByteSize;
use std::path::Path;

/// The default configuration, the same text as `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// The most log lines a job's webhook body may carry (`webhooks.log_tail_lines`).
pub const MAX_LOG_TAIL_LINES: usize = 200;

/// A queue name (and the key prefix): `[A-Za-z0-9_.-]{1,64}`, so that it can sit
/// inside a Redis key's `{hash tag}` and a consumer group name as it is.
pub fn is_valid_queue_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A worker id made safe as one path component (its cache folder and the like):
/// characters outside `[A-Za-z0-9._-]` become `_`, and a name that is empty or
/// starts with a dot gets a `w` in front, so it is never `.`, `..` or hidden.
pub fn path_component(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        format!("w{safe}")
    } else {
        safe
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The compiled-in defaults, `--config FILE` and `DOCKHAND__...` variables,
    /// merged: the source names the key or file at fault.
    #[error("cannot load the configuration (config/default.toml lists every key; --config FILE and DOCKHAND__SECTION__KEY variables override it)")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub redis: RedisSettings,
    pub worker: WorkerSettings,
    pub jobs: JobSettings,
    pub policy: PolicySettings,
    pub webhooks: WebhookSettings,
    pub results: ResultSettings,
    pub api: ApiSettings,
    pub schedules: ScheduleSettings,
    /// The places a worker may run jobs besides Docker (`[executors.*]`).
    pub executors: ExecutorSettings,
}

/// `[executors]`: which executors this worker offers. Docker is always offered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSettings {
    pub local: LocalExecutorSettings,
    /// `[executors.ssh.hosts.<name>]`; no hosts (the default) offers no SSH.
    #[serde(default)]
    pub ssh: SshExecutorSettings,
}

/// `[executors.ssh]`: the hosts that `"executor": "ssh"` jobs may name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshExecutorSettings {
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<String, SshHost>,
}

/// One host of `[executors.ssh.hosts.<name>]`. It holds paths, never key
/// material: the key is read when a run connects, so `Debug` prints nothing secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshHost {
    pub address: String,
    #[serde(default = "ssh_port")]
    pub port: u16,
    pub user: String,
    /// The private key (OpenSSH format, unencrypted) the worker logs in with.
    pub key_file: String,
    /// The host's keys, in OpenSSH `known_hosts` format: a key not listed is refused.
    pub known_hosts: String,
    /// Interpreter names a job's `script.interpreter` may give, and the command
    /// line (words split on whitespace) each runs as on the host.
    #[serde(default)]
    pub interpreters: std::collections::BTreeMap<String, String>,
}

fn ssh_port() -> u16 {
    22
}

impl SshExecutorSettings {
    /// Names the first key of a host that cannot work.
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, host) in &self.hosts {
            let key = |k: &str| format!("executors.ssh.hosts.{name}.{k}");
            let bad = |k: &str, why: &str| Err(ConfigError::Invalid(format!("`{}` {why}", key(k))));
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(ConfigError::Invalid(format!(
                    "`executors.ssh.hosts.{name}`: a host name is letters, digits, _ . -"
                )));
            }
            if host.address.trim().is_empty() {
                return bad("address", "must name the host (a name or an IP address)");
            }
            if host.port == 0 {
                return bad("port", "must be between 1 and 65535");
            }
            if host.user.trim().is_empty() {
                return bad("user", "must name the remote user");
            }
            for (k, path) in [
                ("key_file", &host.key_file),
                ("known_hosts", &host.known_hosts),
            ] {
                if !path.starts_with('/') {
                    return bad(k, "must be an absolute path");
                }
                if let Err(e) = std::fs::metadata(path) {
                    return bad(k, &format!("cannot be read ({path}: {e})"));
                }
            }
            for (interp, line) in &host.interpreters {
                if line.trim().is_empty() {
                    return bad(&format!("interpreters.{interp}"), "must not be empty");
                }
                if !line.trim_start().starts_with('/') {
                    return bad(
                        &format!("interpreters.{interp}"),
                        "must start with the interpreter's absolute path",
                    );
                }
            }
        }
        Ok(())
    }
}

/// `[executors.local]`: jobs run as host processes, with no isolation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalExecutorSettings {
    /// Off by default: a local job runs as the worker's user and sees the host.
    pub enabled: bool,
    /// Where each run gets its working directory (`<base_dir>/<worker id>/...`).
    pub base_dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub timeout_seconds: u64,
    #[serde(deserialize_with = "one_or_many")]
    pub retry_schedule_seconds: Vec<u64>,
    /// Non-public networks that deliveries may reach all the same.
    #[serde(deserialize_with = "one_or_many")]
    pub allow_networks: Vec<Network>,
    pub rotation_overlap_seconds: u64,
    pub log_tail_lines: usize,
    pub concurrency: usize,
    pub lease_seconds: u64,
    /// PEM certificates trusted for https deliveries besides the public roots.
    pub ca_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// The server in `standalone` mode; in `sentinel` mode only its user name,
    /// password and database number are used (for the master).
    pub url: String,
    pub prefix: String,
    pub command_timeout_ms: u64,
    pub pool_size: usize,
    pub mode: RedisMode,
    /// The sentinels (`redis://host:port`), asked in turn, in `sentinel` mode.
    #[serde(deserialize_with = "one_or_many")]
    pub nodes: Vec<String>,
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// Replicas a worker waits for (`WAIT`) after a claim, a terminal write and
    /// an ack; 0: no wait.
    pub wait_replicas: u32,
    pub wait_timeout_ms: u64,
}

/// A node's URL as it may be shown: without its password.
fn shown_node(node: &str) -> String {
    match node.rsplit_once('@') {
        Some((_, host)) => format!("…@{host}"),
        None => node.to_string(),
    }
}

/// How Dockhand finds its Redis: one server, the master that sentinels name,
/// or a Redis Cluster through its seed nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    Standalone,
    Sentinel,
    Cluster,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Sentinel => "sentinel",
            RedisMode::Cluster => "cluster",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub id: String,
    /// Queue names; written `name` or `name:weight` (the weight is taken out into
    /// [`WorkerSettings::weights`] when the settings load).
    #[serde(deserialize_with = "one_or_many")]
    pub queues: Vec<String>,
    /// Each queue's weight, in `queues`' order (1 when none was written).
    #[serde(skip)]
    pub weights: Vec<u32>,
    /// Take the queues strictly in the order written, instead of by weight.
    pub strict_priority: bool,
    pub concurrency: usize,
    pub block_ms: u64,
    pub metrics_flush_ms: u64,
    pub lease_seconds: u64,
    pub drain_seconds: u64,
    pub max_deliveries: u32,
    pub stop_grace_seconds: u64,
    pub reconnect_max_ms: u64,
    pub pull: PullPolicy,
    pub docker_host: String,
    pub cache_dir: std::path::PathBuf,
    /// How a container's `/dockhand` folders reach the worker: bound from
    /// `cache_dir` when the engine sees it, or copied through the API.
    pub job_folders: JobFolders,
    pub profiles_dir: std::path::PathBuf,
    pub git_timeout_seconds: u64,
    pub build_context_bytes: ByteSize,
    pub docker_retries: u32,
    /// How often the orphan sweep runs (after the one at start).
    pub sweep_seconds: u64,
    /// `host:port` of this worker's own `/metrics` and `/healthz`; empty: none.
    pub metrics_listen: String,
    #[serde(default)]
    pub git_tokens: GitTokens,
}

impl WorkerSettings {
    /// Where the worker's own `/metrics` and `/healthz` listen, if anywhere.
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, String> {
        if self.metrics_listen.is_empty() {
            return Ok(None);
        }
        self.metrics_listen.parse().map(Some).map_err(|_| {
            format!(
                "`worker.metrics_listen` {:?} is not host:port (e.g. 0.0.0.0:9187), or empty for none",
                self.metrics_listen
            )
        })
    }
}

/// Host (or `host:port`) → token for fetching private repositories. `Debug`
/// shows the hosts only, so printing the settings never shows a token.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct GitTokens(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for GitTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitTokens")
            .field("hosts", &self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `worker.job_folders`: how `/dockhand/{input,work,output}` are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobFolders {
    /// Bound from `<cache_dir>/<worker id>/runs/` when the worker runs as root
    /// and the engine sees that folder at the same path (checked once); else copied.
    Auto,
    /// Always copied in and out through the Docker API (tar archives).
    Copy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    Never,
    Missing,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    pub retention_seconds: u64,
    pub max_line_bytes: usize,
    /// Text of one stored log entry and one live message, at most: lines that
    /// reach the worker together share one (0: a line each).
    pub log_entry_bytes: usize,
    pub dead_max_len: usize,
    pub events_max_len: usize,
    /// At most one `job.progress` event (and webhook) per job this often; the
    /// job hash always gets the latest report.
    pub progress_interval_ms: u64,
    /// How long a job waits for a parent named in `after` to end (or to arrive)
    /// before it is aborted `dependency_failed`.
    pub dependency_wait_seconds: u64,
    pub limits: LimitSettings,
}

/// Defaults applied to a job's `limits`, and the most a job may ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub memory: ByteSize,
    pub max_memory: ByteSize,
    pub cpus: f64,
    pub max_cpus: f64,
    pub pids: i64,
    pub max_pids: i64,
    pub timeout_seconds: u64,
    pub max_timeout_seconds: u64,
    pub log_bytes: ByteSize,
    pub max_log_bytes: ByteSize,
    pub output_bytes: ByteSize,
    pub max_output_bytes: ByteSize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    #[serde(deserialize_with = "one_or_many")]
    pub networks: Vec<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub cap_add: Vec<String>,
    pub no_new_privileges: bool,
    #[serde(deserialize_with = "one_or_many")]
    pub images: Vec<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub git_hosts: Vec<String>,
    /// Jobs (and submodules) may build from repositories on the worker's own host:
    /// absolute paths and `file://` URLs. Never from inside `worker.cache_dir`.
    pub git_file_urls: bool,
    /// Non-public networks that git over http(s) may reach all the same.
    #[serde(deserialize_with = "one_or_many")]
    pub git_allow_networks: Vec<Network>,
    #[serde(deserialize_with = "one_or_many")]
    pub bind_allow: Vec<String>,
    /// Named volumes a job may mount: names, or prefixes ending in `*`.
    #[serde(deserialize_with = "one_or_many")]
    pub volumes_allow: Vec<String>,
    pub allow_ports: bool,
    /// Job and service containers get a read-only root filesystem; `/dockhand`
    /// (one volume per container) and `/tmp` (tmpfs) stay writable.
    pub read_only_rootfs: bool,
    /// Non-public networks that `inputs[].url` may reach all the same.
    #[serde(deserialize_with = "one_or_many")]
    pub input_allow_networks: Vec<Network>,
    /// Non-public networks that output uploads may reach all the same.
    #[serde(deserialize_with = "one_or_many")]
    pub upload_allow_networks: Vec<Network>,
    /// One URL input at most, and all of a job's together.
    pub input_max_bytes: ByteSize,
    pub input_total_bytes: ByteSize,
    /// Connect and response headers; then the longest a transfer may stall.
    pub transfer_connect_seconds: u64,
    pub transfer_idle_seconds: u64,
}

/// Where the server of the jobs' result URLs (`RESPONSE_URL`, `ABORT_URL`) listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultSettings {
    /// Empty: the gateway of the `dockhand-results` Docker network.
    pub bind: String,
    /// 0: a free port chosen at start.
    pub port: u16,
    /// Connections open at once, all jobs together; more are closed at once.
    pub max_connections: usize,
    /// Requests to one job's URLs in progress at once; more are answered 429.
    pub max_connections_per_job: usize,
    /// Room for the fields in a body, on top of the job's `limits.output_bytes`.
    pub fields_bytes: ByteSize,
    /// How long a request's headers, and then its body, may take to arrive.
    pub read_timeout_seconds: u64,
    /// Fields in one body (known or not; files apart); more are answered 413.
    pub max_fields: usize,
    /// Files in one multipart body; more are answered 413.
    pub max_files: usize,
}

/// How workers enqueue the ticks of periodic schedules (`queue::cron`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// How often each worker looks for due ticks (at most 1000, so a tick is
    /// enqueued within a second).
    pub poll_ms: u64,
    /// A tick older than this when a worker first sees it due was missed (no
    /// worker ran): the schedule's `missed` policy decides whether it runs.
    pub late_seconds: u64,
}

impl WorkerSettings {
    /// Takes `name:weight` apart into `queues` and `weights`.
    fn split_weights(&mut self) -> Result<(), ConfigError> {
        let mut names = Vec::new();
        self.weights.clear();
        for q in &self.queues {
            let (name, weight) = match q.rsplit_once(':') {
                None => (q.as_str(), 1),
                Some((name, w)) => match w.parse::<u32>() {
                    Ok(w) if (1..=1000).contains(&w) => (name, w),
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "`worker.queues` entry {q:?}: the weight after `:` must be a whole number from 1 to 1000"
                        )))
                    }
                },
            };
            names.push(name.to_string());
            self.weights.push(weight);
        }
        self.queues = names;
        Ok(())
    }
}

/// A list, or a single value standing for a list of one. An environment variable
/// like `DOCKHAND__WORKER__QUEUES=default` (no comma) reaches us as one value.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::{value, IntoDeserializer};
    struct Visitor<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::de::DeserializeOwned> serde::de::Visitor<'de> for Visitor<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list, or a single value")
        }
        // Each element goes through the source's own deserializer, which keeps the
        // config crate's string-to-number coercion for environment values.
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(x) = seq.next_element()? {
                out.push(x);
            }
            Ok(out)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            let one: value::StrDeserializer<E> = v.into_deserializer();
            Ok(vec![T::deserialize(one)?])
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Vec<T>, E> {
            let one: value::U64Deserializer<E> = v.into_deserializer();
            Ok(vec![T::deserialize(one)?])
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Vec<T>, E> {
            let one: value::I64Deserializer<E> = v.into_deserializer();
            Ok(vec![T::deserialize(one)?])
        }
    }
    d.deserialize_any(Visitor(std::marker::PhantomData))
}

/// Overrides that come from the command line rather than files or variables.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub redis_url: Option<String>,
    pub queues: Vec<String>,
    pub concurrency: Option<usize>,
    pub worker_id: Option<String>,
}

impl Settings {
    /// Loads the settings once: defaults, then `file`, then the environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env, overrides)
    }

    /// Like [`Settings::load`], with the environment given explicitly (tests use this).
    pub fn load_from(
        file: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let vars: config::Map<String, String> = env.iter().cloned().collect();
        builder = builder.add_source(
            config::Environment::with_prefix("DOCKHAND")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("worker.queues")
                .with_list_parse_key("redis.nodes")
                .with_list_parse_key("policy.networks")
                .with_list_parse_key("policy.cap_add")
                .with_list_parse_key("policy.images")
                .with_list_parse_key("policy.git_hosts")
                .with_list_parse_key("policy.git_allow_networks")
                .with_list_parse_key("policy.input_allow_networks")
                .with_list_parse_key("policy.upload_allow_networks")
                .with_list_parse_key("policy.bind_allow")
                .with_list_parse_key("policy.volumes_allow")
                .with_list_parse_key("webhooks.retry_schedule_seconds")
                .with_list_parse_key("webhooks.allow_networks")
                .with_list_parse_key("api.tokens")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let redis_url = overrides.redis_url.clone().or_else(|| {
            env.iter()
                .find(|(k, _)| k == "REDIS_URL")
                .map(|(_, v)| v.clone())
        });
        if let Some(url) = redis_url {
            builder = builder.set_override("redis.url", url)?;
        }
        if !overrides.queues.is_empty() {
            builder = builder.set_override("worker.queues", overrides.queues.clone())?;
        }
        if let Some(n) = overrides.concurrency {
            builder = builder.set_override("worker.concurrency", n as u64)?;
        }
        if let Some(id) = &overrides.worker_id {
            builder = builder.set_override("worker.id", id.clone())?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.worker.split_weights()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rejects values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("`{key}` {why}")));
        if !is_valid_queue_name(&self.redis.prefix) {
            return bad(
                "redis.prefix",
                "must be 1-64 characters of A-Z a-z 0-9 _ . -",
            );
        }
        if self.worker.queues.is_empty() {
            return bad("worker.queues", "must name at least one queue");
        }
        for q in &self.worker.queues {
            if !is_valid_queue_name(q) {
                return bad("worker.queues", &format!("has an invalid queue name {q:?}"));
            }
        }
        if self.executors.local.enabled && !self.executors.local.base_dir.starts_with('/') {
            return bad("executors.local.base_dir", "must be an absolute path");
        }
        self.executors.ssh.validate()?;
        if self.worker.concurrency == 0 {
            return bad("worker.concurrency", "must be at least 1");
        }
        if self.policy.transfer_connect_seconds == 0 || self.policy.transfer_idle_seconds == 0 {
            return bad(
                "policy.transfer_connect_seconds / policy.transfer_idle_seconds",
                "must be at least 1",
            );
        }
        if self.worker.sweep_seconds == 0 {
            return bad("worker.sweep_seconds", "must be at least 1");
        }
        if self.worker.block_ms == 0 || self.worker.block_ms > 60_000 {
            return bad("worker.block_ms", "must be between 1 and 60000");
        }
        if self.worker.metrics_flush_ms == 0 || self.worker.metrics_flush_ms > 60_000 {
            return bad("worker.metrics_flush_ms", "must be between 1 and 60000");
        }
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(self.redis.url.as_str()) {
            // What comes before an `@` may be a password: never echo it.
            let shown = match self.redis.url.rsplit_once('@') {
                Some((_, host)) => format!("…@{host}"),
                None => self.redis.url.clone(),
            };
            let why = format!(
                "{shown:?} is not a Redis URL ({e}); write it as redis://host:port/ \
                 (rediss:// for TLS, unix:///path/to/socket for a socket)"
            );
            return bad("redis.url", &why);
        }
        if self.redis.pool_size == 0 {
            return bad("redis.pool_size", "must be at least 1");
        }
        self.validate_redis_mode()?;
        if self.jobs.max_line_bytes < 64 {
            return bad("jobs.max_line_bytes", "must be at least 64");
        }
        if self.jobs.log_entry_bytes > 1 << 20 {
            // One message a subscriber's buffer takes whole (Redis cuts a
            // pub/sub client off past 8 MiB held for a minute).
            return bad("jobs.log_entry_bytes", "must be at most 1048576 (1 MiB)");
        }
        let l = &self.jobs.limits;
        if l.memory > l.max_memory
            || l.pids > l.max_pids
            || l.timeout_seconds > l.max_timeout_seconds
        {
            return bad("jobs.limits", "has a default above its maximum");
        }
        if l.log_bytes > l.max_log_bytes
            || l.output_bytes > l.max_output_bytes
            || l.cpus > l.max_cpus
        {
            return bad("jobs.limits", "has a default above its maximum");
        }
        if !self.results.bind.is_empty() && self.results.bind.parse::<std::net::IpAddr>().is_err() {
            return bad("results.bind", "must be empty or an IP address");
        }
        let r = &self.results;
        if r.max_connections == 0 || r.max_connections_per_job == 0 {
            return bad(
                "results",
                "max_connections and max_connections_per_job must be at least 1",
            );
        }
        if r.read_timeout_seconds == 0 {
            return bad("results.read_timeout_seconds", "must be at least 1");
        }
        if r.max_fields < 2 {
            // result_text and result_data together must fit.
            return bad("results.max_fields", "must be at least 2");
        }
        if self.webhooks.log_tail_lines > MAX_LOG_TAIL_LINES {
            let most = format!("must be at most {MAX_LOG_TAIL_LINES}");
            return bad("webhooks.log_tail_lines", &most);
        }
        if self.webhooks.concurrency == 0 || self.webhooks.timeout_seconds == 0 {
            return bad(
                "webhooks",
                "concurrency and timeout_seconds must be at least 1",
            );
        }
        if self.worker.build_context_bytes.0 == 0 {
            return bad("worker.build_context_bytes", "must be at least 1");
        }
        if !self.worker.cache_dir.is_absolute() {
            return bad("worker.cache_dir", "must be an absolute path");
        }
        if let Err(why) = self.worker.metrics_addr() {
            return Err(ConfigError::Invalid(why));
        }
        if self.policy.networks.iter().any(|n| n == "host") {
            return bad("policy.networks", "may not allow the host network");
        }
        if !(1..=1000).contains(&self.schedules.poll_ms) {
            return bad("schedules.poll_ms", "must be between 1 and 1000");
        }
        if self.schedules.late_seconds == 0 {
            return bad("schedules.late_seconds", "must be at least 1");
        }
        Ok(())
    }

    /// `redis.mode` and what it needs: each refusal says what to set.
    fn validate_redis_mode(&self) -> Result<(), ConfigError> {
        let r = &self.redis;
        let bad = |why: &str| Err(ConfigError::Invalid(why.to_string()));
        match r.mode {
            RedisMode::Standalone => {}
            RedisMode::Cluster => {
                if r.nodes.is_empty() {
                    return bad(
                        "`redis.mode` = \"cluster\" needs seed nodes: set redis.nodes \
                         (e.g. [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"], \
                         or DOCKHAND__REDIS__NODES=redis://10.0.0.1:6379,redis://10.0.0.2:6379)",
                    );
                }
                for node in &r.nodes {
                    if redis::IntoConnectionInfo::into_connection_info(node.as_str()).is_err() {
                        return bad(&format!(
                            "`redis.nodes` has {:?}, which is not a cluster node's URL: \
                             write each as redis://host:port",
                            shown_node(node)
                        ));
                    }
                }
            }
            RedisMode::Sentinel => {
                if r.nodes.is_empty() {
                    return bad(
                        "`redis.mode` = \"sentinel\" needs the sentinels: set redis.nodes \
                         (e.g. [\"redis://10.0.0.1:26379\", \"redis://10.0.0.2:26379\"], \
                         or DOCKHAND__REDIS__NODES=redis://10.0.0.1:26379,redis://10.0.0.2:26379)",
                    );
                }
                if r.master_name.trim().is_empty() {
                    return bad("`redis.mode` = \"sentinel\" needs the master's name: set \
                         redis.master_name to the name the sentinels monitor \
                         (`sentinel monitor <name> ...` in sentinel.conf)");
                }
                for node in &r.nodes {
                    if redis::IntoConnectionInfo::into_connection_info(node.as_str()).is_err() {
                        return bad(&format!(
                            "`redis.nodes` has {:?}, which is not a sentinel's URL: \
                             write each as redis://host:port",
                            shown_node(node)
                        ));
                    }
                }
            }
        }
        if r.wait_replicas > 0
            && (r.wait_timeout_ms == 0 || r.wait_timeout_ms >= r.command_timeout_ms)
        {
            return bad(
                "`redis.wait_timeout_ms` must be at least 1 (WAIT with timeout 0 blocks for ever) \
                 and below redis.command_timeout_ms (or the WAIT itself times out) \
                 when redis.wait_replicas is set",
            );
        }
        Ok(())
    }

    /// `<worker.cache_dir>/<worker id>/<name>`: a folder of this worker's own
    /// (the id made safe as one path component).
    pub fn worker_folder(&self, name: &str) -> std::path::PathBuf {
        let id = path_component(&self.worker_id());
        self.worker.cache_dir.join(id).join(name)
    }

    /// The worker's identity: `worker.id`, or the host name when that is empty.
    pub fn worker_id(&self) -> String {
        if !self.worker.id.is_empty() {
            return self.worker.id.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "dockhand-worker".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(s.redis.prefix, "dockhand");
        assert_eq!(s.worker.queues, vec!["default".to_string()]);
        assert_eq!(s.jobs.limits.memory, ByteSize(512 << 20));
        assert_eq!(s.worker.pull, PullPolicy::Never);
    }

    #[test]
    fn environment_overrides_nested_keys_and_lists() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("DOCKHAND__WORKER__CONCURRENCY", "7"),
                ("DOCKHAND__WORKER__QUEUES", "a,b"),
                ("DOCKHAND__JOBS__LIMITS__MEMORY", "1g"),
                ("DOCKHAND_BIN", "/not/a/setting"),
                ("REDIS_URL", "redis://127.0.0.1:1/"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.worker.concurrency, 7);
        assert_eq!(s.worker.queues, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(s.jobs.limits.memory, ByteSize(1 << 30));
        assert_eq!(s.redis.url, "redis://127.0.0.1:1/");
    }

    #[test]
    fn a_single_value_is_a_list_of_one() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("DOCKHAND__WORKER__QUEUES", "solo"),
                ("DOCKHAND__WEBHOOKS__RETRY_SCHEDULE_SECONDS", "2"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.worker.queues, vec!["solo".to_string()]);
        assert_eq!(s.webhooks.retry_schedule_seconds, vec![2]);
    }

    #[test]
    fn a_redis_url_without_a_scheme_is_refused_with_the_form_to_use() {
        for (url, shown) in [
            ("localhost:6379", "localhost:6379"),
            ("user:hunter2@db:6379", "…@db:6379"),
        ] {
            let err = Settings::load_from(None, &env(&[("REDIS_URL", url)]), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("`redis.url`"), "{err}");
            assert!(err.contains(shown) && !err.contains("hunter2"), "{err}");
            assert!(err.contains("redis://host:port/"), "{err}");
        }
    }

    #[test]
    fn sentinel_mode_comes_from_the_environment_with_its_list_of_nodes() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("DOCKHAND__REDIS__MODE", "sentinel"),
                (
                    "DOCKHAND__REDIS__NODES",
                    "redis://10.0.0.1:26379,redis://10.0.0.2:26379",
                ),
                ("DOCKHAND__REDIS__MASTER_NAME", "mymaster"),
                ("DOCKHAND__REDIS__WAIT_REPLICAS", "1"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.redis.mode, RedisMode::Sentinel);
        assert_eq!(
            s.redis.nodes,
            vec!["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]
        );
        assert_eq!(s.redis.master_name, "mymaster");
        assert_eq!(s.redis.wait_replicas, 1);
        // One sentinel, no comma: still a list of one.
        let s = Settings::load_from(
            None,
            &env(&[
                ("DOCKHAND__REDIS__MODE", "sentinel"),
                ("DOCKHAND__REDIS__NODES", "redis://10.0.0.1:26379"),
                ("DOCKHAND__REDIS__MASTER_NAME", "mymaster"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.redis.nodes, vec!["redis://10.0.0.1:26379"]);
        let s = Settings::load_from(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.redis.mode, RedisMode::Standalone);
    }

    #[test]
    fn sentinel_and_cluster_modes_without_what_they_need_are_refused_with_what_to_set() {
        let refusal = |pairs: &[(&str, &str)]| {
            Settings::load_from(None, &env(pairs), &Overrides::default())
                .unwrap_err()
                .to_string()
        };
        let err = refusal(&[
            ("DOCKHAND__REDIS__MODE", "sentinel"),
            ("DOCKHAND__REDIS__MASTER_NAME", "mymaster"),
        ]);
        assert!(err.contains("set redis.nodes"), "{err}");
        let err = refusal(&[
            ("DOCKHAND__REDIS__MODE", "sentinel"),
            ("DOCKHAND__REDIS__NODES", "redis://10.0.0.1:26379"),
        ]);
        assert!(err.contains("set redis.master_name"), "{err}");
        let err = refusal(&[
            ("DOCKHAND__REDIS__MODE", "sentinel"),
            ("DOCKHAND__REDIS__NODES", "10.0.0.1:26379"),
            ("DOCKHAND__REDIS__MASTER_NAME", "mymaster"),
        ]);
        assert!(err.contains("redis://host:port"), "{err}");
        let err = refusal(&[("DOCKHAND__REDIS__MODE", "cluster")]);
        assert!(err.contains("needs seed nodes"), "{err}");
        let err = refusal(&[
            ("DOCKHAND__REDIS__MODE", "cluster"),
            ("DOCKHAND__REDIS__NODES", "10.0.0.1:6379"),
        ]);
        assert!(err.contains("not a cluster node's URL"), "{err}");
        let err = refusal(&[("DOCKHAND__REDIS__MODE", "sharded")]);
        assert!(err.contains("cannot load the configuration"), "{err}");
    }

    #[test]
    fn command_line_redis_url_beats_the_environment() {
        let s = Settings::load_from(
            None,
            &env(&[("REDIS_URL", "redis://from-env/")]),
            &Overrides {
                redis_url: Some("redis://from-flag/".into()),
                queues: vec!["q1".into(), "q2".into()],
                concurrency: Some(3),
                worker_id: None,
            },
        )
        .unwrap();
        assert_eq!(s.redis.url, "redis://from-flag/");
        assert_eq!(s.worker.queues, vec!["q1".to_string(), "q2".to_string()]);
        assert_eq!(s.worker.concurrency, 3);
    }

    #[test]
    fn a_config_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "[worker]\nconcurrency = 9\nqueues = [\"x\"]\n").unwrap();
        let s = Settings::load_from(Some(&path), &[], &Overrides::default()).unwrap();
        assert_eq!(s.worker.concurrency, 9);
        assert_eq!(s.worker.queues, vec!["x".to_string()]);
    }

    #[test]
    fn the_worker_metrics_address_is_off_by_default_and_must_be_host_port() {
        let s = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(s.worker.metrics_addr(), Ok(None));
        let on = env(&[("DOCKHAND__WORKER__METRICS_LISTEN", "127.0.0.1:9187")]);
        let s = Settings::load_from(None, &on, &Overrides::default()).unwrap();
        assert_eq!(s.worker.metrics_addr().unwrap().unwrap().port(), 9187);
        let bad = env(&[("DOCKHAND__WORKER__METRICS_LISTEN", "localhost")]);
        let err = Settings::load_from(None, &bad, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`worker.metrics_listen`"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        for (var, value, name) in [
            ("DOCKHAND__WORKER__CONCURRENCY", "0", "worker.concurrency"),
            ("DOCKHAND__POLICY__NETWORKS", "none,host", "policy.networks"),
            (
                "DOCKHAND__JOBS__LOG_ENTRY_BYTES",
                "2000000",
                "jobs.log_entry_bytes",
            ),
        ] {
            let err = Settings::load_from(None, &env(&[(var, value)]), &Overrides::default())
                .unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn git_tokens_keep_dotted_hosts_and_never_show_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            "[worker.git_tokens]\n\"github.com\" = \"ghp_secret\"\n\"git.local:3000\" = \"t2\"\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&path), &[], &Overrides::default()).unwrap();
        let tokens = &s.worker.git_tokens.0;
        assert_eq!(
            tokens.get("github.com").map(String::as_str),
            Some("ghp_secret")
        );
        assert_eq!(tokens.get("git.local:3000").map(String::as_str), Some("t2"));
        let shown = format!("{s:?}");
        assert!(
            shown.contains("github.com") && !shown.contains("ghp_secret"),
            "{shown}"
        );
        assert_eq!(
            s.worker.cache_dir,
            std::path::PathBuf::from("/var/tmp/dockhand")
        );
        assert!(s.policy.git_hosts.is_empty());
        assert!(
            !s.policy.git_file_urls,
            "local repositories are off by default"
        );
        assert!(s.policy.git_allow_networks.is_empty());
        let s = Settings::load_from(
            None,
            &env(&[
                ("DOCKHAND__POLICY__GIT_FILE_URLS", "true"),
                (
                    "DOCKHAND__POLICY__GIT_ALLOW_NETWORKS",
                    "127.0.0.1/32,10.0.0.0/8",
                ),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(s.policy.git_file_urls);
        let nets: Vec<String> = s
            .policy
            .git_allow_networks
            .iter()
            .map(|n| n.0.to_string())
            .collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8"]);
        let err = Settings::load_from(
            None,
            &env(&[("DOCKHAND__POLICY__GIT_ALLOW_NETWORKS", "localhost")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            format!("{:?}", err).contains("localhost"),
            "a bad network is refused at start: {err:?}"
        );
        let err = Settings::load_from(
            None,
            &env(&[("DOCKHAND__WORKER__CACHE_DIR", "relative/cache")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("worker.cache_dir"), "{err}");
    }

    #[test]
    fn result_server_address() {
        let s = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!((s.results.bind.to_string(), s.results.port), ("".into(), 0));
        let s = Settings::load_from(
            None,
            &env(&[
                ("DOCKHAND__RESULTS__BIND", "172.17.0.1"),
                ("DOCKHAND__RESULTS__PORT", "8731"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            (s.results.bind.to_string(), s.results.port),
            ("172.17.0.1".into(), 8731)
        );
    }

    #[test]
    fn result_server_limits() {
        let s = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        let r = &s.results;
        assert_eq!(
            (r.max_connections, r.max_connections_per_job, r.fields_bytes),
            (256, 8, ByteSize(1 << 20))
        );
        assert_eq!(
            (r.read_timeout_seconds, r.max_fields, r.max_files),
            (30, 100, 1000)
        );
        let s = Settings::load_from(
            None,
            &env(&[
                ("DOCKHAND__RESULTS__MAX_CONNECTIONS_PER_JOB", "3"),
                ("DOCKHAND__RESULTS__FIELDS_BYTES", "64k"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.results.max_connections_per_job, 3);
        assert_eq!(s.results.fields_bytes, ByteSize(64 << 10));
        for (key, value, named) in [
            ("DOCKHAND__RESULTS__MAX_CONNECTIONS", "0", "results"),
            (
                "DOCKHAND__RESULTS__READ_TIMEOUT_SECONDS",
                "0",
                "results.read_timeout_seconds",
            ),
            ("DOCKHAND__RESULTS__MAX_FIELDS", "1", "results.max_fields"),
        ] {
            let err = Settings::load_from(None, &env(&[(key, value)]), &Overrides::default())
                .unwrap_err();
            assert!(err.to_string().contains(named), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "[worker]\nconcurency = 9\n").unwrap();
        assert!(Settings::load_from(Some(&path), &[], &Overrides::default()).is_err());
    }
}
