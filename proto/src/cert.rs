//! User certificates: the login server's signed statement that a name owns an
//! RSA public key for a limited time.
//!
//! On the wire a [`Certificate`] carries the exact encoded [`CertificateBody`]
//! bytes and the issuer's signature over them, so verification never depends
//! on re-encoding. Signatures are RSASSA-PKCS1-v1_5 with SHA-256: deterministic,
//! which lets docs/PROTOCOL.md publish signature test vectors that any
//! implementation can reproduce byte for byte.
//!
//! The issuer's private-key operation is blinded ([`sign_blinded`], used by
//! [`Issuer::issue`]): an attacker triggers it at will with their own logins,
//! and the `rsa` crate's unblinded operation leaks timing (RUSTSEC-2023-0071).
//! Blinding changes only the computation, not the result: PKCS#1 v1.5 is
//! deterministic, so blinded and unblinded signatures are the same bytes. The
//! caller passes the randomness (this crate reads no OS RNG).

use prost::Message;
use rand_core::CryptoRngCore;
use rsa::pkcs1::{DecodeRsaPublicKey, EncodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

use crate::messages::{Certificate, CertificateBody};

/// Certificate format version.
pub const CERT_VERSION: u32 = 1;
/// Smallest accepted RSA modulus, in bits.
pub const MIN_KEY_BITS: usize = 2048;
/// Largest accepted RSA modulus, in bits (bounds verification cost).
pub const MAX_KEY_BITS: usize = 4096;
/// Bytes of an issuer key id.
pub const KEY_ID_LEN: usize = 16;

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate body is malformed: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("certificate version {0} is not supported")]
    UnsupportedVersion(u32),
    #[error("certificate public key is not a valid RSA PKCS#1 key")]
    BadPublicKey,
    #[error("certificate key of {0} bits is outside {MIN_KEY_BITS}..={MAX_KEY_BITS}")]
    KeySize(usize),
    #[error("certificate was issued by another login server (key id mismatch)")]
    WrongIssuer,
    #[error("certificate signature does not verify (forged or altered)")]
    BadSignature,
    #[error("certificate is not valid before {not_before} (now {now})")]
    NotYetValid { not_before: i64, now: i64 },
    #[error("certificate expired at {not_after} (now {now})")]
    Expired { not_after: i64, now: i64 },
    #[error("certificate is for {got:?}, expected {expected:?}")]
    NameMismatch { expected: String, got: String },
}

/// Why a signature could not be made or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature does not verify with the given key")]
    Invalid,
}

/// The PKCS#1 DER encoding of an RSA public key.
pub fn public_key_der(key: &RsaPublicKey) -> Vec<u8> {
    key.to_pkcs1_der()
        .map(|doc| doc.as_bytes().to_vec())
        // Encoding a valid in-memory key into DER cannot fail.
        .unwrap_or_default()
}

/// Parses a PKCS#1 DER RSA public key within the accepted sizes.
pub fn parse_public_key(der: &[u8]) -> Result<RsaPublicKey, CertError> {
    let key = RsaPublicKey::from_pkcs1_der(der).map_err(|_| CertError::BadPublicKey)?;
    let bits = key.size() * 8;
    if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
        return Err(CertError::KeySize(bits));
    }
    Ok(key)
}

/// The key id of a public key: the first 16 bytes of SHA-256 of its PKCS#1 DER.
pub fn key_id(key: &RsaPublicKey) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::digest(public_key_der(key));
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

