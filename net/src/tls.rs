//! A self-signed TLS identity for a QUIC server.
//!
//! Generated with rcgen (ECDSA P-256). With a data directory the certificate
//! and key are kept in `tls-cert.der` and `tls-key.der` (PKCS#8, mode 0600)
//! so the server presents the same certificate across restarts.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::NetError;

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
        write_private(&key_path, identity.key.secret_der())?;
        let cert = identity
            .cert_chain
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        std::fs::write(&cert_path, cert)
            .map_err(|e| NetError::io(cert_path.display().to_string(), e))?;
        Ok(identity)
    }
}

/// Writes `bytes` to a new file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NetError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| NetError::io(path.display().to_string(), e))?;
    #[cfg(unix)]
    {
        // The mode only applies when the file is created; tighten an old one too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| NetError::io(path.display().to_string(), e))?;
    }
    file.write_all(bytes)
        .map_err(|e| NetError::io(path.display().to_string(), e))
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
