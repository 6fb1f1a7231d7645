//! The result URLs: per job, an unguessable `RESPONSE_URL` and `ABORT_URL` on
//! the worker, where the job's container POSTs its result, and `PROGRESS_URL`,
//! where it reports its progress as often as it likes.
//!
//! [`ResultServer::start`] listens (HTTP/1); [`ResultServer::register`] opens the three
//! URLs of one job and returns a [`Registration`]; the worker reads what was posted
//! with [`Registration::take`] once the container exited, and follows progress
//! reports with [`Registration::progress`] while it runs. This module only serves
//! and keeps posts; deciding what a post means for the job is the worker's part.
//!
//! Invariants:
//!
//! - A URL is `http://<host>:<port>/results/<token>/response` (or `/abort`), the
//!   token 128 bits from the OS's random source, in hex. Knowing one job's URLs
//!   tells nothing about another's, and the token is never logged.
//! - The URLs live exactly as long as their [`Registration`]: dropping it answers
//!   404 from then on (the job is over).
//! - One result per registration: the first valid POST to either result URL is kept, and
//!   any POST after it is 409 Conflict. A refused POST (400, 413) keeps nothing, so
//!   the job may fix its request and try again.
//! - `PROGRESS_URL` takes any number of reports ([`Progress`], checked by
//!   [`progress`]'s rules, bodies of at most [`PROGRESS_MAX_BYTES`]) until the
//!   registration is dropped, also after a result; only the latest is kept for the
//!   worker to read. It counts against the same per-job connection cap.
//! - Result files (multipart parts with a file name) total at most the registered
//!   `limit_bytes` (the job's `limits.output_bytes`), and the whole body at most
//!   that plus [`Limits::fields_bytes`]; the body cap is enforced while the body is
//!   read, so memory stays bounded, and going over is a 413 naming the limit:
//!   never a silent drop.
//! - Nothing a client does holds the server's resources without bound
//!   ([`Limits`]): connections are capped overall (one past the cap is closed at
//!   once) and per job (429), a request's headers and its body must each arrive
//!   within the read timeout (else the connection is closed, or 408), and a body
//!   has at most so many fields and files (413). Parsing a body runs on a blocking
//!   thread, a few at a time, never on the runtime's threads.
//! - Answers: 200 `{"ok":true}` (plus `"ignored":[…]` naming unknown fields),
//!   400 / 404 / 405 / 408 / 409 / 413 / 429 with a one-line reason in plain text.
//!
//! Reaching the server from a container is the caller's concern: it listens on
//! `bind` (`results.bind`), and URLs carry the `base_url_host` given to
//! [`ResultServer::start`], e.g. the gateway address of the job's network.

mod handler;
mod parse;
pub mod progress;
mod registry;
mod server;

pub use progress::{Progress, PROGRESS_MAX_BYTES};
pub use server::{Registration, ResultServer};

use std::time::Duration;

/// Room in one POST for the fields and the encoding, on top of the job's
/// output limit, by default: a body larger than `limit_bytes + FIELDS_BYTES` is
/// refused.
pub const FIELDS_BYTES: u64 = 1 << 20;

/// What the server lets its clients hold; the keys of `[results]` of the same
/// names. [`Limits::default`] is what `config/default.toml` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, all jobs together (`max_connections`); one past
    /// it is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Requests to one job's URLs in progress at once
    /// (`max_connections_per_job`); one past it is answered 429.
    pub max_connections_per_job: usize,
    /// Room for the fields on top of the job's output limit (`fields_bytes`).
    pub fields_bytes: u64,
    /// How long a request's headers, and then its body, may take to arrive
    /// (`read_timeout_seconds`); an idle connection is closed after it too.
    pub read_timeout: Duration,
    /// Fields in one body (`max_fields`), known or not, files apart.
    pub max_fields: usize,
    /// Files in one multipart body (`max_files`).
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            max_connections_per_job: 8,
            fields_bytes: FIELDS_BYTES,
            read_timeout: Duration::from_secs(30),
            max_fields: 100,
            max_files: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot listen for result URLs on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the address the result server listens on")]
    LocalAddr(#[source] std::io::Error),
    #[error("cannot draw a random token for a result URL")]
    Random(#[source] std::io::Error),
}

/// Which URL a post came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostKind {
    /// `RESPONSE_URL`: the job is `completed` with this result.
    Response,
    /// `ABORT_URL`: the job is `aborted`, reason `aborted_by_job`.
    Abort,
}

impl PostKind {
    /// The environment variable that carries this URL into the container.
    pub fn url_name(self) -> &'static str {
        match self {
            PostKind::Response => "RESPONSE_URL",
            PostKind::Abort => "ABORT_URL",
        }
    }

    fn text_field(self) -> &'static str {
        match self {
            PostKind::Response => "result_text",
            PostKind::Abort => "error_text",
        }
    }

    fn data_field(self) -> &'static str {
        match self {
            PostKind::Response => "result_data",
            PostKind::Abort => "error_data",
        }
    }

    fn other(self) -> PostKind {
        match self {
            PostKind::Response => PostKind::Abort,
            PostKind::Abort => PostKind::Response,
        }
    }
}

/// What a job posted to one of its URLs.
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    pub kind: PostKind,
    /// `result_text` or `error_text`.
    pub text: Option<String>,
    /// `result_data` or `error_data`; JSON `null` reads as absent.
    pub data: Option<serde_json::Value>,
    /// Result files from multipart parts with a file name, in the order sent.
    pub files: Vec<(String, Vec<u8>)>,
    /// What was ignored, each with why (`field "x" (unknown, ignored)`).
    pub dropped: Vec<String>,
}
