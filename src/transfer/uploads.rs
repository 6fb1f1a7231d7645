//! Output uploads: a file of the container's output archive streamed to its
//! rule's URL as it is read, with its size declared (`Content-Length`, from
//! the archive entry: object stores want it) and its sha256 computed on the way.
//!
//! Invariants:
//! - At most a few chunks of a file are in memory at once (a bounded channel
//!   between the archive reader and the request body); nothing is written to
//!   the worker's disk.
//! - Hosts were checked in `Transfers::prepare`; an upload connects only to
//!   those addresses, and a rule's URL with `{name}` filled in must keep its
//!   host.
//! - A failed upload (refused, timed out, not 2xx) is an error naming the file.

use super::http::{self, Checked};
use super::outbound::{Outbound, TransferError};
use crate::job::{Job, UploadRule, UploadWhen};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Read size from the archive, and chunks in flight to the server.
const CHUNK: usize = 64 << 10;
const IN_FLIGHT: usize = 8;

/// A file that went to an upload URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// The URL without its query.
    pub location: String,
}

/// The job's upload rules with their checked hosts; cheap to clone.
#[derive(Clone, Default)]
pub struct Uploader {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    rules: Vec<(UploadRule, Checked)>,
    out: Outbound,
}

impl Uploader {
    pub(super) async fn prepare(job: &Job, out: &Outbound) -> Result<Uploader, TransferError> {
        let mut rules = Vec::new();
        for rule in &job.uploads {
            let what = format!("outputs[{}]", rule.index);
            // The host is the same whatever `{name}` becomes (checked per file).
            let to =
                http::resolve_checked(&what, &rule.url_for("x"), &out.uploads, out.connect).await?;
            rules.push((rule.clone(), to));
        }
        Ok(Uploader {
            inner: (!rules.is_empty()).then(|| {
                Arc::new(Inner {
                    rules,
                    out: out.clone(),
                })
            }),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// The rules whose file is a named pipe, with their checked hosts.
    pub(super) fn pipe_rules(&self) -> Vec<(UploadRule, Checked)> {
        self.inner.as_ref().map_or_else(Vec::new, |i| {
            i.rules.iter().filter(|(r, _)| r.pipe).cloned().collect()
        })
    }

    /// Whether `name` is a named output pipe (streamed while the job ran; its
    /// mount point in the output archive is no file).
    pub fn is_pipe(&self, name: &str) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| i.rules.iter().any(|(r, _)| r.pipe && r.pattern == name))
    }

    /// The first rule for the output file `name`: an `always` rule, or, when the
    /// file does not fit in `limits.output_bytes`, an `overflow` one.
    pub fn rule_for(&self, name: &str, fits: bool) -> Option<usize> {
        let inner = self.inner.as_ref()?;
        inner.rules.iter().position(|(r, _)| {
            !r.pipe && r.matches(name) && (r.when == UploadWhen::Always || !fits)
        })
    }

    /// Sends `size` bytes of `reader` to rule `rule`'s URL for `name`. Runs on
    /// a blocking thread (the archive is read synchronously); the request runs
    /// on `rt`.
    pub fn upload_blocking(
        &self,
        rule: usize,
        name: &str,
        size: u64,
        reader: &mut dyn Read,
        rt: &tokio::runtime::Handle,
    ) -> Result<Uploaded, TransferError> {
        let inner = self.inner.as_ref().expect("a rule was found");
        let (rule, checked) = &inner.rules[rule];
        let what = format!("output {name} (outputs[{}])", rule.index);
        let url = rule.url_for(name);
        let to = checked.for_url(&what, &url)?;
        let out = inner.out.clone();
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(IN_FLIGHT);
        let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        }))
        .boxed();
        let headers: Vec<(String, String)> = rule
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let method =
            hyper::Method::from_bytes(rule.method.as_bytes()).unwrap_or(hyper::Method::PUT);
        let task_what = what.clone();
        let request = rt.spawn(async move {
            let ex = http::send(
                &task_what,
                &to,
                method,
                &headers,
                Some(size),
                body,
                &out.tls,
                out.connect,
                // The answer comes after the body; its pace is bounded below.
                Duration::from_secs(7 * 24 * 3600),
            )
            .await?;
            let status = ex.response.status();
            if !status.is_success() {
                return Err(TransferError::Status {
                    what: task_what,
                    url: to.public.clone(),
                    status: status.as_u16(),
                });
            }
            Ok(to.public.clone())
        });
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        let mut buf = vec![0u8; CHUNK];
        let idle = inner.out.idle;
        let mut stalled = false;
        while sent < size {
            let want = CHUNK.min((size - sent) as usize);
            let n = reader
                .read(&mut buf[..want])
                .map_err(|source| TransferError::Local {
                    what: what.clone(),
                    action: "read it from the container",
                    source,
                })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            sent += n as u64;
            let chunk = Ok(Frame::data(Bytes::copy_from_slice(&buf[..n])));
            match rt.block_on(tx.send_timeout(chunk, idle)) {
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    stalled = true;
                    break;
                }
                // The request ended early: its result says why.
                Err(mpsc::error::SendTimeoutError::Closed(_)) => break,
            }
        }
        drop(tx);
        if stalled {
            request.abort();
            return Err(TransferError::Timeout {
                what,
                url: crate::job::public_url(&url),
                phase: "with no data accepted (policy.transfer_idle_seconds)",
            });
        }
        let location = rt.block_on(request).map_err(|e| TransferError::Local {
            what: what.clone(),
            action: "finish the upload",
            source: std::io::Error::other(e.to_string()),
        })??;
        if sent < size {
            return Err(TransferError::Short {
                what,
                got: sent,
                want: size,
            });
        }
        Ok(Uploaded {
            name: name.to_string(),
            size,
            sha256: hex::encode(hasher.finalize()),
            location,
        })
    }
}
