//! TLS for https deliveries: rustls with the Mozilla root certificates
//! (webpki-roots, compiled in: no system store is read), plus the certificates of
//! `webhooks.ca_file` when an operator trusts an internal CA. Set once at start.

use std::sync::{Arc, RwLock};
use tokio_rustls::rustls::{self, RootCertStore};

/// A std lock: nothing is awaited while it is held, and it is read once per attempt.
static CONFIG: RwLock<Option<Arc<rustls::ClientConfig>>> = RwLock::new(None);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {0} holds no usable certificate")]
    Empty(String),
    #[error("cannot set up TLS")]
    Rustls(#[from] rustls::Error),
}

/// Trusts the PEM certificates of `ca_file` (if not empty) besides the public roots,
/// for every delivery from now on.
pub fn init(ca_file: &str) -> Result<(), TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !ca_file.is_empty() {
        let read = |source| TlsError::Read {
            path: ca_file.to_string(),
            source,
        };
        let pem = std::fs::read(ca_file).map_err(read)?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(read)?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::Empty(ca_file.to_string()));
        }
    }
    let config = build(roots)?;
    *CONFIG.write().unwrap_or_else(|e| e.into_inner()) = Some(config);
    Ok(())
}

fn build(roots: RootCertStore) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// The client configuration: the one [`init`] made, or the public roots only.
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    if let Some(config) = CONFIG.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Ok(config.clone());
    }
    let config = build(RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })?;
    *CONFIG.write().unwrap_or_else(|e| e.into_inner()) = Some(config.clone());
    Ok(config)
}
