//! Relay migration in memory on a virtual clock: two [`CallSession`]s with
//! no direct path between them (a port-restricted x symmetric call) relay
//! through supernode 1; supernode 1 dies; both sides ask to migrate, a
//! model shell allocates on supernode 2 (after the time a rejoin, the
//! resume signal and the allocation take) and pushes the other side to the
//! peer, and media resumes there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use natter_proto::path::{PathKind, Target};
use natter_proto::relay::{self, BindStatus, RelayLeg, TOKEN_LEN};
use natter_proto::session::{CallSession, Event, MEDIA_TIMEOUT_MS};

const SN: [SocketAddr; 2] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 443),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 443),
];

/// One supernode's relay with the call's allocation (if any).
struct Relay {
    up: bool,
    tokens: Option<[[u8; TOKEN_LEN]; 2]>,
    bound: [Option<usize>; 2],
}

/// What the model shell must do at a given time.
enum Action {
    /// Side `side` got its allocation on supernode `sn` (its own request,
    /// or pushed to it by that supernode).
    OwnRelay { side: usize, sn: usize },
    /// Side `side` rejoined through supernode 2 over QUIC: UDP works.
    UdpWorks { side: usize },
}

struct Net {
    sessions: [CallSession; 2],
    relays: [Relay; 2],
    /// Whether side `i`'s peer process is still there.
    alive: [bool; 2],
    /// What the shell does, and when (ms): the delay a rejoin, the resume
    /// signal and the allocation take.
    shell_delay_ms: u64,
    /// When the model shell, asked to migrate, has rejoined over QUIC and
    /// tells the session UDP works (None: it never tells).
    udp_works_after_ms: Option<u64>,
    pending: Vec<(u64, Action)>,
    /// When each side was told to open a TLS relay leg.
    tcp_opened: [Vec<u64>; 2],
    migrate_asked: [Vec<(u64, u32, Vec<Target>)>; 2],
    voice: [Vec<u64>; 2],
    silent: [Option<u64>; 2],
}

impl Net {
    fn new() -> Self {
        let mut sessions = common::call_sessions([false, false], true);
        // Both joined through supernode 1: one allocation, one side each.
        let tokens = [[0xA1; TOKEN_LEN], [0xB2; TOKEN_LEN]];
        for (i, s) in sessions.iter_mut().enumerate() {
            let leg = RelayLeg {
                addr: SN[0],
                token: tokens[i],
            };
            s.add_own_relay(leg, None, 0);
        }
        Net {
            sessions,
            relays: [
                Relay {
                    up: true,
                    tokens: Some(tokens),
                    bound: [None, None],
                },
                Relay {
                    up: true,
                    tokens: None,
                    bound: [None, None],
                },
            ],
            alive: [true, true],
            shell_delay_ms: 500,
            udp_works_after_ms: None,
            pending: Vec::new(),
            tcp_opened: [Vec::new(), Vec::new()],
            migrate_asked: [Vec::new(), Vec::new()],
            voice: [Vec::new(), Vec::new()],
            silent: [None, None],
        }
    }

    fn run(&mut self, from: u64, to: u64) {
        for now in (from..to).step_by(10) {
            self.act(now);
            for i in 0..2 {
                if !self.alive[i] {
                    continue;
                }
                self.sessions[i].handle_timeout(now).unwrap();
                if now % 20 == 0 {
                    self.sessions[i].send_voice(&[0x5a; 40], now).unwrap();
                }
            }
            self.pump(now);
        }
    }

