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
}

impl ExecutorKind {
    /// The name a spec and the config use.
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Docker => "docker",
            ExecutorKind::Local => "local",
        }
    }
}

/// The spec's executor, refusing the fields that executor cannot honour.
pub(super) fn choose(spec: &JobSpec) -> Result<ExecutorKind, Rejection> {
    let kind = match spec.executor.as_deref() {
        None | Some("docker") => ExecutorKind::Docker,
        Some("local") => ExecutorKind::Local,
        Some(other) => {
            return Err(Rejection::invalid(
                "executor",
                format!("{other:?} is not an executor (\"docker\" or \"local\")"),
            ))
        }
    };
    if kind == ExecutorKind::Local {
        local_can_give(spec)?;
    }
    Ok(kind)
}

/// A local job runs a host process: images, containers' users and entrypoints,
/// networks, sidecars, volumes and published ports are Docker's, and a host
/// process cannot be given them.
fn local_can_give(spec: &JobSpec) -> Result<(), Rejection> {
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
            "the local executor cannot give this (it runs a host process, not a container); \
             use \"executor\": \"docker\"",
        ));
    }
    if spec.script.is_none() && spec.command.is_none() {
        return Err(Rejection::invalid(
            "command",
            "is required with the local executor (or a `script`): there is no image default",
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
        let e = choose_raw(r#"{"executor":"vm","image":"i"}"#).unwrap_err();
        assert_eq!(e.reason, super::super::Reason::InvalidSpec);
    }
}