/// A SHA-256 fingerprint of a public key, as lowercase hex, for logs and pinning.
pub fn fingerprint(key: &RsaPublicKey) -> String {
    Sha256::digest(public_key_der(key))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Signs `message` with RSASSA-PKCS1-v1_5 / SHA-256, without blinding.
///
/// For a user's own key (join proofs, signed shares); the login server's
/// issuer signs with [`sign_blinded`].
pub fn sign(key: &RsaPrivateKey, message: &[u8]) -> Vec<u8> {
    SigningKey::<Sha256>::new(key.clone())
        .sign(message)
        .to_vec()
}

/// Signs `message` with RSASSA-PKCS1-v1_5 / SHA-256, the private-key
/// operation blinded with fresh randomness from `rng` (drawn on every call).
/// The signature is byte for byte the one [`sign`] makes.
pub fn sign_blinded(key: &RsaPrivateKey, rng: &mut impl CryptoRngCore, message: &[u8]) -> Vec<u8> {
    SigningKey::<Sha256>::new(key.clone())
        .sign_with_rng(rng, message)
        .to_vec()
}

/// Verifies an RSASSA-PKCS1-v1_5 / SHA-256 signature.
pub fn verify_signature(
    key: &RsaPublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    let signature = Signature::try_from(signature).map_err(|_| SignatureError::Invalid)?;
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(message, &signature)
        .map_err(|_| SignatureError::Invalid)
}

/// The login server's side: issues certificates with its signing key.
#[derive(Debug, Clone)]
pub struct Issuer {
    key: RsaPrivateKey,
    key_id: [u8; KEY_ID_LEN],
}

impl Issuer {
    /// An issuer signing with `key`.
    pub fn new(key: RsaPrivateKey) -> Self {
        let key_id = key_id(&key.to_public_key());
        Self { key, key_id }
    }

    /// The public key that verifies this issuer's certificates.
    pub fn public_key(&self) -> RsaPublicKey {
        self.key.to_public_key()
    }

    /// Certifies that `name` owns `subject` from `not_before` to `not_after`
    /// (unix seconds). The signature is blinded with randomness from `rng`
    /// (the login server passes the OS RNG).
    pub fn issue(
        &self,
        rng: &mut impl CryptoRngCore,
        name: &str,
        subject: &RsaPublicKey,
        serial: u64,
        not_before: i64,
        not_after: i64,
    ) -> Certificate {
        let body = CertificateBody {
            version: CERT_VERSION,
            name: name.to_owned(),
            public_key: public_key_der(subject),
            serial,
            not_before,
            not_after,
            issuer_key_id: self.key_id.to_vec(),
        }
        .encode_to_vec();
        let signature = sign_blinded(&self.key, rng, &body);
        Certificate { body, signature }
    }
}

/// A certificate whose signature and validity were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCertificate {
    pub name: String,
    pub public_key: RsaPublicKey,
    pub serial: u64,
    pub not_before: i64,
    pub not_after: i64,
}

/// Checks `cert` offline against the pinned login-server key at time `now`
/// (unix seconds): issuer, signature, format, key size, validity window.
pub fn verify(
    cert: &Certificate,
    issuer: &RsaPublicKey,
    now: i64,
) -> Result<VerifiedCertificate, CertError> {
    // Signature first: nothing in an unsigned body is trusted.
    verify_signature(issuer, &cert.body, &cert.signature).map_err(|_| {
        // Distinguish "another issuer" from "forged" when the body parses.
        match CertificateBody::decode(cert.body.as_slice()) {
            Ok(body) if body.issuer_key_id != key_id(issuer) => CertError::WrongIssuer,
            _ => CertError::BadSignature,
        }
    })?;
    let body = CertificateBody::decode(cert.body.as_slice())?;
    if body.version != CERT_VERSION {
        return Err(CertError::UnsupportedVersion(body.version));
    }
    if body.issuer_key_id != key_id(issuer) {
        return Err(CertError::WrongIssuer);
    }
    let public_key = parse_public_key(&body.public_key)?;
    if now < body.not_before {
        return Err(CertError::NotYetValid {
            not_before: body.not_before,
            now,
        });
    }
    if now >= body.not_after {
        return Err(CertError::Expired {
            not_after: body.not_after,
            now,
        });
    }
    Ok(VerifiedCertificate {
        name: body.name,
        public_key,
        serial: body.serial,
        not_before: body.not_before,
        not_after: body.not_after,
    })
}

/// A user's own identity: the private key and the certificate for it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub key: RsaPrivateKey,
    pub certificate: Certificate,
}

impl Identity {
    /// Signs `message` with the certified key.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        sign(&self.key, message)
    }
}

/// The bytes a client signs to prove to a supernode that it holds its
/// certified key: `"NATTER-JOIN-V1" || node_id || nonce`.
pub fn join_proof_message(node_id: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(14 + node_id.len() + nonce.len());
    message.extend_from_slice(b"NATTER-JOIN-V1");
    message.extend_from_slice(node_id);
    message.extend_from_slice(nonce);
    message
}
