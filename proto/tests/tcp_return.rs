//! A call that fell back to a TLS relay leg comes back to UDP once UDP
//! works, and goes back to the leg when UDP fails again, in memory on a
//! virtual clock: two [`CallSession`]s with no direct path relay through
//! one supernode, which (like the real relay, `supernode/src/relay.rs`)
//! forwards to each side's **last bind**, over UDP or over the side's TLS
//! leg. Side A's UDP is cut both ways on a schedule; B's always works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use natter_proto::path::{PathKind, Target};
use natter_proto::relay::{self, BindStatus, RelayLeg, TOKEN_LEN};
use natter_proto::session::{CallSession, Event, UDP_RETRY_MAX_MS, UDP_RETRY_ON_TCP_MS};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
const RELAY_UDP: SocketAddr = SocketAddr::new(IP, 443);
const RELAY_TCP: SocketAddr = SocketAddr::new(IP, 8443);
const TOKENS: [[u8; TOKEN_LEN]; 2] = [[0xA1; TOKEN_LEN], [0xB2; TOKEN_LEN]];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Udp,
    Tcp,
}

struct Net {
    sessions: [CallSession; 2],
    /// What each side of the allocation is bound to (the last bind wins).
    bound: [Option<Via>; 2],
    /// Whether each side's TLS leg is connected.
    leg_open: [bool; 2],
    /// Side A's UDP is cut (both ways) during these intervals (ms).
    a_udp_down: Vec<(u64, u64)>,
    now: u64,
    voice: [Vec<u64>; 2],
    /// Where A's media went, every 20 ms.
    a_path: Vec<(u64, Option<PathKind>)>,
}

impl Net {
    fn new(a_udp_down: Vec<(u64, u64)>) -> Self {
        let mut sessions = common::call_sessions([false, false], true);
        for (i, s) in sessions.iter_mut().enumerate() {
            let leg = |addr| RelayLeg {
                addr,
                token: TOKENS[i],
            };
            s.add_own_relay(leg(RELAY_UDP), Some(leg(RELAY_TCP)), 0);
        }
        Net {
            sessions,
            bound: [None, None],
            leg_open: [false, false],
            a_udp_down,
            now: 0,
            voice: [Vec::new(), Vec::new()],
            a_path: Vec::new(),
        }
    }

    fn udp_up(&self, side: usize) -> bool {
        side == 1
            || !self
                .a_udp_down
                .iter()
                .any(|(from, to)| (*from..*to).contains(&self.now))
    }

