//! `proto::stun::Message::decode` (a supernode's reflector and
//! `natter netcheck` parse STUN from anyone). Total; whatever decodes
//! re-encodes to a message that `looks_like_stun` and decodes to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::stun::{Message, looks_like_stun};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::decode(data) else {
        return;
    };
    assert!(looks_like_stun(data));
    let bytes = message.encode();
    assert!(looks_like_stun(&bytes));
    assert_eq!(Message::decode(&bytes), Ok(message));
});
