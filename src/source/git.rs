//! Jobs from git: resolve a branch or tag to a commit, and check a commit out,
//! submodules included, from a cache of bare mirrors.
//!
//! The cache keeps one bare mirror per repository URL at
//! `<root>/repos/<first 16 hex of sha256(url)>`; its `description` file names the
//! URL (without credentials) for whoever looks at the folder. A checkout is a
//! fresh repository in the job's folder whose `.git/objects/info/alternates`
//! points at the mirror's objects, so checking out copies the files and nothing
//! else.
//!
//! Invariants:
//! - All git2 work runs in `spawn_blocking`; the public API is async. Dropping
//!   the future of [`GitCache::resolve`] or [`GitCache::checkout`] (the job's
//!   deadline passed, the job was cancelled) sets a stop flag that ends the
//!   blocking work soon after: it is checked between steps, by libgit2's transfer,
//!   sideband and checkout callbacks, while waiting for a mirror lock, and by the
//!   loopback relay every network step goes through ([`super::relay`]: a relay for
//!   http, a `CONNECT` tunnel for https), which cuts the connection even when a
//!   server drips a byte at a time. The mirror lock is released as the blocking
//!   work ends.
//! - One process never writes a mirror from two threads at once: a std Mutex per
//!   mirror path, taken inside the blocking task (nothing is awaited while it is
//!   held). Reading objects through alternates needs no lock: a fetch only adds
//!   objects and moves refs. Two *processes* sharing a cache root are not locked
//!   against each other (libgit2's own ref locks make the worst case a failed
//!   fetch, not a corrupt mirror); give each worker process its own root.
//! - A commit already in the mirror is not fetched again; a missing one is
//!   fetched by id first, then, when the server refuses that, with all branches and
//!   tags, so a commit that is no branch tip still works.
//! - A checkout lives no longer than the cache: its objects stay in the mirror.
//! - Every URL, the job's and each submodule's, passes the [`SourcePolicy`]
//!   before libgit2 is handed it: a local one only when allowed and outside the
//!   worker's cache (libgit2 gets its canonical path), an http(s) one only when
//!   every address of its host passes the SSRF guard, checked right before each
//!   connection (`ls-remote`, each fetch). No redirect to another host is followed:
//!   fetches say so, and `ls-remote` runs from a small empty repository (`probe/`)
//!   whose configuration says `http.followRedirects = false`.
//! - Submodules are resolved against the superproject's URL like git does, fetched
//!   through the same cache (so they are cached, take the same credentials and may
//!   be `file://` when the policy allows local repositories), and checked out
//!   recursively at the commit the superproject records. A submodule with
//!   `update = none` is skipped. At most [`MAX_SUBMODULES`] are checked out, all
//!   levels together, nested at most [`MAX_SUBMODULE_DEPTH`] deep; past either the
//!   checkout fails naming the limit. A local submodule (a path or `file://`) is only
//!   followed from a local superproject: a repository from the network may not
//!   read this host's repositories.

use super::credentials::Credentials;
use super::error::GitError;
use super::policy::SourcePolicy;
use super::relay::Relay;
use super::stop::Stop;
use super::url::{RepoUrl, Transport};
use git2::build::CheckoutBuilder;
use git2::{
    AutotagOption, CheckoutNotificationType, Direction, FetchOptions, ObjectType, Oid,
    ProxyOptions, RemoteCallbacks, RemoteRedirect, Repository, SubmoduleUpdate,
};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, TryLockError};
use std::time::Duration;

/// Deeper nesting than this is refused: it is almost surely a loop of repositories.
pub const MAX_SUBMODULE_DEPTH: usize = 8;

/// More submodules than this, all levels together, are refused: each is a fetch
/// and a checkout, and a repository could list thousands.
pub const MAX_SUBMODULES: usize = 64;

/// What to check out.
#[derive(Clone, PartialEq, Eq)]
pub enum Reference {
    /// The remote's `HEAD` (its default branch).
    Default,
    Branch(String),
    Tag(String),
    /// A full 40-hex commit id.
    Commit(String),
}

