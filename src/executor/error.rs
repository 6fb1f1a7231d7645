//! What can go wrong when an executor runs a job, and which failures are the
//! Docker engine (or an SSH host) not answering (worth trying again) rather than
//! refusing. A failure on the worker's own host (the local executor) is never
//! transient.

/// Why a step on an SSH host failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshFailure {
    /// No answer, or the connection dropped: worth trying again.
    Unreachable,
    /// The host answered and said no (its key, the login, a command failed).
    Refused,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot reach the Docker engine at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("image {0:?} is not on this host (worker.pull = \"never\"): build or load it there, or set worker.pull = \"missing\"")]
    ImageNotFound(String),
    #[error("image {image:?} could not be pulled")]
    Pull {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// A pull (`worker.pull = "missing"` or `"always"`) that had not finished within
    /// the job's time limit.
    #[error("image {image:?} was not pulled within {seconds} s (limits.timeout_seconds)")]
    PullTimedOut { image: String, seconds: u64 },
    /// The container was made but could not start: usually the job's command does not exist.
    #[error("the container could not start: {message}")]
    Start { message: String },
    /// A sidecar did not start or stopped before the job began.
    #[error("service `{alias}` {message}")]
    Service { alias: String, message: String },
    #[error("Docker failed to {action}")]
    Docker {
        action: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    /// A failure on this host, not in the engine: building the staging archive,
    /// reading the output archive (a truncated one too), a lock file. Never taken
    /// for the engine being away.
    #[error("cannot {action}")]
    Local {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The local executor could not start the job's program (not found, not
    /// executable, or a limit refused).
    #[error("cannot start {program:?} on the worker's host")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A step on an SSH host failed: it could not be reached or the connection
    /// dropped ([`SshFailure::Unreachable`], worth trying again), or
    /// it refused (its key, the login, a command).
    #[error("SSH host {host:?}: cannot {action}")]
    Ssh {
        host: String,
        action: &'static str,
        kind: SshFailure,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The engine answered, but not with what Dockhand needs (a network without a
    /// gateway address, say).
    #[error("{0}")]
    Unusable(String),
    /// An input could not be fetched, or an output not uploaded (`crate::transfer`).
    #[error(transparent)]
    Transfer(#[from] crate::transfer::TransferError),
    /// Docker failed after the container had started: the job may have done part
    /// of its work.
    #[error(transparent)]
    AfterStart(Box<ExecError>),
}

impl ExecError {
    /// The engine could not be reached (not: it refused), so the same request may
    /// well succeed later: it is restarting, or its socket is briefly gone.
    pub fn is_transient(&self) -> bool {
        match self {
            ExecError::Connect { source, .. }
            | ExecError::Docker { source, .. }
            | ExecError::Pull { source, .. } => unreachable(source),
            ExecError::AfterStart(inner) => inner.is_transient(),
            ExecError::Ssh { kind, .. } => *kind == SshFailure::Unreachable,
            _ => false,
        }
    }

    /// Whether the job's container had started before this failure.
    pub fn after_start(&self) -> bool {
        matches!(self, ExecError::AfterStart(_))
    }
}

/// A bollard error that means no answer came from the engine.
pub fn unreachable(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    use std::io::ErrorKind as K;
    match e {
        E::HyperResponseError { .. }
        | E::HyperLegacyError { .. }
        | E::RequestTimeoutError
        | E::SocketNotFoundError(_) => true,
        E::IOError { err } => matches!(
            err.kind(),
            K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::UnexpectedEof
                | K::TimedOut
                | K::NotFound
        ),
        // A proxy in front of the engine saying it is not there.
        E::DockerResponseServerError { status_code, .. } => {
            matches!(status_code, 502..=504)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::errors::Error as E;

    fn docker(source: E) -> ExecError {
        ExecError::Docker {
            action: "create the container",
            source,
        }
    }

    #[test]
    fn only_an_engine_that_does_not_answer_is_transient() {
        let io = |kind| E::IOError {
            err: std::io::Error::from(kind),
        };
        let said = |status_code| E::DockerResponseServerError {
            status_code,
            message: "x".into(),
        };
        assert!(docker(io(std::io::ErrorKind::ConnectionRefused)).is_transient());
        assert!(docker(E::RequestTimeoutError).is_transient());
        assert!(
            docker(said(503)).is_transient(),
            "a proxy without its engine"
        );
        assert!(!docker(said(500)).is_transient(), "the engine refused");
        assert!(!docker(said(409)).is_transient());
        assert!(!docker(io(std::io::ErrorKind::InvalidData)).is_transient());
        assert!(!ExecError::ImageNotFound("i".into()).is_transient());
        let truncated = ExecError::Local {
            action: "read the job's output files",
            source: std::io::ErrorKind::UnexpectedEof.into(),
        };
        assert!(
            !truncated.is_transient(),
            "a short archive is not a lost engine"
        );
        let late = ExecError::AfterStart(Box::new(docker(E::RequestTimeoutError)));
        assert!(late.is_transient() && late.after_start());
        assert!(!docker(E::RequestTimeoutError).after_start());
    }
}
