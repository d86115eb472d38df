//! One call's media transport, `proto::session::CallSession`, fed what a
//! peer (or anyone who can send to the call's socket) controls: the peer's
//! candidates, raw datagrams from any source, relay bind replies, and
//! datagrams sealed with the call's real receive key (so the authenticated
//! paths are reached too: voice, probes, probe replies). Time only moves
//! forward. Total; queues stay bounded; every datagram freshly sealed by the
//! peer authenticates and is not taken as a replay, and its voice payload
//! comes out unchanged.
#![no_main]

use std::net::SocketAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use natter_proto::media::Sealer;
use natter_proto::messages::Candidate;
use natter_proto::path::Target;
use natter_proto::relay::{BindStatus, RelayLeg, encode_bind, encode_bind_reply};
use natter_proto::session::{CallSession, Event, SessionConfig, SessionSetup};
use natter_proto::som::Function;

#[derive(Debug, Arbitrary)]
enum Op {
    /// Raw bytes from one of the known sources.
    Raw { from: u8, tcp: bool, bytes: Vec<u8> },
    /// The peer seals `plaintext` (after skipping `skip` indices) and sends it.
    Sealed {
        from: u8,
        tcp: bool,
        function: u8,
        skip: u8,
        plaintext: Vec<u8>,
    },
    /// A relay answers a bind.
    BindReply { relay: u8, status: u8, token: bool },
    /// Time passes.
    Tick { ms: u16 },
    /// This side sends a voice frame.
    Voice { payload: Vec<u8> },
}

#[derive(Debug, Arbitrary)]
struct Input {
    udp_blocked: bool,
    behind_nat: bool,
    start_index: u16,
    peer_start: u16,
    seed: u64,
    candidates: Vec<Candidate>,
    own_relay: Option<([u8; 16], bool)>,
    ops: Vec<Op>,
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i % 4], 3478 + u16::from(i % 4)))
}

fn target(from: u8, tcp: bool) -> Target {
    if tcp {
        Target::TcpLeg(addr(from))
    } else {
        Target::Udp(addr(from))
    }
}

fn drain(session: &mut CallSession, voices: &mut Vec<Vec<u8>>) {
    let mut transmits = 0;
    while session.poll_transmit().is_some() {
        transmits += 1;
        assert!(transmits <= 1024, "the transmit queue is not bounded");
    }
    let mut events = 0;
    while let Some(event) = session.poll_event() {
        events += 1;
        assert!(events <= 1024, "the event queue is not bounded");
        if let Event::Voice { payload, .. } = event {
            voices.push(payload);
        }
    }
}

fuzz_target!(|input: Input| {
    let send = natter_fuzz::other_keys();
    let recv = natter_fuzz::som_keys();
    let setup = SessionSetup {
        udp_blocked: input.udp_blocked,
        behind_nat: input.behind_nat,
        start_index: input.start_index,
        seed: input.seed,
    };
    let mut now = 1_000u64;
    let mut session = CallSession::new(&send, &recv, setup, SessionConfig::default(), now);
    let mut peer = Sealer::new(&recv, input.peer_start & 0x7FFF);
    session.add_candidates(&input.candidates, now);
    if let Some((token, tcp)) = input.own_relay {
        let udp = RelayLeg {
            addr: addr(0),
            token,
        };
        let tcp = tcp.then_some(RelayLeg {
            addr: addr(1),
            token,
        });
        session.add_own_relay(udp, tcp, now);
    }
    let mut voices = Vec::new();
    for op in input.ops {
        match op {
            Op::Raw { from, tcp, bytes } => {
                session
                    .handle_datagram(target(from, tcp), &bytes, now)
                    .expect("no seal error");
            }
            Op::Sealed {
                from,
                tcp,
                function,
                skip,
                plaintext,
            } => {
                let mut sealed = Vec::new();
                for _ in 0..skip % 64 {
                    sealed.clear();
                    peer.seal(Function::Ping, 0, b"", &mut sealed)
                        .expect("seals");
                }
                sealed.clear();
                let function = Function::ALL[usize::from(function) % Function::ALL.len()];
                peer.seal(function, 0, &plaintext, &mut sealed)
                    .expect("seals");
                let before = session.stats();
                let voices_before = voices.len();
                session
                    .handle_datagram(target(from, tcp), &sealed, now)
                    .expect("no seal error");
                let after = session.stats();
                drain(&mut session, &mut voices);
                // A bind reply or STUN look-alike from a relay is not handed to the opener.
                if after.received_packets == before.received_packets {
                    continue;
                }
                assert_eq!(
                    after.dropped_auth, before.dropped_auth,
                    "fresh datagram did not open"
                );
                assert_eq!(
                    after.dropped_replay, before.dropped_replay,
                    "fresh datagram taken as replay"
                );
                if function == Function::Data && plaintext.len() >= 2 {
                    assert_eq!(voices.len(), voices_before + 1, "voice lost");
                    assert_eq!(voices.last().map(Vec::as_slice), Some(&plaintext[2..]));
                }
            }
            Op::BindReply {
                relay,
                status,
                token,
            } => {
                let token = if token {
                    input.own_relay.map(|(t, _)| t).unwrap_or_default()
                } else {
                    [0xee; 16]
                };
                let status = match status % 4 {
                    0 => BindStatus::Bound,
                    1 => BindStatus::UnknownToken,
                    2 => BindStatus::OverQuota,
                    _ => BindStatus::Cookie,
                };
                let reply =
                    encode_bind_reply(&encode_bind(&token, &[0; 16], 1, 0), status, &[0x5c; 16]);
                session
                    .handle_datagram(Target::Udp(addr(relay)), &reply, now)
                    .expect("no seal error");
            }
            Op::Tick { ms } => {
                now += u64::from(ms);
                session.handle_timeout(now).expect("no seal error");
                if let Some(due) = session.poll_timeout() {
                    assert!(
                        due <= now.saturating_add(86_400_000),
                        "timer far in the future"
                    );
                }
            }
            Op::Voice { payload } => {
                session.send_voice(&payload, now).expect("no seal error");
            }
        }
        drain(&mut session, &mut voices);
    }
});
