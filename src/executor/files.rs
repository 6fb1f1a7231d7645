//! Files into and out of a container: inputs and the script before start, outputs
//! and `result.json` after exit, both as tar archives through the Docker API (so
//! they work with `network: none` and need no volume on the host).
//!
//! Invariants: outputs are read as a stream, never more than `limits.output_bytes`
//! of file content is kept, and every file left out is named in `dropped`.

use super::ExecError;
use crate::job::{Job, StagedFile, DOCKHAND_DIR, OUTPUT_DIR};
use crate::transfer::Uploader;
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokio_util::io::{StreamReader, SyncIoBridge};

/// The file a job writes to hand back its result without network.
pub const RESULT_FILE: &str = "result.json";
/// `result.json` is read only up to this size.
const RESULT_MAX: u64 = 1 << 20;
/// Output files kept at most, whatever their sizes: each is listed in the job hash,
/// its events and its webhooks.
pub const MAX_OUTPUT_FILES: usize = 1000;
/// Files not kept that are named one by one; the rest are counted.
const NAMED_DROPS: usize = 20;
/// A dropped file's name is cut to this many bytes in the list.
const DROPPED_NAME_MAX: usize = 200;

/// What the job's `result.json` said.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultFile {
    Completed {
        text: Option<String>,
        data: Option<serde_json::Value>,
    },
    Aborted {
        text: Option<String>,
        data: Option<serde_json::Value>,
    },
    Invalid(String),
}

#[derive(Debug, Default)]
pub struct JobOutput {
    pub files: Vec<(String, Vec<u8>)>,
    /// Files sent to their upload URLs instead (`outputs` rules).
    pub uploaded: Vec<crate::transfer::Uploaded>,
    /// Files not kept, each with why (`big.bin (20971520 bytes, over limits.output_bytes)`):
    /// the first [`NAMED_DROPS`] by name, then one entry that counts the rest.
    pub dropped: Vec<String>,
    pub result: Option<ResultFile>,
}

/// Where the staging archive is unpacked: the container's root, or, when the root
/// filesystem is read-only, the `/dockhand` volume itself (Docker refuses a copy
/// into a read-only root unless its destination is a volume).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StageInto {
    Root,
    DockhandVolume,
}

impl StageInto {
    pub(super) fn path(self) -> &'static str {
        match self {
            StageInto::Root => "/",
            StageInto::DockhandVolume => DOCKHAND_DIR,
        }
    }
}

/// Uploads the `/dockhand` folders, the inputs and the script into a created container.
pub async fn stage(
    docker: &Docker,
    container: &str,
    files: &[StagedFile],
    into: StageInto,
) -> Result<(), ExecError> {
    let archive = staging_tar(files, into).map_err(|source| ExecError::Local {
        action: "build the staging archive",
        source,
    })?;
    let opts = UploadToContainerOptionsBuilder::default()
        .path(into.path())
        .build();
    docker
        .upload_to_container(container, Some(opts), bollard::body_full(archive.into()))
        .await
        .map_err(|source| ExecError::Docker {
            action: "copy the inputs into the container",
            source,
        })
}

/// The archive's entries are named relative to `into`'s folder, so the same folders
/// and modes come out whichever way it is unpacked.
fn staging_tar(files: &[StagedFile], into: StageInto) -> std::io::Result<Vec<u8>> {
    let root = into.path().trim_start_matches('/');
    let mut tar = tar::Builder::new(Vec::new());
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut dirs = std::collections::BTreeSet::new();
    let mut add_dir =
        |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| -> std::io::Result<()> {
            let Some(name) = relative(path, root) else {
                return Ok(()); // the upload's own folder: it exists already
            };
            if dirs.insert(path.to_string()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(mode);
                h.set_size(0);
                h.set_mtime(mtime);
                tar.append_data(&mut h, format!("{name}/"), std::io::empty())?;
            }
            Ok(())
        };
    // Sticky and world-writable, like /tmp: a job running as any `user` can write
    // its scratch files and outputs. (Unpacked into a fresh volume, these entries
    // are what make its subfolders writable: the volume's own root is root's 0755.)
    add_dir(&mut tar, "dockhand", 0o755)?;
    add_dir(&mut tar, "dockhand/input", 0o755)?;
    add_dir(&mut tar, "dockhand/work", 0o1777)?;
    add_dir(&mut tar, "dockhand/output", 0o1777)?;
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 1..parts.len() {
            add_dir(&mut tar, &parts[..i].join("/"), 0o755)?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(f.mode);
        h.set_size(f.content.len() as u64);
        h.set_mtime(mtime);
        let name = relative(rel, root).ok_or_else(|| {
            std::io::Error::other(format!("{} is outside {}", f.path, into.path()))
        })?;
        tar.append_data(&mut h, name, f.content.as_slice())?;
    }
    tar.into_inner()
}

