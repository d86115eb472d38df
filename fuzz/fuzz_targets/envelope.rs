//! `proto::frame::decode_envelope` (the protobuf `Envelope` every signaling
//! message travels in: logins, joins, chat, call signals, gossip) on raw
//! bytes. Total; a decoded envelope re-encodes, and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::frame::{
    FrameError, LENGTH_PREFIX_LEN, MAX_FRAME_LEN, decode_envelope, to_frame,
};

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = decode_envelope(data) else {
        return;
    };
    let frame = match to_frame(&envelope) {
        Ok(frame) => frame,
        // Re-encoding can be a little longer than the input (a repeated
        // field sent unpacked is packed again): only near the limit.
        Err(FrameError::TooLarge { .. }) if data.len() > MAX_FRAME_LEN / 2 => return,
        Err(e) => panic!("a decoded envelope does not re-encode: {e}"),
    };
    let again = decode_envelope(&frame[LENGTH_PREFIX_LEN..]).expect("re-encoded envelope decodes");
    assert_eq!(again, envelope);
});
