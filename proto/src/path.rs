//! Choosing where a call's media goes (sans-IO): ICE-style connectivity
//! checks over SoM probes, relay first, direct as soon as it works, back to
//! the relay if the direct path dies.
//!
//! Each side has one UDP socket per call. Its peer's candidates (host,
//! server-reflexive, predicted, relay) become **targets**. Every target is
//! probed with a sealed SoM `Probe` (so checks are authenticated by the call
//! keys and cannot be forged); a `ProbeReply` from a target confirms it.
//! Sending probes to each other at the same time is what opens both NATs
//! (hole punching). Any authenticated datagram from an unknown address makes
//! that address a new target (peer-reflexive): this is how a cone NAT learns
//! the port a symmetric NAT picked for it.
//!
//! Selection, in order: the best confirmed and alive direct target (host
//! before server-reflexive / peer-reflexive / predicted, then lower RTT);
//! else a relay (confirmed or not: relays are the path that always works, so
//! media starts there without waiting); else the best unconfirmed host
//! candidate. A target is alive while something authenticated arrived from it
//! within `dead_after_ms`.

use std::fmt;
use std::net::SocketAddr;

/// Where a datagram of the call goes (or came from): the UDP socket towards
/// an address, or the TLS relay leg to a supernode's TCP listener. A UDP
/// relay and a TLS leg on the same ip:port ("everything on 443") are two
/// different targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Over the call's UDP socket to this address.
    Udp(SocketAddr),
    /// Over the TLS relay leg to this supernode listener.
    TcpLeg(SocketAddr),
}

impl Target {
    /// The address of the target (the peer, a relay or a supernode's TCP listener).
    pub fn addr(self) -> SocketAddr {
        match self {
            Target::Udp(a) | Target::TcpLeg(a) => a,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Udp(a) => write!(f, "udp {a}"),
            Target::TcpLeg(a) => write!(f, "tcp {a}"),
        }
    }
}

/// How media reaches the peer, for statistics and tests. Ordered from the
/// most direct to the least (`Ord`, [`PathKind::rank`]); serialized as its
/// report name ([`PathKind::name`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// To the peer's own address (both public, or same network).
    Direct,
    /// To an address a NAT opened (server-reflexive, peer-reflexive, predicted).
    HolePunched,
    /// Through a supernode's relay.
    Relayed,
    /// Through a supernode over TLS/TCP.
    TcpRelay,
}

impl PathKind {
    /// The name used in reports (`direct`, `hole-punched`, `relayed`, `tcp-relay`).
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::HolePunched => "hole-punched",
            PathKind::Relayed => "relayed",
            PathKind::TcpRelay => "tcp-relay",
        }
    }

    /// The kind a report name stands for (the inverse of [`PathKind::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            PathKind::Direct,
            PathKind::HolePunched,
            PathKind::Relayed,
            PathKind::TcpRelay,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// Whether media on this path goes through a supernode's relay.
    pub fn is_relayed(self) -> bool {
        matches!(self, PathKind::Relayed | PathKind::TcpRelay)
    }

    /// How direct the path is: direct 0, hole-punched 1, relayed 2, tcp-relay 3.
    pub fn rank(self) -> u8 {
        match self {
            PathKind::Direct => 0,
            PathKind::HolePunched => 1,
            PathKind::Relayed => 2,
            PathKind::TcpRelay => 3,
        }
    }
}

/// Timing of the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathConfig {
    /// Probe interval of an unconfirmed target during the first phase.
    pub fast_probe_ms: u64,
    /// How long a new target is probed fast.
    pub fast_phase_ms: u64,
    /// Probe interval afterwards, and of confirmed targets (keeps NAT
    /// bindings open and measures RTT).
    pub slow_probe_ms: u64,
    /// Stop probing a target never confirmed after this long.
    pub give_up_ms: u64,
    /// A target heard only through probes is dead after this much silence.
    pub dead_after_ms: u64,
    /// A target media arrives on (50 datagrams/s) is dead after this much
    /// silence: the call moves to the relay within a fraction of a second.
    pub media_dead_after_ms: u64,
    /// Most targets tracked (peer-reflexive ones are learned at run time).
    pub max_targets: usize,
    /// Most switches remembered.
    pub max_switches: usize,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            fast_probe_ms: 50,
            fast_phase_ms: 5_000,
            slow_probe_ms: 1_000,
            give_up_ms: 30_000,
            dead_after_ms: 2_500,
            media_dead_after_ms: 400,
            max_targets: 32,
            max_switches: 64,
        }
    }
}

