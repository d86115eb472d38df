//! The traversal logic across every pairing of NAT behaviours, in memory and
//! deterministic: two [`PathManager`]s behind simulated NATs (RFC 4787
//! mapping and filtering), a STUN reflector and a relay on public addresses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

use natter_proto::path::{PathConfig, PathKind, PathManager, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nat {
    Open,
    FullCone,
    AddressRestricted,
    PortRestricted,
    Symmetric,
}

const ALL: [Nat; 5] = [
    Nat::Open,
    Nat::FullCone,
    Nat::AddressRestricted,
    Nat::PortRestricted,
    Nat::Symmetric,
];

/// One side: a host behind a router.
struct Side {
    nat: Nat,
    host: SocketAddr,
    public_ip: Ipv4Addr,
    /// (destination if mapping is per destination) -> public port
    mappings: HashMap<Option<SocketAddr>, u16>,
    /// Remote endpoints this host has sent to (for filtering).
    sent_to: HashSet<SocketAddr>,
    next_port: u16,
}

impl Side {
    fn new(nat: Nat, n: u8) -> Self {
        let host = if nat == Nat::Open {
            SocketAddr::from(([203, 0, 113, n], 5000))
        } else {
            SocketAddr::from(([10, n, 0, 2], 5000))
        };
        Self {
            nat,
            host,
            public_ip: Ipv4Addr::new(203, 0, 113, n),
            mappings: HashMap::new(),
            sent_to: HashSet::new(),
            // Symmetric NATs pick ports at random: model as far-apart jumps.
            next_port: 40_000 + u16::from(n) * 97,
        }
    }

    /// The public source address of a packet to `dst`.
    fn outbound(&mut self, dst: SocketAddr) -> SocketAddr {
        self.sent_to.insert(dst);
        if self.nat == Nat::Open {
            return self.host;
        }
        let key = (self.nat == Nat::Symmetric).then_some(dst);
        let port = match self.mappings.get(&key) {
            Some(p) => *p,
            None => {
                let p = if self.nat == Nat::Symmetric {
                    self.next_port = self.next_port.wrapping_add(7919);
                    self.next_port
                } else {
                    self.host.port() // port-preserving cone NATs
                };
                self.mappings.insert(key, p);
                p
            }
        };
        SocketAddr::from((self.public_ip, port))
    }

    /// Whether a packet from `src` to public `dst` gets in.
    fn inbound(&self, src: SocketAddr, dst: SocketAddr) -> bool {
        if self.nat == Nat::Open {
            return dst == self.host;
        }
        if dst.ip() != self.public_ip || !self.mappings.values().any(|p| *p == dst.port()) {
            return false;
        }
        match self.nat {
            Nat::Open | Nat::FullCone => true,
            Nat::AddressRestricted => self.sent_to.iter().any(|s| s.ip() == src.ip()),
            Nat::PortRestricted | Nat::Symmetric => self.sent_to.contains(&src),
        }
    }
}

const REFLECTOR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)), 3478);
const RELAY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20)), 3478);

