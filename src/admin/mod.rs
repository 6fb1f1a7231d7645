//! What an operator reads and does, as data: the queues and their numbers, the
//! workers, a job's state and its log, listings, submitting, cancelling,
//! retrying, pausing, the dead entries, and periodic schedules. Used by the CLI,
//! which prints it, and by `dockhand serve`, which answers it as JSON; neither
//! repeats the other's logic.
//!
//! Invariants:
//! - Nothing here prints, exits or knows HTTP: every outcome is a value or an
//!   [`AdminError`], whose kind says how a caller reports it (the CLI's exit code,
//!   the API's status).
//! - Every write goes through the same keys and scripts a worker uses, so what
//!   an operator does here is exactly what a producer or worker could do by hand.

pub mod dead;
pub mod jobs;
pub mod logs;
pub mod lookup;
pub mod queues;
pub mod schedules;
pub mod submit;
pub mod subscribers;
pub mod workers;

use crate::store::StoreError;

/// Why an operation was refused or failed. Each kind is one way to report it.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The thing named does not exist (or expired).
    #[error("{0}")]
    NotFound(String),
    /// It exists, but its state does not allow this (e.g. a duplicate id, a job
    /// that is still running).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong (a bad id, an invalid spec): the message names
    /// the field at fault.
    #[error("{0}")]
    Invalid(String),
    /// Redis could not be asked.
    #[error("Redis did not answer")]
    Store(#[from] StoreError),
}

impl From<deadpool_redis::redis::RedisError> for AdminError {
    fn from(e: deadpool_redis::redis::RedisError) -> Self {
        AdminError::Store(StoreError::from(e))
    }
}

/// A job id from outside, checked.
pub fn job_id(id: &str) -> Result<&str, AdminError> {
    if crate::job::is_valid_job_id(id) {
        Ok(id)
    } else {
        Err(AdminError::Invalid(format!(
            "{id:?} is not a job id ([A-Za-z0-9_.-], 1 to 128 characters; no `:`)"
        )))
    }
}

/// A job named from outside, checked: `<queue>/<id>`, or a bare `<id>` whose
/// queue is to be looked for.
pub fn job_ref(text: &str) -> Result<(Option<&str>, &str), AdminError> {
    crate::job::JobRef::split(text).ok_or_else(|| {
        AdminError::Invalid(format!(
            "{text:?} is not a job id ([A-Za-z0-9_.-], 1 to 128 characters; no `:`), nor <queue>/<id>"
        ))
    })
}

/// A queue name from outside, checked.
pub fn queue_name(q: &str) -> Result<&str, AdminError> {
    if crate::job::is_valid_queue_name(q) {
        Ok(q)
    } else {
        Err(AdminError::Invalid(format!(
            "{q:?} is not a queue name ([A-Za-z0-9_.-], 1 to 64 characters)"
        )))
    }
}
