//! `dockhand serve`: the HTTP API, live logs and events as Server-Sent Events,
//! Prometheus metrics and the dashboard, over the same Redis the workers use.
//!
//! Invariants:
//! - Stateless: everything served is read from Redis when asked, and everything
//!   changed is written there through [`crate::admin`], exactly as the CLI does;
//!   any number of `serve` processes may run side by side.
//! - Every route but `/healthz` and the dashboard's files passes
//!   [`auth::require`]; bodies are capped at
//!   `api.max_body_bytes`; every error is JSON ([`error::ApiError`]).
//! - [`router`] is the whole surface, so tests drive it without a socket; its
//!   routes are added in one place ([`routes`]), which [`paths`] lists and
//!   `openapi.json` documents, no more and no fewer (a test checks both ways).

mod auth;
mod dashboard;
mod error;
mod events;
mod jobs;
mod logs;
mod metrics;
mod openapi;
mod queues;
mod registry;
mod sse;
mod state;

pub use error::{ApiError, ApiResult};
pub use state::AppState;

use crate::config::Settings;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use std::sync::Arc;

/// Every route.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.api.max_body_bytes.0 as usize;
    routes()
        .router
        .fallback(|| async { ApiError::not_found("no such route") })
        // Innermost, so it also sees the answers of the body limit, the
        // extractors' rejections and of an unknown method.
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The path of every route served, as `router()` serves it (`/jobs/{id}`); the
/// OpenAPI document names the same ones (a test holds the two to each other).
pub fn paths() -> Vec<&'static str> {
    routes().paths
}

/// The routes, and their paths as they are added.
#[derive(Default)]
struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    fn route(mut self, path: &'static str, handlers: MethodRouter<AppState>) -> Routes {
        self.router = self.router.route(path, handlers);
        self.paths.push(path);
        self
    }
}

fn routes() -> Routes {
    Routes::default()
        .route("/healthz", get(queues::healthz))
        .route("/jobs", post(jobs::submit).get(jobs::list))
        .route("/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/jobs/{id}/retry", post(jobs::retry))
        .route("/jobs/{id}/files/{name}", get(jobs::file))
        .route("/queues", get(queues::list))
        .route("/queues/{queue}/pause", post(queues::pause))
        .route("/queues/{queue}/resume", post(queues::resume))
        .route(
            "/queues/{queue}/dead",
            get(queues::dead).delete(queues::dead_delete_all),
        )
        .route("/queues/{queue}/dead/retry", post(queues::dead_retry_all))
        .route(
            "/queues/{queue}/dead/{entry}",
            axum::routing::delete(queues::dead_delete),
        )
        .route(
            "/queues/{queue}/dead/{entry}/retry",
            post(queues::dead_retry),
        )
        .route("/workers", get(queues::workers))
        .route(
            "/subscribers",
            get(registry::subscribers).post(registry::add_subscriber),
        )
        .route(
            "/subscribers/{name}",
            axum::routing::delete(registry::remove_subscriber),
        )
        .route(
            "/subscribers/{name}/rotate",
            post(registry::rotate_subscriber),
        )
        .route("/profiles", get(registry::profiles))
        .route(
            "/profiles/{name}",
            get(registry::profile)
                .put(registry::put_profile)
                .delete(registry::remove_profile),
        )
        .route("/jobs/{id}/webhooks", get(registry::deliveries))
        .route("/webhooks/{delivery}/replay", post(registry::replay))
        .route("/limits", get(registry::limits))
        .route(
            "/limits/{key}",
            axum::routing::put(registry::put_limit).delete(registry::remove_limit),
        )
        .route("/metrics", get(metrics::get))
        // The dashboard (dashboard.rs): the page at `/` and its hashed assets, read
        // without a token; the page then uses the routes above.
        .route("/", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::asset))
        // Live logs and events (Server-Sent Events), and the API's own description.
        .route("/jobs/{id}/logs", get(logs::follow))
        .route("/events", get(events::stream))
        .route("/openapi.json", get(openapi::document))
}

/// Serves until `shutdown` completes.
pub async fn serve(
    settings: Arc<Settings>,
    listen: std::net::SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = AppState::new(settings.clone()).map_err(ServeError::Store)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind { listen, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { listen, source })?;
    if settings.api.tokens.is_empty() {
        tracing::warn!(address = %local, "serving without tokens: on loopback only, and anyone on this host may use it (set api.tokens to require one)");
    }
    tracing::info!(address = %local, "serving the API and the dashboard at http://{local}/");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Bind { listen, source })
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {listen}; is another process using it? (set api.listen or --listen)"
    )]
    Bind {
        listen: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up Redis")]
    Store(#[source] crate::store::StoreError),
}
