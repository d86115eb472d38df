//! One call's media transport, sans-IO: where each datagram goes, relay
//! binds, the TCP fallback, and sealing/opening.
//!
//! A [`CallSession`] owns the [`PathManager`] (connectivity checks and the
//! choice of path), the [`RelayBinds`] of this side's UDP relay legs, the
//! policy that brings in TLS relay legs, and the [`Sealer`]/[`Opener`] of
//! the call. It knows nothing of codecs: voice goes in and comes out as
//! codec payloads with their frame numbers (the media crate encodes,
//! jitter-buffers and decodes).
//!
//! Drive loop of the shell (one UDP socket, the TLS legs, one timer):
//!
//! ```text
//! every frame (20 ms):    session.handle_timeout(now)?
//!                         session.send_voice(&encoded_frame, now)?
//! UDP datagram from a:    session.handle_datagram(Target::Udp(a), &bytes, now)?
//! TLS leg l delivered d:  session.handle_datagram(Target::TcpLeg(l), &d, now)?
//! after each of these:    while let Some(t) = session.poll_transmit() { send t.bytes to t.to }
//!                         while let Some(e) = session.poll_event() { OpenTcpLeg / Voice / ... }
//! sleep until:            session.poll_timeout() (at the latest the next frame)
//! ```
//!
//! **TCP fallback.** A side whose supernode session runs over TLS on TCP
//! (UDP blocked) uses TLS relay legs from the start and never sends UDP.
//! Otherwise the legs are opened once no authenticated UDP datagram has come
//! from the peer, and nothing else showed UDP working (a relay's bind
//! confirmation, the shell's [`CallSession::handle_udp_works`] when its
//! supernode session runs over QUIC), for [`UDP_SILENCE_FOR_TCP_MS`] (UDP
//! never worked, or was blocked mid-call; a relay that died is a relay
//! migration's job, not TCP's); from then on every TCP relay candidate
//! opens a leg as it is learned. The path manager keeps media on a TCP
//! relay only while no UDP relay is alive.
//!
//! **Back to UDP.** A relay forwards to a side's last bind, UDP or TLS. A
//! side whose media goes over a TLS leg without UDP being known blocked
//! binds its UDP relay legs again [`UDP_RETRY_ON_TCP_MS`] later, then at
//! doubling intervals: once a relay confirms, it forwards the peer over UDP,
//! the first media datagram from it makes it alive, and media moves back.
//! The other way, when the path media goes on has been silent for
//! [`TCP_REBIND_AFTER_MS`] with no UDP relay alive, the open TLS legs bind
//! again (a bind record on the leg), so a UDP that failed after taking the
//! forwarding does not leave the call on a relay that forwards nowhere.
//!
//! **Relay migration.** When every path dies after one worked (the
//! relaying supernode died), the session asks the shell to move the call to
//! another relay ([`Event::MigrateRelay`]; the decision and its timing are
//! [`crate::migration`]'s).
//!
//! **Relay binds.** Every UDP relay leg (the peer's relay candidates and this
//! side's own allocation) is bound with bind datagrams, re-sent until the
//! relay confirms and refreshed afterwards ([`RelayBinds`]). A TLS leg binds
//! itself when it connects (the shell's leg task sends the same bind as its
//! first record).

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::handshake::DirectionKeys;
use crate::media::{
    MAX_START, OpenError, Opener, SealError, Sealer, decode_media_frame, encode_media_frame,
};
use crate::messages::{Candidate, CandidateKind, TransportKind};
use crate::migration::{MigrationConfig, PathLoss, RelayMigration};
use crate::path::{PathConfig, PathKind, PathManager, Switch, Target};
use crate::relay::{MAX_BINDS, RelayBinds, RelayLeg, TOKEN_LEN};
use crate::som::Function;

