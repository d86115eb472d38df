//! The call key agreement (protocol version 2).
//!
//! Each side makes an ephemeral X25519 key pair for the call and signs its
//! public share with its certified RSA key, naming both ends of the call
//! (normalised user names; `len16` is a big-endian u16 length prefix):
//!
//! ```text
//! signed = "NATTER-KEYSHARE-V2" || role (0x01 caller, 0x02 callee) || invite_id (16)
//!          || public (32) || len16(caller name) || caller name || len16(callee name) || callee name
//! ```
//!
//! Both sides verify the other's certificate against the pinned login key,
//! that the certificate names the user the share must come from (the name
//! the supernode stamped as `from`, or the name the caller dialled), and the
//! share's signature against the certified key, then derive (HKDF-SHA256):
//!
//! ```text
//! shared  = X25519(own secret, peer public)            (all-zero result rejected)
//! prk     = HKDF-Extract(salt = "NATTER-CALL-V2" || invite_id, ikm = shared)
//! th      = SHA-256(caller public || callee public
//!                   || SHA-256(caller certificate body) || SHA-256(callee certificate body)
//!                   || len16(caller name) || caller name || len16(callee name) || callee name)
//! c2s key = HKDF-Expand(prk, "c2s key" || th, 32)     caller -> callee AES-256-GCM key
//! s2c key = HKDF-Expand(prk, "s2c key" || th, 32)     callee -> caller
//! c2s iv  = HKDF-Expand(prk, "c2s iv"  || th, 12)
//! s2c iv  = HKDF-Expand(prk, "s2c iv"  || th, 12)
//! call id = HKDF-Expand(prk, "call id" || th, 16)
//! signal  = HKDF-Expand(prk, "signal key" || th, 32)  MAC key of mid-call signals
//! ```
//!
//! A share made for one pair of names does not verify for another, and two
//! ends that disagree on who is talking to whom derive different keys: an
//! attacker holding a certificate for its own name on a victim's key cannot
//! pass the victim's share off as its own (no unknown key share).
//!
//! Every [`CallSignal`] after the agreement but the setup kinds carries
//! `mac = HMAC-SHA256(signal key, "NATTER-SIGNAL-V2" || CallSignal encoded
//! with mac empty)` ([`SignalKey`]).
//!
//! The ephemeral secrets are dropped after the call, so recorded traffic
//! cannot be decrypted later even with the users' RSA keys (forward secrecy).

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use prost::Message;
use rand_core::CryptoRngCore;
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::binding::push16;
use crate::cert::{self, CertError, Identity, VerifiedCertificate};
use crate::messages::{CallSignal, Certificate, KeyShare};

/// Bytes of an invite id (chosen at random by the caller).
pub const INVITE_ID_LEN: usize = 16;
/// Bytes of a call id.
pub const CALL_ID_LEN: usize = 16;
/// Bytes of an AEAD key.
pub const KEY_LEN: usize = 32;
/// Bytes of an AEAD nonce / IV.
pub const IV_LEN: usize = 12;
/// Bytes of the signal MAC key and of a signal MAC.
pub const SIGNAL_KEY_LEN: usize = 32;
/// Bytes of the transcript hash.
pub const TRANSCRIPT_LEN: usize = 32;

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

/// The two ends of one call, by normalised user name: what every share
/// signs and the transcript hashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallNames {
    pub caller: String,
    pub callee: String,
}

impl CallNames {
    /// The names of a call from `caller` to `callee`, normalised
    /// ([`crate::name::normalise`]; a name that is not valid is kept as
    /// given and then matches no certificate).
    pub fn new(caller: &str, callee: &str) -> Self {
        let norm = |n: &str| crate::name::normalise(n).unwrap_or_else(|_| n.to_owned());
        Self {
            caller: norm(caller),
            callee: norm(callee),
        }
    }

    /// The name of the end playing `role`.
    pub fn of(&self, role: Role) -> &str {
        match role {
            Role::Caller => &self.caller,
            Role::Callee => &self.callee,
        }
    }

    fn push(&self, out: &mut Vec<u8>) {
        push16(out, self.caller.as_bytes());
        push16(out, self.callee.as_bytes());
    }
}

/// Why a peer's share was refused or the keys could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("key share carries no certificate")]
    MissingCertificate,
    #[error("peer certificate refused: {0}")]
    Certificate(#[from] CertError),
    #[error("key share is certified for {got:?}, but the {role:?} of this call is {expected:?}")]
    WrongName {
        role: Role,
        expected: String,
        got: String,
    },
    #[error("key share public value has {0} bytes, expected 32")]
    ShareLength(usize),
    #[error("key share is not signed by the certified key for this call, role and pair of names")]
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

/// The MAC key of a call's mid-call signals (both directions; `from` and
/// `to` are under the MAC, so a signal cannot be reflected).
#[derive(Clone, PartialEq, Eq)]
pub struct SignalKey(pub [u8; SIGNAL_KEY_LEN]);

impl std::fmt::Debug for SignalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalKey { .. }")
    }
}