impl std::fmt::Debug for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Default => f.write_str("HEAD"),
            Reference::Branch(b) => write!(f, "branch {b}"),
            Reference::Tag(t) => write!(f, "tag {t}"),
            Reference::Commit(c) => write!(f, "commit {c}"),
        }
    }
}

/// A repository, the ref a job asked for, and whether to fetch its submodules.
#[derive(Clone, PartialEq, Eq)]
pub struct GitSource {
    pub url: String,
    pub reference: Reference,
    pub submodules: bool,
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource")
            .field("url", &super::url::redact(&self.url))
            .field("reference", &self.reference)
            .field("submodules", &self.submodules)
            .finish()
    }
}

/// What [`GitCache::checkout`] put in the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The commit checked out (a tag's commit, when asked for a tag object).
    pub commit: String,
    /// Paths of the submodules checked out, relative to the destination, nested
    /// ones as `outer/inner`, in the order they were checked out.
    pub submodules: Vec<String>,
}

/// How long a git server may stall a [`GitCache::open`]ed cache: the default of
/// `worker.git_timeout_seconds`.
pub const DEFAULT_NETWORK_TIMEOUT: Duration = Duration::from_secs(60);

/// A folder of bare mirrors and the tokens to fetch them with. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GitCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    repos: PathBuf,
    /// An empty bare repository that `ls-remote` runs from, for its configuration.
    probe: PathBuf,
    credentials: Credentials,
    /// What may be fetched; its forbidden folders include the cache's root.
    policy: SourcePolicy,
    /// How long a git server may take to accept a connection, and then to answer
    /// each read or write (`worker.git_timeout_seconds`).
    network_timeout: Duration,
}

impl GitCache {
    /// Uses (and creates) `<root>/repos`, with the strict [`SourcePolicy`] (no
    /// local repository, only public addresses); a git server gets
    /// [`DEFAULT_NETWORK_TIMEOUT`].
    pub fn open(root: impl AsRef<Path>, credentials: Credentials) -> Result<GitCache, GitError> {
        Self::open_with(
            root,
            credentials,
            SourcePolicy::default(),
            DEFAULT_NETWORK_TIMEOUT,
        )
    }

    /// Like [`GitCache::open`]; fetches what `policy` allows (`root` is added to
    /// its forbidden folders), and a git server that does not answer for
    /// `network_timeout` fails the step.
    pub fn open_with(
        root: impl AsRef<Path>,
        credentials: Credentials,
        mut policy: SourcePolicy,
        network_timeout: Duration,
    ) -> Result<GitCache, GitError> {
        let repos = root.as_ref().join("repos");
        std::fs::create_dir_all(&repos).map_err(GitError::io("create", &repos))?;
        // Absolute, because checkouts point at mirrors by path.
        let repos = repos
            .canonicalize()
            .map_err(GitError::io("resolve", &repos))?;
        let root = repos.parent().unwrap_or(&repos).to_path_buf();
        let probe = root.join("probe");
        make_probe(&probe)?;
        policy.forbidden.push(root);
        Ok(GitCache {
            inner: Arc::new(Inner {
                repos,
                probe,
                credentials,
                policy,
                network_timeout,
            }),
        })
    }

    /// Where the mirror of `url` lives (whether or not it exists yet).
    pub fn mirror_path(&self, url: &str) -> PathBuf {
        self.inner.mirror_path(url)
    }

    /// The commit `source.reference` names now, asked of the remote without
    /// fetching (like `git ls-remote`). A commit id is returned as given, after
    /// checking its form; [`GitCache::checkout`] finds out whether it exists.
    pub async fn resolve(&self, source: &GitSource) -> Result<String, GitError> {
        let inner = self.inner.clone();
        let source = source.clone();
        let stop = Stop::default();
        let _stop_when_dropped = stop.on_drop();
        tokio::task::spawn_blocking(move || inner.resolve(&source, &stop)).await?
    }

