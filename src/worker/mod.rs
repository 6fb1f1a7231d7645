//! `dockhand worker`: claims jobs from its queues and runs each through the pipeline.
//!
//! Invariants:
//! - A job runs only while it holds a semaphore permit, so at most
//!   `worker.concurrency` containers run at once; an entry is read (or taken over
//!   from a dead worker) only when a permit is in hand, and one read takes no more
//!   entries than there are permits free, so a busy worker leaves work for idle
//!   ones.
//! - Reads block for at most `worker.block_ms`, so shutdown and reconnects are
//!   noticed promptly. A read is never abandoned half-way (which could leave an
//!   entry delivered but unseen); shutdown is checked between reads.
//! - Losing Redis never stops the worker: every loop retries with backoff and says
//!   so in its log (the claim loop also says when Redis is back). A missing consumer group
//!   (`NOGROUP`, e.g. after a Redis restart without persistence) is re-created.
//! - While the Docker engine does not answer (a run found it unreachable), the
//!   worker claims and takes over nothing; it resumes when the engine answers.
//! - It claims and takes over nothing before its first heartbeat went through
//!   (see `heartbeat`): other workers' sweeps judge its containers by it.
//! - While it runs a job, the worker renews the job's lease (see `queue::lease`); a
//!   worker that cannot renew for a whole lease stops its containers.
//! - Shutdown is passed in. On it the worker stops claiming, lets running jobs
//!   finish for up to `worker.drain_seconds`, then stops their containers and puts
//!   the jobs back in their queues; `stop_now` skips the wait.

// The turn of one entry, in the order its steps run.
mod admit;
mod attempt;
mod ending;
mod limit;
mod outcome;
mod pipeline;
mod posted;
mod prepare;
mod progress;
mod record;
mod release;
mod waiting;

// What the turns share, and the loops beside them.
mod broadcast;
mod context;
mod heartbeat;
mod images;
mod probe;
mod running;
mod takeover;
mod upkeep;

