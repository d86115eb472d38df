//! End-to-end chat: a message is encrypted to the recipient's certified
//! X25519 chat key and signed by the sender's certified RSA key, so the
//! supernodes that route and store it see only the envelope (message id,
//! `from`, `to`, `sent_at`, size).
//!
//! ```text
//! eph        = X25519 key pair, 32 random bytes from the caller's RNG
//! shared     = X25519(eph secret, recipient chat_key)   (all-zero result rejected)
//! okm        = HKDF-SHA256(salt = "NATTER-CHAT-V2", ikm = shared,
//!                          info = eph public || recipient chat_key), 44 bytes
//! key, nonce = okm[0..32], okm[32..44]
//! aad        = message_id (16) || len16(from) || from || len16(to) || to || sent_at (i64 BE)
//! body       = ChatBody { text, sender_certificate, signature }
//!              signature by the sender's certified key over
//!              binding::chat_message(message_id, from, to, sent_at, text)
//! sealed     = SealedChat { ephemeral = eph public, ciphertext = AES-256-GCM(key, nonce, aad, body) || tag }
//! ```
//!
//! The key and nonce are fresh for every message (a fresh ephemeral key),
//! so the nonce never repeats under a key. The AAD binds the ciphertext to
//! its envelope: a supernode that moves it to another envelope (another
//! `from`, `to`, id or time) makes it fail to open; one that moves it to
//! another recipient gives them a ciphertext under a key they cannot
//! derive. The signature inside names `from` and `to` too, so a recipient
//! cannot pass on a message as if it had been sent to someone else.
//!
//! [`open`] checks, in order: the envelope's shape ([`check_envelope`]),
//! that it is addressed to this identity, that `sent_at` is neither more
//! than [`MAX_FUTURE_MS`] ahead of the recipient's clock nor older than
//! [`MAX_AGE_MS`], the AEAD, the sender's certificate (a user certificate
//! of the pinned login server, valid *at `sent_at`*: stored chat may be
//! read after the sender's certificate expired), that it names the
//! envelope's `from` (stamped by the sender's supernode), and the
//! signature. Every failure is a typed [`ChatError`]; nothing from a
//! message that failed is attributed to the claimed sender.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use prost::Message;
use rand_core::CryptoRngCore;
use rsa::RsaPublicKey;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::binding::{self, push16};
use crate::cert::{self, CHAT_KEY_LEN, CertError, Identity, VerifiedCertificate};
use crate::messages::{CertificateBody, ChatBody, ChatMessage, SealedChat};

/// The HKDF salt (and the domain of the chat signature).
pub const SALT: &[u8] = b"NATTER-CHAT-V2";
/// Bytes of a message id (random, chosen by the sender).
pub const MESSAGE_ID_LEN: usize = 16;
/// Longest text of one message, in bytes (UTF-8).
pub const MAX_TEXT_LEN: usize = 16 * 1024;
/// Longest `ChatMessage.sealed`, in bytes: the text plus room for the
/// sender's certificate and signature (RSA keys up to 4096 bits), the
/// ephemeral key and the tag. A supernode refuses anything longer.
pub const MAX_SEALED_LEN: usize = MAX_TEXT_LEN + 4096;
/// How far `sent_at` may be ahead of the recipient's clock.
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;
/// How old a message may be when it is opened: a little more than the
/// 30 days a supernode stores chat. Bounds how far back a sender whose
/// certificate has expired can date a message.
pub const MAX_AGE_MS: i64 = 31 * 24 * 3600 * 1000;
/// Bytes of the AES-256-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes of the AES-256-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of the AES-256 key.
pub const KEY_LEN: usize = 32;

