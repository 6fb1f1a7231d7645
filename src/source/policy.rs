//! Where a git source may be, beyond what this build can fetch: the worker's
//! policy for local repositories and for the addresses git over http(s) reaches.
//!
//! A job's URL (and every submodule URL in the repository it names) is chosen by
//! someone else, so it must not let them read this host's files or make the
//! worker connect into its own network.
//!
//! Invariants:
//! - A local repository (an absolute path or `file://`) is refused unless
//!   `policy.git_file_urls` is true ([`GitError::LocalNotAllowed`]).
//! - Even then, nothing inside a forbidden folder (`worker.cache_dir`, where the
//!   mirrors of other jobs' repositories sit at predictable paths, fetched with the
//!   worker's tokens) is a source: the path is compared canonicalized (so `..` and
//!   symlinks lead nowhere), and so are the folders the repository there really
//!   reads (a `.git` file's `gitdir:`, a worktree's common folder, object
//!   alternates) ([`GitError::InsideCache`]). libgit2 is then handed the
//!   canonical path, not the one the job wrote.
//! - Before libgit2 connects to an http(s) host, the host is resolved and every
//!   address is checked with the SSRF guard; one refused address refuses the URL
//!   ([`GitError::AddressRefused`]) unless `policy.git_allow_networks` contains it.
//!   libgit2 resolves the name again itself, so a name whose answer changes
//!   between the two lookups (DNS rebinding) is not stopped by this check.

use super::error::GitError;
use super::url::{RepoUrl, Transport};
use crate::config::Network;
use crate::ssrf::Guard;
use git2::Repository;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};

/// The setting that allows local repositories, named in refusals.
pub const FILE_URLS_KEY: &str = "policy.git_file_urls";
/// The setting that lets git reach non-public addresses, named in refusals.
pub const ALLOW_NETWORKS_KEY: &str = "policy.git_allow_networks";

/// libgit2 follows alternates this deep (`GIT_ALTERNATES_MAX_DEPTH` is 5).
const MAX_ALTERNATES_DEPTH: usize = 6;

/// What a [`super::GitCache`] may fetch from. The default is the strict one: any
/// host, no local repository, only public addresses.
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    /// `policy.git_hosts`, applied to submodule URLs (the job's own URL is
    /// checked at validation); empty allows any host.
    pub hosts: Vec<String>,
    /// `policy.git_file_urls`: local repositories (paths, `file://`) allowed.
    pub file_urls: bool,
    /// The SSRF guard with `policy.git_allow_networks`.
    pub guard: Guard,
    /// Folders no local source may be in (`worker.cache_dir`); the cache's own
    /// root is always one.
    pub forbidden: Vec<PathBuf>,
}

impl Default for SourcePolicy {
    fn default() -> SourcePolicy {
        SourcePolicy {
            hosts: Vec::new(),
            file_urls: false,
            guard: Guard::for_setting(ALLOW_NETWORKS_KEY, &[]),
            forbidden: Vec::new(),
        }
    }
}

impl SourcePolicy {
    /// The guard of git over http(s), letting `allow` through
    /// (`policy.git_allow_networks`).
    pub fn guard(allow: &[Network]) -> Guard {
        Guard::for_setting(ALLOW_NETWORKS_KEY, allow)
    }

    /// For a local repository: refused unless local repositories are allowed and
    /// it lies outside every forbidden folder; then its canonical folder, or
    /// `None` when there is nothing at that path (the caller says "not found", or
    /// serves what its cache has). `Ok(None)` for a URL that is not local.
    pub(super) fn local_source(&self, url: &RepoUrl) -> Result<Option<PathBuf>, GitError> {
        let Some(path) = url.local_path() else {
            return Ok(None);
        };
        if !self.file_urls {
            return Err(GitError::LocalNotAllowed {
                url: url.public().to_string(),
            });
        }
        let inside = || GitError::InsideCache {
            url: url.public().to_string(),
        };
        let forbidden = self.forbidden_dirs();
        // Lexically first: a path that names the cache is refused even when
        // nothing is there yet.
        if within(&lexical(&path), &forbidden) {
            return Err(inside());
        }
        let Ok(canonical) = path.canonicalize() else {
            return Ok(None);
        };
        if within(&canonical, &forbidden) {
            return Err(inside());
        }
        if repository_dirs(&canonical)
            .iter()
            .any(|dir| within(dir, &forbidden))
        {
            return Err(inside());
        }
        Ok(Some(canonical))
    }

