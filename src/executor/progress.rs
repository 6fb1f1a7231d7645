//! `/dockhand/output/progress.json` read from a running container, for jobs that
//! report progress without a network: copied out through the Docker API (the same
//! means as the outputs after exit), every [`POLL`], and once more after exit
//! (`executor::runner` polls; this reads one copy).
//!
//! Invariants:
//! - What the job wrote is untrusted. At most [`PROGRESS_MAX_BYTES`] of content and
//!   a few tar headers are read of one copy (the rest of the stream is dropped
//!   unread), and only a regular file counts: a symlink, a FIFO, a folder or a
//!   file over the cap is a [`FileReport::Odd`] and nothing of it is read.
//! - A copy that fails (the file is absent, Docker is slow or errs) is "no news":
//!   it never fails the run, and the next poll tries again.
//! - Only a change is sent: the same bytes (or the same oddity) read again send
//!   nothing, so a file left alone costs one request per poll and no writes.

use crate::job::OUTPUT_DIR;
use crate::result_server::PROGRESS_MAX_BYTES;
use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use std::io::Read;
use std::time::Duration;
use tokio::sync::watch;

/// The file's name in the output folder.
pub const PROGRESS_FILE: &str = "progress.json";
/// How often the file is copied out while the container runs.
pub const POLL: Duration = Duration::from_secs(1);
/// Tar headers (the entry's, and GNU or PAX long-name ones) read besides the content.
const HEADER_ROOM: u64 = 4 << 10;

/// What one copy of the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileReport {
    /// The file's bytes, at most [`PROGRESS_MAX_BYTES`]; checking them is the reader's part.
    Content(Vec<u8>),
    /// Something that is not a report, and why (`a symlink`, `over 8192 bytes`).
    Odd(String),
}

/// Where a run sends what it reads of `progress.json`.
pub type ProgressFile = watch::Sender<Option<FileReport>>;

/// What a `progress.json` that is not a regular file within [`PROGRESS_MAX_BYTES`]
/// says instead of a report (`None`: it is one, to be read). Shared by the
/// executors that look at the file in place (local, SSH).
pub(super) fn odd_file(
    is_file: bool,
    is_symlink: bool,
    is_dir: bool,
    len: u64,
) -> Option<FileReport> {
    if !is_file {
        let what = if is_symlink {
            "a symlink"
        } else if is_dir {
            "a folder"
        } else {
            "not a regular file"
        };
        return Some(FileReport::Odd(what.into()));
    }
    (len > PROGRESS_MAX_BYTES).then(|| FileReport::Odd(format!("over {PROGRESS_MAX_BYTES} bytes")))
}

/// `progress.json` at `path` on this host (a local run's folder, or a
/// container's bound one while the job runs and may change it): only a regular
/// file within [`PROGRESS_MAX_BYTES`] is content. It is looked at without
/// following a link, then opened without following one and without blocking
/// (a FIFO put in its place in between), and the open file is checked again:
/// what is read is what was checked. Blocking.
pub(super) fn read_in_place(path: &std::path::Path) -> Option<FileReport> {
    use std::os::unix::fs::OpenOptionsExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if let Some(odd) = odd_in_place(&meta) {
        return Some(odd);
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Some(FileReport::Odd("a symlink".into()))
        }
        Err(_) => return None,
    };
    let meta = file.metadata().ok()?;
    if let Some(odd) = odd_in_place(&meta) {
        return Some(odd);
    }
    let mut content = Vec::new();
    file.take(PROGRESS_MAX_BYTES)
        .read_to_end(&mut content)
        .ok()?;
    Some(FileReport::Content(content))
}

/// [`read_in_place`] of `progress.json` in the output folder `output`, on a
/// blocking thread.
pub(super) async fn read_local(output: std::path::PathBuf) -> Option<FileReport> {
    tokio::task::spawn_blocking(move || read_in_place(&output.join(PROGRESS_FILE)))
        .await
        .ok()
        .flatten()
}

