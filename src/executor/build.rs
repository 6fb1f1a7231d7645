//! Builds a job's image from a checked-out repository (the spec's `git` field).
//!
//! `context` is relative to the checkout and `dockerfile` relative to the context
//! (as in Compose and the Docker API); neither may lead out of the checkout.
//!
//! Invariants:
//! - The engine's classic builder is used: it needs no network and no session.
//! - Every line the builder prints reaches the caller's [`BuildLog`] as a `build`
//!   line, in order, before [`build`] returns, also when the build fails.
//! - A failing build is [`BuildError::Failed`] carrying the builder's own message;
//!   Docker being unreachable or failing otherwise is [`BuildError::Docker`].
//! - The context is archived in memory up to `max_context_bytes`
//!   (`worker.build_context_bytes`) and refused past it; when the caller stops
//!   waiting for [`build`] (the job's deadline, a cancel), the blocking archiving
//!   stops at its next file.
//! - Images are named by what made them ([`image_tag`]): the same repository,
//!   commit, Dockerfile, context and build args give the same tag, so a tag that
//!   exists ([`cached_image`]) need not be built again.

mod context;
mod dockerignore;
mod error;

pub use dockerignore::DockerIgnore;
pub use error::BuildError;

use crate::logs::{LineSplitter, LogLine, LogSender, LogStream};
use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The default of `worker.build_context_bytes`: the most a build context may hold.
pub const DEFAULT_CONTEXT_BYTES: u64 = 256 << 20;

/// One image to build from a folder on this host.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The checkout; nothing outside it is sent to the builder.
    pub checkout: PathBuf,
    /// The context folder, relative to the checkout (`.`).
    pub context: PathBuf,
    /// The Dockerfile, relative to the context (`Dockerfile`).
    pub dockerfile: PathBuf,
    pub build_args: BTreeMap<String, String>,
    pub tag: String,
    pub labels: BTreeMap<String, String>,
    /// The most the archived context may hold (`worker.build_context_bytes`).
    pub max_context_bytes: u64,
}

impl BuildRequest {
    /// A request with the defaults: context `.`, `Dockerfile`, no args, no labels,
    /// a context of at most [`DEFAULT_CONTEXT_BYTES`].
    pub fn new(checkout: impl Into<PathBuf>, tag: impl Into<String>) -> BuildRequest {
        BuildRequest {
            checkout: checkout.into(),
            context: PathBuf::from("."),
            dockerfile: PathBuf::from("Dockerfile"),
            build_args: BTreeMap::new(),
            tag: tag.into(),
            labels: BTreeMap::new(),
            max_context_bytes: DEFAULT_CONTEXT_BYTES,
        }
    }
}

/// Where the builder's output goes, line by line.
pub trait BuildLog: Sync {
    fn line(&self, line: LogLine) -> impl Future<Output = ()> + Send;
}

impl BuildLog for LogSender {
    fn line(&self, line: LogLine) -> impl Future<Output = ()> + Send {
        self.send(line)
    }
}

/// For callers that collect the lines themselves (tests, `profile build`).
impl BuildLog for tokio::sync::mpsc::UnboundedSender<LogLine> {
    fn line(&self, line: LogLine) -> impl Future<Output = ()> + Send {
        // A dropped receiver means nobody wants the lines any more.
        let _ = self.send(line);
        std::future::ready(())
    }
}