/// What a signal MAC covers: `"NATTER-SIGNAL-V2" || signal encoded with `mac` empty`.
pub fn signal_mac_message(signal: &CallSignal) -> Vec<u8> {
    let mut unmacked = signal.clone();
    unmacked.mac.clear();
    let mut message = Vec::with_capacity(16 + unmacked.encoded_len());
    message.extend_from_slice(b"NATTER-SIGNAL-V2");
    message.extend_from_slice(&unmacked.encode_to_vec());
    message
}

impl SignalKey {
    /// HMAC-SHA256 under this key (HMAC takes keys of any length, so
    /// this is never `None`).
    fn hmac(&self, signal: &CallSignal) -> Option<Hmac<Sha256>> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).ok()?;
        mac.update(&signal_mac_message(signal));
        Some(mac)
    }

    /// The MAC of `signal` (its own `mac` field is ignored).
    pub fn mac(&self, signal: &CallSignal) -> Vec<u8> {
        self.hmac(signal)
            .map(|mac| mac.finalize().into_bytes().to_vec())
            .unwrap_or_default()
    }

    /// Sets `signal.mac`.
    pub fn seal(&self, signal: &mut CallSignal) {
        signal.mac = self.mac(signal);
    }

    /// Whether `signal.mac` is the right MAC (compared in constant time).
    pub fn verify(&self, signal: &CallSignal) -> bool {
        self.hmac(signal)
            .is_some_and(|mac| mac.verify_slice(&signal.mac).is_ok())
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
    /// The MAC key of mid-call signals.
    pub signal: SignalKey,
    /// The transcript hash both ends derived their keys under.
    pub transcript: [u8; TRANSCRIPT_LEN],
    /// The peer's verified certificate.
    pub peer: VerifiedCertificate,
}

/// The bytes signed for a key share.
pub fn share_signed_message(
    role: Role,
    invite_id: &[u8; INVITE_ID_LEN],
    public: &[u8; 32],
    names: &CallNames,
) -> Vec<u8> {
    let mut message = Vec::with_capacity(
        18 + 1 + INVITE_ID_LEN + 32 + 4 + names.caller.len() + names.callee.len(),
    );
    message.extend_from_slice(b"NATTER-KEYSHARE-V2");
    message.push(role as u8);
    message.extend_from_slice(invite_id);
    message.extend_from_slice(public);
    names.push(&mut message);
    message
}

/// The transcript hash `th` of a call (see the module docs): both shares,
/// both certificates (the encoded bodies as sent) and both names.
pub fn transcript_hash(
    caller_public: &[u8; 32],
    callee_public: &[u8; 32],
    caller_certificate: &Certificate,
    callee_certificate: &Certificate,
    names: &CallNames,
) -> [u8; TRANSCRIPT_LEN] {
    let mut th = Sha256::new();
    th.update(caller_public);
    th.update(callee_public);
    th.update(Sha256::digest(&caller_certificate.body));
    th.update(Sha256::digest(&callee_certificate.body));
    let mut tail = Vec::with_capacity(4 + names.caller.len() + names.callee.len());
    names.push(&mut tail);
    th.update(&tail);
    th.finalize().into()
}

/// One side's half of the key agreement for one call.
pub struct KeyAgreement {
    role: Role,
    invite_id: [u8; INVITE_ID_LEN],
    names: CallNames,
    secret: StaticSecret,
    public: [u8; 32],
}

