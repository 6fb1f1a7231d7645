//! A container's `/dockhand/input`, `/dockhand/work` and `/dockhand/output` as
//! folders of the worker's own, bind-mounted into it: the worker writes the
//! job's files into them before start and reads the outputs from them after
//! exit, in place. The engine then copies nothing, and runs no archive process
//! per job (each copy through the API is one: the engine's CPU per small job
//! was twice what the container itself cost). Otherwise (`worker.job_folders =
//! "copy"`, a worker that is not root, an engine that does not see the folder)
//! the folders are copied through the API, by `files`.
//!
//! Invariants:
//! - Folders are bound only once [`decide`] found, for this process, that the
//!   worker runs as root (so it can read and remove whatever a job's user
//!   wrote) and that the engine sees `<cache_dir>/<worker id>/runs/` at the same
//!   path (a probe container, created and removed, read a token written there).
//!   A probe that could not conclude (the image is missing, the engine did not
//!   answer) decides nothing: that job's folders are copied, the next job asks
//!   again.
//! - Each run has a folder of its own, named after its container, made before
//!   the container and removed after it ([`RunFolders::remove`]); a worker
//!   clears its own `runs/` at start (a worker id is one process's). `runs/` is
//!   root's alone (0700): what a job leaves there (a setuid file, say) is out of
//!   reach of the host's other users.
//! - What a job wrote is untrusted, and no link in it is followed: the output
//!   folder is read only once the container no longer runs, so that no process
//!   of the job can change it while it is read; `progress.json`, read while it
//!   runs, is opened without following a link and without blocking, and counts
//!   only if the open file is a regular one.

use super::files;
use super::progress::FileReport;
use super::{ExecError, Executor};
use crate::config::{JobFolders, Settings};
use crate::job::{Job, StagedFile, DOCKHAND_DIR};
use crate::transfer::Uploader;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The folders of `/dockhand` that are bound, with their modes: the inputs
/// root's, scratch and outputs writable by a job running as any user (sticky,
/// like /tmp), as the copied folders are made.
const FOLDERS: [(&str, u32); 3] = [("input", 0o755), ("work", 0o1777), ("output", 0o1777)];

/// `<worker.cache_dir>/<worker id>/runs`: the runs' folders.
pub fn runs_root(settings: &Settings) -> PathBuf {
    settings.worker_folder("runs")
}

/// Removes the runs' folders that an earlier process of this worker, killed
/// mid-job, left behind. Called at start, before any job runs.
pub fn clear_leftovers(settings: &Settings) {
    let root = runs_root(settings);
    match std::fs::remove_dir_all(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %root.display(), error = %e, "could not remove leftover job folders")
        }
    }
}

/// What [`decide`] found.
pub(super) enum Decision {
    /// Bind the runs' folders, made under this root.
    Bind(PathBuf),
    /// Copy through the API, and why.
    Copy(String),
    /// The probe could not conclude (why): copy for this job, ask again.
    Undecided(String),
}

/// Whether this worker can bind its runs' folders into containers; `image` is
/// one the probe container can be created from, `labels` its labels (a job's,
/// so that the sweep judges a probe left by a killed worker like the job's own
/// container), `name` its name.
pub(super) async fn decide(
    exec: &Executor,
    image: &str,
    labels: HashMap<String, String>,
    name: &str,
) -> Decision {
    if exec.settings.worker.job_folders == JobFolders::Copy {
        return Decision::Copy("worker.job_folders is \"copy\"".to_string());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Decision::Copy(
            "the worker is not root, so it could not read or remove every file a job leaves"
                .to_string(),
        );
    }
    let root = runs_root(&exec.settings);
    let token = ulid::Ulid::new().to_string();
    let dir = root.join(format!("probe-{}", token.to_ascii_lowercase()));
    let made = {
        let (root, dir, token) = (root.clone(), dir.clone(), token.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            make_private(&root)?;
            std::fs::create_dir(&dir)?;
            std::fs::write(dir.join("token"), token)
        })
        .await
    };
    match made {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Decision::Copy(format!("cannot make {}: {e}", dir.display()));
        }
        Err(e) => return Decision::Undecided(e.to_string()),
    }
    let read = probe(exec, &dir, image, labels, name).await;
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    match read {
        Ok(read) if read == token.as_bytes() => Decision::Bind(root),
        Ok(_) => Decision::Copy(format!(
            "the engine sees another folder at {}",
            root.display()
        )),
        Err(decision) => decision,
    }
}