/// With UDP usable at the start, TLS relay legs open once nothing
/// authenticated has come over UDP for this long.
pub const UDP_SILENCE_FOR_TCP_MS: u64 = 1_500;
/// A side whose media goes over a TLS leg while UDP may work again (a slow
/// start opened the legs) binds its UDP relay legs again this long after
/// it moved to the leg, so the relay, which forwards to a side's last bind,
/// forwards to UDP again; then at twice the interval each time, up to
/// [`UDP_RETRY_MAX_MS`] (a blocked UDP costs a few binds a minute).
pub const UDP_RETRY_ON_TCP_MS: u64 = 2_000;
/// The longest interval between two UDP retries of a side on a TLS leg.
pub const UDP_RETRY_MAX_MS: u64 = 16_000;
/// A TLS leg is bound again when the path media goes on has been silent
/// this long and no UDP relay is alive (a UDP bind took the forwarding and
/// UDP failed since)...
pub const TCP_REBIND_AFTER_MS: u64 = 600;
/// ... at most this often per leg.
pub const TCP_REBIND_MS: u64 = 1_000;
/// The peer is gone when nothing authenticated has come for this long.
pub const MEDIA_TIMEOUT_MS: u64 = 10_000;
/// Most TLS relay legs per call.
pub const MAX_TCP_LEGS: usize = 8;
/// Datagrams queued for the shell.
const MAX_TRANSMITS: usize = 128;
/// Events queued for the shell.
const MAX_EVENTS: usize = 64;

/// Settings of a call session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub path: PathConfig,
    /// See [`UDP_SILENCE_FOR_TCP_MS`].
    pub udp_silence_for_tcp_ms: u64,
    /// See [`MEDIA_TIMEOUT_MS`].
    pub media_timeout_ms: u64,
    /// When to ask for a relay migration.
    pub migration: MigrationConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            path: PathConfig::default(),
            udp_silence_for_tcp_ms: UDP_SILENCE_FOR_TCP_MS,
            media_timeout_ms: MEDIA_TIMEOUT_MS,
            migration: MigrationConfig::default(),
        }
    }
}

/// What this side knows when media starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSetup {
    /// The supernode session runs over TLS on TCP: no UDP at all.
    pub udp_blocked: bool,
    /// Gathering found this side behind a NAT (see [`candidate_target`]).
    pub behind_nat: bool,
    /// First packet index of the sealer (random, masked to [`MAX_START`]).
    pub start_index: u16,
    /// Seeds the random bits of the SoM function byte.
    pub seed: u64,
}

/// One datagram for the shell to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: Target,
    pub bytes: Vec<u8>,
}

/// What the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Open a TLS relay leg to `leg.addr` bound with `leg.token`; what it
    /// delivers comes back as `handle_datagram(Target::TcpLeg(leg.addr), ..)`.
    OpenTcpLeg(RelayLeg),
    /// Media now goes to `to`.
    PathChanged { to: Target, kind: PathKind },
    /// A voice frame from the peer: its number and codec payload.
    Voice { number: u16, payload: Vec<u8> },
    /// Nothing authenticated came from the peer for the media timeout
    /// (reported once): the call is over.
    PeerSilent,
    /// No path to the peer is alive any more after one worked: move the
    /// call to a relay on another supernode (rejoining first when the dead
    /// relays include this side's own supernode, or its session is gone),
    /// tell the peer, and hand the new allocation to
    /// [`CallSession::add_own_relay`]. Asked again while no path comes back
    /// (`attempt` counts, from 1); see [`crate::migration`].
    MigrateRelay {
        attempt: u32,
        /// The relays that worked once and are dead now.
        dead_relays: Vec<Target>,
    },
}

/// Counters of the session, for the call report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Sealed datagrams sent (voice, probes, probe replies).
    pub sent_packets: u64,
    /// Bytes of those (SoM header + sealed payload).
    pub sent_bytes: u64,
    pub sent_media_packets: u64,
    /// Datagrams handed to the opener (bind replies and STUN not counted).
    pub received_packets: u64,
    pub received_bytes: u64,
    pub received_media_packets: u64,
    pub dropped_malformed: u64,
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    /// RTT of the last probe reply.
    pub last_rtt_ms: Option<u64>,
    /// Relay bind datagrams sent.
    pub binds_sent: u64,
    /// Times media on a TLS leg tried UDP again ([`UDP_RETRY_ON_TCP_MS`]).
    pub udp_retries: u64,
    /// Binds this session sent over TLS legs ([`TCP_REBIND_AFTER_MS`]).
    pub tcp_rebinds: u64,
    /// Datagrams or events dropped on a full queue (the shell fell behind).
    pub dropped_queued: u64,
    /// The longest time between two media datagrams received (ms): the
    /// worst audio gap of the call, a relay migration's included.
    pub max_media_gap_ms: u64,
}

