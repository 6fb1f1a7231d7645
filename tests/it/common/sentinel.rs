//! A Redis Sentinel group of the test's own: one master, two replicas and three
//! sentinels, each a real `redis-server` (the sentinels `redis-server --sentinel`,
//! the same binary Debian's redis-server package installs), on free loopback
//! ports, in a temporary directory of its own. Every process is SIGKILLed when
//! the group is dropped.
//!
//! The sentinels judge a master down after 1 s of silence and a failover may
//! take 3 s, so a test's failover is over in a few seconds; a test waits for
//! it as an event ([`SentinelGroup::wait_for_new_master`]), never for a time.

pub use super::query_node as query;
use super::{free_port, wait_for_ping, wait_until};
use deadpool_redis::redis;
use std::process::{Child, Command, Stdio};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "dhmaster";

pub struct SentinelGroup {
    /// `(port, process)` of the master and the two replicas, in start order; a
    /// killed server's process is `None`.
    servers: Vec<(u16, Option<Child>)>,
    sentinels: Vec<(u16, Option<Child>)>,
    dir: tempfile::TempDir,
}

impl SentinelGroup {
    /// Starts the group and waits until the sentinels know the master, both
    /// replicas and each other (which a failover needs: quorum 2).
    pub async fn start() -> SentinelGroup {
        let dir = tempfile::tempdir().unwrap();
        let mut group = SentinelGroup {
            servers: Vec::new(),
            sentinels: Vec::new(),
            dir,
        };
        let master = free_port();
        group.spawn_server(master, None);
        for _ in 0..2 {
            group.spawn_server(free_port(), Some(master));
        }
        wait_until("both replicas to be in sync with the master", || async {
            let info: String = query(master, redis::cmd("INFO").arg("replication"))
                .await
                .ok()?;
            (info.matches("state=online").count() == 2).then_some(())
        })
        .await;
        for _ in 0..3 {
            group.spawn_sentinel(free_port(), master);
        }
        for port in group.sentinel_ports() {
            wait_until(
                &format!("sentinel {port} to know the replicas and the other sentinels"),
                || async {
                    let fields: Vec<String> =
                        query(port, redis::cmd("SENTINEL").arg("master").arg(MASTER_NAME))
                            .await
                            .ok()?;
                    let field = |name: &str| {
                        let at = fields.iter().position(|f| f == name)?;
                        fields.get(at + 1).cloned()
                    };
                    (field("num-slaves")? == "2" && field("num-other-sentinels")? == "2")
                        .then_some(())
                },
            )
            .await;
        }
        group
    }

    fn spawn_server(&mut self, port: u16, replica_of: Option<u16>) {
        let dir = self.dir.path().join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // Replicas sync at once instead of after the default 5 s.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&dir);
        if let Some(master) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = cmd
            .stdout(log(&dir))
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.servers.push((port, Some(child)));
        wait_for_ping(port);
    }

    fn spawn_sentinel(&mut self, port: u16, master: u16) {
        let dir = self.dir.path().join(format!("sentinel-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        // A sentinel rewrites its file as it learns: each gets its own.
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 3000\n\
                 sentinel parallel-syncs {MASTER_NAME} 2\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(log(&dir))
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.sentinels.push((port, Some(child)));
        wait_for_ping(port);
    }

    /// The master's and the replicas' ports, as first started.
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(|(p, _)| *p).collect()
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|(p, _)| *p).collect()
    }

    /// The sentinels as `redis.nodes` takes them (comma-separated).
    pub fn nodes(&self) -> String {
        self.sentinel_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The variables that put a Dockhand process in sentinel mode on this group.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DOCKHAND__REDIS__MODE", "sentinel".to_string()),
            ("DOCKHAND__REDIS__NODES", self.nodes()),
            ("DOCKHAND__REDIS__MASTER_NAME", MASTER_NAME.to_string()),
        ]
    }

    /// The master's port as the first sentinel that answers says it.
    pub async fn master_port(&self) -> u16 {
        for port in self.sentinel_ports() {
            let asked: Result<Option<(String, u16)>, _> = query(
                port,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER_NAME),
            )
            .await;
            if let Ok(Some((_, master))) = asked {
                return master;
            }
        }
        panic!("no sentinel names a master");
    }

    pub fn url_of(port: u16) -> String {
        format!("redis://127.0.0.1:{port}/")
    }

    /// SIGKILLs the server on `port` (the master, say): its unreplicated writes die with it.
    pub fn kill_server(&mut self, port: u16) {
        let (_, child) = self
            .servers
            .iter_mut()
            .find(|(p, _)| *p == port)
            .expect("a server of this group");
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until every sentinel names a master other than `old` and that
    /// server answers `ROLE` as a master; returns its port.
    pub async fn wait_for_new_master(&self, old: u16) -> u16 {
        wait_until("the sentinels to elect a new master", || async {
            let mut named = None;
            for port in self.sentinel_ports() {
                let asked: Option<(String, u16)> = query(
                    port,
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(MASTER_NAME),
                )
                .await
                .ok()?;
                let (_, master) = asked?;
                if master == old || named.is_some_and(|n| n != master) {
                    return None;
                }
                named = Some(master);
            }
            let master = named?;
            let role: Vec<redis::Value> = query(master, &mut redis::cmd("ROLE")).await.ok()?;
            matches!(role.first(), Some(redis::Value::BulkString(b)) if b.as_slice() == b"master")
                .then_some(master)
        })
        .await
    }

    /// Replicas connected to the master on `port` and in sync.
    pub async fn replicas_online(port: u16) -> usize {
        let info: String = query(port, redis::cmd("INFO").arg("replication"))
            .await
            .unwrap_or_default();
        info.matches("state=online").count()
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for (_, child) in self.servers.iter_mut().chain(self.sentinels.iter_mut()) {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The process's log file in `dir` (kept with the group's directory while it lives).
fn log(dir: &std::path::Path) -> Stdio {
    std::fs::File::create(dir.join("log"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}