    /// The shell's delayed actions that are due.
    fn act(&mut self, now: u64) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.pending = later;
        for (_, action) in due {
            match action {
                Action::OwnRelay { side, sn } => {
                    let token = self.relays[sn].tokens.unwrap()[side];
                    let leg = RelayLeg {
                        addr: SN[sn],
                        token,
                    };
                    self.sessions[side].add_own_relay(leg, None, now);
                }
                Action::UdpWorks { side } => self.sessions[side].handle_udp_works(now),
            }
        }
    }

    /// A migration asked by `side`: the model shell rejoins (supernode 2),
    /// sends the resume signal and allocates there; supernode 2 grants the
    /// requester its side and pushes the other side to the peer (once per
    /// call: a second request gets the same allocation).
    fn migrate(&mut self, side: usize, now: u64) {
        if !self.relays[1].up {
            return;
        }
        let at = now + self.shell_delay_ms;
        if let Some(after) = self.udp_works_after_ms {
            self.pending.push((now + after, Action::UdpWorks { side }));
        }
        if self.relays[1].tokens.is_none() {
            self.relays[1].tokens = Some([[0xC3; TOKEN_LEN], [0xD4; TOKEN_LEN]]);
            if self.alive[1 - side] {
                self.pending.push((
                    at + 20,
                    Action::OwnRelay {
                        side: 1 - side,
                        sn: 1,
                    },
                ));
            }
        }
        self.pending.push((at, Action::OwnRelay { side, sn: 1 }));
    }

    fn pump(&mut self, now: u64) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                if !self.alive[i] {
                    continue;
                }
                while let Some(e) = self.sessions[i].poll_event() {
                    moved = true;
                    match e {
                        Event::Voice { .. } => self.voice[i].push(now),
                        Event::MigrateRelay {
                            attempt,
                            dead_relays,
                        } => {
                            self.migrate_asked[i].push((now, attempt, dead_relays));
                            self.migrate(i, now);
                        }
                        Event::PeerSilent => {
                            self.silent[i].get_or_insert(now);
                        }
                        Event::OpenTcpLeg(_) => self.tcp_opened[i].push(now),
                        Event::PathChanged { .. } => {}
                    }
                }
                while let Some(t) = self.sessions[i].poll_transmit() {
                    moved = true;
                    self.deliver(i, t.to, &t.bytes, now);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// No direct path: only the relays carry anything.
    fn deliver(&mut self, i: usize, to: Target, bytes: &[u8], now: u64) {
        let Target::Udp(addr) = to else { return };
        let Some(sn) = SN.iter().position(|a| *a == addr) else {
            return;
        };
        let relay = &mut self.relays[sn];
        if !relay.up {
            return;
        }
        if let Ok(bind) = relay::decode_bind(bytes) {
            let Some(side) = relay
                .tokens
                .and_then(|t| t.iter().position(|t| *t == bind.token))
            else {
                return;
            };
            relay.bound[side] = Some(i);
            let reply = relay::encode_bind_reply(bytes, BindStatus::Bound, &bind.cookie);
            self.sessions[i]
                .handle_datagram(Target::Udp(SN[sn]), &reply, now)
                .unwrap();
            return;
        }
        let Some(side) = relay.bound.iter().position(|b| *b == Some(i)) else {
            return;
        };
        if let Some(j) = relay.bound[1 - side]
            && self.alive[j]
        {
            self.sessions[j]
                .handle_datagram(Target::Udp(SN[sn]), bytes, now)
                .unwrap();
        }
    }

    fn voice_between(&self, i: usize, from: u64, to: u64) -> usize {
        self.voice[i]
            .iter()
            .filter(|t| (from..to).contains(*t))
            .count()
    }

    /// The first voice frame side `i` got at or after `from`.
    fn voice_after(&self, i: usize, from: u64) -> Option<u64> {
        self.voice[i].iter().copied().find(|t| *t >= from)
    }
}

