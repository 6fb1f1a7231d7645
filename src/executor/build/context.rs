//! The build context: the folder and the Dockerfile, checked to stay inside the
//! checkout, and the tar archive of it that the Docker engine receives.
//!
//! Invariants:
//! - Nothing outside the checkout is read: `..` and absolute paths are refused,
//!   and so is a context or Dockerfile that is a symlink leading out.
//! - Symlinks inside the context go into the archive as symlinks, never followed
//!   (a link to `/etc/shadow` must not ship the worker's file to the builder).
//! - The archive honours the context's `.dockerignore` like the Docker CLI: the
//!   Dockerfile and `.dockerignore` are sent even when listed there (the engine
//!   needs them and leaves them out of `COPY` itself).
//! - Owners and times are normalised, so the same files make the same archive.
//! - The archive is held in memory, so it is capped: past the request's
//!   `max_context_bytes` (`worker.build_context_bytes`) archiving stops at once,
//!   before the file that would cross it is read, with
//!   [`BuildError::ContextTooLarge`]. It also stops at the next entry once the
//!   caller's stop flag is set (the job timed out or was cancelled).
//! - Image labels go in as one `LABEL` line appended to a generated copy of the
//!   Dockerfile (kept out of `COPY` like the CLI's own generated file), not as the
//!   engine's `labels` option: the classic builder makes each of those a step of
//!   its own with an intermediate container, about a second each.

use super::dockerignore::DockerIgnore;
use super::error::BuildError;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

const IGNORE_FILE: &str = ".dockerignore";

/// A context folder and Dockerfile that were found inside the checkout.
#[derive(Debug)]
pub struct Located {
    /// The context folder, canonical.
    pub dir: PathBuf,
    /// The Dockerfile's path inside the archive, for the `dockerfile` parameter.
    pub dockerfile: String,
    /// A Dockerfile from outside the context (still inside the checkout) travels
    /// in the archive under a generated name, like the Docker CLI does it.
    extra_dockerfile: Option<Vec<u8>>,
}

/// Finds `context` (relative to `checkout`) and `dockerfile` (relative to the context).
pub fn locate(checkout: &Path, context: &Path, dockerfile: &Path) -> Result<Located, BuildError> {
    let root = checkout
        .canonicalize()
        .map_err(|source| BuildError::Context {
            action: "open the checkout",
            path: checkout.to_path_buf(),
            source,
        })?;
    let dir = inside(&root, &root, context, "context")?;
    if !dir.is_dir() {
        return Err(BuildError::NotFound {
            what: "context",
            path: context.to_path_buf(),
        });
    }
    let file = inside(&root, &dir, dockerfile, "dockerfile")?;
    if !file.is_file() {
        return Err(BuildError::NotFound {
            what: "dockerfile",
            path: dockerfile.to_path_buf(),
        });
    }
    match file.strip_prefix(&dir) {
        Ok(rel) => Ok(Located {
            dockerfile: slash_path(rel),
            dir,
            extra_dockerfile: None,
        }),
        Err(_) => {
            let content = fs::read(&file).map_err(|source| BuildError::Context {
                action: "read",
                path: file.clone(),
                source,
            })?;
            let digest = hex::encode(Sha256::digest(&content));
            Ok(Located {
                dockerfile: format!(".dockhand-dockerfile-{}", &digest[..12]),
                dir,
                extra_dockerfile: Some(content),
            })
        }
    }
}

impl Located {
    /// The Dockerfile with `line` appended, sent under a generated name; unchanged
    /// (and `false`) when its last line continues (ends in `\\` or `` ` ``), since
    /// `line` would then become part of that instruction.
    pub fn with_line(self, line: &str) -> Result<(Located, bool), BuildError> {
        let generated = self.extra_dockerfile.is_some();
        let mut content = match self.extra_dockerfile {
            Some(content) => content,
            None => {
                let path = self.dir.join(&self.dockerfile);
                fs::read(&path).map_err(|source| BuildError::Context {
                    action: "read",
                    path,
                    source,
                })?
            }
        };
        let last = content.iter().rev().find(|b| !b.is_ascii_whitespace());
        if matches!(last, Some(b'\\' | b'`')) {
            let unchanged = Located {
                extra_dockerfile: generated.then_some(content),
                dir: self.dir,
                dockerfile: self.dockerfile,
            };
            return Ok((unchanged, false));
        }
        if !content.ends_with(b"\n") {
            content.push(b'\n');
        }
        content.extend_from_slice(line.as_bytes());
        content.push(b'\n');
        let digest = hex::encode(Sha256::digest(&content));
        let located = Located {
            dockerfile: format!(".dockhand-dockerfile-{}", &digest[..12]),
            dir: self.dir,
            extra_dockerfile: Some(content),
        };
        Ok((located, true))
    }
}

