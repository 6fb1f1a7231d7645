//! The container's configuration: what the job asked for, inside what the policy allows.

use crate::config::PolicySettings;
use crate::job::{Job, ServiceRun, DOCKHAND_DIR, INPUT_DIR, OUTPUT_DIR, WORK_DIR};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount, MountType, MountVolumeOptions,
    NetworkingConfig, PortBinding, PortMap,
};
use std::collections::HashMap;

/// Label naming the job a container runs.
pub const LABEL_JOB: &str = "dockhand.job";
/// Label naming the worker that made a container.
pub const LABEL_WORKER: &str = "dockhand.worker";
/// Label naming the worker process (consumer) that made a container.
pub const LABEL_CONSUMER: &str = "dockhand.consumer";
/// Label naming the stream entry a container runs.
pub const LABEL_ENTRY: &str = "dockhand.entry";
/// The job's queue: whoever judges a container reads its job's keys with it.
pub const LABEL_QUEUE: &str = "dockhand.queue";
/// Label naming the deployment (one Redis and prefix) a container belongs to.
pub const LABEL_DEPLOYMENT: &str = "dockhand.deployment";
/// Label naming the service (its alias) a sidecar container runs.
pub const LABEL_SERVICE: &str = "dockhand.service";

/// Who made a container, written on it as labels.
pub struct Labels<'a> {
    pub worker: &'a str,
    pub consumer: &'a str,
    pub entry: &'a str,
    pub deployment: &'a str,
}

/// A Docker-safe, unique container name: `dockhand-<job>-<attempt>-<random>`.
pub fn name(job_id: &str, attempt: u32) -> String {
    let safe: String = job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let suffix = ulid::Ulid::new().to_string().to_ascii_lowercase();
    format!("dockhand-{safe}-{attempt}-{}", &suffix[suffix.len() - 6..])
}

/// The labels every container and network made for one attempt of a job carries.
pub fn labels(job: &Job, attempt: u32, who: &Labels<'_>) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_JOB.to_string(), job.id.clone()),
        (LABEL_WORKER.to_string(), who.worker.to_string()),
        (LABEL_CONSUMER.to_string(), who.consumer.to_string()),
        (LABEL_ENTRY.to_string(), who.entry.to_string()),
        (LABEL_DEPLOYMENT.to_string(), who.deployment.to_string()),
        ("dockhand.attempt".to_string(), attempt.to_string()),
        (LABEL_QUEUE.to_string(), job.queue.clone()),
    ])
}

/// The locked-down host config shared by the job's container and its services.
/// `own_tmp`: the container mounts a volume at /tmp, which then replaces the tmpfs.
fn hardened(job: &Job, policy: &PolicySettings, network: &str, own_tmp: bool) -> HostConfig {
    let memory = i64::try_from(job.limits.memory).unwrap_or(i64::MAX);
    HostConfig {
        memory: Some(memory),
        // Same as memory: no swap on top of the limit, so the limit means what it says.
        memory_swap: Some(memory),
        nano_cpus: job.limits.cpus.map(|c| (c * 1e9) as i64),
        pids_limit: Some(job.limits.pids),
        network_mode: Some(network.to_string()),
        cap_drop: Some(vec!["ALL".to_string()]),
        cap_add: (!policy.cap_add.is_empty()).then(|| policy.cap_add.clone()),
        security_opt: policy
            .no_new_privileges
            .then(|| vec!["no-new-privileges".to_string()]),
        privileged: Some(false),
        log_config: Some(log_config(job.limits.log_bytes)),
        readonly_rootfs: policy.read_only_rootfs.then_some(true),
        // A read-only root still gets a writable /tmp, since so many programs need
        // one; tmpfs pages count against the memory limit, so its size is that.
        tmpfs: (policy.read_only_rootfs && !own_tmp).then(|| {
            HashMap::from([(
                "/tmp".to_string(),
                format!("rw,nosuid,nodev,mode=1777,size={memory}"),
            )])
        }),
        ..Default::default()
    }
}

