//! What a job attaches to its container besides its image: sidecar `services`,
//! `volumes` and published `ports`, each checked against the worker's policy.
//!
//! Invariants:
//! - A host folder is mounted only under a `policy.bind_allow` prefix, compared by
//!   whole path components after refusing `..`; a named volume only when
//!   `policy.volumes_allow` lists it (both empty by default: nothing is mounted).
//! - Ports are published only when `policy.allow_ports` is true.
//! - A service runs only an image `policy.images` allows, like the job itself.

use super::checks::{check_env_named, image_allowed, listed};
use super::{Command, JobSpec, Port, Rejection};
use crate::config::PolicySettings;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

/// Services one job may start.
const MAX_SERVICES: usize = 8;

/// A sidecar to start before the job, on the job's private network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRun {
    pub alias: String,
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// `None` keeps the image's default command.
    pub command: Option<Vec<String>>,
}

/// A volume mounted into the job's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// A host path (`bind`) or a volume name.
    pub source: String,
    pub target: String,
    pub read_only: bool,
    pub bind: bool,
}

/// A container port published on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub container: u16,
    pub protocol: &'static str,
    pub host_ip: Option<String>,
    /// `None`: a free port the engine picks.
    pub host_port: Option<u16>,
}

pub(super) fn services(
    spec: &JobSpec,
    policy: &PolicySettings,
) -> Result<Vec<ServiceRun>, Rejection> {
    if spec.services.len() > MAX_SERVICES {
        return Err(Rejection::invalid(
            "services",
            format!("a job may start at most {MAX_SERVICES} services"),
        ));
    }
    let mut aliases = BTreeSet::new();
    let mut out = Vec::new();
    for (i, s) in spec.services.iter().enumerate() {
        let field = |f: &str| format!("services[{i}].{f}");
        let alias_ok = (1..=63).contains(&s.alias.len())
            && s.alias
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.alias.starts_with('-')
            && !s.alias.ends_with('-');
        if !alias_ok {
            return Err(Rejection::invalid(
                &field("alias"),
                format!("{:?} is not a host name (a-z, 0-9 and -, 1 to 63)", s.alias),
            ));
        }
        if !aliases.insert(s.alias.clone()) {
            return Err(Rejection::invalid(
                &field("alias"),
                format!("{:?} is given twice", s.alias),
            ));
        }
        if s.image.trim().is_empty() || s.image.chars().any(char::is_whitespace) {
            return Err(Rejection::invalid(
                &field("image"),
                format!("{:?} is not an image name", s.image),
            ));
        }
        if !image_allowed(&s.image, &policy.images) {
            return Err(Rejection::denied(
                &field("image"),
                format!(
                    "{:?} is not in this worker's allow-list (policy.images)",
                    s.image
                ),
            ));
        }
        for (key, value) in &s.env {
            check_env_named(&format!("{}.{key}", field("env")), key, value)?;
        }
        let command = match &s.command {
            None => None,
            Some(Command::Shell(c)) if c.trim().is_empty() => {
                return Err(Rejection::invalid(&field("command"), "must not be empty"))
            }
            Some(Command::Shell(c)) => Some(vec!["sh".into(), "-c".into(), c.clone()]),
            Some(Command::Argv(v)) if v.is_empty() || v[0].is_empty() => {
                return Err(Rejection::invalid(&field("command"), "must not be empty"))
            }
            Some(Command::Argv(v)) => Some(v.clone()),
        };
        out.push(ServiceRun {
            alias: s.alias.clone(),
            image: s.image.clone(),
            env: s.env.clone(),
            command,
        });
    }
    Ok(out)
}

/// `name:/path[:ro|rw]` or `/host/path:/path[:ro|rw]`.
pub(super) fn volumes(spec: &JobSpec, policy: &PolicySettings) -> Result<Vec<Mount>, Rejection> {
    let mut targets = BTreeSet::new();
    let mut out = Vec::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let field = format!("volumes[{i}]");
        let parts: Vec<&str> = v.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [s, t] => (*s, *t, "rw"),
            [s, t, m] => (*s, *t, *m),
            _ => {
                return Err(Rejection::invalid(
                    &field,
                    format!("{v:?} is not `source:/path` or `source:/path:ro`"),
                ))
            }
        };
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            other => {
                return Err(Rejection::invalid(
                    &field,
                    format!("mode {other:?} is neither `ro` nor `rw`"),
                ))
            }
        };
        if !is_clean_absolute(target) || target == "/" {
            return Err(Rejection::invalid(
                &field,
                format!("the target {target:?} must be an absolute path without `..`"),
            ));
        }
        if Path::new(target).starts_with("/dockhand") {
            return Err(Rejection::invalid(
                &field,
                format!("the target {target:?} is inside /dockhand, which the worker manages"),
            ));
        }
        if !targets.insert(target.to_string()) {
            return Err(Rejection::invalid(
                &field,
                format!("{target:?} is mounted twice"),
            ));
        }
        let bind = source.starts_with('/');
        if bind {
            bind_allowed(&field, source, policy)?;
        } else {
            volume_allowed(&field, source, policy)?;
        }
        out.push(Mount {
            source: source.to_string(),
            target: target.to_string(),
            read_only,
            bind,
        });
    }
    Ok(out)
}

