//! The call key agreement.
//!
//! Each side makes an ephemeral X25519 key pair for the call and signs its
//! public share with its certified RSA key:
//!
//! ```text
//! signed = "NATTER-KEYSHARE-V1" || role (0x01 caller, 0x02 callee) || invite_id (16) || public (32)
//! ```
//!
//! Both sides verify the other's certificate against the pinned login key and
//! the share's signature against the certified key, then derive (HKDF-SHA256):
//!
//! ```text
//! shared = X25519(own secret, peer public)            (all-zero result rejected)
//! prk    = HKDF-Extract(salt = "NATTER-CALL-V1" || invite_id, ikm = shared)
//! th     = SHA-256(caller public || callee public)
//! c2s key = HKDF-Expand(prk, "c2s key" || th, 32)     caller -> callee AES-256-GCM key
//! s2c key = HKDF-Expand(prk, "s2c key" || th, 32)     callee -> caller
//! c2s iv  = HKDF-Expand(prk, "c2s iv"  || th, 12)
//! s2c iv  = HKDF-Expand(prk, "s2c iv"  || th, 12)
//! call id = HKDF-Expand(prk, "call id" || th, 16)
//! ```
//!
//! The ephemeral secrets are dropped after the call, so recorded traffic
//! cannot be decrypted later even with the users' RSA keys (forward secrecy).

use hkdf::Hkdf;
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::cert::{self, CertError, Identity, VerifiedCertificate};
use crate::messages::KeyShare;

/// Bytes of an invite id (chosen at random by the caller).
pub const INVITE_ID_LEN: usize = 16;
/// Bytes of a call id.
pub const CALL_ID_LEN: usize = 16;
/// Bytes of an AEAD key.
pub const KEY_LEN: usize = 32;
/// Bytes of an AEAD nonce / IV.
pub const IV_LEN: usize = 12;

/// Which end of the call a share belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    Caller = 1,
    Callee = 2,
}

impl Role {
    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Caller => Role::Callee,
            Role::Callee => Role::Caller,
        }
    }
}

/// Why a peer's share was refused or the keys could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("key share carries no certificate")]
    MissingCertificate,
    #[error("peer certificate refused: {0}")]
    Certificate(#[from] CertError),
    #[error("key share public value has {0} bytes, expected 32")]
    ShareLength(usize),
    #[error("key share is not signed by the certified key")]
    UncertifiedKey,
    #[error("key share gives a low-order point (all-zero shared secret)")]
    LowOrderShare,
}

/// Keys for one direction of a call.
#[derive(Clone, PartialEq, Eq)]
pub struct DirectionKeys {
    pub key: [u8; KEY_LEN],
    pub iv: [u8; IV_LEN],
}

impl std::fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectionKeys { .. }")
    }
}

/// Everything a completed key agreement yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallKeys {
    pub call_id: [u8; CALL_ID_LEN],
    /// Keys for what this side sends.
    pub send: DirectionKeys,
    /// Keys for what this side receives.
    pub recv: DirectionKeys,
    /// The peer's verified certificate.
    pub peer: VerifiedCertificate,
}

/// The bytes signed for a key share.
pub fn share_signed_message(
    role: Role,
    invite_id: &[u8; INVITE_ID_LEN],
    public: &[u8; 32],
) -> Vec<u8> {
    let mut message = Vec::with_capacity(18 + 1 + INVITE_ID_LEN + 32);
    message.extend_from_slice(b"NATTER-KEYSHARE-V1");
    message.push(role as u8);
    message.extend_from_slice(invite_id);
    message.extend_from_slice(public);
    message
}

/// One side's half of the key agreement for one call.
pub struct KeyAgreement {
    role: Role,
    invite_id: [u8; INVITE_ID_LEN],
    secret: StaticSecret,
    public: [u8; 32],
}

impl std::fmt::Debug for KeyAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAgreement")
            .field("role", &self.role)
            .field("invite_id", &self.invite_id)
            .finish_non_exhaustive()
    }
}