/// Why a message could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("message id has {0} bytes, expected {MESSAGE_ID_LEN}")]
    MessageId(usize),
    #[error("text of {0} bytes is longer than {MAX_TEXT_LEN}")]
    TextTooLong(usize),
    #[error("sealed body of {0} bytes is longer than {MAX_SEALED_LEN}")]
    SealedTooLong(usize),
    #[error("message carries plaintext (version 2 chat is sealed)")]
    Plaintext,
    #[error("message is not sealed")]
    NotSealed,
    #[error("sealed body is malformed: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("ephemeral key has {0} bytes, expected 32")]
    EphemeralLength(usize),
    #[error("key gives a low-order point (all-zero shared secret)")]
    LowOrder,
    #[error("the recipient's certificate is for {certified:?}, the message is to {to:?}")]
    RecipientMismatch { to: String, certified: String },
    #[error("own certificate is unreadable")]
    OwnCertificate,
    #[error("message is to {to:?}, not to this user ({own:?})")]
    NotForMe { to: String, own: String },
    #[error("sent at {sent_at}, more than {MAX_FUTURE_MS} ms ahead of now ({now})")]
    FromTheFuture { sent_at: i64, now: i64 },
    #[error("sent at {sent_at}, more than {MAX_AGE_MS} ms before now ({now})")]
    TooOld { sent_at: i64, now: i64 },
    #[error("does not decrypt (not for this key, or altered on the way)")]
    Decrypt,
    #[error("AEAD encryption failed")]
    Encrypt,
    #[error("body carries no sender certificate")]
    NoCertificate,
    #[error("sender certificate refused: {0}")]
    Certificate(#[from] CertError),
    #[error("message claims to be from {from:?} but is signed by {certified:?}")]
    SenderMismatch { from: String, certified: String },
    #[error("signature does not verify with the sender's certified key")]
    BadSignature,
}

/// A message that opened and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedChat {
    pub message_id: Vec<u8>,
    /// The sender, as its certificate names it (and the envelope said).
    pub from: String,
    pub to: String,
    /// Unix milliseconds, as the sender signed it.
    pub sent_at: i64,
    pub text: String,
    /// The sender's certificate, verified at `sent_at`.
    pub sender: VerifiedCertificate,
}

/// The AEAD's associated data: the envelope a ciphertext belongs to.
pub fn aad(message_id: &[u8], from: &str, to: &str, sent_at: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(MESSAGE_ID_LEN + 4 + from.len() + to.len() + 8);
    m.extend_from_slice(message_id);
    push16(&mut m, from.as_bytes());
    push16(&mut m, to.as_bytes());
    m.extend_from_slice(&sent_at.to_be_bytes());
    m
}