/// What a received candidate means for the path manager: its address, the
/// path it would make, and the token to bind with when it is a relay. When
/// this side is behind a NAT (`behind_nat`), even the peer's own address is
/// reached through a hole in that NAT: hole-punched, not direct. A TCP
/// candidate is always a relay reached over TLS ([`PathKind::TcpRelay`]).
pub fn candidate_target(
    c: &Candidate,
    behind_nat: bool,
) -> Option<(SocketAddr, PathKind, Option<[u8; TOKEN_LEN]>)> {
    let addr = SocketAddr::try_from(c.addr.as_ref()?).ok()?;
    if c.transport == TransportKind::Tcp as i32 {
        if c.kind != CandidateKind::Relay as i32 {
            return None;
        }
        let token = c.relay_token.as_slice().try_into().ok()?;
        return Some((addr, PathKind::TcpRelay, Some(token)));
    }
    if c.transport != TransportKind::Udp as i32 {
        return None;
    }
    let kind = match CandidateKind::try_from(c.kind).ok()? {
        CandidateKind::Host if behind_nat => PathKind::HolePunched,
        CandidateKind::Host => PathKind::Direct,
        CandidateKind::ServerReflexive
        | CandidateKind::Predicted
        | CandidateKind::PeerReflexive => PathKind::HolePunched,
        CandidateKind::Relay => PathKind::Relayed,
    };
    let token = if kind == PathKind::Relayed {
        Some(c.relay_token.as_slice().try_into().ok()?)
    } else {
        None
    };
    Some((addr, kind, token))
}

/// The media transport of one connected call.
#[derive(Debug)]
pub struct CallSession {
    config: SessionConfig,
    setup: SessionSetup,
    path: PathManager,
    binds: RelayBinds,
    /// UDP relays being bound, not yet targets of the path manager.
    relays_pending: Vec<SocketAddr>,
    /// TLS relay legs learned (own allocation, peer's TCP candidates).
    tcp_known: Vec<RelayLeg>,
    /// Whether known legs are opened (from the start when UDP is blocked).
    tcp_active: bool,
    /// Legs asked of the shell so far.
    tcp_open: Vec<RelayLeg>,
    /// Legs the shell has not been told to open yet.
    tcp_to_open: Vec<RelayLeg>,
    /// When this session last bound the open legs itself (all at once).
    tcp_rebound_ms: Option<u64>,
    /// When media on a TLS leg next tries UDP ([`UDP_RETRY_ON_TCP_MS`]).
    udp_retry_at_ms: Option<u64>,
    udp_retry_interval_ms: u64,
    bind_msg_id: u16,
    last_heard_ms: u64,
    /// When UDP last showed it works (authenticated from the peer, a bind
    /// confirmed, [`Self::handle_udp_works`]).
    last_udp_heard_ms: u64,
    /// When the last media datagram came (for the longest gap).
    last_media_ms: Option<u64>,
    silent_reported: bool,
    migration: RelayMigration,
    current: Option<(Target, PathKind)>,
    path_start: Option<PathKind>,
    sealer: Sealer,
    opener: Opener,
    rng: u64,
    next_frame: u16,
    plain: Vec<u8>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: SessionStats,
}

impl CallSession {
    /// A session sending with `send` and receiving with `recv`, started at
    /// `now_ms` (the origin of switch times).
    pub fn new(
        send: &DirectionKeys,
        recv: &DirectionKeys,
        setup: SessionSetup,
        config: SessionConfig,
        now_ms: u64,
    ) -> Self {
        Self {
            config,
            setup,
            path: PathManager::new(config.path, now_ms),
            binds: RelayBinds::default(),
            relays_pending: Vec::new(),
            tcp_known: Vec::new(),
            tcp_active: setup.udp_blocked,
            tcp_open: Vec::new(),
            tcp_to_open: Vec::new(),
            tcp_rebound_ms: None,
            udp_retry_at_ms: None,
            udp_retry_interval_ms: UDP_RETRY_ON_TCP_MS,
            bind_msg_id: setup.start_index,
            last_heard_ms: now_ms,
            last_udp_heard_ms: now_ms,
            last_media_ms: None,
            silent_reported: false,
            migration: RelayMigration::new(config.migration),
            current: None,
            path_start: None,
            sealer: Sealer::new(send, setup.start_index & MAX_START),
            opener: Opener::new(recv),
            rng: setup.seed | 1,
            next_frame: 0,
            plain: Vec::with_capacity(256),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: SessionStats::default(),
        }
    }