/// `path` (relative to `/`) as seen from `root` (also relative to `/`, "" for `/`);
/// `None` for `root` itself or a path outside it.
fn relative<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    if root.is_empty() {
        return Some(path);
    }
    path.strip_prefix(root)?
        .strip_prefix('/')
        .filter(|r| !r.is_empty())
}

/// Reads `/dockhand/output` from the stopped container: the files (when the job
/// collects outputs) within `limits.output_bytes`, and `result.json`.
pub async fn collect(
    docker: &Docker,
    container: &str,
    job: &Job,
    uploader: Uploader,
) -> Result<JobOutput, ExecError> {
    let opts = DownloadFromContainerOptionsBuilder::default()
        .path(OUTPUT_DIR)
        .build();
    let mut stream = docker
        .download_from_container(container, Some(opts))
        .boxed();
    let first = match stream.next().await {
        None => return Ok(JobOutput::default()),
        Some(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        })) => return Ok(JobOutput::default()),
        Some(Err(source)) => {
            return Err(ExecError::Docker {
                action: "read the job's output files",
                source,
            })
        }
        Some(Ok(bytes)) => bytes,
    };
    let rest = futures_util::stream::iter([Ok(first)]).chain(stream);
    let reader = SyncIoBridge::new(StreamReader::new(
        rest.map(|r| r.map_err(std::io::Error::other)),
    ));
    read_blocking(job, uploader, move |budget, keep_files, sink| {
        read_outputs_to(reader, budget, keep_files, Some(sink))
    })
    .await
}

/// Runs `read` on a blocking thread with the job's output budget and upload rules.
async fn read_blocking(
    job: &Job,
    uploader: Uploader,
    read: impl for<'a> FnOnce(u64, bool, Sink<'a>) -> Result<JobOutput, Failed> + Send + 'static,
) -> Result<JobOutput, ExecError> {
    let budget = job.limits.output_bytes;
    let keep_files = job.collect_outputs;
    let rt = tokio::runtime::Handle::current();
    let read = tokio::task::spawn_blocking(move || {
        let sink = Sink {
            uploader: &uploader,
            rt: &rt,
        };
        read(budget, keep_files, sink)
    })
    .await
    .map_err(|e| ExecError::Local {
        action: "read the job's output files",
        source: std::io::Error::other(e.to_string()),
    })?;
    read.map_err(Failed::into_exec)
}

/// A folder of outputs on this host, by the same rules as a container's archive:
/// it is written as a tar stream into a pipe (links archived as links, never
/// followed; no special file opened) and read by the archive's reader, so that
/// nothing more than `limits.output_bytes` is held, whatever the folder holds.
/// With no upload rules (the local executor's; blocking).
pub(super) fn read_dir_outputs(
    output: &Path,
    budget: u64,
    keep_files: bool,
) -> std::io::Result<JobOutput> {
    read_dir_to(output, budget, keep_files, None).map_err(Failed::into_io)
}

/// [`read_dir_outputs`] of a container's bound output folder, with the job's
/// upload rules, once the container has exited.
pub(super) async fn collect_dir(
    output: PathBuf,
    job: &Job,
    uploader: Uploader,
) -> Result<JobOutput, ExecError> {
    read_blocking(job, uploader, move |budget, keep_files, sink| {
        read_dir_to(&output, budget, keep_files, Some(sink))
    })
    .await
}

