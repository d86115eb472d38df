//! The supernode's UDP service: a STUN reflector (RFC 8489, with the RFC 5780
//! attributes and change-port) on two sockets, and the media relay on the
//! primary one. The decisions are in [`crate::relay`] and
//! `natter_proto::{stun, relay}`; this is the socket loop around them.
//!
//! What arrives on the primary socket:
//! * a STUN message (`stun::looks_like_stun`): a Binding request is answered
//!   with `stun::answer` (never more than 1.6 times the request's bytes)
//!   while the source's prefix has tokens ([`StunLimiter`]), anything else
//!   STUN-shaped is dropped (counted as malformed unless it is a Binding
//!   indication, a keepalive);
//! * a relay bind (`relay::decode_bind`): answered with a bind reply of the
//!   same length carrying the source's cookie; it binds only when it echoed
//!   that cookie (the source proved it receives there);
//! * anything else with a valid SoM header: forwarded if [`RelayTable::route`]
//!   says so, otherwise dropped and counted; without a valid SoM header:
//!   dropped as malformed.
//!
//! The alternate socket only answers STUN; anything else is dropped as
//! malformed.
//!
//! The relay decisions are shared with the TCP relay legs ([`crate::tcp`]):
//! [`UdpService::relay`] handles a bind or a media datagram from either
//! transport and [`UdpService::forward`] sends it on to a UDP address (from
//! the primary socket) or queues it for a TCP leg without waiting.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use natter_proto::relay as wire;
use natter_proto::{som, stun};
use tokio::net::UdpSocket;

use crate::legs::{LegError, Legs};
use crate::relay::{Decision, RelayLimits, RelayPeer, RelayTable};
use crate::stun_limit::{StunLimiter, StunLimits};

/// Binding indication: a STUN keepalive that needs no answer.
const BINDING_INDICATION: u16 = 0x0011;
/// How often idle allocations are swept.
const SWEEP: Duration = Duration::from_secs(1);
/// How often the counters are logged (at debug).
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Counters of the UDP service (STUN reflector and relay), since start. The
/// relay counters (binds, forwarding, drops) count datagrams from both
/// transports: UDP and TCP relay legs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// STUN Binding requests answered (both sockets).
    pub stun_answered: u64,
    /// STUN Binding requests not answered because the source's prefix
    /// (/24, /56) used up its answers ([`StunLimits`]).
    pub stun_limited: u64,
    /// STUN Binding requests too short for any answer within 1.6 times
    /// their size (under 28 bytes from an IPv6 source).
    pub stun_too_small: u64,
    /// Datagrams dropped because they are not what the socket serves:
    /// undecodable STUN, STUN other than Binding request/indication, no SoM
    /// header (on the primary socket or a TCP relay leg), anything but STUN
    /// on the alternate socket, a bind-sized `NRLY` datagram that is not a
    /// bind.
    pub malformed: u64,
    /// Relay binds answered `Bound`.
    pub binds: u64,
    /// Relay binds refused (`UnknownToken` or `OverQuota`).
    pub binds_refused: u64,
    /// UDP relay binds without a valid cookie for their source: answered
    /// with the cookie (a reply as long as the bind), nothing bound.
    pub binds_cookie: u64,
    /// Relay allocations refused (not an accepted call of the requester's,
    /// or over a quota: per user, per source prefix, in total).
    pub allocations_refused: u64,
    /// Datagrams relayed (sent to a UDP address or queued for a TCP leg).
    pub forwarded: u64,
    /// Bytes relayed.
    pub forwarded_bytes: u64,
    /// Datagrams dropped: the source is not bound to a live allocation, or
    /// the other side of its allocation is not bound yet (or is a TCP leg
    /// that just ended).
    pub dropped_unbound: u64,
    /// Datagrams dropped by an allocation's rate limit.
    pub dropped_quota: u64,
    /// Live relay allocations (gauge).
    pub allocations: u64,
}

