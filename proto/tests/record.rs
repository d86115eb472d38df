//! The TLS-over-TCP record codec: round trips and arbitrary input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_proto::messages::Envelope;
use natter_proto::messages::envelope::Body;
use natter_proto::record::{self, MAX_DATAGRAM_LEN, Record, RecordDecoder};
use proptest::prelude::*;

fn any_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (1u64..u64::MAX, any::<u64>()).prop_map(|(id, nonce)| Record::Envelope(Envelope::new(
            id,
            Body::Ping(natter_proto::messages::Ping { nonce })
        ))),
        proptest::collection::vec(any::<u8>(), 1..=MAX_DATAGRAM_LEN).prop_map(Record::Datagram),
        (any::<u32>(), "[a-z ]{0,40}").prop_map(|(code, reason)| Record::Close { code, reason }),
        Just(Record::Keepalive),
    ]
}

proptest! {
    #[test]
    fn records_round_trip_whatever_the_read_sizes(
        records in proptest::collection::vec(any_record(), 1..8),
        chunk in 1usize..700,
    ) {
        let mut bytes = Vec::new();
        for r in &records {
            bytes.extend(record::to_bytes(r).unwrap());
        }
        let mut decoder = RecordDecoder::default();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            decoder.handle_data(piece).unwrap();
            while let Some(r) = decoder.poll_record() {
                out.push(r.unwrap());
            }
        }
        prop_assert_eq!(out, records);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut decoder = RecordDecoder::default();
        decoder.handle_data(&bytes).unwrap();
        let mut consumed = 0;
        while let Some(result) = decoder.poll_record() {
            match result {
                // Whatever decodes re-encodes to the bytes it came from.
                Ok(Record::Datagram(d)) => {
                    let again = record::to_bytes(&Record::Datagram(d)).unwrap();
                    prop_assert_eq!(&bytes[consumed..consumed + again.len()], again.as_slice());
                    consumed += again.len();
                }
                Ok(Record::Close { code, reason }) => {
                    let again = record::to_bytes(&Record::Close { code, reason }).unwrap();
                    prop_assert_eq!(&bytes[consumed..consumed + again.len()], again.as_slice());
                    consumed += again.len();
                }
                Ok(Record::Keepalive) => consumed += record::HEADER_LEN,
                Ok(Record::Envelope(_)) => {
                    let len = u32::from_be_bytes(bytes[consumed + 1..consumed + 5].try_into().unwrap()) as usize;
                    consumed += record::HEADER_LEN + len;
                }
                Err(_) => {
                    prop_assert!(decoder.poll_record().is_none());
                    break;
                }
            }
        }
        prop_assert!(consumed <= bytes.len());
    }
}