    /// Checks `commit` of `source.url` out into `dest` (created; must be empty),
    /// with its submodules when `source.submodules` is set.
    pub async fn checkout(
        &self,
        source: &GitSource,
        commit: &str,
        dest: &Path,
    ) -> Result<Checkout, GitError> {
        let inner = self.inner.clone();
        let source = source.clone();
        let commit = commit.to_string();
        let dest = dest.to_path_buf();
        let stop = Stop::default();
        let _stop_when_dropped = stop.on_drop();
        tokio::task::spawn_blocking(move || inner.checkout(&source, &commit, &dest, &stop)).await?
    }
}

impl Inner {
    fn mirror_path(&self, url: &str) -> PathBuf {
        let digest = hex::encode(Sha256::digest(url.as_bytes()));
        self.repos.join(&digest[..16])
    }

    /// What libgit2 is handed for `url`, checked by the policy right before it
    /// connects: a local repository's canonical folder; for http the URL of a relay
    /// to the addresses the guard passed, which `stop` cuts off; for https the URL
    /// itself, with a tunnel to those addresses that the stop cuts, to be given to
    /// libgit2 as its proxy ([`proxy`]). Keep the relay while the step runs.
    /// Blocking.
    fn target(&self, url: &RepoUrl, stop: &Stop) -> Result<(String, Option<Relay>), GitError> {
        if url.is_local() {
            let Some(folder) = self.policy.local_source(url)? else {
                return Err(GitError::RepositoryNotFound {
                    url: url.public().to_string(),
                    source: None,
                });
            };
            // A folder whose name is not UTF-8 cannot have come from a URL; keep
            // the URL's own path then (it was checked all the same).
            let folder = folder
                .into_os_string()
                .into_string()
                .unwrap_or_else(|_| url.local_path().unwrap_or_default().display().to_string());
            return Ok((folder, None));
        }
        let addresses = self.policy.check_addresses(url)?;
        if url.transport() != Transport::Http {
            // https: the URL stays (the certificate names the server); libgit2
            // reaches it through a tunnel on loopback (see `proxy`), to the
            // addresses checked, which the stop cuts.
            let relay =
                Relay::tunnel(addresses, stop, self.network_timeout).map_err(GitError::Relay)?;
            return Ok((url.raw().to_string(), Some(relay)));
        }
        let authority = url.authority().unwrap_or_default();
        let relay = Relay::start(addresses, authority, stop, self.network_timeout)
            .map_err(GitError::Relay)?;
        Ok((relay.url_for(url.raw()), Some(relay)))
    }

    fn resolve(&self, source: &GitSource, stop: &Stop) -> Result<String, GitError> {
        let url = RepoUrl::parse(&source.url)?;
        // Even a commit, which needs no connection here, is refused now rather
        // than at checkout.
        self.policy.local_source(&url)?;
        let (kind, name, wanted) = match &source.reference {
            Reference::Commit(c) => return parse_commit(c).map(|oid| oid.to_string()),
            Reference::Default => (
                "default branch",
                "HEAD".to_string(),
                vec!["HEAD".to_string()],
            ),
            Reference::Branch(b) => {
                let b = ref_name("branch", b, "refs/heads/")?;
                let full = format!("refs/heads/{b}");
                ("branch", b, vec![full])
            }
            Reference::Tag(t) => {
                let t = ref_name("tag", t, "refs/tags/")?;
                // An annotated tag is listed twice; the `^{}` line is its commit.
                let peeled = format!("refs/tags/{t}^{{}}");
                let plain = format!("refs/tags/{t}");
                ("tag", t, vec![peeled, plain])
            }
        };
        stop.check()?;
        let (target, relay) = self.target(&url, stop)?;
        let probe = Repository::open_bare(&self.probe)
            .map_err(|e| url.git_error("open the cache's probe repository", e))?;
        let found = super::timeout::with(self.network_timeout, || {
            let mut remote = probe
                .remote_anonymous(&target)
                .map_err(|e| url.git_error("open the remote", e))?;
            let attempts = Cell::new(0);
            let callbacks = watched(self.credentials.callbacks(&url, &attempts), stop);
            let connection = remote
                .connect_auth(Direction::Fetch, Some(callbacks), proxy(relay.as_ref()))
                .map_err(|e| stop.or(url.git_error("connect", e)))?;
            let heads = connection
                .list()
                .map_err(|e| stop.or(url.git_error("list the remote's refs", e)))?;
            Ok::<_, GitError>(
                wanted
                    .iter()
                    .find_map(|w| heads.iter().find(|h| h.name() == w).map(|h| h.oid())),
            )
        })?;
        match found {
            Some(oid) => Ok(oid.to_string()),
            None => Err(GitError::RefNotFound {
                kind,
                name,
                url: url.public().to_string(),
            }),
        }
    }