/// One target media could be sent to, and what is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetState {
    pub target: Target,
    pub kind: PathKind,
    added_ms: u64,
    last_probe_ms: Option<u64>,
    confirmed_ms: Option<u64>,
    last_heard_ms: Option<u64>,
    last_media_ms: Option<u64>,
    pub rtt_ms: Option<u64>,
}

impl TargetState {
    fn alive(&self, now_ms: u64, c: &PathConfig) -> bool {
        // While media flows on it, a short silence means the path broke;
        // otherwise only probes (one a second) are expected.
        let carries_media = self
            .last_media_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= c.dead_after_ms);
        let window = if carries_media {
            c.media_dead_after_ms
        } else {
            c.dead_after_ms
        };
        self.confirmed_ms.is_some()
            && self
                .last_heard_ms
                .is_some_and(|t| now_ms.saturating_sub(t) <= window)
    }

    /// Whether a probe reply ever came back from it.
    pub fn confirmed(&self) -> bool {
        self.confirmed_ms.is_some()
    }
}

/// A change of path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// Milliseconds since the path manager started.
    pub at_ms: u64,
    pub kind: PathKind,
    pub to: Target,
}

/// The path state of one call.
#[derive(Debug, Clone)]
pub struct PathManager {
    config: PathConfig,
    start_ms: u64,
    targets: Vec<TargetState>,
    current: Option<(Target, PathKind)>,
    switches: Vec<Switch>,
    first_direct_ms: Option<u64>,
}

impl PathManager {
    /// A manager started at `now_ms`.
    pub fn new(config: PathConfig, now_ms: u64) -> Self {
        Self {
            config,
            start_ms: now_ms,
            targets: Vec::new(),
            current: None,
            switches: Vec::new(),
            first_direct_ms: None,
        }
    }

    /// Adds a peer candidate (ignored when already known or the table is full).
    pub fn add_target(&mut self, target: Target, kind: PathKind, now_ms: u64) {
        if self.targets.iter().any(|t| t.target == target)
            || self.targets.len() >= self.config.max_targets
        {
            return;
        }
        self.targets.push(TargetState {
            target,
            kind,
            added_ms: now_ms,
            last_probe_ms: None,
            confirmed_ms: None,
            last_heard_ms: None,
            last_media_ms: None,
            rtt_ms: None,
        });
    }

    /// Something authenticated arrived from `from`. Unknown UDP addresses
    /// become peer-reflexive targets (an unknown TLS leg, a relay reached
    /// over TCP).
    pub fn handle_authenticated(&mut self, from: Target, now_ms: u64) {
        if !self.targets.iter().any(|t| t.target == from) {
            let kind = match from {
                Target::Udp(_) => PathKind::HolePunched,
                Target::TcpLeg(_) => PathKind::TcpRelay,
            };
            self.add_target(from, kind, now_ms);
        }
        if let Some(t) = self.targets.iter_mut().find(|t| t.target == from) {
            t.last_heard_ms = Some(now_ms);
        }
    }

    /// A media datagram arrived from `from` (also counts as heard).
    pub fn handle_media(&mut self, from: Target, now_ms: u64) {
        self.handle_authenticated(from, now_ms);
        if let Some(t) = self.targets.iter_mut().find(|t| t.target == from) {
            t.last_media_ms = Some(now_ms);
        }
    }

    /// A probe reply from `from` measured `rtt_ms`: the path works both ways.
    pub fn handle_probe_reply(&mut self, from: Target, rtt_ms: u64, now_ms: u64) {
        self.handle_authenticated(from, now_ms);
        if let Some(t) = self.targets.iter_mut().find(|t| t.target == from) {
            t.confirmed_ms.get_or_insert(now_ms);
            t.rtt_ms = Some(rtt_ms);
        }
    }

    /// Whether `target` is alive: it answered a probe once and was heard
    /// recently (see [`PathConfig::dead_after_ms`]).
    pub fn is_alive(&self, target: Target, now_ms: u64) -> bool {
        self.targets
            .iter()
            .any(|t| t.target == target && t.alive(now_ms, &self.config))
    }

    /// Confirms `target` without a probe reply (no RTT measured): media
    /// came from a relay whose bind of this side is confirmed, so the relay
    /// forwards both ways.
    pub fn confirm(&mut self, target: Target, now_ms: u64) {
        if let Some(t) = self.targets.iter_mut().find(|t| t.target == target) {
            t.confirmed_ms.get_or_insert(now_ms);
        }
    }

