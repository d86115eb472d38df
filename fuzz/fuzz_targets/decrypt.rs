//! What `natter-decrypt` reads from files it is given: a key log
//! (`parse_key_log`, on the input as text), a captured packet down to its
//! UDP payload (`udp_payload`, for each link layer) and a UDP payload opened
//! by a `Decryptor` holding the `som.key`/`som.iv` vector keys (so the
//! `som.datagram` vector opens). Total; a UDP payload lies within the
//! packet; an opened datagram's plaintext is the datagram less the SoM
//! header and tag, and opens again (a capture holds relayed copies).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_decrypt::{CallDirection, Decryptor, Direction, Link, parse_key_log, udp_payload};
use natter_proto::media::OVERHEAD;

fuzz_target!(|data: &[u8]| {
    if let Ok(directions) = parse_key_log(&String::from_utf8_lossy(data)) {
        for d in &directions {
            assert!(matches!(d.direction, Direction::C2s | Direction::S2c));
        }
    }
    for link in [Link::Ethernet, Link::LinuxSll, Link::LinuxSll2, Link::Ip] {
        if let Some(udp) = udp_payload(link, data) {
            assert!(udp.payload.len() <= data.len());
        }
    }
    let mut decryptor = Decryptor::new(vec![CallDirection {
        call_id: [0; 16],
        direction: Direction::C2s,
        keys: natter_fuzz::som_keys(),
        first_index: None,
    }]);
    if let Some(opened) = decryptor.open(data) {
        assert_eq!(opened.plaintext.len() + OVERHEAD, data.len());
        let again = decryptor.open(data).expect("a copy of an opened datagram");
        assert_eq!(again.plaintext, opened.plaintext);
    }
});