#[test]
fn a_relayed_call_whose_relay_dies_moves_to_another_within_two_seconds() {
    let mut net = Net::new();
    net.run(0, 3_000);
    for i in 0..2 {
        assert_eq!(
            net.sessions[i].current(),
            Some((Target::Udp(SN[0]), PathKind::Relayed))
        );
        assert!(net.voice_between(i, 2_000, 3_000) >= 48);
    }
    assert!(net.migrate_asked.iter().all(Vec::is_empty));

    // Supernode 1 dies (SIGKILL): its relay forwards nothing any more.
    let killed = 3_000;
    net.relays[0].up = false;
    net.run(killed, 8_000);
    for i in 0..2 {
        let (asked_at, attempt, dead) = &net.migrate_asked[i][0];
        // Noticed once the relay that carried media went quiet (400 ms),
        // plus the migration delay.
        assert!(
            (killed + 400..=killed + 600).contains(asked_at),
            "side {i} asked at {asked_at}"
        );
        assert_eq!(*attempt, 1);
        assert_eq!(dead, &[Target::Udp(SN[0])], "the dead relay is named");
        // Asked again every 250 ms until media came back (the model shell
        // takes 500 ms): three requests, the first of which did it.
        let asked = net.migrate_asked[i].len();
        assert_eq!(asked, 3, "{:?}", net.migrate_asked[i]);
        let back = net.voice_after(i, killed + 20).expect("voice came back");
        let last_before = net.voice[i].iter().copied().filter(|t| *t < back).max();
        let gap = back - last_before.unwrap();
        // 400 ms to notice, 100 ms before asking, the shell's 500 ms, the
        // bind round trips.
        assert!((1_000..1_500).contains(&gap), "side {i}: gap {gap} ms");
        assert_eq!(net.sessions[i].stats().max_media_gap_ms, gap);
        assert_eq!(
            net.sessions[i].current(),
            Some((Target::Udp(SN[1]), PathKind::Relayed))
        );
        assert!(net.voice_between(i, 6_000, 8_000) >= 98);
        let losses = net.sessions[i].path_losses();
        assert_eq!(losses.len(), 1, "{losses:?}");
        assert!(losses[0].back_ms.is_some());
        assert_eq!(losses[0].attempts as usize, asked);
    }
}

#[test]
fn a_slow_peer_is_asked_again_until_the_relay_works() {
    // The new supernode routes the resume signal only once the peer
    // rejoined: model a shell that needs 1.5 s, longer than the retry.
    let mut net = Net::new();
    net.shell_delay_ms = 1_500;
    net.run(0, 3_000);
    net.relays[0].up = false;
    net.run(3_000, 9_000);
    for i in 0..2 {
        let asked = &net.migrate_asked[i];
        let attempts: Vec<u32> = asked.iter().map(|a| a.1).collect();
        // Asked every 250 ms until the first request's relay works, 1.5 s
        // on: 1, 2, ... 7, and no more.
        let expected: Vec<u32> = (1..=attempts.len() as u32).collect();
        assert_eq!(attempts, expected, "side {i}");
        assert!((6..=8).contains(&attempts.len()), "side {i}: {attempts:?}");
        for pair in asked.windows(2) {
            assert_eq!(pair[1].0 - pair[0].0, 250, "side {i}: {asked:?}");
        }
        assert_eq!(
            net.sessions[i].current(),
            Some((Target::Udp(SN[1]), PathKind::Relayed))
        );
        assert!(net.voice_between(i, 7_000, 9_000) >= 98);
    }
}

#[test]
fn a_peer_that_is_gone_gets_a_bounded_number_of_requests_then_the_media_timeout() {
    let mut net = Net::new();
    net.run(0, 3_000);
    // B's process dies, and with it every path.
    net.alive[1] = false;
    net.run(3_000, 3_000 + MEDIA_TIMEOUT_MS + 1_000);
    let asked = &net.migrate_asked[0];
    assert!(!asked.is_empty());
    assert!(
        asked.len() <= natter_proto::migration::MAX_MIGRATE_ATTEMPTS as usize,
        "{asked:?}"
    );
    // Every request ends with the call, when the peer is silent for the
    // media timeout.
    let silent = net.silent[0].expect("peer silent");
    assert!((3_000 + MEDIA_TIMEOUT_MS - 100..=3_000 + MEDIA_TIMEOUT_MS + 100).contains(&silent));
}