    /// For git over http(s): resolves the host and checks every address with the
    /// guard; returns them with the URL's port (none for a local URL), the only
    /// addresses a connection for this URL may then go to. Blocking (it resolves
    /// the name): call it where libgit2 is called.
    pub(super) fn check_addresses(&self, url: &RepoUrl) -> Result<Vec<SocketAddr>, GitError> {
        let Some((host, port)) = host_and_port(url) else {
            return Ok(Vec::new());
        };
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|source| GitError::Resolve {
                    url: url.public().to_string(),
                    source,
                })?
                .map(|a| a.ip())
                .collect(),
        };
        if addrs.is_empty() {
            return Err(GitError::Resolve {
                url: url.public().to_string(),
                source: std::io::Error::other("the name has no address"),
            });
        }
        self.guard
            .check_all(addrs.iter().copied())
            .map_err(|source| GitError::AddressRefused {
                url: url.public().to_string(),
                host,
                source,
            })?;
        Ok(addrs
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// The forbidden folders, canonicalized when they exist.
    fn forbidden_dirs(&self) -> Vec<PathBuf> {
        self.forbidden
            .iter()
            .map(|dir| dir.canonicalize().unwrap_or_else(|_| lexical(dir)))
            .collect()
    }
}

/// The host (without brackets) and port an http(s) URL connects to.
fn host_and_port(url: &RepoUrl) -> Option<(String, u16)> {
    let default = match url.transport() {
        Transport::Https => 443,
        Transport::Http => 80,
        Transport::File | Transport::Path => return None,
    };
    let authority = url.authority()?;
    let host = url.host()?;
    let port = authority[host.len()..]
        .strip_prefix(':')
        .and_then(|p| p.parse().ok())
        .unwrap_or(default);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Some((bare.to_string(), port))
}

/// Whether `path` is one of `dirs` or inside one, compared by whole components.
fn within(path: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|dir| path.starts_with(dir))
}

