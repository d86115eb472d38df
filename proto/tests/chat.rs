//! End-to-end chat (proto::chat): what opens, and every way a supernode or
//! another user might bend a message, which must not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DAY, NOW, blinding_rng, issuer, key};
use natter_proto::cert::{self, Identity, Subject, VerifiedCertificate};
use natter_proto::chat::{self, ChatError, MAX_TEXT_LEN};
use natter_proto::messages::{ChatBody, ChatMessage, SealedChat};
use prost::Message;

const SENT: i64 = NOW * 1000 + 123;
const ID: [u8; 16] = [0x42; 16];

/// An identity for `name` on the published key `key_name`, with its own
/// chat secret, certified from `from` to `until`.
fn person_valid(name: &str, key_name: &str, chat_secret: u8, from: i64, until: i64) -> Identity {
    let key = key(key_name);
    let chat_secret = [chat_secret; 32];
    let certificate = issuer().issue(
        &mut blinding_rng(),
        &Subject::User {
            name,
            key: &key.to_public_key(),
            chat_key: cert::chat_public(&chat_secret),
        },
        9,
        from,
        until,
    );
    Identity {
        key,
        certificate,
        chat_secret,
    }
}

fn person(name: &str, key_name: &str, chat_secret: u8) -> Identity {
    person_valid(name, key_name, chat_secret, NOW - 60, NOW + DAY)
}

fn verified(who: &Identity) -> VerifiedCertificate {
    cert::verify(&who.certificate, &issuer().public_key(), NOW).unwrap()
}

fn alice() -> Identity {
    person("alice", "alice", 0xa1)
}

fn bob() -> Identity {
    person("bob", "bob", 0xb0)
}

fn seal(from: &Identity, from_name: &str, to: &Identity, text: &str) -> ChatMessage {
    let recipient = verified(to);
    chat::seal(
        &mut blinding_rng(),
        from,
        &recipient,
        &ID,
        from_name,
        &recipient.name,
        SENT,
        text,
    )
    .unwrap()
}

fn open(message: &ChatMessage, own: &Identity) -> Result<chat::OpenedChat, ChatError> {
    chat::open(message, own, &issuer().public_key(), SENT + 2_000)
}

#[test]
fn a_sealed_message_opens_for_its_recipient_with_the_sender_verified() {
    let m = seal(&alice(), "alice", &bob(), "hello bob");
    assert!(m.text.is_empty(), "no plaintext in the envelope");
    assert!(!m.sealed.is_empty());
    assert!(
        !m.sealed.windows(9).any(|w| w == b"hello bob"),
        "the sealed bytes do not contain the text"
    );
    chat::check_envelope(&m).unwrap();
    let opened = open(&m, &bob()).unwrap();
    assert_eq!(opened.text, "hello bob");
    assert_eq!(opened.from, "alice");
    assert_eq!(opened.to, "bob");
    assert_eq!(opened.sent_at, SENT);
    assert_eq!(opened.message_id, ID.to_vec());
    assert_eq!(opened.sender.name, "alice");
    assert_eq!(opened.sender.public_key, key("alice").to_public_key());
}

#[test]
fn every_message_has_a_fresh_ephemeral_key() {
    let recipient = verified(&bob());
    let mut rng = blinding_rng();
    let mut seal_one = || {
        chat::seal(
            &mut rng,
            &alice(),
            &recipient,
            &ID,
            "alice",
            "bob",
            SENT,
            "same",
        )
        .unwrap()
    };
    let (a, b) = (seal_one(), seal_one());
    assert_ne!(a.sealed, b.sealed);
    assert_eq!(open(&a, &bob()).unwrap().text, "same");
    assert_eq!(open(&b, &bob()).unwrap().text, "same");
}

#[test]
fn a_tampered_ciphertext_does_not_open() {
    let m = seal(&alice(), "alice", &bob(), "pay carol 10");
    let sealed = SealedChat::decode(m.sealed.as_slice()).unwrap();
    for i in [0, sealed.ciphertext.len() / 2, sealed.ciphertext.len() - 1] {
        let mut bent = sealed.clone();
        bent.ciphertext[i] ^= 0x01;
        let mut forged = m.clone();
        forged.sealed = bent.encode_to_vec();
        assert_eq!(open(&forged, &bob()), Err(ChatError::Decrypt), "byte {i}");
    }
    let mut bent = sealed.clone();
    bent.ephemeral[0] ^= 0x01;
    let mut forged = m.clone();
    forged.sealed = bent.encode_to_vec();
    assert!(open(&forged, &bob()).is_err(), "changed ephemeral key");
    let mut cut = sealed;
    cut.ciphertext.truncate(10);
    let mut forged = m;
    forged.sealed = cut.encode_to_vec();
    assert_eq!(open(&forged, &bob()), Err(ChatError::Decrypt));
}

