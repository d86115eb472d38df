//! Sending one chat message through the joined supernode, sealed end to
//! end (`natter_proto::chat`): the recipient's certificate comes from the
//! directory (`SearchReply.certificate`), is verified against the pinned
//! login key and must name the recipient; the text is encrypted to its
//! chat key and signed with this user's key. Supernodes see only the
//! envelope.

use std::time::Duration;

use natter_proto::cert::{self, CertError, Identity, VerifiedCertificate};
use natter_proto::messages::{ChatMessage, SearchReply, envelope};
use natter_proto::name;
use rsa::RsaPublicKey;

use crate::ClientError;
use crate::supernode::SupernodeSession;

/// How long [`send`] waits for the recipient's receipt.
pub const RECEIPT_WAIT: Duration = Duration::from_secs(2);

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The recipient is online and confirmed it.
    Delivered,
    /// No receipt within [`RECEIPT_WAIT`]: stored for when they next join.
    Stored,
}

/// Why a message could not be sealed for its recipient.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("no user {0:?} in the directory")]
    UnknownRecipient(String),
    #[error("the directory has no certificate for {0:?}: cannot encrypt to them")]
    NoCertificate(String),
    #[error("the certificate the directory has for {name:?} does not verify: {source}")]
    BadCertificate {
        name: String,
        #[source]
        source: CertError,
    },
    #[error("asked for {wanted:?}'s certificate, the directory gave one for {got:?}")]
    WrongCertificate { wanted: String, got: String },
    #[error(transparent)]
    Seal(#[from] natter_proto::chat::ChatError),
}

/// The certificate to seal chat to `to` with, from the directory's answer
/// to a search for `to`: verified against `login_key` and naming `to`. A
/// certificate that expired still serves (its chat key stays the user's:
/// it lives in their home), once its signature and kind check out.
pub fn recipient(
    reply: &SearchReply,
    to: &str,
    login_key: &RsaPublicKey,
    now_secs: i64,
) -> Result<VerifiedCertificate, ChatError> {
    let wanted = name::normalise(to).map_err(|_| ChatError::UnknownRecipient(to.to_owned()))?;
    if !reply.found {
        return Err(ChatError::UnknownRecipient(wanted));
    }
    let certificate = reply
        .certificate
        .as_ref()
        .ok_or_else(|| ChatError::NoCertificate(wanted.clone()))?;
    let verified = match cert::verify(certificate, login_key, now_secs) {
        Err(CertError::Expired { not_after, .. }) => {
            cert::verify(certificate, login_key, not_after - 1)
        }
        other => other,
    }
    .map_err(|source| ChatError::BadCertificate {
        name: wanted.clone(),
        source,
    })?;
    if verified.name != wanted {
        return Err(ChatError::WrongCertificate {
            wanted,
            got: verified.name,
        });
    }
    Ok(verified)
}

/// A new message from `from` (this user) to `recipient`, with a random id,
/// sent at `now_ms`, sealed to the recipient's chat key.
pub fn message(
    identity: &Identity,
    from: &str,
    recipient: &VerifiedCertificate,
    text: &str,
    now_ms: i64,
) -> Result<ChatMessage, ChatError> {
    let mut rng = rand::rngs::OsRng;
    let mut id = [0u8; natter_proto::chat::MESSAGE_ID_LEN];
    rand::RngCore::fill_bytes(&mut rng, &mut id);
    Ok(natter_proto::chat::seal(
        &mut rng,
        identity,
        recipient,
        &id,
        from,
        &recipient.name,
        now_ms,
        text,
    )?)
}

/// Looks `to` up, seals `text` to them and sends it ([`send`]).
pub async fn send_text(
    sn: &SupernodeSession,
    identity: &Identity,
    from: &str,
    login_key: &RsaPublicKey,
    to: &str,
    text: &str,
    request_timeout: Duration,
) -> Result<Delivery, ClientError> {
    let message = seal_text(sn, identity, from, login_key, to, text, request_timeout).await?;
    send(sn, message, request_timeout).await
}

