//! TLS for https deliveries: rustls with the Mozilla root certificates
//! (webpki-roots, compiled in: no system store is read), plus the certificates of
//! `webhooks.ca_file` when an operator trusts an internal CA.
//!
//! Invariant: the client configuration is made once by whoever runs deliveries
//! (the delivery loop at its start) and passed down with each attempt; nothing
//! here is global, so two delivery loops in one process may trust different CAs.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use tokio_rustls::rustls::{self, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA file {path}")]
    Read {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the CA file {0} holds no usable certificate")]
    Empty(String),
    #[error("cannot set up TLS")]
    Rustls(#[from] rustls::Error),
}

/// The client configuration that trusts the public roots and, when `ca_file` is
/// not empty, the PEM certificates in it.
pub fn client_config(ca_file: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !ca_file.is_empty() {
        let read = |source| TlsError::Read {
            path: ca_file.to_string(),
            source,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
            .map_err(read)?
            .collect::<Result<_, _>>()
            .map_err(read)?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::Empty(ca_file.to_string()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// The public roots only: what deliveries trust when `webhooks.ca_file` is unusable.
pub fn public_roots() -> Arc<rustls::ClientConfig> {
    client_config("")
        .expect("the compiled-in roots and the ring provider always make a configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("dockhand-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(empty.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let missing = dir.join("missing.pem");
        let err = client_config(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!public_roots().alpn_protocols.iter().any(|p| p.is_empty()));
    }
}