/// Creates (never starts) a container from `image` with `dir` bound, reads the
/// token through the API, and removes the container: the token's bytes as the
/// engine read them, or why there are none (`Copy` when the engine does not see
/// the folder, `Undecided` when it did not answer).
async fn probe(
    exec: &Executor,
    dir: &Path,
    image: &str,
    labels: HashMap<String, String>,
    name: &str,
) -> Result<Vec<u8>, Decision> {
    const AT: &str = "/dockhand-probe";
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        // Never run: a command only so that any image can be created.
        cmd: Some(vec!["true".to_string()]),
        labels: Some(labels),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_string()),
            mounts: Some(vec![bind(dir, AT, true)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!("{name}-probe");
    let id = match exec
        .create(&name, body, image, "create the probe container")
        .await
    {
        Ok(id) => id,
        // A bind source the engine cannot find is refused as invalid (400).
        Err(ExecError::Docker {
            source:
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 400,
                    message,
                },
            ..
        }) => {
            return Err(Decision::Copy(format!(
                "the engine refused the bind mount: {message}"
            )))
        }
        Err(e) => return Err(Decision::Undecided(e.to_string())),
    };
    let opts = DownloadFromContainerOptionsBuilder::default()
        .path(&format!("{AT}/token"))
        .build();
    let mut stream = exec.docker.download_from_container(&id, Some(opts));
    let mut archive = Vec::new();
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) if archive.len() < 64 << 10 => archive.extend_from_slice(&bytes),
            Ok(_) => {}
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(stream);
    exec.remove(&id).await;
    match failed {
        Some(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Err(Decision::Copy(
            "the engine's view of the folder has no token".to_string(),
        )),
        Some(e) => Err(Decision::Undecided(format!(
            "reading the probe's token failed: {e}"
        ))),
        None => first_file(&archive)
            .ok_or_else(|| Decision::Copy("the engine's copy of the token is empty".to_string())),
    }
}

/// The content of the first file of a tar archive, at most 4 KiB of it.
fn first_file(archive: &[u8]) -> Option<Vec<u8>> {
    let mut tar = tar::Archive::new(archive);
    let mut entry = tar.entries().ok()?.next()?.ok()?;
    let mut content = Vec::new();
    (&mut entry).take(4096).read_to_end(&mut content).ok()?;
    Some(content)
}

/// `root` made if missing, and root's alone.
fn make_private(root: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
}