/// Builds the image and tags it `req.tag`; returns its id (`sha256:...`).
/// Builder lines longer than `max_line` bytes are split.
pub async fn build(
    docker: &Docker,
    req: &BuildRequest,
    log: &impl BuildLog,
    max_line: usize,
) -> Result<String, BuildError> {
    let (checkout, ctx, file) = (
        req.checkout.clone(),
        req.context.clone(),
        req.dockerfile.clone(),
    );
    // Labels ride in the Dockerfile as one step when they can (see `context`);
    // otherwise the engine adds them, a step each.
    let label_line = context::label_line(&req.labels);
    let limit = req.max_context_bytes;
    // Set when this future is dropped, so the blocking walk does not outlive it.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    // Walking and reading the context is blocking file work.
    let (dockerfile, archive, labelled) = tokio::task::spawn_blocking(move || {
        let mut located = context::locate(&checkout, &ctx, &file)?;
        let mut labelled = false;
        if let Some(line) = &label_line {
            (located, labelled) = located.with_line(line)?;
        }
        let archive = context::archive(&located, limit, &stop)?;
        Ok::<_, BuildError>((located.dockerfile, archive, labelled))
    })
    .await??;
    let engine_labels = if labelled {
        BTreeMap::new()
    } else {
        req.labels.clone()
    };
    tracing::debug!(tag = %req.tag, bytes = archive.len(), "build context archived");

    let build_args: HashMap<&str, &str> = req
        .build_args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let labels: HashMap<&str, &str> = engine_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let opts = BuildImageOptionsBuilder::default()
        .dockerfile(&dockerfile)
        .t(&req.tag)
        .buildargs(&build_args)
        .labels(&labels)
        .rm(true)
        .forcerm(true)
        .build();
    // bollard panics on a `None` body.
    let body = bollard::body_full(archive.into());
    let mut stream = docker.build_image(opts, None, Some(body));
    let mut splitter = LineSplitter::new(LogStream::Build, max_line);
    let mut lines = Vec::new();
    let mut image_id = None;
    let mut failure = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = &info.stream {
                    splitter.push(text.as_bytes(), &mut lines);
                }
                // Status lines come from pulling a base image; the progress bars
                // that go with them are left out.
                if let (Some(status), None) = (&info.status, &info.progress_detail) {
                    let text = match &info.id {
                        Some(id) => format!("{id}: {status}\n"),
                        None => format!("{status}\n"),
                    };
                    splitter.push(text.as_bytes(), &mut lines);
                }
                if let Some(id) = info.aux.and_then(|aux| aux.id) {
                    image_id = Some(id);
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                failure = Some(BuildError::Failed { message: error });
                break;
            }
            // The engine refused the request itself: a bad tag, a bad Dockerfile path.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 400,
                message,
            }) => {
                failure = Some(BuildError::Failed { message });
                break;
            }
            Err(source) => {
                failure = Some(BuildError::Docker {
                    action: "build the image",
                    source,
                });
                break;
            }
        }
        for line in lines.drain(..) {
            log.line(line).await;
        }
    }
    splitter.finish(&mut lines);
    for line in lines.drain(..) {
        log.line(line).await;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    match image_id {
        Some(id) => Ok(id),
        // Older engines do not send the `aux` item; the tag says it all the same.
        None => cached_image(docker, &req.tag)
            .await?
            .ok_or_else(|| BuildError::Failed {
                message: format!("the builder ended without producing {}", req.tag),
            }),
    }
}

/// Sets its flag when dropped: when [`build`] ends or its caller stops waiting.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The id of the image tagged `tag`, if this engine has it.
pub async fn cached_image(docker: &Docker, tag: &str) -> Result<Option<String>, BuildError> {
    match docker.inspect_image(tag).await {
        Ok(image) => Ok(image.id),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(source) => Err(BuildError::Docker {
            action: "inspect the image",
            source,
        }),
    }
}

