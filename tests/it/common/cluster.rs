//! A Redis Cluster of the test's own: three masters and three replicas, each a
//! real `redis-server --cluster-enabled yes` on a free loopback port, in a
//! temporary directory of its own, joined by `redis-cli --cluster create` (the
//! tool Debian's redis-tools installs). Every process is SIGKILLed when the
//! cluster is dropped.
//!
//! A node is judged failed after 1 s of silence (`cluster-node-timeout 1000`),
//! so a replica takes over a killed master within seconds; a test waits for it
//! as an event, never for a time.

use super::{free_port, query_node as query, wait_for_ping, wait_until};
use deadpool_redis::redis;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Cluster {
    /// `(port, process)` of each node; a killed node's process is `None`.
    nodes: Vec<(u16, Option<Child>)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts six nodes, makes them a cluster with one replica per master, and
    /// waits until every node says the cluster is ok and every slot is served.
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..6 {
            cluster.spawn(free_port());
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (scripts/test installs it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for port in cluster.ports() {
            wait_until(
                &format!("node {port} to be in sync, if a replica"),
                || async {
                    let info: String = query(port, redis::cmd("INFO").arg("replication"))
                        .await
                        .ok()?;
                    (info.contains("role:master") || info.contains("master_link_status:up"))
                        .then_some(())
                },
            )
            .await;
            wait_until(&format!("node {port} to see the cluster ok"), || async {
                let info: String = query(port, redis::cmd("CLUSTER").arg("INFO")).await.ok()?;
                (info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384"))
                    .then_some(())
            })
            .await;
        }
        cluster
    }

    fn spawn(&mut self, port: u16) {
        let dir = self.dir.path().join(format!("node-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            // Replicas sync at once instead of after the default 5 s.
            .args(["--repl-diskless-sync-delay", "0"])
            // A replica takes over however long ago it last heard its master
            // (a quiet test cluster may not have spoken for a while).
            .args(["--cluster-replica-validity-factor", "0"])
            .arg("--cluster-config-file")
            .arg(dir.join("nodes.conf"))
            .arg("--dir")
            .arg(&dir)
            .stdout(
                std::fs::File::create(dir.join("log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.nodes.push((port, Some(child)));
        wait_for_ping(port);
    }

    /// The ports of the nodes still running.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// `redis.nodes` for Dockhand: every node, as seeds.
    pub fn seeds(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The settings that put Dockhand in cluster mode on this cluster.
    pub fn settings(&self) -> Vec<(String, String)> {
        vec![
            ("DOCKHAND__REDIS__MODE".into(), "cluster".into()),
            ("DOCKHAND__REDIS__NODES".into(), self.seeds()),
        ]
    }

    /// A cluster connection for the test's own reads and writes.
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        let nodes: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        redis::cluster::ClusterClient::builder(nodes)
            .response_timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }

    /// The port of the master that serves `key`'s slot now.
    pub async fn master_of(&self, key: &str) -> u16 {
        match self.try_master_of(key).await {
            Ok(port) => port,
            Err(nodes) => panic!("no master serves {key}'s slot:\n{nodes}"),
        }
    }

    /// [`Cluster::master_of`], or what `CLUSTER NODES` said when no master
    /// serves the slot (during a failover).
    async fn try_master_of(&self, key: &str) -> Result<u16, String> {
        let port = self.ports()[0];
        let slot: u16 = query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await
            .unwrap();
        let nodes: String = query(port, redis::cmd("CLUSTER").arg("NODES"))
            .await
            .unwrap();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let served = f[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => {
                    (a.parse::<u16>().unwrap_or(1)..=b.parse::<u16>().unwrap_or(0)).contains(&slot)
                }
                None => range.parse::<u16>().ok() == Some(slot),
            });
            if served {
                let addr = f[1].split('@').next().unwrap();
                return Ok(addr.rsplit_once(':').unwrap().1.parse().unwrap());
            }
        }
        Err(nodes)
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.nodes {
            if *p == port {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }

    /// Waits until a master other than `old` serves `key`'s slot and the
    /// cluster says it is ok again.
    pub async fn wait_for_new_master(&self, key: &str, old: u16) -> u16 {
        let key = key.to_string();
        wait_until(
            &format!("a replica to take over {key}'s slot from {old}"),
            || {
                let key = key.clone();
                async move {
                    let port = self.ports()[0];
                    let info: String = query(port, redis::cmd("CLUSTER").arg("INFO")).await.ok()?;
                    if !info.contains("cluster_state:ok") {
                        return None;
                    }
                    let now = self.try_master_of(&key).await.ok()?;
                    (now != old).then_some(now)
                }
            },
        )
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