    /// Hands the peer's candidates to the path manager, the relay binds and
    /// the TLS legs.
    pub fn add_candidates(&mut self, candidates: &[Candidate], now_ms: u64) {
        for c in candidates {
            let Some((addr, kind, token)) = candidate_target(c, self.setup.behind_nat) else {
                continue;
            };
            match (kind, token) {
                (PathKind::TcpRelay, Some(token)) => self.add_tcp(RelayLeg { addr, token }, now_ms),
                (PathKind::TcpRelay, None) => {}
                _ if self.setup.udp_blocked => {}
                (_, Some(token)) => self.add_udp_relay(RelayLeg { addr, token }),
                (_, None) => self.path.add_target(Target::Udp(addr), kind, now_ms),
            }
        }
    }

    /// This side's own relay allocation: bound over UDP (unless UDP is
    /// blocked; the relay forwards to the peer once the peer binds too) and
    /// over TLS once TLS legs are in use.
    pub fn add_own_relay(&mut self, udp: RelayLeg, tcp: Option<RelayLeg>, now_ms: u64) {
        if !self.setup.udp_blocked {
            self.add_udp_relay(udp);
        }
        if let Some(leg) = tcp {
            self.add_tcp(leg, now_ms);
        }
    }

    /// Starts binding a UDP relay leg. The relay becomes a target of the
    /// path manager only once it confirmed the bind: before that (the
    /// cookie round trip of docs/PROTOCOL.md 7.5) it forwards nothing, and
    /// media sent there would be lost.
    fn add_udp_relay(&mut self, leg: RelayLeg) {
        self.binds.add(leg);
        if !self.relays_pending.contains(&leg.addr) && self.relays_pending.len() < MAX_BINDS {
            self.relays_pending.push(leg.addr);
        }
    }

    /// Makes the relays whose bind was confirmed targets.
    fn promote_bound_relays(&mut self, now_ms: u64) {
        let binds = &self.binds;
        let (bound, pending): (Vec<SocketAddr>, Vec<SocketAddr>) = self
            .relays_pending
            .iter()
            .partition(|addr| binds.is_bound_at(**addr));
        self.relays_pending = pending;
        for addr in bound {
            self.path
                .add_target(Target::Udp(addr), PathKind::Relayed, now_ms);
        }
    }

    fn add_tcp(&mut self, leg: RelayLeg, now_ms: u64) {
        if !self.tcp_known.contains(&leg) {
            self.tcp_known.push(leg);
        }
        if self.tcp_active {
            self.open_tcp(now_ms);
        }
    }

    /// Opens every known leg (one per listener address, at most
    /// [`MAX_TCP_LEGS`]), from now on.
    fn open_tcp(&mut self, now_ms: u64) {
        self.tcp_active = true;
        for leg in &self.tcp_known {
            if self.tcp_open.iter().any(|o| o.addr == leg.addr)
                || self.tcp_open.len() >= MAX_TCP_LEGS
            {
                continue;
            }
            self.tcp_open.push(*leg);
            self.tcp_to_open.push(*leg);
            self.path
                .add_target(Target::TcpLeg(leg.addr), PathKind::TcpRelay, now_ms);
        }
    }

