//! Where this process is, seen from the results network, and so the address it
//! serves result URLs on when `results.bind` is empty.
//!
//! - On the Docker host (or in a container sharing the host's network), the
//!   network's gateway is one of this process's own addresses: it serves there.
//! - In a container it has no such address. It finds its own container, connects
//!   it to the network (once: a restarted container stays connected), and serves
//!   on its own address there.
//!
//! "Its own address towards the network" is asked of the kernel, not of Docker: a
//! UDP socket `connect`ed to the gateway (which sends nothing) is given the source
//! address the routing table would use. That is the gateway itself on the host, an
//! address inside the network's subnet once this process's network namespace is on
//! it, and anything else before. So a container found wrongly is caught, never
//! served on.
//!
//! Its own container, in this order (the first the engine knows wins):
//! 1. `/proc/self/mountinfo`: Docker bind-mounts `/etc/hostname`, `/etc/hosts` and
//!    `/etc/resolv.conf` from `.../containers/<64 hex>/`, whatever the container's
//!    hostname, under cgroup v1 or v2;
//! 2. `/proc/self/cgroup`: `/docker/<64 hex>` or `docker-<64 hex>.scope` (cgroup v1);
//! 3. the hostname, which Docker sets to the id's first 12 characters unless told
//!    otherwise (docker-compose.yml does). Accepted only when that container's own
//!    hostname is the same, so that another container that happens to be named
//!    like this host is never connected.
//!
//! Invariant: the one change made here is connecting this process's own container
//! to the results network, and only when asked (`join`); `dockhand doctor` asks
//! the same questions without it.

use super::network::{ResultsNetwork, RESULTS_NETWORK};
use super::Executor;
use bollard::models::NetworkConnectRequest;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// A container this process found to be its own, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnContainer {
    pub id: String,
    /// `/proc/self/mountinfo`, `/proc/self/cgroup` or `the hostname`.
    pub found_by: &'static str,
}

impl OwnContainer {
    /// The id as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// Where result URLs are served, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The gateway is this process's own address: it runs on the Docker host.
    Host { ip: IpAddr },
    /// This process is on the network at `ip`: in a container connected to it,
    /// by an earlier start or now (`joined`).
    OnNetwork {
        ip: IpAddr,
        joined: Option<OwnContainer>,
    },
    /// In this container, not yet on the network (the answer when not asked to
    /// join): a worker started here would connect it.
    WouldJoin(OwnContainer),
}

impl Placement {
    /// The address to serve on, when there is one yet.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Placement::Host { ip } | Placement::OnNetwork { ip, .. } => Some(*ip),
            Placement::WouldJoin(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("this process is not on the Docker host ({seen}) and could not find its own container; tried {tried}")]
    NoContainer { seen: String, tried: String },
    #[error("cannot connect this process's container {} (found in {}) to the network {RESULTS_NETWORK}", .container.short_id(), .container.found_by)]
    Connect {
        container: OwnContainer,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("container {} (found in {}) is on the network {RESULTS_NETWORK}, but this process has no address in its subnet {subnet} ({seen}): it does not run in that container's network", .container.short_id(), .container.found_by)]
    NotInside {
        container: OwnContainer,
        subnet: IpNet,
        seen: String,
    },
}

impl PlaceError {
    /// What to do about it.
    pub fn advice(&self) -> String {
        const BIND: &str = "or set results.bind (DOCKHAND__RESULTS__BIND) to an address of this process that job containers reach";
        match self {
            PlaceError::NoContainer { .. } => format!(
                "run the worker on the Docker host, or in a container of the engine it uses (docker.sock mounted), {BIND}"
            ),
            PlaceError::Connect { container, .. } => format!(
                "let the worker use the Docker socket, or connect it yourself (docker network connect {RESULTS_NETWORK} {}), {BIND}",
                container.short_id()
            ),
            PlaceError::NotInside { .. } => {
                format!("run the worker in the network namespace of its own container, {BIND}")
            }
        }
    }
}

impl Executor {
    /// Where this process serves result URLs on `net`; with `join`, connects its
    /// own container to the network when that is what it takes.
    pub async fn place_on(
        &self,
        net: &ResultsNetwork,
        join: bool,
    ) -> Result<Placement, PlaceError> {
        let seen = towards(net.gateway);
        match seen {
            Ok(ip) if ip == net.gateway => return Ok(Placement::Host { ip }),
            Ok(ip) if net.subnet.contains(&ip) => {
                return Ok(Placement::OnNetwork { ip, joined: None })
            }
            _ => {}
        }
        let container = self
            .own_container()
            .await
            .map_err(|tried| PlaceError::NoContainer {
                seen: describe(net, &seen),
                tried,
            })?;
        if !join {
            return Ok(Placement::WouldJoin(container));
        }
        let request = NetworkConnectRequest {
            container: container.id.clone(),
            endpoint_config: None,
        };
        if let Err(source) = self.docker.connect_network(&net.id, request).await {
            return Err(PlaceError::Connect { container, source });
        }
        match towards(net.gateway) {
            Ok(ip) if ip != net.gateway && net.subnet.contains(&ip) => Ok(Placement::OnNetwork {
                ip,
                joined: Some(container),
            }),
            seen => Err(PlaceError::NotInside {
                container,
                subnet: net.subnet,
                seen: describe(net, &seen),
            }),
        }
    }