/// `labels` as one Dockerfile `LABEL` instruction, or `None` when there are none or
/// one holds a character that quoting could not carry the same way under every
/// escape directive and variable expansion (`"`, `\`, `` ` ``, `$`, a control
/// character); the caller then passes them to the engine instead.
pub fn label_line(labels: &std::collections::BTreeMap<String, String>) -> Option<String> {
    if labels.is_empty() {
        return None;
    }
    let safe = |s: &str| {
        !s.chars()
            .any(|c| matches!(c, '"' | '\\' | '`' | '$') || c.is_control())
    };
    let mut line = String::from("LABEL");
    for (k, v) in labels {
        if k.is_empty() || !safe(k) || !safe(v) {
            return None;
        }
        line.push_str(&format!(" \"{k}\"=\"{v}\""));
    }
    Some(line)
}

/// `base.join(rel)`, canonical, refusing anything that leaves `root` (both canonical).
fn inside(root: &Path, base: &Path, rel: &Path, what: &'static str) -> Result<PathBuf, BuildError> {
    let escapes = || BuildError::Escapes {
        what,
        path: rel.to_path_buf(),
    };
    let mut path = base.to_path_buf();
    for part in rel.components() {
        match part {
            Component::CurDir => {}
            Component::Normal(p) => path.push(p),
            Component::ParentDir => {
                if !path.pop() || !path.starts_with(root) {
                    return Err(escapes());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    let resolved = path.canonicalize().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => BuildError::NotFound {
            what,
            path: rel.to_path_buf(),
        },
        _ => BuildError::Context {
            action: "resolve",
            path: path.clone(),
            source,
        },
    })?;
    // A symlink may lead out even when the path does not.
    if !resolved.starts_with(root) {
        return Err(escapes());
    }
    Ok(resolved)
}

/// The archive in memory, refusing to grow past `limit` bytes.
struct Capped {
    buf: Vec<u8>,
    limit: u64,
}

/// The error [`Capped`] writes fail with, told apart from other I/O errors.
#[derive(Debug)]
struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the build context is over its limit")
    }
}

impl std::error::Error for OverLimit {}

impl Capped {
    fn fits(&self, more: u64) -> bool {
        (self.buf.len() as u64).saturating_add(more) <= self.limit
    }
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.fits(data.len() as u64) {
            return Err(io::Error::other(OverLimit));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An archiving failure: [`BuildError::ContextTooLarge`] when the cap was hit.
fn archive_error(path: &Path, limit: u64) -> impl FnOnce(io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| {
        if source.get_ref().is_some_and(|e| e.is::<OverLimit>()) {
            BuildError::ContextTooLarge { limit }
        } else {
            BuildError::Context {
                action: "archive",
                path,
                source,
            }
        }
    }
}

/// The context as a tar archive of at most `limit` bytes; stops early once `stop`
/// is set.
pub fn archive(located: &Located, limit: u64, stop: &AtomicBool) -> Result<Vec<u8>, BuildError> {
    let dir = &located.dir;
    let ignore_path = dir.join(IGNORE_FILE);
    let ignore_text = match fs::read(&ignore_path) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(BuildError::Context {
                action: "read",
                path: ignore_path,
                source,
            })
        }
    };
    let ignore = DockerIgnore::parse(ignore_text.as_deref().unwrap_or_default());
    let mut tar = tar::Builder::new(Capped {
        buf: Vec::new(),
        limit,
    });
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut walk = Walk {
        tar: &mut tar,
        ignore: &ignore,
        dockerfile: &located.dockerfile,
        limit,
        stop,
    };
    walk.dir(dir, "")?;

    let io_err = |source| archive_error(dir, limit)(source);
    let ignore_out = match &located.extra_dockerfile {
        Some(content) => {
            append_bytes(&mut tar, &located.dockerfile, content).map_err(io_err)?;
            // Like the Docker CLI: the engine then keeps the generated file (and the
            // ignore file) out of `COPY . .`.
            let mut text = ignore_text.unwrap_or_default();
            text.push_str(&format!("\n{}\n{IGNORE_FILE}\n", located.dockerfile));
            Some(text)
        }
        None => ignore_text,
    };
    if let Some(text) = ignore_out {
        append_bytes(&mut tar, IGNORE_FILE, text.as_bytes()).map_err(io_err)?;
    }
    tar.into_inner().map(|capped| capped.buf).map_err(io_err)
}

struct Walk<'a> {
    tar: &'a mut tar::Builder<Capped>,
    ignore: &'a DockerIgnore,
    dockerfile: &'a str,
    limit: u64,
    stop: &'a AtomicBool,
}

