//! Signaling messages and the stream framing: round trips for every message
//! type, and total decoders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use arbitrary::{Arbitrary, Unstructured};
use natter_proto::PROTOCOL_VERSION;
use natter_proto::frame::{
    FrameDecoder, FrameError, LENGTH_PREFIX_LEN, MAX_FRAME_LEN, decode_envelope, to_frame,
};
use natter_proto::messages::{Envelope, Ping, RegisterRequest, SocketAddr, envelope};
use proptest::prelude::*;
use prost::Message;

/// Any envelope of the current version with a body, built from raw bytes.
fn envelope_strategy() -> impl Strategy<Value = Envelope> {
    proptest::collection::vec(any::<u8>(), 0..2048).prop_filter_map("needs a body", |bytes| {
        let mut u = Unstructured::new(&bytes);
        let body = envelope::Body::arbitrary(&mut u).ok()?;
        let request_id = u64::arbitrary(&mut u).unwrap_or(0);
        Some(Envelope::new(request_id, body))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips_through_a_frame(env in envelope_strategy()) {
        let frame = to_frame(&env).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len + LENGTH_PREFIX_LEN, frame.len());
        let back = decode_envelope(&frame[LENGTH_PREFIX_LEN..]).unwrap();
        prop_assert_eq!(back, env);
    }

    #[test]
    fn a_stream_split_anywhere_yields_the_same_frames(
        envs in proptest::collection::vec(envelope_strategy(), 1..6),
        cuts in proptest::collection::vec(1usize..97, 1..20),
    ) {
        let mut stream = Vec::new();
        for env in &envs {
            stream.extend(to_frame(env).unwrap());
        }
        let mut decoder = FrameDecoder::default();
        let mut got = Vec::new();
        let mut rest = stream.as_slice();
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = (*cut.next().unwrap()).min(rest.len());
            decoder.handle_data(&rest[..n]).unwrap();
            rest = &rest[n..];
            while let Some(frame) = decoder.poll_frame() {
                got.push(frame.unwrap());
            }
        }
        prop_assert_eq!(got, envs);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_envelope_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(env) = decode_envelope(&bytes) {
            // Whatever decodes is a valid current-version message that re-encodes.
            prop_assert_eq!(env.version, PROTOCOL_VERSION);
            prop_assert!(env.body.is_some());
            prop_assert_eq!(decode_envelope(&env.encode_to_vec()).unwrap(), env);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_stream_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut decoder = FrameDecoder::default();
        decoder.handle_data(&bytes).unwrap();
        let mut frames = 0;
        while let Some(result) = decoder.poll_frame() {
            frames += 1;
            if result.is_err() {
                break;
            }
        }
        // At most one frame per 5 bytes (4-byte prefix + at least 1 byte).
        prop_assert!(frames <= bytes.len() / 5 + 1);
    }

    #[test]
    fn socket_addrs_round_trip(ip in any::<std::net::IpAddr>(), port in any::<u16>()) {
        let addr = std::net::SocketAddr::new(ip, port);
        let wire = SocketAddr::from(addr);
        prop_assert_eq!(std::net::SocketAddr::try_from(&wire).unwrap(), addr);
    }

    #[test]
    fn arbitrary_wire_addrs_never_panic(ip in proptest::collection::vec(any::<u8>(), 0..20), port in any::<u32>()) {
        let wire = SocketAddr { ip: ip.clone(), port };
        let ok = std::net::SocketAddr::try_from(&wire).is_ok();
        prop_assert_eq!(ok, (ip.len() == 4 || ip.len() == 16) && port <= 65535);
    }
}

fn ping() -> Envelope {
    Envelope::new(1, envelope::Body::Ping(Ping { nonce: 42 }))
}

#[test]
fn oversized_frames_are_refused_on_encode_and_on_the_prefix() {
    let big = Envelope::new(
        1,
        envelope::Body::RegisterRequest(RegisterRequest {
            name: "x".repeat(MAX_FRAME_LEN),
            password: String::new(),
        }),
    );
    assert!(matches!(
        to_frame(&big),
        Err(FrameError::TooLarge {
            max: MAX_FRAME_LEN,
            ..
        })
    ));

    // The decoder refuses as soon as the 4-byte prefix announces too much,
    // without waiting for (or buffering) the body.
    let mut decoder = FrameDecoder::default();
    decoder
        .handle_data(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes())
        .unwrap();
    assert!(matches!(
        decoder.poll_frame(),
        Some(Err(FrameError::TooLarge { .. }))
    ));
    // After an error the stream is out of sync: nothing more comes out.
    decoder.handle_data(&to_frame(&ping()).unwrap()).unwrap();
    assert!(decoder.poll_frame().is_none());
}

#[test]
fn the_decoder_buffer_is_bounded() {
    let mut decoder = FrameDecoder::new(1024);
    let cap = decoder.capacity();
    assert_eq!(decoder.handle_data(&vec![0u8; cap]), Ok(()));
    let mut decoder = FrameDecoder::new(1024);
    assert!(matches!(
        decoder.handle_data(&vec![0u8; cap + 1]),
        Err(FrameError::BufferFull { .. })
    ));
}

#[test]
fn other_versions_and_empty_bodies_get_distinct_errors() {
    // Version 1 (before the authenticated overlay) and a future version.
    for version in [1, 3] {
        let mut env = ping();
        env.version = version;
        assert_eq!(
            decode_envelope(&env.encode_to_vec()),
            Err(FrameError::UnsupportedVersion(version))
        );
    }
    let env = Envelope {
        version: PROTOCOL_VERSION,
        request_id: 9,
        body: None,
    };
    assert_eq!(
        decode_envelope(&env.encode_to_vec()),
        Err(FrameError::MissingBody)
    );
    assert_eq!(decode_envelope(&[]), Err(FrameError::Empty));
    assert!(matches!(
        decode_envelope(&[0x0a, 0xff]),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn every_message_type_has_a_distinct_name() {
    // Build one envelope per variant from bytes and collect the names: the
    // table in docs/PROTOCOL.md lists 33 message types.
    let mut names = std::collections::BTreeSet::new();
    use rand::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut bytes = [0u8; 64];
    for _ in 0..100_000 {
        if names.len() == 33 {
            break;
        }
        rng.fill_bytes(&mut bytes);
        if let Ok(body) = envelope::Body::arbitrary(&mut Unstructured::new(&bytes)) {
            names.insert(body.type_name());
        }
    }
    assert_eq!(names.len(), 33, "names seen: {names:?}");
}
