//! Dockhand: a Redis-backed task queue whose jobs are containers.
//!
//! # Layout
//!
//! A job flows through the modules in this order:
//!
//! - [`config`]: typed settings, loaded once and passed down.
//! - [`job`]: the job spec a producer writes, and its validation.
//! - [`profile`]: named job templates a job's fields override.
//! - [`store`]: Redis connection pools (ordinary and blocking commands).
//! - [`queue`]: key names, the inbox mover, consumer groups, claiming and acking.
//! - [`worker`]: the loop that holds permits and drives each job's pipeline.
//! - [`source`]: jobs from git: refs resolved, commits checked out with submodules, from a mirror cache.
//! - [`executor`]: Docker via bollard: create, stage files, start, wait, collect, remove.
//! - [`results`]: the per-job `RESPONSE_URL` / `ABORT_URL` server a container posts its result to.
//! - [`logs`]: container output split into lines, numbered, published and stored.
//! - [`state`]: the job hash, its transitions and the events they publish.
//! - [`webhook`]: subscribers, signing, the SSRF guard, and durable delivery with retries.
//! - [`backoff`]: retry delays with jitter, shared by every reconnect loop.
//! - [`cli`]: the `dockhand` commands other than `worker`.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod executor;
pub mod job;
pub mod logs;
pub mod profile;
pub mod queue;
pub mod results;
pub mod size;
pub mod source;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod webhook;
pub mod worker;