    /// How long `target` has been silent (`None`: unknown or never heard).
    pub fn silent_for(&self, target: Target, now_ms: u64) -> Option<u64> {
        self.targets
            .iter()
            .find(|t| t.target == target)
            .and_then(|t| t.last_heard_ms)
            .map(|heard| now_ms.saturating_sub(heard))
    }

    /// Probes the UDP relays not confirmed yet as if they were new (fast,
    /// from now on, given up only `give_up_ms` from now): a relay that
    /// forwarded this side's traffic to a TLS leg while it was probed over
    /// UDP may answer now.
    pub fn reprobe_udp_relays(&mut self, now_ms: u64) {
        for t in &mut self.targets {
            if t.kind == PathKind::Relayed && t.confirmed_ms.is_none() {
                t.added_ms = now_ms;
                t.last_probe_ms = None;
            }
        }
    }

    /// The targets to probe now (each is marked as probed).
    pub fn poll_probes(&mut self, now_ms: u64) -> Vec<Target> {
        let c = self.config;
        let mut due = Vec::new();
        for t in &mut self.targets {
            let age = now_ms.saturating_sub(t.added_ms);
            if t.confirmed_ms.is_none() && age > c.give_up_ms {
                continue;
            }
            let interval = if t.confirmed_ms.is_none() && age < c.fast_phase_ms {
                c.fast_probe_ms
            } else {
                c.slow_probe_ms
            };
            if t.last_probe_ms
                .is_none_or(|last| now_ms.saturating_sub(last) >= interval)
            {
                t.last_probe_ms = Some(now_ms);
                due.push(t.target);
            }
        }
        due
    }

    /// When the next probe falls due (`None`: nothing left to probe).
    pub fn poll_timeout(&self) -> Option<u64> {
        let c = self.config;
        self.targets
            .iter()
            .filter_map(|t| {
                let Some(last) = t.last_probe_ms else {
                    return Some(t.added_ms);
                };
                let interval = if t.confirmed_ms.is_none()
                    && last.saturating_sub(t.added_ms) < c.fast_phase_ms
                {
                    c.fast_probe_ms
                } else {
                    c.slow_probe_ms
                };
                let due = last.saturating_add(interval);
                let given_up =
                    t.confirmed_ms.is_none() && due.saturating_sub(t.added_ms) > c.give_up_ms;
                (!given_up).then_some(due)
            })
            .min()
    }

    /// Where media goes now, re-evaluated at `now_ms`.
    pub fn current(&mut self, now_ms: u64) -> Option<(Target, PathKind)> {
        let c = self.config;
        let best_direct = self
            .targets
            .iter()
            .filter(|t| {
                t.kind != PathKind::Relayed && t.kind != PathKind::TcpRelay && t.alive(now_ms, &c)
            })
            .min_by_key(|t| (t.kind.rank(), t.rtt_ms.unwrap_or(u64::MAX)));
        // Between relays, stay on the current one while it is alive: RTTs
        // of two relays cross often and switching gains nothing.
        // A TCP relay is kept only while no UDP relay is alive.
        let udp_relay_alive = self.udp_relay_alive(now_ms);
        let current_relay = self.current.and_then(|(target, kind)| {
            (kind == PathKind::Relayed || (kind == PathKind::TcpRelay && !udp_relay_alive))
                .then(|| {
                    self.targets
                        .iter()
                        .find(|t| t.target == target && t.alive(now_ms, &c))
                })
                .flatten()
        });
        // Otherwise a relay: alive before dead, reached over UDP before TCP
        // (a TCP relay is the fallback of a UDP-blocked side), one not tried
        // yet before one that died (a relay migrated to, while the dead one
        // still has the better RTT on record), then faster.
        let relay = || {
            current_relay.or_else(|| {
                self.targets
                    .iter()
                    .filter(|t| matches!(t.kind, PathKind::Relayed | PathKind::TcpRelay))
                    .min_by_key(|t| {
                        let alive = t.alive(now_ms, &c);
                        (
                            !alive,
                            t.kind.rank(),
                            t.confirmed() && !alive,
                            t.rtt_ms.unwrap_or(u64::MAX),
                        )
                    })
            })
        };
        let guess = || {
            self.targets
                .iter()
                .filter(|t| t.kind == PathKind::Direct)
                .min_by_key(|t| t.added_ms)
        };
        let chosen = best_direct
            .or_else(relay)
            .or_else(guess)
            .map(|t| (t.target, t.kind));
        if chosen != self.current {
            if let Some((to, kind)) = chosen {
                if !kind.is_relayed() && best_direct.is_some() {
                    self.first_direct_ms
                        .get_or_insert(now_ms.saturating_sub(self.start_ms));
                }
                if self.switches.len() < self.config.max_switches {
                    self.switches.push(Switch {
                        at_ms: now_ms.saturating_sub(self.start_ms),
                        kind,
                        to,
                    });
                }
            }
            self.current = chosen;
        }
        chosen
    }

