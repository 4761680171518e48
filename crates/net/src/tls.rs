//! TLS for SIP (`tls:` listeners, `wss:` listeners, and connections the proxy opens to
//! `;transport=tls` and `sips:` destinations) with rustls. The certificate and key are read
//! from PEM files; [`Tls::reload`] reads them again and swaps the configurations, so new
//! connections use the new certificate while open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The `[tls]` settings.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// The proxy's certificate chain (PEM).
    pub certificate: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// Clients must present a certificate signed by one of these CAs (PEM); `None`: no
    /// client certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// The CAs that sign the servers the proxy connects to (PEM); `None`: the system's
    /// bundle.
    pub server_ca: Option<PathBuf>,
    /// Check the certificate of servers the proxy connects to (their name or IP address and
    /// their chain). Off only for a lab.
    pub verify_server: bool,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the certificate, key or CA list.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("bad PEM: {e:?}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| file_err(path, format!("no private key: {e:?}")))
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(read_certs(path)?);
    if added == 0 {
        return Err(file_err(path, "no usable CA certificate"));
    }
    Ok(store)
}

/// The system's CA bundle (Debian's `ca-certificates`).
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(s: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(&s.certificate)?;
    let key = read_key(&s.private_key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match &s.client_ca {
        Some(ca) => {
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key)?;
    // SIP and WebSocket: no ALPN needed; a small session cache for reconnecting phones
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(cfg))
}

fn client_config(s: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = if s.verify_server {
        let store = match &s.server_ca {
            Some(p) => roots(p)?,
            None => roots(Path::new(SYSTEM_CA)).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no system CA bundle: outgoing TLS will fail verification");
                rustls::RootCertStore::empty()
            }),
        };
        builder.with_root_certificates(store)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    };
    // mutual TLS towards peers that ask: present our own certificate when we have one
    let cfg = match (read_certs(&s.certificate), read_key(&s.private_key)) {
        (Ok(c), Ok(k)) => builder.with_client_auth_cert(c, k)?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// The loaded configurations; swapped whole on reload.
pub struct Tls {
    settings: TlsSettings,
    server: RwLock<Arc<rustls::ServerConfig>>,
    client: RwLock<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(settings: TlsSettings) -> Result<Tls, TlsError> {
        Ok(Tls {
            server: RwLock::new(server_config(&settings)?),
            client: RwLock::new(client_config(&settings)?),
            settings,
        })
    }

    /// Reads the files again; on error the running configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (s, c) = (
            server_config(&self.settings)?,
            client_config(&self.settings)?,
        );
        *self.server.write().unwrap_or_else(|p| p.into_inner()) = s;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = c;
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(
            self.server
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(
            self.client
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// The certificate's files, for messages.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }
}

/// `verify_server = false`: any certificate is accepted (signatures are still checked, so
/// the handshake is real; the identity is not).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn settings() -> TlsSettings {
        TlsSettings {
            certificate: fixture("server.crt"),
            private_key: fixture("server.key"),
            client_ca: None,
            server_ca: Some(fixture("ca.crt")),
            verify_server: true,
        }
    }

    #[test]
    fn loads_the_fixture_certificate() {
        let t = Tls::load(settings()).unwrap();
        t.reload().unwrap();
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let mut s = settings();
        s.certificate = fixture("missing.crt");
        let e = Tls::load(s).err().unwrap().to_string();
        assert!(e.contains("missing.crt"), "{e}");
        let mut s = settings();
        s.private_key = fixture("ca.crt"); // a certificate where a key should be
        let e = Tls::load(s).err().unwrap().to_string();
        assert!(e.contains("no private key"), "{e}");
        let mut s = settings();
        s.certificate = fixture("server.key"); // a key where the certificate should be
        let e = Tls::load(s).err().unwrap().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let mut s = settings();
        s.private_key = fixture("other.key"); // a key that is not the certificate's
        assert!(Tls::load(s).is_err());
    }

    #[test]
    fn a_failed_reload_keeps_the_running_configuration() {
        let dir = std::env::temp_dir().join(format!("sb-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (crt, key) = (dir.join("s.crt"), dir.join("s.key"));
        std::fs::copy(fixture("server.crt"), &crt).unwrap();
        std::fs::copy(fixture("server.key"), &key).unwrap();
        let mut s = settings();
        s.certificate = crt.clone();
        s.private_key = key.clone();
        let t = Tls::load(s).unwrap();
        let before = Arc::as_ptr(&t.server.read().unwrap());
        std::fs::write(&crt, b"garbage").unwrap();
        assert!(t.reload().is_err());
        assert_eq!(before, Arc::as_ptr(&t.server.read().unwrap()));
        std::fs::copy(fixture("server.crt"), &crt).unwrap();
        t.reload().unwrap();
        assert_ne!(before, Arc::as_ptr(&t.server.read().unwrap()));
        let _ = std::fs::remove_dir_all(dir);
    }
}