    /// Time passes: the TCP fallback, relay binds, connectivity checks, the
    /// choice of path and the media timeout, as of `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), SealError> {
        if !self.tcp_active
            && now_ms.saturating_sub(self.last_udp_heard_ms) >= self.config.udp_silence_for_tcp_ms
        {
            self.open_tcp(now_ms);
        }
        self.poll_binds(now_ms);
        for to in self.path.poll_probes(now_ms) {
            self.plain.clear();
            self.plain.extend_from_slice(&now_ms.to_be_bytes());
            self.seal_to(Function::Probe, to)?;
        }
        self.update_path(now_ms);
        self.retry_udp(now_ms);
        self.rebind_tcp(now_ms);
        self.check_migration(now_ms);
        if !self.silent_reported
            && now_ms.saturating_sub(self.last_heard_ms) >= self.config.media_timeout_ms
        {
            self.silent_reported = true;
            self.event(Event::PeerSilent);
        }
        Ok(())
    }

    /// Media on a TLS leg while UDP is not known to be blocked: now and then
    /// bind the UDP relay legs again (and probe them as new), so a call
    /// that fell back to TCP on a slow start comes back to UDP once it
    /// works. The relay forwards to the side's last bind; media from a UDP
    /// relay that confirmed the bind makes that relay alive, and the path
    /// manager prefers a live UDP relay to a TLS leg.
    fn retry_udp(&mut self, now_ms: u64) {
        let on_tcp = matches!(self.current, Some((_, PathKind::TcpRelay)));
        if !on_tcp || self.setup.udp_blocked {
            self.udp_retry_at_ms = None;
            return;
        }
        match self.udp_retry_at_ms {
            None => self.udp_retry_at_ms = Some(now_ms + self.udp_retry_interval_ms),
            Some(at) if now_ms >= at => {
                self.stats.udp_retries += 1;
                self.binds.rebind_all();
                self.path.reprobe_udp_relays(now_ms);
                self.poll_binds(now_ms);
                self.udp_retry_interval_ms = (self.udp_retry_interval_ms * 2).min(UDP_RETRY_MAX_MS);
                self.udp_retry_at_ms = Some(now_ms + self.udp_retry_interval_ms);
            }
            Some(_) => {}
        }
    }

    /// The path media goes on has been silent for [`TCP_REBIND_AFTER_MS`]
    /// and no UDP relay is alive: bind the open TLS legs again, as a UDP
    /// bind may have taken their relay's forwarding (and UDP failed since).
    fn rebind_tcp(&mut self, now_ms: u64) {
        if self.tcp_open.is_empty() || self.path.udp_relay_alive(now_ms) {
            return;
        }
        let Some((current, _)) = self.current else {
            return;
        };
        // A path never heard has not worked yet: the legs' own first binds
        // are still on their way.
        let silent = self
            .path
            .silent_for(current, now_ms)
            .is_some_and(|ms| ms >= TCP_REBIND_AFTER_MS);
        let recent = self
            .tcp_rebound_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < TCP_REBIND_MS);
        if !silent || recent || self.path.is_alive(current, now_ms) {
            return;
        }
        self.tcp_rebound_ms = Some(now_ms);
        for i in 0..self.tcp_open.len() {
            let leg = self.tcp_open[i];
            self.bind_msg_id = self.bind_msg_id.wrapping_add(1);
            let bind = crate::relay::encode_leg_bind(&leg.token, self.bind_msg_id);
            self.stats.tcp_rebinds += 1;
            self.queue(Target::TcpLeg(leg.addr), bind);
        }
    }

    /// Asks the shell to migrate when every path died ([`crate::migration`]).
    fn check_migration(&mut self, now_ms: u64) {
        let alive = self.path.any_alive(now_ms);
        if let Some(attempt) = self.migration.update(alive, now_ms) {
            let dead_relays = self.path.dead_relays(now_ms);
            self.event(Event::MigrateRelay {
                attempt,
                dead_relays,
            });
        }
    }

    /// Queues the relay binds due now.
    fn poll_binds(&mut self, now_ms: u64) {
        if !self.setup.udp_blocked {
            for (relay, bind) in self.binds.poll(now_ms) {
                self.stats.binds_sent += 1;
                self.queue(Target::Udp(relay), bind);
            }
        }
    }

    /// When [`CallSession::handle_timeout`] is due next. The shell also
    /// calls it every frame, before [`CallSession::send_voice`].
    pub fn poll_timeout(&self) -> Option<u64> {
        let fallback = (!self.tcp_active).then(|| {
            self.last_udp_heard_ms
                .saturating_add(self.config.udp_silence_for_tcp_ms)
        });
        let silence = (!self.silent_reported).then(|| {
            self.last_heard_ms
                .saturating_add(self.config.media_timeout_ms)
        });
        let binds = if self.setup.udp_blocked {
            None
        } else {
            self.binds.poll_timeout()
        };
        [
            fallback,
            silence,
            binds,
            self.path.poll_timeout(),
            self.migration.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Seals one encoded voice frame (`payload`, the codec's packet) as a
    /// `Data` datagram on the current path. Returns whether there was a path
    /// to send it on (nothing is sent, and no frame number used, otherwise).
    pub fn send_voice(&mut self, payload: &[u8], now_ms: u64) -> Result<bool, SealError> {
        let Some((to, kind)) = self.update_path(now_ms) else {
            return Ok(false);
        };
        self.path_start.get_or_insert(kind);
        let number = self.next_frame;
        self.next_frame = self.next_frame.wrapping_add(1);
        encode_media_frame(number, payload, &mut self.plain);
        self.seal_to(Function::Data, to)?;
        self.stats.sent_media_packets += 1;
        Ok(true)
    }

    /// Handles one datagram that came from `from`: a relay's bind reply, a
    /// late STUN answer, or a sealed datagram of the peer. Anything that
    /// does not authenticate is dropped and counted.
    pub fn handle_datagram(
        &mut self,
        from: Target,
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<(), SealError> {
        if let Target::Udp(addr) = from {
            if let Some(confirmed) = self
                .binds
                .is_relay(addr)
                .then(|| self.binds.handle(addr, datagram))
                .flatten()
            {
                if confirmed {
                    // The relay answered over UDP: UDP works.
                    self.handle_udp_works(now_ms);
                }
                // A cookie reply makes a bind due at once: send it now, not
                // on the next tick (the relay forwards only once bound).
                self.poll_binds(now_ms);
                self.promote_bound_relays(now_ms);
                return Ok(());
            }
            if crate::stun::looks_like_stun(datagram) {
                return Ok(()); // a late reflector answer
            }
        }
        self.stats.received_packets += 1;
        self.stats.received_bytes += datagram.len() as u64;
        let mut plain = std::mem::take(&mut self.plain);
        let result = self.handle_sealed(from, datagram, now_ms, &mut plain);
        self.plain = plain;
        result
    }

    fn handle_sealed(
        &mut self,
        from: Target,
        datagram: &[u8],
        now_ms: u64,
        plain: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let opened = match self.opener.open(datagram, plain) {
            Ok(opened) => opened,
            Err(e) => {
                match e {
                    OpenError::Auth => self.stats.dropped_auth += 1,
                    OpenError::Replay(_) => self.stats.dropped_replay += 1,
                    OpenError::Som(_) | OpenError::NoTag(_) => self.stats.dropped_malformed += 1,
                }
                return Ok(());
            }
        };
        match opened.header.function {
            Function::Data => {
                let Ok((number, payload)) = decode_media_frame(plain) else {
                    self.stats.dropped_malformed += 1;
                    return Ok(());
                };
                self.stats.received_media_packets += 1;
                if let Some(last) = self.last_media_ms.replace(now_ms) {
                    let gap = now_ms.saturating_sub(last);
                    self.stats.max_media_gap_ms = self.stats.max_media_gap_ms.max(gap);
                }
                self.heard(from, now_ms);
                self.path.handle_media(from, now_ms);
                if let Target::Udp(relay) = from
                    && self.binds.is_bound_at(relay)
                {
                    // The relay confirmed this side's bind and forwards the
                    // peer: it works both ways.
                    self.path.confirm(from, now_ms);
                }
                let payload = payload.to_vec();
                self.event(Event::Voice { number, payload });
            }
            Function::Probe => {
                self.heard(from, now_ms);
                // Answer where the probe came from (peer-reflexive).
                std::mem::swap(&mut self.plain, plain);
                let sealed = self.seal_to(Function::ProbeReply, from);
                std::mem::swap(&mut self.plain, plain);
                sealed?;
            }
            Function::ProbeReply => {
                let Ok(sent) = <[u8; 8]>::try_from(plain.as_slice()) else {
                    self.stats.dropped_malformed += 1;
                    return Ok(());
                };
                let rtt_ms = now_ms.saturating_sub(u64::from_be_bytes(sent));
                self.stats.last_rtt_ms = Some(rtt_ms);
                self.heard(from, now_ms);
                self.path.handle_probe_reply(from, rtt_ms, now_ms);
            }
            Function::Ping | Function::Connect => self.heard(from, now_ms),
        }
        Ok(())
    }

    /// The shell saw UDP work at `now_ms` (its supernode session was
    /// joined, or answered, over QUIC): a silence of the peer's UDP is then
    /// a path's (a relay that died, being migrated), not UDP's, and the TCP
    /// fallback waits [`UDP_SILENCE_FOR_TCP_MS`] from here. A relay's bind
    /// confirmation counts the same way. Opening TLS legs on a relay loss
    /// moved a migrating call onto TCP for good: the new relay forwards to
    /// the side's last bind, the TLS leg's, so its UDP leg never came alive.
    pub fn handle_udp_works(&mut self, now_ms: u64) {
        self.last_udp_heard_ms = self.last_udp_heard_ms.max(now_ms);
    }

    /// Something authenticated came from `from`.
    fn heard(&mut self, from: Target, now_ms: u64) {
        self.last_heard_ms = now_ms;
        if matches!(from, Target::Udp(_)) {
            self.last_udp_heard_ms = now_ms;
        }
        self.path.handle_authenticated(from, now_ms);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the shell (legs to open first).
    pub fn poll_event(&mut self) -> Option<Event> {
        if !self.tcp_to_open.is_empty() {
            return Some(Event::OpenTcpLeg(self.tcp_to_open.remove(0)));
        }
        self.events.pop_front()
    }

    fn update_path(&mut self, now_ms: u64) -> Option<(Target, PathKind)> {
        let chosen = self.path.current(now_ms);
        if chosen != self.current {
            self.current = chosen;
            if let Some((to, kind)) = chosen {
                self.event(Event::PathChanged { to, kind });
            }
        }
        chosen
    }

    fn random_bits(&mut self) -> u8 {
        // xorshift64: the three bits only need to look random on the wire.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 61) as u8
    }

    /// Seals `self.plain` as a `function` datagram to `to`.
    fn seal_to(&mut self, function: Function, to: Target) -> Result<(), SealError> {
        let mut out = Vec::with_capacity(self.plain.len() + crate::media::OVERHEAD);
        let random = self.random_bits();
        self.sealer.seal(function, random, &self.plain, &mut out)?;
        self.stats.sent_packets += 1;
        self.stats.sent_bytes += out.len() as u64;
        self.queue(to, out);
        Ok(())
    }

    fn queue(&mut self, to: Target, bytes: Vec<u8>) {
        // A UDP-blocked side sends nothing over UDP.
        if self.setup.udp_blocked && matches!(to, Target::Udp(_)) {
            return;
        }
        if self.transmits.len() >= MAX_TRANSMITS {
            self.stats.dropped_queued += 1;
            return;
        }
        self.transmits.push_back(Transmit { to, bytes });
    }

    fn event(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.stats.dropped_queued += 1;
            return;
        }
        self.events.push_back(event);
    }

    /// Where media goes now (as of the last `handle_timeout` or `send_voice`).
    pub fn current(&self) -> Option<(Target, PathKind)> {
        self.current
    }

    /// The path of the first voice frame sent.
    pub fn path_start(&self) -> Option<PathKind> {
        self.path_start
    }

    /// Every change of path so far.
    pub fn switches(&self) -> &[Switch] {
        self.path.switches()
    }

    /// When a direct or hole-punched path was first confirmed (ms since start).
    pub fn time_to_direct_ms(&self) -> Option<u64> {
        self.path.time_to_direct_ms()
    }

    /// The RTT measured on the current path.
    pub fn path_rtt_ms(&self) -> Option<u64> {
        self.current.and_then(|(to, _)| self.path.rtt_ms(to))
    }

    /// The path manager (targets and their state).
    pub fn paths(&self) -> &PathManager {
        &self.path
    }

    /// The relay binds (whether each leg is bound).
    pub fn binds(&self) -> &RelayBinds {
        &self.binds
    }

    /// Every time no path was alive (relay migrations), for the report.
    pub fn path_losses(&self) -> Vec<PathLoss> {
        self.migration.losses()
    }

    /// Whether TLS relay legs are in use.
    pub fn tcp_active(&self) -> bool {
        self.tcp_active
    }

    /// The legs the shell was asked to open.
    pub fn tcp_legs(&self) -> &[RelayLeg] {
        &self.tcp_open
    }

    /// Counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The longest time without a media datagram up to `now_ms`, the gap
    /// still open since the last one included (a call whose media never
    /// came back after a loss has its whole tail as its gap, not the last
    /// gap that closed).
    pub fn max_media_gap_until(&self, now_ms: u64) -> u64 {
        let open = self
            .last_media_ms
            .map_or(0, |last| now_ms.saturating_sub(last));
        self.stats.max_media_gap_ms.max(open)
    }
}
