//! The `dockhand` commands other than `worker`. Each returns `Ok(())` or a
//! [`Failure`] carrying the command's exit code: 1 when the thing asked
//! for failed, 2 for bad usage.

pub mod cancel;
pub mod dead;
pub mod doctor;
pub mod logs;
pub mod profile;
pub mod queues;
pub mod status;
pub mod submit;
pub mod subscriber;
pub mod webhooks;
pub mod workers;

use crate::store::{Conn, Store, StoreError};
use deadpool_redis::redis::AsyncCommands;
use std::collections::HashMap;

/// Why a command failed, and its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn failed(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    pub fn from_error(e: &(dyn std::error::Error + 'static)) -> Self {
        Failure::failed(crate::telemetry::error_chain(e))
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::from_error(&e)
    }
}

pub type CliResult = Result<(), Failure>;

/// A connection for a one-shot command.
pub(crate) async fn connect(settings: &crate::config::Settings) -> Result<(Store, Conn), Failure> {
    let block = std::time::Duration::from_millis(settings.worker.block_ms);
    let store = Store::new(&settings.redis, block, settings.worker.queues.len())?;
    let conn = store.conn().await.map_err(|e| {
        Failure::failed(format!(
            "cannot reach Redis at {}: {}",
            settings.redis.url,
            crate::telemetry::error_chain(&e)
        ))
    })?;
    Ok((store, conn))
}

/// The job hash as a map; empty when the job is unknown (or expired).
pub(crate) async fn job_hash(
    conn: &mut Conn,
    key: &str,
) -> Result<HashMap<String, String>, StoreError> {
    Ok(conn.hgetall(key).await?)
}