    fn checkout(
        &self,
        source: &GitSource,
        commit: &str,
        dest: &Path,
        stop: &Stop,
    ) -> Result<Checkout, GitError> {
        let url = RepoUrl::parse(&source.url)?;
        let wanted = parse_commit(commit)?;
        prepare_dest(dest)?;
        let (mirror, oid) = self.fetch_commit(&url, wanted, stop)?;
        populate(&mirror, &url, oid, dest, stop)?;
        let mut found = Found {
            paths: Vec::new(),
            stop,
        };
        if source.submodules {
            self.update_submodules(dest, &url, oid, "", 1, &mut found)?;
        }
        let submodules = found.paths;
        tracing::info!(url = %url, commit = %oid, submodules = submodules.len(), "checked out");
        Ok(Checkout {
            commit: oid.to_string(),
            submodules,
        })
    }

    /// Makes sure the mirror of `url` has `wanted`; returns the mirror and the
    /// commit (`wanted` itself, or the commit a tag object points at).
    fn fetch_commit(
        &self,
        url: &RepoUrl,
        wanted: Oid,
        stop: &Stop,
    ) -> Result<(PathBuf, Oid), GitError> {
        // Before the cache is looked at: what the policy refuses is not served
        // from a mirror made under another policy either.
        self.policy.local_source(url)?;
        let path = self.mirror_path(url.raw());
        let lock = mirror_lock(&path);
        let _held = lock_unless_stopped(&lock, stop)?;
        let repo = open_mirror(&path, url)?;
        if let Some(commit) = peel_commit(&repo, wanted) {
            tracing::debug!(url = %url, commit = %commit, "commit already in the cache");
            return Ok((path, commit));
        }
        match self.fetch(&repo, url, &[wanted.to_string().as_str()], stop) {
            Ok(()) => {}
            // The same would happen again below.
            Err(
                e @ (GitError::Auth { .. }
                | GitError::RepositoryNotFound { .. }
                | GitError::Stopped),
            ) => return Err(e),
            Err(e) if e.is_policy() => return Err(e),
            // Servers may refuse a commit by id that is no ref tip (git does by default).
            Err(e) => {
                tracing::debug!(url = %url, commit = %wanted, error = %e, "fetch by id failed; fetching all branches and tags")
            }
        }
        if let Some(commit) = peel_commit(&repo, wanted) {
            return Ok((path, commit));
        }
        self.fetch(
            &repo,
            url,
            &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            stop,
        )?;
        match peel_commit(&repo, wanted) {
            Some(commit) => Ok((path, commit)),
            None => Err(GitError::CommitNotFound {
                commit: wanted.to_string(),
                url: url.public().to_string(),
            }),
        }
    }

    fn fetch(
        &self,
        repo: &Repository,
        url: &RepoUrl,
        refspecs: &[&str],
        stop: &Stop,
    ) -> Result<(), GitError> {
        stop.check()?;
        let (target, relay) = self.target(url, stop)?;
        let mut remote = repo
            .remote_anonymous(&target)
            .map_err(|e| url.git_error("open the remote", e))?;
        let attempts = Cell::new(0);
        let mut opts = FetchOptions::new();
        if let Some(proxy) = proxy(relay.as_ref()) {
            opts.proxy_options(proxy);
        }
        opts.remote_callbacks(watched(self.credentials.callbacks(url, &attempts), stop))
            .download_tags(AutotagOption::None)
            .follow_redirects(RemoteRedirect::None)
            .update_fetchhead(false);
        super::timeout::with(self.network_timeout, || {
            remote
                .fetch(refspecs, Some(&mut opts), None)
                .map_err(|e| stop.or(url.git_error("fetch", e)))
        })
    }