impl Walk<'_> {
    fn dir(&mut self, abs: &Path, prefix: &str) -> Result<(), BuildError> {
        let limit = self.limit;
        let io_err = |path: &Path| archive_error(path, limit);
        let mut entries = fs::read_dir(abs)
            .and_then(|d| d.collect::<io::Result<Vec<_>>>())
            .map_err(io_err(abs))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if self.stop.load(Ordering::Relaxed) {
                return Err(BuildError::Stopped);
            }
            let path = entry.path();
            let name = entry.file_name();
            let rel = match prefix {
                "" => name.to_string_lossy().into_owned(),
                p => format!("{p}/{}", name.to_string_lossy()),
            };
            let tar_name = Path::new(prefix).join(&name);
            if rel == IGNORE_FILE {
                continue; // added last, possibly amended
            }
            let kind = entry.file_type().map_err(io_err(&path))?;
            let excluded = self.ignore.is_excluded(&rel) && rel != self.dockerfile;
            if kind.is_dir() {
                let holds_dockerfile = self.dockerfile.starts_with(&format!("{rel}/"));
                if excluded && !self.ignore.has_exceptions() && !holds_dockerfile {
                    continue;
                }
                if !excluded {
                    self.tar
                        .append_path_with_name(&path, &tar_name)
                        .map_err(io_err(&path))?;
                }
                self.dir(&path, &rel)?;
            } else if (kind.is_file() || kind.is_symlink()) && !excluded {
                // A file that cannot fit is refused before it is read: its header
                // and its content padded to 512-byte blocks.
                if kind.is_file() {
                    let size = entry.metadata().map_err(io_err(&path))?.len();
                    if !self.tar.get_ref().fits(512 + size.div_ceil(512) * 512) {
                        return Err(BuildError::ContextTooLarge { limit });
                    }
                }
                self.tar
                    .append_path_with_name(&path, &tar_name)
                    .map_err(io_err(&path))?;
            }
            // Sockets, fifos and devices have no place in a build context.
        }
        Ok(())
    }
}

fn append_bytes(tar: &mut tar::Builder<Capped>, name: &str, content: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(content.len() as u64);
    tar.append_data(&mut header, name, content)
}

