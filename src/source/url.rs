//! Repository URLs: which transports this build can use, the host a token is
//! for, a form safe to print, and git's rules for relative submodule URLs.
//!
//! Invariants:
//! - Every URL git2 is handed went through [`RepoUrl::parse`]; ssh and unknown
//!   schemes are refused here, with a message, before any network traffic.
//! - [`RepoUrl::public`] never contains a password: it is the only form that goes
//!   into errors, logs and files on disk.

use super::GitError;
use git2::{ErrorClass, ErrorCode};
use std::path::PathBuf;

/// How a repository is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Https,
    Http,
    /// `file:///abs/path`.
    File,
    /// A plain absolute path on this host.
    Path,
}

/// A repository URL that this build of git2 can fetch.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoUrl {
    raw: String,
    public: String,
    transport: Transport,
    /// `host` or `host:port`, lowercase; `None` for local repositories.
    authority: Option<String>,
}

impl std::fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RepoUrl").field(&self.public).finish()
    }
}

impl std::fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.public)
    }
}

impl RepoUrl {
    pub fn parse(url: &str) -> Result<RepoUrl, GitError> {
        let invalid = |reason: &str| GitError::InvalidUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        if url.is_empty() {
            return Err(invalid("it is empty"));
        }
        if url.chars().any(|c| c.is_control() || c == ' ') {
            return Err(invalid("it contains spaces or control characters"));
        }
        if let Some((scheme, rest)) = url.split_once("://") {
            let transport = match scheme.to_ascii_lowercase().as_str() {
                "https" => Transport::Https,
                "http" => Transport::Http,
                "file" => Transport::File,
                "ssh" | "git+ssh" | "ssh+git" => {
                    return Err(GitError::SshUnsupported { url: redact(url) })
                }
                _ => {
                    return Err(invalid(
                        "only https://, http://, file:// and absolute paths are supported",
                    ))
                }
            };
            let authority = if transport == Transport::File {
                if !rest.starts_with('/') {
                    return Err(invalid(
                        "a file:// URL needs an absolute path (file:///...)",
                    ));
                }
                None
            } else {
                let host = authority_of(rest);
                if host.is_empty() {
                    return Err(invalid("it has no host"));
                }
                Some(host)
            };
            return Ok(RepoUrl {
                raw: url.to_string(),
                public: redact(url),
                transport,
                authority,
            });
        }
        if url.starts_with('/') {
            return Ok(RepoUrl {
                raw: url.to_string(),
                public: url.to_string(),
                transport: Transport::Path,
                authority: None,
            });
        }
        // git reads `host:path` and `user@host:path` (a colon before any slash) as ssh.
        let colon = url.find(':');
        let slash = url.find('/');
        if matches!((colon, slash), (Some(c), Some(s)) if c < s)
            || (colon.is_some() && slash.is_none())
        {
            return Err(GitError::SshUnsupported { url: redact(url) });
        }
        Err(invalid(
            "a local repository path must be absolute (it would depend on the worker's directory)",
        ))
    }

    /// The URL as given, for git2 only (it may carry a password).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The URL without its password, for messages and logs.
    pub fn public(&self) -> &str {
        &self.public
    }

