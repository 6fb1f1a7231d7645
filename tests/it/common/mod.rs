//! Shared fixtures for the integration tests: a real `redis-server`, the real Docker
//! engine, and a worker running in-process.
//!
//! Each test gets its own key prefix and worker id, so tests run in parallel on one
//! Redis without seeing each other's keys or containers. `REDIS_URL` (set by
//! `scripts/test`) names a shared server; without it, each test starts its own.

#![allow(dead_code)]

pub mod cluster;
pub mod docker;
pub mod receiver;
pub mod sentinel;

use deadpool_redis::redis::{self, AsyncCommands};
use dockhand::config::{Overrides, Settings};
use dockhand::queue::Keys;
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The local image jobs run in (built by scripts/lib.sh: FROM scratch + static busybox).
pub fn image() -> String {
    let image =
        std::env::var("DOCKHAND_TEST_IMAGE").unwrap_or_else(|_| "dockhand-busybox:latest".into());
    let ok = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "test image {image} is missing: run scripts/test, which builds it"
    );
    image
}

/// A `redis-server` this test owns (killed on drop), on a free loopback port (or
/// a free port of another address of this host: [`RedisServer::start_on`]).
pub struct RedisServer {
    pub port: u16,
    host: std::net::IpAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&["--appendonly", "no"])
    }

    /// With extra `redis-server` arguments (e.g. AOF on), kept across restarts.
    pub fn start_with(args: &[&str]) -> RedisServer {
        RedisServer::start_on_with(std::net::Ipv4Addr::LOCALHOST.into(), args)
    }

    /// Listening on `host` only, an address of this machine: the gateway of a
    /// Docker network the test made, so that containers on it reach Redis (which
    /// protected mode would refuse: it lets only loopback in without a password).
    pub fn start_on(host: std::net::IpAddr) -> RedisServer {
        RedisServer::start_on_with(host, &["--appendonly", "no", "--protected-mode", "no"])
    }

    fn start_on_with(host: std::net::IpAddr, args: &[&str]) -> RedisServer {
        let port = TcpListener::bind((host, 0))
            .unwrap_or_else(|e| panic!("no free port on {host}: {e}"))
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut server = RedisServer {
            port,
            host,
            child: None,
            dir,
            args,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}/", self.host, self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                &self.host.to_string(),
                "--save",
                "",
            ])
            .args(&self.args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..200 {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// SIGKILLs the server (all data is lost: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// While the server is down: stands in on its port and waits (bounded) until
    /// `n` connections arrive, dropping each at once. A client that connects here
    /// has noticed that Redis went away and is trying again: the event a test waits
    /// for instead of keeping Redis down for a guessed while. Call before `restart`.
    pub async fn wait_for_reconnect_attempts(&self, n: usize) {
        assert!(self.child.is_none(), "the server is still up");
        let listener = tokio::net::TcpListener::bind((self.host, self.port))
            .await
            .unwrap_or_else(|e| panic!("cannot stand in on port {}: {e}", self.port));
        let deadline = tokio::time::Instant::now() + GUARD;
        for seen in 0..n {
            match tokio::time::timeout_at(deadline, listener.accept()).await {
                Ok(Ok((stream, _))) => drop(stream),
                Ok(Err(e)) => panic!("accepting on port {}: {e}", self.port),
                Err(_) => panic!(
                    "{seen} of {n} reconnect attempts came within {GUARD:?} while Redis was down"
                ),
            }
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One test's world: Redis, a unique prefix, settings, and helpers.
pub struct Env {
    pub url: String,
    pub prefix: String,
    pub keys: Keys,
    pub client: redis::Client,
    /// Held so that a per-test server lives as long as the test.
    pub server: Option<RedisServer>,
    /// The queue of each job the test submitted through [`Env::xadd`] or
    /// [`Env::lpush`]: a job's keys carry its queue's tag. Others are in `default`.
    queues: Arc<std::sync::Mutex<HashMap<String, String>>>,
}

impl Env {
    /// Uses `REDIS_URL` when set, else a server of its own.
    pub fn new() -> Env {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Env::with_url(url, None),
            _ => Env::own_server(),
        }
    }

    /// Always a server of its own (for tests that kill Redis).
    pub fn own_server() -> Env {
        let server = RedisServer::start();
        Env::with_url(server.url(), Some(server))
    }

    /// A server of its own with AOF on, fsynced on every write.
    pub fn own_server_with_aof() -> Env {
        let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
        Env::with_url(server.url(), Some(server))
    }

    /// With `server`, a Redis the test started its own way ([`RedisServer::start_on`]).
    pub fn on(server: RedisServer) -> Env {
        Env::with_url(server.url(), Some(server))
    }

    /// On the server at `url`, which the test started and keeps itself (a
    /// [`sentinel::SentinelGroup`]'s master, say).
    pub fn at(url: String) -> Env {
        Env::with_url(url, None)
    }

    /// The same prefix, read through the server at `url` (a new master after a
    /// failover).
    pub fn moved_to(&self, url: String) -> Env {
        Env {
            client: redis::Client::open(url.as_str()).unwrap(),
            keys: Keys::new(&self.prefix),
            url,
            prefix: self.prefix.clone(),
            server: None,
            queues: self.queues.clone(),
        }
    }

    fn with_url(url: String, server: Option<RedisServer>) -> Env {
        let prefix = format!("t{}", ulid::Ulid::new().to_string().to_ascii_lowercase());
        let client = redis::Client::open(url.as_str()).unwrap();
        Env {
            keys: Keys::new(&prefix),
            url,
            prefix,
            client,
            server,
            queues: Default::default(),
        }
    }

    /// Settings for a worker in this test: its prefix, its id, short timings.
    pub fn settings(
        &self,
        queues: &[&str],
        concurrency: usize,
        extra: &[(&str, &str)],
    ) -> Arc<Settings> {
        let mut env: Vec<(String, String)> = vec![
            ("DOCKHAND__REDIS__PREFIX".into(), self.prefix.clone()),
            ("DOCKHAND__WORKER__BLOCK_MS".into(), "300".into()),
            ("DOCKHAND__WORKER__METRICS_FLUSH_MS".into(), "200".into()),
            ("DOCKHAND__WORKER__STOP_GRACE_SECONDS".into(), "1".into()),
            ("DOCKHAND__WORKER__RECONNECT_MAX_MS".into(), "500".into()),
            ("DOCKHAND__WORKER__DRAIN_SECONDS".into(), "20".into()),
            ("DOCKHAND__WORKER__LEASE_SECONDS".into(), "2".into()),
            // Webhook receivers in tests listen on 127.0.0.1; retries come at once.
            (
                "DOCKHAND__WEBHOOKS__ALLOW_NETWORKS".into(),
                "127.0.0.1/32".into(),
            ),
            (
                "DOCKHAND__WEBHOOKS__RETRY_SCHEDULE_SECONDS".into(),
                "0,0".into(),
            ),
            ("DOCKHAND__WEBHOOKS__LEASE_SECONDS".into(), "3".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let overrides = Overrides {
            redis_url: Some(self.url.clone()),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            concurrency: Some(concurrency),
            worker_id: Some(self.prefix.clone()),
        };
        Arc::new(Settings::load_from(None, &env, &overrides).expect("test settings are valid"))
    }

    /// A connection for the test's own reads and writes. Its replies may take
    /// long on a loaded machine (a whole log of 100,000 lines read at once), and
    /// a test waits on events, not on the clock: the client's default response
    /// timeout would fail it for being slow, so it gets a generous one.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(60)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap()
    }

    /// `XADD dockhand:{q}:jobs * job <json>`, as any producer would; returns the entry id.
    pub async fn xadd(&self, queue: &str, job: &str) -> String {
        let mut c = self.conn().await;
        let entry: String = c
            .xadd(self.keys.jobs(queue), "*", &[("job", job)])
            .await
            .unwrap();
        let id = dockhand::job::requested_id(job.as_bytes()).unwrap_or_else(|| entry.clone());
        self.note_queue(&id, queue);
        entry
    }

    /// `LPUSH dockhand:{q}:inbox <json>`.
    pub async fn lpush(&self, queue: &str, job: &str) {
        let mut c = self.conn().await;
        let _: i64 = c.lpush(self.keys.inbox(queue), job).await.unwrap();
        if let Some(id) = dockhand::job::requested_id(job.as_bytes()) {
            self.note_queue(&id, queue);
        }
    }

    /// Remembers that job `id` is in `queue` (for a job submitted another way).
    pub fn note_queue(&self, id: &str, queue: &str) {
        self.queues
            .lock()
            .unwrap()
            .insert(id.to_string(), queue.to_string());
    }

    /// The queue of job `text` (`<queue>/<id>`, or an id this test submitted, or
    /// else `default`) and its bare id.
    pub fn locate(&self, text: &str) -> (String, String) {
        if let Some((q, id)) = text.split_once('/') {
            return (q.to_string(), id.to_string());
        }
        let queue = self.queues.lock().unwrap().get(text).cloned();
        (queue.unwrap_or_else(|| "default".into()), text.to_string())
    }

    /// The key of job `text`'s hash (see [`Env::locate`]).
    pub fn job_key(&self, text: &str) -> String {
        let (q, id) = self.locate(text);
        self.keys.job(&q, &id)
    }

    /// The key of job `text`'s log stream.
    pub fn log_key(&self, text: &str) -> String {
        let (q, id) = self.locate(text);
        self.keys.log(&q, &id)
    }

    /// The key of job `text`'s files hash.
    pub fn files_key(&self, text: &str) -> String {
        let (q, id) = self.locate(text);
        self.keys.files(&q, &id)
    }

    pub async fn job(&self, id: &str) -> HashMap<String, String> {
        let mut c = self.conn().await;
        c.hgetall(self.job_key(id)).await.unwrap()
    }

    /// Waits until the job is completed or aborted and returns its hash. The limit
    /// only keeps a broken test from hanging; it asserts nothing about speed.
    pub async fn finished(&self, id: &str) -> HashMap<String, String> {
        self.finished_within(id, Duration::from_secs(120)).await
    }

    /// [`Env::finished`] with a longer guard, for jobs that are long by design.
    pub async fn finished_within(&self, id: &str, guard: Duration) -> HashMap<String, String> {
        for _ in 0..(guard.as_millis() / 50) {
            let job = self.job(id).await;
            if matches!(
                job.get("status").map(String::as_str),
                Some("completed" | "aborted")
            ) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "job {id} did not finish; its hash: {:?}",
            self.job(id).await
        );
    }

    /// The stored log lines: (seq, stream, line). Read in pages, so that a long
    /// log is not one reply slower than the connection's response timeout.
    pub async fn log(&self, id: &str) -> Vec<(u64, String, String)> {
        let mut c = self.conn().await;
        let mut lines = Vec::new();
        let mut from = "-".to_string();
        loop {
            let reply: redis::streams::StreamRangeReply = c
                .xrange_count(self.log_key(id), &from, "+", 10_000)
                .await
                .unwrap();
            let Some(last) = reply.ids.last() else { break };
            from = format!("({}", last.id);
            for e in &reply.ids {
                let seq: u64 = e.get::<String>("seq").unwrap().parse().unwrap();
                let stream = e.get::<String>("stream").unwrap();
                let text = e.get::<String>("line").unwrap();
                // An entry of several lines: `count` of them, joined by "\n".
                match e.get::<String>("count") {
                    None => lines.push((seq, stream, text)),
                    Some(count) => {
                        let parts: Vec<&str> = text.split('\n').collect();
                        assert_eq!(parts.len().to_string(), count, "entry {} of {id}", e.id);
                        lines.extend(
                            (seq..)
                                .zip(parts)
                                .map(|(seq, line)| (seq, stream.clone(), line.to_string())),
                        );
                    }
                }
            }
        }
        lines
    }

    /// The stored log's entries as they are: (seq, count, stream, text).
    pub async fn log_entries(&self, id: &str) -> Vec<(u64, u64, String, String)> {
        let mut c = self.conn().await;
        let reply: redis::streams::StreamRangeReply = c.xrange_all(self.log_key(id)).await.unwrap();
        reply
            .ids
            .iter()
            .map(|e| {
                (
                    e.get::<String>("seq").unwrap().parse().unwrap(),
                    e.get::<String>("count").map_or(1, |n| n.parse().unwrap()),
                    e.get::<String>("stream").unwrap(),
                    e.get::<String>("line").unwrap(),
                )
            })
            .collect()
    }

    /// Lines of one stream (stdout, stderr, system), in order.
    pub async fn lines(&self, id: &str, stream: &str) -> Vec<String> {
        self.log(id)
            .await
            .into_iter()
            .filter(|(_, s, _)| s == stream)
            .map(|(_, _, l)| l)
            .collect()
    }

    /// A worker running in this process.
    pub fn worker(&self, queues: &[&str], concurrency: usize) -> Worker {
        Worker::start(self.settings(queues, concurrency, &[]))
    }
}

impl Env {
    /// A worker as a separate process of the real binary (for SIGKILL and SIGTERM),
    /// with this test's prefix and the given worker id; its log goes to stderr.
    pub fn spawn_worker(&self, worker_id: &str, extra: &[(&str, &str)]) -> std::process::Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dockhand"));
        cmd.args([
            "--redis-url",
            &self.url,
            "worker",
            "--queue",
            "default",
            "--concurrency",
            "2",
            "--id",
            worker_id,
        ])
        .env_remove("REDIS_URL")
        .env("DOCKHAND__REDIS__PREFIX", &self.prefix)
        .env("DOCKHAND__WORKER__BLOCK_MS", "300")
        .env("DOCKHAND__WORKER__METRICS_FLUSH_MS", "200")
        .env("DOCKHAND__WORKER__LEASE_SECONDS", "2")
        .env("DOCKHAND__WORKER__STOP_GRACE_SECONDS", "1")
        .env("DOCKHAND__WORKER__RECONNECT_MAX_MS", "500")
        .env("DOCKHAND__WEBHOOKS__ALLOW_NETWORKS", "127.0.0.1/32")
        .env("DOCKHAND__WEBHOOKS__RETRY_SCHEDULE_SECONDS", "0,0")
        .env("DOCKHAND__WEBHOOKS__LEASE_SECONDS", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.spawn().expect("the dockhand binary starts")
    }

    /// Waits until the job's status is `status` (bounded; asserts nothing about speed).
    pub async fn status_becomes(&self, id: &str, status: &str) -> HashMap<String, String> {
        for _ in 0..1200 {
            let job = self.job(id).await;
            if job.get("status").map(String::as_str) == Some(status) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "job {id} never became {status}; its hash: {:?}",
            self.job(id).await
        );
    }

    /// Waits (bounded) until a line of the job's `stream` (stdout, stderr, system,
    /// build) contains `needle`; returns that stream's lines.
    pub async fn wait_for_log_line(&self, id: &str, stream: &str, needle: &str) -> Vec<String> {
        wait_until(
            &format!("a {stream} line of job {id} containing {needle:?}"),
            || async {
                let lines = self.lines(id, stream).await;
                lines.iter().any(|l| l.contains(needle)).then_some(lines)
            },
        )
        .await
    }

    /// The workers' latest heartbeats (`dockhand:workers`), each as its JSON:
    /// `worker`, `consumer`, `pid`, `queues`, `docker`, `running`, `beat_at`...
    /// Empty while Redis does not answer.
    pub async fn beats(&self) -> Vec<serde_json::Value> {
        let Ok(mut c) = self.client.get_multiplexed_async_connection().await else {
            return Vec::new();
        };
        let workers: HashMap<String, String> =
            c.hgetall(self.keys.workers()).await.unwrap_or_default();
        workers
            .values()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect()
    }

    /// Waits (bounded) until some worker's heartbeat satisfies `check`; returns it.
    pub async fn wait_for_beat(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(what, || async {
            self.beats().await.into_iter().find(|b| check(b))
        })
        .await
    }

    /// Waits (bounded) until the worker `worker_id` (the process `pid`, when given)
    /// is ready to claim: its heartbeat is in Redis (written once it has Docker and
    /// Redis, as its claim loop starts) and the consumer group of every queue it
    /// serves exists (its claim loop makes it before the first read). Returns its
    /// heartbeat. (A consumer only shows in `XINFO CONSUMERS` once it was given an
    /// entry, on Redis 7.0, so an idle worker cannot be found there.)
    pub async fn wait_until_worker_ready(
        &self,
        worker_id: &str,
        pid: Option<u32>,
    ) -> serde_json::Value {
        wait_until(
            &format!("worker {worker_id} (pid {pid:?}) to be ready to claim"),
            || async {
                for beat in self.beats().await {
                    if beat["worker"] != worker_id
                        || pid.is_some_and(|p| beat["pid"].as_u64() != Some(p.into()))
                    {
                        continue;
                    }
                    let mut ready = true;
                    for queue in beat["queues"].as_array().into_iter().flatten() {
                        ready &= self.has_group(queue.as_str().unwrap_or_default()).await;
                    }
                    if ready {
                        return Some(beat);
                    }
                }
                None
            },
        )
        .await
    }

    /// Whether the consumer group of `queue` exists.
    pub async fn has_group(&self, queue: &str) -> bool {
        let Ok(mut c) = self.client.get_multiplexed_async_connection().await else {
            return false;
        };
        let reply: Result<redis::streams::StreamInfoGroupsReply, _> =
            c.xinfo_groups(self.keys.jobs(queue)).await;
        reply.is_ok_and(|r| r.groups.iter().any(|g| g.name == dockhand::queue::GROUP))
    }
}

/// How long a wait for an event may take before the test fails. It only keeps a
/// broken test from hanging; it asserts nothing about speed.
pub const GUARD: Duration = Duration::from_secs(60);

/// Polls `check` every 50 ms until it returns `Some`, and returns that; fails the
/// test after [`GUARD`], saying it was waiting for `what`.
pub async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("waited {GUARD:?} for {what}; it never happened");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a signal to a child process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} failed");
}

/// Waits (bounded) until `check` holds, polling.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

/// A worker task; stopping it sends the shutdown it was started with.
pub struct Worker {
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn start(settings: Arc<Settings>) -> Worker {
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            dockhand::worker::run(settings, shutdown)
                .await
                .expect("the worker runs");
        });
        Worker {
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Whether the worker's task has ended (returned or panicked).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("the worker stops cleanly");
        }
    }
}

