//! `[api]`: where `dockhand serve` listens and who may use it.
//!
//! Invariants: a token is `<scope>:<secret>` with scope `read` or `admin` and a
//! secret of at least 16 characters, checked at load; `Debug` never shows a
//! secret. With no token, `serve` must listen on loopback only (checked by
//! [`ApiSettings::check`]), since nothing else would keep strangers out.

use super::ByteSize;
use serde::Deserialize;

/// What a token may do: `read` sees everything (secrets apart); `admin` also
/// changes things (submit, cancel, retry, pause, subscribers, profiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Admin,
}

/// One bearer token.
#[derive(Clone)]
pub struct Token {
    pub scope: Scope,
    pub secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({:?}, ***)", self.scope)
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (scope, secret) = s.split_once(':').ok_or_else(|| {
            serde::de::Error::custom("an api token is `read:<secret>` or `admin:<secret>`")
        })?;
        let scope = match scope {
            "read" => Scope::Read,
            "admin" => Scope::Admin,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "api token scope {other:?} is neither `read` nor `admin`"
                )))
            }
        };
        if secret.len() < 16 {
            return Err(serde::de::Error::custom(
                "an api token's secret must be at least 16 characters (e.g. `openssl rand -hex 16`)",
            ));
        }
        Ok(Token {
            scope,
            secret: secret.to_string(),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// `host:port` that `dockhand serve` listens on.
    pub listen: String,
    #[serde(deserialize_with = "super::one_or_many")]
    pub tokens: Vec<Token>,
    /// The largest request body taken (a job spec, a profile).
    pub max_body_bytes: ByteSize,
}

impl ApiSettings {
    /// Refuses an address that does not parse, and one off loopback with no token.
    pub fn check(&self, listen: &str) -> Result<std::net::SocketAddr, String> {
        let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
            format!("`api.listen` {listen:?} is not host:port (e.g. 127.0.0.1:8080)")
        })?;
        if self.tokens.is_empty() && !addr.ip().is_loopback() {
            return Err(format!(
                "`api.listen` {listen} is not a loopback address, and no `api.tokens` is set: \
                 anyone who reaches it could run jobs. Add a token (`admin:<secret>`) or listen on 127.0.0.1"
            ));
        }
        Ok(addr)
    }

    /// The scope of a bearer secret, if it is one of the tokens.
    pub fn scope_of(&self, secret: &str) -> Option<Scope> {
        self.tokens
            .iter()
            .filter(|t| constant_time_eq(t.secret.as_bytes(), secret.as_bytes()))
            .map(|t| t.scope)
            .max()
    }
}

/// Compares without stopping at the first difference, so the time taken does not
/// tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(tokens: &[&str]) -> ApiSettings {
        ApiSettings {
            listen: "127.0.0.1:0".into(),
            tokens: tokens
                .iter()
                .map(|t| serde_json::from_value(serde_json::json!(t)).unwrap())
                .collect(),
            max_body_bytes: ByteSize(1 << 20),
        }
    }

    #[test]
    fn tokens_carry_a_scope_and_never_show_their_secret() {
        let a = api(&["read:0123456789abcdef", "admin:fedcba9876543210"]);
        assert_eq!(a.scope_of("0123456789abcdef"), Some(Scope::Read));
        assert_eq!(a.scope_of("fedcba9876543210"), Some(Scope::Admin));
        assert_eq!(a.scope_of("0123456789abcdeX"), None);
        assert!(!format!("{a:?}").contains("0123456789abcdef"));
        for bad in ["0123456789abcdef", "root:0123456789abcdef", "read:short"] {
            let parsed: Result<Token, _> = serde_json::from_value(serde_json::json!(bad));
            assert!(parsed.is_err(), "{bad}");
        }
    }

    #[test]
    fn no_token_means_loopback_only() {
        let open = api(&[]);
        assert!(open.check("127.0.0.1:8080").is_ok());
        assert!(open.check("[::1]:8080").is_ok());
        assert!(open
            .check("0.0.0.0:8080")
            .unwrap_err()
            .contains("api.tokens"));
        assert!(open.check("localhost").is_err());
        assert!(api(&["admin:fedcba9876543210"])
            .check("0.0.0.0:8080")
            .is_ok());
    }
}