    /// The URL without any user or password, for files written to disk.
    pub fn anonymous(&self) -> String {
        match (self.raw.split_once("://"), &self.authority) {
            (Some((scheme, rest)), Some(_)) => {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let host = match rest[..end].rfind('@') {
                    Some(at) => &rest[at + 1..],
                    None => rest,
                };
                format!("{scheme}://{host}")
            }
            _ => self.raw.clone(),
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// `host` or `host:port`, lowercase.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// The host alone, without a port.
    pub fn host(&self) -> Option<&str> {
        let a = self.authority.as_deref()?;
        if a.starts_with('[') {
            // IPv6 literal: `[::1]:8080`
            return Some(a.find(']').map_or(a, |end| &a[..=end]));
        }
        Some(a.rsplit_once(':').map_or(a, |(h, _)| h))
    }

    pub fn is_loopback(&self) -> bool {
        match self.host() {
            Some(h) => {
                h == "localhost"
                    || h == "[::1]"
                    || h.parse::<std::net::Ipv4Addr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            None => false,
        }
    }

    /// Whether a host allow-list (`policy.git_hosts`) lets this URL through: empty
    /// allows all; else a host, `host:port`, `*.domain` (its subdomains), or
    /// `local` (file:// URLs and paths).
    pub fn allowed_by(&self, hosts: &[String]) -> bool {
        if hosts.is_empty() {
            return true;
        }
        let (Some(authority), Some(host)) = (self.authority(), self.host()) else {
            return hosts.iter().any(|rule| rule == "local");
        };
        hosts.iter().any(|rule| {
            let rule = rule.to_ascii_lowercase();
            match rule.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => rule == authority || rule == host,
            }
        })
    }

    /// True for a repository on this host (a path or `file://`).
    pub fn is_local(&self) -> bool {
        matches!(self.transport, Transport::File | Transport::Path)
    }

    /// The folder of a local repository, to say "not found" before libgit2 does.
    pub fn local_path(&self) -> Option<PathBuf> {
        match self.transport {
            Transport::Path => Some(PathBuf::from(&self.raw)),
            Transport::File => self.raw.split_once("://").map(|(_, p)| PathBuf::from(p)),
            _ => None,
        }
    }

    /// Resolves a submodule URL from `.gitmodules` against this (the superproject's)
    /// URL. Like git, `./x` and `../x` are relative to the superproject's URL taken
    /// as a folder: `https://h/org/app.git` + `../lib.git` = `https://h/org/lib.git`.
    pub fn join_submodule(&self, relative: &str) -> Result<RepoUrl, GitError> {
        if !(relative.starts_with("./") || relative.starts_with("../")) {
            return RepoUrl::parse(relative);
        }
        // Split off what `..` may not remove: `scheme://authority` or the root `/`.
        let base = self.raw.trim_end_matches('/');
        let (prefix, path) = match base.split_once("://") {
            Some((scheme, rest)) if self.transport != Transport::File => {
                let end = rest.find('/').unwrap_or(rest.len());
                (format!("{scheme}://{}", &rest[..end]), &rest[end..])
            }
            Some((scheme, rest)) => (format!("{scheme}://"), rest),
            None => (String::new(), base),
        };
        let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut rest = relative;
        loop {
            if let Some(r) = rest.strip_prefix("./") {
                rest = r;
            } else if let Some(r) = rest.strip_prefix("../") {
                if parts.pop().is_none() {
                    return Err(GitError::InvalidUrl {
                        url: relative.to_string(),
                        reason: format!("it climbs above the root of {}", self.public),
                    });
                }
                rest = r;
            } else {
                break;
            }
        }
        parts.extend(rest.split('/').filter(|p| !p.is_empty()));
        RepoUrl::parse(&format!("{prefix}/{}", parts.join("/")))
    }
}

/// `host[:port]` of the part after `scheme://`, lowercase, without user or password.
fn authority_of(rest: &str) -> String {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let auth = &rest[..end];
    let host = match auth.rfind('@') {
        Some(at) => &auth[at + 1..],
        None => auth,
    };
    host.to_ascii_lowercase()
}

/// The URL with the password in `user:password@`, or a user given alone over
/// http(s) (often a token), replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else {
        return url.to_string();
    };
    let user = rest[..at].split(':').next().unwrap_or_default();
    if rest[..at].contains(':') {
        format!("{scheme}://{user}:***@{}", &rest[at + 1..])
    } else if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http") {
        // A user alone is how many hosts take a token over https
        // (`https://<token>@host`); over ssh it is a login name (`git@`).
        format!("{scheme}://***@{}", &rest[at + 1..])
    } else {
        url.to_string()
    }
}