/// A job spec for the test image with this `id`, plus the fields of `extra`.
/// The lines of a message published on a job's log channel: (seq, stream,
/// line). A message of several lines has `count` of them from `seq`, joined by "\n".
pub fn published_lines(message: &serde_json::Value) -> Vec<(u64, String, String)> {
    let seq = message["seq"].as_u64().expect("a message has a seq");
    let stream = message["stream"].as_str().expect("a message has a stream");
    let text = message["line"].as_str().expect("a message has a line");
    match message["count"].as_u64() {
        None => vec![(seq, stream.to_string(), text.to_string())],
        Some(count) => {
            let parts: Vec<&str> = text.split('\n').collect();
            assert_eq!(parts.len() as u64, count, "{message}");
            (seq..)
                .zip(parts)
                .map(|(seq, line)| (seq, stream.to_string(), line.to_string()))
                .collect()
        }
    }
}

pub fn spec(id: &str, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({ "id": id, "image": image() });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v.to_string()
}

/// Builds the image `tag` of the test's own `dockhand` binary with
/// `scripts/image` (FROM scratch: the binary, the libraries it links, the CA
/// bundle), as an operator with no registry does. The caller removes it.
pub fn build_dockhand_image(tag: &str) {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/image"))
        .args(["--bin", env!("CARGO_BIN_EXE_dockhand"), "--tag", tag])
        .output()
        .expect("scripts/image runs");
    assert!(
        out.status.success(),
        "scripts/image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Containers that carry `label`, running or not.
pub fn containers_with_label(label: &str) -> Vec<String> {
    docker_ids(&["ps", "-a", "-q"], label)
}

/// Networks that carry `label`.
pub fn networks_with_label(label: &str) -> Vec<String> {
    docker_ids(&["network", "ls", "-q"], label)
}

/// Volumes that carry `label`.
pub fn volumes_with_label(label: &str) -> Vec<String> {
    docker_ids(&["volume", "ls", "-q"], label)
}

fn docker_ids(list: &[&str], label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(list)
        .args(["--filter", &format!("label={label}")])
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Runs git in `dir` with a fixed identity; returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Dockhand Test",
            "-c",
            "user.email=test@dockhand.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            // git refuses file-transport submodules by default (CVE-2022-39253).
            "protocol.file.allow=always",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git must be installed");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs the `dockhand` binary with this test's Redis and prefix; stdin is empty.
pub async fn cli(env: &Env, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .arg("--redis-url")
        .arg(&env.url)
        .args(args)
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .env_remove("REDIS_URL")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("the dockhand binary runs")
}

/// Waits until the queue's dead stream holds `n` entries: an entry is moved there
/// in a step after its job's state is written, so it may lag the state a moment.
pub async fn dead_entries_become(env: &Env, queue: &str, n: usize) {
    wait_until(
        &format!("{n} entries in the dead stream of {queue}"),
        || async {
            let len: usize = env.conn().await.xlen(env.keys.dead(queue)).await.unwrap();
            (len == n).then_some(())
        },
    )
    .await;
}

/// One command on a fresh connection to the Redis on loopback `port`, bounded
/// in time (a test's own server, sentinel or cluster node).
pub async fn query_node<T: redis::FromRedisValue>(
    port: u16,
    cmd: &mut redis::Cmd,
) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    cmd.query_async(&mut conn).await
}

/// Waits (bounded by [`GUARD`]) until the Redis on loopback `port` answers
/// `PING`. A cluster node writes and syncs its nodes.conf as it starts, which
/// took over 5 s (the bound before) while the suite's Docker jobs loaded the disk.
pub fn wait_for_ping(port: u16) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let deadline = std::time::Instant::now() + GUARD;
    while std::time::Instant::now() < deadline {
        if let Ok(mut c) = client.get_connection() {
            if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("redis-server did not start on port {port}");
}