#[test]
fn nothing_is_migrated_while_a_relay_is_alive() {
    // Both supernodes allocated (the parties joined through different
    // ones): supernode 1 dying leaves supernode 2's relay, which takes over
    // by itself.
    let mut net = Net::new();
    net.relays[1].tokens = Some([[0xC3; TOKEN_LEN], [0xD4; TOKEN_LEN]]);
    for i in 0..2 {
        let leg = RelayLeg {
            addr: SN[1],
            token: net.relays[1].tokens.unwrap()[i],
        };
        net.sessions[i].add_own_relay(leg, None, 0);
    }
    net.run(0, 3_000);
    let first = net.sessions[0].current().unwrap().0;
    let dying = SN.iter().position(|a| Target::Udp(*a) == first).unwrap();
    net.relays[dying].up = false;
    net.run(3_000, 6_000);
    assert!(net.migrate_asked.iter().all(Vec::is_empty));
    for i in 0..2 {
        assert_eq!(
            net.sessions[i].current(),
            Some((Target::Udp(SN[1 - dying]), PathKind::Relayed))
        );
        assert!(net.voice_between(i, 4_000, 6_000) >= 98);
        assert!(net.sessions[i].stats().max_media_gap_ms < 1_000);
    }
}

/// Runs a call on supernode 1's relay to 3 s, kills supernode 1, runs on
/// to 8 s.
fn lose_relay_1_at_3_s(net: &mut Net) {
    net.run(0, 3_000);
    net.relays[0].up = false;
    net.run(3_000, 8_000);
}

/// Side `i` opened no TLS leg and carries media on supernode 2's UDP relay.
fn assert_moved_over_udp(net: &Net, i: usize) {
    assert!(
        net.tcp_opened[i].is_empty(),
        "side {i}: {:?}",
        net.tcp_opened[i]
    );
    assert_eq!(
        net.sessions[i].current(),
        Some((Target::Udp(SN[1]), PathKind::Relayed))
    );
}

/// Supernode 1's allocation also gave each side a TLS relay leg (the TCP
/// fallback's), and the model shell takes `shell_delay_ms` to move the call.
fn with_tls_legs(shell_delay_ms: u64, udp_works_after_ms: Option<u64>) -> Net {
    let mut net = Net::new();
    net.shell_delay_ms = shell_delay_ms;
    net.udp_works_after_ms = udp_works_after_ms;
    let tokens = net.relays[0].tokens.unwrap();
    for (i, s) in net.sessions.iter_mut().enumerate() {
        let leg = |port| RelayLeg {
            addr: SocketAddr::new(SN[0].ip(), port),
            token: tokens[i],
        };
        s.add_own_relay(leg(443), Some(leg(8443)), 0);
    }
    net
}

#[test]
fn a_migration_over_working_udp_does_not_fall_back_to_tcp() {
    // The rejoin over QUIC comes 300 ms after the request, the new relay
    // 1.3 s after it: media is silent for longer than the TCP fallback's
    // 1.5 s, but UDP evidently works, so the call stays on UDP (a TLS leg
    // binding the new relay's allocation would take the forwarding from the
    // UDP leg for good).
    let mut net = with_tls_legs(1_300, Some(300));
    lose_relay_1_at_3_s(&mut net);
    for i in 0..2 {
        assert_moved_over_udp(&net, i);
        let gap = net.sessions[i].stats().max_media_gap_ms;
        assert!((1_500..2_000).contains(&gap), "side {i}: gap {gap} ms");
        assert!(net.voice_between(i, 6_000, 8_000) >= 98);
    }
}

#[test]
fn a_relays_bind_confirmation_shows_udp_works() {
    // No word from the shell, but the new relay confirms the binds before
    // the silence reaches 1.5 s: from then on the fallback waits again.
    let mut net = with_tls_legs(900, None);
    lose_relay_1_at_3_s(&mut net);
    for i in 0..2 {
        assert_moved_over_udp(&net, i);
    }
}

#[test]
fn without_a_sign_of_udp_a_long_silence_still_opens_the_tls_legs() {
    // The same loss with no evidence before 1.5 s (UDP itself may be
    // blocked): the fallback opens the legs, as the UDP-blocked call needs.
    let mut net = with_tls_legs(1_300, None);
    lose_relay_1_at_3_s(&mut net);
    for i in 0..2 {
        let opened = net.tcp_opened[i].first().copied().expect("TLS legs opened");
        assert!(
            (3_000 + 1_400..3_000 + 1_600).contains(&opened),
            "side {i}: opened at {opened}"
        );
    }
}