#[test]
fn a_ciphertext_moved_to_another_envelope_does_not_open() {
    let m = seal(&alice(), "alice", &bob(), "hi");
    let carol = person("carol", "issuer", 0xc0);
    // The supernode stamps `from`: another sender's name on the ciphertext.
    let mut other_from = m.clone();
    other_from.from = "carol".into();
    assert_eq!(open(&other_from, &bob()), Err(ChatError::Decrypt));
    // Another time or id.
    let mut other_time = m.clone();
    other_time.sent_at += 1;
    assert_eq!(open(&other_time, &bob()), Err(ChatError::Decrypt));
    let mut other_id = m.clone();
    other_id.message_id[0] ^= 1;
    assert_eq!(open(&other_id, &bob()), Err(ChatError::Decrypt));
    // Moved to another recipient: not for their key.
    let mut moved = m.clone();
    moved.to = "carol".into();
    assert_eq!(open(&moved, &carol), Err(ChatError::Decrypt));
    // Re-addressed to bob's name but opened by carol's key (a supernode
    // giving it to the wrong user): refused before any decryption.
    assert!(matches!(open(&m, &carol), Err(ChatError::NotForMe { .. })));
}

#[test]
fn the_wrong_recipient_cannot_open() {
    let m = seal(&alice(), "alice", &bob(), "for bob only");
    // Another identity under bob's name (say bob's old home, another chat key).
    let other_bob = person("bob", "bob", 0x99);
    assert_eq!(open(&m, &other_bob), Err(ChatError::Decrypt));
    // And alice herself cannot open what she sent to bob.
    assert!(open(&m, &alice()).is_err());
}

#[test]
fn a_forged_sender_is_refused() {
    let mallory = person("mallory", "issuer", 0x3a);
    // Mallory's own valid certificate, but the envelope claims alice (a
    // malicious supernode stamping `from`, or mallory sealing as alice).
    let forged = seal(&mallory, "alice", &bob(), "from alice, honest");
    assert_eq!(
        open(&forged, &bob()),
        Err(ChatError::SenderMismatch {
            from: "alice".into(),
            certified: "mallory".into(),
        })
    );
    // Alice's certificate in the body, signed by mallory's key.
    let bob_cert = verified(&bob());
    let mut masquerade = mallory.clone();
    masquerade.certificate = alice().certificate;
    let forged = chat::seal(
        &mut blinding_rng(),
        &masquerade,
        &bob_cert,
        &ID,
        "alice",
        "bob",
        SENT,
        "from alice, honest",
    )
    .unwrap();
    assert_eq!(open(&forged, &bob()), Err(ChatError::BadSignature));
    // A certificate from another issuer.
    let rogue = natter_proto::cert::Issuer::new(key("bob"));
    let mut self_made = mallory;
    self_made.certificate = rogue.issue(
        &mut blinding_rng(),
        &Subject::User {
            name: "alice",
            key: &key("issuer").to_public_key(),
            chat_key: [1; 32],
        },
        1,
        NOW - 60,
        NOW + DAY,
    );
    let forged = seal(&self_made, "alice", &bob(), "hi");
    assert!(matches!(
        open(&forged, &bob()),
        Err(ChatError::Certificate(_))
    ));
}

#[test]
fn a_body_without_certificate_or_signature_is_refused() {
    // A supernode cannot seal to bob's key a body of its own making that
    // passes: it lacks a certified key to sign with.
    let bob_cert = verified(&bob());
    let eph = [0x77u8; 32];
    let eph_public = cert::chat_public(&eph);
    let shared = x25519_dalek::StaticSecret::from(eph)
        .diffie_hellman(&x25519_dalek::PublicKey::from(bob_cert.chat_key))
        .to_bytes();
    let (k, n) = chat::derive(&shared, &eph_public, &bob_cert.chat_key);
    for body in [
        ChatBody {
            text: "unsigned".into(),
            sender_certificate: None,
            signature: Vec::new(),
        },
        ChatBody {
            text: "unsigned".into(),
            sender_certificate: Some(alice().certificate),
            signature: vec![0; 256],
        },
    ] {
        use aes_gcm::aead::{AeadInOut, KeyInit};
        let mut ct = body.encode_to_vec();
        let tag = aes_gcm::Aes256Gcm::new(&k.into())
            .encrypt_inout_detached(
                &aes_gcm::Nonce::from(n),
                &chat::aad(&ID, "alice", "bob", SENT),
                ct.as_mut_slice().into(),
            )
            .unwrap();
        ct.extend_from_slice(tag.as_slice());
        let m = ChatMessage {
            message_id: ID.to_vec(),
            from: "alice".into(),
            to: "bob".into(),
            text: String::new(),
            sent_at: SENT,
            sealed: SealedChat {
                ephemeral: eph_public.to_vec(),
                ciphertext: ct,
            }
            .encode_to_vec(),
        };
        let got = open(&m, &bob());
        assert!(
            matches!(got, Err(ChatError::NoCertificate | ChatError::BadSignature)),
            "{got:?}"
        );
    }
}