    /// Checks out, recursively, the submodules `commit` records in the
    /// repository at `dir`, adding their paths to `out.paths`.
    fn update_submodules(
        &self,
        dir: &Path,
        parent: &RepoUrl,
        commit: Oid,
        prefix: &str,
        depth: usize,
        out: &mut Found<'_>,
    ) -> Result<(), GitError> {
        let stop = out.stop;
        let git = |action| move |e| parent.git_error(action, e);
        let repo = Repository::open(dir).map_err(git("open the checkout"))?;
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(git("read the commit's tree"))?;
        let submodules = repo.submodules().map_err(git("read .gitmodules"))?;
        for sub in &submodules {
            stop.check()?;
            if sub.update_strategy() == SubmoduleUpdate::None {
                continue;
            }
            let rel = sub.path().to_path_buf();
            let shown = format!("{prefix}{}", rel.display());
            // Listed in .gitmodules but not recorded in the commit: git skips it too.
            let Some(gitlink) = tree
                .get_path(&rel)
                .ok()
                .filter(|e| e.kind() == Some(ObjectType::Commit))
            else {
                continue;
            };
            let raw = sub.url().ok().flatten().unwrap_or_default().to_string();
            let fail = |url: String, e: GitError| GitError::Submodule {
                path: shown.clone(),
                url,
                source: Box::new(e),
            };
            if depth > MAX_SUBMODULE_DEPTH {
                return Err(fail(raw, GitError::TooDeep(MAX_SUBMODULE_DEPTH)));
            }
            if out.paths.len() >= MAX_SUBMODULES {
                return Err(fail(raw, GitError::TooManySubmodules(MAX_SUBMODULES)));
            }
            if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(fail(raw, GitError::UnsafePath(shown.clone())));
            }
            let url = parent
                .join_submodule(&raw)
                .map_err(|e| fail(raw.clone(), e))?;
            // A local submodule is refused like a local job URL (and one inside the
            // cache always), before the rule below.
            self.policy
                .local_source(&url)
                .map_err(|e| fail(url.public().to_string(), e))?;
            // Like git's protocol.file.allow=user: a repository from elsewhere may not
            // pull this host's own repositories into a job.
            if url.is_local() && !parent.is_local() {
                let reason =
                    format!("a submodule of {parent} may not point into this host's files");
                return Err(fail(raw.clone(), GitError::InvalidUrl { url: raw, reason }));
            }
            if !url.allowed_by(&self.policy.hosts) {
                let public = url.public().to_string();
                return Err(fail(
                    public.clone(),
                    GitError::HostNotAllowed { url: public },
                ));
            }
            let (mirror, oid) = self
                .fetch_commit(&url, gitlink.id(), stop)
                .map_err(|e| stop.or(fail(url.public().to_string(), e)))?;
            let sub_dir = dir.join(&rel);
            // The superproject's checkout left an empty folder for the gitlink.
            populate(&mirror, &url, oid, &sub_dir, stop)
                .map_err(|e| stop.or(fail(url.public().to_string(), e)))?;
            out.paths.push(shown.clone());
            // Errors below already name their own, longer, path.
            self.update_submodules(&sub_dir, &url, oid, &format!("{shown}/"), depth + 1, out)?;
        }
        Ok(())
    }
}

/// The submodules checked out so far, all levels together, and the step's stop.
struct Found<'a> {
    paths: Vec<String>,
    stop: &'a Stop,
}

/// Creates `dest` if needed; refuses one with anything in it.
fn prepare_dest(dest: &Path) -> Result<(), GitError> {
    std::fs::create_dir_all(dest).map_err(GitError::io("create", dest))?;
    let mut entries = std::fs::read_dir(dest).map_err(GitError::io("read", dest))?;
    if entries.next().is_some() {
        return Err(GitError::DestinationNotEmpty(dest.to_path_buf()));
    }
    Ok(())
}