    /// The name of the container this process runs in, when `/proc` names the
    /// container (not merely the hostname): under Compose, `<project>-worker-<n>`,
    /// which stays the same when the container is made again. `None` on the host.
    pub async fn own_container_name(&self) -> Option<String> {
        let own = self.own_container().await.ok()?;
        if own.found_by == "the hostname" {
            return None; // a guess that another container's hostname could match
        }
        let c = self.docker.inspect_container(&own.id, None).await.ok()?;
        c.name
            .map(|n| n.trim_start_matches('/').to_string())
            .filter(|n| !n.is_empty())
    }

    /// The container this process runs in, tried in the order of the module doc;
    /// else what was tried, and why each failed.
    async fn own_container(&self) -> Result<OwnContainer, String> {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let hostname = read("/proc/sys/kernel/hostname").trim().to_string();
        let mut candidates = Vec::new();
        if let Some(id) = id_in_mountinfo(&read("/proc/self/mountinfo")) {
            candidates.push((id, "/proc/self/mountinfo"));
        }
        if let Some(id) = id_in_cgroup(&read("/proc/self/cgroup")) {
            candidates.push((id, "/proc/self/cgroup"));
        }
        if !hostname.is_empty() {
            candidates.push((hostname.clone(), "the hostname"));
        }
        let mut tried = vec![];
        if !candidates.iter().any(|(_, by)| by.starts_with("/proc")) {
            tried.push("/proc/self/mountinfo and /proc/self/cgroup (no container id)".into());
        }
        for (candidate, found_by) in candidates {
            let shown = &candidate[..candidate.len().min(12)];
            match self.docker.inspect_container(&candidate, None).await {
                Ok(c) => {
                    let theirs = c.config.and_then(|c| c.hostname).unwrap_or_default();
                    if found_by == "the hostname" && theirs != hostname {
                        tried.push(format!(
                            "the hostname {hostname:?}: container {shown} has hostname {theirs:?}"
                        ));
                        continue;
                    }
                    let id = c.id.unwrap_or(candidate);
                    return Ok(OwnContainer { id, found_by });
                }
                Err(e) => tried.push(format!("{found_by} ({shown}): {e}")),
            }
        }
        Err(tried.join("; "))
    }
}

/// The source address this process would use to reach `gateway`.
fn towards(gateway: IpAddr) -> std::io::Result<IpAddr> {
    let socket = UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0))?;
    // Any port: a UDP connect only picks the route and sends nothing.
    socket.connect(SocketAddr::new(gateway, 9))?;
    Ok(socket.local_addr()?.ip())
}

fn describe(net: &ResultsNetwork, seen: &std::io::Result<IpAddr>) -> String {
    match seen {
        Ok(ip) => format!(
            "its address towards {RESULTS_NETWORK}'s gateway {} is {ip}, outside {}",
            net.gateway, net.subnet
        ),
        Err(e) => format!(
            "no route to {RESULTS_NETWORK}'s gateway {}: {e}",
            net.gateway
        ),
    }
}

/// The id in a line that mounts `/etc/hostname`, `/etc/hosts` or
/// `/etc/resolv.conf` from Docker's folder of a container.
fn id_in_mountinfo(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let (root, target) = (fields.get(3)?, fields.get(4)?);
        ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
            .contains(target)
            .then(|| hex_id_after(root, "containers/"))?
    })
}

/// The id in a cgroup v1 path of Docker's (`/docker/<id>`, or `docker-<id>.scope`
/// under systemd).
fn id_in_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| hex_id_after(line, "/docker/").or_else(|| hex_id_after(line, "docker-")))
}

/// The 64 hex digits right after `marker`, ending the text or followed by `/` or `.`.
fn hex_id_after(text: &str, marker: &str) -> Option<String> {
    text.match_indices(marker).find_map(|(at, _)| {
        let rest = &text[at + marker.len()..];
        let id = rest.get(..64)?;
        let ends = matches!(rest[64..].chars().next(), None | Some('/' | '.'));
        (ends && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "645095668df7771fd3e946790620bdc1c72ec0396311a2215c92e1e47c969729";

    #[test]
    fn the_id_comes_from_the_mount_of_etc_hostname() {
        let text = format!(
            "60 50 0:52 / / rw - overlay overlay rw\n\
             87 69 254:0 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw\n"
        );
        assert_eq!(id_in_mountinfo(&text).as_deref(), Some(ID));
        // On the host, a container's shm mount names its id too: not ours.
        let host =
            format!("300 29 0:60 / /var/lib/docker/containers/{ID}/mounts/shm rw - tmpfs shm rw\n");
        assert_eq!(id_in_mountinfo(&host), None);
        assert_eq!(id_in_mountinfo("garbage\n\n1 2"), None);
    }

    #[test]
    fn the_id_comes_from_a_docker_cgroup() {
        assert_eq!(
            id_in_cgroup(&format!("9:pids:/docker/{ID}\n")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            id_in_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n")).as_deref(),
            Some(ID)
        );
        assert_eq!(id_in_cgroup("9:name=systemd:/\n0::/\n"), None);
        assert_eq!(id_in_cgroup(&format!("0::/docker/{}x\n", &ID[..63])), None);
    }

    #[test]
    fn the_gateway_of_a_local_address_is_this_process_itself() {
        assert_eq!(
            towards(Ipv4Addr::LOCALHOST.into()).unwrap(),
            IpAddr::from(Ipv4Addr::LOCALHOST)
        );
    }
}
