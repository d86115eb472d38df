//! `proto::frame::FrameDecoder` on a byte stream cut into reads of any size.
//! Total (no panic); the result does not depend on how the stream is cut;
//! the buffer stays bounded; after an error nothing more comes out; every
//! envelope decoded re-encodes to a frame that decodes to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::frame::{FrameDecoder, FrameError, LENGTH_PREFIX_LEN, decode_envelope, to_frame};
use natter_proto::messages::Envelope;

fn decode(stream: &[u8], read: usize) -> Vec<Result<Envelope, FrameError>> {
    let mut decoder = FrameDecoder::default();
    let mut out = Vec::new();
    for chunk in stream.chunks(read) {
        if let Err(e) = decoder.handle_data(chunk) {
            out.push(Err(e));
            return out;
        }
        assert!(decoder.buffered() <= decoder.capacity());
        while let Some(frame) = decoder.poll_frame() {
            let failed = frame.is_err();
            out.push(frame);
            if failed {
                assert!(
                    decoder.poll_frame().is_none(),
                    "a failed stream stays failed"
                );
                return out;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&read, stream)) = data.split_first() else {
        return;
    };
    let cut = decode(stream, usize::from(read).max(1));
    let whole = decode(stream, stream.len().max(1));
    assert_eq!(cut, whole, "the result depends on how the stream is cut");
    for envelope in cut.into_iter().flatten() {
        let frame = to_frame(&envelope).expect("a decoded envelope re-encodes");
        assert_eq!(decode_envelope(&frame[LENGTH_PREFIX_LEN..]), Ok(envelope));
    }
});