fn slash_path(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn names(archive: &[u8]) -> BTreeSet<String> {
        tar::Archive::new(archive)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .map(|p| p.trim_end_matches('/').to_string())
            .collect()
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    #[test]
    fn a_context_over_the_cap_is_refused_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "Dockerfile", "FROM x\n");
        write(root, "big.bin", &"x".repeat(100_000));
        let loc = locate(root, Path::new("."), Path::new("Dockerfile")).unwrap();
        let all = archive(&loc, u64::MAX, &AtomicBool::new(false)).unwrap();
        let fits = all.len() as u64;
        assert_eq!(archive(&loc, fits, &AtomicBool::new(false)).unwrap(), all);
        for limit in [fits - 1, 64 * 1024, 0] {
            let err = archive(&loc, limit, &AtomicBool::new(false)).unwrap_err();
            assert!(
                matches!(err, BuildError::ContextTooLarge { limit: l } if l == limit),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(message.contains("worker.build_context_bytes"), "{message}");
            assert!(message.contains(&limit.to_string()), "{message}");
        }
        // Ignored files do not count.
        write(root, ".dockerignore", "big.bin\n");
        archive(&loc, 64 * 1024, &AtomicBool::new(false)).unwrap();
    }

    #[test]
    fn a_stopped_build_stops_archiving() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "Dockerfile", "FROM x\n");
        let loc = locate(root, Path::new("."), Path::new("Dockerfile")).unwrap();
        let err = archive(&loc, u64::MAX, &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(err, BuildError::Stopped), "{err:?}");
    }

    #[test]
    fn honours_dockerignore_but_keeps_dockerfile_and_ignore_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "Dockerfile", "FROM x\n");
        write(
            root,
            ".dockerignore",
            "secret.txt\nDockerfile\nlogs\n*.md\n!KEEP.md\n",
        );
        write(root, "hello.txt", "hi");
        write(root, "secret.txt", "no");
        write(root, "logs/a.log", "no");
        write(root, "NOTES.md", "no");
        write(root, "KEEP.md", "yes");
        write(root, "src/main.rs", "yes");
        let loc = locate(root, Path::new("."), Path::new("Dockerfile")).unwrap();
        assert_eq!(loc.dockerfile, "Dockerfile");
        let got = names(&archive(&loc, u64::MAX, &AtomicBool::new(false)).unwrap());
        let want: BTreeSet<String> = [
            ".dockerignore",
            "Dockerfile",
            "hello.txt",
            "KEEP.md",
            "src",
            "src/main.rs",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn labels_become_one_line_of_a_generated_dockerfile() {
        let labels = std::collections::BTreeMap::from([
            (
                "dockhand.repo".to_string(),
                "https://git.example/o/r.git".to_string(),
            ),
            ("dockhand.commit".to_string(), "0123abcd".to_string()),
        ]);
        let line = label_line(&labels).unwrap();
        assert_eq!(
            line,
            r#"LABEL "dockhand.commit"="0123abcd" "dockhand.repo"="https://git.example/o/r.git""#
        );
        for bad in ["a\"b", "a\\b", "a$HOME", "a`b", "a\nb"] {
            let one = std::collections::BTreeMap::from([("k".to_string(), bad.to_string())]);
            assert_eq!(label_line(&one), None, "{bad:?}");
        }
        assert_eq!(label_line(&Default::default()), None);

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "Dockerfile", "FROM x\nCMD [\"true\"]"); // no final newline
        write(root, ".dockerignore", "secret.txt\n");
        write(root, "secret.txt", "no");
        let (loc, appended) = locate(root, Path::new("."), Path::new("Dockerfile"))
            .unwrap()
            .with_line(&line)
            .unwrap();
        assert!(appended);
        assert!(
            loc.dockerfile.starts_with(".dockhand-dockerfile-"),
            "{}",
            loc.dockerfile
        );
        let archive = archive(&loc, u64::MAX, &AtomicBool::new(false)).unwrap();
        let mut files = std::collections::BTreeMap::new();
        for e in tar::Archive::new(archive.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut text = String::new();
            io::Read::read_to_string(&mut e, &mut text).unwrap();
            files.insert(name, text);
        }
        assert_eq!(
            files[&loc.dockerfile],
            format!("FROM x\nCMD [\"true\"]\n{line}\n")
        );
        assert_eq!(
            files["Dockerfile"], "FROM x\nCMD [\"true\"]",
            "the original is untouched"
        );
        assert!(!files.contains_key("secret.txt"));
        let ignore = &files[".dockerignore"];
        assert!(ignore.starts_with("secret.txt\n"), "{ignore}");
        assert!(
            ignore.contains(&loc.dockerfile),
            "kept out of COPY: {ignore}"
        );

        // A last line that continues would swallow the label line: left alone.
        write(root, "Dockerfile", "FROM x\nRUN echo hi \\\n");
        let (loc, appended) = locate(root, Path::new("."), Path::new("Dockerfile"))
            .unwrap()
            .with_line(&line)
            .unwrap();
        assert!(!appended);
        assert_eq!(loc.dockerfile, "Dockerfile");
    }

    #[test]
    fn symlinks_are_archived_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "Dockerfile", "FROM x\n");
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        let loc = locate(root, Path::new("."), Path::new("Dockerfile")).unwrap();
        let bytes = archive(&loc, u64::MAX, &AtomicBool::new(false)).unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let link = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap() == Path::new("link"))
            .unwrap();
        assert!(link.header().entry_type().is_symlink());
        assert_eq!(link.header().size().unwrap(), 0);
    }

    #[test]
    fn refuses_paths_that_leave_the_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        write(&root, "app/Dockerfile", "FROM x\n");
        write(dir.path(), "outside/Dockerfile", "FROM x\n");
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("out")).unwrap();
        let escapes = |context: &str, dockerfile: &str| {
            matches!(
                locate(&root, Path::new(context), Path::new(dockerfile)),
                Err(BuildError::Escapes { .. })
            )
        };
        assert!(escapes("..", "Dockerfile"));
        assert!(escapes("app/../..", "Dockerfile"));
        assert!(escapes("/", "Dockerfile"));
        assert!(escapes("app", "../../outside/Dockerfile"));
        assert!(escapes("app", "/etc/passwd"));
        assert!(
            escapes("out", "Dockerfile"),
            "a symlinked context leading out"
        );
        assert!(matches!(
            locate(&root, Path::new("app"), Path::new("nope")),
            Err(BuildError::NotFound {
                what: "dockerfile",
                ..
            })
        ));
        assert!(matches!(
            locate(&root, Path::new("nope"), Path::new("Dockerfile")),
            Err(BuildError::NotFound {
                what: "context",
                ..
            })
        ));
    }

    #[test]
    fn a_dockerfile_outside_the_context_travels_under_a_generated_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "docker/app.Dockerfile", "FROM x\n");
        write(root, "app/main.sh", "echo\n");
        let loc = locate(
            root,
            Path::new("app"),
            Path::new("../docker/app.Dockerfile"),
        )
        .unwrap();
        assert!(loc.dockerfile.starts_with(".dockhand-dockerfile-"));
        let got = names(&archive(&loc, u64::MAX, &AtomicBool::new(false)).unwrap());
        assert!(got.contains(&loc.dockerfile));
        assert!(got.contains("main.sh"));
        assert!(got.contains(".dockerignore"));
        let inside = locate(root, Path::new("."), Path::new("docker/app.Dockerfile")).unwrap();
        assert_eq!(inside.dockerfile, "docker/app.Dockerfile");
    }
}
