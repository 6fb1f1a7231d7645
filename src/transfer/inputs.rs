//! `inputs[].url`: downloaded into the created container before it starts (a
//! tar stream through Docker's archive API, nothing on the worker's disk), or,
//! with `stream`, fed through a named pipe bind-mounted read-only at
//! `/dockhand/input/<path>` while the job runs.
//!
//! Invariants:
//! - Sizes: a declared Content-Length over `policy.input_max_bytes` (or over
//!   what is left of `policy.input_total_bytes`) is refused before the body is
//!   read; a body is counted as it arrives and cut at either limit.
//! - Digest: the last chunk of a body is held back until the whole body is
//!   hashed; on a mismatch it is never passed on, the transfer fails naming
//!   the input, and the container never sees a complete wrong input.
//! - A feed runs only while its run does: [`Inputs::finish`] stops it.

use super::http::{self, Checked};
use super::outbound::{Outbound, TransferError};
use crate::job::{Job, RemoteInput};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks in flight between the server and the container: small and bounded,
/// so a slow reader slows the download instead of filling the worker's memory.
const IN_FLIGHT: usize = 8;

#[derive(Default)]
pub(super) struct Inputs {
    items: Vec<Item>,
    total: Arc<AtomicU64>,
    feeds: Vec<JoinHandle<()>>,
    failures: Option<mpsc::Receiver<TransferError>>,
}

struct Item {
    input: RemoteInput,
    to: Checked,
    /// The named pipe on the worker's host, for a streamed input.
    fifo: Option<PathBuf>,
}