#[derive(Debug, Default)]
struct Counters {
    stun_answered: AtomicU64,
    stun_limited: AtomicU64,
    stun_too_small: AtomicU64,
    malformed: AtomicU64,
    binds: AtomicU64,
    binds_refused: AtomicU64,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped_unbound: AtomicU64,
    dropped_quota: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The two sockets, owned by the serving task: aborting it closes them.
#[derive(Debug)]
pub(crate) struct UdpSockets {
    /// The TCP relay legs hold a weak reference (they forward from it).
    primary: Arc<UdpSocket>,
    alternate: UdpSocket,
    /// Their bound addresses.
    bound: [SocketAddr; 2],
}

impl UdpSockets {
    fn is_own(&self, addr: SocketAddr) -> bool {
        self.bound.contains(&addr)
    }
}

/// The advertised addresses, the relay table and the counters, shared with
/// the sessions (which allocate).
#[derive(Debug)]
pub(crate) struct UdpService {
    /// Advertised addresses (the bound port, the advertised IP when bound to
    /// a wildcard address).
    pub primary_addr: SocketAddr,
    pub alternate_addr: SocketAddr,
    /// The primary socket, while the serving task runs.
    primary_socket: Weak<UdpSocket>,
    table: Mutex<RelayTable>,
    counters: Counters,
    /// The TCP relay legs' write queues.
    pub legs: Legs,
}

/// Why the UDP service could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot bind the UDP service (STUN reflector and relay) on {addr}; choose its address with --udp"
)]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

fn bind_std(addr: SocketAddr) -> Result<std::net::UdpSocket, BindError> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| BindError { addr, source })?;
    socket
        .set_nonblocking(true)
        .map_err(|source| BindError { addr, source })?;
    Ok(socket)
}

fn with_port(addr: SocketAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr.ip(), port)
}

/// Replaces a wildcard IP with the advertised one.
fn advertised(bound: SocketAddr, advertise_ip: std::net::IpAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::new(advertise_ip, bound.port())
    } else {
        bound
    }
}

impl UdpService {
    /// Binds the primary socket at `primary` (or, when `fallback` and that
    /// port is taken, at any free port of the same IP) and the alternate one
    /// at the next port (any free port when that is taken). Each TCP relay
    /// leg gets a queue of `leg_queue` datagrams. Must run inside a tokio
    /// runtime.
    pub fn bind(
        primary: SocketAddr,
        fallback: bool,
        advertise_ip: std::net::IpAddr,
        limits: RelayLimits,
        leg_queue: usize,
    ) -> Result<(Self, UdpSockets), BindError> {
        let first = match bind_std(primary) {
            Err(_) if fallback && primary.port() != 0 => bind_std(with_port(primary, 0))?,
            other => other?,
        };
        let local = first.local_addr().map_err(|source| BindError {
            addr: primary,
            source,
        })?;
        let second = local
            .port()
            .checked_add(1)
            .and_then(|p| bind_std(with_port(local, p)).ok());
        let second = match second {
            Some(s) => s,
            None => bind_std(with_port(local, 0))?,
        };
        let alt_local = second.local_addr().map_err(|source| BindError {
            addr: local,
            source,
        })?;
        let tokio = |s: std::net::UdpSocket, addr| {
            UdpSocket::from_std(s).map_err(|source| BindError { addr, source })
        };
        let sockets = UdpSockets {
            primary: Arc::new(tokio(first, local)?),
            alternate: tokio(second, alt_local)?,
            bound: [local, alt_local],
        };
        let service = Self {
            primary_addr: advertised(local, advertise_ip),
            alternate_addr: advertised(alt_local, advertise_ip),
            primary_socket: Arc::downgrade(&sockets.primary),
            table: Mutex::new(RelayTable::new(
                limits,
                rand::Rng::r#gen(&mut rand::rngs::OsRng),
                Instant::now(),
            )),
            counters: Counters::default(),
            legs: Legs::new(leg_queue),
        };
        Ok((service, sockets))
    }

