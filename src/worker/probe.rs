//! This worker process's own `/metrics` and `/healthz`, on `worker.metrics_listen`
//! (off when empty), so Prometheus can scrape each worker and an orchestrator can
//! probe it. The fleet-wide numbers are `dockhand serve`'s `/metrics`; these are
//! what only this process knows.
//!
//! Invariants:
//! - Read-only and open (no token): it changes nothing and tells only counts and
//!   whether Redis and Docker answer.
//! - `/healthz` answers 200 only while Redis answers `PING` and the Docker engine
//!   answers its ping, each asked at the request with a short timeout, so a
//!   probe never hangs on an engine that does not answer.
//! - It serves from before the first claim until the drain is over (it stops
//!   with the heartbeat), so a draining worker is still seen alive.

use super::context::Ctx;
use crate::metrics::{Text, CONTENT_TYPE};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long one look at Redis or Docker may take before it counts as not answering.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Probe {
    ctx: Ctx,
    permits: Arc<Semaphore>,
}

/// Serves on `listener` (bound at start, so a taken port stops the worker there)
/// until `done`.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Ctx,
    permits: Arc<Semaphore>,
    done: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(address = %addr, "serving this worker's /metrics and /healthz");
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(Probe { ctx, permits });
    let stop = async move { done.cancelled().await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!(error = %e, "this worker's metrics endpoint stopped");
    }
}

/// Whether Redis and Docker answer now.
async fn reachable(ctx: &Ctx) -> (bool, bool) {
    let redis = async {
        let mut conn = ctx.store.conn().await.ok()?;
        let pong: Option<String> = redis::cmd("PING").query_async(&mut conn).await.ok();
        pong
    };
    let docker = ctx.executor.docker().ping();
    let (redis, docker) = tokio::join!(
        tokio::time::timeout(PING_TIMEOUT, redis),
        tokio::time::timeout(PING_TIMEOUT, docker)
    );
    (matches!(redis, Ok(Some(_))), matches!(docker, Ok(Ok(_))))
}

async fn healthz(State(p): State<Probe>) -> Response {
    let (redis, docker) = reachable(&p.ctx).await;
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let body = Json(serde_json::json!({
        "status": if redis && docker { "ok" } else { "unavailable" },
        "redis": word(redis),
        "docker": word(docker),
        "worker": p.ctx.worker_id,
        "consumer": p.ctx.consumer,
    }));
    let code = if redis && docker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

async fn metrics(State(p): State<Probe>) -> Response {
    let (redis, docker) = reachable(&p.ctx).await;
    let flag = |ok: bool| if ok { 1.0 } else { 0.0 };
    let ctx = &p.ctx;
    let mut t = Text::default();
    t.gauge(
        "worker_process_running_jobs",
        "Jobs this worker process runs now.",
        ctx.running.job_ids().len() as f64,
    );
    t.gauge(
        "worker_process_permits",
        "Jobs this worker process may run at once (worker.concurrency).",
        ctx.settings.worker.concurrency as f64,
    );
    t.gauge(
        "worker_process_permits_free",
        "Permits free: jobs this worker process could claim now.",
        p.permits.available_permits() as f64,
    );
    t.gauge(
        "worker_process_docker_reachable",
        "1 when the Docker engine answered a ping at this scrape.",
        flag(docker),
    );
    t.gauge(
        "worker_process_redis_reachable",
        "1 when Redis answered a PING at this scrape.",
        flag(redis),
    );
    let name = "worker_process_jobs_finished_total";
    t.family(
        name,
        "counter",
        "Jobs this worker process ended (wrote a terminal state for) since it started, by status.",
    );
    let (completed, aborted) = ctx.finished.counts();
    t.sample(name, &[("status", "completed")], completed as f64);
    t.sample(name, &[("status", "aborted")], aborted as f64);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], t.finish()).into_response()
}
