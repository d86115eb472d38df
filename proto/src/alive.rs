//! Liveness beacons: how a client notices within seconds that its supernode
//! is gone, for a small part of what QUIC keep-alives cost the supernode.
//!
//! A joined client must learn quickly (about 3 s) that its supernode died,
//! to rejoin through an alternate before anyone calls it. QUIC keep-alives
//! every second do that, but each one costs the supernode a decryption, a
//! connection's timers and an encrypted acknowledgement: at 10,000 idle
//! clients that is a third of a core. Instead, the supernode gives each
//! joined client a **ticket** (`JoinAccepted.alive_ticket`), and the client
//! sends a 40-byte **beacon** every second to the supernode's UDP service
//! (the STUN reflector and relay port), which answers with an **echo** of
//! the same length after one HMAC. The QUIC session then needs keep-alives
//! only to hold NAT mappings open ([`SESSION_KEEP_ALIVE_SECS`]).
//!
//! ```text
//! beacon = SoM header (0x02 Ping, random id) || "NRLY" || 0x81   || ticket (24) || seq (8)
//! echo   = SoM header (echoed)               || "NRLY" || status || ticket (24) || seq (8)
//! status: 0 alive, 1 the ticket expired (the client checks with pings instead)
//! ticket = mac (16) || expires (4) || nonce (4)
//! mac    = HMAC-SHA256(secret, ALIVE_LABEL || expires (4) || nonce (4) || client IP (16, IPv4 as IPv4-mapped IPv6))[..16]
//! ```
//!
//! `expires` is in Unix seconds, `nonce` a random number of the session
//! (two sessions from one IP in one second get different tickets), both
//! big-endian; `seq` numbers the client's beacons. The client treats the
//! ticket as opaque bytes. The supernode keeps no state to answer: it
//! recomputes the mac from the beacon's source IP, `expires` and `nonce`. A
//! beacon whose mac does not verify (another secret, another source IP, an
//! altered expiry or nonce) gets no answer, so an echo only ever goes to the
//! IP the ticket was issued to, and is never larger than the beacon
//! (amplification 1.0). The source port is not bound: the beacon socket is
//! not the QUIC socket, and NATs may remap it. The supernode also notes
//! which tickets beaconed, so it notices a client that died (section 8.2 of
//! docs/PROTOCOL.md) as quickly as the client notices a dead supernode.
//!
//! [`Liveness`] is the client's side, sans IO: when to send, which echoes
//! count, and when the supernode is dead. A client whose supernode gives no
//! ticket (an older supernode), or whose beacons are never answered (a
//! firewall, a NAT that maps the beacon socket to another public IP), falls
//! back to `Ping` requests on the session ([`Mode::Ping`]): the same timing,
//! at the old price.

use std::net::IpAddr;

use hkdf::hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::relay::MAGIC;
use crate::som::{Function, HEADER_LEN, Header};

/// The kind byte of a beacon (after [`MAGIC`]).
pub const BEACON_KIND: u8 = 0x81;
/// Bytes of a ticket's mac.
pub const MAC_LEN: usize = 16;
/// Bytes of a ticket: mac, expiry, nonce.
pub const TICKET_LEN: usize = MAC_LEN + 4 + 4;
/// Bytes of a beacon and of its echo.
pub const BEACON_LEN: usize = HEADER_LEN + 4 + 1 + TICKET_LEN + 8;
/// The domain separation of [`ticket`].
pub const ALIVE_LABEL: &[u8] = b"NATTER-ALIVE-TICKET-V1";
/// How long a ticket is valid: longer than any session (a session ends at
/// the expiry of the user's certificate).
pub const TICKET_SECS: u64 = 48 * 3600;
/// A beacon every this many milliseconds.
pub const INTERVAL_MS: u64 = 1_000;
/// The supernode is dead after this long without an echo (or, in
/// [`Mode::Ping`], without a `Ping` reply). The same as the QUIC idle
/// timeout it replaces.
pub const DEAD_AFTER_MS: u64 = 3_000;
/// A supernode ends the session of a client that said `beacons` when it
/// heard neither a beacon nor a frame from it for this long: five beacons
/// (the supernode notes them once a second, so a live client is at most
/// about 2 s behind), and longer than a client needs to fall back to `Ping`
/// requests ([`DEAD_AFTER_MS`]) when its beacons do not get through.
pub const SILENT_AFTER_MS: u64 = 5_000;
/// QUIC keep-alive of a client's session once beacons carry liveness: often
/// enough to hold a NAT mapping (30 s or more on common NATs).
pub const SESSION_KEEP_ALIVE_SECS: u64 = 15;
/// QUIC idle timeout of a client's session: three keep-alives.
pub const SESSION_IDLE_TIMEOUT_SECS: u64 = 45;

