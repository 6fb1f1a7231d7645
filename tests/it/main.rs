//! Integration tests: real `redis-server`, the real Docker engine, the real binary.
//! One test binary; fixtures in `common`.

mod cli;
mod common;
mod examples;
mod files;
mod intake;
mod jobs;
mod logs;
mod resilience;
