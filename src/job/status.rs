//! Job statuses and the reasons an aborted job carries, as stored in the job hash.
//!
//! Invariant: each is written (in the hash, in events, in JSON) as its
//! `as_str` name, and nothing else.

use serde::{Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Scheduled,
    /// Waits for its parents (`after`) to end.
    Waiting,
    Building,
    Running,
    Completed,
    Aborted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Scheduled => "scheduled",
            Status::Waiting => "waiting",
            Status::Building => "building",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Scheduled,
            Status::Waiting,
            Status::Building,
            Status::Running,
            Status::Completed,
            Status::Aborted,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Aborted)
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job ended `aborted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ExitCode,
    AbortedByJob,
    Timeout,
    Cancelled,
    BuildError,
    InvalidSpec,
    WorkerLost,
    PolicyDenied,
    ImageNotFound,
    /// The Docker daemon refused or failed an operation that was not the job's fault.
    DockerError,
    /// A parent named in `after` ended so that the job's `after_policy` cannot be
    /// met, or did not end in time (`jobs.dependency_wait_seconds`).
    DependencyFailed,
    /// An input could not be fetched or did not verify (size, sha256), or an
    /// output could not be uploaded; `error` names the input or file.
    TransferError,
}

impl Reason {
    /// Every reason, in the order of the contract.
    pub const ALL: [Reason; 12] = [
        Reason::ExitCode,
        Reason::AbortedByJob,
        Reason::Timeout,
        Reason::Cancelled,
        Reason::BuildError,
        Reason::InvalidSpec,
        Reason::WorkerLost,
        Reason::PolicyDenied,
        Reason::ImageNotFound,
        Reason::DockerError,
        Reason::DependencyFailed,
        Reason::TransferError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ExitCode => "exit_code",
            Reason::AbortedByJob => "aborted_by_job",
            Reason::Timeout => "timeout",
            Reason::Cancelled => "cancelled",
            Reason::BuildError => "build_error",
            Reason::InvalidSpec => "invalid_spec",
            Reason::WorkerLost => "worker_lost",
            Reason::PolicyDenied => "policy_denied",
            Reason::ImageNotFound => "image_not_found",
            Reason::DockerError => "docker_error",
            Reason::DependencyFailed => "dependency_failed",
            Reason::TransferError => "transfer_error",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_know_if_they_are_final() {
        for s in [
            "queued",
            "scheduled",
            "waiting",
            "building",
            "running",
            "completed",
            "aborted",
        ] {
            assert_eq!(Status::parse(s).unwrap().as_str(), s);
        }
        assert!(Status::parse("done").is_none());
        assert_eq!(Reason::parse("worker_lost"), Some(Reason::WorkerLost));
        assert!(Reason::parse("oops").is_none());
        assert_eq!(
            Reason::parse("dependency_failed"),
            Some(Reason::DependencyFailed)
        );
        assert!(!Status::Waiting.is_terminal());
        assert!(Status::Completed.is_terminal() && Status::Aborted.is_terminal());
        assert!(!Status::Running.is_terminal());
    }
}