/// A ticket, as `JoinAccepted.alive_ticket` carries it ([`Ticket::to_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub mac: [u8; MAC_LEN],
    /// Unix seconds.
    pub expires: u32,
    pub nonce: u32,
}

impl Ticket {
    /// The wire form: mac || expires || nonce.
    pub fn to_bytes(&self) -> [u8; TICKET_LEN] {
        let mut out = [0u8; TICKET_LEN];
        out[..MAC_LEN].copy_from_slice(&self.mac);
        out[MAC_LEN..MAC_LEN + 4].copy_from_slice(&self.expires.to_be_bytes());
        out[MAC_LEN + 4..].copy_from_slice(&self.nonce.to_be_bytes());
        out
    }

    /// A ticket from its wire form (`None` unless exactly [`TICKET_LEN`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != TICKET_LEN {
            return None;
        }
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&bytes[..MAC_LEN]);
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Some(Self {
            mac,
            expires: word(MAC_LEN),
            nonce: word(MAC_LEN + 4),
        })
    }
}

/// What an echo says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EchoStatus {
    Alive = 0,
    Expired = 1,
}

/// A decoded beacon or echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beacon {
    pub header: [u8; HEADER_LEN],
    /// [`BEACON_KIND`] in a beacon, an [`EchoStatus`] in an echo.
    pub kind: u8,
    pub ticket: Ticket,
    pub seq: u64,
}

/// Why bytes are not a beacon or an echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AliveError {
    #[error("not a liveness beacon")]
    NotBeacon,
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The ticket for a session from `ip` with `nonce`, valid until `expires`
/// (Unix seconds).
pub fn ticket(secret: &[u8; 32], ip: IpAddr, expires: u32, nonce: u32) -> Ticket {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key size");
    mac.update(ALIVE_LABEL);
    mac.update(&expires.to_be_bytes());
    mac.update(&nonce.to_be_bytes());
    mac.update(&mapped(ip.to_canonical()));
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    Ticket {
        mac: out,
        expires,
        nonce,
    }
}

/// A beacon carrying `ticket`, numbered `seq`.
pub fn encode_beacon(ticket: &Ticket, seq: u64, msg_id: u16, random: u8) -> [u8; BEACON_LEN] {
    encode(
        Header::new(msg_id, Function::Ping, random).to_bytes(),
        BEACON_KIND,
        ticket,
        seq,
    )
}

