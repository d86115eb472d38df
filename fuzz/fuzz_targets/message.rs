//! Every signaling message built from arbitrary field values (the
//! `arbitrary` feature of natter-proto): an envelope that encodes into a
//! frame decodes from the stream to the same envelope (decode(encode(x)) == x).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::PROTOCOL_VERSION;
use natter_proto::frame::{FrameDecoder, FrameError, to_frame};
use natter_proto::messages::Envelope;

fuzz_target!(|envelope: Envelope| {
    let mut envelope = envelope;
    envelope.version = PROTOCOL_VERSION;
    let frame = match to_frame(&envelope) {
        Ok(frame) => frame,
        Err(FrameError::TooLarge { .. } | FrameError::Empty) => return,
        Err(e) => panic!("encoding failed: {e}"),
    };
    let mut decoder = FrameDecoder::default();
    decoder
        .handle_data(&frame)
        .expect("one frame fits the decoder");
    match decoder.poll_frame() {
        Some(Ok(decoded)) => assert_eq!(decoded, envelope),
        Some(Err(FrameError::MissingBody)) => assert!(envelope.body.is_none()),
        other => panic!("a frame we encoded did not decode: {other:?}"),
    }
    assert_eq!(decoder.buffered(), 0);
});
