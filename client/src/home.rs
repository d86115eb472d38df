//! The client's home directory (`--home DIR`): the RSA key pair and the
//! certificate from the last login, both mode 0600, reused until the
//! certificate nears expiry so a logged-in user can join supernodes without
//! the login server.
//!
//! | file | content |
//! |---|---|
//! | `identity.key` | RSA-2048 private key, PKCS#8 PEM |
//! | `identity.cert` | the certificate, an encoded `natter.v1.Certificate` |
//! | `chat.key` | the X25519 chat secret (32 bytes), kept across logins so chat sent to an older certificate's key still opens |
//! | `buddies.txt`, `buddies.version` | the buddy list, see [`crate::buddy_list`] |
//! | `inbox.txt` | received chat, see [`crate::inbox`] |
//! | `hostcache.txt` | the host cache, see [`crate::hostcache`] |
//!
//! Every file is written by [`natter_fsutil`]: atomically, mode 0600.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use natter_proto::cert::{self, CertError, Identity, VerifiedCertificate};
use natter_proto::messages::{Certificate, CertificateBody, HostCacheEntry};
use prost::Message;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::ClientError;
use crate::buddy_list::{self, BuddyList};
use crate::hostcache::{self, HostCache};
use crate::inbox::{self, Inbox};
use crate::login::{LoginClient, LoginTarget, Transport, generate_key};
use crate::overlay::{Overlay, OverlayConfig};

/// Private key file.
pub const KEY_FILE: &str = "identity.key";
/// Certificate file.
pub const CERT_FILE: &str = "identity.cert";
/// X25519 chat secret file.
pub const CHAT_KEY_FILE: &str = "chat.key";
/// The home directory when `--home` is not given: `$HOME/.natter`.
pub const DEFAULT_DIR: &str = ".natter";

/// A logged-in identity loaded from the home directory.
#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    pub verified: VerifiedCertificate,
    /// The pinned login-server key the certificate was checked against
    /// (supernode certificates are checked against it too).
    pub login_key: RsaPublicKey,
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
        natter_fsutil::create_private_dir(&dir)?;
        Ok(Self { dir })
    }

    /// Opens `dir`, or `$HOME/.natter` when it is `None`.
    pub fn open_or_default(dir: Option<PathBuf>) -> Result<Self, ClientError> {
        let dir = match dir {
            Some(dir) => dir,
            None => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(DEFAULT_DIR))
                .ok_or_else(|| {
                    ClientError::Usage("--home DIR is required (HOME is not set)".to_owned())
                })?,
        };
        Self::open(dir)
    }

    /// The home directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a file in the home directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The buddy list (empty when there is none yet).
    pub fn buddy_list(&self) -> BuddyList {
        BuddyList::load(&self.file(buddy_list::LIST_FILE))
    }

    /// The inbox.
    pub fn inbox(&self) -> Inbox {
        Inbox::new(self.file(inbox::FILE_NAME))
    }

    /// The host cache's file.
    pub fn host_cache_path(&self) -> PathBuf {
        self.file(hostcache::FILE_NAME)
    }

    /// The host cache (empty when there is none yet).
    pub fn host_cache(&self) -> Result<HostCache, ClientError> {
        HostCache::load(&self.host_cache_path()).map_err(|e| ClientError::Usage(e.to_string()))
    }

    /// Seeds the host cache with the supernodes a login returned: only
    /// those whose supernode certificate verifies against `login_key` and
    /// names the listed addresses.
    pub fn seed_host_cache(
        &self,
        supernodes: &[HostCacheEntry],
        login_key: &RsaPublicKey,
    ) -> Result<(), ClientError> {
        let path = self.host_cache_path();
        let mut cache = self.host_cache()?;
        cache.learn_with_tcp(
            crate::overlay::certified_nodes(supernodes, login_key, crate::now_unix_secs()),
            crate::now_unix_ms(),
        );
        cache
            .save(&path)
            .map_err(|e| ClientError::Usage(e.to_string()))
    }

    /// Joins the overlay as `session` from a fresh QUIC endpoint, through
    /// the host cache (then `bootstrap`).
    pub async fn join_overlay(
        &self,
        session: &Session,
        bootstrap: Vec<SocketAddr>,
    ) -> Result<Overlay, ClientError> {
        let endpoint = natter_net::client_endpoint(
            SocketAddr::from(([0, 0, 0, 0], 0)),
            &natter_net::TransportSettings::OVERLAY,
        )
        .map_err(|e| ClientError::Usage(format!("cannot open a QUIC endpoint: {e}")))?;
        let config = OverlayConfig::new(self.host_cache_path(), bootstrap);
        Ok(Overlay::join(
            config,
            endpoint,
            session.identity.clone(),
            session.login_key.clone(),
        )
        .await?)
    }

    /// Stores a key pair and its certificate (mode 0600).
    pub fn save(&self, key: &RsaPrivateKey, certificate: &Certificate) -> Result<(), ClientError> {
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| ClientError::Crypto(e.to_string()))?;
        natter_fsutil::write_private(&self.file(KEY_FILE), pem.as_bytes())?;
        natter_fsutil::write_private(&self.file(CERT_FILE), &certificate.encode_to_vec())?;
        Ok(())
    }

    /// The X25519 chat secret, generated (from the OS RNG) and stored
    /// (mode 0600) on first use; the same across logins.
    pub fn chat_secret(&self) -> Result<[u8; cert::CHAT_KEY_LEN], ClientError> {
        let path = self.file(CHAT_KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => <[u8; cert::CHAT_KEY_LEN]>::try_from(bytes.as_slice())
                .map_err(|_| ClientError::file(&path, "is not a 32-byte chat key")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; cert::CHAT_KEY_LEN];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
                natter_fsutil::write_private(&path, &secret)?;
                Ok(secret)
            }
            Err(e) => Err(ClientError::file(&path, e)),
        }
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
        let chat_secret = self.chat_secret()?;
        if cert::chat_public(&chat_secret) != verified.chat_key {
            return Err(ClientError::file(
                &self.file(CHAT_KEY_FILE),
                "does not match the stored certificate's chat key",
            ));
        }
        Ok(Session {
            identity: Identity {
                key,
                certificate,
                chat_secret,
            },
            verified,
            login_key: login_key.clone(),
        })
    }

    /// The stored identity if it is `name`'s, valid against `login_key` at
    /// `now` (unix seconds) and not near expiry: a login that needs neither
    /// the server nor the password.
    pub fn reusable(&self, login_key: &RsaPublicKey, name: &str, now: i64) -> Option<Session> {
        self.load(login_key, now)
            .ok()
            .filter(|s| natter_proto::name::same(s.name(), name) && !s.needs_renewal(now))
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
        if !force && let Some(session) = self.reusable(login_key, name, crate::now_unix_secs()) {
            return Ok(LoginStatus::Reused(session));
        }
        let key = generate_key().await?;
        let chat_secret = self.chat_secret()?;
        let client = LoginClient::connect_to(&target.into(), login_key.clone()).await?;
        let transport = client.transport();
        let outcome = client.login(name, password, &key, &chat_secret).await;
        client.close().await;
        let outcome = outcome?;
        self.save(&key, &outcome.certificate)?;
        Ok(LoginStatus::Fresh {
            session: Session {
                identity: Identity {
                    key,
                    certificate: outcome.certificate,
                    chat_secret,
                },
                verified: outcome.verified,
                login_key: login_key.clone(),
            },
            supernodes: outcome.supernodes,
            transport,
        })
    }
}
