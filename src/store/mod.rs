//! Redis connections: one pool for ordinary commands and one for blocking reads.
//!
//! Why two pools: a blocking command (`XREADGROUP BLOCK`, `BLMOVE`) holds its
//! connection until the server answers, so it must never share a multiplexed
//! connection with ordinary commands, and its response timeout must outlast the
//! block. Ordinary commands time out after `redis.command_timeout_ms`, so a silent
//! network never hangs a worker. Connections are made lazily: a worker starts even
//! while Redis is down, and says so until it is back.
//!
//! Invariant: taking a connection from a pool costs no Redis command. (The stock
//! deadpool-redis manager sends `UNWATCH` and `PING` on every checkout: two of a
//! job's commands per step, 18 of the 88 a plain job cost.) Nothing here uses
//! `WATCH`, and a connection that failed with a connection error or a timeout is
//! marked and dropped at its next checkout instead, so a dead connection costs
//! the step that found it one retry (every caller retries connection errors).
//! A `READONLY` reply marks a connection too: it reached a master that has since
//! become a replica, so the next connection must go to the new master.
//!
//! Sentinel mode (`redis.mode = "sentinel"`, [`sentinel`]): every new connection,
//! pooled or pub/sub, asks the sentinels for the master again and checks its
//! `ROLE`, so a process follows a failover as soon as its old connections fail;
//! nothing else changes for the callers.
//!
//! Cluster mode (`redis.mode = "cluster"`): a pooled connection is a cluster
//! connection, which sends each command to the master of its key's slot and
//! follows `MOVED` and `ASK`. Every atomic step keeps its keys in one slot (see
//! `queue::Keys`); a pipeline that is not a transaction may span slots, so it is
//! sent one command at a time (all at once, each to its own node) and its
//! replies put back in order. Pub/sub uses a plain connection to one node:
//! Redis Cluster forwards a `PUBLISH` to every node. `SCAN` goes to every
//! master ([`Conn::scan_keys`]).

pub mod sentinel;

