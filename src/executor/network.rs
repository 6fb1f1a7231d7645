//! The Docker network that `network: bridge` jobs run on: one per host, made by
//! Dockhand (`dockhand-results`, label `dockhand.network=results`) and shared by
//! every worker there, never removed (jobs come and go on it). Its gateway address
//! is where a worker on the Docker host serves the jobs' result URLs, so a
//! container reaches them without the worker listening on any other interface; a
//! worker in a container joins the network and serves them on its own address
//! there (`placement.rs`).
//!
//! Docker (before API 1.44) lets two networks share a name, and workers starting
//! together could both create it. So finding-or-making holds a lock file shared
//! by the workers of the host, the network is found by its label, and if copies
//! exist anyway (made by hand, or by a worker with another temp dir) the one with
//! the smallest id is used: every worker picks the same one. None is ever removed,
//! since another worker may have jobs on it.

use super::{ExecError, Executor};
use bollard::models::NetworkCreateRequest;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;

/// The name of the shared network.
pub const RESULTS_NETWORK: &str = "dockhand-results";
const LABEL: &str = "dockhand.network=results";

/// The shared network as Docker describes it.
#[derive(Debug, Clone)]
pub struct ResultsNetwork {
    pub id: String,
    /// Its IPv4 gateway: an address of the Docker host.
    pub gateway: IpAddr,
    /// The IPv4 subnet the gateway is in (from IPAM): every container on the
    /// network has an address in it.
    pub subnet: IpNet,
}

impl Executor {
    /// Finds or makes the shared network.
    pub async fn results_network(&self) -> Result<ResultsNetwork, ExecError> {
        let path = std::env::temp_dir().join("dockhand-results-network.lock");
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| ExecError::Local {
            action: "lock the results network (a lock file in the temp folder)",
            source,
        })?;
        let found = self.find_or_make().await;
        drop(lock); // unlocks
        found
    }

    async fn find_or_make(&self) -> Result<ResultsNetwork, ExecError> {
        let mut ids = self.results_networks().await?;
        if ids.is_empty() {
            let request = NetworkCreateRequest {
                name: RESULTS_NETWORK.to_string(),
                driver: Some("bridge".to_string()),
                labels: Some(HashMap::from([(
                    "dockhand.network".to_string(),
                    "results".to_string(),
                )])),
                ..Default::default()
            };
            self.docker
                .create_network(request)
                .await
                .map_err(|source| ExecError::Docker {
                    action: "create the results network",
                    source,
                })?;
            ids = self.results_networks().await?;
        }
        ids.sort();
        let Some(chosen) = ids.first().cloned() else {
            return Err(no_gateway("the results network vanished as it was made"));
        };
        let net = self
            .docker
            .inspect_network(&chosen, None)
            .await
            .map_err(|source| ExecError::Docker {
                action: "inspect the results network",
                source,
            })?;
        let (gateway, subnet) = net
            .ipam
            .and_then(|ipam| ipam.config)
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| {
                let gateway = c.gateway?.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4)?;
                let subnet = c.subnet?.parse::<IpNet>().ok()?;
                subnet.contains(&gateway).then_some((gateway, subnet))
            })
            .ok_or_else(|| {
                no_gateway("the results network has no IPv4 gateway and subnet (docker network inspect dockhand-results)")
            })?;
        Ok(ResultsNetwork {
            id: chosen,
            gateway,
            subnet,
        })
    }

    async fn results_networks(&self) -> Result<Vec<String>, ExecError> {
        let list = self.networks_labelled(LABEL).await?;
        Ok(list.into_iter().filter_map(|n| n.id).collect())
    }
}

fn no_gateway(why: &str) -> ExecError {
    ExecError::Unusable(format!("cannot find the results network's gateway: {why}"))
}