fn bind(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.to_string()),
        source: Some(source.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// One run's folders, bound into its container.
pub(super) struct RunFolders {
    dir: PathBuf,
    /// The job's files are in place (else they are copied through the API).
    pub staged: bool,
}

impl RunFolders {
    /// Makes `<root>/<name>` and its folders, and writes the job's files into
    /// them when every one of them is inside one.
    pub async fn make(root: &Path, name: &str, files: &[StagedFile]) -> Result<Self, ExecError> {
        let (root, dir) = (root.to_path_buf(), root.join(name));
        let files = files.to_vec();
        let made = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                // runs/ was made private when binding was decided; again only if gone.
                match std::fs::create_dir(&dir) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        make_private(&root)?;
                        std::fs::create_dir(&dir)?;
                    }
                    made => made?,
                }
                for (folder, mode) in FOLDERS {
                    let path = dir.join(folder);
                    std::fs::create_dir(&path)?;
                    // Set after: the umask would take bits off the mode given to mkdir.
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
                }
                write_files(&dir, &files)
            })
            .await
        };
        let failed = |source| ExecError::Local {
            action: "make the job's folders",
            source,
        };
        match made {
            Ok(Ok(staged)) => Ok(RunFolders { dir, staged }),
            Ok(Err(e)) => {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                Err(failed(e))
            }
            Err(e) => Err(failed(std::io::Error::other(e.to_string()))),
        }
    }

    /// The bind mounts of the container's `/dockhand` folders.
    pub fn mounts(&self) -> Vec<Mount> {
        FOLDERS
            .iter()
            .map(|(folder, _)| {
                bind(
                    &self.dir.join(folder),
                    &format!("{DOCKHAND_DIR}/{folder}"),
                    false,
                )
            })
            .collect()
    }

    /// The outputs, by the same rules as an archive copied out of a container.
    /// `running` is what the engine said after the exit: a folder that a
    /// process of the job could still change is not read.
    pub async fn collect(
        &self,
        running: bool,
        job: &Job,
        uploader: Uploader,
    ) -> Result<files::JobOutput, ExecError> {
        if running {
            return Err(ExecError::Local {
                action: "read the job's output files",
                source: std::io::Error::other(
                    "the engine says the container still runs; its output folder is not read",
                ),
            });
        }
        files::collect_dir(self.dir.join("output"), job, uploader).await
    }

    /// `progress.json` as it is now.
    pub async fn read_progress(&self) -> Option<FileReport> {
        super::progress::read_local(self.dir.join("output")).await
    }

    /// Removes the run's folder, with whatever the job left in it (links are
    /// removed, never followed).
    pub async fn remove(self) {
        let dir = self.dir;
        let removed = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || std::fs::remove_dir_all(dir)
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => {
                tracing::warn!(path = %dir.display(), error = %e, "could not remove a job's folders")
            }
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "could not remove a job's folders")
            }
        }
    }
}

/// Writes the job's files into the run's folders, their parents made as the
/// staging archive makes them; false (nothing written) when one of them is
/// not inside one of the bound folders: all are then copied through the API.
fn write_files(dir: &Path, files: &[StagedFile]) -> std::io::Result<bool> {
    let mut placed = Vec::with_capacity(files.len());
    for f in files {
        match in_folders(&f.path) {
            Some(rel) => placed.push((dir.join(rel), f)),
            None => return Ok(false),
        }
    }
    for (path, f) in placed {
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        std::fs::write(&path, &f.content)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))?;
    }
    Ok(true)
}

/// `/dockhand/<folder>/<rest>` as `<folder>/<rest>`, for a bound folder and a
/// plain relative rest (no `..`, no empty part); `None` otherwise.
fn in_folders(path: &str) -> Option<&str> {
    let rel = path.strip_prefix(DOCKHAND_DIR)?.strip_prefix('/')?;
    let (folder, rest) = rel.split_once('/')?;
    let plain = rest
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..");
    (FOLDERS.iter().any(|(f, _)| *f == folder) && plain).then_some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_inside_a_bound_folder_are_written_in_place() {
        assert_eq!(in_folders("/dockhand/input/a/b.txt"), Some("input/a/b.txt"));
        assert_eq!(in_folders("/dockhand/work/run.sh"), Some("work/run.sh"));
        assert_eq!(in_folders("/dockhand/output/x"), Some("output/x"));
        assert_eq!(in_folders("/dockhand/other/x"), None);
        assert_eq!(in_folders("/dockhand/input"), None);
        assert_eq!(in_folders("/dockhand/input/../../etc/passwd"), None);
        assert_eq!(in_folders("/dockhand/input//x"), None);
        assert_eq!(in_folders("/etc/passwd"), None);
        assert_eq!(in_folders("/dockhandx/input/a"), None);
    }

    #[test]
    fn folders_and_files_get_their_modes_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        for (folder, _) in FOLDERS {
            std::fs::create_dir(dir.join(folder)).unwrap();
        }
        let files = vec![StagedFile {
            path: "/dockhand/input/sub/data.bin".to_string(),
            content: b"abc".to_vec(),
            mode: 0o640,
        }];
        assert!(write_files(&dir, &files).unwrap());
        let file = dir.join("input/sub/data.bin");
        assert_eq!(std::fs::read(&file).unwrap(), b"abc");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        let outside = vec![StagedFile {
            path: "/dockhand/elsewhere".to_string(),
            content: b"x".to_vec(),
            mode: 0o644,
        }];
        assert!(!write_files(&dir, &outside).unwrap());
        assert!(!dir.join("elsewhere").exists());
    }
}