fn encode(header: [u8; HEADER_LEN], kind: u8, ticket: &Ticket, seq: u64) -> [u8; BEACON_LEN] {
    let mut out = [0u8; BEACON_LEN];
    out[..HEADER_LEN].copy_from_slice(&header);
    let rest = &mut out[HEADER_LEN..];
    rest[..4].copy_from_slice(MAGIC);
    rest[4] = kind;
    rest[5..5 + TICKET_LEN].copy_from_slice(&ticket.to_bytes());
    rest[5 + TICKET_LEN..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// The parts of a beacon-shaped datagram (a beacon or an echo).
pub fn decode(datagram: &[u8]) -> Result<Beacon, AliveError> {
    if datagram.len() != BEACON_LEN {
        return Err(AliveError::NotBeacon);
    }
    let (header, rest) = Header::decode(datagram).map_err(|_| AliveError::NotBeacon)?;
    if header.function != Function::Ping || rest.get(..4) != Some(MAGIC.as_slice()) {
        return Err(AliveError::NotBeacon);
    }
    let ticket = Ticket::from_bytes(&rest[5..5 + TICKET_LEN]).ok_or(AliveError::NotBeacon)?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&rest[5 + TICKET_LEN..]);
    Ok(Beacon {
        header: header.to_bytes(),
        kind: rest[4],
        ticket,
        seq: u64::from_be_bytes(seq),
    })
}

/// Whether `datagram` looks like a beacon (cheap: length and markers only).
pub fn looks_like_beacon(datagram: &[u8]) -> bool {
    datagram.len() == BEACON_LEN && decode(datagram).is_ok_and(|b| b.kind == BEACON_KIND)
}

/// The supernode's answer to `datagram` from `source_ip` at `now_secs`
/// (Unix): the echo to send back and the beacon's verified ticket, or `None`
/// (not a beacon, or a ticket that does not verify for this source: no
/// answer at all).
pub fn answer(
    secret: &[u8; 32],
    datagram: &[u8],
    source_ip: IpAddr,
    now_secs: u64,
) -> Option<([u8; BEACON_LEN], Ticket)> {
    let beacon = decode(datagram).ok()?;
    if beacon.kind != BEACON_KIND {
        return None;
    }
    let t = beacon.ticket;
    let expected = ticket(secret, source_ip, t.expires, t.nonce);
    if !constant_time_eq(&expected.mac, &t.mac) {
        return None;
    }
    let status = if now_secs >= u64::from(t.expires) {
        EchoStatus::Expired
    } else {
        EchoStatus::Alive
    };
    Some((encode(beacon.header, status as u8, &t, beacon.seq), t))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How a client checks its supernode is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Beacons to the supernode's UDP service.
    Beacon,
    /// `Ping` requests on the session (no ticket, beacons never answered,
    /// or the ticket expired).
    Ping,
}

/// What the client must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a beacon: these bytes, to the supernode's UDP service.
    Beacon([u8; BEACON_LEN]),
    /// Send a `Ping` request on the session; report its reply with
    /// [`Liveness::handle_ping_reply`].
    Ping,
    /// Nothing heard for [`DEAD_AFTER_MS`]: the supernode is dead; close
    /// the session (and rejoin elsewhere).
    Dead,
}

/// The client's liveness check of one session, sans IO: time is passed in
/// (milliseconds on any monotonic clock).
#[derive(Debug, Clone)]
pub struct Liveness {
    ticket: Option<Ticket>,
    mode: Mode,
    /// Echoes (or replies) heard in the current mode.
    heard_any: bool,
    last_heard_ms: u64,
    next_send_ms: u64,
    /// The next beacon's number; echoes of older beacons than the last few
    /// do not count.
    seq: u64,
    dead: bool,
}

