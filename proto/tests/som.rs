//! The SoM header codec.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_proto::som::{FUNCTION_MASK, Function, HEADER_LEN, Header, RANDOM_MASK, SomError};
use proptest::prelude::*;

fn function() -> impl Strategy<Value = Function> {
    proptest::sample::select(Function::ALL.to_vec())
}

proptest! {
    #[test]
    fn headers_round_trip(msg_id in any::<u16>(), f in function(), random in 0u8..8, body in proptest::collection::vec(any::<u8>(), 0..80)) {
        let header = Header::new(msg_id, f, random);
        let mut datagram = header.to_bytes().to_vec();
        datagram.extend_from_slice(&body);
        let (back, rest) = Header::decode(&datagram).unwrap();
        prop_assert_eq!(back, header);
        prop_assert_eq!(rest, body.as_slice());
        // The function survives the mask whatever the random bits.
        prop_assert_eq!(datagram[2] & FUNCTION_MASK, f as u8);
        prop_assert_eq!((datagram[2] & RANDOM_MASK) >> 4, random);
    }

    #[test]
    fn media_frames_round_trip(number in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..80)) {
        let mut plain = Vec::new();
        natter_proto::media::encode_media_frame(number, &payload, &mut plain);
        let (n, p) = natter_proto::media::decode_media_frame(&plain).unwrap();
        prop_assert_eq!(n, number);
        prop_assert_eq!(p, payload.as_slice());
    }

    #[test]
    fn arbitrary_media_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..8)) {
        let result = natter_proto::media::decode_media_frame(&bytes);
        prop_assert_eq!(result.is_ok(), bytes.len() >= 2);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
        match Header::decode(&bytes) {
            Ok((header, rest)) => {
                prop_assert_eq!(rest.len(), bytes.len() - HEADER_LEN);
                let encoded = header.to_bytes();
                prop_assert_eq!(encoded.as_slice(), &bytes[..HEADER_LEN]);
            }
            Err(SomError::Truncated(n)) => prop_assert!(n < HEADER_LEN),
            Err(SomError::UnknownFunction(f)) => prop_assert_eq!(f, bytes[2] & FUNCTION_MASK),
        }
    }
}

#[test]
fn function_codes_match_the_skype_observations() {
    // byte & 0x8F gives the function; bits 4-6 are random.
    for random in 0..8u8 {
        let byte = |code: u8| (random << 4) | code;
        assert_eq!(Function::from_byte(byte(0x02)), Ok(Function::Ping));
        assert_eq!(Function::from_byte(byte(0x0d)), Ok(Function::Data));
        assert_eq!(Function::from_byte(byte(0x03)), Ok(Function::Connect));
        assert_eq!(Function::from_byte(byte(0x07)), Ok(Function::Probe));
        assert_eq!(Function::from_byte(byte(0x0f)), Ok(Function::ProbeReply));
        assert_eq!(
            Function::from_byte(byte(0x01)),
            Err(SomError::UnknownFunction(0x01))
        );
    }
    // Bit 7 is a function bit, not a random one.
    assert_eq!(
        Function::from_byte(0x8d),
        Err(SomError::UnknownFunction(0x8d))
    );
    assert_eq!(Header::decode(&[0, 1]), Err(SomError::Truncated(2)));
    assert_eq!(
        Header::new(0x1234, Function::Data, 5).to_bytes(),
        [0x12, 0x34, 0x5d]
    );
}