    fn run_to(&mut self, to: u64) {
        while self.now < to {
            let now = self.now;
            for i in 0..2 {
                self.sessions[i].handle_timeout(now).unwrap();
                if now.is_multiple_of(20) {
                    self.sessions[i].send_voice(&[0x5a; 40], now).unwrap();
                }
            }
            if now.is_multiple_of(20) {
                let kind = self.sessions[0].current().map(|(_, k)| k);
                self.a_path.push((now, kind));
            }
            self.pump();
            self.now += 10;
        }
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                while let Some(e) = self.sessions[i].poll_event() {
                    moved = true;
                    match e {
                        Event::Voice { .. } => self.voice[i].push(self.now),
                        // The shell's leg task connects and binds with its
                        // first record (here at once).
                        Event::OpenTcpLeg(leg) => {
                            assert_eq!(leg.addr, RELAY_TCP);
                            self.leg_open[i] = true;
                            self.bound[i] = Some(Via::Tcp);
                        }
                        Event::PathChanged { .. }
                        | Event::PeerSilent
                        | Event::MigrateRelay { .. } => {}
                    }
                }
                while let Some(t) = self.sessions[i].poll_transmit() {
                    moved = true;
                    self.deliver(i, t.to, &t.bytes);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// The relay: binds (last wins), then forwarding between bound sides.
    fn deliver(&mut self, i: usize, to: Target, bytes: &[u8]) {
        let via = match to {
            Target::Udp(a) if a == RELAY_UDP && self.udp_up(i) => Via::Udp,
            Target::TcpLeg(a) if a == RELAY_TCP && self.leg_open[i] => Via::Tcp,
            _ => return,
        };
        if let Ok(bind) = relay::decode_bind(bytes) {
            assert_eq!(bind.token, TOKENS[i], "a side binds its own token");
            self.bound[i] = Some(via);
            // A TLS leg's reply is the leg task's; a UDP reply goes back
            // to the session when A's UDP still works.
            if via == Via::Udp && self.udp_up(i) {
                let reply = relay::encode_bind_reply(bytes, BindStatus::Bound, &bind.cookie);
                let now = self.now;
                self.sessions[i]
                    .handle_datagram(Target::Udp(RELAY_UDP), &reply, now)
                    .unwrap();
            }
            return;
        }
        if self.bound[i] != Some(via) {
            return; // from an address the relay does not forward for
        }
        let j = 1 - i;
        let from = match self.bound[j] {
            Some(Via::Udp) if self.udp_up(j) => Target::Udp(RELAY_UDP),
            Some(Via::Tcp) if self.leg_open[j] => Target::TcpLeg(RELAY_TCP),
            _ => return,
        };
        let now = self.now;
        self.sessions[j].handle_datagram(from, bytes, now).unwrap();
    }

    fn voice_between(&self, i: usize, from: u64, to: u64) -> usize {
        self.voice[i]
            .iter()
            .filter(|t| (from..to).contains(*t))
            .count()
    }

    /// The longest time side `i` heard no voice within `from..to`.
    fn longest_gap(&self, i: usize, from: u64, to: u64) -> u64 {
        let mut last = from;
        let mut gap = 0;
        for t in self.voice[i].iter().filter(|t| (from..to).contains(*t)) {
            gap = gap.max(t - last);
            last = *t;
        }
        gap.max(to - last)
    }

    /// When A's media first went over `kind` at or after `from`.
    fn a_on(&self, kind: PathKind, from: u64) -> Option<u64> {
        self.a_path
            .iter()
            .find(|(t, k)| *t >= from && *k == Some(kind))
            .map(|(t, _)| *t)
    }
}

#[test]
fn a_call_that_fell_back_to_tcp_on_a_slow_start_comes_back_to_udp() {
    // A's UDP gets nothing through for the first 7 s (a slow start, longer
    // than the 25 first bind attempts of 200 ms): A falls back to its TLS
    // leg, then comes back to UDP once it works.
    let mut net = Net::new(vec![(0, 7_000)]);
    net.run_to(12_000);
    let on_tcp = net.a_on(PathKind::TcpRelay, 0).expect("A fell back to TCP");
    assert!((1_400..2_000).contains(&on_tcp), "A on TCP at {on_tcp} ms");
    let back = net.a_on(PathKind::Relayed, 3_000).expect("A back on UDP");
    // The first retry is due UDP_RETRY_ON_TCP_MS after the move to TCP
    // (UDP still down) and the second twice that later (UDP up).
    let second = on_tcp + 3 * UDP_RETRY_ON_TCP_MS;
    assert!(
        (7_000..=second + 200).contains(&back),
        "A back on UDP at {back} ms (on TCP at {on_tcp} ms)"
    );
    assert_eq!(
        net.sessions[0].current(),
        Some((Target::Udp(RELAY_UDP), PathKind::Relayed))
    );
    assert_eq!(
        net.bound[0],
        Some(Via::Udp),
        "the relay forwards A over UDP"
    );
    // The move itself loses at most a few frames, and the call goes on.
    for i in 0..2 {
        let gap = net.longest_gap(i, back - 500, 12_000);
        assert!(
            gap <= 100,
            "side {i}: {gap} ms without voice around the move"
        );
        assert!(net.voice_between(i, 10_000, 12_000) >= 98, "side {i}");
    }
    // And it stays on UDP: no flapping back to the leg.
    assert_eq!(net.a_on(PathKind::TcpRelay, back), None);
    assert!(net.sessions[0].stats().udp_retries >= 1);
}

#[test]
fn with_udp_blocked_for_good_the_call_stays_on_tcp_and_retries_rarely() {
    let mut net = Net::new(vec![(0, 60_000)]);
    net.run_to(60_000);
    let on_tcp = net.a_on(PathKind::TcpRelay, 0).expect("A fell back to TCP");
    assert_eq!(
        net.a_on(PathKind::Relayed, on_tcp),
        None,
        "A never leaves the leg"
    );
    for i in 0..2 {
        let gap = net.longest_gap(i, 3_000, 60_000);
        assert!(gap <= 100, "side {i}: {gap} ms without voice on TCP");
    }
    // Retries at 2, 4, 8 s and then every 16 s: a handful a minute.
    let retries = net.sessions[0].stats().udp_retries;
    let most = 3 + (60_000 - on_tcp) / UDP_RETRY_MAX_MS;
    assert!((3..=most).contains(&retries), "{retries} UDP retries");
    assert_eq!(
        net.sessions[0].stats().tcp_rebinds,
        0,
        "the leg never lost the forwarding"
    );
}

#[test]
fn udp_that_fails_again_after_the_move_back_hands_the_call_back_to_the_leg() {
    // A slow start, UDP working from 7 s to 15 s, then blocked again.
    let mut net = Net::new(vec![(0, 7_000), (15_000, 30_000)]);
    net.run_to(30_000);
    let back = net.a_on(PathKind::Relayed, 7_000).expect("A back on UDP");
    assert!(back < 15_000);
    let again = net
        .a_on(PathKind::TcpRelay, 15_000)
        .expect("A back on the leg");
    assert!(
        again < 15_000 + 2_000,
        "A back on the leg only at {again} ms"
    );
    assert_eq!(net.bound[0], Some(Via::Tcp), "the leg bound again");
    assert!(net.sessions[0].stats().tcp_rebinds >= 1);
    for i in 0..2 {
        let gap = net.longest_gap(i, 15_000, 30_000);
        assert!(gap < 2_000, "side {i}: {gap} ms without voice");
        assert!(net.voice_between(i, 25_000, 30_000) >= 245, "side {i}");
    }
    assert_eq!(
        net.sessions[0].current().map(|(t, _)| t),
        Some(Target::TcpLeg(RELAY_TCP))
    );
}