impl Liveness {
    /// A check starting at `now_ms`, with the session's ticket if the
    /// supernode gave one.
    pub fn new(ticket: Option<Ticket>, now_ms: u64) -> Self {
        Self {
            ticket,
            mode: if ticket.is_some() {
                Mode::Beacon
            } else {
                Mode::Ping
            },
            heard_any: false,
            last_heard_ms: now_ms,
            next_send_ms: now_ms,
            seq: 0,
            dead: false,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// What to do at `now_ms`, if anything. Call again at
    /// [`Self::poll_timeout`].
    pub fn poll(&mut self, now_ms: u64, random: u16) -> Option<Action> {
        if self.dead {
            return None;
        }
        if now_ms.saturating_sub(self.last_heard_ms) >= DEAD_AFTER_MS {
            if self.mode == Mode::Beacon && !self.heard_any {
                // Beacons never got through: check with Ping requests,
                // from now on.
                self.fall_back(now_ms);
            } else {
                self.dead = true;
                return Some(Action::Dead);
            }
        }
        if now_ms < self.next_send_ms {
            return None;
        }
        self.next_send_ms = now_ms + INTERVAL_MS;
        match (self.mode, self.ticket) {
            (Mode::Beacon, Some(ticket)) => {
                let seq = self.seq;
                self.seq += 1;
                Some(Action::Beacon(encode_beacon(
                    &ticket,
                    seq,
                    random,
                    (random >> 8) as u8,
                )))
            }
            _ => Some(Action::Ping),
        }
    }

    /// When [`Self::poll`] has something to do next.
    pub fn poll_timeout(&self) -> u64 {
        self.next_send_ms
            .min(self.last_heard_ms.saturating_add(DEAD_AFTER_MS))
    }

    /// A datagram from the supernode's UDP service. Returns whether it was
    /// an echo of one of this check's recent beacons.
    pub fn handle_echo(&mut self, datagram: &[u8], now_ms: u64) -> bool {
        let Some(ticket) = self.ticket else {
            return false;
        };
        let Ok(echo) = decode(datagram) else {
            return false;
        };
        // Only echoes of the beacons of the last dead interval count: an old
        // echo replayed does not keep a dead supernode alive for long.
        let recent =
            echo.seq < self.seq && self.seq - echo.seq <= DEAD_AFTER_MS.div_ceil(INTERVAL_MS) + 1;
        if self.mode != Mode::Beacon || echo.ticket != ticket || !recent {
            return false;
        }
        match echo.kind {
            k if k == EchoStatus::Alive as u8 => {
                self.heard(now_ms);
                true
            }
            k if k == EchoStatus::Expired as u8 => {
                self.fall_back(now_ms);
                true
            }
            _ => false,
        }
    }

    /// A reply to a `Ping` request arrived.
    pub fn handle_ping_reply(&mut self, now_ms: u64) {
        if self.mode == Mode::Ping {
            self.heard(now_ms);
        }
    }

    fn heard(&mut self, now_ms: u64) {
        self.heard_any = true;
        self.last_heard_ms = self.last_heard_ms.max(now_ms);
    }

    fn fall_back(&mut self, now_ms: u64) {
        self.mode = Mode::Ping;
        self.heard_any = false;
        self.last_heard_ms = now_ms;
        self.next_send_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_beacon_from_its_ip_is_echoed_at_the_same_length() {
        let t = ticket(&SECRET, ip("198.51.100.7"), 1_000, 77);
        let beacon = encode_beacon(&t, 5, 0x1234, 0x55);
        assert!(looks_like_beacon(&beacon));
        assert_eq!(beacon.len(), 40);
        assert_eq!(Ticket::from_bytes(&t.to_bytes()), Some(t));
        let echo = answer(&SECRET, &beacon, ip("198.51.100.7"), 999).unwrap().0;
        assert_eq!(echo.len(), beacon.len());
        let decoded = decode(&echo).unwrap();
        assert_eq!(decoded.kind, EchoStatus::Alive as u8);
        assert_eq!(decoded.seq, 5);
        assert_eq!(decoded.ticket, t);
        assert_eq!(&echo[..HEADER_LEN], &beacon[..HEADER_LEN]);
        // IPv4-mapped IPv6 is the same client.
        assert!(answer(&SECRET, &beacon, ip("::ffff:198.51.100.7"), 999).is_some());
    }

    #[test]
    fn no_echo_for_another_ip_another_secret_an_altered_expiry_or_junk() {
        let t = ticket(&SECRET, ip("198.51.100.7"), 1_000, 77);
        let beacon = encode_beacon(&t, 0, 1, 0);
        assert!(answer(&SECRET, &beacon, ip("198.51.100.8"), 10).is_none());
        assert!(answer(&[8; 32], &beacon, ip("198.51.100.7"), 10).is_none());
        let mut later = t;
        later.expires += 3600;
        let forged = encode_beacon(&later, 0, 1, 0);
        assert!(answer(&SECRET, &forged, ip("198.51.100.7"), 10).is_none());
        let mut other_nonce = t;
        other_nonce.nonce += 1;
        let forged = encode_beacon(&other_nonce, 0, 1, 0);
        assert!(answer(&SECRET, &forged, ip("198.51.100.7"), 10).is_none());
        let (echo, verified) = answer(&SECRET, &beacon, ip("198.51.100.7"), 10).unwrap();
        assert_eq!(verified, t);
        // An echo is not answered (no loops between two supernodes).
        assert!(answer(&SECRET, &echo, ip("198.51.100.7"), 10).is_none());
        for len in 0..=BEACON_LEN + 1 {
            let junk = vec![0x82; len];
            assert!(answer(&SECRET, &junk, ip("198.51.100.7"), 10).is_none());
        }
    }

    #[test]
    fn an_expired_ticket_is_echoed_as_expired() {
        let t = ticket(&SECRET, ip("2001:db8::1"), 1_000, 77);
        let beacon = encode_beacon(&t, 0, 1, 0);
        let (echo, _) = answer(&SECRET, &beacon, ip("2001:db8::1"), 1_000).unwrap();
        assert_eq!(decode(&echo).unwrap().kind, EchoStatus::Expired as u8);
    }

    /// Drives a check for `until_ms` on a virtual clock; the supernode
    /// echoes every beacon (after `rtt_ms`) while `alive(now)`, and answers
    /// pings likewise while `pings(now)`. Returns when it was declared dead.
    fn drive(
        live: &mut Liveness,
        until_ms: u64,
        rtt_ms: u64,
        alive: impl Fn(u64) -> bool,
        pings: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        let source = ip("198.51.100.7");
        let mut in_flight: Vec<(u64, Option<[u8; BEACON_LEN]>)> = Vec::new();
        let mut now = 0;
        while now <= until_ms {
            in_flight.retain(|&(at, echo)| {
                if at > now {
                    return true;
                }
                match echo {
                    Some(e) => {
                        live.handle_echo(&e, now);
                    }
                    None => live.handle_ping_reply(now),
                }
                false
            });
            while let Some(action) = live.poll(now, 0x4242) {
                match action {
                    Action::Beacon(b) if alive(now) => {
                        let (echo, _) = answer(&SECRET, &b, source, 100).unwrap();
                        in_flight.push((now + rtt_ms, Some(echo)));
                    }
                    Action::Beacon(_) => {}
                    Action::Ping if pings(now) => in_flight.push((now + rtt_ms, None)),
                    Action::Ping => {}
                    Action::Dead => return Some(now),
                }
            }
            now += 10;
        }
        None
    }

    fn live() -> Liveness {
        Liveness::new(Some(ticket(&SECRET, ip("198.51.100.7"), 1_000, 77)), 0)
    }

    #[test]
    fn a_live_supernode_stays_alive_on_beacons_alone() {
        let mut l = live();
        assert_eq!(drive(&mut l, 60_000, 40, |_| true, |_| false), None);
        assert_eq!(l.mode(), Mode::Beacon);
    }

    #[test]
    fn a_supernode_that_stops_echoing_is_dead_within_three_seconds() {
        let mut l = live();
        let died = 10_000;
        let dead_at = drive(&mut l, 30_000, 40, |t| t < died, |_| false).unwrap();
        assert!(
            dead_at > died && dead_at <= died + DEAD_AFTER_MS,
            "{dead_at}"
        );
        assert_eq!(l.mode(), Mode::Beacon);
    }

    #[test]
    fn beacons_never_answered_fall_back_to_pings_which_keep_it_alive() {
        let mut l = live();
        assert_eq!(drive(&mut l, 30_000, 40, |_| false, |_| true), None);
        assert_eq!(l.mode(), Mode::Ping);
        // ... and then the supernode dies: dead 3 s later.
        let mut l = live();
        let dead_at = drive(&mut l, 30_000, 40, |_| false, |t| t < 20_000).unwrap();
        assert!((20_000..=23_000).contains(&dead_at), "{dead_at}");
    }

    #[test]
    fn without_a_ticket_pings_from_the_start() {
        let mut l = Liveness::new(None, 0);
        assert_eq!(l.mode(), Mode::Ping);
        assert_eq!(l.poll(0, 0), Some(Action::Ping));
        assert_eq!(l.poll(10, 0), None);
        assert_eq!(l.poll_timeout(), INTERVAL_MS);
        let dead_at = drive(&mut l, 10_000, 40, |_| false, |_| false).unwrap();
        assert_eq!(dead_at, DEAD_AFTER_MS);
    }

    #[test]
    fn stale_or_foreign_echoes_do_not_count() {
        let mut l = live();
        let t = ticket(&SECRET, ip("198.51.100.7"), 1_000, 77);
        let Some(Action::Beacon(first)) = l.poll(0, 1) else {
            panic!("a beacon first")
        };
        let (first_echo, _) = answer(&SECRET, &first, ip("198.51.100.7"), 10).unwrap();
        assert!(l.handle_echo(&first_echo, 20));
        // Later, the supernode is dead; the attacker replays the old echo.
        let mut now = 20;
        let mut dead = None;
        while now < 20_000 && dead.is_none() {
            while let Some(a) = l.poll(now, 1) {
                if a == Action::Dead {
                    dead = Some(now);
                }
            }
            l.handle_echo(&first_echo, now);
            now += 100;
        }
        let dead = dead.expect("declared dead despite the replayed echo");
        assert!(dead <= 20 + DEAD_AFTER_MS + 6 * INTERVAL_MS, "{dead}");
        // An echo for another ticket never counts.
        let mut l = live();
        let _ = l.poll(0, 1);
        let other = ticket(&SECRET, ip("198.51.100.9"), 1_000, 77);
        let b = encode_beacon(&other, 0, 1, 0);
        let (e, _) = answer(&SECRET, &b, ip("198.51.100.9"), 10).unwrap();
        assert!(!l.handle_echo(&e, 10));
        assert_ne!(t, other);
    }
}