/// Looks `to` up in the directory and seals `text` to them (not sent yet).
pub async fn seal_text(
    sn: &SupernodeSession,
    identity: &Identity,
    from: &str,
    login_key: &RsaPublicKey,
    to: &str,
    text: &str,
    request_timeout: Duration,
) -> Result<ChatMessage, ClientError> {
    let reply = crate::search::search_reply(sn, to, request_timeout).await?;
    let now_ms = crate::now_unix_ms();
    let recipient = recipient(&reply, to, login_key, now_ms / 1000)?;
    Ok(message(identity, from, &recipient, text, now_ms)?)
}

/// Hands `message` to the supernode (delivered now, or stored for an
/// offline recipient) without waiting for the receipt: a program that
/// stays online sees it come as a push ([`crate::online::OnlineEvent::Delivered`]).
pub async fn submit(
    sn: &SupernodeSession,
    message: ChatMessage,
    request_timeout: Duration,
) -> Result<(), ClientError> {
    sn.request(envelope::Body::ChatMessage(message), request_timeout)
        .await?;
    Ok(())
}

/// Sends `message` and waits up to [`RECEIPT_WAIT`] for its receipt, which
/// comes back at once when the recipient is online.
pub async fn send(
    sn: &SupernodeSession,
    message: ChatMessage,
    request_timeout: Duration,
) -> Result<Delivery, ClientError> {
    let id = message.message_id.clone();
    submit(sn, message, request_timeout).await?;
    let receipt = tokio::time::timeout(RECEIPT_WAIT, async {
        while let Some(push) = sn.next_push().await {
            if let envelope::Body::ChatReceipt(r) = push
                && r.message_id == id
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    Ok(if receipt {
        Delivery::Delivered
    } else {
        Delivery::Stored
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use natter_proto::cert::{Issuer, Subject};
    use rsa::RsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;

    fn key(name: &str) -> RsaPrivateKey {
        let path = format!(
            "{}/../proto/tests/vectors/{name}.pem",
            env!("CARGO_MANIFEST_DIR")
        );
        RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn reply_for(issuer: &Issuer, name: &str, not_after: i64) -> SearchReply {
        let certificate = issuer.issue(
            &mut rand::rngs::OsRng,
            &Subject::User {
                name,
                key: &key("bob").to_public_key(),
                chat_key: cert::chat_public(&[0xb0; 32]),
            },
            1,
            1_000,
            not_after,
        );
        SearchReply {
            name: name.to_owned(),
            found: true,
            certificate: Some(certificate),
            ..Default::default()
        }
    }

    #[test]
    fn the_recipient_certificate_must_verify_and_name_the_recipient() {
        let issuer = Issuer::new(key("issuer"));
        let login = issuer.public_key();
        let reply = reply_for(&issuer, "bob", 10_000);
        let bob = recipient(&reply, "Bob", &login, 5_000).unwrap();
        assert_eq!(bob.name, "bob");
        assert_eq!(bob.chat_key, cert::chat_public(&[0xb0; 32]));
        // Expired: its chat key still serves.
        assert!(recipient(&reply, "bob", &login, 50_000).is_ok());
        // Not yet valid, another name, another issuer, none, not found.
        assert!(matches!(
            recipient(&reply, "bob", &login, 10),
            Err(ChatError::BadCertificate { .. })
        ));
        assert!(matches!(
            recipient(&reply_for(&issuer, "mallory", 10_000), "bob", &login, 5_000),
            Err(ChatError::WrongCertificate { .. })
        ));
        let rogue = Issuer::new(key("alice"));
        assert!(matches!(
            recipient(&reply_for(&rogue, "bob", 10_000), "bob", &login, 5_000),
            Err(ChatError::BadCertificate { .. })
        ));
        let mut none = reply.clone();
        none.certificate = None;
        assert!(matches!(
            recipient(&none, "bob", &login, 5_000),
            Err(ChatError::NoCertificate(_))
        ));
        let mut missing = reply;
        missing.found = false;
        assert!(matches!(
            recipient(&missing, "bob", &login, 5_000),
            Err(ChatError::UnknownRecipient(_))
        ));
    }
}
