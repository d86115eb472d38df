//! TLS for both transports, defined once: ALPN `natter/1`, the one server
//! and the one client rustls configuration (TLS 1.3, *ring*) that QUIC
//! ([`crate::endpoint`]) and TLS over TCP ([`crate::tcp`]) are built from,
//! and a self-signed identity for servers.
//!
//! The identity is generated with rcgen (ECDSA P-256). With a data
//! directory the certificate and key are kept in `tls-cert.der` and
//! `tls-key.der` (PKCS#8, mode 0600) so the server presents the same
//! certificate across restarts.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::NetError;

/// ALPN protocol id of every Natter control connection (QUIC and TLS over
/// TCP, login server and supernodes).
pub const ALPN: &[u8] = b"natter/1";

/// The crypto provider of every Natter TLS configuration.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where every client configuration made after [`set_key_log`] writes its
/// TLS secrets (none by default).
static KEY_LOG: OnceLock<Arc<dyn rustls::KeyLog>> = OnceLock::new();

/// Makes every client configuration of both transports made from now on log
/// its TLS secrets to `log` (the `SSLKEYLOGFILE` lines that let Wireshark
/// open QUIC and TLS), for the rest of the process. Off unless a program
/// asks for it (the client does with `NATTER_KEYLOG`); only the first call
/// counts. Returns whether this call installed `log`.
pub fn set_key_log(log: Arc<dyn rustls::KeyLog>) -> bool {
    KEY_LOG.set(log).is_ok()
}

/// The server configuration of both transports: TLS 1.3 only, ALPN
/// `natter/1`, presenting `identity`, no client certificates.
pub fn server_tls_config(identity: &TlsIdentity) -> Result<Arc<rustls::ServerConfig>, NetError> {
    let identity = identity.clone();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain, identity.key)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The client configuration of both transports: TLS 1.3 only, ALPN
/// `natter/1`, checking the server with `verifier`; its secrets go to the
/// key log of [`set_key_log`], if any.
pub fn client_tls_config(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<rustls::ClientConfig>, NetError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    if let Some(log) = KEY_LOG.get() {
        config.key_log = Arc::clone(log);
    }
    Ok(Arc::new(config))
}

/// [`client_tls_config`] accepting any server certificate (see the crate's
/// security model: supernodes are not authenticated by TLS).
pub fn insecure_client_tls_config() -> Result<Arc<rustls::ClientConfig>, NetError> {
    client_tls_config(Arc::new(AcceptAnyServerCert(provider())))
}

/// Accepts any server certificate but still verifies the handshake
/// signature made with it.
#[derive(Debug)]
pub(crate) struct AcceptAnyServerCert(pub(crate) Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// File holding the DER certificate.
pub const CERT_FILE: &str = "tls-cert.der";
/// File holding the PKCS#8 DER private key (mode 0600).
pub const KEY_FILE: &str = "tls-key.der";

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// A fresh self-signed certificate for `subject` (also its DNS name).
    pub fn generate(subject: &str) -> Result<Self, NetError> {
        let certified = rcgen::generate_simple_self_signed(vec![subject.to_owned()])
            .map_err(|e| NetError::Identity(e.to_string()))?;
        Ok(Self {
            cert_chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                certified.signing_key.serialize_der(),
            )),
        })
    }

    /// Loads the identity kept in `dir`, or generates one and stores it there
    /// (creating `dir`). Without a directory the identity is ephemeral.
    pub fn load_or_generate(dir: Option<&Path>, subject: &str) -> Result<Self, NetError> {
        let Some(dir) = dir else {
            return Self::generate(subject);
        };
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path)
                .map_err(|e| NetError::io(cert_path.display().to_string(), e))?;
            let key = std::fs::read(&key_path)
                .map_err(|e| NetError::io(key_path.display().to_string(), e))?;
            if cert.is_empty() || key.is_empty() {
                return Err(NetError::Identity(format!(
                    "{} or {} is empty",
                    cert_path.display(),
                    key_path.display()
                )));
            }
            return Ok(Self {
                cert_chain: vec![CertificateDer::from(cert)],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            });
        }
        let identity = Self::generate(subject)?;
        std::fs::create_dir_all(dir).map_err(|e| NetError::io(dir.display().to_string(), e))?;
        natter_fsutil::write_private(&key_path, identity.key.secret_der()).map_err(file_error)?;
        let cert = identity
            .cert_chain
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        natter_fsutil::write_atomic(&cert_path, &cert, natter_fsutil::PUBLIC)
            .map_err(file_error)?;
        Ok(identity)
    }
}

fn file_error(e: natter_fsutil::FileError) -> NetError {
    NetError::io(e.path.display().to_string(), e.source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_identity_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let first = TlsIdentity::load_or_generate(Some(dir.path()), "natter-test").unwrap();
        let second = TlsIdentity::load_or_generate(Some(dir.path()), "natter-test").unwrap();
        assert_eq!(first.cert_chain, second.cert_chain);
        assert_eq!(first.key.secret_der(), second.key.secret_der());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn ephemeral_identities_differ() {
        let a = TlsIdentity::load_or_generate(None, "x").unwrap();
        let b = TlsIdentity::generate("x").unwrap();
        assert_ne!(a.cert_chain, b.cert_chain);
    }
}
