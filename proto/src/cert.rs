//! Certificates: the login server's signed statement that a name owns an
//! RSA public key (and an X25519 chat key) for a limited time, or that a
//! supernode's RSA key is approved to serve at given addresses.
//!
//! [`verify`] accepts user certificates only and [`verify_supernode`]
//! supernode certificates only: a supernode certificate can never pass as
//! a user's, nor the other way round.
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

use crate::messages::{
    Certificate, CertificateBody, CertificateKind, RevocationList, RevocationListBody,
};

/// Certificate format version (2: kinds, chat key, supernode addresses).
pub const CERT_VERSION: u32 = 2;
/// Bytes of an X25519 chat key.
pub const CHAT_KEY_LEN: usize = 32;
/// Bytes of a supernode id (the key id of its certified key).
pub const NODE_ID_LEN: usize = KEY_ID_LEN;
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
    #[error("certificate is a {got} certificate, expected a {expected} certificate")]
    WrongKind {
        expected: &'static str,
        got: &'static str,
    },
    #[error("user certificate has no valid 32-byte chat key")]
    BadChatKey,
    #[error("supernode certificate's node id is not the key id of its key")]
    BadNodeId,
    #[error("supernode certificate has no valid address: {0}")]
    BadAddress(#[from] crate::messages::AddrError),
    #[error("supernode certificate names no address")]
    MissingAddress,
}

/// What a certificate certifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A user: a name, its RSA key and its X25519 chat key.
    User {
        name: &'a str,
        key: &'a RsaPublicKey,
        chat_key: [u8; CHAT_KEY_LEN],
    },
    /// A supernode: its RSA key (its node id is the key's id) and addresses.
    Supernode {
        key: &'a RsaPublicKey,
        addrs: SupernodeAddrs,
    },
}

/// Where a certified supernode serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SupernodeAddrs {
    /// QUIC control (joins, links).
    pub quic: std::net::SocketAddr,
    /// UDP service: STUN reflector and media relay.
    pub reflector: std::net::SocketAddr,
    /// TLS-over-TCP listener, if any.
    pub tcp: Option<std::net::SocketAddr>,
}

fn kind_name(kind: i32) -> &'static str {
    match CertificateKind::try_from(kind) {
        Ok(CertificateKind::User) => "user",
        Ok(CertificateKind::Supernode) => "supernode",
        Err(_) => "unknown",
    }
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

    /// Certifies `subject` from `not_before` to `not_after` (unix seconds).
    /// The signature is blinded with randomness from `rng` (the login
    /// server passes the OS RNG).
    pub fn issue(
        &self,
        rng: &mut impl CryptoRngCore,
        subject: &Subject<'_>,
        serial: u64,
        not_before: i64,
        not_after: i64,
    ) -> Certificate {
        let mut body = CertificateBody {
            version: CERT_VERSION,
            serial,
            not_before,
            not_after,
            issuer_key_id: self.key_id.to_vec(),
            ..CertificateBody::default()
        };
        match subject {
            Subject::User {
                name,
                key,
                chat_key,
            } => {
                body.kind = CertificateKind::User as i32;
                body.name = (*name).to_owned();
                body.public_key = public_key_der(key);
                body.chat_key = chat_key.to_vec();
            }
            Subject::Supernode { key, addrs } => {
                body.kind = CertificateKind::Supernode as i32;
                body.public_key = public_key_der(key);
                body.node_id = key_id(key).to_vec();
                body.quic = Some(addrs.quic.into());
                body.reflector = Some(addrs.reflector.into());
                body.tcp = addrs.tcp.map(Into::into);
            }
        }
        let body = body.encode_to_vec();
        let signature = sign_blinded(&self.key, rng, &body);
        Certificate { body, signature }
    }

    /// Signs the list of what is revoked now (blinded, like certificates).
    pub fn revocations(
        &self,
        rng: &mut impl CryptoRngCore,
        issued_at_ms: i64,
        disabled_users: Vec<String>,
        revoked_supernodes: Vec<[u8; NODE_ID_LEN]>,
    ) -> RevocationList {
        let body = RevocationListBody {
            issued_at: issued_at_ms,
            disabled_users,
            revoked_supernodes: revoked_supernodes.iter().map(|id| id.to_vec()).collect(),
            issuer_key_id: self.key_id.to_vec(),
        }
        .encode_to_vec();
        let signature = sign_blinded(&self.key, rng, &body);
        RevocationList { body, signature }
    }
}

