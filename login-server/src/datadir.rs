//! The data directory: the login server's signing key, its TLS identity and
//! its database.
//!
//! | file | content | mode |
//! |---|---|---|
//! | `login-key.pem` | RSA-2048 signing key, PKCS#8 PEM | 0600 |
//! | `login-key.pub` | its public key, SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`), for pinning | 0644 |
//! | `tls-key.pem` | the TLS key (ECDSA P-256, for QUIC and TLS over TCP), PKCS#8 PEM | 0600 |
//! | `tls-cert.pem` | the TLS certificate, issued by the signing key | 0644 |
//! | `natter-login.db` | SQLite database (plus its `-wal` and `-shm` files) | 0600 |
//!
//! The TLS certificate is not self-signed: its issuer is the signing key
//! (issuer name [`TLS_ISSUER_CN`]), so a client that pins `login-key.pub`
//! can authenticate the TLS handshake itself; see docs/LOGIN.md.

use std::fs;
use std::path::{Path, PathBuf};

use natter_fsutil::{FileError, PUBLIC};

use rsa::RsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Signing key file.
pub const SIGNING_KEY_FILE: &str = "login-key.pem";
/// Public signing key file, the one clients and supernodes pin.
pub const PUBLIC_KEY_FILE: &str = "login-key.pub";
/// TLS private key file.
pub const TLS_KEY_FILE: &str = "tls-key.pem";
/// TLS certificate file.
pub const TLS_CERT_FILE: &str = "tls-cert.pem";
/// SQLite database file.
pub const DB_FILE: &str = "natter-login.db";
/// The DNS name in the TLS certificate; clients send it as SNI and check it.
pub const TLS_SERVER_NAME: &str = "natter-login";
/// Common name of the TLS certificate's issuer (the signing key). Clients
/// rebuild a trust anchor from this name and the pinned public key.
pub const TLS_ISSUER_CN: &str = "natter login signing key";

/// Why the data directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid PKCS#8 RSA private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("RSA key generation failed: {0}")]
    KeyGen(String),
    #[error("TLS identity: {0}")]
    Tls(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

impl From<FileError> for DataDirError {
    fn from(e: FileError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// The files of one login server.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// The TLS identity presented on QUIC and TLS-over-TCP connections (one
/// certificate for both, so clients pin the same key on either transport).
pub type TlsIdentity = natter_net::TlsIdentity;

impl DataDir {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, DataDirError> {
        let root = root.into();
        natter_fsutil::create_private_dir(&root)?;
        Ok(Self { root })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Path of a file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.file(DB_FILE)
    }

    /// The database file, created empty with mode 0600 if missing (SQLite
    /// gives its `-wal` and `-shm` files the same mode): it holds the
    /// password hashes.
    pub fn private_db_path(&self) -> Result<PathBuf, DataDirError> {
        let path = self.db_path();
        if natter_fsutil::touch_private(&path)? {
            warn_tightened(&path);
        }
        Ok(path)
    }

    /// Loads the signing key, creating it (and `login-key.pub`) on first use.
    /// Returns the key and whether it was created now.
    pub fn signing_key(&self) -> Result<(RsaPrivateKey, bool), DataDirError> {
        let path = self.file(SIGNING_KEY_FILE);
        let (key, created) = if path.exists() {
            tighten_mode(&path)?;
            let pem = fs::read_to_string(&path).map_err(io_err(&path))?;
            let key = RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| DataDirError::BadKey {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            (key, false)
        } else {
            let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                .map_err(|e| DataDirError::KeyGen(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| DataDirError::KeyGen(e.to_string()))?;
            natter_fsutil::write_private(&path, pem.as_bytes())?;
            (key, true)
        };
        let pub_path = self.file(PUBLIC_KEY_FILE);
        let pub_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| DataDirError::KeyGen(e.to_string()))?;
        // Rewritten when missing or different, so it always matches the key.
        if fs::read_to_string(&pub_path).ok().as_deref() != Some(pub_pem.as_str()) {
            natter_fsutil::write_atomic(&pub_path, pub_pem.as_bytes(), PUBLIC)?;
        }
        Ok((key, created))
    }

    /// Loads the TLS identity, creating it on first use: a fresh ECDSA P-256
    /// key and a certificate for [`TLS_SERVER_NAME`] signed by `signing_key`.
    pub fn tls_identity(&self, signing_key: &RsaPrivateKey) -> Result<TlsIdentity, DataDirError> {
        let key_path = self.file(TLS_KEY_FILE);
        let cert_path = self.file(TLS_CERT_FILE);
        if !(key_path.exists() && cert_path.exists()) {
            let (cert_pem, key_pem) = make_tls_identity(signing_key)?;
            natter_fsutil::write_private(&key_path, key_pem.as_bytes())?;
            natter_fsutil::write_atomic(&cert_path, cert_pem.as_bytes(), PUBLIC)?;
        }
        tighten_mode(&key_path)?;
        let tls_err = |path: &Path, e: rustls::pki_types::pem::Error| {
            DataDirError::Tls(format!("{}: {e}", path.display()))
        };
        let key =
            PrivatePkcs8KeyDer::from_pem_file(&key_path).map_err(|e| tls_err(&key_path, e))?;
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| tls_err(&cert_path, e))?;
        Ok(TlsIdentity {
            cert_chain: vec![cert],
            key: PrivateKeyDer::Pkcs8(key),
        })
    }
}

fn make_tls_identity(signing_key: &RsaPrivateKey) -> Result<(String, String), DataDirError> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    };
    let tls_err = |e: rcgen::Error| DataDirError::Tls(e.to_string());

    let issuer_der = signing_key
        .to_pkcs8_der()
        .map_err(|e| DataDirError::Tls(e.to_string()))?;
    let issuer_key = KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(issuer_der.as_bytes()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .map_err(tls_err)?;
    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name = DistinguishedName::new();
    issuer_params
        .distinguished_name
        .push(DnType::CommonName, TLS_ISSUER_CN);
    let issuer = Issuer::new(issuer_params, issuer_key);

    let tls_key = KeyPair::generate().map_err(tls_err)?;
    let mut params = CertificateParams::new(vec![TLS_SERVER_NAME.to_owned()]).map_err(tls_err)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, TLS_SERVER_NAME);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&tls_key, &issuer).map_err(tls_err)?;
    Ok((cert.pem(), tls_key.serialize_pem()))
}

/// Makes a secret file readable by its owner only, whatever it was.
fn tighten_mode(path: &Path) -> Result<(), DataDirError> {
    if natter_fsutil::tighten(path)? {
        warn_tightened(path);
    }
    Ok(())
}

fn warn_tightened(path: &Path) {
    tracing::warn!(path = %path.display(), "secret file was readable by others; setting mode 0600");
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_fsutil::PRIVATE;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_then_reuses_keys_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path().join("d")).unwrap();
        let (key1, created1) = data.signing_key().unwrap();
        assert!(created1);
        let tls1 = data.tls_identity(&key1).unwrap();
        data.private_db_path().unwrap();
        for (file, mode) in [
            (SIGNING_KEY_FILE, PRIVATE),
            (TLS_KEY_FILE, PRIVATE),
            (PUBLIC_KEY_FILE, PUBLIC),
            (DB_FILE, PRIVATE),
        ] {
            let m = fs::metadata(data.file(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{file}");
        }
        let (key2, created2) = data.signing_key().unwrap();
        assert!(!created2);
        assert_eq!(key1, key2);
        let tls2 = data.tls_identity(&key2).unwrap();
        assert_eq!(tls1.cert_chain, tls2.cert_chain);
    }
}