/// [`odd_file`] of a file on this host, naming a FIFO as the copy's reader does.
fn odd_in_place(meta: &std::fs::Metadata) -> Option<FileReport> {
    use std::os::unix::fs::FileTypeExt;
    if meta.file_type().is_fifo() {
        return Some(FileReport::Odd("a FIFO".into()));
    }
    let kind = meta.file_type();
    odd_file(kind.is_file(), kind.is_symlink(), kind.is_dir(), meta.len())
}

/// The file as it is now; `None` when absent or unreadable.
pub(super) async fn read(docker: &Docker, container: &str) -> Option<FileReport> {
    let opts = DownloadFromContainerOptionsBuilder::default()
        .path(&format!("{OUTPUT_DIR}/{PROGRESS_FILE}"))
        .build();
    let mut stream = docker.download_from_container(container, Some(opts));
    let most = PROGRESS_MAX_BYTES + HEADER_ROOM;
    let mut archive = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => archive.extend_from_slice(&bytes),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot copy progress.json out of the container");
                return None;
            }
        }
        if archive.len() as u64 > most {
            break; // a big file: its header says so, the rest is not wanted
        }
    }
    Some(first_entry(&archive))
}

/// The archive's first entry as a report.
fn first_entry(archive: &[u8]) -> FileReport {
    let odd = |why: &str| FileReport::Odd(why.to_string());
    let mut tar = tar::Archive::new(archive);
    let Ok(mut entries) = tar.entries() else {
        return odd("unreadable");
    };
    let Some(Ok(mut entry)) = entries.next() else {
        return odd("unreadable");
    };
    let kind = entry.header().entry_type();
    if !kind.is_file() {
        let what = match kind {
            tar::EntryType::Symlink => "a symlink",
            tar::EntryType::Link => "a hard link",
            tar::EntryType::Fifo => "a FIFO",
            tar::EntryType::Directory => "a folder",
            _ => "not a regular file",
        };
        return odd(what);
    }
    let size = entry.header().size().unwrap_or(u64::MAX);
    if size > PROGRESS_MAX_BYTES {
        return FileReport::Odd(format!("over {PROGRESS_MAX_BYTES} bytes"));
    }
    let mut content = Vec::with_capacity(size as usize);
    match entry.read_to_end(&mut content) {
        Ok(_) => FileReport::Content(content),
        Err(_) => odd("unreadable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(kind: tar::EntryType, content: &[u8]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        if kind == tar::EntryType::Symlink {
            h.set_size(0);
            tar.append_link(&mut h, "progress.json", "/etc/shadow")
                .unwrap();
        } else {
            tar.append_data(&mut h, "progress.json", content).unwrap();
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn a_regular_file_is_content() {
        let body = br#"{"progress":0.5}"#;
        assert_eq!(
            first_entry(&tar_of(tar::EntryType::Regular, body)),
            FileReport::Content(body.to_vec())
        );
    }

    #[test]
    fn anything_odd_is_named_and_not_read() {
        assert_eq!(
            first_entry(&tar_of(tar::EntryType::Symlink, b"")),
            FileReport::Odd("a symlink".into())
        );
        assert_eq!(
            first_entry(&tar_of(tar::EntryType::Fifo, b"")),
            FileReport::Odd("a FIFO".into())
        );
        let big = vec![b' '; PROGRESS_MAX_BYTES as usize + 1];
        assert_eq!(
            first_entry(&tar_of(tar::EntryType::Regular, &big)),
            FileReport::Odd(format!("over {PROGRESS_MAX_BYTES} bytes"))
        );
        // A copy cut short after the cap: the header alone says it is too big.
        let cut = &tar_of(tar::EntryType::Regular, &big)[..2048];
        assert!(matches!(first_entry(cut), FileReport::Odd(_)));
        assert_eq!(
            first_entry(b"garbage"),
            FileReport::Odd("unreadable".into())
        );
    }
}
