//! TLS for client listeners: loads `certFile`/`keyFile` (PEM) into a rustls acceptor whose
//! certificate can be swapped while it serves ([`CertStore::reload`], SIGHUP).
//! Owns the TLS policy: rustls defaults (TLS 1.2 and 1.3), no client certificates, no ALPN.
//!
//! Every handshake reads the current pair once (a read lock and an `Arc` clone); established
//! connections keep the keys they agreed on. A reload that cannot load, parse or match the new
//! files leaves the current pair in use.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, PoisonError, RwLock};

/// One server's certificate and key, by file, and the pair currently served.
pub struct CertStore {
    cert_file: String,
    key_file: String,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().clone())
    }
}

/// What a certificate is, for the log: SHA-256 of its DER and its end of validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Lower-case hex SHA-256 of the end-entity certificate's DER.
    pub sha256: String,
    /// `notAfter`, as the certificate states it (`None` if it cannot be read).
    pub not_after: Option<String>,
}

impl CertStore {
    /// Loads the pair; any failure names the file (a start-up error, as in due).
    fn open(cert_file: &str, key_file: &str) -> Result<CertStore, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = load_pair(cert_file, key_file, &provider)?;
        Ok(CertStore {
            cert_file: cert_file.to_string(),
            key_file: key_file.to_string(),
            provider,
            current: RwLock::new(Arc::new(pair)),
        })
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The certificate file this store reads.
    pub fn cert_file(&self) -> &str {
        &self.cert_file
    }

    /// The certificate new handshakes get now.
    pub fn summary(&self) -> CertSummary {
        summarize(&self.current().cert[0])
    }

    /// Reads the files again and serves the new pair to new handshakes. A pair that cannot be
    /// read, parsed or matched (key against certificate) is refused and the current one stays.
    pub fn reload(&self) -> Result<CertSummary, String> {
        let pair = load_pair(&self.cert_file, &self.key_file, &self.provider)?;
        let summary = summarize(&pair.cert[0]);
        // An expired certificate would fail every new handshake: keep the current one.
        if let Ok((_, c)) = x509_parser::parse_x509_certificate(pair.cert[0].as_ref()) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if c.validity().not_after.timestamp() < now {
                return Err(format!(
                    "{}: the certificate expired ({})",
                    self.cert_file,
                    summary.not_after.as_deref().unwrap_or("?")
                ));
            }
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
        Ok(summary)
    }
}

/// Every TLS server's store; cheap to clone, usable from any thread (the signal thread).
#[derive(Clone, Default)]
pub struct Reloader(Arc<Vec<Arc<CertStore>>>);

impl Reloader {
    pub fn new(stores: Vec<Arc<CertStore>>) -> Reloader {
        Reloader(Arc::new(stores))
    }

    /// Reloads every store, logging each outcome: the new certificate's fingerprint and expiry,
    /// or the files and the reason it was refused. Returns how many were refused.
    pub fn reload_all(&self) -> usize {
        if self.0.is_empty() {
            tracing::info!("no TLS server, no certificate to reload");
        }
        let mut refused = 0;
        for store in self.0.iter() {
            match store.reload() {
                Ok(s) => tracing::info!(
                    cert = %store.cert_file,
                    key = %store.key_file,
                    sha256 = %s.sha256,
                    not_after = %s.not_after.as_deref().unwrap_or("unknown"),
                    "certificate reloaded"
                ),
                Err(e) => {
                    refused += 1;
                    tracing::error!(
                        cert = %store.cert_file,
                        key = %store.key_file,
                        error = %e,
                        "certificate reload refused, the current one stays in use"
                    );
                }
            }
        }
        refused
    }
}

/// Builds an acceptor from a PEM certificate chain and a PEM private key, with the store that
/// swaps its certificate. Any failure is a start-up error naming the file.
pub fn acceptor(
    cert_file: &str,
    key_file: &str,
) -> Result<(futures_rustls::TlsAcceptor, Arc<CertStore>), String> {
    let store = Arc::new(CertStore::open(cert_file, key_file)?);
    let config = rustls::ServerConfig::builder_with_provider(store.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    Ok((futures_rustls::TlsAcceptor::from(Arc::new(config)), store))
}

/// Reads and checks one pair: a certificate chain (at least one), a private key the provider
/// can sign with, and the key matching the end-entity certificate.
fn load_pair(
    cert_file: &str,
    key_file: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_file}: no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{key_file}: {e}"))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| format!("{cert_file}/{key_file}: {e}"))
}

fn summarize(cert: &CertificateDer<'_>) -> CertSummary {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let not_after = x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .map(|(_, c)| c.validity().not_after.to_string());
    CertSummary { sha256, not_after }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: std::path::PathBuf,
    }

    impl Files {
        fn new(tag: &str) -> Files {
            let dir =
                std::env::temp_dir().join(format!("gatehouse-tls-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Files { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.join(name).display().to_string()
        }

        /// A new self-signed pair written to cert.pem and key.pem; returns its DER.
        fn write_pair(&self) -> Vec<u8> {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            std::fs::write(self.path("cert.pem"), ck.cert.pem()).unwrap();
            std::fs::write(self.path("key.pem"), ck.signing_key.serialize_pem()).unwrap();
            ck.cert.der().to_vec()
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn sha(der: &[u8]) -> String {
        summarize(&CertificateDer::from(der.to_vec())).sha256
    }

    #[test]
    fn reload_swaps_a_good_pair_and_refuses_a_bad_one() {
        let f = Files::new("reload");
        let first = f.write_pair();
        let (_acceptor, store) = acceptor(&f.path("cert.pem"), &f.path("key.pem")).unwrap();
        assert_eq!(store.summary().sha256, sha(&first));
        assert!(store.summary().not_after.is_some());

        let second = f.write_pair();
        assert_eq!(store.reload().unwrap().sha256, sha(&second));
        assert_eq!(store.summary().sha256, sha(&second));

        // A key that does not match the certificate.
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(f.path("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        let e = store.reload().unwrap_err();
        assert!(e.contains("cert.pem"), "{e}");
        assert_eq!(store.summary().sha256, sha(&second), "the old pair stays");

        // Garbage, then a missing file.
        std::fs::write(f.path("cert.pem"), "not a certificate").unwrap();
        let e = store.reload().unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        std::fs::remove_file(f.path("cert.pem")).unwrap();
        assert!(store.reload().unwrap_err().contains("cert.pem"));
        assert_eq!(store.summary().sha256, sha(&second));
        // An expired certificate (with its own, matching key).
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let old = params.self_signed(&key).unwrap();
        std::fs::write(f.path("cert.pem"), old.pem()).unwrap();
        std::fs::write(f.path("key.pem"), key.serialize_pem()).unwrap();
        let e = store.reload().unwrap_err();
        assert!(e.contains("expired"), "{e}");
        assert_eq!(store.summary().sha256, sha(&second), "the old pair stays");
        let reloader = Reloader::new(vec![store]);
        assert_eq!(reloader.reload_all(), 1);
    }

    #[test]
    fn start_up_errors_name_the_file() {
        let f = Files::new("start");
        f.write_pair();
        let missing = f.path("missing.pem");
        let e = acceptor(&missing, &f.path("key.pem")).err().unwrap();
        assert!(e.starts_with(&missing), "{e}");
        let e = acceptor(&f.path("cert.pem"), &missing).err().unwrap();
        assert!(e.starts_with(&missing), "{e}");
    }
}
