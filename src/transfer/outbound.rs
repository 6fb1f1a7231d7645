//! How the worker may connect for a job's data (the guards, TLS, timeouts and
//! size limits, from its settings), and what can go wrong doing so.
//!
//! Invariant: every error names the input or output file it is about, and
//! shows a URL only without its query.

use crate::config::Settings;
use crate::ssrf::Guard;
use std::sync::Arc;
use std::time::Duration;

/// What went wrong moving a job's data; each names the input or output file.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{what}: {url} is not an http(s) URL")]
    Url { what: String, url: String },
    #[error("{what}: cannot resolve {host}")]
    Resolve {
        what: String,
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: refused to connect to {host}")]
    Refused {
        what: String,
        host: String,
        #[source]
        source: crate::ssrf::Refused,
    },
    #[error("{what}: {url} timed out {phase}")]
    Timeout {
        what: String,
        url: String,
        phase: &'static str,
    },
    #[error("{what}: request to {url} failed")]
    Http {
        what: String,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: {url} answered {status}")]
    Status {
        what: String,
        url: String,
        status: u16,
    },
    #[error("{what}: larger than {limit} bytes ({setting})")]
    TooLarge {
        what: String,
        limit: u64,
        setting: &'static str,
    },
    #[error("{what}: {url} needs a Content-Length to be staged before start; give the input \"stream\": true, or serve its length")]
    NoLength { what: String, url: String },
    #[error("{what}: sha256 mismatch: expected {want}, got {got}")]
    Digest {
        what: String,
        want: String,
        got: String,
    },
    #[error("{what}: the body ended after {got} of {want} bytes")]
    Short { what: String, got: u64, want: u64 },
    #[error("{what}: cannot {action}")]
    Local {
        what: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: Docker failed to take the file")]
    Docker {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl TransferError {
    /// A refusal by the guard: the job asked for what the policy forbids.
    pub fn is_denied(&self) -> bool {
        matches!(self, TransferError::Refused { .. })
    }
}

/// How the worker may connect, made from its settings.
#[derive(Clone)]
pub struct Outbound {
    pub inputs: Guard,
    pub uploads: Guard,
    pub tls: Arc<tokio_rustls::rustls::ClientConfig>,
    pub connect: Duration,
    pub idle: Duration,
    pub input_max: u64,
    pub input_total: u64,
}

impl Outbound {
    pub fn from_settings(settings: &Settings) -> Result<Outbound, TransferError> {
        let p = &settings.policy;
        let tls = if settings.webhooks.ca_file.is_empty() {
            crate::webhook::tls::public_roots()
        } else {
            crate::webhook::tls::client_config(&settings.webhooks.ca_file).map_err(|e| {
                TransferError::Local {
                    what: "webhooks.ca_file".into(),
                    action: "read the CA certificates",
                    source: std::io::Error::other(crate::telemetry::error_chain(&e)),
                }
            })?
        };
        Ok(Outbound {
            inputs: Guard::for_setting("policy.input_allow_networks", &p.input_allow_networks),
            uploads: Guard::for_setting("policy.upload_allow_networks", &p.upload_allow_networks),
            tls,
            connect: Duration::from_secs(p.transfer_connect_seconds),
            idle: Duration::from_secs(p.transfer_idle_seconds),
            input_max: p.input_max_bytes.0,
            input_total: p.input_total_bytes.0,
        })
    }
}
