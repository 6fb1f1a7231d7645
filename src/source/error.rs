//! What can go wrong getting a job's source, each naming the URL or ref at fault,
//! and which of it is worth a retry.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("`{url}`: ssh URLs are not available in this build (git2 has no ssh support); use https:// with a token")]
    SshUnsupported { url: String },
    #[error("`{url}` is not a repository URL Dockhand can fetch: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid {kind} `{name}`: {reason}")]
    InvalidRef {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("{kind} `{name}` not found in {url}")]
    RefNotFound {
        kind: &'static str,
        name: String,
        url: String,
    },
    #[error("the host of {url} is not in this worker's allow-list (policy.git_hosts)")]
    HostNotAllowed { url: String },
    #[error("`{url}` is a repository on the worker's own host; local repositories (paths and file:// URLs) are refused unless policy.git_file_urls = true")]
    LocalNotAllowed { url: String },
    #[error("`{url}` leads into the worker's cache (worker.cache_dir), which is never a source, whatever policy.git_file_urls says")]
    InsideCache { url: String },
    /// The guard's refusal names the address, why, and `policy.git_allow_networks`.
    #[error("the host {host} of {url} is refused")]
    AddressRefused {
        url: String,
        host: String,
        #[source]
        source: crate::ssrf::Refused,
    },
    #[error("cannot resolve the host of {url}")]
    Resolve {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("commit {commit} not found in {url}")]
    CommitNotFound { commit: String, url: String },
    #[error("repository {url} not found")]
    RepositoryNotFound {
        url: String,
        #[source]
        source: Option<git2::Error>,
    },
    #[error("authentication to {url} failed")]
    Auth {
        url: String,
        #[source]
        source: git2::Error,
    },
    #[error("cannot reach {url}")]
    Network {
        url: String,
        #[source]
        source: git2::Error,
    },
    /// The inner error names what failed inside the submodule.
    #[error("submodule `{path}` ({url}) could not be checked out")]
    Submodule {
        path: String,
        url: String,
        #[source]
        source: Box<GitError>,
    },
    #[error("the submodule path `{0}` leads out of its repository")]
    UnsafePath(String),
    #[error("submodules nest deeper than {0} levels (the limit on submodule depth)")]
    TooDeep(usize),
    #[error("the repository has more than {0} submodules, all levels together (the limit on submodules)")]
    TooManySubmodules(usize),
    #[error("git failed to {action} ({url})")]
    Git {
        action: &'static str,
        url: String,
        #[source]
        source: git2::Error,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the checkout destination {} is not empty", .0.display())]
    DestinationNotEmpty(PathBuf),
    #[error("the git work was stopped: its job timed out or was cancelled")]
    Stopped,
    #[error("cannot open a loopback relay for a git connection")]
    Relay(#[source] std::io::Error),
    #[error("the git task stopped unexpectedly")]
    Task(#[from] tokio::task::JoinError),
}

impl GitError {
    /// True when the policy refused a URL (here or inside a submodule).
    pub fn is_policy(&self) -> bool {
        match self {
            GitError::HostNotAllowed { .. }
            | GitError::LocalNotAllowed { .. }
            | GitError::InsideCache { .. }
            | GitError::AddressRefused { .. } => true,
            GitError::Submodule { source, .. } => source.is_policy(),
            _ => false,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> GitError {
        let path = path.into();
        move |source| GitError::Io {
            action,
            path,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::RepoUrl;
    use git2::{ErrorClass, ErrorCode};

    #[test]
    fn libgit2_failures_are_classified_by_what_went_wrong() {
        let url = RepoUrl::parse("https://h.example/x").unwrap();
        let net = url.git_error(
            "fetch",
            git2::Error::new(
                ErrorCode::GenericError,
                ErrorClass::Net,
                "failed to resolve address",
            ),
        );
        assert!(matches!(net, GitError::Network { .. }));
        let auth = url.git_error(
            "fetch",
            git2::Error::new(ErrorCode::Auth, ErrorClass::Callback, "rejected"),
        );
        assert!(matches!(auth, GitError::Auth { .. }));
        let missing = url.git_error(
            "fetch",
            git2::Error::new(
                ErrorCode::GenericError,
                ErrorClass::Http,
                "unexpected http status code: 404",
            ),
        );
        assert!(matches!(missing, GitError::RepositoryNotFound { .. }));
        let unknown = GitError::RefNotFound {
            kind: "branch",
            name: "nope".into(),
            url: url.public().into(),
        };
        assert_eq!(
            unknown.to_string(),
            "branch `nope` not found in https://h.example/x"
        );
        let sub = GitError::Submodule {
            path: "lib".into(),
            url: "https://h.example/lib".into(),
            source: Box::new(GitError::HostNotAllowed {
                url: "https://h.example/lib".into(),
            }),
        };
        assert!(
            sub.is_policy(),
            "a policy refusal inside a submodule is one"
        );
        assert!(!net.is_policy());
    }
}
