//! Chat as it reaches a recipient: a `ChatMessage` (protobuf) then
//! `proto::chat::open` with a fixed identity (bob, the recipient of the
//! `chat.*` vectors: chat secret `22` x 32) against the test issuer.
//! Total; a message opens only if its envelope passes
//! `chat::check_envelope`, it is to bob, and its sender certificate names
//! its `from`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use natter_fuzz::{ISSUER, NOW_S};
use natter_proto::cert::{self, Identity};
use natter_proto::chat;
use natter_proto::messages::ChatMessage;
use prost::Message;

/// Bob with the vectors' chat secret, certified at the fuzz clock.
static BOB: LazyLock<Identity> = LazyLock::new(|| {
    let mut bob = natter_fuzz::BOB.clone();
    bob.chat_secret = [0x22; 32];
    bob.certificate = ISSUER.issue(
        &mut rsa::rand_core::OsRng,
        &cert::Subject::User {
            name: "bob",
            key: &bob.key.to_public_key(),
            chat_key: cert::chat_public(&bob.chat_secret),
        },
        2,
        NOW_S - 100,
        NOW_S + 86_400,
    );
    bob
});

fuzz_target!(|data: &[u8]| {
    let Ok(message) = ChatMessage::decode(data) else {
        return;
    };
    let checked = chat::check_envelope(&message);
    let opened = chat::open(&message, &BOB, &ISSUER.public_key(), NOW_S * 1000);
    if let Ok(opened) = opened {
        assert!(checked.is_ok(), "opened what a supernode refuses");
        assert_eq!(message.to, "bob");
        assert_eq!(opened.from, message.from);
        assert_eq!(opened.sender.name, message.from);
        assert!(opened.text.len() <= chat::MAX_TEXT_LEN);
        assert!(message.sealed.len() <= chat::MAX_SEALED_LEN);
    }
});