/// Checks a revocation list's signature against the pinned login key and
/// returns its body.
pub fn verify_revocations(
    list: &RevocationList,
    issuer: &RsaPublicKey,
) -> Result<RevocationListBody, CertError> {
    verify_signature(issuer, &list.body, &list.signature).map_err(|_| CertError::BadSignature)?;
    let body = RevocationListBody::decode(list.body.as_slice())?;
    if body.issuer_key_id != key_id(issuer) {
        return Err(CertError::WrongIssuer);
    }
    Ok(body)
}

/// A user certificate whose signature and validity were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCertificate {
    pub name: String,
    pub public_key: RsaPublicKey,
    /// The X25519 key chat to this user is encrypted to.
    pub chat_key: [u8; CHAT_KEY_LEN],
    pub serial: u64,
    pub not_before: i64,
    pub not_after: i64,
}

/// A supernode certificate whose signature and validity were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSupernode {
    /// Always `key_id(public_key)`.
    pub node_id: [u8; NODE_ID_LEN],
    pub public_key: RsaPublicKey,
    pub addrs: SupernodeAddrs,
    pub serial: u64,
    pub not_before: i64,
    pub not_after: i64,
}

/// Checks a **user** certificate offline against the pinned login-server
/// key at time `now` (unix seconds): issuer, signature, format, kind, key
/// size, chat key, validity window.
pub fn verify(
    cert: &Certificate,
    issuer: &RsaPublicKey,
    now: i64,
) -> Result<VerifiedCertificate, CertError> {
    let (body, public_key) = verify_body(cert, issuer, now, CertificateKind::User)?;
    let chat_key = <[u8; CHAT_KEY_LEN]>::try_from(body.chat_key.as_slice())
        .map_err(|_| CertError::BadChatKey)?;
    Ok(VerifiedCertificate {
        name: body.name,
        public_key,
        chat_key,
        serial: body.serial,
        not_before: body.not_before,
        not_after: body.not_after,
    })
}

/// Checks a **supernode** certificate offline against the pinned
/// login-server key at time `now` (unix seconds): as [`verify`], plus the
/// node id (the key's id) and the addresses.
pub fn verify_supernode(
    cert: &Certificate,
    issuer: &RsaPublicKey,
    now: i64,
) -> Result<VerifiedSupernode, CertError> {
    let (body, public_key) = verify_body(cert, issuer, now, CertificateKind::Supernode)?;
    let node_id = key_id(&public_key);
    if body.node_id != node_id {
        return Err(CertError::BadNodeId);
    }
    let addr = |a: &Option<crate::messages::SocketAddr>| -> Result<_, CertError> {
        a.as_ref()
            .map(std::net::SocketAddr::try_from)
            .transpose()
            .map_err(CertError::from)
    };
    let quic = addr(&body.quic)?.ok_or(CertError::MissingAddress)?;
    let reflector = addr(&body.reflector)?.ok_or(CertError::MissingAddress)?;
    let tcp = addr(&body.tcp)?;
    Ok(VerifiedSupernode {
        node_id,
        public_key,
        addrs: SupernodeAddrs {
            quic,
            reflector,
            tcp,
        },
        serial: body.serial,
        not_before: body.not_before,
        not_after: body.not_after,
    })
}

/// The checks every certificate kind shares.
fn verify_body(
    cert: &Certificate,
    issuer: &RsaPublicKey,
    now: i64,
    expected: CertificateKind,
) -> Result<(CertificateBody, RsaPublicKey), CertError> {
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
    if body.kind != expected as i32 {
        return Err(CertError::WrongKind {
            expected: kind_name(expected as i32),
            got: kind_name(body.kind),
        });
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
    Ok((body, public_key))
}

/// A user's own identity: the private keys and the certificate for them.
#[derive(Debug, Clone)]
pub struct Identity {
    pub key: RsaPrivateKey,
    pub certificate: Certificate,
    /// The X25519 secret of the certified chat key ([`chat_public`]).
    pub chat_secret: [u8; CHAT_KEY_LEN],
}

/// The X25519 public key of a chat secret (what a certificate carries).
pub fn chat_public(secret: &[u8; CHAT_KEY_LEN]) -> [u8; CHAT_KEY_LEN] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*secret)).to_bytes()
}

impl Identity {
    /// Signs `message` with the certified key.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        sign(&self.key, message)
    }
}

impl Identity {
    /// Signs `message` with the certified key, the private-key operation
    /// blinded with randomness from `rng`: for signatures a peer can
    /// trigger at will (answers to calls, challenges).
    pub fn sign_blinded(&self, rng: &mut impl CryptoRngCore, message: &[u8]) -> Vec<u8> {
        sign_blinded(&self.key, rng, message)
    }
}