/// The AES-256-GCM key and nonce of one message (see the module docs).
pub fn derive(
    shared: &[u8; 32],
    ephemeral: &[u8; CHAT_KEY_LEN],
    recipient_chat_key: &[u8; CHAT_KEY_LEN],
) -> ([u8; KEY_LEN], [u8; NONCE_LEN]) {
    let hkdf = Hkdf::<Sha256>::new(Some(SALT), shared);
    let mut info = [0u8; 2 * CHAT_KEY_LEN];
    info[..CHAT_KEY_LEN].copy_from_slice(ephemeral);
    info[CHAT_KEY_LEN..].copy_from_slice(recipient_chat_key);
    let mut okm = [0u8; KEY_LEN + NONCE_LEN];
    // 44 bytes are far below HKDF's 255 * 32 limit.
    let _ = hkdf.expand(&info, &mut okm);
    let mut key = [0u8; KEY_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    key.copy_from_slice(&okm[..KEY_LEN]);
    nonce.copy_from_slice(&okm[KEY_LEN..]);
    (key, nonce)
}

/// X25519 with a contributory check.
fn agree(secret: [u8; 32], public: [u8; 32]) -> Result<[u8; 32], ChatError> {
    let shared = StaticSecret::from(secret).diffie_hellman(&PublicKey::from(public));
    if !shared.was_contributory() {
        return Err(ChatError::LowOrder);
    }
    Ok(shared.to_bytes())
}

/// Seals `text` from `sender` to `recipient` (whose certificate the
/// caller verified and whose name is `to`): an ephemeral key from `rng`,
/// the body signed with the sender's key (blinded, randomness from
/// `rng`). The returned message has `text` empty and `sealed` set; `from`
/// is the sender's certified name (the supernode stamps it again).
#[allow(clippy::too_many_arguments)]
pub fn seal(
    rng: &mut impl CryptoRngCore,
    sender: &Identity,
    recipient: &VerifiedCertificate,
    message_id: &[u8],
    from: &str,
    to: &str,
    sent_at: i64,
    text: &str,
) -> Result<ChatMessage, ChatError> {
    let mut eph = [0u8; 32];
    rng.fill_bytes(&mut eph);
    seal_with_ephemeral(
        rng, eph, sender, recipient, message_id, from, to, sent_at, text,
    )
}

/// [`seal`] with a given ephemeral secret (test vectors; never reuse one).
#[allow(clippy::too_many_arguments)]
pub fn seal_with_ephemeral(
    rng: &mut impl CryptoRngCore,
    ephemeral_secret: [u8; 32],
    sender: &Identity,
    recipient: &VerifiedCertificate,
    message_id: &[u8],
    from: &str,
    to: &str,
    sent_at: i64,
    text: &str,
) -> Result<ChatMessage, ChatError> {
    if message_id.len() != MESSAGE_ID_LEN {
        return Err(ChatError::MessageId(message_id.len()));
    }
    if text.len() > MAX_TEXT_LEN {
        return Err(ChatError::TextTooLong(text.len()));
    }
    if recipient.name != to {
        return Err(ChatError::RecipientMismatch {
            to: to.to_owned(),
            certified: recipient.name.clone(),
        });
    }
    let signed = binding::chat_message(message_id, from, to, sent_at, text);
    let body = ChatBody {
        text: text.to_owned(),
        sender_certificate: Some(sender.certificate.clone()),
        signature: sender.sign_blinded(rng, &signed),
    };
    let ephemeral = PublicKey::from(&StaticSecret::from(ephemeral_secret)).to_bytes();
    let shared = agree(ephemeral_secret, recipient.chat_key)?;
    let (key, nonce) = derive(&shared, &ephemeral, &recipient.chat_key);
    let mut ciphertext = body.encode_to_vec();
    let tag = Aes256Gcm::new(&key.into())
        .encrypt_inout_detached(
            &Nonce::from(nonce),
            &aad(message_id, from, to, sent_at),
            ciphertext.as_mut_slice().into(),
        )
        .map_err(|_| ChatError::Encrypt)?;
    ciphertext.extend_from_slice(tag.as_slice());
    let sealed = SealedChat {
        ephemeral: ephemeral.to_vec(),
        ciphertext,
    }
    .encode_to_vec();
    if sealed.len() > MAX_SEALED_LEN {
        return Err(ChatError::SealedTooLong(sealed.len()));
    }
    Ok(ChatMessage {
        message_id: message_id.to_vec(),
        from: from.to_owned(),
        to: to.to_owned(),
        text: String::new(),
        sent_at,
        sealed,
    })
}

/// What a supernode can check without any key: a 16-byte id, no
/// plaintext, a sealed body of 1 to [`MAX_SEALED_LEN`] bytes that decodes
/// with a 32-byte ephemeral key. Returns the decoded sealed body.
pub fn check_envelope(message: &ChatMessage) -> Result<SealedChat, ChatError> {
    if message.message_id.len() != MESSAGE_ID_LEN {
        return Err(ChatError::MessageId(message.message_id.len()));
    }
    if !message.text.is_empty() {
        return Err(ChatError::Plaintext);
    }
    if message.sealed.is_empty() {
        return Err(ChatError::NotSealed);
    }
    if message.sealed.len() > MAX_SEALED_LEN {
        return Err(ChatError::SealedTooLong(message.sealed.len()));
    }
    let sealed = SealedChat::decode(message.sealed.as_slice())?;
    if sealed.ephemeral.len() != CHAT_KEY_LEN {
        return Err(ChatError::EphemeralLength(sealed.ephemeral.len()));
    }
    Ok(sealed)
}

/// Opens a message received by `own` at `now_ms` (unix milliseconds),
/// verifying the sender against the pinned `login_key` (see the module
/// docs for every check).
pub fn open(
    message: &ChatMessage,
    own: &Identity,
    login_key: &RsaPublicKey,
    now_ms: i64,
) -> Result<OpenedChat, ChatError> {
    let sealed = check_envelope(message)?;
    let own_name = CertificateBody::decode(own.certificate.body.as_slice())
        .map_err(|_| ChatError::OwnCertificate)?
        .name;
    if message.to != own_name {
        return Err(ChatError::NotForMe {
            to: message.to.clone(),
            own: own_name,
        });
    }
    let sent_at = message.sent_at;
    if sent_at > now_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(ChatError::FromTheFuture {
            sent_at,
            now: now_ms,
        });
    }
    if sent_at < now_ms.saturating_sub(MAX_AGE_MS) {
        return Err(ChatError::TooOld {
            sent_at,
            now: now_ms,
        });
    }
    let ephemeral: [u8; CHAT_KEY_LEN] = sealed
        .ephemeral
        .as_slice()
        .try_into()
        .map_err(|_| ChatError::EphemeralLength(sealed.ephemeral.len()))?;
    let own_chat_key = cert::chat_public(&own.chat_secret);
    let shared = agree(own.chat_secret, ephemeral)?;
    let (key, nonce) = derive(&shared, &ephemeral, &own_chat_key);
    let mut plaintext = sealed.ciphertext;
    let Some(split) = plaintext.len().checked_sub(TAG_LEN) else {
        return Err(ChatError::Decrypt);
    };
    let tag = Tag::try_from(&plaintext[split..]).map_err(|_| ChatError::Decrypt)?;
    plaintext.truncate(split);
    Aes256Gcm::new(&key.into())
        .decrypt_inout_detached(
            &Nonce::from(nonce),
            &aad(&message.message_id, &message.from, &message.to, sent_at),
            plaintext.as_mut_slice().into(),
            &tag,
        )
        .map_err(|_| ChatError::Decrypt)?;
    let body = ChatBody::decode(plaintext.as_slice())?;
    if body.text.len() > MAX_TEXT_LEN {
        return Err(ChatError::TextTooLong(body.text.len()));
    }
    let certificate = body
        .sender_certificate
        .as_ref()
        .ok_or(ChatError::NoCertificate)?;
    let sender = cert::verify(certificate, login_key, sent_at.div_euclid(1000))?;
    if sender.name != message.from {
        return Err(ChatError::SenderMismatch {
            from: message.from.clone(),
            certified: sender.name,
        });
    }
    let signed = binding::chat_message(
        &message.message_id,
        &message.from,
        &message.to,
        sent_at,
        &body.text,
    );
    cert::verify_signature(&sender.public_key, &signed, &body.signature)
        .map_err(|_| ChatError::BadSignature)?;
    Ok(OpenedChat {
        message_id: message.message_id.clone(),
        from: message.from.clone(),
        to: message.to.clone(),
        sent_at,
        text: body.text,
        sender,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_keeps_fields_apart() {
        assert_ne!(aad(&[1; 16], "ab", "c", 5), aad(&[1; 16], "a", "bc", 5));
        assert_ne!(aad(&[1; 16], "a", "b", 5), aad(&[1; 16], "a", "b", 6));
    }

    #[test]
    fn the_key_depends_on_the_ephemeral_and_the_recipient() {
        let shared = [9u8; 32];
        let a = derive(&shared, &[1; 32], &[2; 32]);
        assert_ne!(a, derive(&shared, &[3; 32], &[2; 32]));
        assert_ne!(a, derive(&shared, &[1; 32], &[4; 32]));
    }
}