impl std::fmt::Debug for KeyAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAgreement")
            .field("role", &self.role)
            .field("invite_id", &self.invite_id)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl KeyAgreement {
    /// Starts the agreement of `role` in the call `names` with 32 random
    /// bytes from the caller's RNG as the ephemeral secret (sans-IO: the
    /// randomness is an input).
    pub fn new(
        role: Role,
        invite_id: [u8; INVITE_ID_LEN],
        names: CallNames,
        secret: [u8; 32],
    ) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret).to_bytes();
        Self {
            role,
            invite_id,
            names,
            secret,
            public,
        }
    }

    /// This side's public share.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The names this agreement is for.
    pub fn names(&self) -> &CallNames {
        &self.names
    }

    /// This side's signed share, to send in the invite or accept. The RSA
    /// operation is blinded with `rng`: any caller can make a callee sign.
    pub fn share(&self, identity: &Identity, rng: &mut impl CryptoRngCore) -> KeyShare {
        let signed = share_signed_message(self.role, &self.invite_id, &self.public, &self.names);
        KeyShare {
            public: self.public.to_vec(),
            signature: identity.sign_blinded(rng, &signed),
            certificate: Some(identity.certificate.clone()),
        }
    }

    /// Verifies the peer's share (certificate against `login_key` at `now`,
    /// unix seconds, naming the peer of [`Self::names`]; signature against
    /// the certified key) and derives the call keys, with `own` (the
    /// certificate this side sent in its share) in the transcript.
    /// Consumes the ephemeral secret.
    pub fn complete(
        self,
        own: &Certificate,
        peer: &KeyShare,
        login_key: &RsaPublicKey,
        now: i64,
    ) -> Result<CallKeys, HandshakeError> {
        let peer_role = self.role.peer();
        let peer_cert = verify_share(
            peer,
            peer_role,
            &self.invite_id,
            &self.names,
            login_key,
            now,
        )?;
        let peer_certificate = peer
            .certificate
            .as_ref()
            .ok_or(HandshakeError::MissingCertificate)?;
        let peer_public: [u8; 32] = peer
            .public
            .as_slice()
            .try_into()
            .map_err(|_| HandshakeError::ShareLength(peer.public.len()))?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(peer_public));
        if !shared.was_contributory() {
            return Err(HandshakeError::LowOrderShare);
        }
        let th = match self.role {
            Role::Caller => transcript_hash(
                &self.public,
                &peer_public,
                own,
                peer_certificate,
                &self.names,
            ),
            Role::Callee => transcript_hash(
                &peer_public,
                &self.public,
                peer_certificate,
                own,
                &self.names,
            ),
        };
        let schedule = KeySchedule::derive(&self.invite_id, shared.as_bytes(), &th);
        let (send, recv) = match self.role {
            Role::Caller => (schedule.c2s, schedule.s2c),
            Role::Callee => (schedule.s2c, schedule.c2s),
        };
        Ok(CallKeys {
            call_id: schedule.call_id,
            send,
            recv,
            signal: schedule.signal,
            transcript: th,
            peer: peer_cert,
        })
    }
}

/// Checks a peer's share: its certificate, that the certificate names the
/// user `names` says plays `sender_role`, and that the certified key signed
/// it for this call, role and pair of names. Returns the verified certificate.
pub fn verify_share(
    share: &KeyShare,
    sender_role: Role,
    invite_id: &[u8; INVITE_ID_LEN],
    names: &CallNames,
    login_key: &RsaPublicKey,
    now: i64,
) -> Result<VerifiedCertificate, HandshakeError> {
    let cert = share
        .certificate
        .as_ref()
        .ok_or(HandshakeError::MissingCertificate)?;
    let verified = cert::verify(cert, login_key, now)?;
    let expected = names.of(sender_role);
    if verified.name != expected {
        return Err(HandshakeError::WrongName {
            role: sender_role,
            expected: expected.to_owned(),
            got: verified.name,
        });
    }
    let public: [u8; 32] = share
        .public
        .as_slice()
        .try_into()
        .map_err(|_| HandshakeError::ShareLength(share.public.len()))?;
    let signed = share_signed_message(sender_role, invite_id, &public, names);
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
    pub signal: SignalKey,
}

impl KeySchedule {
    /// Runs HKDF over an X25519 shared secret under the transcript hash
    /// `th` ([`transcript_hash`]; see the module docs).
    pub fn derive(
        invite_id: &[u8; INVITE_ID_LEN],
        shared: &[u8; 32],
        th: &[u8; TRANSCRIPT_LEN],
    ) -> Self {
        let mut salt = Vec::with_capacity(14 + INVITE_ID_LEN);
        salt.extend_from_slice(b"NATTER-CALL-V2");
        salt.extend_from_slice(invite_id);
        let hkdf = Hkdf::<Sha256>::new(Some(&salt), shared);
        let expand = |label: &[u8], out: &mut [u8]| {
            let mut info = Vec::with_capacity(label.len() + th.len());
            info.extend_from_slice(label);
            info.extend_from_slice(th);
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
        let mut signal = [0u8; SIGNAL_KEY_LEN];
        expand(b"c2s key", &mut c2s.key);
        expand(b"s2c key", &mut s2c.key);
        expand(b"c2s iv", &mut c2s.iv);
        expand(b"s2c iv", &mut s2c.iv);
        expand(b"call id", &mut call_id);
        expand(b"signal key", &mut signal);
        Self {
            c2s,
            s2c,
            call_id,
            signal: SignalKey(signal),
        }
    }
}