impl Inputs {
    pub(super) async fn prepare(
        job: &Job,
        out: &Outbound,
        dir: Option<&Path>,
    ) -> Result<Inputs, TransferError> {
        let mut items = Vec::new();
        // Every host first: one refused input refuses the job before anything
        // is made or connected.
        for input in &job.remote_inputs {
            let to =
                http::resolve_checked(&input.name(), &input.url, &out.inputs, out.connect).await?;
            items.push(Item {
                input: input.clone(),
                to,
                fifo: None,
            });
        }
        if let Some(dir) = dir {
            let local = |action, source| TransferError::Local {
                what: "the streamed inputs".into(),
                action,
                source,
            };
            std::fs::create_dir_all(dir).map_err(|e| local("make the pipes' folder", e))?;
            for item in items.iter_mut().filter(|i| i.input.stream) {
                let path = dir.join(format!("in-{}", item.input.index));
                // Readable by any user the job runs as; written only by the worker.
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                )
                .map_err(|e| local("make a named pipe", e.into()))?;
                item.fifo = Some(path);
            }
        }
        Ok(Inputs {
            items,
            ..Inputs::default()
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn mounts(&self) -> Vec<bollard::models::Mount> {
        self.items
            .iter()
            .filter_map(|i| {
                let fifo = i.fifo.as_ref()?;
                Some(bollard::models::Mount {
                    target: Some(format!("{}/{}", crate::job::INPUT_DIR, i.input.path)),
                    source: Some(fifo.to_string_lossy().into_owned()),
                    typ: Some(bollard::models::MountType::BIND),
                    read_only: Some(true),
                    ..Default::default()
                })
            })
            .collect()
    }

    /// Opens `item`'s download and checks its status and declared size.
    async fn open(
        &self,
        item: &Item,
        out: &Outbound,
    ) -> Result<(http::Exchange, Option<u64>), TransferError> {
        let what = item.input.name();
        let ex = http::send(
            &what,
            &item.to,
            hyper::Method::GET,
            &[],
            None,
            Empty::new().map_err(|never| match never {}).boxed(),
            &out.tls,
            out.connect,
            out.connect,
        )
        .await?;
        let status = ex.response.status();
        if !status.is_success() {
            return Err(TransferError::Status {
                what,
                url: item.to.public.clone(),
                status: status.as_u16(),
            });
        }
        let length = ex
            .response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = length {
            self.reserve(&what, n, out)?;
        }
        Ok((ex, length))
    }

    /// Counts `n` more bytes against both limits.
    fn reserve(&self, what: &str, n: u64, out: &Outbound) -> Result<(), TransferError> {
        if n > out.input_max {
            return Err(TransferError::TooLarge {
                what: what.to_string(),
                limit: out.input_max,
                setting: "policy.input_max_bytes",
            });
        }
        let before = self.total.fetch_add(n, Ordering::SeqCst);
        if before + n > out.input_total {
            return Err(TransferError::TooLarge {
                what: "the URL inputs together".into(),
                limit: out.input_total,
                setting: "policy.input_total_bytes",
            });
        }
        Ok(())
    }

    pub(super) async fn download_into(
        &mut self,
        docker: &bollard::Docker,
        container: &str,
        root: &str,
        out: &Outbound,
        deadline: tokio::time::Instant,
    ) -> Result<(), TransferError> {
        for item in self.items.iter().filter(|i| !i.input.stream) {
            let what = item.input.name();
            let (ex, length) = self.open(item, out).await?;
            let Some(size) = length else {
                return Err(TransferError::NoLength {
                    what,
                    url: item.to.public.clone(),
                });
            };
            let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(IN_FLIGHT);
            let name = format!(
                "{}/{}",
                crate::job::INPUT_DIR.trim_start_matches('/'),
                item.input.path
            );
            let name = match root.trim_start_matches('/') {
                "" => name,
                r => name
                    .strip_prefix(r)
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or(name),
            };
            let header = entry_header(&name, size).map_err(|source| TransferError::Local {
                what: what.clone(),
                action: "name the file in the archive",
                source,
            })?;
            let digest = item.input.sha256.clone();
            let idle = out.idle;
            let pump_what = what.clone();
            // The archive: the header, the body as it comes, padding, the end.
            let pump = async move {
                tx.send(Ok(Bytes::from(header))).await.ok();
                let (chunks, mut from) = mpsc::channel::<Bytes>(IN_FLIGHT);
                let forward = async {
                    while let Some(c) = from.recv().await {
                        if tx.send(Ok(c)).await.is_err() {
                            break;
                        }
                    }
                };
                let (fed, ()) = tokio::join!(
                    feed(ex, size, digest, idle, &pump_what, chunks, |_| false),
                    forward
                );
                match fed {
                    Ok(()) => {
                        let pad = (512 - size % 512) % 512;
                        let mut end = vec![0u8; pad as usize];
                        end.extend_from_slice(&[0u8; 1024]);
                        tx.send(Ok(Bytes::from(end))).await.ok();
                        Ok(())
                    }
                    Err(e) => {
                        // Docker then refuses the whole archive.
                        tx.send(Err(std::io::Error::other("the download failed")))
                            .await
                            .ok();
                        Err(e)
                    }
                }
            };
            let body = tokio_stream_from(rx);
            let opts = bollard::query_parameters::UploadToContainerOptionsBuilder::default()
                .path(root)
                .build();
            let upload =
                docker.upload_to_container(container, Some(opts), bollard::body_try_stream(body));
            let both = async { tokio::join!(pump, upload) };
            let (pumped, uploaded) =
                tokio::time::timeout_at(deadline, both).await.map_err(|_| {
                    TransferError::Timeout {
                        what: what.clone(),
                        url: item.to.public.clone(),
                        phase: "before the job's time limit (limits.timeout_seconds)",
                    }
                })?;
            pumped?;
            uploaded.map_err(|source| TransferError::Docker { what, source })?;
        }
        Ok(())
    }

    pub(super) async fn start_streams(&mut self, out: &Outbound) -> Result<(), TransferError> {
        let (fail_tx, fail_rx) = mpsc::channel(self.items.len().max(1));
        for item in self.items.iter().filter(|i| i.input.stream) {
            let what = item.input.name();
            let (ex, length) = self.open(item, out).await?;
            let fifo = item.fifo.clone().expect("a streamed input has its pipe");
            // Read and write: the open never waits for the container to open
            // its end, and the container's open never waits for a writer.
            let mut pipe = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(&fifo)
                .map_err(|source| TransferError::Local {
                    what: what.clone(),
                    action: "open its named pipe",
                    source,
                })?;
            let digest = item.input.sha256.clone();
            let idle = out.idle;
            let total = self.total.clone();
            let (max, total_max) = (out.input_max, out.input_total);
            let fail_tx = fail_tx.clone();
            self.feeds.push(tokio::spawn(async move {
                let (chunks, mut from) = mpsc::channel::<Bytes>(IN_FLIGHT);
                let write = async {
                    while let Some(c) = from.recv().await {
                        if pipe.write_all(&c).await.is_err() {
                            break;
                        }
                    }
                    // Closing the pipe is the job's end of file.
                    drop(pipe);
                };
                let mut seen = 0u64;
                // Without a declared length the body is counted as it comes.
                let over = |n: u64| {
                    seen += n;
                    length.is_none()
                        && (seen > max || total.fetch_add(n, Ordering::SeqCst) + n > total_max)
                };
                let size = length.unwrap_or(u64::MAX);
                let (result, ()) =
                    tokio::join!(feed(ex, size, digest, idle, &what, chunks, over), write);
                if let Err(e) = result {
                    let _ = fail_tx.send(e).await;
                }
            }));
        }
        self.failures = Some(fail_rx);
        Ok(())
    }

    pub(super) async fn failed(&mut self) -> TransferError {
        match self.failures.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(e) => e,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    pub(super) async fn finish(&mut self) -> Result<(), TransferError> {
        for feed in self.feeds.drain(..) {
            // The container is gone: nobody reads the rest.
            feed.abort();
        }
        match self.failures.as_mut().map(|rx| rx.try_recv()) {
            Some(Ok(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

/// The archive's header blocks for a regular file `name` of `size` bytes, whose
/// content follows: tar's builder writes them (with a GNU long-name entry
/// first for a name over 100 bytes), given no content and no end blocks.
fn entry_header(name: &str, size: u64) -> std::io::Result<Vec<u8>> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(size);
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_data(&mut header, name, std::io::empty())?;
    let mut bytes = builder.into_inner()?;
    // `into_inner` ends the archive with two zero blocks; the content comes next.
    bytes.truncate(bytes.len().saturating_sub(1024));
    Ok(bytes)
}

fn tokio_stream_from(
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// Reads `ex`'s body and passes it on chunk by chunk into `to`, at most `size`
/// bytes (and not past `over`, told each chunk's size), each read within
/// `idle`. With `digest`, the last chunk is held back until the whole body is
/// hashed, and not passed on when it does not match.
async fn feed(
    ex: http::Exchange,
    size: u64,
    digest: Option<String>,
    idle: std::time::Duration,
    what: &str,
    to: mpsc::Sender<Bytes>,
    mut over: impl FnMut(u64) -> bool,
) -> Result<(), TransferError> {
    let http::Exchange {
        response,
        driver: _driver,
    } = ex;
    let mut body = response.into_body().into_data_stream();
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let mut held: Option<Bytes> = None;
    let gone = || TransferError::Local {
        what: what.to_string(),
        action: "pass it on",
        source: std::io::Error::other("its reader is gone"),
    };
    loop {
        let next =
            tokio::time::timeout(idle, body.next())
                .await
                .map_err(|_| TransferError::Timeout {
                    what: what.to_string(),
                    url: String::from("its server"),
                    phase: "with no data (policy.transfer_idle_seconds)",
                })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| TransferError::Http {
            what: what.to_string(),
            url: String::from("its server"),
            source: Box::new(e),
        })?;
        got += chunk.len() as u64;
        if got > size || over(chunk.len() as u64) {
            return Err(TransferError::TooLarge {
                what: what.to_string(),
                limit: size.min(got),
                setting: "its Content-Length, policy.input_max_bytes or policy.input_total_bytes",
            });
        }
        hasher.update(&chunk);
        if let Some(prev) = held.take() {
            to.send(prev).await.map_err(|_| gone())?;
        }
        held = Some(chunk);
    }
    if size != u64::MAX && got < size {
        return Err(TransferError::Short {
            what: what.to_string(),
            got,
            want: size,
        });
    }
    if let Some(want) = digest {
        let have = hex::encode(hasher.finalize());
        if have != want {
            return Err(TransferError::Digest {
                what: what.to_string(),
                want,
                got: have,
            });
        }
    }
    if let Some(last) = held {
        to.send(last).await.map_err(|_| gone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_entry_reads_back_whatever_the_name_length() {
        for name in [
            "dockhand/input/a.bin".to_string(),
            format!("dockhand/input/{}", "n".repeat(300)),
        ] {
            let mut archive = entry_header(&name, 3).unwrap();
            archive.extend_from_slice(b"abc");
            archive.extend_from_slice(&[0u8; 509 + 1024]);
            let mut read = tar::Archive::new(archive.as_slice());
            let mut entries = read.entries().unwrap();
            let mut e = entries.next().unwrap().unwrap();
            assert_eq!(e.path().unwrap().to_str().unwrap(), name);
            let mut content = String::new();
            std::io::Read::read_to_string(&mut e, &mut content).unwrap();
            assert_eq!(content, "abc");
            assert!(entries.next().is_none());
        }
    }
}
