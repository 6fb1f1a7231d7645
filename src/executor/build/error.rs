//! Why an image could not be built: the build inputs (paths that escape the
//! checkout or do not exist, files that cannot be read), the builder's own
//! failure (a bad Dockerfile), or the engine failing us.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the {what} `{}` leads out of the checkout", path.display())]
    Escapes { what: &'static str, path: PathBuf },
    #[error("the {what} `{}` does not exist in the checkout", path.display())]
    NotFound { what: &'static str, path: PathBuf },
    #[error("cannot {action} {} for the build context", path.display())]
    Context {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the build context is larger than {limit} bytes (worker.build_context_bytes)")]
    ContextTooLarge { limit: u64 },
    #[error("the build was stopped: its job timed out or was cancelled")]
    Stopped,
    #[error("the image build failed: {message}")]
    Failed { message: String },
    #[error("Docker failed to {action}")]
    Docker {
        action: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the build context task stopped unexpectedly")]
    Task(#[from] tokio::task::JoinError),
}