    /// Whether a relay reached over UDP is alive.
    pub fn udp_relay_alive(&self, now_ms: u64) -> bool {
        let c = self.config;
        self.targets
            .iter()
            .any(|t| t.kind == PathKind::Relayed && t.alive(now_ms, &c))
    }

    /// Whether some target is alive at `now_ms` (a path to the peer works).
    pub fn any_alive(&self, now_ms: u64) -> bool {
        let c = self.config;
        self.targets.iter().any(|t| t.alive(now_ms, &c))
    }

    /// The relays (UDP or TLS) that answered once and are dead at `now_ms`:
    /// where a relay migration starts looking (is one of them this side's
    /// own supernode?).
    pub fn dead_relays(&self, now_ms: u64) -> Vec<Target> {
        let c = self.config;
        self.targets
            .iter()
            .filter(|t| t.kind.is_relayed() && t.confirmed() && !t.alive(now_ms, &c))
            .map(|t| t.target)
            .collect()
    }

    /// Every change of path so far.
    pub fn switches(&self) -> &[Switch] {
        &self.switches
    }

    /// When a direct or hole-punched path was first confirmed (ms since start).
    pub fn time_to_direct_ms(&self) -> Option<u64> {
        self.first_direct_ms
    }

    /// The targets, for statistics.
    pub fn targets(&self) -> &[TargetState] {
        &self.targets
    }