/// The tag of the image built from these inputs:
/// `dockhand-git/<repo slug>:<commit 12>-<hash 8 of all inputs>`.
///
/// The slug is for people; the hash covers the URL, the commit, the
/// Dockerfile, the context and the build args (`./Dockerfile` and `Dockerfile`
/// count as the same), so two different inputs do not share a tag.
pub fn image_tag(
    repo_url: &str,
    commit: &str,
    dockerfile: &str,
    context: &str,
    build_args: &BTreeMap<String, String>,
) -> String {
    let inputs = serde_json::json!([
        "dockhand-image-v1",
        repo_url,
        commit,
        clean_path(dockerfile),
        clean_path(context),
        build_args,
    ]);
    let digest = hex::encode(Sha256::digest(inputs.to_string().as_bytes()));
    let commit: String = commit
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect();
    let commit = if commit.is_empty() {
        "unknown".to_string()
    } else {
        commit
    };
    format!(
        "dockhand-git/{}:{commit}-{}",
        repo_slug(repo_url),
        &digest[..8]
    )
}

/// The last two path segments of a repository URL, in the characters a Docker
/// repository name allows: `https://h/Org/My_App.git` → `org-my-app`.
fn repo_slug(url: &str) -> String {
    let path = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let segments: Vec<&str> = path.split(['/', ':']).filter(|s| !s.is_empty()).collect();
    let tail = &segments[segments.len().saturating_sub(2)..];
    let mut slug = String::new();
    for c in tail.join("-").chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.truncate(64);
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "repo".to_string()
    } else {
        slug.to_string()
    }
}

/// `./a//b/` → `a/b`; `.` and `` → `.`.
fn clean_path(p: &str) -> String {
    let parts: Vec<&str> = Path::new(p)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .map(|c| c.as_os_str().to_str().unwrap_or_default())
        .collect();
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker's reference grammar, for the parts `image_tag` produces.
    fn is_valid_reference(r: &str) -> bool {
        let Some((name, tag)) = r.rsplit_once(':') else {
            return false;
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        };
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_')
            && tag
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch));
        name.len() <= 255 && name.split('/').all(component_ok) && tag_ok
    }

    #[test]
    fn tag_format() {
        let args = BTreeMap::new();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let tag = image_tag(
            "https://github.com/Org/My_App.git",
            commit,
            "Dockerfile",
            ".",
            &args,
        );
        let (name, version) = tag.split_once(':').unwrap();
        assert_eq!(name, "dockhand-git/org-my-app");
        assert!(version.starts_with("0123456789ab-"), "{tag}");
        assert_eq!(version.len(), 12 + 1 + 8);
        assert!(is_valid_reference(&tag), "{tag}");
    }

    #[test]
    fn tag_is_deterministic_and_covers_every_input() {
        let mut args = BTreeMap::new();
        args.insert("A".to_string(), "1".to_string());
        let c = "0123456789abcdef0123456789abcdef01234567";
        let base = image_tag("https://h/x/y", c, "Dockerfile", ".", &args);
        assert_eq!(
            base,
            image_tag("https://h/x/y", c, "./Dockerfile", "./", &args)
        );
        let mut other_args = args.clone();
        other_args.insert("A".to_string(), "2".to_string());
        for other in [
            image_tag("https://h/x/z", c, "Dockerfile", ".", &args),
            image_tag(
                "https://h/x/y",
                &c.replace('0', "1"),
                "Dockerfile",
                ".",
                &args,
            ),
            image_tag("https://h/x/y", c, "other.Dockerfile", ".", &args),
            image_tag("https://h/x/y", c, "Dockerfile", "app", &args),
            image_tag("https://h/x/y", c, "Dockerfile", ".", &other_args),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn odd_urls_still_give_valid_references() {
        let args = BTreeMap::new();
        for url in [
            "/tmp/.tmpAbC/super",
            "file:///srv/git/--weird__name--.git/",
            "https://h.example",
            "https://h.example/ÜNICODE/repo",
            &format!("https://h/{}", "a".repeat(300)),
        ] {
            let tag = image_tag(url, "ABCDEF0123456789", "Dockerfile", ".", &args);
            assert!(is_valid_reference(&tag), "{url} -> {tag}");
        }
        assert_eq!(repo_slug("/tmp/.tmpAbC/super"), "tmpabc-super");
        assert_eq!(repo_slug("https://h.example"), "repo");
    }
}
