//! `dockhand serve`: checks where to listen (a bad address, or one off loopback
//! with no token, is a usage error) and runs [`crate::api::serve`].

use super::{CliResult, Failure};
use crate::config::Settings;
use std::sync::Arc;

pub async fn run(
    settings: Arc<Settings>,
    listen: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> CliResult {
    let listen = listen.unwrap_or_else(|| settings.api.listen.clone());
    let addr = settings.api.check(&listen).map_err(Failure::usage)?;
    crate::api::serve(settings, addr, shutdown)
        .await
        .map_err(|e| Failure::from_error(&e))
}