    /// The RTT last measured to `target`.
    pub fn rtt_ms(&self, target: Target) -> Option<u64> {
        self.targets
            .iter()
            .find(|t| t.target == target)
            .and_then(|t| t.rtt_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Target {
        Target::Udp(SocketAddr::from(([192, 0, 2, 1], port)))
    }

    #[test]
    fn relay_first_then_direct_then_back_to_the_relay() {
        let mut p = PathManager::new(PathConfig::default(), 1_000);
        p.add_target(addr(1), PathKind::HolePunched, 1_000);
        p.add_target(addr(9), PathKind::Relayed, 1_000);
        assert_eq!(p.current(1_000), Some((addr(9), PathKind::Relayed)));
        p.handle_probe_reply(addr(1), 30, 1_200);
        assert_eq!(p.current(1_200), Some((addr(1), PathKind::HolePunched)));
        assert_eq!(p.time_to_direct_ms(), Some(200));
        // Keep hearing from it: stays; silence: back to the relay.
        p.handle_authenticated(addr(1), 2_500);
        assert_eq!(p.current(4_900), Some((addr(1), PathKind::HolePunched)));
        assert_eq!(p.current(5_100), Some((addr(9), PathKind::Relayed)));
        let kinds: Vec<_> = p.switches().iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [PathKind::Relayed, PathKind::HolePunched, PathKind::Relayed]
        );
    }

    #[test]
    fn a_path_carrying_media_is_given_up_within_half_a_second() {
        let mut p = PathManager::new(PathConfig::default(), 0);
        p.add_target(addr(1), PathKind::HolePunched, 0);
        p.add_target(addr(9), PathKind::Relayed, 0);
        p.handle_probe_reply(addr(1), 10, 0);
        for now in (0..1_000).step_by(20) {
            p.handle_media(addr(1), now);
        }
        assert_eq!(p.current(1_300), Some((addr(1), PathKind::HolePunched)));
        assert_eq!(p.current(1_400), Some((addr(9), PathKind::Relayed)));
    }

    #[test]
    fn a_live_relay_is_kept_when_another_relay_gets_faster() {
        let mut p = PathManager::new(PathConfig::default(), 0);
        p.add_target(addr(8), PathKind::Relayed, 0);
        p.add_target(addr(9), PathKind::Relayed, 0);
        p.handle_probe_reply(addr(8), 30, 10);
        p.handle_probe_reply(addr(9), 40, 10);
        assert_eq!(p.current(10), Some((addr(8), PathKind::Relayed)));
        p.handle_probe_reply(addr(9), 5, 1_000);
        p.handle_probe_reply(addr(8), 35, 1_000);
        assert_eq!(p.current(1_000), Some((addr(8), PathKind::Relayed)));
        assert_eq!(p.switches().len(), 1);
        // When it dies, the other takes over.
        p.handle_authenticated(addr(9), 4_000);
        assert_eq!(p.current(4_000), Some((addr(9), PathKind::Relayed)));
    }

    #[test]
    fn a_tcp_relay_serves_only_when_no_udp_relay_is_alive() {
        let mut p = PathManager::new(PathConfig::default(), 0);
        let tcp = |port| Target::TcpLeg(SocketAddr::from(([192, 0, 2, 1], port)));
        p.add_target(addr(9), PathKind::Relayed, 0);
        p.add_target(tcp(443), PathKind::TcpRelay, 0);
        // Nothing confirmed yet: the UDP relay is tried first.
        assert_eq!(p.current(0), Some((addr(9), PathKind::Relayed)));
        // Only the TCP relay answers (UDP blocked): it takes over.
        p.handle_probe_reply(tcp(443), 40, 100);
        assert_eq!(p.current(100), Some((tcp(443), PathKind::TcpRelay)));
        // UDP comes back: the UDP relay wins again.
        p.handle_probe_reply(addr(9), 60, 1_000);
        assert_eq!(p.current(1_000), Some((addr(9), PathKind::Relayed)));
        // A direct path beats both; when everything UDP dies, TCP carries on.
        p.add_target(addr(1), PathKind::HolePunched, 1_000);
        p.handle_probe_reply(addr(1), 10, 1_100);
        assert_eq!(p.current(1_100), Some((addr(1), PathKind::HolePunched)));
        p.add_target(tcp(444), PathKind::TcpRelay, 1_100);
        for now in (1_100..3_000).step_by(500) {
            p.handle_probe_reply(tcp(443), 40, now);
            p.handle_probe_reply(tcp(444), 50, now);
        }
        assert_eq!(p.current(4_000), Some((tcp(443), PathKind::TcpRelay)));
        // Between live TCP relays, no flapping on RTT.
        p.handle_probe_reply(tcp(444), 5, 4_100);
        assert_eq!(p.current(4_100), Some((tcp(443), PathKind::TcpRelay)));
        assert_eq!(p.time_to_direct_ms(), Some(1_100));
    }

    #[test]
    fn unknown_sources_become_peer_reflexive_targets() {
        let mut p = PathManager::new(PathConfig::default(), 0);
        p.handle_authenticated(addr(7), 10);
        assert_eq!(p.targets().len(), 1);
        assert_eq!(p.poll_probes(10), vec![addr(7)]);
        p.handle_probe_reply(addr(7), 5, 20);
        assert_eq!(p.current(20), Some((addr(7), PathKind::HolePunched)));
    }

    #[test]
    fn probing_is_fast_then_slow_then_stops() {
        let c = PathConfig::default();
        let mut p = PathManager::new(c, 0);
        p.add_target(addr(1), PathKind::HolePunched, 0);
        let count = |p: &mut PathManager, from: u64, to: u64| {
            (from..to)
                .step_by(10)
                .filter(|&t| !p.poll_probes(t).is_empty())
                .count()
        };
        assert_eq!(count(&mut p, 0, 1_000), 20, "every 50 ms at first");
        let slow = count(&mut p, c.fast_phase_ms, c.fast_phase_ms + 10_000);
        assert!((9..=11).contains(&slow), "{slow} probes in 10 s");
        assert_eq!(count(&mut p, c.give_up_ms + 10, c.give_up_ms + 5_000), 0);
    }

    #[test]
    fn host_candidates_are_the_guess_before_anything_is_confirmed() {
        let mut p = PathManager::new(PathConfig::default(), 0);
        p.add_target(addr(3), PathKind::HolePunched, 0);
        p.add_target(addr(2), PathKind::Direct, 0);
        assert_eq!(p.current(0), Some((addr(2), PathKind::Direct)));
        p.handle_probe_reply(addr(3), 1, 5);
        assert_eq!(p.current(5), Some((addr(3), PathKind::HolePunched)));
        p.handle_probe_reply(addr(2), 2, 6);
        assert_eq!(
            p.current(6),
            Some((addr(2), PathKind::Direct)),
            "host beats reflexive"
        );
    }

    #[test]
    fn the_target_table_is_bounded() {
        let mut p = PathManager::new(PathConfig::default(), 0);
        for port in 0..100 {
            p.handle_authenticated(addr(port), 0);
        }
        assert_eq!(p.targets().len(), PathConfig::default().max_targets);
    }
}