fn read_dir_to(
    output: &Path,
    budget: u64,
    keep_files: bool,
    sink: Option<Sink<'_>>,
) -> Result<JobOutput, Failed> {
    // Nothing written (most jobs): nothing to archive. (A folder that cannot
    // be read is left to the archive's writer, whose error says why.)
    if std::fs::read_dir(output).is_ok_and(|mut d| d.next().is_none()) {
        return Ok(JobOutput::default());
    }
    let (reader, writer) = std::io::pipe()?;
    std::thread::scope(|s| {
        let writing = s.spawn(move || -> std::io::Result<()> {
            let mut tar = tar::Builder::new(writer);
            tar.follow_symlinks(false);
            tar.append_dir_all("output", output)?;
            tar.into_inner().map(drop)
        });
        let read = read_outputs_to(reader, budget, keep_files, sink);
        // A reader that stopped early makes the writer fail (a closed pipe):
        // the reader's error is the one that says what happened.
        let written = writing
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the archive writer panicked")));
        let out = read?;
        written?;
        Ok(out)
    })
}

/// The output archive read with no upload rules (the local executor's).
pub(super) fn read_outputs(
    reader: impl Read,
    budget: u64,
    keep_files: bool,
) -> std::io::Result<JobOutput> {
    read_outputs_to(reader, budget, keep_files, None).map_err(Failed::into_io)
}

/// Where files with an upload rule go (`crate::transfer`), on the runtime `rt`.
struct Sink<'a> {
    uploader: &'a Uploader,
    rt: &'a tokio::runtime::Handle,
}

/// Reading the archive failed, or an upload did.
#[derive(Debug)]
enum Failed {
    Read(std::io::Error),
    Upload(crate::transfer::TransferError),
}

impl Failed {
    fn into_io(self) -> std::io::Error {
        match self {
            Failed::Read(e) => e,
            Failed::Upload(e) => std::io::Error::other(crate::telemetry::error_chain(&e)),
        }
    }

    fn into_exec(self) -> ExecError {
        match self {
            Failed::Read(source) => ExecError::Local {
                action: "read the job's output files",
                source,
            },
            Failed::Upload(e) => ExecError::Transfer(e),
        }
    }
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Failed {
        Failed::Read(e)
    }
}

fn read_outputs_to(
    reader: impl Read,
    budget: u64,
    keep_files: bool,
    sink: Option<Sink<'_>>,
) -> Result<JobOutput, Failed> {
    let mut out = JobOutput::default();
    let mut drops = Drops::default();
    // A file's name counts against the budget with its bytes: many small files
    // with long names must cost what they take in Redis.
    let mut used = 0u64;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        // Paths in the archive start with the folder's own name, `output/`.
        let Some(name) = in_output(&entry.path()?.to_string_lossy()) else {
            continue;
        };
        if kind.is_dir() {
            continue;
        }
        let size = entry.header().size()?;
        if name == RESULT_FILE {
            out.result = Some(if size > RESULT_MAX {
                ResultFile::Invalid(format!(
                    "{RESULT_FILE} is {size} bytes, over the 1 MiB limit"
                ))
            } else {
                let mut text = Vec::new();
                entry.read_to_end(&mut text)?;
                parse_result(&text)
            });
            continue;
        }
        // Read while the job ran (`executor::progress`); like result.json, not a result file.
        if !keep_files || name == super::progress::PROGRESS_FILE {
            continue;
        }
        // A hard link is a second name for a file met earlier in the archive.
        let linked = match kind {
            tar::EntryType::Link => entry
                .link_name()?
                .and_then(|target| in_output(&target.to_string_lossy()))
                .and_then(|target| out.files.iter().find(|(n, _)| *n == target))
                .map(|(_, content)| content.clone()),
            _ => None,
        };
        if sink.as_ref().is_some_and(|s| s.uploader.is_pipe(&name)) {
            continue; // streamed while the job ran
        }
        if !kind.is_file() && linked.is_none() {
            drops.add(&name, "not a regular file");
            continue;
        }
        let size = linked.as_ref().map_or(size, |c| c.len() as u64);
        if out.files.len() + out.uploaded.len() >= MAX_OUTPUT_FILES {
            drops.add(&name, &format!("over {MAX_OUTPUT_FILES} files"));
            continue;
        }
        let cost = size + name.len() as u64;
        // A file with an upload rule is streamed there as it is read (an
        // `overflow` rule only takes what does not fit in the budget).
        let fits = used + cost <= budget;
        if let Some(sink) = sink.as_ref().filter(|_| linked.is_none()) {
            if let Some(rule) = sink.uploader.rule_for(&name, fits) {
                let sent = sink
                    .uploader
                    .upload_blocking(rule, &name, size, &mut entry, sink.rt)
                    .map_err(Failed::Upload)?;
                out.uploaded.push(sent);
                continue;
            }
        }
        if !fits {
            let why = format!("{size} bytes, over limits.output_bytes = {budget}");
            drops.add(&name, &why);
            continue;
        }
        let content = match linked {
            Some(content) => content,
            None => {
                let mut content = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut content)?;
                content
            }
        };
        used += cost;
        out.files.push((name, content));
    }
    out.dropped = drops.list();
    Ok(out)
}

