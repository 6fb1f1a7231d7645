//! Which executor a job asks for (`executor`, default `docker`), and what the
//! chosen one cannot give: a field only Docker can honour, given to a job for
//! another executor, is refused `policy_denied` naming the field, so that nothing
//! a producer asked for is silently ignored.
//!
//! Invariant: pure, like the rest of `job`; whether this worker offers the
//! executor is the worker's question (its `[executors]` config), not the spec's.

use super::{JobSpec, Rejection};

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutorKind {
    /// A Docker container (the default).
    #[default]
    Docker,
    /// A process on the worker's host, with no isolation (`executors.local`).
    Local,
    /// A process on a host the worker's config names (`executors.ssh.hosts`).
    Ssh,
}

impl ExecutorKind {
    /// The name a spec and the config use.
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Docker => "docker",
            ExecutorKind::Local => "local",
            ExecutorKind::Ssh => "ssh",
        }
    }
}

/// The spec's executor, refusing the fields that executor cannot honour.
pub(super) fn choose(spec: &JobSpec) -> Result<ExecutorKind, Rejection> {
    let kind = match spec.executor.as_deref() {
        None | Some("docker") => ExecutorKind::Docker,
        Some("local") => ExecutorKind::Local,
        Some("ssh") => ExecutorKind::Ssh,
        Some(other) => {
            return Err(Rejection::invalid(
                "executor",
                format!("{other:?} is not an executor (\"docker\", \"local\" or \"ssh\")"),
            ))
        }
    };
    match kind {
        ExecutorKind::Docker if spec.host.is_some() => {
            return Err(Rejection::invalid(
                "host",
                "is for \"executor\": \"ssh\" (the SSH host to run on)",
            ))
        }
        ExecutorKind::Docker => {}
        ExecutorKind::Local if spec.host.is_some() => {
            return Err(Rejection::invalid(
                "host",
                "is for \"executor\": \"ssh\" (the SSH host to run on)",
            ))
        }
        ExecutorKind::Local => host_process_can_give(spec, "local")?,
        ExecutorKind::Ssh => {
            host_process_can_give(spec, "ssh")?;
            match spec.host.as_deref() {
                None => return Err(Rejection::invalid(
                    "host",
                    "is required with the ssh executor: one of the worker's executors.ssh.hosts",
                )),
                Some("") => return Err(Rejection::invalid("host", "must not be empty")),
                Some(_) => {}
            }
            // A host's interpreters are named, and looked up in the worker's config.
            if let Some(script) = &spec.script {
                if script.interpreter.is_none() {
                    return Err(Rejection::invalid(
                        "script.interpreter",
                        "is required with the ssh executor: the name of one of the host's interpreters",
                    ));
                }
            }
        }
    }
    Ok(kind)
}

/// A local or SSH job runs a host process: images, containers' users and
/// entrypoints, networks, sidecars, volumes and published ports are Docker's,
/// and a host process cannot be given them.
fn host_process_can_give(spec: &JobSpec, name: &str) -> Result<(), Rejection> {
    let docker_only: [(&str, bool); 9] = [
        ("image", spec.image.is_some()),
        ("git", spec.git.is_some()),
        ("entrypoint", spec.entrypoint.is_some()),
        ("user", spec.user.is_some()),
        ("workdir", spec.workdir.is_some()),
        ("network", spec.network.is_some()),
        ("services", !spec.services.is_empty()),
        ("volumes", !spec.volumes.is_empty()),
        ("ports", !spec.ports.is_empty()),
    ];
    if let Some((field, _)) = docker_only.iter().find(|(_, given)| *given) {
        return Err(Rejection::denied(
            field,
            format!(
                "the {name} executor cannot give this (it runs a host process, not a container); \
                 use \"executor\": \"docker\""
            ),
        ));
    }
    if spec.script.is_none() && spec.command.is_none() {
        return Err(Rejection::invalid(
            "command",
            format!(
                "is required with the {name} executor (or a `script`): there is no image default"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose_raw(raw: &str) -> Result<ExecutorKind, Rejection> {
        choose(&super::super::parse(raw.as_bytes()).unwrap())
    }

    #[test]
    fn docker_is_the_default_and_local_refuses_what_only_docker_gives() {
        assert_eq!(choose_raw(r#"{"image":"i"}"#), Ok(ExecutorKind::Docker));
        assert_eq!(
            choose_raw(r#"{"executor":"local","command":"true"}"#),
            Ok(ExecutorKind::Local)
        );
        let e = choose_raw(r#"{"executor":"local","image":"i","command":"true"}"#).unwrap_err();
        assert_eq!(e.reason, super::super::Reason::PolicyDenied);
        assert!(e.message.starts_with("`image`"), "{}", e.message);
        let e = choose_raw(
            r#"{"executor":"local","command":"true","services":[{"image":"r","alias":"r"}]}"#,
        )
        .unwrap_err();
        assert!(e.message.starts_with("`services`"), "{}", e.message);
        let e = choose_raw(r#"{"executor":"local"}"#).unwrap_err();
        assert!(e.message.starts_with("`command`"), "{}", e.message);
        assert_eq!(
            choose_raw(
                r#"{"executor":"ssh","host":"lab1","script":{"content":"","interpreter":"python3"}}"#
            ),
            Ok(ExecutorKind::Ssh)
        );
        let e = choose_raw(r#"{"executor":"ssh","command":"true"}"#).unwrap_err();
        assert!(e.message.starts_with("`host`"), "{}", e.message);
        let e = choose_raw(r#"{"executor":"ssh","host":"h","script":{"content":""}}"#).unwrap_err();
        assert!(
            e.message.starts_with("`script.interpreter`"),
            "{}",
            e.message
        );
        let e = choose_raw(r#"{"executor":"ssh","host":"h","image":"i","command":"true"}"#)
            .unwrap_err();
        assert_eq!(e.reason, super::super::Reason::PolicyDenied);
        let e = choose_raw(r#"{"image":"i","host":"h"}"#).unwrap_err();
        assert!(e.message.starts_with("`host`"), "{}", e.message);
        let e = choose_raw(r#"{"executor":"vm","image":"i"}"#).unwrap_err();
        assert_eq!(e.reason, super::super::Reason::InvalidSpec);
    }
}