impl KeyAgreement {
    /// Starts the agreement with 32 random bytes from the caller's RNG as the
    /// ephemeral secret (sans-IO: the randomness is an input).
    pub fn new(role: Role, invite_id: [u8; INVITE_ID_LEN], secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret).to_bytes();
        Self {
            role,
            invite_id,
            secret,
            public,
        }
    }

    /// This side's public share.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// This side's signed share, to send in the invite or accept.
    pub fn share(&self, identity: &Identity) -> KeyShare {
        let signed = share_signed_message(self.role, &self.invite_id, &self.public);
        KeyShare {
            public: self.public.to_vec(),
            signature: identity.sign(&signed),
            certificate: Some(identity.certificate.clone()),
        }
    }

    /// Verifies the peer's share (certificate against `login_key` at `now`,
    /// unix seconds; signature against the certified key) and derives the
    /// call keys. Consumes the ephemeral secret.
    pub fn complete(
        self,
        peer: &KeyShare,
        login_key: &RsaPublicKey,
        now: i64,
    ) -> Result<CallKeys, HandshakeError> {
        let peer_cert = verify_share(peer, self.role.peer(), &self.invite_id, login_key, now)?;
        let peer_public: [u8; 32] = peer
            .public
            .as_slice()
            .try_into()
            .map_err(|_| HandshakeError::ShareLength(peer.public.len()))?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(peer_public));
        if !shared.was_contributory() {
            return Err(HandshakeError::LowOrderShare);
        }
        let (caller_public, callee_public) = match self.role {
            Role::Caller => (self.public, peer_public),
            Role::Callee => (peer_public, self.public),
        };
        let schedule = KeySchedule::derive(
            &self.invite_id,
            shared.as_bytes(),
            &caller_public,
            &callee_public,
        );
        let (send, recv) = match self.role {
            Role::Caller => (schedule.c2s, schedule.s2c),
            Role::Callee => (schedule.s2c, schedule.c2s),
        };
        Ok(CallKeys {
            call_id: schedule.call_id,
            send,
            recv,
            peer: peer_cert,
        })
    }
}

/// Checks a peer's share: its certificate, and that the certified key signed it
/// for this call and role. Returns the verified certificate.
pub fn verify_share(
    share: &KeyShare,
    sender_role: Role,
    invite_id: &[u8; INVITE_ID_LEN],
    login_key: &RsaPublicKey,
    now: i64,
) -> Result<VerifiedCertificate, HandshakeError> {
    let cert = share
        .certificate
        .as_ref()
        .ok_or(HandshakeError::MissingCertificate)?;
    let verified = cert::verify(cert, login_key, now)?;
    let public: [u8; 32] = share
        .public
        .as_slice()
        .try_into()
        .map_err(|_| HandshakeError::ShareLength(share.public.len()))?;
    let signed = share_signed_message(sender_role, invite_id, &public);
    cert::verify_signature(&verified.public_key, &signed, &share.signature)
        .map_err(|_| HandshakeError::UncertifiedKey)?;
    Ok(verified)
}

/// The key schedule's outputs, from the caller's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchedule {
    pub c2s: DirectionKeys,
    pub s2c: DirectionKeys,
    pub call_id: [u8; CALL_ID_LEN],
}

impl KeySchedule {
    /// Runs HKDF over an X25519 shared secret (see the module docs).
    pub fn derive(
        invite_id: &[u8; INVITE_ID_LEN],
        shared: &[u8; 32],
        caller_public: &[u8; 32],
        callee_public: &[u8; 32],
    ) -> Self {
        let mut salt = Vec::with_capacity(14 + INVITE_ID_LEN);
        salt.extend_from_slice(b"NATTER-CALL-V1");
        salt.extend_from_slice(invite_id);
        let hkdf = Hkdf::<Sha256>::new(Some(&salt), shared);
        let mut th = Sha256::new();
        th.update(caller_public);
        th.update(callee_public);
        let th = th.finalize();
        let expand = |label: &[u8], out: &mut [u8]| {
            let mut info = Vec::with_capacity(label.len() + th.len());
            info.extend_from_slice(label);
            info.extend_from_slice(&th);
            // Outputs are at most 32 bytes, far below HKDF's 255 * 32 limit.
            let _ = hkdf.expand(&info, out);
        };
        let mut c2s = DirectionKeys {
            key: [0; KEY_LEN],
            iv: [0; IV_LEN],
        };
        let mut s2c = DirectionKeys {
            key: [0; KEY_LEN],
            iv: [0; IV_LEN],
        };
        let mut call_id = [0u8; CALL_ID_LEN];
        expand(b"c2s key", &mut c2s.key);
        expand(b"s2c key", &mut s2c.key);
        expand(b"c2s iv", &mut c2s.iv);
        expand(b"s2c iv", &mut s2c.iv);
        expand(b"call id", &mut call_id);
        Self { c2s, s2c, call_id }
    }
}
