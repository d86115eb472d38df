//! Liveness beacons: `proto::alive::answer` (what a supernode's UDP service
//! parses from any source) and the client's `Liveness::handle_echo`. Total;
//! an answer is an echo exactly as long as the beacon, only for a ticket
//! that verifies; a decoded beacon re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::alive::{self, BEACON_KIND, BEACON_LEN, Liveness};
use natter_proto::som::Header;

const SECRET: [u8; 32] = [0x42; 32];

fuzz_target!(|data: &[u8]| {
    let ip = "192.0.2.1".parse().expect("address");
    if let Ok(beacon) = alive::decode(data) {
        let (header, _) = Header::decode(data).expect("a beacon has a SoM header");
        if beacon.kind == BEACON_KIND {
            assert_eq!(
                alive::encode_beacon(&beacon.ticket, beacon.seq, header.msg_id, header.random),
                data
            );
        }
    }
    if let Some((echo, ticket)) = alive::answer(&SECRET, data, ip, 1_700_000_000) {
        // Never larger than what came in, and only for a valid ticket.
        assert_eq!(echo.len(), data.len());
        assert_eq!(data.len(), BEACON_LEN);
        let t = alive::ticket(&SECRET, ip, ticket.expires, ticket.nonce);
        assert_eq!(t, ticket);
    }
    // The client side: whatever arrives, the check stays consistent.
    let ticket = alive::ticket(&SECRET, ip, 1_800_000_000, 1);
    let mut live = Liveness::new(Some(ticket), 0);
    let _ = live.poll(0, 7);
    let _ = live.handle_echo(data, 10);
    let _ = live.poll(5_000, 7);
});
