//! Named output pipes (`outputs[] {path, pipe: true, upload}`): a FIFO
//! bind-mounted at `/dockhand/output/<path>`, which the job writes while it
//! runs and the worker streams to the upload URL as it comes (chunked: the
//! size is not known in advance), hashing it on the way.
//!
//! Invariants:
//! - The worker opens its end only for reading, and blocks for the job's
//!   writer on a blocking thread; when the run ends, a pipe the job never
//!   opened is released (the worker opens and closes a writer itself) and
//!   counts as no file, not as an empty one.
//! - At most a few chunks are in memory; nothing is written to disk.

use super::http::{self, Checked};
use super::outbound::{Outbound, TransferError};
use super::uploads::Uploaded;
use crate::job::UploadRule;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const CHUNK: usize = 64 << 10;
const IN_FLIGHT: usize = 8;

#[derive(Default)]
pub(super) struct Pipes {
    pipes: Vec<Pipe>,
    running: Vec<Running>,
}

/// A pipe being read: its FIFO, whether the run is over, its upload.
type Running = (
    PathBuf,
    Arc<AtomicBool>,
    JoinHandle<Result<Option<Uploaded>, TransferError>>,
);

struct Pipe {
    rule: UploadRule,
    to: Checked,
    fifo: PathBuf,
}

impl Pipes {
    /// Makes a FIFO for each pipe rule in `dir` (writable by any user the job
    /// runs as); `to` are the rules' checked hosts.
    pub(super) fn prepare(
        rules: Vec<(UploadRule, Checked)>,
        dir: &Path,
    ) -> Result<Pipes, TransferError> {
        let mut pipes = Vec::new();
        for (rule, to) in rules {
            let what = format!("output pipe {} (outputs[{}])", rule.pattern, rule.index);
            let local = |action, source| TransferError::Local {
                what: what.clone(),
                action,
                source,
            };
            std::fs::create_dir_all(dir).map_err(|e| local("make the pipes' folder", e))?;
            let fifo = dir.join(format!("out-{}", rule.index));
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &fifo,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o666),
                0,
            )
            .map_err(|e| local("make a named pipe", e.into()))?;
            // mknod applies the umask; the job may run as any user.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| local("open the named pipe to the job", e))?;
            pipes.push(Pipe { rule, to, fifo });
        }
        Ok(Pipes {
            pipes,
            running: Vec::new(),
        })
    }

    pub(super) fn mounts(&self) -> Vec<bollard::models::Mount> {
        self.pipes
            .iter()
            .map(|p| bollard::models::Mount {
                target: Some(format!("{}/{}", crate::job::OUTPUT_DIR, p.rule.pattern)),
                source: Some(p.fifo.to_string_lossy().into_owned()),
                typ: Some(bollard::models::MountType::BIND),
                // A FIFO is written through a read-only mount all the same; the
                // job cannot replace or chmod it.
                read_only: Some(true),
                ..Default::default()
            })
            .collect()
    }

    /// Starts reading each pipe; each upload starts when the job opens its end.
    pub(super) fn start(&mut self, out: &Outbound) {
        for pipe in self.pipes.drain(..) {
            let closing = Arc::new(AtomicBool::new(false));
            let fifo = pipe.fifo.clone();
            let task = tokio::spawn(stream_pipe(pipe, out.clone(), closing.clone()));
            self.running.push((fifo, closing, task));
        }
    }

    /// After the container stopped: releases pipes never opened, waits for each
    /// upload to end, and returns what was uploaded (or the first failure).
    pub(super) async fn finish(&mut self) -> Result<Vec<Uploaded>, TransferError> {
        let mut done = Vec::new();
        let mut first = None;
        for (fifo, closing, task) in self.running.drain(..) {
            closing.store(true, Ordering::SeqCst);
            // A reader still waiting in open() for a writer gets one, and EOF.
            let _ = tokio::net::unix::pipe::OpenOptions::new().open_sender(&fifo);
            match task.await {
                Ok(Ok(Some(u))) => done.push(u),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    first.get_or_insert(e);
                }
                Err(e) => {
                    first.get_or_insert(TransferError::Local {
                        what: "an output pipe".into(),
                        action: "finish its upload",
                        source: std::io::Error::other(e.to_string()),
                    });
                }
            }
        }
        first.map_or(Ok(done), Err)
    }
}

async fn stream_pipe(
    pipe: Pipe,
    out: Outbound,
    closing: Arc<AtomicBool>,
) -> Result<Option<Uploaded>, TransferError> {
    let name = pipe.rule.pattern.clone();
    let what = format!("output pipe {name} (outputs[{}])", pipe.rule.index);
    let path = pipe.fifo.clone();
    // Blocks until the job opens its end for writing (or `finish` does).
    let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
        .await
        .map_err(|e| TransferError::Local {
            what: what.clone(),
            action: "wait for the job to open it",
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|source| TransferError::Local {
            what: what.clone(),
            action: "open it",
            source,
        })?;
    let opened_by_us = closing.load(Ordering::SeqCst);
    let mut rx = tokio::net::unix::pipe::Receiver::from_file(file).map_err(|source| {
        TransferError::Local {
            what: what.clone(),
            action: "read it",
            source,
        }
    })?;
    let mut buf = vec![0u8; CHUNK];
    let first = rx
        .read(&mut buf)
        .await
        .map_err(|source| TransferError::Local {
            what: what.clone(),
            action: "read it",
            source,
        })?;
    if first == 0 && opened_by_us {
        return Ok(None); // the job never wrote it
    }
    let url = pipe.rule.url_for(&name);
    let to = pipe.to.for_url(&what, &url)?;
    let (tx, body_rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(IN_FLIGHT);
    let body = StreamBody::new(futures_util::stream::unfold(body_rx, |mut r| async move {
        r.recv().await.map(|c| (c, r))
    }))
    .boxed();
    let headers: Vec<(String, String)> = pipe
        .rule
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let method =
        hyper::Method::from_bytes(pipe.rule.method.as_bytes()).unwrap_or(hyper::Method::PUT);
    let req_what = what.clone();
    let req_out = out.clone();
    let request = tokio::spawn(async move {
        let ex = http::send(
            &req_what,
            &to,
            method,
            &headers,
            None,
            body,
            &req_out.tls,
            req_out.connect,
            Duration::from_secs(7 * 24 * 3600),
        )
        .await?;
        let status = ex.response.status();
        if !status.is_success() {
            return Err(TransferError::Status {
                what: req_what,
                url: to.public.clone(),
                status: status.as_u16(),
            });
        }
        Ok(to.public.clone())
    });
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut n = first;
    while n > 0 {
        hasher.update(&buf[..n]);
        size += n as u64;
        let frame = Ok(Frame::data(Bytes::copy_from_slice(&buf[..n])));
        match tx.send_timeout(frame, out.idle).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                request.abort();
                return Err(TransferError::Timeout {
                    what,
                    url: crate::job::public_url(&url),
                    phase: "with no data accepted (policy.transfer_idle_seconds)",
                });
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => break,
        }
        n = rx
            .read(&mut buf)
            .await
            .map_err(|source| TransferError::Local {
                what: what.clone(),
                action: "read it",
                source,
            })?;
    }
    drop(tx);
    let location = request.await.map_err(|e| TransferError::Local {
        what: what.clone(),
        action: "finish the upload",
        source: std::io::Error::other(e.to_string()),
    })??;
    Ok(Some(Uploaded {
        name,
        size,
        sha256: hex::encode(hasher.finalize()),
        location,
    }))
}