/// A fresh repository at `dest` borrowing the mirror's objects, with `oid`
/// checked out on a detached HEAD and `origin` set to the URL (without
/// credentials), so that tools run in the checkout see where it came from.
fn populate(
    mirror: &Path,
    url: &RepoUrl,
    oid: Oid,
    dest: &Path,
    stop: &Stop,
) -> Result<(), GitError> {
    let git = |action| move |e| stop.or(url.git_error(action, e));
    stop.check()?;
    prepare_dest(dest)?;
    let repo = Repository::init(dest).map_err(git("create the checkout"))?;
    let info = repo.path().join("objects").join("info");
    std::fs::create_dir_all(&info).map_err(GitError::io("create", &info))?;
    let mut alternates = mirror.join("objects").into_os_string();
    alternates.push("\n");
    let alternates_file = info.join("alternates");
    std::fs::write(&alternates_file, alternates.as_encoded_bytes())
        .map_err(GitError::io("write", &alternates_file))?;
    drop(repo);
    // Opened again: the object database reads `alternates` when it is opened.
    let repo = Repository::open(dest).map_err(git("open the checkout"))?;
    repo.remote("origin", &url.anonymous())
        .map_err(git("record the origin"))?;
    let commit = repo.find_commit(oid).map_err(git("read the commit"))?;
    let mut files = CheckoutBuilder::new();
    files.force();
    // Called for each file written: answering false aborts the checkout.
    files
        .notify_on(CheckoutNotificationType::UPDATED)
        .notify(|_, _, _, _, _| !stop.is_set());
    repo.checkout_tree(commit.as_object(), Some(&mut files))
        .map_err(git("check the files out"))?;
    repo.set_head_detached(oid).map_err(git("set HEAD"))?;
    Ok(())
}

/// Opens the bare mirror at `path`, creating it if missing; one that cannot be
/// opened (say, a crash half-way through creating it) is made again.
fn open_mirror(path: &Path, url: &RepoUrl) -> Result<Repository, GitError> {
    if path.exists() {
        match Repository::open_bare(path) {
            Ok(repo) => return Ok(repo),
            Err(e) => {
                tracing::warn!(url = %url, path = %path.display(), error = %e, "cannot open the cached mirror; starting it again");
                std::fs::remove_dir_all(path).map_err(GitError::io("remove", path))?;
            }
        }
    }
    let repo =
        Repository::init_bare(path).map_err(|e| url.git_error("create the cache mirror", e))?;
    let description = path.join("description");
    std::fs::write(&description, format!("{}\n", url.anonymous()))
        .map_err(GitError::io("write", &description))?;
    Ok(repo)
}

/// The commit `oid` is, or that the tag object `oid` points at, if the mirror has it.
fn peel_commit(repo: &Repository, oid: Oid) -> Option<Oid> {
    let object = repo.find_object(oid, None).ok()?;
    object.peel_to_commit().ok().map(|c| c.id())
}

/// Creates (once) the empty bare repository `ls-remote` runs from: libgit2 takes
/// the redirect setting from the remote's repository, and a detached remote would
/// follow a redirect of the first request to any host. Two caches of one root may
/// be opened at once, so it is made aside and renamed into place.
fn make_probe(path: &Path) -> Result<(), GitError> {
    let failed = |e: git2::Error| GitError::Git {
        action: "prepare the cache's probe repository",
        url: path.display().to_string(),
        source: e,
    };
    let no_redirects = |repo: &Repository| -> Result<(), git2::Error> {
        let mut config = repo.config()?;
        if config.get_bool("http.followRedirects").ok() != Some(false) {
            config.set_bool("http.followRedirects", false)?;
        }
        Ok(())
    };
    if let Ok(repo) = Repository::open_bare(path) {
        return no_redirects(&repo).map_err(failed);
    }
    let aside = path.with_file_name(format!(
        "probe.{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    ));
    let made = Repository::init_bare(&aside).and_then(|repo| no_redirects(&repo));
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&aside);
        return Err(failed(e));
    }
    if std::fs::rename(&aside, path).is_err() {
        // Another cache put its own there first; it says the same.
        let _ = std::fs::remove_dir_all(&aside);
    }
    Repository::open_bare(path).map(drop).map_err(failed)
}

