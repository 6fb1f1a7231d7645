//! Where a job's image comes from when the spec has `git` instead of `image`:
//! the repository's commit, checked out with its submodules, ready for
//! [`crate::executor::build`].
//!
//! Invariants:
//! - Only https://, http://, file:// and absolute paths are fetched; ssh and other
//!   schemes are refused with a [`GitError`] before any connection is made.
//! - Tokens come from the worker's side ([`Credentials`]), never from a job, and
//!   never appear in logs, errors or files.
//! - Every error names the URL, the ref or the submodule path at fault, and says
//!   whether a retry may help ([`GitError::is_retryable`]).

mod credentials;
mod error;
mod git;
mod url;

pub use credentials::Credentials;
pub use error::GitError;
pub use git::{Checkout, GitCache, GitSource, Reference};
pub use url::{RepoUrl, Transport};

/// Sets how long libgit2 waits for a server to accept a connection and, once
/// connected, for each read or write. libgit2 keeps this in a process-wide
/// global, so only the first call in a process has an effect: the worker makes it
/// when it first needs git, before its first fetch.
pub fn set_network_timeout(timeout: std::time::Duration) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let ms = i32::try_from(timeout.as_millis())
            .unwrap_or(i32::MAX)
            .max(1);
        // SAFETY: git2 asks that nothing else touch libgit2 meanwhile. This runs
        // once, before the worker's git cache exists, and every fetch goes through
        // that cache (whose opening waits for this `Once`), so no fetch (the only
        // reader of these options) is under way in this process.
        let set = unsafe {
            git2::opts::set_server_connect_timeout_in_milliseconds(ms)
                .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(ms))
        };
        if let Err(e) = set {
            tracing::warn!(error = %e, "libgit2 refused the network timeout; a stalled git server may hold a job");
        }
    });
}
