//! Client-side encryption of the buddy list.
//!
//! ```text
//! key  = HKDF-SHA256(ikm = argon2id(password, salt = SHA-256("natter-buddy-salt-v1" || name)),
//!                    info = "natter-buddy-key-v1")          (32 bytes)
//! blob = "NBL1" || nonce (12 random bytes) || AES-256-GCM(key, nonce, aad, plaintext)
//! aad  = "natter-buddy-v1" || name || version (u64 BE)
//! plaintext = buddy names, one per line
//! ```
//!
//! `name` is the normalised user name and `version` the version the blob is
//! stored under (the put's `base_version + 1`), so the server can neither
//! move a blob to another account nor present an old blob as a newer
//! version. The salt is derived from the name so another machine derives the
//! same key from the password alone; the argon2 cost is fixed by the format.
//! The server keeps only its own (differently salted) password hash, so a
//! copy of its database does not reveal buddy lists; see docs/LOGIN.md for
//! what a malicious server operator could still do.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::ClientError;
use crate::login::LoginClient;

const MAGIC: &[u8; 4] = b"NBL1";
const NONCE_LEN: usize = 12;

/// Argon2id cost of the buddy key (part of the format).
pub const KDF_M_KIB: u32 = 19_456;
/// Argon2id passes of the buddy key.
pub const KDF_T: u32 = 2;

/// A buddy-list encryption key.
#[derive(Clone)]
pub struct BuddyKey([u8; 32]);

impl std::fmt::Debug for BuddyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BuddyKey(..)")
    }
}

impl BuddyKey {
    /// Derives the key of user `name` from the password (slow: argon2id).
    pub fn derive(name: &str, password: &str) -> Result<Self, ClientError> {
        let name = natter_proto::name::normalise(name)
            .map_err(|e| ClientError::BadName(format!("{name:?}: {e}")))?;
        let salt = Sha256::new()
            .chain_update(b"natter-buddy-salt-v1")
            .chain_update(name.as_bytes())
            .finalize();
        let params = Params::new(KDF_M_KIB, KDF_T, 1, Some(32))
            .map_err(|e| ClientError::Crypto(e.to_string()))?;
        let mut ikm = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password.as_bytes(), &salt, &mut ikm)
            .map_err(|e| ClientError::Crypto(e.to_string()))?;
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(None, &ikm)
            .expand(b"natter-buddy-key-v1", &mut key)
            .map_err(|e| ClientError::Crypto(e.to_string()))?;
        Ok(Self(key))
    }

    fn aad(name: &str, version: u64) -> Vec<u8> {
        let mut aad = b"natter-buddy-v1".to_vec();
        aad.extend_from_slice(name.to_ascii_lowercase().as_bytes());
        aad.extend_from_slice(&version.to_be_bytes());
        aad
    }

    /// Encrypts `buddies` to be stored as `version` of `name`'s blob.
    pub fn seal(
        &self,
        name: &str,
        version: u64,
        buddies: &[String],
    ) -> Result<Vec<u8>, ClientError> {
        let plaintext = buddies.join("\n");
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new(&self.0.into());
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &Self::aad(name, version),
                },
            )
            .map_err(|_| ClientError::Crypto("buddy list encryption failed".into()))?;
        let mut blob = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        blob.extend_from_slice(MAGIC);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Decrypts `name`'s blob stored as `version`. An empty blob is an empty list.
    pub fn open(&self, name: &str, version: u64, blob: &[u8]) -> Result<Vec<String>, ClientError> {
        if blob.is_empty() {
            return Ok(Vec::new());
        }
        let rest = blob
            .strip_prefix(MAGIC.as_slice())
            .ok_or(ClientError::Decrypt)?;
        if rest.len() < NONCE_LEN {
            return Err(ClientError::Decrypt);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| ClientError::Decrypt)?;
        let cipher = Aes256Gcm::new(&self.0.into());
        let plaintext = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &Self::aad(name, version),
                },
            )
            .map_err(|_| ClientError::Decrypt)?;
        let text = String::from_utf8(plaintext).map_err(|_| ClientError::Decrypt)?;
        Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// Fetches and decrypts the buddy list; returns its version and names.
pub async fn pull(
    client: &LoginClient,
    name: &str,
    password: &str,
) -> Result<(u64, Vec<String>), ClientError> {
    let blob = client.buddy_blob_get(name, password).await?;
    let key = derive_key(name, password).await?;
    let buddies = key.open(name, blob.version, &blob.ciphertext)?;
    Ok((blob.version, buddies))
}

/// Encrypts and stores `buddies` as the successor of `base_version`;
/// returns the new version ([`ClientError::StaleVersion`] if another
/// machine wrote in between).
pub async fn push(
    client: &LoginClient,
    name: &str,
    password: &str,
    base_version: u64,
    buddies: &[String],
) -> Result<u64, ClientError> {
    let key = derive_key(name, password).await?;
    let blob = key.seal(name, base_version + 1, buddies)?;
    client
        .buddy_blob_put(name, password, base_version, blob)
        .await
}

async fn derive_key(name: &str, password: &str) -> Result<BuddyKey, ClientError> {
    let (name, password) = (name.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || BuddyKey::derive(&name, &password))
        .await
        .map_err(|e| ClientError::Crypto(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let key = BuddyKey::derive("Alice", "correct horse").unwrap();
        let again = BuddyKey::derive("alice", "correct horse").unwrap();
        let list = vec!["bob".to_owned(), "carol".to_owned()];
        let blob = key.seal("alice", 3, &list).unwrap();
        assert_eq!(again.open("alice", 3, &blob).unwrap(), list);
        // Bound to the version and the name.
        assert!(matches!(
            key.open("alice", 2, &blob),
            Err(ClientError::Decrypt)
        ));
        assert!(matches!(
            key.open("mallory", 3, &blob),
            Err(ClientError::Decrypt)
        ));
        // Another password, another key.
        let other = BuddyKey::derive("alice", "wrong horse").unwrap();
        assert!(matches!(
            other.open("alice", 3, &blob),
            Err(ClientError::Decrypt)
        ));
        // Tampering is detected.
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            key.open("alice", 3, &bad),
            Err(ClientError::Decrypt)
        ));
        assert!(key.open("alice", 0, &[]).unwrap().is_empty());
        // Fresh nonce per seal.
        assert_ne!(blob, key.seal("alice", 3, &list).unwrap());
    }
}
