//! TLS for client listeners: loads `certFile`/`keyFile` (PEM) into a rustls acceptor.
//! Owns the TLS policy: rustls defaults (TLS 1.2 and 1.3), no client certificates, no ALPN.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Builds an acceptor from a PEM certificate chain and a PEM private key.
/// Any failure is a start-up error naming the file, as in due (fatal at start).
pub fn acceptor(cert_file: &str, key_file: &str) -> Result<futures_rustls::TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_file}: no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{key_file}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{cert_file}/{key_file}: {e}"))?;
    Ok(futures_rustls::TlsAcceptor::from(Arc::new(config)))
}
