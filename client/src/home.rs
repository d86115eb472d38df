//! The client's home directory (`--home DIR`): the RSA key pair and the
//! certificate from the last login, both mode 0600, reused until the
//! certificate nears expiry so a logged-in user can join supernodes without
//! the login server.
//!
//! | file | content |
//! |---|---|
//! | `identity.key` | RSA-2048 private key, PKCS#8 PEM |
//! | `identity.cert` | the certificate, an encoded `natter.v1.Certificate` |
//! | `buddies.txt` | the buddy list, one name per line (`natter buddies push/pull`) |

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use natter_proto::cert::{self, CertError, Identity, VerifiedCertificate};
use natter_proto::messages::{Certificate, CertificateBody, HostCacheEntry};
use prost::Message;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::ClientError;
use crate::login::{LoginClient, LoginTarget, Transport, generate_key};

/// Private key file.
pub const KEY_FILE: &str = "identity.key";
/// Certificate file.
pub const CERT_FILE: &str = "identity.cert";
/// Buddy list file.
pub const BUDDIES_FILE: &str = "buddies.txt";

/// A logged-in identity loaded from the home directory.
#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    pub verified: VerifiedCertificate,
}

impl Session {
    /// The certified (normalised) user name.
    pub fn name(&self) -> &str {
        &self.verified.name
    }

    /// Whether the certificate should be renewed at `now` (unix seconds):
    /// less than a tenth of its lifetime, or an hour, is left.
    pub fn needs_renewal(&self, now: i64) -> bool {
        let lifetime = self.verified.not_after - self.verified.not_before;
        let margin = (lifetime / 10).min(3600);
        self.verified.not_after - now < margin
    }
}

/// How a login was satisfied.
#[derive(Debug, Clone)]
pub enum LoginStatus {
    /// The stored certificate is still good; the login server was not contacted.
    Reused(Session),
    /// A new key pair and certificate were obtained and stored.
    Fresh {
        session: Session,
        supernodes: Vec<HostCacheEntry>,
        /// How the login server was reached (QUIC, or TLS over TCP).
        transport: Transport,
    },
}

impl LoginStatus {
    /// The session, however it was obtained.
    pub fn session(&self) -> &Session {
        match self {
            Self::Reused(s) | Self::Fresh { session: s, .. } => s,
        }
    }
}

/// The client's home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// Opens (creating, mode 0700) the home directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ClientError> {
        let dir = dir.into();
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| ClientError::file(&dir, e))?;
        }
        Ok(Self { dir })
    }

    /// Path of a file in the home directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Stores a key pair and its certificate (mode 0600).
    pub fn save(&self, key: &RsaPrivateKey, certificate: &Certificate) -> Result<(), ClientError> {
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| ClientError::Crypto(e.to_string()))?;
        write_private(&self.file(KEY_FILE), pem.as_bytes())?;
        write_private(&self.file(CERT_FILE), &certificate.encode_to_vec())
    }

    /// The name on the stored certificate, without verifying it.
    pub fn stored_name(&self) -> Option<String> {
        let bytes = fs::read(self.file(CERT_FILE)).ok()?;
        let cert = Certificate::decode(bytes.as_slice()).ok()?;
        CertificateBody::decode(cert.body.as_slice())
            .ok()
            .map(|b| b.name)
    }

    /// Loads the stored identity and checks it against `login_key` at `now`
    /// (unix seconds): [`ClientError::NotLoggedIn`] if there is none,
    /// [`ClientError::SessionExpired`] if its certificate has expired.
    pub fn load(&self, login_key: &RsaPublicKey, now: i64) -> Result<Session, ClientError> {
        let cert_path = self.file(CERT_FILE);
        let key_path = self.file(KEY_FILE);
        if !cert_path.exists() || !key_path.exists() {
            return Err(ClientError::NotLoggedIn);
        }
        let bytes = fs::read(&cert_path).map_err(|e| ClientError::file(&cert_path, e))?;
        let certificate =
            Certificate::decode(bytes.as_slice()).map_err(|e| ClientError::file(&cert_path, e))?;
        let verified = match cert::verify(&certificate, login_key, now) {
            Ok(v) => v,
            Err(CertError::Expired { not_after, .. }) => {
                return Err(ClientError::SessionExpired {
                    name: self.stored_name().unwrap_or_default(),
                    expired_at: not_after,
                });
            }
            Err(e) => {
                return Err(ClientError::BadCertificate(format!(
                    "{}: {e}",
                    cert_path.display()
                )));
            }
        };
        let pem = fs::read_to_string(&key_path).map_err(|e| ClientError::file(&key_path, e))?;
        let key =
            RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| ClientError::file(&key_path, e))?;
        if key.to_public_key() != verified.public_key {
            return Err(ClientError::file(
                &key_path,
                "does not match the stored certificate",
            ));
        }
        Ok(Session {
            identity: Identity { key, certificate },
            verified,
        })
    }

    /// Logs `name` in: reuses the stored identity while it is valid and not
    /// near expiry (unless `force`), otherwise generates a new key pair,
    /// obtains a certificate from the login server at `target` (a
    /// [`LoginTarget`], or a `SocketAddr` for QUIC with the TLS-over-TCP
    /// fallback on the same address) and stores both.
    pub async fn login(
        &self,
        target: impl Into<LoginTarget>,
        login_key: &RsaPublicKey,
        name: &str,
        password: &str,
        force: bool,
    ) -> Result<LoginStatus, ClientError> {
        let now = crate::now_unix_secs();
        if !force
            && let Ok(session) = self.load(login_key, now)
            && natter_proto::name::same(session.name(), name)
            && !session.needs_renewal(now)
        {
            return Ok(LoginStatus::Reused(session));
        }
        let key = generate_key().await?;
        let client = LoginClient::connect_to(&target.into(), login_key.clone()).await?;
        let transport = client.transport();
        let outcome = client.login(name, password, &key).await;
        client.close().await;
        let outcome = outcome?;
        self.save(&key, &outcome.certificate)?;
        Ok(LoginStatus::Fresh {
            session: Session {
                identity: Identity {
                    key,
                    certificate: outcome.certificate,
                },
                verified: outcome.verified,
            },
            supernodes: outcome.supernodes,
            transport,
        })
    }
}

/// Writes a file readable by its owner only, atomically (temp file + rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), ClientError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| ClientError::file(path, e))
}