use crate::backoff::Backoff;
use crate::config::{RedisMode, RedisSettings};
use crate::telemetry::error_chain;
use deadpool::managed::{self, Metrics, RecycleResult};
use deadpool::Runtime;
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig};
use sentinel::Sentinels;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL")]
    Url(#[source] redis::RedisError),
    /// No connection could be made: Redis is down, refuses, or cannot be resolved.
    /// (Taken out of the pool's error, whose own words are about its "objects".)
    #[error("cannot connect to Redis")]
    Connect(#[source] redis::RedisError),
    /// The pool gave no connection in time (all busy, or its own timeouts).
    #[error("no Redis connection came free in time")]
    Pool(#[source] deadpool_redis::PoolError),
    #[error("Redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("cannot build the connection pool")]
    Build(#[from] deadpool_redis::BuildError),
}

impl From<deadpool_redis::PoolError> for StoreError {
    fn from(e: deadpool_redis::PoolError) -> StoreError {
        match e {
            deadpool_redis::PoolError::Backend(e) => StoreError::Connect(e),
            other => StoreError::Pool(other),
        }
    }
}

impl StoreError {
    /// True when the error is about reaching Redis rather than about the command.
    pub fn is_connection(&self) -> bool {
        match self {
            StoreError::Connect(_) | StoreError::Pool(_) => true,
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    // Answers of a Redis that is starting up or failing over: wait and retry.
                    // NOREPLICAS: a master with `min-replicas-to-write` that has too few
                    // replicas now refuses writes (it may be cut off from the others).
                    // MOVED, ASK: the cluster's slots moved more times than its client follows.
                    || matches!(e.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN" | "NOREPLICAS" | "MOVED" | "ASK"))
            }
            _ => false,
        }
    }

    /// The server's error code (`NOGROUP`, `BUSYGROUP`, ...), if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            StoreError::Redis(e) => e.code(),
            _ => None,
        }
    }
}

/// A pooled connection for ordinary commands (or one blocking read).
pub struct Conn(managed::Object<Manager>);

type Pool = managed::Pool<Manager>;

impl std::ops::Deref for Conn {
    type Target = Tracked;
    fn deref(&self) -> &Tracked {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Tracked {
        &mut self.0
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.0.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

impl Conn {
    /// Every key matching `pattern`, `count` at a time: one `SCAN` walk, or in
    /// cluster mode one on each master (a `SCAN` sees one node's keys only).
    pub async fn scan_keys(
        &mut self,
        pattern: &str,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        let opts = || {
            redis::ScanOptions::default()
                .with_pattern(pattern)
                .with_count(count)
        };
        let seeds = match &self.0.conn {
            Inner::Single(_) => return scan_one(&mut **self, opts()).await,
            Inner::Cluster { seeds, .. } => seeds.clone(),
        };
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut **self)
            .await?;
        let mut keys = Vec::new();
        for addr in masters(&nodes) {
            let Some(seed) = seeds.first() else { break };
            let (host, port) = addr;
            let info =
                redis::ConnectionInfo::clone(seed).set_addr(redis::ConnectionAddr::Tcp(host, port));
            let mut c = redis::Client::open(info)?
                .get_multiplexed_async_connection()
                .await
                .map_err(StoreError::Connect)?;
            keys.extend(scan_one(&mut c, opts()).await?);
        }
        Ok(keys)
    }
}

async fn scan_one(
    conn: &mut (impl redis::aio::ConnectionLike + Send + Sync),
    opts: redis::ScanOptions,
) -> Result<Vec<String>, StoreError> {
    use redis::AsyncCommands;
    let mut iter = conn.scan_options::<String>(opts).await?;
    let mut keys = Vec::new();
    while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
        keys.push(k?);
    }
    Ok(keys)
}

/// The addresses of the masters that serve slots, from `CLUSTER NODES`.
fn masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = f.get(2)?;
            if !flags.contains("master") || flags.contains("fail") || f.len() < 9 {
                return None;
            }
            // ip:port@cport[,hostname]
            let addr = f.get(1)?.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// A multiplexed connection that remembers whether it failed in a way that
/// leaves it unusable (the socket is gone, or a reply never came).
pub struct Tracked {
    conn: Inner,
    broken: bool,
}

/// One server's connection, or a Redis Cluster's.
#[derive(Clone)]
enum Inner {
    Single(MultiplexedConnection),
    Cluster {
        conn: ClusterConnection,
        /// The seed nodes, for the connections [`Conn::scan_keys`] makes.
        seeds: Arc<Vec<redis::ConnectionInfo>>,
    },
}

impl Inner {
    async fn query(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Inner::Single(c) => c.req_packed_command(cmd).await,
            Inner::Cluster { conn, .. } => conn.req_packed_command(cmd).await,
        }
    }

    async fn query_all(
        &mut self,
        pipe: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            Inner::Single(c) => c.req_packed_commands(pipe, offset, count).await,
            Inner::Cluster { conn, .. } if pipe.is_transaction() => {
                conn.req_packed_commands(pipe, offset, count).await
            }
            Inner::Cluster { conn, .. } => {
                // Each command on its own, all at once: their keys may be in
                // different slots, which a cluster pipeline refuses.
                let replies = futures_util::future::join_all(pipe.cmd_iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { conn.req_packed_command(cmd).await }
                }))
                .await;
                replies.into_iter().skip(offset).take(count).collect()
            }
        }
    }
}

impl Tracked {
    fn note(&mut self, r: &redis::RedisResult<redis::Value>) {
        match r {
            Err(e) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.code() == Some("READONLY")
                {
                    self.broken = true;
                }
            }
            // A server's error answer comes back as a value here; it becomes an
            // `Err` only when the caller converts the reply.
            Ok(value) => {
                if is_readonly(value) {
                    self.broken = true;
                }
            }
        }
    }

    fn note_all(&mut self, r: &redis::RedisResult<Vec<redis::Value>>) {
        match r {
            Err(e) => self.note(&Err(e.clone())),
            Ok(values) => {
                if values.iter().any(is_readonly) {
                    self.broken = true;
                }
            }
        }
    }
}

/// `READONLY`: the server this connection reached is a replica now.
fn is_readonly(value: &redis::Value) -> bool {
    matches!(value, redis::Value::ServerError(e) if e.code() == "READONLY")
}

impl ConnectionLike for Tracked {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let r = self.conn.query(cmd).await;
            self.note(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let r = self.conn.query_all(cmd, offset, count).await;
            self.note_all(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster { .. } => 0,
        }
    }
}

/// Makes connections, and hands them out again without asking Redis (see the
/// module's invariant).
pub struct Manager {
    target: Target,
    config: AsyncConnectionConfig,
    /// Connect and response timeouts, for a cluster connection.
    timeouts: (Duration, Duration),
}

/// Where connections go: one server, whichever master the sentinels name, or a
/// Redis Cluster (its seed nodes).
#[derive(Clone)]
enum Target {
    Standalone(redis::Client),
    Sentinel(Arc<Sentinels>),
    Cluster {
        seeds: Arc<Vec<redis::ConnectionInfo>>,
    },
}