/// With a read-only root, `/dockhand` is a volume of the container's own (removed
/// with it), so the worker can stage into it before start and read outputs after
/// exit; it carries the job's labels so that a leftover one can be traced.
fn dockhand_volume(labels: &HashMap<String, String>) -> Mount {
    Mount {
        target: Some(DOCKHAND_DIR.to_string()),
        typ: Some(MountType::VOLUME),
        volume_options: Some(MountVolumeOptions {
            labels: Some(labels.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A sidecar's container: on `network` under its alias, locked down like the job.
pub fn service_body(
    service: &ServiceRun,
    job: &Job,
    attempt: u32,
    who: &Labels<'_>,
    policy: &PolicySettings,
    network: &str,
) -> ContainerCreateBody {
    let mut labels = labels(job, attempt, who);
    labels.insert(LABEL_SERVICE.to_string(), service.alias.clone());
    let endpoint = EndpointSettings {
        aliases: Some(vec![service.alias.clone()]),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(service.image.clone()),
        cmd: service.command.clone(),
        env: Some(
            service
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        labels: Some(labels),
        tty: Some(false),
        // A service gets none of the job's volumes.
        host_config: Some(hardened(job, policy, network, false)),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network.to_string(), endpoint)])),
        }),
        ..Default::default()
    }
}

