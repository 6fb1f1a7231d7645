//! The images of jobs from `git`: this worker's mirror cache, the checkouts, and
//! the builds under way (resolve the ref, find the image cached, or check the
//! commit out and build it).
//!
//! Invariants:
//! - A branch or tag is resolved to its commit first (one `ls-remote`), and an
//!   image tagged for that commit and those build inputs is used as it is: no
//!   clone, no build. Dockhand never runs an image built from another commit.
//! - One worker process builds one tag at most once at a time: a job that wants a
//!   tag being built waits for that build, then finds the image cached.
//! - A checkout lives under `<cache root>/work/` only while its image builds, and
//!   is removed afterwards whatever happened (a killed worker's are removed at
//!   its next start).
//! - Every builder line goes to the job's log as a `build` line, before the run's
//!   own lines and in the same `seq`.

use crate::config::Settings;
use crate::executor::build::{self, BuildError, BuildLog, BuildRequest};
use crate::job::{GitBuild, Reason};
use crate::source::{Credentials, GitCache, GitError, SourcePolicy};
use bollard::Docker;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Why a job's image could not be made ready.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl PrepareError {
    /// `build_error`, unless the Docker engine itself failed us or the policy
    /// refused a URL (a submodule's host, a local repository, the cache, an address).
    pub fn reason(&self) -> Reason {
        match self {
            PrepareError::Build(BuildError::Docker { .. }) => Reason::DockerError,
            PrepareError::Git(e) if e.is_policy() => Reason::PolicyDenied,
            _ => Reason::BuildError,
        }
    }

    /// The Docker engine did not answer (see `ExecError::is_transient`).
    pub fn docker_unreachable(&self) -> bool {
        matches!(self, PrepareError::Build(BuildError::Docker { source, .. }) if crate::executor::unreachable(source))
    }
}

/// An image ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub tag: String,
    pub image_id: String,
    /// False when the image was found cached.
    pub built: bool,
    /// How long its checkout and build took, when it was built.
    pub build_time: Option<std::time::Duration>,
}

impl Ready {
    /// The metrics of making it ready: a cache hit, or a miss and its build time.
    pub fn observed(&self) -> Vec<crate::metrics::Inc> {
        use crate::metrics::{BUILD_CACHE, BUILD_TIME};
        match self.build_time {
            Some(took) if self.built => {
                let mut incs = vec![BUILD_CACHE.inc(&["miss"])];
                incs.extend(BUILD_TIME.observe(&[], took.as_secs_f64()));
                incs
            }
            _ => vec![BUILD_CACHE.inc(&["hit"])],
        }
    }
}