/// Runs a call between a caller behind `a` and a callee behind `b` for 3 s
/// of virtual time; returns both sides' final path and the first media path.
fn call(a: Nat, b: Nat) -> [(PathKind, PathKind); 2] {
    let mut sides = [Side::new(a, 1), Side::new(b, 2)];
    // Server-reflexive candidates from the reflector.
    let srflx = [sides[0].outbound(REFLECTOR), sides[1].outbound(REFLECTOR)];
    // Both bind to the relay; it knows their public addresses.
    let relay_bound = [sides[0].outbound(RELAY), sides[1].outbound(RELAY)];
    let mut paths = [
        PathManager::new(PathConfig::default(), 0),
        PathManager::new(PathConfig::default(), 0),
    ];
    for i in 0..2 {
        let peer = 1 - i;
        paths[i].add_target(Target::Udp(sides[peer].host), PathKind::Direct, 0);
        if srflx[peer] != sides[peer].host {
            paths[i].add_target(Target::Udp(srflx[peer]), PathKind::HolePunched, 0);
        }
        paths[i].add_target(Target::Udp(RELAY), PathKind::Relayed, 0);
    }
    let first = [
        paths[0].current(0).unwrap().1,
        paths[1].current(0).unwrap().1,
    ];

    // A datagram from side `i` to `dst`: where does it arrive, and from what
    // address does the receiver see it?
    let deliver = |sides: &mut [Side; 2], i: usize, dst: SocketAddr| -> Option<SocketAddr> {
        let peer = 1 - i;
        if dst == RELAY {
            // The relay forwards to the other side's bound address.
            let from_public = sides[i].outbound(RELAY);
            if from_public != relay_bound[i] {
                return None;
            }
            return sides[peer]
                .inbound(RELAY, relay_bound[peer])
                .then_some(RELAY);
        }
        let src = sides[i].outbound(dst);
        sides[peer].inbound(src, dst).then_some(src)
    };

    for now in (0..3_000).step_by(10) {
        for i in 0..2 {
            for dst in paths[i].poll_probes(now) {
                // Probe i -> peer.
                let Some(seen_from) = deliver(&mut sides, i, dst.addr()) else {
                    continue;
                };
                let peer = 1 - i;
                paths[peer].handle_authenticated(Target::Udp(seen_from), now);
                // The peer answers the address it heard from.
                let reply_to = seen_from;
                if let Some(reply_from) = deliver(&mut sides, peer, reply_to) {
                    // The reply is matched to the probe's target.
                    let target = if reply_to == RELAY { RELAY } else { reply_from };
                    paths[i].handle_probe_reply(Target::Udp(target), 1, now);
                }
            }
            // Media keeps the chosen path alive.
            if let Some((dst, _)) = paths[i].current(now)
                && let Some(seen_from) = deliver(&mut sides, i, dst.addr())
            {
                paths[1 - i].handle_authenticated(Target::Udp(seen_from), now);
            }
        }
    }
    [
        (first[0], paths[0].current(3_000).unwrap().1),
        (first[1], paths[1].current(3_000).unwrap().1),
    ]
}

/// Theory (docs/ARCHITECTURE.md, NAT-LAB.md): port-restricted x symmetric and
/// symmetric x symmetric need the relay; everything else punches through.
fn expected(a: Nat, b: Nat) -> PathKind {
    use Nat::*;
    match (a, b) {
        (Open, Open) => PathKind::Direct,
        (PortRestricted, Symmetric) | (Symmetric, PortRestricted) | (Symmetric, Symmetric) => {
            PathKind::Relayed
        }
        _ => PathKind::HolePunched,
    }
}

#[test]
fn every_pairing_ends_on_the_path_theory_allows() {
    let mut table = String::new();
    let mut wrong = Vec::new();
    for a in ALL {
        for b in ALL {
            let [(first_a, end_a), (_, end_b)] = call(a, b);
            assert_eq!(
                first_a,
                PathKind::Relayed,
                "media starts on the relay: {a:?} x {b:?}"
            );
            let want = expected(a, b);
            // One side may see the other's public host address (Direct) where
            // the other sees a punched hole; both must agree on relay or not.
            let ok = match want {
                PathKind::Relayed => end_a == PathKind::Relayed && end_b == PathKind::Relayed,
                PathKind::Direct => end_a == PathKind::Direct && end_b == PathKind::Direct,
                _ => end_a != PathKind::Relayed && end_b != PathKind::Relayed,
            };
            table.push_str(&format!(
                "{a:?} x {b:?}: {end_a:?} / {end_b:?} (want {want:?})\n"
            ));
            if !ok {
                wrong.push(format!("{a:?} x {b:?}"));
            }
        }
    }
    eprintln!("{table}");
    assert!(wrong.is_empty(), "wrong cells {wrong:?}\n{table}");
}

// ---------------------------------------------------------------------------
// Call sessions: the TCP fallback and relay binds, two [`CallSession`]s on a
// virtual network with one supernode whose UDP relay and TLS listener share
// one ip:port ("everything on 443").
// ---------------------------------------------------------------------------

mod sessions {
    use std::net::SocketAddr;

    use natter_proto::handshake::KeySchedule;
    use natter_proto::messages::{Candidate, CandidateKind, TransportKind};
    use natter_proto::path::{PathKind, Target};
    use natter_proto::relay::{self, BindStatus, RelayLeg, TOKEN_LEN};
    use natter_proto::session::{
        CallSession, Event, SessionConfig, SessionSetup, UDP_SILENCE_FOR_TCP_MS,
    };

