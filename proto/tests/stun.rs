//! STUN codec: round trips and arbitrary bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_proto::stun::{BINDING_SUCCESS, Message, looks_like_stun};
use proptest::prelude::*;

proptest! {
    #[test]
    fn responses_round_trip(tid in any::<[u8; 12]>(), ip in any::<std::net::IpAddr>(), port in any::<u16>(),
                            change_ip in any::<bool>(), change_port in any::<bool>()) {
        let mut msg = Message::response(tid, std::net::SocketAddr::new(ip, port));
        msg.change_ip = change_ip;
        msg.change_port = change_port;
        let bytes = msg.encode();
        prop_assert!(looks_like_stun(&bytes));
        prop_assert_eq!(Message::decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(tid in any::<[u8; 12]>(), body in proptest::collection::vec(any::<u8>(), 0..30)) {
        let mut bytes = vec![0x01, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        bytes.extend_from_slice(&tid);
        let mut body = body;
        body.resize(body.len().div_ceil(4) * 4, 0);
        bytes.extend_from_slice(&body);
        let len = (bytes.len() - 20) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        if let Ok(msg) = Message::decode(&bytes) {
            prop_assert_eq!(msg.kind, BINDING_SUCCESS);
        }
    }

    /// A SoM datagram is never taken for STUN unless it happens to carry the
    /// magic cookie at bytes 4-7 and a matching length.
    #[test]
    fn som_datagrams_are_not_stun(bytes in proptest::collection::vec(any::<u8>(), 3..100)) {
        let mut bytes = bytes;
        if bytes.len() >= 8 { bytes[4] = 0; }
        prop_assert!(!looks_like_stun(&bytes));
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_relay_bind_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(bind) = natter_proto::relay::decode_bind(&bytes) {
            prop_assert_eq!(&bytes[8..24], bind.token.as_slice());
            prop_assert_eq!(&bytes[24..], bind.cookie.as_slice());
        }
        let _ = natter_proto::relay::decode_bind_reply(&bytes);
    }
}