impl RepoUrl {
    /// Classifies a libgit2 failure while talking to this repository.
    pub(crate) fn git_error(&self, action: &'static str, e: git2::Error) -> GitError {
        let url_s = self.public().to_string();
        let msg = e.message();
        let http_status = |code: &str| e.class() == ErrorClass::Http && msg.contains(code);
        if e.code() == ErrorCode::Auth || http_status("401") || http_status("403") {
            return GitError::Auth {
                url: url_s,
                source: e,
            };
        }
        // libgit2 says "could not find repository at '<path>'" (class Repository,
        // code -1) for a local folder that is not a repository.
        let no_local_repo = e.class() == ErrorClass::Repository
            && (e.code() == ErrorCode::NotFound || msg.contains("could not find repository"));
        if http_status("404") || no_local_repo {
            return GitError::RepositoryNotFound {
                url: url_s,
                source: Some(e),
            };
        }
        match e.class() {
            ErrorClass::Net | ErrorClass::Os | ErrorClass::Ssl | ErrorClass::Http => {
                GitError::Network {
                    url: url_s,
                    source: e,
                }
            }
            _ => GitError::Git {
                action,
                url: url_s,
                source: e,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> RepoUrl {
        RepoUrl::parse(url).unwrap()
    }

    #[test]
    fn classifies_transports() {
        assert_eq!(
            parse("https://github.com/a/b.git").transport(),
            Transport::Https
        );
        assert_eq!(
            parse("HTTP://127.0.0.1:8080/b").transport(),
            Transport::Http
        );
        assert_eq!(parse("file:///srv/git/b").transport(), Transport::File);
        assert_eq!(parse("/srv/git/b").transport(), Transport::Path);
        assert_eq!(
            parse("https://GitHub.com:8443/a").authority(),
            Some("github.com:8443")
        );
        assert_eq!(parse("https://u:p@github.com/a").host(), Some("github.com"));
        assert_eq!(parse("http://[::1]:9/a").host(), Some("[::1]"));
    }

    #[test]
    fn refuses_ssh_with_a_clear_error() {
        for url in [
            "ssh://git@github.com/a/b.git",
            "git@github.com:a/b.git",
            "github.com:a/b",
            "git+ssh://h/x",
        ] {
            let err = RepoUrl::parse(url).unwrap_err();
            assert!(
                matches!(err, GitError::SshUnsupported { .. }),
                "{url}: {err:?}"
            );
            assert!(err.to_string().contains("ssh"), "{err}");
        }
    }

    #[test]
    fn refuses_other_forms() {
        for url in [
            "",
            "git://h/x",
            "ftp://h/x",
            "relative/path",
            "file://rel/x",
            "https:///x",
        ] {
            assert!(
                matches!(RepoUrl::parse(url), Err(GitError::InvalidUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn loopback() {
        assert!(parse("http://127.0.0.1:1/x").is_loopback());
        assert!(parse("http://localhost/x").is_loopback());
        assert!(parse("http://[::1]:80/x").is_loopback());
        assert!(!parse("http://10.0.0.1/x").is_loopback());
        assert!(!parse("/srv/x").is_loopback());
    }

    #[test]
    fn never_shows_a_password() {
        let u = parse("https://bot:s3cret@h.example/x.git");
        assert_eq!(u.public(), "https://bot:***@h.example/x.git");
        assert_eq!(u.anonymous(), "https://h.example/x.git");
        assert!(!format!("{u:?} {u}").contains("s3cret"));
        let err = RepoUrl::parse("ftp://bot:s3cret@h/x").unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn joins_relative_submodule_urls_like_git() {
        let https = parse("https://h.example/org/app.git");
        let join = |base: &RepoUrl, rel: &str| base.join_submodule(rel).unwrap().raw().to_string();
        assert_eq!(join(&https, "../lib.git"), "https://h.example/org/lib.git");
        assert_eq!(
            join(&https, "../../other/lib"),
            "https://h.example/other/lib"
        );
        assert_eq!(join(&https, "./sub"), "https://h.example/org/app.git/sub");
        assert_eq!(join(&https, "https://x.example/y"), "https://x.example/y");
        let path = parse("/tmp/t/super/");
        assert_eq!(join(&path, "../sub"), "/tmp/t/sub");
        let file = parse("file:///tmp/t/super");
        assert_eq!(join(&file, "../sub"), "file:///tmp/t/sub");
        assert!(https.join_submodule("../../../../x").is_err());
        assert!(matches!(
            https.join_submodule("git@h:x/y"),
            Err(GitError::SshUnsupported { .. })
        ));
    }
}
