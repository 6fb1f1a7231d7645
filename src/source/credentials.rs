//! Tokens for private repositories, by host, and the git2 callback that offers them.
//!
//! Invariants:
//! - A token is never logged, printed or written to disk: `Debug` shows the hosts
//!   only, and the token goes to libgit2 through the credentials callback, never
//!   into a URL or a config file.
//! - A token is offered over https, or over http only to a loopback address.
//! - The callback gives up after [`MAX_ATTEMPTS`] calls. libgit2 calls it again
//!   each time the server rejects what it returned, forever (git2-rs #347), so a
//!   wrong token would otherwise hang the job instead of failing it.

use super::url::{RepoUrl, Transport};
use git2::{Cred, CredentialType, ErrorClass, ErrorCode, RemoteCallbacks};
use std::cell::Cell;
use std::collections::HashMap;

/// Calls of the credentials callback allowed for one connection.
pub const MAX_ATTEMPTS: u32 = 2;

/// The user name sent with a token when the URL names none. GitHub requires this
/// one for app and action tokens; GitLab and Gitea accept any name with a token.
const TOKEN_USER: &str = "x-access-token";

/// Host → token, supplied by whoever runs the worker (never by a job spec).
#[derive(Clone, Default)]
pub struct Credentials {
    tokens: HashMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut hosts: Vec<&String> = self.tokens.keys().collect();
        hosts.sort();
        f.debug_struct("Credentials")
            .field("hosts", &hosts)
            .field("tokens", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn new() -> Credentials {
        Credentials::default()
    }

    /// Adds a token for `host` (`github.com`) or `host:port` (`127.0.0.1:8080`); a
    /// `host:port` entry wins over a `host` entry.
    pub fn with(mut self, host: impl Into<String>, token: impl Into<String>) -> Credentials {
        self.tokens
            .insert(host.into().to_ascii_lowercase(), token.into());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn token_for(&self, url: &RepoUrl) -> Option<&str> {
        let safe = match url.transport() {
            Transport::Https => true,
            Transport::Http => url.is_loopback(),
            Transport::File | Transport::Path => false,
        };
        if !safe {
            return None;
        }
        url.authority()
            .and_then(|a| self.tokens.get(a))
            .or_else(|| url.host().and_then(|h| self.tokens.get(h)))
            .map(String::as_str)
    }

    /// Callbacks for one connection to `url`; `attempts` counts the calls, so the
    /// caller can tell a rejected token from other failures.
    pub fn callbacks<'a>(
        &'a self,
        url: &'a RepoUrl,
        attempts: &'a Cell<u32>,
    ) -> RemoteCallbacks<'a> {
        let mut cb = RemoteCallbacks::new();
        cb.credentials(move |_url, user_from_url, allowed| {
            attempts.set(attempts.get() + 1);
            let host = url.authority().unwrap_or("the server");
            if attempts.get() > MAX_ATTEMPTS {
                return Err(auth_error(format!("{host} rejected the configured token")));
            }
            if !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                return Err(auth_error(format!(
                    "{host} asks for a kind of credentials other than a token"
                )));
            }
            match self.token_for(url) {
                Some(token) => Cred::userpass_plaintext(user_from_url.unwrap_or(TOKEN_USER), token),
                None => Err(auth_error(format!(
                    "{host} asks for credentials and no token is configured for it"
                ))),
            }
        });
        cb
    }
}

fn auth_error(message: String) -> git2::Error {
    git2::Error::new(ErrorCode::Auth, ErrorClass::Callback, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_tokens() {
        let c = Credentials::new().with("github.com", "ghp_secret");
        let shown = format!("{c:?}");
        assert!(shown.contains("github.com"));
        assert!(!shown.contains("ghp_secret"));
    }

    #[test]
    fn tokens_go_only_over_https_or_loopback_http() {
        let c = Credentials::new()
            .with("h.example", "t1")
            .with("127.0.0.1", "t2")
            .with("127.0.0.1:9000", "t3");
        let url = |u: &str| RepoUrl::parse(u).unwrap();
        assert_eq!(c.token_for(&url("https://H.example/x")), Some("t1"));
        assert_eq!(c.token_for(&url("https://h.example:8443/x")), Some("t1"));
        assert_eq!(c.token_for(&url("http://h.example/x")), None);
        assert_eq!(c.token_for(&url("http://127.0.0.1:8000/x")), Some("t2"));
        assert_eq!(c.token_for(&url("http://127.0.0.1:9000/x")), Some("t3"));
        assert_eq!(c.token_for(&url("https://other.example/x")), None);
    }
}