/// The job's container; `network` is the job's own network when it has services.
pub fn body(
    job: &Job,
    attempt: u32,
    who: &Labels<'_>,
    policy: &PolicySettings,
    network: &str,
) -> ContainerCreateBody {
    let mut env: Vec<String> = job
        .env
        .iter()
        .chain(&job.secret_env)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("DOCKHAND_JOB_ID={}", job.id));
    env.push(format!("DOCKHAND_ATTEMPT={attempt}"));
    env.push(format!("DOCKHAND_INPUT={INPUT_DIR}"));
    env.push(format!("DOCKHAND_WORK={WORK_DIR}"));
    env.push(format!("DOCKHAND_OUTPUT={OUTPUT_DIR}"));

    let labels = labels(job, attempt, who);

    let mut mounts: Vec<Mount> = job
        .mounts
        .iter()
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: Some(m.source.clone()),
            typ: Some(if m.bind {
                MountType::BIND
            } else {
                MountType::VOLUME
            }),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    if policy.read_only_rootfs {
        mounts.push(dockhand_volume(&labels));
    }
    let mut exposed = Vec::new();
    let mut bindings = PortMap::new();
    for p in &job.ports {
        let key = format!("{}/{}", p.container, p.protocol);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: p.host_port.map(|h| h.to_string()),
            });
    }
    let own_tmp = job.mounts.iter().any(|m| m.target == "/tmp");
    let mut host_config = hardened(job, policy, network, own_tmp);
    host_config.mounts = (!mounts.is_empty()).then_some(mounts);
    host_config.port_bindings = (!bindings.is_empty()).then_some(bindings);

    ContainerCreateBody {
        image: Some(job.image.clone()),
        cmd: job.command.clone(),
        entrypoint: job.entrypoint.clone(),
        working_dir: job.workdir.clone(),
        user: job.user.clone(),
        env: Some(env),
        labels: Some(labels),
        tty: Some(false),
        open_stdin: Some(false),
        attach_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        network_disabled: Some(network == "none"),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Docker's own log for the container, which the worker reads at its pace. It
/// must not rotate before the worker has read it: a daemon default like
/// `max-size=10m, max-file=3` drops the start of a fast, chatty job's output while
/// the worker is still behind (seen: 1,000,000 short lines written in a second).
/// One file, sized from what the job may keep (`limits.log_bytes`) times the
/// json-file overhead per line, and never under 64 MiB; it is deleted with the
/// container after the job.
fn log_config(log_bytes: u64) -> bollard::models::HostConfigLogConfig {
    let size = log_bytes.saturating_mul(16).max(64 << 20);
    bollard::models::HostConfigLogConfig {
        typ: Some("json-file".to_string()),
        config: Some(HashMap::from([
            ("max-size".to_string(), size.to_string()),
            ("max-file".to_string(), "1".to_string()),
        ])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, Settings};

    #[test]
    fn containers_are_locked_down_and_labelled() {
        let s = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        let spec = crate::job::parse(br#"{"image":"i","command":["true"],"env":{"A":"1"},"limits":{"cpus":0.5,"memory":"64m"}}"#).unwrap();
        let job = crate::job::validate(spec, "a:b".into(), "q", &s.jobs.limits, &s.policy).unwrap();
        let b = body(
            &job,
            2,
            &Labels {
                worker: "w1",
                consumer: "w1:1:x",
                entry: "1-0",
                deployment: "d1",
            },
            &s.policy,
            &job.network,
        );
        let hc = b.host_config.unwrap();
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!(hc.pids_limit, Some(512));
        let labels = b.labels.unwrap();
        assert_eq!(labels[LABEL_JOB], "a:b");
        assert_eq!(labels[LABEL_WORKER], "w1");
        assert_eq!(labels[LABEL_CONSUMER], "w1:1:x");
        assert_eq!(labels[LABEL_ENTRY], "1-0");
        assert_eq!(labels[LABEL_DEPLOYMENT], "d1");
        let env = b.env.unwrap();
        assert!(env.contains(&"A=1".to_string()));
        assert!(env.contains(&"DOCKHAND_JOB_ID=a:b".to_string()));
        assert!(env.contains(&"DOCKHAND_ATTEMPT=2".to_string()));
        assert_eq!(
            hc.readonly_rootfs, None,
            "writable root unless the policy says"
        );
        assert_eq!(hc.tmpfs, None);
        assert_eq!(hc.mounts, None);
    }

    #[test]
    fn a_read_only_root_keeps_dockhand_and_tmp_writable() {
        let mut s = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        s.policy.read_only_rootfs = true;
        s.policy.volumes_allow = vec!["scratch".into()];
        let who = Labels {
            worker: "w1",
            consumer: "w1:1:x",
            entry: "1-0",
            deployment: "d1",
        };
        let job = |json: &str| {
            let spec = crate::job::parse(json.as_bytes()).unwrap();
            crate::job::validate(spec, "a:b".into(), "q", &s.jobs.limits, &s.policy).unwrap()
        };
        let plain = job(r#"{"image":"i","command":["true"],"limits":{"memory":"64m"}}"#);
        let hc = body(&plain, 1, &who, &s.policy, "none")
            .host_config
            .unwrap();
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(
            hc.tmpfs.unwrap()["/tmp"],
            format!("rw,nosuid,nodev,mode=1777,size={}", 64 << 20)
        );
        let mounts = hc.mounts.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].target.as_deref(), Some("/dockhand"));
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(
            mounts[0].source, None,
            "anonymous: removed with the container"
        );
        let vlabels = mounts[0].volume_options.clone().unwrap().labels.unwrap();
        assert_eq!(vlabels[LABEL_JOB], "a:b");

        // A volume the job mounts at /tmp replaces the tmpfs (Docker refuses both).
        let own_tmp = job(r#"{"image":"i","command":["true"],"volumes":["scratch:/tmp"]}"#);
        let hc = body(&own_tmp, 1, &who, &s.policy, "none")
            .host_config
            .unwrap();
        assert_eq!(hc.tmpfs, None);
        assert_eq!(hc.mounts.unwrap().len(), 2);
    }

    #[test]
    fn names_are_docker_safe() {
        let n = name("tenant:42/x", 1);
        assert!(n.starts_with("dockhand-tenant-42-x-1-"), "{n}");
        assert!(n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
    }
}