    const HOST: [SocketAddr; 2] = [
        SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 1)),
            5000,
        ),
        SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 2)),
            5000,
        ),
    ];
    /// The supernode: UDP relay and TLS listener on the same ip:port.
    const SN: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 20)),
        443,
    );
    const TOKENS: [[u8; TOKEN_LEN]; 2] = [[0xA1; TOKEN_LEN], [0xB2; TOKEN_LEN]];

    /// A relay endpoint: a side's UDP address or its TLS leg.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Peer {
        Udp(SocketAddr),
        Tcp(usize),
    }

    /// What one side sent or got, with the virtual time.
    #[derive(Debug, Default)]
    struct Log {
        sent: Vec<(u64, Target, Vec<u8>)>,
        legs_opened: Vec<(u64, RelayLeg)>,
        voice: Vec<u64>,
        paths: Vec<(u64, Target, PathKind)>,
    }

    /// The virtual network.
    struct Net {
        /// Whether side i's UDP gets anywhere (false: its firewall blocks UDP).
        udp_ok: [bool; 2],
        /// Whether the hosts reach each other directly.
        direct_ok: bool,
        /// Whether the relay's UDP port answers.
        relay_udp_up: bool,
        /// The relay's allocation: which endpoint each side is bound to.
        bound: [Option<Peer>; 2],
        log: [Log; 2],
        sessions: [CallSession; 2],
    }

    fn udp(kind: CandidateKind, addr: SocketAddr, token: &[u8]) -> Candidate {
        Candidate {
            kind: kind as i32,
            transport: TransportKind::Udp as i32,
            addr: Some(addr.into()),
            priority: 1,
            relay_token: token.to_vec(),
        }
    }

    impl Net {
        /// A calls B. Both joined through the same supernode: A holds the
        /// allocation (own relay, UDP and TLS), B gets A's relay candidates
        /// with the peer token.
        fn new(udp_blocked: [bool; 2]) -> Self {
            let [mut a, mut b] = crate::common::call_sessions(udp_blocked, false);
            let mut b_candidates = Vec::new();
            if !udp_blocked[1] {
                b_candidates.push(udp(CandidateKind::Host, HOST[1], &[]));
            }
            a.add_candidates(&b_candidates, 0);
            let own = RelayLeg {
                addr: SN,
                token: TOKENS[0],
            };
            a.add_own_relay(own, Some(own), 0);
            let mut a_candidates = Vec::new();
            if !udp_blocked[0] {
                a_candidates.push(udp(CandidateKind::Host, HOST[0], &[]));
            }
            a_candidates.push(udp(CandidateKind::Relay, SN, &TOKENS[1]));
            a_candidates.push(Candidate {
                transport: TransportKind::Tcp as i32,
                ..udp(CandidateKind::Relay, SN, &TOKENS[1])
            });
            b.add_candidates(&a_candidates, 0);
            Net {
                udp_ok: [!udp_blocked[0], !udp_blocked[1]],
                direct_ok: true,
                relay_udp_up: true,
                bound: [None, None],
                log: [Log::default(), Log::default()],
                sessions: [a, b],
            }
        }

        /// Runs from `from` to `to` (ms, 10 ms steps): every step each side
        /// handles its timeout, every 20 ms it sends a voice frame.
        fn run(&mut self, from: u64, to: u64) {
            for now in (from..to).step_by(10) {
                for i in 0..2 {
                    self.sessions[i].handle_timeout(now).unwrap();
                    if now % 20 == 0 {
                        self.sessions[i].send_voice(&[0x5a; 40], now).unwrap();
                    }
                }
                self.pump(now);
            }
        }

        /// Delivers everything queued, until nothing moves.
        fn pump(&mut self, now: u64) {
            loop {
                let mut moved = false;
                for i in 0..2 {
                    while let Some(e) = self.sessions[i].poll_event() {
                        moved = true;
                        match e {
                            Event::OpenTcpLeg(leg) => {
                                assert_eq!(leg.addr, SN);
                                self.log[i].legs_opened.push((now, leg));
                                // The leg task binds as soon as it connects.
                                let bind = relay::encode_leg_bind(&leg.token, 1);
                                self.at_relay(Peer::Tcp(i), &bind, now);
                            }
                            Event::Voice { payload, .. } => {
                                assert_eq!(payload, [0x5a; 40]);
                                self.log[i].voice.push(now);
                            }
                            Event::PathChanged { to, kind } => {
                                self.log[i].paths.push((now, to, kind));
                            }
                            Event::PeerSilent | Event::MigrateRelay { .. } => {}
                        }
                    }
                    while let Some(t) = self.sessions[i].poll_transmit() {
                        moved = true;
                        self.log[i].sent.push((now, t.to, t.bytes.clone()));
                        self.deliver(i, t.to, &t.bytes, now);
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        fn deliver(&mut self, i: usize, to: Target, bytes: &[u8], now: u64) {
            let peer = 1 - i;
            match to {
                Target::Udp(addr) if !self.udp_ok[i] => {
                    panic!("side {i} sent UDP to {addr} with UDP blocked")
                }
                Target::Udp(SN) => {
                    if self.relay_udp_up {
                        self.at_relay(Peer::Udp(HOST[i]), bytes, now);
                    }
                }
                Target::Udp(addr) => {
                    if addr == HOST[peer] && self.direct_ok && self.udp_ok[peer] {
                        self.sessions[peer]
                            .handle_datagram(Target::Udp(HOST[i]), bytes, now)
                            .unwrap();
                    }
                }
                Target::TcpLeg(addr) => {
                    assert_eq!(addr, SN);
                    assert!(
                        self.log[i].legs_opened.iter().any(|(_, l)| l.addr == addr),
                        "side {i} sent on a leg it was never told to open"
                    );
                    self.at_relay(Peer::Tcp(i), bytes, now);
                }
            }
        }

        /// The supernode's relay (latest bind of a side wins, whatever its
        /// transport, as in supernode/src/relay.rs).
        fn at_relay(&mut self, from: Peer, bytes: &[u8], now: u64) {
            if let Ok(bind) = relay::decode_bind(bytes) {
                let Some(side) = TOKENS.iter().position(|t| *t == bind.token) else {
                    return;
                };
                self.bound[side] = Some(from);
                if let Peer::Udp(_) = from {
                    // (This model relay takes any cookie; the real one's
                    // round trip is tested in supernode/tests/relay.rs.)
                    let reply = relay::encode_bind_reply(bytes, BindStatus::Bound, &bind.cookie);
                    self.relay_to(from, &reply, now);
                } // a leg's bind reply is read by the leg task itself
                return;
            }
            let Some(side) = self.bound.iter().position(|b| *b == Some(from)) else {
                return; // unbound: dropped
            };
            if let Some(to) = self.bound[1 - side] {
                self.relay_to(to, bytes, now);
            }
        }

        fn relay_to(&mut self, to: Peer, bytes: &[u8], now: u64) {
            match to {
                Peer::Udp(addr) => {
                    let j = HOST.iter().position(|h| *h == addr).unwrap();
                    if self.udp_ok[j] && self.relay_udp_up {
                        self.sessions[j]
                            .handle_datagram(Target::Udp(SN), bytes, now)
                            .unwrap();
                    }
                }
                Peer::Tcp(j) => self.sessions[j]
                    .handle_datagram(Target::TcpLeg(SN), bytes, now)
                    .unwrap(),
            }
        }

        fn current(&self, i: usize) -> Option<(Target, PathKind)> {
            self.sessions[i].current()
        }

        /// Voice frames side `i` got in `[from, to)`.
        fn voice_between(&self, i: usize, from: u64, to: u64) -> usize {
            self.log[i]
                .voice
                .iter()
                .filter(|t| (from..to).contains(*t))
                .count()
        }

        /// Data datagrams (not probes) side `i` sent to `target` in `[from, to)`:
        /// voice is the only 40-byte payload, sealed to 40 + 2 + 19 bytes.
        fn voice_sent_to(&self, i: usize, target: Target, from: u64, to: u64) -> usize {
            self.log[i]
                .sent
                .iter()
                .filter(|(t, to_, b)| (from..to).contains(t) && *to_ == target && b.len() == 61)
                .count()
        }
    }

    #[test]
    fn a_session_over_tcp_opens_its_legs_at_once_and_never_sends_udp() {
        let mut net = Net::new([true, false]);
        net.run(0, 3_000);
        let a = &net.log[0];
        assert_eq!(
            a.legs_opened.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [0],
            "one leg, opened at the start"
        );
        assert!(
            a.sent
                .iter()
                .all(|(_, to, _)| matches!(to, Target::TcpLeg(_))),
            "a UDP-blocked side sends over its TLS leg only"
        );
        assert_eq!(
            net.current(0),
            Some((Target::TcpLeg(SN), PathKind::TcpRelay))
        );
        // B reaches the relay over UDP: it stays on UDP and opens no leg.
        assert_eq!(net.current(1), Some((Target::Udp(SN), PathKind::Relayed)));
        assert!(net.log[1].legs_opened.is_empty());
        assert!(!net.sessions[1].tcp_active());
        // Voice flows both ways at 50 frames/s once both sides are bound.
        assert!(
            net.voice_between(0, 1_000, 3_000) >= 95,
            "{}",
            net.voice_between(0, 1_000, 3_000)
        );
        assert!(
            net.voice_between(1, 1_000, 3_000) >= 95,
            "{}",
            net.voice_between(1, 1_000, 3_000)
        );
    }

    #[test]
    fn udp_going_silent_for_one_and_a_half_seconds_opens_the_legs() {
        let mut net = Net::new([false, false]);
        net.run(0, 3_000);
        assert!(net.log[0].legs_opened.is_empty(), "no leg while UDP works");
        assert_eq!(net.current(0).map(|c| c.1), Some(PathKind::Direct));
        // A's firewall starts dropping every UDP packet.
        net.udp_ok[0] = false;
        // (its UDP transmits now go nowhere: allow them)
        let blocked_at = 3_000;
        let mut opened = None;
        for now in (blocked_at..8_000).step_by(10) {
            // Deliver by hand so A's UDP datagrams are dropped, not refused.
            for i in 0..2 {
                net.sessions[i].handle_timeout(now).unwrap();
                if now % 20 == 0 {
                    net.sessions[i].send_voice(&[0x5a; 40], now).unwrap();
                }
            }
            drop_udp_of(&mut net, 0, now);
            if opened.is_none() && !net.log[0].legs_opened.is_empty() {
                opened = Some(now);
            }
        }
        let opened = opened.expect("legs opened");
        let silence = opened - blocked_at;
        assert!(
            (UDP_SILENCE_FOR_TCP_MS - 30..=UDP_SILENCE_FOR_TCP_MS + 10).contains(&silence),
            "legs opened {silence} ms after UDP went silent"
        );
        assert_eq!(
            net.current(0),
            Some((Target::TcpLeg(SN), PathKind::TcpRelay))
        );
        // B heard nothing over UDP either: it brings in its legs as well,
        // within the same window, and ends on a relay.
        let b_opened = net.log[1].legs_opened.first().expect("B's legs").0;
        assert!(
            (UDP_SILENCE_FOR_TCP_MS - 30..=UDP_SILENCE_FOR_TCP_MS + 10)
                .contains(&(b_opened - blocked_at)),
            "B opened its legs at {b_opened} ms"
        );
        // B's leg took over its side of the allocation, so its UDP relay
        // target goes quiet; it is dropped once dead (2.5 s after it was
        // last heard), and media flows both ways over the legs.
        assert_eq!(
            net.current(1),
            Some((Target::TcpLeg(SN), PathKind::TcpRelay))
        );
        assert!(
            net.voice_between(1, 7_000, 8_000) >= 45,
            "{}",
            net.voice_between(1, 7_000, 8_000)
        );
        assert!(
            net.voice_between(0, 7_000, 8_000) >= 45,
            "{}",
            net.voice_between(0, 7_000, 8_000)
        );
    }

    /// Like [`Net::pump`], but side `blocked`'s UDP datagrams vanish.
    fn drop_udp_of(net: &mut Net, blocked: usize, now: u64) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                while let Some(e) = net.sessions[i].poll_event() {
                    moved = true;
                    match e {
                        Event::OpenTcpLeg(leg) => {
                            net.log[i].legs_opened.push((now, leg));
                            let bind = relay::encode_leg_bind(&leg.token, 1);
                            net.at_relay(Peer::Tcp(i), &bind, now);
                        }
                        Event::Voice { .. } => net.log[i].voice.push(now),
                        Event::PathChanged { to, kind } => net.log[i].paths.push((now, to, kind)),
                        Event::PeerSilent | Event::MigrateRelay { .. } => {}
                    }
                }
                while let Some(t) = net.sessions[i].poll_transmit() {
                    moved = true;
                    net.log[i].sent.push((now, t.to, t.bytes.clone()));
                    if i == blocked && matches!(t.to, Target::Udp(_)) {
                        continue;
                    }
                    net.deliver(i, t.to, &t.bytes, now);
                }
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn a_tcp_relay_carries_media_only_while_no_udp_relay_is_alive() {
        // No direct path; A's UDP is blocked for the first 2 s.
        let mut net = Net::new([false, false]);
        net.direct_ok = false;
        for now in (0..2_000).step_by(10) {
            for i in 0..2 {
                net.sessions[i].handle_timeout(now).unwrap();
                if now % 20 == 0 {
                    net.sessions[i].send_voice(&[0x5a; 40], now).unwrap();
                }
            }
            drop_udp_of(&mut net, 0, now);
        }
        assert_eq!(net.log[0].legs_opened.len(), 1, "legs opened after 1.5 s");
        assert_eq!(
            net.current(0),
            Some((Target::TcpLeg(SN), PathKind::TcpRelay))
        );
        // The UDP relay never confirmed A's bind: it is no target (media
        // sent there would be lost); the TLS leg is.
        let targets = net.sessions[0].paths().targets();
        assert!(targets.iter().all(|t| t.target != Target::Udp(SN)));
        let tcp_relay = targets
            .iter()
            .find(|t| t.target == Target::TcpLeg(SN))
            .unwrap();
        assert_eq!(tcp_relay.kind, PathKind::TcpRelay);
        assert!(tcp_relay.confirmed());
        // UDP comes back: A's relay bind (retried every 200 ms) gets through,
        // the UDP relay answers, and media leaves the TLS leg.
        net.udp_ok[0] = true;
        net.run(2_000, 5_000);
        assert_eq!(net.current(0), Some((Target::Udp(SN), PathKind::Relayed)));
        let back = net.log[0]
            .paths
            .iter()
            .find(|(t, _, kind)| *t >= 2_000 && *kind == PathKind::Relayed)
            .map(|(t, _, _)| *t)
            .expect("back on the UDP relay");
        assert!(back < 2_500, "back on UDP at {back} ms");
        // The UDP relay and the TLS leg on the same ip:port are two targets.
        let targets = net.sessions[0].paths().targets();
        let udp_relay = targets
            .iter()
            .find(|t| t.target == Target::Udp(SN))
            .unwrap();
        assert_eq!(udp_relay.kind, PathKind::Relayed);
        assert_eq!(
            net.voice_sent_to(0, Target::TcpLeg(SN), back + 10, 5_000),
            0
        );
        assert!(net.voice_sent_to(0, Target::Udp(SN), back, 5_000) >= 100);
        assert!(net.voice_between(1, 3_000, 5_000) >= 95);
    }

    /// Bind datagrams side `i` sent to the relay over UDP, with their times.
    fn binds_sent(net: &Net, i: usize) -> Vec<u64> {
        net.log[i]
            .sent
            .iter()
            .filter(|(_, to, b)| *to == Target::Udp(SN) && relay::decode_bind(b).is_ok())
            .map(|(t, _, _)| *t)
            .collect()
    }

    #[test]
    fn relay_binds_are_resent_until_confirmed_then_refreshed() {
        let mut net = Net::new([false, false]);
        net.relay_udp_up = false;
        net.run(0, 1_000);
        let leg = RelayLeg {
            addr: SN,
            token: TOKENS[0],
        };
        assert!(!net.sessions[0].binds().is_bound(&leg));
        assert_eq!(binds_sent(&net, 0), [0, 200, 400, 600, 800], "every 200 ms");
        net.relay_udp_up = true;
        net.run(1_000, 20_000);
        assert!(net.sessions[0].binds().is_bound(&leg));
        // Confirmed by the 1 000 ms bind; next one 15 s later.
        assert_eq!(binds_sent(&net, 0), [0, 200, 400, 600, 800, 1_000, 16_000]);
        assert_eq!(net.bound[0], Some(Peer::Udp(HOST[0])));
        // B bound the other side with the peer token it was given.
        assert_eq!(net.bound[1], Some(Peer::Udp(HOST[1])));
        assert_eq!(net.sessions[0].stats().binds_sent, 7);
    }

    #[test]
    fn bind_replies_and_voice_from_one_ip_port_are_told_apart_by_transport() {
        // A datagram arriving over the TLS leg from the supernode's address
        // is never taken for a UDP bind reply, and vice versa.
        let mut net = Net::new([false, false]);
        net.run(0, 500);
        let reply = relay::encode_bind_reply(
            &relay::encode_bind(&TOKENS[0], &[0; relay::COOKIE_LEN], 9, 0),
            BindStatus::UnknownToken,
            &[0; relay::COOKIE_LEN],
        );
        let before = net.sessions[0].stats();
        net.sessions[0]
            .handle_datagram(Target::TcpLeg(SN), &reply, 500)
            .unwrap();
        let after = net.sessions[0].stats();
        assert_eq!(after.received_packets, before.received_packets + 1);
        let dropped = |s: natter_proto::session::SessionStats| {
            s.dropped_auth + s.dropped_malformed + s.dropped_replay
        };
        assert_eq!(
            dropped(after),
            dropped(before) + 1,
            "over a leg it is just a datagram that does not open"
        );
        let leg = RelayLeg {
            addr: SN,
            token: TOKENS[0],
        };
        assert!(
            net.sessions[0].binds().is_bound(&leg),
            "the UDP bind stands"
        );
        // Over UDP the same bytes are the relay's answer: the bind is refused.
        net.sessions[0]
            .handle_datagram(Target::Udp(SN), &reply, 500)
            .unwrap();
        assert!(!net.sessions[0].binds().is_bound(&leg));
        assert_eq!(
            net.sessions[0].stats().received_packets,
            after.received_packets
        );
    }

    #[test]
    fn a_silent_peer_is_reported_once_after_the_media_timeout() {
        let mut net = Net::new([false, false]);
        net.run(0, 2_000);
        // B vanishes: nothing reaches A any more, over any transport.
        net.udp_ok[1] = false;
        net.relay_udp_up = false;
        let mut silent = Vec::new();
        for now in (2_000..14_000).step_by(10) {
            net.sessions[0].handle_timeout(now).unwrap();
            while let Some(e) = net.sessions[0].poll_event() {
                if e == Event::PeerSilent {
                    silent.push(now);
                }
            }
            while net.sessions[0].poll_transmit().is_some() {}
        }
        assert_eq!(silent.len(), 1, "{silent:?}");
        let timeout = SessionConfig::default().media_timeout_ms;
        assert!(
            (2_000 + timeout - 30..=2_000 + timeout).contains(&silent[0]),
            "reported at {} ms",
            silent[0]
        );
    }

    #[test]
    fn the_next_timeout_is_the_next_thing_due() {
        let mut net = Net::new([false, false]);
        // Before anything ran, every target and bind is due now.
        assert_eq!(net.sessions[0].poll_timeout(), Some(0));
        net.run(0, 10);
        // The relay confirmed the binds during that step: it is a target
        // now, due for its first probe at once ...
        assert_eq!(net.sessions[0].poll_timeout(), Some(0));
        net.sessions[0].handle_timeout(0).unwrap();
        while net.sessions[0].poll_transmit().is_some() {}
        // Then the next fast probe (50 ms) or bind retry (200 ms): the probe.
        assert_eq!(
            net.sessions[0].poll_timeout(),
            Some(SessionConfig::default().path.fast_probe_ms)
        );
        // A UDP-blocked side with nothing left to probe or bind waits for
        // the media timeout.
        let keys = KeySchedule::derive(&[1; 16], &[2; 32], &[3; 32]);
        let setup = SessionSetup {
            udp_blocked: true,
            behind_nat: false,
            start_index: 0,
            seed: 1,
        };
        let idle = CallSession::new(&keys.c2s, &keys.s2c, setup, SessionConfig::default(), 500);
        assert_eq!(
            idle.poll_timeout(),
            Some(500 + SessionConfig::default().media_timeout_ms)
        );
    }
}