/// This worker's git mirrors, its checkouts, and the builds under way. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Images {
    /// Opened at the first job from git, so a worker that never runs one never
    /// writes to `worker.cache_dir`.
    git: Arc<OnceLock<GitCache>>,
    root: PathBuf,
    credentials: Credentials,
    /// `policy.git_hosts`, `git_file_urls`, `git_allow_networks`; `worker.cache_dir`
    /// forbidden.
    policy: SourcePolicy,
    work: PathBuf,
    docker: Docker,
    max_line: usize,
    /// `worker.build_context_bytes`.
    max_context: u64,
    /// `worker.git_timeout_seconds`: how long a git server may stall.
    git_timeout: std::time::Duration,
    /// Tag → the lock its build holds. A std Mutex: nothing is awaited while it is held.
    building: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Images {
    /// Uses `<worker.cache_dir>/<worker id>`, and removes the checkouts an earlier
    /// run of this worker left there.
    pub fn open(settings: &Settings, worker_id: &str, docker: Docker) -> Result<Images, GitError> {
        let root = cache_root(&settings.worker.cache_dir, worker_id);
        let mut credentials = Credentials::new();
        for (host, token) in &settings.worker.git_tokens.0 {
            credentials = credentials.with(host.clone(), token.clone());
        }
        let work = root.join("work");
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(GitError::io("remove", &work))?;
        }
        Ok(Images {
            git: Arc::default(),
            root,
            credentials,
            policy: SourcePolicy {
                hosts: settings.policy.git_hosts.clone(),
                file_urls: settings.policy.git_file_urls,
                guard: SourcePolicy::guard(&settings.policy.git_allow_networks),
                forbidden: vec![settings.worker.cache_dir.clone()],
            },
            work,
            docker,
            max_line: settings.jobs.max_line_bytes,
            max_context: settings.worker.build_context_bytes.0,
            git_timeout: std::time::Duration::from_secs(settings.worker.git_timeout_seconds),
            building: Arc::default(),
        })
    }

    /// The mirror cache, opened (and its folders made) on first use.
    fn cache(&self) -> Result<&GitCache, GitError> {
        if let Some(cache) = self.git.get() {
            return Ok(cache);
        }
        let cache = GitCache::open_with(
            &self.root,
            self.credentials.clone(),
            self.policy.clone(),
            self.git_timeout,
        )?;
        std::fs::create_dir_all(&self.work).map_err(GitError::io("create", &self.work))?;
        // Two jobs may open it at once; both caches are the same folders.
        Ok(self.git.get_or_init(|| cache))
    }

    /// The commit the job's ref names now.
    pub async fn resolve(&self, git: &GitBuild) -> Result<String, GitError> {
        self.cache()?.resolve(&git.source).await
    }

    /// The tag of the image built from `commit` with the job's build inputs.
    pub fn tag(git: &GitBuild, commit: &str) -> String {
        build::image_tag(
            &git.public_url,
            commit,
            &git.dockerfile,
            &git.context,
            &git.build_args,
        )
    }

    /// Finds the image of `commit` cached, or checks it out and builds it,
    /// sending the builder's lines to `log`.
    pub async fn ensure(
        &self,
        git: &GitBuild,
        commit: &str,
        log: &impl BuildLog,
    ) -> Result<Ready, PrepareError> {
        let tag = Self::tag(git, commit);
        if let Some(image_id) = build::cached_image(&self.docker, &tag).await? {
            return Ok(Ready {
                tag,
                image_id,
                built: false,
                build_time: None,
            });
        }
        let lock = {
            let mut building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
            building.entry(tag.clone()).or_default().clone()
        };
        let result = async {
            let _held = lock.lock().await;
            // Whoever held the lock before may have built it.
            if let Some(image_id) = build::cached_image(&self.docker, &tag).await? {
                return Ok(Ready {
                    tag: tag.clone(),
                    image_id,
                    built: false,
                    build_time: None,
                });
            }
            // Timed from here: waiting for another job's build of the tag is not building.
            let began = std::time::Instant::now();
            let image_id = self.build(git, commit, &tag, log).await?;
            Ok(Ready {
                tag: tag.clone(),
                image_id,
                built: true,
                build_time: Some(began.elapsed()),
            })
        }
        .await;
        drop(lock);
        self.building
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, l| Arc::strong_count(l) > 1);
        result
    }

    async fn build(
        &self,
        git: &GitBuild,
        commit: &str,
        tag: &str,
        log: &impl BuildLog,
    ) -> Result<String, PrepareError> {
        let scratch = Scratch(
            self.work
                .join(ulid::Ulid::new().to_string().to_ascii_lowercase()),
        );
        self.cache()?
            .checkout(&git.source, commit, &scratch.0)
            .await?;
        let mut req = BuildRequest::new(&scratch.0, tag);
        req.context = PathBuf::from(&git.context);
        req.dockerfile = PathBuf::from(&git.dockerfile);
        req.build_args = git.build_args.clone();
        req.max_context_bytes = self.max_context;
        // Two labels only: the classic builder adds each as a step of its own (a
        // container each, about a second on a small host). The Dockerfile, the
        // context and the build args are in the tag's hash.
        req.labels = BTreeMap::from([
            ("dockhand.repo".to_string(), git.public_url.clone()),
            ("dockhand.commit".to_string(), commit.to_string()),
        ]);
        let id = build::build(&self.docker, &req, log, self.max_line).await?;
        tracing::info!(tag = %tag, image_id = %id, "image built");
        Ok(id)
    }
}

/// `<cache_dir>/<worker id>`, the id made safe as one path component.
fn cache_root(dir: &Path, worker_id: &str) -> PathBuf {
    dir.join(crate::config::path_component(worker_id))
}

/// A checkout folder, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.0);
        let remove = move || {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a checkout");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_root_is_one_folder_per_worker_id() {
        let base = Path::new("/var/tmp/dockhand");
        assert_eq!(cache_root(base, "host-1"), base.join("host-1"));
        assert_eq!(cache_root(base, "a/../b"), base.join("a_.._b"));
        assert_eq!(cache_root(base, ".."), base.join("w.."));
    }
}