/// `path` with `.` and `..` taken away as written (no symlinks followed).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The folders the repository at `dir` reads besides `dir`, canonicalized: its
/// git folder (which a `.git` file may put anywhere), its common folder (a
/// worktree's main repository), and its object alternates, recursively. Empty
/// when there is no repository (libgit2 will say so).
fn repository_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(repo) = Repository::open(dir) else {
        return Vec::new();
    };
    let canonical = |p: &Path| p.canonicalize().ok();
    let mut dirs: Vec<PathBuf> = [repo.path(), repo.commondir()]
        .into_iter()
        .filter_map(canonical)
        .collect();
    let mut objects: Vec<PathBuf> = dirs.iter().map(|d| d.join("objects")).collect();
    for _ in 0..MAX_ALTERNATES_DEPTH {
        let mut next = Vec::new();
        for objects_dir in &objects {
            let Ok(text) = std::fs::read_to_string(objects_dir.join("info").join("alternates"))
            else {
                continue;
            };
            for line in text.lines().map(str::trim_end) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                // Like libgit2: relative to this objects folder when it starts with `.`.
                let alternate = if line.starts_with('.') {
                    objects_dir.join(line)
                } else {
                    PathBuf::from(line)
                };
                if let Some(found) = canonical(&alternate) {
                    dirs.push(found.clone());
                    next.push(found);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        objects = next;
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RepoUrl {
        RepoUrl::parse(s).unwrap()
    }

    fn git(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c"])
            .arg("init.defaultBranch=main")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }

    #[test]
    fn local_repositories_are_refused_by_default_naming_the_setting() {
        let policy = SourcePolicy::default();
        for u in ["/srv/git/app", "file:///srv/git/app"] {
            let err = policy.local_source(&url(u)).unwrap_err();
            assert!(matches!(err, GitError::LocalNotAllowed { .. }), "{err:?}");
            assert!(err.is_policy());
            assert!(err.to_string().contains(FILE_URLS_KEY), "{err}");
        }
        assert!(policy
            .local_source(&url("https://h.example/x"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn nothing_inside_a_forbidden_folder_is_a_source() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let cache = root.join("cache");
        let mirror = cache.join("w1").join("repos").join("0123456789abcdef");
        std::fs::create_dir_all(&mirror).unwrap();
        git(&mirror, &["init", "-q", "--bare"]);
        let outside = root.join("app");
        std::fs::create_dir_all(&outside).unwrap();
        git(&outside, &["init", "-q"]);
        let policy = SourcePolicy {
            file_urls: true,
            forbidden: vec![cache.clone()],
            ..SourcePolicy::default()
        };
        let refused = |u: String| match policy.local_source(&url(&u)) {
            Err(e @ GitError::InsideCache { .. }) => {
                assert!(e.is_policy());
                assert!(e.to_string().contains("worker.cache_dir"), "{e}");
            }
            other => panic!("{u}: {other:?}"),
        };

        let ok = policy
            .local_source(&url(&outside.display().to_string()))
            .unwrap();
        assert_eq!(ok, Some(outside.clone()));
        assert_eq!(
            policy
                .local_source(&url(&format!("file://{}", outside.display())))
                .unwrap(),
            Some(outside.clone())
        );

        refused(mirror.display().to_string());
        refused(format!("file://{}", mirror.display()));
        refused(cache.display().to_string());
        // Not there yet, but named: refused all the same.
        refused(cache.join("w2/repos/x").display().to_string());
        // `..` out of a folder outside, back into the cache.
        refused(format!(
            "{}/../cache/w1/repos/0123456789abcdef",
            outside.display()
        ));
        refused(format!("{}/./../cache/w1", outside.display()));
        // A symlink outside, pointing in.
        let link = root.join("link");
        std::os::unix::fs::symlink(&mirror, &link).unwrap();
        refused(link.display().to_string());
        refused(format!("file://{}", link.display()));
        // A `.git` file pointing at the mirror.
        let gitfile = root.join("gitfile");
        std::fs::create_dir_all(&gitfile).unwrap();
        std::fs::write(
            gitfile.join(".git"),
            format!("gitdir: {}\n", mirror.display()),
        )
        .unwrap();
        refused(gitfile.display().to_string());
        // A repository outside that borrows the mirror's objects.
        let borrower = root.join("borrower");
        std::fs::create_dir_all(&borrower).unwrap();
        git(&borrower, &["init", "-q", "--bare"]);
        std::fs::write(
            borrower.join("objects/info/alternates"),
            format!("{}\n", mirror.join("objects").display()),
        )
        .unwrap();
        refused(borrower.display().to_string());
        // ... or borrows, through a relative alternate, a repository that does.
        let chained = root.join("chained");
        std::fs::create_dir_all(&chained).unwrap();
        git(&chained, &["init", "-q", "--bare"]);
        std::fs::write(
            chained.join("objects/info/alternates"),
            "../../borrower/objects\n",
        )
        .unwrap();
        refused(chained.display().to_string());

        // A folder that is not there is no refusal: the caller says "not found".
        assert_eq!(
            policy
                .local_source(&url(&root.join("nothing").display().to_string()))
                .unwrap(),
            None
        );
    }

    #[test]
    fn hosts_and_ports_of_urls() {
        let hp = |u: &str| host_and_port(&url(u));
        assert_eq!(hp("https://h.example/x"), Some(("h.example".into(), 443)));
        assert_eq!(hp("http://h.example/x"), Some(("h.example".into(), 80)));
        assert_eq!(
            hp("http://u:p@127.0.0.2:8080/x"),
            Some(("127.0.0.2".into(), 8080))
        );
        assert_eq!(hp("https://[::1]:9/x"), Some(("::1".into(), 9)));
        assert_eq!(hp("https://[fd00::1]/x"), Some(("fd00::1".into(), 443)));
        assert_eq!(hp("/srv/x"), None);
        assert_eq!(hp("file:///srv/x"), None);
    }

    #[test]
    fn non_public_addresses_are_refused_naming_the_git_setting() {
        let policy = SourcePolicy::default();
        for (u, host) in [
            ("http://127.0.0.2:9/x", "127.0.0.2"),
            ("https://[::1]/x", "::1"),
            ("https://169.254.169.254/latest", "169.254.169.254"),
            ("http://10.0.0.1/x", "10.0.0.1"),
            ("http://[::ffff:192.168.1.1]/x", "::ffff:192.168.1.1"),
        ] {
            let err = policy.check_addresses(&url(u)).unwrap_err();
            assert!(
                matches!(err, GitError::AddressRefused { .. }),
                "{u}: {err:?}"
            );
            assert!(err.is_policy());
            let text = crate::telemetry::error_chain(&err);
            assert!(text.contains(ALLOW_NETWORKS_KEY), "{text}");
            assert!(text.contains(&format!("the host {host} of {u}")), "{text}");
        }
        // `localhost` is resolved (from /etc/hosts, no network): loopback.
        let err = policy
            .check_addresses(&url("http://localhost:9/x"))
            .unwrap_err();
        assert!(matches!(err, GitError::AddressRefused { .. }), "{err:?}");
        // Public literals pass without any lookup; local URLs are not this check's.
        assert!(policy.check_addresses(&url("https://1.1.1.1/x")).is_ok());
        assert!(policy.check_addresses(&url("/srv/x")).is_ok());

        let allowed = SourcePolicy {
            guard: SourcePolicy::guard(&["127.0.0.2/32".parse().unwrap()]),
            ..SourcePolicy::default()
        };
        assert!(allowed
            .check_addresses(&url("http://127.0.0.2:9/x"))
            .is_ok());
        assert!(allowed
            .check_addresses(&url("http://127.0.0.3:9/x"))
            .is_err());
    }

    #[test]
    fn lexical_paths() {
        assert_eq!(lexical(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
        assert_eq!(lexical(Path::new("/../a")), PathBuf::from("/a"));
        assert!(within(
            Path::new("/var/tmp/dh/x"),
            &[PathBuf::from("/var/tmp/dh")]
        ));
        assert!(!within(
            Path::new("/var/tmp/dhx"),
            &[PathBuf::from("/var/tmp/dh")]
        ));
    }
}