/// A host folder: only under a `policy.bind_allow` prefix, by whole components.
fn bind_allowed(field: &str, source: &str, policy: &PolicySettings) -> Result<(), Rejection> {
    if !is_clean_absolute(source) {
        return Err(Rejection::invalid(
            field,
            format!("the host path {source:?} must be absolute without `..`"),
        ));
    }
    let allowed = policy
        .bind_allow
        .iter()
        .any(|prefix| is_clean_absolute(prefix) && Path::new(source).starts_with(prefix));
    if !allowed {
        return Err(Rejection::denied(
            field,
            format!(
                "the host path {source:?} is not under a folder this worker allows (policy.bind_allow: {:?})",
                policy.bind_allow
            ),
        ));
    }
    Ok(())
}

/// A named volume: only one `policy.volumes_allow` lists. Docker's volumes are
/// shared by every container on the host (another application's data, Redis's
/// own in a compose deployment), so none is open to a job unless named.
fn volume_allowed(field: &str, source: &str, policy: &PolicySettings) -> Result<(), Rejection> {
    let name_ok = (1..=128).contains(&source.len())
        && source.starts_with(|c: char| c.is_ascii_alphanumeric())
        && source
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err(Rejection::invalid(
            field,
            format!("{source:?} is neither an absolute host path nor a volume name"),
        ));
    }
    if !listed(source, &policy.volumes_allow) {
        return Err(Rejection::denied(
            field,
            format!(
                "the volume {source:?} is not one this worker allows (policy.volumes_allow: {:?})",
                policy.volumes_allow
            ),
        ));
    }
    Ok(())
}

/// `8080`, `"8080"`, `"9000:8080"`, `"127.0.0.1:9000:8080"`, each with an optional `/udp`.
pub(super) fn ports(
    spec: &JobSpec,
    network: &str,
    policy: &PolicySettings,
) -> Result<Vec<Publish>, Rejection> {
    if spec.ports.is_empty() {
        return Ok(Vec::new());
    }
    if !policy.allow_ports {
        return Err(Rejection::denied(
            "ports",
            "publishing ports is not allowed by this worker's policy (policy.allow_ports = false)",
        ));
    }
    if network == "none" {
        return Err(Rejection::invalid(
            "ports",
            "a published port needs a `network` (e.g. \"bridge\")",
        ));
    }
    let mut out = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let field = format!("ports[{i}]");
        let bad = |why: &str| Rejection::invalid(&field, why.to_string());
        let publish = match p {
            Port::Number(0) => return Err(bad("0 is not a port")),
            Port::Number(n) => Publish {
                container: *n,
                protocol: "tcp",
                host_ip: None,
                host_port: None,
            },
            Port::Text(text) => {
                let (rest, protocol) = match text.rsplit_once('/') {
                    Some((r, "tcp")) => (r, "tcp"),
                    Some((r, "udp")) => (r, "udp"),
                    Some(_) => return Err(bad("the protocol must be tcp or udp")),
                    None => (text.as_str(), "tcp"),
                };
                let number = |s: &str| s.parse::<u16>().ok().filter(|n| *n > 0);
                let syntax = "must be `PORT`, `HOST_PORT:PORT` or `IP:HOST_PORT:PORT`";
                let parts: Vec<&str> = rest.split(':').collect();
                let (host_ip, host_port, container) = match parts.as_slice() {
                    [c] => (None, None, *c),
                    [h, c] => (None, Some(*h), *c),
                    [ip, h, c] => (Some(*ip), Some(*h), *c),
                    _ => return Err(bad(syntax)),
                };
                let container = number(container).ok_or_else(|| bad(syntax))?;
                let host_port = match host_port {
                    None | Some("") => None,
                    Some(h) => Some(number(h).ok_or_else(|| bad(syntax))?),
                };
                if let Some(ip) = host_ip {
                    if ip.parse::<std::net::IpAddr>().is_err() {
                        return Err(bad("the host address must be an IP address"));
                    }
                }
                Publish {
                    container,
                    protocol,
                    host_ip: host_ip.map(str::to_string),
                    host_port,
                }
            }
        };
        out.push(publish);
    }
    Ok(out)
}

