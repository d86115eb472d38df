//! The traversal logic across every pairing of NAT behaviours, in memory and
//! deterministic: two [`PathManager`]s behind simulated NATs (RFC 4787
//! mapping and filtering), a STUN reflector and a relay on public addresses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

use natter_proto::path::{PathConfig, PathKind, PathManager};

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
        paths[i].add_target(sides[peer].host, PathKind::Direct, 0);
        if srflx[peer] != sides[peer].host {
            paths[i].add_target(srflx[peer], PathKind::HolePunched, 0);
        }
        paths[i].add_target(RELAY, PathKind::Relayed, 0);
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
                let Some(seen_from) = deliver(&mut sides, i, dst) else {
                    continue;
                };
                let peer = 1 - i;
                paths[peer].handle_authenticated(seen_from, now);
                // The peer answers the address it heard from.
                let reply_to = seen_from;
                if let Some(reply_from) = deliver(&mut sides, peer, reply_to) {
                    // The reply is matched to the probe's target.
                    let target = if reply_to == RELAY { RELAY } else { reply_from };
                    paths[i].handle_probe_reply(target, 1, now);
                }
            }
            // Media keeps the chosen path alive.
            if let Some((dst, _)) = paths[i].current(now)
                && let Some(seen_from) = deliver(&mut sides, i, dst)
            {
                paths[1 - i].handle_authenticated(seen_from, now);
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
