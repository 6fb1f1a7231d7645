//! The flag that ends a job's blocking git work early: set when whoever waits
//! for it stops waiting (the job's deadline passed, the job was cancelled, the
//! worker is draining), checked by the blocking thread between steps, by
//! libgit2's progress callbacks, by a waiting mirror lock and by the relays of
//! network steps ([`super::relay`]).

use super::error::GitError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub(super) struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// `Err(GitError::Stopped)` once set.
    pub fn check(&self) -> Result<(), GitError> {
        if self.is_set() {
            Err(GitError::Stopped)
        } else {
            Ok(())
        }
    }

    /// `e`, or [`GitError::Stopped`] when the flag is set: then `e` is only how
    /// libgit2 noticed (a callback said stop, a relay shut the connection).
    pub fn or(&self, e: GitError) -> GitError {
        if self.is_set() {
            GitError::Stopped
        } else {
            e
        }
    }

    /// A guard that sets the flag when dropped.
    pub fn on_drop(&self) -> SetOnDrop {
        SetOnDrop(self.clone())
    }
}

/// Sets its [`Stop`] when dropped: held by the future that awaits the blocking
/// work, so dropping that future (a timeout, a `select!` that chose a cancel)
/// stops the work too.
pub(super) struct SetOnDrop(Stop);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}
