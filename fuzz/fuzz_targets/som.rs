//! A SoM datagram as it arrives from the network: `proto::som::Header::decode`
//! and `proto::media::Opener::open` with the `som.key`/`som.iv` vector keys
//! (so the `som.datagram` vector opens). Total; a header re-encodes to the
//! same three bytes; an opened datagram does not open twice (replay); and
//! the input sealed by a `Sealer` with those keys opens to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::media::{OVERHEAD, OpenError, Opener, Sealer, decode_media_frame};
use natter_proto::replay::ReplayError;
use natter_proto::som::{self, Function, Header};

fuzz_target!(|data: &[u8]| {
    let keys = natter_fuzz::som_keys();
    if let Ok((header, rest)) = Header::decode(data) {
        assert_eq!(header.to_bytes(), data[..som::HEADER_LEN]);
        assert_eq!(rest.len(), data.len() - som::HEADER_LEN);
    }

    let mut opener = Opener::new(&keys);
    let mut plain = Vec::new();
    if let Ok(opened) = opener.open(data, &mut plain) {
        assert_eq!(plain.len() + OVERHEAD, data.len());
        assert_eq!(opener.window().highest(), Some(opened.index));
        let again = opener.open(data, &mut plain);
        assert!(
            matches!(again, Err(OpenError::Replay(ReplayError::Replayed { .. }))),
            "a replayed datagram was not refused: {again:?}"
        );
        if opened.header.function == Function::Data {
            let _ = decode_media_frame(&plain);
        }
    }

    // Round trip: seal the input with the same keys, open it.
    let Some((&[hi, lo, f], plaintext)) = data.split_first_chunk::<3>() else {
        return;
    };
    let function = Function::ALL[usize::from(f) % Function::ALL.len()];
    let mut sealer = Sealer::new(&keys, u16::from_be_bytes([hi, lo]) & 0x7FFF);
    let mut sealed = Vec::new();
    let index = sealer
        .seal(function, f >> 4, plaintext, &mut sealed)
        .expect("seals");
    let mut opener = Opener::new(&keys);
    let opened = opener
        .open(&sealed, &mut plain)
        .expect("a sealed datagram opens");
    assert_eq!(opened.index, index);
    assert_eq!(opened.header.function, function);
    assert_eq!(plain, plaintext);
});
