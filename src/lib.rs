//! Dockhand: a Redis-backed task queue whose jobs are containers.
//!
//! # Layout
//!
//! A job flows through the modules in this order; a module uses only those above
//! it in this list (and the leaves at the end), never one below.
//!
//! - [`cli`]: the `dockhand` commands other than `worker`, each a thin use of the rest.
//! - [`api`]: `dockhand serve`: the HTTP API, SSE, metrics and the dashboard.
//! - [`admin`]: what an operator reads and does, as data (the CLI prints it, the API serves it).
//! - [`worker`]: the loop that holds permits and takes each claimed entry through
//!   its turn: admit → prepare the image → run → conclude → record → end.
//! - [`executor`]: Docker via bollard: build, create, stage files, start, wait, collect, remove.
//! - [`result_server`]: the per-job `RESPONSE_URL` / `ABORT_URL` server a container posts its result to.
//! - [`logs`]: container output split into lines, numbered, published and stored.
//! - [`profile`]: named job templates a job's fields override.
//! - [`deps`]: jobs waiting for others (`after`): the wait, its release, its timeout.
//! - [`batch`]: jobs counted by batch, and the one `batch.completed` of each.
//! - [`state`]: the job hash, its transitions and the events they publish.
//! - [`listing`]: the indexes that list jobs newest first, and paged reads over them.
//! - [`limits`]: fleet-wide concurrency and rate limits on a job's `concurrency_key`.
//! - [`job`]: the job spec a producer writes, and its validation.
//! - [`source`]: jobs from git: refs resolved, commits checked out with submodules, from a mirror cache.
//! - [`webhook`]: subscribers, signing, and durable delivery with retries.
//! - [`metrics`]: fleet-wide counters and histograms kept in Redis, and the
//!   Prometheus text writer (workers add to them; `serve` renders them).
//! - [`queue`]: key names, the inbox mover, consumer groups, claiming, leases and acking.
//! - [`store`]: Redis connection pools (ordinary and blocking commands), finding the master through Sentinel, and retrying a step while Redis is away.
//! - [`config`]: typed settings, loaded once and passed down; imports nothing of the project.
//!
//! - [`ssrf`]: the SSRF guard, which addresses a URL from outside may reach (pure;
//!   used by `webhook` and `source`).
//!
//! Leaves, used from anywhere: [`backoff`] (retry delays with jitter), [`telemetry`]
//! (tracing set-up, error chains), [`time`] (timestamps as Dockhand writes them).
//! `docs/architecture.md` draws the graph and says what each module owns.

pub mod admin;
pub mod api;
pub mod backoff;
pub mod batch;
pub mod cli;
pub mod config;
pub mod deps;
pub mod executor;
pub mod job;
pub mod limits;
pub mod listing;
pub mod logs;
pub mod metrics;
pub mod profile;
pub mod queue;
pub mod result_server;
pub mod source;
pub mod ssrf;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod transfer;
pub mod webhook;
pub mod worker;
