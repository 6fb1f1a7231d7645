//! Finding the master through Redis Sentinel (`redis.mode = "sentinel"`).
//!
//! Invariants: every new connection asks the sentinels again (nothing is kept
//! but which sentinel answered last, which is asked first next time), so a
//! connection made after a failover goes to the new master; and a connection is
//! handed out only after the server itself answered `ROLE` with `master`: a
//! sentinel's answer may be stale while a failover is under way, a server's own
//! role is not. A sentinel that is down, does not know the master, or names a
//! server that is not (or no longer) a master is passed over for the next.

use crate::config::RedisSettings;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind,
    IntoConnectionInfo, RedisError,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The sentinels of one master, and how to log in to that master.
pub struct Sentinels {
    /// Each sentinel as written in `redis.nodes` (for messages), and its client.
    nodes: Vec<(String, Client)>,
    master_name: String,
    /// User, password and database for the master (from `redis.url`); the
    /// address is replaced by what the sentinels say.
    master: ConnectionInfo,
    timeout: Duration,
    first: AtomicUsize,
}

/// What one sentinel said about the master.
pub enum Answer {
    /// The master's address, as the sentinel knows it.
    Master(String, u16),
    /// The sentinel answered but monitors no master of that name.
    Unknown,
    /// The sentinel could not be asked.
    Unreachable(RedisError),
}

impl Sentinels {
    pub fn new(r: &RedisSettings) -> Result<Sentinels, RedisError> {
        let nodes = r
            .nodes
            .iter()
            .map(|n| Ok((shown(n), Client::open(n.as_str())?)))
            .collect::<Result<Vec<_>, RedisError>>()?;
        Ok(Sentinels {
            nodes,
            master_name: r.master_name.clone(),
            master: r.url.as_str().into_connection_info()?,
            timeout: Duration::from_millis(r.command_timeout_ms),
            first: AtomicUsize::new(0),
        })
    }

    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// Asks every sentinel, in the order configured (for `dockhand doctor`).
    pub async fn survey(&self) -> Vec<(String, Answer)> {
        let mut out = Vec::new();
        for (i, (name, _)) in self.nodes.iter().enumerate() {
            out.push((name.clone(), self.ask(i).await));
        }
        out
    }

    /// A connection to the current master, made with `config` and checked with
    /// `ROLE`, and a client for that master (for a pub/sub connection).
    pub async fn connect(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<(MultiplexedConnection, Client), RedisError> {
        let start = self.first.load(Ordering::Relaxed);
        let mut tried = Vec::new();
        for k in 0..self.nodes.len() {
            let i = (start + k) % self.nodes.len();
            let sentinel = &self.nodes[i].0;
            let (host, port) = match self.ask(i).await {
                Answer::Master(host, port) => (host, port),
                Answer::Unknown => {
                    tried.push(format!(
                        "sentinel {sentinel} monitors no master named {:?}",
                        self.master_name
                    ));
                    continue;
                }
                Answer::Unreachable(e) => {
                    tried.push(format!("sentinel {sentinel} did not answer ({e})"));
                    continue;
                }
            };
            match self.connect_checked(&host, port, config).await {
                Ok(found) => {
                    self.first.store(i, Ordering::Relaxed);
                    return Ok(found);
                }
                Err(why) => tried.push(format!(
                    "sentinel {sentinel} named {host}:{port}, which {why}"
                )),
            }
        }
        Err(RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "no sentinel named a master that answers as one",
            tried.join("; "),
        )))
    }

    /// Connects to `host:port` and asks its role; says why when it is no master.
    async fn connect_checked(
        &self,
        host: &str,
        port: u16,
        config: &AsyncConnectionConfig,
    ) -> Result<(MultiplexedConnection, Client), String> {
        let info = self
            .master
            .clone()
            .set_addr(ConnectionAddr::Tcp(host.to_string(), port));
        let client = Client::open(info).map_err(|e| format!("is no valid address ({e})"))?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await
            .map_err(|e| format!("cannot be reached ({e})"))?;
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("did not answer ROLE ({e})"))?;
        match role.first() {
            Some(redis::Value::BulkString(b)) if b.as_slice() == b"master" => Ok((conn, client)),
            Some(redis::Value::BulkString(b)) => {
                Err(format!("is a {} now", String::from_utf8_lossy(b)))
            }
            _ => Err("gave an unexpected ROLE answer".to_string()),
        }
    }

    /// `SENTINEL get-master-addr-by-name` on sentinel `i`.
    async fn ask(&self, i: usize) -> Answer {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let asked = async {
            let mut conn = self.nodes[i]
                .1
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master_name)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        match asked.await {
            Ok(Some((host, port))) => Answer::Master(host, port),
            Ok(None) => Answer::Unknown,
            Err(e) => Answer::Unreachable(e),
        }
    }
}

/// A node's URL without what may be a password.
fn shown(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((scheme_user, host)) => match scheme_user.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…@{host}"),
            None => format!("…@{host}"),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sentinel_is_named_without_its_password() {
        assert_eq!(
            super::shown("redis://:pw@10.0.0.1:26379"),
            "redis://…@10.0.0.1:26379"
        );
        assert_eq!(
            super::shown("redis://10.0.0.1:26379"),
            "redis://10.0.0.1:26379"
        );
    }
}
