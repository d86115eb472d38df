//! `proto::record::RecordDecoder` (TLS-over-TCP records) on a byte stream cut
//! into reads of any size. Total; independent of the cut; bounded; failed
//! stays failed; every record decoded re-encodes to bytes that decode to the
//! same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::record::{Record, RecordDecoder, RecordError, to_bytes};

fn decode(stream: &[u8], read: usize) -> Vec<Result<Record, RecordError>> {
    let mut decoder = RecordDecoder::default();
    let mut out = Vec::new();
    for chunk in stream.chunks(read) {
        if let Err(e) = decoder.handle_data(chunk) {
            out.push(Err(e));
            return out;
        }
        assert!(decoder.buffered() <= RecordDecoder::CAPACITY);
        while let Some(record) = decoder.poll_record() {
            let failed = record.is_err();
            out.push(record);
            if failed {
                assert!(
                    decoder.poll_record().is_none(),
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
    for record in cut.into_iter().flatten() {
        let bytes = to_bytes(&record).expect("a decoded record re-encodes");
        let mut decoder = RecordDecoder::default();
        decoder.handle_data(&bytes).expect("one record fits");
        assert_eq!(decoder.poll_record(), Some(Ok(record)));
        assert_eq!(decoder.buffered(), 0);
    }
});
