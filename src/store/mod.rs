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
//! pooled, dedicated or pub/sub, asks the sentinels for the master again and
//! checks its `ROLE`, so a process follows a failover as soon as its old
//! connections fail; nothing else changes for the callers.

pub mod sentinel;

use crate::backoff::Backoff;
use crate::config::{RedisMode, RedisSettings};
use crate::telemetry::error_chain;
use deadpool::managed::{self, Metrics, RecycleResult};
use deadpool::Runtime;
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
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
                    || matches!(e.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN" | "NOREPLICAS"))
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

/// A multiplexed connection that remembers whether it failed in a way that
/// leaves it unusable (the socket is gone, or a reply never came).
pub struct Tracked {
    conn: MultiplexedConnection,
    broken: bool,
}

impl Tracked {
    fn note(&mut self, r: &redis::RedisResult<redis::Value>) {
        match r {
            Err(e) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
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
            let r = self.conn.req_packed_command(cmd).await;
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
            let r = self.conn.req_packed_commands(cmd, offset, count).await;
            self.note_all(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// Makes connections, and hands them out again without asking Redis (see the
/// module's invariant).
pub struct Manager {
    target: Target,
    config: AsyncConnectionConfig,
}

/// Where connections go: one server, or whichever master the sentinels name.
#[derive(Clone)]
enum Target {
    Standalone(redis::Client),
    Sentinel(Arc<Sentinels>),
}

impl Target {
    fn new(r: &RedisSettings) -> Result<Target, StoreError> {
        Ok(match r.mode {
            RedisMode::Sentinel => {
                Target::Sentinel(Arc::new(Sentinels::new(r).map_err(StoreError::Url)?))
            }
            // Cluster is refused when the settings load; a Store built from
            // settings made by hand treats it as one server.
            RedisMode::Standalone | RedisMode::Cluster => {
                Target::Standalone(redis::Client::open(r.url.as_str()).map_err(StoreError::Url)?)
            }
        })
    }

    /// A new connection (to the master as of now, in sentinel mode).
    async fn connect(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, redis::RedisError> {
        match self {
            Target::Standalone(client) => {
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await
            }
            Target::Sentinel(s) => Ok(s.connect(config).await?.0),
        }
    }

    /// A client for the server as of now (for a pub/sub connection).
    async fn client(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<redis::Client, redis::RedisError> {
        match self {
            Target::Standalone(client) => Ok(client.clone()),
            Target::Sentinel(s) => Ok(s.connect(config).await?.1),
        }
    }
}

impl managed::Manager for Manager {
    type Type = Tracked;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Tracked, redis::RedisError> {
        let conn = self.target.connect(&self.config).await?;
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

    /// A connection of its own, outside the pools, whose replies may take up to
    /// `wait` longer than a command's: for a long-lived blocking reader (an
    /// `/events` client's `XREAD BLOCK`), which would otherwise hold a pooled
    /// connection for as long as the client stays.
    pub async fn dedicated(
        &self,
        wait: Duration,
    ) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(self.command_timeout + wait));
        self.target
            .connect(&config)
            .await
            .map_err(StoreError::Connect)
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
            Target::Standalone(_) => None,
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
    pub async fn replicate(
        &self,
        conn: &mut impl ConnectionLike,
        step: &'static str,
    ) -> Option<u32> {
        if self.wait_replicas == 0 {
            return None;
        }
        let waited: redis::RedisResult<u32> = redis::cmd("WAIT")
            .arg(self.wait_replicas)
            .arg(self.wait_timeout_ms)
            .query_async(conn)
            .await;
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
    Pool::builder(Manager { target, config })
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(connect))
        .create_timeout(Some(connect))
        .recycle_timeout(Some(connect))
        .build()
        .map_err(StoreError::from)
}
