//! Where a job's image comes from when the spec has `git` instead of `image`:
//! the repository's commit, checked out with its submodules, ready for
//! [`crate::executor::build`].
//!
//! Invariants:
//! - Only https://, http://, file:// and absolute paths are fetched; ssh and other
//!   schemes are refused with a [`GitError`] before any connection is made.
//! - Local repositories only when the policy allows them, never from inside the
//!   worker's cache; http(s) only to addresses the SSRF guard passes, checked
//!   before libgit2 connects ([`SourcePolicy`]).
//! - Tokens come from the worker's side ([`Credentials`]), never from a job, and
//!   never appear in logs, errors or files.
//! - Every error names the URL, the ref or the submodule path at fault, and says
//!   whether the policy refused it ([`GitError::is_policy`]).

mod credentials;
mod error;
mod git;
mod policy;
mod relay;
mod stop;
mod timeout;
mod url;

/// A URL with its password, or a user that may be a token, replaced by `***`.
pub use url::redact as redact_url;

pub use credentials::Credentials;
pub use error::GitError;
pub use git::{
    Checkout, GitCache, GitSource, Reference, DEFAULT_NETWORK_TIMEOUT, MAX_SUBMODULES,
    MAX_SUBMODULE_DEPTH,
};
pub use policy::{SourcePolicy, ALLOW_NETWORKS_KEY, FILE_URLS_KEY};
pub use url::{RepoUrl, Transport};