/// The name inside the output folder of an archive path (`output/a/b` → `a/b`).
fn in_output(path: &str) -> Option<String> {
    let (_, name) = path.split_once('/')?;
    let name = name.trim_end_matches('/');
    (!name.is_empty()).then(|| name.to_string())
}

/// The files not kept: the first few by name (cut short), the rest counted.
#[derive(Default)]
struct Drops {
    named: Vec<String>,
    more: u64,
}

impl Drops {
    fn add(&mut self, name: &str, why: &str) {
        if self.named.len() >= NAMED_DROPS {
            self.more += 1;
            return;
        }
        let mut cut = DROPPED_NAME_MAX.min(name.len());
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = if cut < name.len() { "…" } else { "" };
        self.named.push(format!("{}{more} ({why})", &name[..cut]));
    }

    fn list(mut self) -> Vec<String> {
        if self.more > 0 {
            self.named
                .push(format!("and {} more files not kept", self.more));
        }
        self.named
    }
}

/// `{"result_text", "result_data"}` completes; `{"error_text", "error_data"}` aborts.
pub fn parse_result(bytes: &[u8]) -> ResultFile {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return ResultFile::Invalid(format!("{RESULT_FILE} is not valid JSON: {e}")),
    };
    let Some(obj) = value.as_object() else {
        return ResultFile::Invalid(format!("{RESULT_FILE} must hold a JSON object"));
    };
    let text = |key: &str| -> Result<Option<String>, String> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{RESULT_FILE}: `{key}` must be a string")),
        }
    };
    if obj.contains_key("error_text") || obj.contains_key("error_data") {
        return match text("error_text") {
            Ok(t) => ResultFile::Aborted {
                text: t,
                data: obj.get("error_data").cloned(),
            },
            Err(e) => ResultFile::Invalid(e),
        };
    }
    match text("result_text") {
        Ok(t) => ResultFile::Completed {
            text: t,
            data: obj.get("result_data").cloned(),
        },
        Err(e) => ResultFile::Invalid(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, name, *content).unwrap();
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn names_cost_like_bytes_and_the_file_count_is_capped() {
        // Empty files with long names: the names alone fill the budget.
        let long: Vec<(String, Vec<u8>)> = (0..50)
            .map(|i| (format!("output/{i:03}-{}", "n".repeat(196)), Vec::new()))
            .collect();
        let entries: Vec<(&str, &[u8])> = long
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice()))
            .collect();
        let out = read_outputs_to(archive(&entries).as_slice(), 1000, true, None).unwrap();
        assert_eq!(out.files.len(), 5, "200-byte names, a 1000-byte budget");
        assert_eq!(out.dropped.len(), NAMED_DROPS + 1);
        assert_eq!(out.dropped.last().unwrap(), "and 25 more files not kept");
        assert!(
            out.dropped[0].contains("over limits.output_bytes"),
            "{:?}",
            out.dropped
        );
        assert!(out.dropped.iter().all(|d| d.len() < DROPPED_NAME_MAX + 80));

        let many: Vec<(String, Vec<u8>)> = (0..MAX_OUTPUT_FILES + 7)
            .map(|i| (format!("output/{i}"), vec![b'x']))
            .collect();
        let entries: Vec<(&str, &[u8])> = many
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice()))
            .collect();
        let out = read_outputs_to(archive(&entries).as_slice(), 1 << 30, true, None).unwrap();
        assert_eq!(out.files.len(), MAX_OUTPUT_FILES);
        assert_eq!(out.dropped.len(), 7);
        assert!(
            out.dropped[0].contains("over 1000 files"),
            "{:?}",
            out.dropped
        );
    }

    #[test]
    fn a_hard_link_keeps_both_names() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        tar.append_data(&mut h, "output/a.txt", &b"hello"[..])
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Link);
        link.set_size(0);
        tar.append_link(&mut link, "output/b.txt", "output/a.txt")
            .unwrap();
        let out = read_outputs_to(tar.into_inner().unwrap().as_slice(), 100, true, None).unwrap();
        assert_eq!(
            out.files,
            vec![
                ("a.txt".to_string(), b"hello".to_vec()),
                ("b.txt".to_string(), b"hello".to_vec())
            ]
        );
        assert!(out.dropped.is_empty(), "{:?}", out.dropped);
    }

    #[test]
    fn outputs_within_budget_are_kept_and_the_rest_named() {
        let tar = archive(&[
            ("output/a.txt", b"hello"),
            ("output/big.bin", &[0u8; 100]),
            ("output/sub/b.txt", b"world"),
            (
                "output/result.json",
                br#"{"result_text":"ok","result_data":{"n":1}}"#,
            ),
        ]);
        let out = read_outputs_to(tar.as_slice(), 50, true, None).unwrap();
        let names: Vec<&str> = out.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["a.txt", "sub/b.txt"]);
        assert_eq!(out.dropped.len(), 1);
        assert!(
            out.dropped[0].starts_with("big.bin (100 bytes"),
            "{:?}",
            out.dropped
        );
        assert_eq!(
            out.result,
            Some(ResultFile::Completed {
                text: Some("ok".into()),
                data: Some(serde_json::json!({"n": 1}))
            })
        );
    }

    #[test]
    fn without_outputs_only_the_result_is_read() {
        let tar = archive(&[
            ("output/a.txt", b"x"),
            ("output/result.json", br#"{"error_text":"no"}"#),
        ]);
        let out = read_outputs_to(tar.as_slice(), 50, false, None).unwrap();
        assert!(out.files.is_empty() && out.dropped.is_empty());
        assert_eq!(
            out.result,
            Some(ResultFile::Aborted {
                text: Some("no".into()),
                data: None
            })
        );
    }

    #[test]
    fn a_bad_result_file_is_reported_not_fatal() {
        assert!(
            matches!(parse_result(b"{nope"), ResultFile::Invalid(m) if m.contains("not valid JSON"))
        );
        assert!(matches!(parse_result(b"[1]"), ResultFile::Invalid(m) if m.contains("object")));
        assert!(
            matches!(parse_result(br#"{"result_text":5}"#), ResultFile::Invalid(m) if m.contains("result_text"))
        );
    }

    #[test]
    fn staging_creates_the_folders_and_files() {
        let files = vec![StagedFile {
            path: "/dockhand/input/a/b.txt".into(),
            content: b"hi".to_vec(),
            mode: 0o644,
        }];
        let entries = |into| -> Vec<(String, u32)> {
            let tar = staging_tar(&files, into).unwrap();
            let mut archive = tar::Archive::new(tar.as_slice());
            archive
                .entries()
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let mode = e.header().mode().unwrap();
                    (e.path().unwrap().to_string_lossy().into_owned(), mode)
                })
                .collect()
        };
        let root = entries(StageInto::Root);
        let names: Vec<String> = root.iter().map(|(n, _)| n.clone()).collect();
        for expected in [
            "dockhand/",
            "dockhand/input/",
            "dockhand/output/",
            "dockhand/input/a/",
            "dockhand/input/a/b.txt",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
        // Into the volume at /dockhand: the same tree without its top folder, and
        // the writable folders keep their modes.
        let volume = entries(StageInto::DockhandVolume);
        let want = [
            ("input/", 0o755),
            ("work/", 0o1777),
            ("output/", 0o1777),
            ("input/a/", 0o755),
            ("input/a/b.txt", 0o644),
        ];
        for (name, mode) in want {
            assert!(
                volume.contains(&(name.to_string(), mode)),
                "{name} {mode:o} missing from {volume:?}"
            );
        }
        assert_eq!(volume.len(), want.len(), "{volume:?}");
    }
}