impl Target {
    fn new(r: &RedisSettings) -> Result<Target, StoreError> {
        Ok(match r.mode {
            RedisMode::Sentinel => {
                Target::Sentinel(Arc::new(Sentinels::new(r).map_err(StoreError::Url)?))
            }
            RedisMode::Cluster => {
                let seeds = r
                    .nodes
                    .iter()
                    .map(|n| redis::IntoConnectionInfo::into_connection_info(n.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(StoreError::Url)?;
                Target::Cluster {
                    seeds: Arc::new(seeds),
                }
            }
            RedisMode::Standalone => {
                Target::Standalone(redis::Client::open(r.url.as_str()).map_err(StoreError::Url)?)
            }
        })
    }

    /// A new connection (to the master as of now, in sentinel mode; to the
    /// cluster, routing by slot, in cluster mode).
    async fn connect(
        &self,
        config: &AsyncConnectionConfig,
        timeouts: (Duration, Duration),
    ) -> Result<Inner, redis::RedisError> {
        Ok(match self {
            Target::Standalone(client) => Inner::Single(
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await?,
            ),
            Target::Sentinel(s) => Inner::Single(s.connect(config).await?.0),
            Target::Cluster { seeds } => {
                let (connect, response) = timeouts;
                let conn = redis::cluster::ClusterClient::builder(seeds.iter().cloned())
                    .connection_timeout(connect)
                    .response_timeout(response)
                    .retries(CLUSTER_RETRIES)
                    .build()?
                    .get_async_connection()
                    .await?;
                Inner::Cluster {
                    conn,
                    seeds: seeds.clone(),
                }
            }
        })
    }

    /// A client for the server as of now (for a pub/sub connection): in
    /// cluster mode, the first seed node that answers (a `PUBLISH` reaches the
    /// subscribers of every node).
    async fn client(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<redis::Client, redis::RedisError> {
        match self {
            Target::Standalone(client) => Ok(client.clone()),
            Target::Sentinel(s) => Ok(s.connect(config).await?.1),
            Target::Cluster { seeds } => first_answering(seeds, config).await,
        }
    }
}

/// How often the cluster client retries a command itself before it hands the
/// error to us. Its default, 16, is retried at once when every node refuses:
/// each retry a reconnection to the seed nodes with a warning and an error in
/// the log, about 700 lines a second from one worker while a cluster was down.
/// Three still follow a redirect (`MOVED`, `ASK`) and a node's reconnection;
/// what remains is ours to retry, with a back-off (see [`StoreError::is_connection`]).
const CLUSTER_RETRIES: u32 = 3;

/// A client for the first of `nodes` that answers a `PING`.
async fn first_answering(
    nodes: &[redis::ConnectionInfo],
    config: &AsyncConnectionConfig,
) -> Result<redis::Client, redis::RedisError> {
    let mut last = None;
    for node in nodes {
        let client = redis::Client::open(node.clone())?;
        let answered = async {
            let mut c = client
                .get_multiplexed_async_connection_with_config(config)
                .await?;
            redis::cmd("PING").query_async::<()>(&mut c).await
        }
        .await;
        match answered {
            Ok(()) => return Ok(client),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "no cluster node given",
        ))
    }))
}

impl managed::Manager for Manager {
    type Type = Tracked;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Tracked, redis::RedisError> {
        let conn = self.target.connect(&self.config, self.timeouts).await?;
        Ok(Tracked {
            conn,
            broken: false,
        })
    }

    async fn recycle(&self, conn: &mut Tracked, _: &Metrics) -> RecycleResult<redis::RedisError> {
        if conn.broken {
            return Err(managed::RecycleError::message("the connection failed"));
        }
        Ok(())
    }
}

/// How long [`Store::persist`] keeps retrying while Redis is unreachable. The
/// ownership checks of the job's steps make a late write safe (a job another
/// worker took over is not overwritten), so this is long: giving up would leave
/// an entry pending under a live worker, where nobody would take it over.
pub const PERSIST_FOR: Duration = Duration::from_secs(600);

/// Cheap to clone; every clone shares the pools.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    blocking: Pool,
    target: Target,
    command_timeout: Duration,
    wait_replicas: u32,
    wait_timeout_ms: u64,
}