    /// The relay table (lock order: the node state, then this).
    pub fn table(&self) -> MutexGuard<'_, RelayTable> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> UdpStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let refusals = self.table().refusals();
        UdpStats {
            stun_answered: get(&c.stun_answered),
            stun_limited: get(&c.stun_limited),
            stun_too_small: get(&c.stun_too_small),
            malformed: get(&c.malformed),
            binds: get(&c.binds),
            binds_refused: get(&c.binds_refused),
            binds_cookie: refusals.cookie,
            allocations_refused: refusals.not_in_call
                + refusals.user_quota
                + refusals.prefix_quota
                + refusals.full,
            forwarded: get(&c.forwarded),
            forwarded_bytes: get(&c.forwarded_bytes),
            dropped_unbound: get(&c.dropped_unbound),
            dropped_quota: get(&c.dropped_quota),
            allocations: self.table().allocation_count() as u64,
        }
    }

    /// Serves both sockets until aborted.
    pub async fn run(self: Arc<Self>, sockets: UdpSockets) {
        // 64 KiB: no datagram is ever truncated (and so forwarded altered).
        let mut buf_p = vec![0u8; 65_536];
        let mut buf_a = vec![0u8; 65_536];
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_log = Instant::now();
        let mut last_logged = UdpStats::default();
        // Only this loop answers STUN: the limiter is its own, no lock.
        let mut limiter = StunLimiter::new(StunLimits::default(), Instant::now());
        loop {
            tokio::select! {
                r = sockets.primary.recv_from(&mut buf_p) => match r {
                    Ok((n, from)) => self.on_primary(&sockets, &mut limiter, &buf_p[..n], from).await,
                    Err(e) => tracing::debug!(error = %e, "UDP receive failed (primary)"),
                },
                r = sockets.alternate.recv_from(&mut buf_a) => match r {
                    Ok((n, from)) => self.on_alternate(&sockets, &mut limiter, &buf_a[..n], from).await,
                    Err(e) => tracing::debug!(error = %e, "UDP receive failed (alternate)"),
                },
                _ = sweep.tick() => {
                    let now = Instant::now();
                    limiter.expire(now);
                    let ended = self.table().expire(now);
                    if ended > 0 {
                        tracing::debug!(ended, "relay allocations expired");
                    }
                    if now.duration_since(last_log) >= LOG_EVERY {
                        last_log = now;
                        let stats = self.stats();
                        if stats != last_logged {
                            tracing::debug!(?stats, "UDP service counters");
                            last_logged = stats;
                        }
                    }
                }
            }
        }
    }

    async fn on_primary(
        &self,
        sockets: &UdpSockets,
        limiter: &mut StunLimiter,
        datagram: &[u8],
        from: SocketAddr,
    ) {
        if sockets.is_own(from) || from == self.primary_addr || from == self.alternate_addr {
            // Only a spoofed source says this; binding it would loop.
            bump(&self.counters.malformed);
            return;
        }
        if stun::looks_like_stun(datagram) {
            self.on_stun(sockets, limiter, datagram, from, true).await;
            return;
        }
        match self.relay(datagram, RelayPeer::Udp(from), Instant::now()) {
            Relayed::Reply(reply) => send(&sockets.primary, &reply, from).await,
            Relayed::Forward(to) => self.forward(Some(&sockets.primary), to, datagram).await,
            Relayed::Dropped => {}
        }
    }

    /// The primary socket, for the TCP relay legs (`None` once the service
    /// stopped).
    pub fn primary_socket(&self) -> Option<Arc<UdpSocket>> {
        self.primary_socket.upgrade()
    }

    /// A relay datagram (not STUN) from `from`, on either transport: a bind
    /// is answered (the reply goes back to `from`), anything else with a SoM
    /// header is routed through the relay table; everything is counted.
    pub fn relay(&self, datagram: &[u8], from: RelayPeer, now: Instant) -> Relayed {
        if let Ok(bind) = wire::decode_bind(datagram) {
            let (status, cookie) =
                self.table()
                    .bind(&bind.token, &bind.cookie, from, datagram.len(), now);
            match status {
                wire::BindStatus::Bound => bump(&self.counters.binds),
                wire::BindStatus::Cookie => {}
                _ => bump(&self.counters.binds_refused),
            }
            // As long as the bind: amplification 1.0 toward its source.
            return Relayed::Reply(wire::encode_bind_reply(datagram, status, &cookie));
        }
        if som::Header::decode(datagram).is_err() {
            bump(&self.counters.malformed);
            return Relayed::Dropped;
        }
        let decision = self.table().route(from, datagram.len(), now);
        match decision {
            Decision::Forward(to) => return Relayed::Forward(to),
            Decision::Unbound | Decision::PeerUnbound => bump(&self.counters.dropped_unbound),
            Decision::OverQuota => bump(&self.counters.dropped_quota),
        }
        Relayed::Dropped
    }

    /// Sends a routed datagram on: to a UDP address from the primary socket
    /// (`socket`; dropped when `None`), or into a TCP leg's queue without
    /// waiting (a full queue drops it, counted by [`Legs`]; a leg that is
    /// gone is unbound).
    pub async fn forward(&self, socket: Option<&UdpSocket>, to: RelayPeer, datagram: &[u8]) {
        let sent = match to {
            RelayPeer::Udp(addr) => match socket {
                Some(socket) => {
                    send(socket, datagram, addr).await;
                    true
                }
                None => false,
            },
            RelayPeer::Tcp(id) => match self.legs.push(id, datagram) {
                Ok(()) => true,
                Err(LegError::Gone) => {
                    self.table().unbind(to);
                    bump(&self.counters.dropped_unbound);
                    false
                }
                Err(LegError::Full | LegError::TooLong) => false,
            },
        };
        if sent {
            bump(&self.counters.forwarded);
            self.counters
                .forwarded_bytes
                .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        }
    }

    async fn on_alternate(
        &self,
        sockets: &UdpSockets,
        limiter: &mut StunLimiter,
        datagram: &[u8],
        from: SocketAddr,
    ) {
        if stun::looks_like_stun(datagram) {
            self.on_stun(sockets, limiter, datagram, from, false).await;
        } else {
            bump(&self.counters.malformed);
        }
    }

    /// Answers a Binding request received on the primary socket (`on_primary`)
    /// or the alternate one: from the other socket when it asks for a change
    /// of port (a change of IP is not possible on one IP and is ignored),
    /// with what fits in 1.6 times the request (`stun::answer`), if the
    /// source's prefix has a token left.
    async fn on_stun(
        &self,
        sockets: &UdpSockets,
        limiter: &mut StunLimiter,
        datagram: &[u8],
        from: SocketAddr,
        on_primary: bool,
    ) {
        let request = match stun::Message::decode(datagram) {
            Ok(m) if m.kind == stun::BINDING_REQUEST => m,
            Ok(m) if m.kind == BINDING_INDICATION => return,
            _ => {
                bump(&self.counters.malformed);
                return;
            }
        };
        // OTHER-ADDRESS is relative to the socket that received the request
        // (RFC 5780 section 7.3): where a change request would be answered from.
        let other = if on_primary {
            self.alternate_addr
        } else {
            self.primary_addr
        };
        let from_primary = on_primary != request.change_port;
        let (socket, origin) = if from_primary {
            (&*sockets.primary, self.primary_addr)
        } else {
            (&sockets.alternate, self.alternate_addr)
        };
        let Some(response) = stun::answer(&request, datagram.len(), from, origin, other) else {
            bump(&self.counters.stun_too_small);
            return;
        };
        if !limiter.allow(from.ip(), Instant::now()) {
            bump(&self.counters.stun_limited);
            return;
        }
        bump(&self.counters.stun_answered);
        send(socket, &response, from).await;
    }
}

/// What [`UdpService::relay`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Relayed {
    /// A bind: send this reply back to the source.
    Reply(Vec<u8>),
    /// Forward the datagram, unchanged, to this endpoint.
    Forward(RelayPeer),
    /// Dropped (and counted).
    Dropped,
}

async fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(datagram, to).await {
        tracing::debug!(%to, error = %e, "UDP send failed");
    }
}
