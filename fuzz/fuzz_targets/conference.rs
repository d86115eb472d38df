//! The conference core, `proto::conference`: `decode_bytes` on any bytes
//! (what decodes re-encodes and decodes to itself), then a participant in a
//! running three-party conference fed conference messages from members and
//! strangers, legs coming and going, time, leaving and inviting.
//!
//! Input: records of `op` (1 byte), `len` (1 byte), `len` bytes. Ops (`op %
//! 8`): 0-2 a message from alice, bob (the host) or mallory (a stranger), the
//! payload being an encoded `ConferenceSignal`; 3 a leg up, 4 a leg lost
//! (the payload's first byte picks the peer); 5 time passes (payload: u16
//! tenths of a second); 6 an invitation to someone; 7 leave.
//!
//! Total; the roster never exceeds `MAX_PARTIES` and always holds the
//! participant itself while it runs; a host is a member; drop counters only
//! grow, and a message the decoder refuses counts as malformed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::conference::{
    self, Capabilities, Conference, ID_LEN, MAX_PARTIES, Message, NatClass, Phase, Roster,
};
use natter_proto::messages::ConferenceSignal;
use prost::Message as _;

const ID: [u8; ID_LEN] = [0xC0; ID_LEN];
const PEERS: [&str; 5] = ["alice", "bob", "mallory", "dave", "erin"];

fn caps(nat: NatClass, upstream: u32) -> Capabilities {
    Capabilities::new(nat, upstream, 500)
}

/// carol, invited by alice, in a conference hosted by bob.
fn carol() -> Conference {
    let invite = conference::encode(
        &ID,
        &Message::Invite {
            participants: vec!["alice".into(), "bob".into(), "carol".into()],
        },
    );
    let mut c = Conference::invited(
        "carol",
        caps(NatClass::PortRestricted, 900),
        "alice",
        &invite,
        0,
    )
    .expect("the invitation is valid");
    let roster: Roster = [
        ("alice".to_owned(), caps(NatClass::Symmetric, 900)),
        ("bob".to_owned(), caps(NatClass::Open, 900)),
        ("carol".to_owned(), caps(NatClass::PortRestricted, 900)),
    ]
    .into_iter()
    .collect();
    c.handle_signal(
        "alice",
        &conference::encode(&ID, &Message::Roster(roster)),
        0,
    );
    let host = Message::HostElected {
        epoch: 1,
        host: "bob".into(),
    };
    c.handle_signal("alice", &conference::encode(&ID, &host), 0);
    c.handle_leg_up("bob", 0);
    c
}

fuzz_target!(|data: &[u8]| {
    // The decoder alone on the whole input.
    if let Ok((id, message)) = conference::decode_bytes(data) {
        let again = conference::encode(&id, &message).encode_to_vec();
        assert_eq!(conference::decode_bytes(&again), Ok((id, message)));
    }

    let mut c = carol();
    assert_eq!(c.host(), Some("bob"));
    let mut now = 0u64;
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        let before = c.dropped();
        let peer = PEERS[usize::from(payload.first().copied().unwrap_or(0)) % PEERS.len()];
        match op % 8 {
            from @ 0..=2 => {
                let Ok(signal) = ConferenceSignal::decode(payload) else {
                    continue;
                };
                let refused = conference::decode(&signal).is_err();
                c.handle_signal(PEERS[usize::from(from)], &signal, now);
                if refused {
                    assert_eq!(c.dropped().malformed, before.malformed + 1);
                }
            }
            3 => c.handle_leg_up(peer, now),
            4 => c.handle_leg_lost(peer, now),
            5 => {
                let tenths = payload
                    .get(..2)
                    .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                now += u64::from(tenths) * 100;
                c.handle_timeout(now);
            }
            6 => {
                let _ = c.invite(peer, now);
            }
            _ => c.leave(),
        }
        let after = c.dropped();
        assert!(after.malformed >= before.malformed);
        assert!(after.unexpected >= before.unexpected);
        assert!(after.stale >= before.stale);
        assert!(c.roster().len() <= MAX_PARTIES);
        if c.phase() != Phase::Ended {
            assert!(c.roster().contains_key("carol"));
        }
        if let Some(host) = c.host() {
            assert!(c.roster().contains_key(host), "host {host} not a member");
        }
        let mut signals = 0;
        while c.poll_signal().is_some() {
            signals += 1;
        }
        let mut events = 0;
        while c.poll_event().is_some() {
            events += 1;
        }
        assert!(signals <= 64 && events <= 64, "queues bounded");
    }
});