impl Store {
    /// Builds the pools without connecting. Blocking reads wait up to `block`; the
    /// blocking pool has a connection per queue (its inbox wait) and four more (the
    /// claim loop's read and a few one-off waits).
    pub fn new(r: &RedisSettings, block: Duration, queues: usize) -> Result<Store, StoreError> {
        let command_timeout = Duration::from_millis(r.command_timeout_ms);
        let target = Target::new(r)?;
        let pool = build_pool(&target, r.pool_size, command_timeout, command_timeout)?;
        let blocking_size = queues + 4;
        let blocking = build_pool(
            &target,
            blocking_size,
            command_timeout + block,
            command_timeout,
        )?;
        Ok(Store {
            pool,
            blocking,
            target,
            command_timeout,
            wait_replicas: r.wait_replicas,
            wait_timeout_ms: r.wait_timeout_ms,
        })
    }

    /// Whether this is a Redis Cluster (a plain pipeline's commands then go each
    /// on its own, to their slots' nodes, in no set order).
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// A connection for ordinary commands.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        Ok(Conn(self.pool.get().await?))
    }

    /// A connection for one blocking command at a time.
    pub async fn blocking_conn(&self) -> Result<Conn, StoreError> {
        Ok(Conn(self.blocking.get().await?))
    }

    /// Runs a Redis step with a fresh connection, retrying while Redis is
    /// unreachable (for up to [`PERSIST_FOR`]); any other error is returned at once.
    pub async fn persist<T, F, Fut>(&self, step: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
            .retry(
                PERSIST_FOR,
                StoreError::is_connection,
                |e, failures| {
                    if failures == 1 {
                        tracing::warn!(error = %error_chain(e), "Redis unreachable while recording a job; retrying");
                    }
                },
                || async {
                    let conn = self.conn().await?;
                    step(conn).await
                },
            )
            .await
    }

    /// A dedicated pub/sub connection.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let client = self
            .target
            .client(&config)
            .await
            .map_err(StoreError::Connect)?;
        client.get_async_pubsub().await.map_err(StoreError::Connect)
    }

    /// The sentinels, in sentinel mode (for `dockhand doctor`).
    pub fn sentinels(&self) -> Option<&Sentinels> {
        match &self.target {
            Target::Sentinel(s) => Some(s),
            Target::Standalone(_) | Target::Cluster { .. } => None,
        }
    }

    /// After a write that must survive a failover (a claim, a terminal write, an
    /// ack), on the connection that made it: `WAIT redis.wait_replicas
    /// redis.wait_timeout_ms`, when set. Returns how many replicas confirmed
    /// (`None`: not asked, or the WAIT failed). Fewer than asked, or a failed
    /// WAIT, is logged, not an error: the write stands on the master either way
    /// and WAIT cannot undo it, and an error here must not make the caller run
    /// its step (a claim, say) a second time. A connection error still marks the
    /// connection, so the next step gets a new one.
    ///
    /// `key` is a key the write touched: in cluster mode the `WAIT` goes to the
    /// master of its slot, which took the write (elsewhere it would wait on a
    /// master that has nothing to pass on, or lacks a replica of its own).
    pub async fn replicate(&self, conn: &mut Conn, step: &'static str, key: &str) -> Option<u32> {
        if self.wait_replicas == 0 {
            return None;
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.wait_replicas).arg(self.wait_timeout_ms);
        let waited: redis::RedisResult<u32> = match &mut conn.0.conn {
            Inner::Cluster { conn: cluster, .. } => {
                use redis::cluster_routing::{
                    Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr,
                };
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                match cluster.route_command(wait, to).await {
                    Ok(v) => redis::from_redis_value(v).map_err(redis::RedisError::from),
                    Err(e) => Err(e),
                }
            }
            Inner::Single(_) => wait.query_async(&mut **conn).await,
        };
        match waited {
            Ok(acked) if acked < self.wait_replicas => {
                tracing::warn!(
                    step,
                    acked,
                    wanted = self.wait_replicas,
                    "fewer replicas than redis.wait_replicas confirmed a write in time"
                );
                Some(acked)
            }
            Ok(acked) => Some(acked),
            Err(e) => {
                tracing::warn!(step, error = %error_chain(&e), "WAIT for replicas failed");
                None
            }
        }
    }
}

fn build_pool(
    target: &Target,
    size: usize,
    response: Duration,
    connect: Duration,
) -> Result<Pool, StoreError> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(response))
        .set_connection_timeout(Some(connect));
    let target = target.clone();
    let timeouts = (connect, response);
    Pool::builder(Manager {
        target,
        config,
        timeouts,
    })
    .max_size(size)
    .runtime(Runtime::Tokio1)
    .wait_timeout(Some(connect))
    .create_timeout(Some(connect))
    .recycle_timeout(Some(connect))
    .build()
    .map_err(StoreError::from)
}
