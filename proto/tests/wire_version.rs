//! The version-interop test hook (`set_test_wire_version`, set by the client
//! from `NATTER_TEST_WIRE_VERSION`): a process that speaks another version
//! sends it and refuses this build's, and says so. In a test binary of its
//! own, because the setting is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_proto::PROTOCOL_VERSION;
use natter_proto::frame::{FrameError, decode_envelope};
use natter_proto::messages::{Envelope, Ping, envelope, set_test_wire_version, wire_version};
use prost::Message;

fn ping() -> Envelope {
    Envelope::new(1, envelope::Body::Ping(Ping { nonce: 42 }))
}

#[test]
fn a_process_speaking_another_version_sends_it_and_refuses_this_one() {
    assert_eq!(wire_version(), PROTOCOL_VERSION);
    let ours = ping().encode_to_vec();
    assert_eq!(decode_envelope(&ours).unwrap().version, PROTOCOL_VERSION);

    set_test_wire_version(PROTOCOL_VERSION + 1);
    let bumped = ping();
    assert_eq!(bumped.version, PROTOCOL_VERSION + 1);
    let bumped_bytes = bumped.encode_to_vec();
    assert_eq!(decode_envelope(&bumped_bytes).unwrap(), bumped);
    let err = decode_envelope(&ours).unwrap_err();
    assert_eq!(err, FrameError::UnsupportedVersion(PROTOCOL_VERSION));
    assert_eq!(
        err.to_string(),
        format!(
            "unsupported protocol version {PROTOCOL_VERSION} (this side speaks {})",
            PROTOCOL_VERSION + 1
        )
    );

    // back to this build's version: the bumped envelope is the one refused
    set_test_wire_version(PROTOCOL_VERSION);
    assert_eq!(
        decode_envelope(&bumped_bytes),
        Err(FrameError::UnsupportedVersion(PROTOCOL_VERSION + 1))
    );
    assert_eq!(decode_envelope(&ours).unwrap().version, PROTOCOL_VERSION);
}