use crate::config::Settings;
use crate::executor::{ExecError, Executor};
use crate::queue::{self, Keys, ReadError};
use crate::store::{Store, StoreError};
use crate::telemetry::error_chain;
use context::{reconnect_backoff, sleep_or_cancel, Ctx};
use running::{Running, StopCause};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot set up Redis")]
    Store(#[from] StoreError),
    #[error("cannot set up Docker")]
    Docker(#[from] ExecError),
    #[error("cannot set up the local executor's folder (executors.local.base_dir)")]
    LocalExecutor(#[source] std::io::Error),
    #[error("cannot set up the git cache (worker.cache_dir)")]
    GitCache(#[from] crate::source::GitError),
    #[error(transparent)]
    Profiles(#[from] crate::profile::ProfileFileError),
    #[error("cannot serve this worker's metrics on {listen}; is another process using it? (worker.metrics_listen)")]
    MetricsListen {
        listen: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How often the listing prune runs.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Connects to the Docker engine; an engine that does not answer yet (the host is
/// still starting it) is waited for, with backoff, like Redis. `None` when
/// `shutdown` came first. An engine that answers with a refusal is an error.
async fn connect_docker(
    settings: &Arc<Settings>,
    consumer: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<Executor>, WorkerError> {
    let mut backoff = reconnect_backoff(settings);
    loop {
        match Executor::connect(settings.clone(), consumer).await {
            Ok(executor) => {
                if backoff.failures() > 0 {
                    tracing::info!("the Docker engine answers; starting");
                }
                return Ok(Some(executor));
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if backoff.failures() == 1 || backoff.failures().is_multiple_of(10) {
                    tracing::warn!(error = %error_chain(&e), retry_in_ms = delay.as_millis() as u64, "the Docker engine does not answer; waiting for it (start dockerd, or set worker.docker_host to where it listens)");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut *shutdown => return Ok(None),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Raises the soft limit of open files to the hard one. The usual soft limit of
/// 1,024 is soon reached by a worker that holds Redis connections, Docker
/// streams, log files and the result server's connections at once; past it the
/// worker could not reach Docker any more. Best effort: a refusal is logged.
fn raise_open_file_limit() {
    let before = rlimit::Resource::NOFILE.get();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => match before {
            Ok((soft, hard)) if soft != now => {
                tracing::info!(
                    before = soft,
                    after = now,
                    hard,
                    "raised the open-file limit"
                )
            }
            Ok((soft, hard)) => tracing::debug!(
                soft,
                hard,
                "the open-file limit is already at its hard limit"
            ),
            Err(_) => tracing::info!(after = now, "raised the open-file limit"),
        },
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Runs a worker until `shutdown` completes, then drains.
pub async fn run(
    settings: Arc<Settings>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    run_with(settings, shutdown, std::future::pending()).await
}

/// Like [`run`]; when `stop_now` completes during the drain, running jobs are
/// stopped and put back at once instead of being waited for.
pub async fn run_with(
    settings: Arc<Settings>,
    shutdown: impl Future<Output = ()>,
    stop_now: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    raise_open_file_limit();
    let block = Duration::from_millis(settings.worker.block_ms);
    let store = Store::new(&settings.redis, block, settings.worker.queues.len())?;
    let mut worker_id = settings.worker_id();
    let mut consumer = format!("{worker_id}:{}:{}", std::process::id(), ulid::Ulid::new());
    tokio::pin!(shutdown);
    let Some(mut executor) = connect_docker(&settings, &consumer, &mut shutdown).await? else {
        return Ok(()); // stopped before the engine ever answered
    };
    // With no worker.id, a worker in a container is named after its container
    // (under Compose `<project>-worker-<n>`: one per replica of `--scale`, and the
    // same when the container is made again), not after its random hostname.
    if settings.worker.id.is_empty() {
        if let Some(name) = executor.own_container_name().await {
            worker_id = name;
            consumer = format!("{worker_id}:{}:{}", std::process::id(), ulid::Ulid::new());
            executor.set_identity(&worker_id, &consumer);
        }
    }
    // Validated with the settings; bound before anything runs, so a taken port
    // stops the worker here, naming the key.
    let probe = match settings.worker.metrics_addr().ok().flatten() {
        Some(listen) => Some(
            tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|source| WorkerError::MetricsListen { listen, source })?,
        ),
        None => None,
    };
    let images = images::Images::open(&settings, &worker_id, executor.docker().clone())?;
    crate::transfer::clear_leftovers(&settings);
    crate::executor::folders::clear_leftovers(&settings);
    let profiles = crate::profile::load_dir(&settings.worker.profiles_dir)?;
    let results = posted::start(&settings, &executor).await.map(Arc::new);
    let (local, local_results) = if settings.executors.local.enabled {
        let local = crate::executor::local::LocalExecutor::new(settings.clone(), &consumer)
            .map_err(WorkerError::LocalExecutor)?;
        tracing::warn!("executors.local.enabled: jobs with \"executor\": \"local\" run on this host as this worker's user, without isolation");
        (
            Some(local),
            posted::start_local(&settings).await.map(Arc::new),
        )
    } else {
        (None, None)
    };
    let ssh = (!settings.executors.ssh.hosts.is_empty()).then(|| {
        tracing::info!(
            hosts = settings.executors.ssh.hosts.len(),
            "offering the ssh executor"
        );
        crate::executor::ssh::SshExecutor::new(settings.clone(), &worker_id, &consumer)
    });
    let ctx = Ctx {
        keys: Keys::new(&settings.redis.prefix),
        settings,
        store,
        executor,
        local,
        ssh,
        worker_id,
        consumer,
        running: Running::default(),
        results,
        local_results,
        images,
        deployment: Arc::default(),
        deliveries_made: Arc::default(),
        finished: context::Finished::default(),
        tally: crate::metrics::Tally::default(),
        subscribers: crate::webhook::outbox::Registry::new(block),
    };
    let w = &ctx.settings.worker;
    tracing::info!(worker = %ctx.worker_id, consumer = %ctx.consumer, queues = ?w.queues, concurrency = w.concurrency, "worker started");
    upkeep::check_redis_settings(&ctx).await;

    let info = serde_json::json!({
        "worker": ctx.worker_id, "consumer": ctx.consumer, "pid": std::process::id(),
        "queues": w.queues, "concurrency": w.concurrency, "started_at": crate::time::now(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    // Before the first heartbeat: a worker seen alive already reads the broadcasts.
    let broadcast_ready = broadcast::setup(&ctx, &profiles).await;
    let beating = CancellationToken::new();
    let (alive, alive_seen) = tokio::sync::watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat::run(ctx.clone(), info, alive, beating.clone()));
    // Like the heartbeat, it outlives the drain: jobs that end there are counted.
    let counting = tokio::spawn(upkeep::metrics_flush(ctx.clone(), beating.clone()));
    let permits = Arc::new(Semaphore::new(w.concurrency));
    // Stops with the heartbeat, after the drain: a draining worker is still alive.
    let probing = probe.map(|listener| {
        tokio::spawn(probe::serve(
            listener,
            ctx.clone(),
            permits.clone(),
            beating.clone(),
        ))
    });

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let chores = TaskTracker::new();
    for queue in w.queues.clone() {
        chores.spawn(inbox_loop(ctx.clone(), queue.clone(), token.clone()));
        chores.spawn(upkeep::scheduler(ctx.clone(), queue, token.clone()));
    }
    chores.spawn(upkeep::cancel_listener(ctx.clone(), token.clone()));
    chores.spawn(upkeep::periodic(ctx.clone(), token.clone()));
    chores.spawn(broadcast::listen(
        ctx.clone(),
        profiles,
        broadcast_ready,
        token.clone(),
    ));
    chores.spawn(crate::webhook::deliver::run(
        ctx.settings.clone(),
        ctx.store.clone(),
        ctx.deliveries_made.clone(),
        token.clone(),
    ));
    // The orphan sweep runs at start, then every `worker.sweep_seconds`.
    let sweep_every = Duration::from_secs(ctx.settings.worker.sweep_seconds);
    chores.spawn(upkeep::sweeper(ctx.clone(), sweep_every, token.clone()));
    chores.spawn(upkeep::dependency_deadlines(ctx.clone(), token.clone()));
    chores.spawn(upkeep::prune_listings(
        ctx.clone(),
        PRUNE_EVERY,
        token.clone(),
    ));
    chores.spawn(takeover::run(
        ctx.clone(),
        permits.clone(),
        tracker.clone(),
        alive_seen.clone(),
        token.clone(),
    ));
    let claiming = tokio::spawn(claim_loop(
        ctx.clone(),
        permits,
        tracker.clone(),
        alive_seen,
        token.clone(),
    ));

    (&mut shutdown).await;
    tracing::info!("shutting down: no new jobs are claimed");
    token.cancel();
    let _ = claiming.await;
    chores.close();
    chores.wait().await;
    tracker.close();

    let drain = Duration::from_secs(ctx.settings.worker.drain_seconds);
    tokio::pin!(stop_now);
    let finished = tokio::select! {
        r = tokio::time::timeout(drain, tracker.wait()) => r.is_ok(),
        _ = &mut stop_now => false,
    };
    if !finished {
        tracing::warn!("stopping running jobs and putting them back in their queues");
        ctx.running.stop_all(StopCause::Drain);
        let grace = Duration::from_secs(ctx.settings.worker.stop_grace_seconds + 60);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::error!(
                "some jobs did not stop; their entries stay pending for another worker"
            );
        }
    }
    // A run still going after this removes its directory instead of keeping it.
    if let Some(local) = &ctx.local {
        local.close().await;
    }
    beating.cancel();
    let _ = heartbeat.await;
    let _ = counting.await;
    if let Some(probing) = probing {
        let _ = probing.await;
    }
    if let Ok(mut conn) = ctx.store.conn().await {
        let _ = queue::lease::depart(&mut conn, &ctx.keys, &ctx.consumer).await;
        broadcast::leave(&ctx, &mut conn).await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

async fn claim_loop(
    ctx: Ctx,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    mut alive: tokio::sync::watch::Receiver<bool>,
    token: CancellationToken,
) {
    if !heartbeat::until_alive(&mut alive, &token).await {
        return;
    }
    let mut backoff = reconnect_backoff(&ctx.settings);
    let mut groups_ready = false;
    let served = ctx.settings.worker.queues.clone();
    let mut paused = std::collections::BTreeSet::new();
    let mut paused_at = None;
    // Claims since the last fair one (see `lanes::FAIR_EVERY`).
    let mut since_fair: u64 = 0;
    // Within one read's time: a pause takes effect, a new priority lane is seen.
    let block = Duration::from_millis(ctx.settings.worker.block_ms);
    // What each queue's last claim saw of its priority lanes (see `lanes::claim`).
    let mut lanes_seen: std::collections::HashMap<String, queue::lanes::Seen> =
        std::collections::HashMap::new();
    while !token.is_cancelled() {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = token.cancelled() => return,
        };
        // A job claimed while Docker does not answer could only fail.
        tokio::select! {
            _ = ctx.executor.until_reachable() => {}
            _ = token.cancelled() => return,
        }
        let result: Result<Vec<queue::Entry>, ReadError> = async {
            let mut conn = ctx.store.blocking_conn().await?;
            if !groups_ready {
                queue::ensure_groups(&mut conn, &ctx.keys, &served).await?;
                groups_ready = true;
            }
            // The paused set is read at most once per `block_ms` (the time within
            // which a pause takes effect), not on every claim: a busy worker
            // would otherwise ask it once per job.
            if paused_at.is_none_or(|at: std::time::Instant| at.elapsed() >= block) {
                let now_paused = queue::paused(&mut conn, &ctx.keys, &served).await?;
                report_paused(&paused, &now_paused);
                paused = now_paused;
                paused_at = Some(std::time::Instant::now());
            }
            let queues: Vec<String> = served
                .iter()
                .filter(|q| !paused.contains(*q))
                .cloned()
                .collect();
            if queues.is_empty() {
                // Every queue is paused: look again after a read's time.
                sleep_or_cancel(block, &token).await;
                return Ok(Vec::new());
            }
            // First, without blocking: the queues in their order for this claim,
            // each by priority. Only when all are empty, wait on their streams.
            // Every FAIR_EVERY-th claim takes the longest-waiting job of the queue.
            // With more permits free than the one in hand, one read takes as
            // many entries as there are free permits (from a queue whose only
            // lane is its main stream: see `lanes::claim`).
            let fair = since_fair + 1 >= queue::lanes::FAIR_EVERY;
            let count = 1 + permits.available_permits();
            for q in claim_order(&queues, &served, &ctx.settings.worker) {
                let seen = lanes_seen
                    .entry(q.to_string())
                    .or_insert_with(|| queue::lanes::Seen::new(block));
                let entries =
                    queue::lanes::claim(&mut conn, &ctx.keys, q, &ctx.consumer, fair, count, seen)
                        .await?;
                if !entries.is_empty() {
                    since_fair = if fair {
                        0
                    } else {
                        since_fair + entries.len() as u64
                    };
                    return Ok(entries);
                }
            }
            queue::read(
                &mut conn,
                &ctx.keys,
                &queues,
                &ctx.consumer,
                ctx.settings.worker.block_ms,
            )
            .await
        }
        .await;
        match result {
            Ok(entries) => {
                if backoff.failures() > 0 {
                    tracing::info!("Redis is reachable again; claiming jobs");
                    backoff.reset();
                }
                let mut permit = Some(permit);
                for entry in entries {
                    // Registered before anything else, so the heartbeat renews it at once.
                    let registration = ctx.running.register(&entry.stream(&ctx.keys), &entry.id);
                    // A batch, or a multi-queue read (one entry per queue): each
                    // entry waits for a permit of its own (a batch asked only
                    // for free ones, but the takeover may have taken some since).
                    let permit = match permit.take() {
                        Some(p) => p,
                        None => permits
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed"),
                    };
                    tracker.spawn(pipeline::run(ctx.clone(), entry, registration, permit));
                }
            }
            Err(ReadError::NoGroup) => {
                tracing::warn!("the consumer group is missing (Redis restarted or was flushed); re-creating it");
                groups_ready = false;
            }
            Err(ReadError::Store(e)) => {
                groups_ready = false;
                paused_at = None;
                let delay = backoff.next_delay();
                report_unreachable(&e, backoff.failures(), delay);
                sleep_or_cancel(delay, &token).await;
            }
        }
    }
}

/// The order in which one claim looks at the unpaused `queues`: as written with
/// `worker.strict_priority`, else drawn by weight (each next queue picked with a
/// chance proportional to its weight among those left), so every queue with a
/// weight is looked at first now and then and none waits without bound.
fn claim_order<'a>(
    queues: &'a [String],
    served: &[String],
    w: &crate::config::WorkerSettings,
) -> Vec<&'a str> {
    let weight = |q: &str| {
        served
            .iter()
            .position(|s| s == q)
            .and_then(|i| w.weights.get(i).copied())
            .unwrap_or(1) as f64
    };
    let mut left: Vec<&str> = queues.iter().map(String::as_str).collect();
    if w.strict_priority || left.len() < 2 {
        return left;
    }
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: f64 = left.iter().map(|q| weight(q)).sum();
        let mut pick = crate::backoff::random_fraction() * total;
        let mut chosen = left.len() - 1;
        for (i, q) in left.iter().enumerate() {
            pick -= weight(q);
            if pick < 0.0 {
                chosen = i;
                break;
            }
        }
        order.push(left.remove(chosen));
    }
    order
}

/// Says which served queues were paused or resumed since the last read.
fn report_paused(before: &BTreeSet<String>, now: &BTreeSet<String>) {
    for q in now.difference(before) {
        tracing::info!(queue = %q, "queue paused: claiming nothing from it until it is resumed");
    }
    for q in before.difference(now) {
        tracing::info!(queue = %q, "queue resumed: claiming from it again");
    }
}

/// Moves `LPUSH`ed jobs from the queue's inbox into its stream.
async fn inbox_loop(ctx: Ctx, queue: String, token: CancellationToken) {
    let mut backoff = reconnect_backoff(&ctx.settings);
    while !token.is_cancelled() {
        let result: Result<(), StoreError> = async {
            let mut conn = ctx.store.conn().await?;
            let moved = queue::move_inbox(&mut conn, &ctx.keys, &queue, 100).await?;
            if moved == 0 {
                drop(conn);
                let mut conn = ctx.store.blocking_conn().await?;
                queue::wait_inbox(&mut conn, &ctx.keys, &queue, ctx.settings.worker.block_ms)
                    .await?;
            } else {
                tracing::debug!(queue = %queue, moved, "moved jobs from the inbox");
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => backoff.reset(),
            Err(e) => {
                let delay = backoff.next_delay();
                if backoff.failures() == 1 {
                    tracing::warn!(queue = %queue, error = %error_chain(&e), "inbox mover cannot reach Redis; retrying");
                }
                sleep_or_cancel(delay, &token).await;
            }
        }
    }
}

fn report_unreachable(e: &StoreError, failures: u32, delay: Duration) {
    // Say it on the first failure and then every tenth, not on every retry.
    if failures == 1 || failures.is_multiple_of(10) {
        tracing::warn!(
            error = %error_chain(e),
            failures,
            retry_in_ms = delay.as_millis() as u64,
            "Redis connection lost; reconnecting"
        );
    }
}

#[cfg(test)]
mod order_tests {
    use super::claim_order;

    fn settings(queues: &[&str], weights: &[u32], strict: bool) -> crate::config::WorkerSettings {
        let mut w = crate::config::Settings::load_from(None, &[], &Default::default())
            .unwrap()
            .worker;
        w.queues = queues.iter().map(|q| q.to_string()).collect();
        w.weights = weights.to_vec();
        w.strict_priority = strict;
        w
    }

    #[test]
    fn strict_order_is_as_written_and_weights_draw_in_proportion() {
        let queues = vec!["urgent".to_string(), "default".to_string()];
        let strict = settings(&["urgent", "default"], &[5, 1], true);
        assert_eq!(
            claim_order(&queues, &queues, &strict),
            vec!["urgent", "default"]
        );
        let weighted = settings(&["urgent", "default"], &[5, 1], false);
        let mut urgent_first = 0;
        for _ in 0..3000 {
            let order = claim_order(&queues, &queues, &weighted);
            assert_eq!(order.len(), 2);
            if order[0] == "urgent" {
                urgent_first += 1;
            }
        }
        // 5 in 6 expected (2500); the bounds are more than ten standard deviations wide.
        assert!((2250..=2750).contains(&urgent_first), "{urgent_first}");
    }
}