fn parse_commit(commit: &str) -> Result<Oid, GitError> {
    let invalid = |reason| GitError::InvalidRef {
        kind: "commit",
        name: commit.to_string(),
        reason,
    };
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("a commit must be its full 40-character hex id"));
    }
    Oid::from_str(commit).map_err(|_| invalid("not a commit id"))
}

/// The short name of a branch or tag (a full `refs/...` name is accepted).
fn ref_name(kind: &'static str, name: &str, prefix: &str) -> Result<String, GitError> {
    let short = name.strip_prefix(prefix).unwrap_or(name);
    if short.is_empty() || short.contains(char::is_whitespace) {
        return Err(GitError::InvalidRef {
            kind,
            name: name.to_string(),
            reason: "a name may not be empty or contain spaces",
        });
    }
    Ok(short.to_string())
}

/// `callbacks` that also abort the transfer once `stop` is set (libgit2 calls
/// them as objects arrive, and for each progress message of the server).
fn watched<'a>(mut callbacks: RemoteCallbacks<'a>, stop: &Stop) -> RemoteCallbacks<'a> {
    let (on_transfer, on_sideband) = (stop.clone(), stop.clone());
    callbacks
        .transfer_progress(move |_| !on_transfer.is_set())
        .sideband_progress(move |_| !on_sideband.is_set());
    callbacks
}

/// Takes `lock`, giving up once `stop` is set: a job whose deadline passed does
/// not go on waiting behind another job's fetch.
fn lock_unless_stopped<'a>(
    lock: &'a Mutex<()>,
    stop: &Stop,
) -> Result<std::sync::MutexGuard<'a, ()>, GitError> {
    loop {
        match lock.try_lock() {
            Ok(guard) => return Ok(guard),
            Err(TryLockError::Poisoned(poisoned)) => return Ok(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => {
                stop.check()?;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The proxy options for a step whose relay is a tunnel (https); none otherwise.
fn proxy(relay: Option<&Relay>) -> Option<ProxyOptions<'static>> {
    let relay = relay.filter(|r| r.is_tunnel())?;
    let mut opts = ProxyOptions::new();
    opts.url(&relay.proxy_url());
    Some(opts)
}

/// The process-wide lock of one mirror. Process-wide, not per [`GitCache`],
/// because what it protects is a folder on disk.
fn mirror_lock(path: &Path) -> Arc<Mutex<()>> {
    // One small entry per repository ever fetched; never removed, which keeps
    // the locking simple.
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    locks.entry(path.to_path_buf()).or_default().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_must_be_full_ids() {
        let full = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(parse_commit(full).unwrap().to_string(), full);
        assert_eq!(
            parse_commit(&full.to_uppercase()).unwrap().to_string(),
            full
        );
        for bad in ["0123456", "", "g123456789abcdef0123456789abcdef01234567"] {
            assert!(matches!(
                parse_commit(bad),
                Err(GitError::InvalidRef { .. })
            ));
        }
    }

    #[test]
    fn ref_names() {
        assert_eq!(
            ref_name("branch", "refs/heads/main", "refs/heads/").unwrap(),
            "main"
        );
        assert_eq!(ref_name("tag", "v1.0", "refs/tags/").unwrap(), "v1.0");
        assert!(ref_name("branch", "", "refs/heads/").is_err());
        assert!(ref_name("branch", "a b", "refs/heads/").is_err());
    }

    #[test]
    fn mirror_paths_are_stable_and_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let cache = GitCache::open(dir.path(), Credentials::new()).unwrap();
        let a = cache.mirror_path("https://h.example/a.git");
        assert_eq!(a, cache.mirror_path("https://h.example/a.git"));
        assert_ne!(a, cache.mirror_path("https://h.example/b.git"));
        assert_eq!(a.file_name().unwrap().len(), 16);
        assert!(a.starts_with(dir.path().canonicalize().unwrap().join("repos")));
    }

    #[test]
    fn debug_hides_passwords() {
        let s = GitSource {
            url: "https://bot:s3cret@h.example/x".into(),
            reference: Reference::Branch("main".into()),
            submodules: true,
        };
        assert!(!format!("{s:?}").contains("s3cret"));
    }
}
