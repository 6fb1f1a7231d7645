//! Open connections kept between delivery attempts, per receiver (scheme, host
//! and port), so that a busy receiver is not sent one TCP (and TLS) handshake
//! per delivery.
//!
//! Invariants:
//! - Only a connection an attempt has finished with cleanly is put back (its
//!   answer read to the end, ready for the next request), and one is taken by
//!   one attempt at a time.
//! - A connection idle for [`KEEP_IDLE`] is never taken again (and is dropped,
//!   which closes it); a receiver that closed it first is found out when it is
//!   taken (see `send`, which then sends on a new connection).
//! - At most `per_key` idle connections are kept for one receiver: the
//!   delivery loop's concurrency, the most it can use at once.
//!
//! Generic over what is kept, so that the rules are tested without sockets.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::time::{Duration, Instant};

/// How long an idle connection is kept. Below the idle timeout of common
/// servers (Node.js closes after 5 s), so that a receiver rarely closes one
/// just as it is used.
pub const KEEP_IDLE: Duration = Duration::from_secs(4);

/// Which receiver a connection goes to: https or not, the URL's host, the port.
pub type Key = (bool, String, u16);

/// Idle connections by receiver. A std `Mutex`: nothing is awaited while it is held.
pub struct Pool<T> {
    idle: Mutex<HashMap<Key, Vec<(Instant, T)>>>,
    per_key: usize,
}

impl<T> Pool<T> {
    pub fn new(per_key: usize) -> Pool<T> {
        Pool {
            idle: Mutex::new(HashMap::new()),
            per_key,
        }
    }

    /// The most recently used idle connection to `key` that is not too old and
    /// for which `alive` holds; the others on the way are dropped.
    pub fn take(&self, key: &Key, alive: impl Fn(&T) -> bool) -> Option<T> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some((since, conn)) = list.pop() {
            if since.elapsed() < KEEP_IDLE && alive(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next attempt to `key`, unless `per_key` are kept
    /// already. Connections that have been idle too long, to any receiver, are
    /// dropped on the way.
    pub fn put(&self, key: Key, conn: T) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|(since, _)| since.elapsed() < KEEP_IDLE);
            !list.is_empty()
        });
        let list = idle.entry(key).or_default();
        if list.len() < self.per_key {
            list.push((Instant::now(), conn));
        }
    }

    /// Idle connections kept, all receivers together.
    pub fn idle(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str) -> Key {
        (false, host.to_string(), 80)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_taken_once_and_only_while_fresh() {
        let pool = Pool::new(2);
        pool.put(key("a"), 1);
        pool.put(key("a"), 2);
        pool.put(key("a"), 3); // over per_key: dropped
        assert_eq!(pool.idle(), 2);
        assert_eq!(pool.take(&key("b"), |_| true), None);
        assert_eq!(pool.take(&key("a"), |_| true), Some(2), "the newest first");
        assert_eq!(
            pool.take(&key("a"), |&c| c != 1),
            None,
            "a closed one is dropped"
        );
        assert_eq!(pool.idle(), 0);

        pool.put(key("a"), 4);
        tokio::time::advance(KEEP_IDLE).await;
        assert_eq!(pool.take(&key("a"), |_| true), None, "idle too long");
        pool.put(key("b"), 5);
        tokio::time::advance(KEEP_IDLE).await;
        pool.put(key("c"), 6);
        assert_eq!(
            pool.idle(),
            1,
            "the old ones of other receivers are dropped"
        );
    }
}
