//! The `dockhand` commands other than `worker`. Each returns `Ok(())` or a
//! [`Failure`] carrying the command's exit code: 1 when the thing asked
//! for failed, 2 for bad usage.
//!
//! Everything meant for stdout goes through [`outln!`]: when the reader has gone
//! (`dockhand queues | head -1`), the command ends at once with code 141, as a
//! program stopped by SIGPIPE would, instead of a panic.

/// `println!` for the commands: see [`write_out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

pub mod batch;
pub mod cancel;
pub mod dead;
pub mod doctor;
pub mod jobs;
pub mod limit;
pub mod logs;
pub mod profile;
pub mod queues;
pub mod schedule;
pub mod serve;
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

impl From<crate::admin::AdminError> for Failure {
    fn from(e: crate::admin::AdminError) -> Self {
        use crate::admin::AdminError;
        match e {
            AdminError::Invalid(m) => Failure::usage(m),
            AdminError::NotFound(m) | AdminError::Conflict(m) => Failure::failed(m),
            AdminError::Store(e) => Failure::from(e),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::from_error(&e)
    }
}

pub type CliResult = Result<(), Failure>;

/// The exit code of a command whose stdout reader went away: 128 + SIGPIPE, what a
/// shell reports for a program that signal stopped.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Writes one line to stdout. A closed pipe ends the process with
/// [`BROKEN_PIPE_EXIT`] and nothing on stderr (the reader asked for no more); any
/// other write error ends it with 1, saying why.
pub fn write_out(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(BROKEN_PIPE_EXIT)
        }
        Err(e) => {
            eprintln!("dockhand: cannot write to stdout: {e}");
            std::process::exit(1)
        }
    }
}

/// A connection for a one-shot command.
pub(crate) async fn connect(settings: &crate::config::Settings) -> Result<(Store, Conn), Failure> {
    let block = std::time::Duration::from_millis(settings.worker.block_ms);
    let store = Store::new(&settings.redis, block, settings.worker.queues.len())?;
    let conn = store.conn().await.map_err(|e| {
        Failure::failed(format!(
            "cannot reach Redis at {}: {}; start it, or point --redis-url (REDIS_URL, redis.url) at yours",
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