#[test]
fn times_are_judged_at_sent_at_and_bounded() {
    let bob = bob();
    let login = issuer().public_key();
    let m = seal(&alice(), "alice", &bob, "hi");
    // Read a week later, after alice's one-day certificate expired: still
    // hers (valid when she sent it).
    let later = SENT + 7 * DAY * 1000;
    assert_eq!(chat::open(&m, &bob, &login, later).unwrap().text, "hi");
    // Older than stored chat can be: refused.
    assert!(matches!(
        chat::open(&m, &bob, &login, SENT + chat::MAX_AGE_MS + 1),
        Err(ChatError::TooOld { .. })
    ));
    // Dated ahead of the recipient's clock: refused.
    assert!(matches!(
        chat::open(&m, &bob, &login, SENT - chat::MAX_FUTURE_MS - 1),
        Err(ChatError::FromTheFuture { .. })
    ));
    // Dated after the sender's certificate expired: refused.
    let short = person_valid("alice", "alice", 0xa1, NOW - 60, NOW);
    let recipient = verified(&bob);
    let late = chat::seal(
        &mut blinding_rng(),
        &short,
        &recipient,
        &ID,
        "alice",
        "bob",
        NOW * 1000 + 5_000,
        "late",
    )
    .unwrap();
    assert!(matches!(
        chat::open(&late, &bob, &login, NOW * 1000 + 6_000),
        Err(ChatError::Certificate(cert::CertError::Expired { .. }))
    ));
}

#[test]
fn envelopes_a_supernode_must_refuse() {
    let good = seal(&alice(), "alice", &bob(), "hi");
    chat::check_envelope(&good).unwrap();
    let mut plain = good.clone();
    plain.text = "hi".into();
    assert_eq!(chat::check_envelope(&plain), Err(ChatError::Plaintext));
    let mut unsealed = good.clone();
    unsealed.sealed.clear();
    assert_eq!(chat::check_envelope(&unsealed), Err(ChatError::NotSealed));
    let mut id = good.clone();
    id.message_id = vec![1; 17];
    assert_eq!(chat::check_envelope(&id), Err(ChatError::MessageId(17)));
    let mut big = good.clone();
    big.sealed = vec![0; chat::MAX_SEALED_LEN + 1];
    assert!(matches!(
        chat::check_envelope(&big),
        Err(ChatError::SealedTooLong(_))
    ));
    let mut junk = good;
    junk.sealed = vec![0xff; 40];
    assert!(chat::check_envelope(&junk).is_err());
}

#[test]
fn the_longest_text_seals_within_the_limit_and_longer_is_refused() {
    let text = "x".repeat(MAX_TEXT_LEN);
    let m = seal(&alice(), "alice", &bob(), &text);
    assert!(m.sealed.len() <= chat::MAX_SEALED_LEN);
    assert_eq!(open(&m, &bob()).unwrap().text.len(), MAX_TEXT_LEN);
    let recipient = verified(&bob());
    let long = "x".repeat(MAX_TEXT_LEN + 1);
    assert_eq!(
        chat::seal(
            &mut blinding_rng(),
            &alice(),
            &recipient,
            &ID,
            "alice",
            "bob",
            SENT,
            &long
        ),
        Err(ChatError::TextTooLong(MAX_TEXT_LEN + 1))
    );
    // Sealing to a certificate that does not name `to` is refused.
    assert!(matches!(
        chat::seal(
            &mut blinding_rng(),
            &alice(),
            &recipient,
            &ID,
            "alice",
            "carol",
            SENT,
            "hi"
        ),
        Err(ChatError::RecipientMismatch { .. })
    ));
}

#[test]
fn a_low_order_ephemeral_key_is_refused() {
    let m = seal(&alice(), "alice", &bob(), "hi");
    let mut sealed = SealedChat::decode(m.sealed.as_slice()).unwrap();
    sealed.ephemeral = vec![0; 32];
    let mut bent = m;
    bent.sealed = sealed.encode_to_vec();
    assert_eq!(open(&bent, &bob()), Err(ChatError::LowOrder));
}