fn is_clean_absolute(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains('\0')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Reason};
    use super::*;
    use crate::config::{Overrides, Settings};

    fn policy(bind_allow: &[&str], allow_ports: bool) -> PolicySettings {
        let mut s = Settings::load_from(None, &[], &Overrides::default())
            .unwrap()
            .policy;
        s.bind_allow = bind_allow.iter().map(|p| p.to_string()).collect();
        s.volumes_allow = vec!["cache".into(), "scratch-*".into()];
        s.allow_ports = allow_ports;
        s
    }

    #[test]
    fn only_listed_named_volumes_are_mounted() {
        for ok in ["cache", "scratch-1", "scratch-"] {
            let spec =
                parse(format!(r#"{{"image":"x","volumes":["{ok}:/v"]}}"#).as_bytes()).unwrap();
            assert!(volumes(&spec, &policy(&[], false)).is_ok(), "{ok}");
        }
        for denied in ["redis-data", "cache2", "scratch"] {
            let spec =
                parse(format!(r#"{{"image":"x","volumes":["{denied}:/v"]}}"#).as_bytes()).unwrap();
            let err = volumes(&spec, &policy(&[], false)).unwrap_err();
            assert_eq!(err.reason, Reason::PolicyDenied, "{denied}");
            assert!(
                err.message.contains("policy.volumes_allow"),
                "{}",
                err.message
            );
        }
        let mut none = policy(&[], false);
        none.volumes_allow.clear();
        let spec = parse(br#"{"image":"x","volumes":["cache:/v"]}"#).unwrap();
        assert!(volumes(&spec, &none).is_err(), "empty allows none");
    }

    #[test]
    fn named_volumes_pass_and_binds_need_an_allowed_prefix() {
        let spec =
            parse(br#"{"image":"x","volumes":["cache:/cache","/srv/data/in:/in:ro"]}"#).unwrap();
        let mounts = volumes(&spec, &policy(&["/srv/data"], false)).unwrap();
        assert_eq!(
            mounts,
            vec![
                Mount {
                    source: "cache".into(),
                    target: "/cache".into(),
                    read_only: false,
                    bind: false
                },
                Mount {
                    source: "/srv/data/in".into(),
                    target: "/in".into(),
                    read_only: true,
                    bind: true
                },
            ]
        );
        let err = volumes(&spec, &policy(&["/srv/dat"], false)).unwrap_err();
        assert_eq!(err.reason, Reason::PolicyDenied);
        assert!(err.message.starts_with("`volumes[1]`"), "{}", err.message);
        assert!(err.message.contains("policy.bind_allow"), "{}", err.message);
        for bad in [
            "/srv/data/../etc:/x",
            "x:rel",
            "a:/dockhand/output",
            "a:/b:rx",
            "a b:/x",
            "a:/",
        ] {
            let spec = parse(format!(r#"{{"image":"x","volumes":["{bad}"]}}"#).as_bytes()).unwrap();
            let err = volumes(&spec, &policy(&["/srv/data"], false)).unwrap_err();
            assert!(
                err.message.starts_with("`volumes[0]`"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn ports_need_the_policy_and_a_network() {
        let spec = parse(br#"{"image":"x","ports":[80,"9000:8080","127.0.0.1::53/udp"]}"#).unwrap();
        let err = ports(&spec, "bridge", &policy(&[], false)).unwrap_err();
        assert_eq!(err.reason, Reason::PolicyDenied);
        assert!(
            err.message.contains("policy.allow_ports"),
            "{}",
            err.message
        );
        assert!(ports(&spec, "none", &policy(&[], true)).is_err());
        let published = ports(&spec, "bridge", &policy(&[], true)).unwrap();
        assert_eq!(published[0].container, 80);
        assert_eq!(published[1].host_port, Some(9000));
        assert_eq!(published[2].protocol, "udp");
        assert_eq!(published[2].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(published[2].host_port, None);
        for bad in [
            r#""x""#,
            r#""1:2:3:4""#,
            r#""80/sctp""#,
            "0",
            r#""nothost:1:2""#,
        ] {
            let spec = parse(format!(r#"{{"image":"x","ports":[{bad}]}}"#).as_bytes()).unwrap();
            let err = ports(&spec, "bridge", &policy(&[], true)).unwrap_err();
            assert!(
                err.message.starts_with("`ports[0]`"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn services_are_named_hosts_with_allowed_images() {
        let spec = parse(br#"{"image":"x","services":[{"image":"redis","alias":"db","env":{"A":"1"},"command":"redis-server"}]}"#).unwrap();
        let s = services(&spec, &policy(&[], false)).unwrap();
        assert_eq!(s[0].alias, "db");
        assert_eq!(
            s[0].command,
            Some(vec!["sh".into(), "-c".into(), "redis-server".into()])
        );
        for (json, field) in [
            (
                r#"[{"image":"r","alias":"Bad_Name"}]"#,
                "`services[0].alias`",
            ),
            (
                r#"[{"image":"r","alias":"a"},{"image":"r","alias":"a"}]"#,
                "`services[1].alias`",
            ),
            (r#"[{"image":"","alias":"a"}]"#, "`services[0].image`"),
            (
                r#"[{"image":"r","alias":"a","env":{"1X":"y"}}]"#,
                "`services[0].env.1X`",
            ),
            (
                r#"[{"image":"r","alias":"a","command":[]}]"#,
                "`services[0].command`",
            ),
        ] {
            let spec = parse(format!(r#"{{"image":"x","services":{json}}}"#).as_bytes()).unwrap();
            let err = services(&spec, &policy(&[], false)).unwrap_err();
            assert!(err.message.starts_with(field), "{json}: {}", err.message);
        }
        let mut p = policy(&[], false);
        p.images = vec!["x".into()];
        let err = services(&spec, &p).unwrap_err();
        assert_eq!(err.reason, Reason::PolicyDenied);
    }
}
