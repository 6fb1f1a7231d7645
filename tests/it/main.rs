//! Integration tests: real `redis-server`, the real Docker engine, the real binary.
//! One test binary; fixtures in `common`.

mod api;
mod api_sse;
mod build;
mod cli;
mod common;
mod examples;
mod files;
mod first_hour;
mod git_jobs;
mod git_source;
mod intake;
mod jobs;
mod logs;
mod policy;
mod profiles;
mod recovery;
mod resilience;
mod result_urls;
mod results;
mod services;
mod soak;
mod webhook_send;
mod webhooks;
