//! Integration tests: real `redis-server`, the real Docker engine, the real binary.
//! One test binary; fixtures in `common`.

mod api;
mod api_sse;
mod batches;
mod build;
mod cli;
mod common;
mod dashboard;
mod dependencies;
mod examples;
mod files;
mod first_hour;
mod git_jobs;
mod git_source;
mod in_container;
mod intake;
mod jobs;
mod limits;
mod local_executor;
mod logs;
mod metrics;
mod policy;
mod priorities;
mod profiles;
mod progress;
mod recovery;
mod resilience;
mod result_urls;
mod results;
mod schedules;
mod services;
mod soak;
mod ssh_executor;
mod streams;
mod webhook_send;
mod webhooks;
