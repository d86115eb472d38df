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
//! * a liveness beacon (`alive::looks_like_beacon`): echoed, as long as it
//!   is, when its ticket verifies for its source IP (`alive::answer`: one
//!   HMAC, no state), otherwise dropped and counted;
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
//!
//! Threads: each socket is served by its own OS thread (`natter-relay`,
//! `natter-stun-alt`), not by a tokio task, so that signaling load on the
//! runtime cannot starve the relay. The primary thread reads up to
//! [`BATCH`] datagrams per system call (`recvmmsg`, through quinn-udp),
//! takes the relay table's lock once per batch (not per datagram), forwards
//! with one `sendmmsg` per batch (through rustix, safely), and counts in thread-local counters added to the
//! shared ones once per batch. Nothing is allocated per forwarded datagram.
//! A tokio task sweeps idle allocations and STUN limiter entries every
//! second; stopping the service ([`UdpService::stop`], or aborting that
//! task) ends the threads, which close the sockets.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natter_proto::relay as wire;
use natter_proto::{alive, som, stun};
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

use crate::legs::{LegError, Legs};
use crate::relay::{Decision, RelayLimits, RelayPeer, RelayTable};
use crate::stun_limit::{StunLimiter, StunLimits};

/// Binding indication: a STUN keepalive that needs no answer.
const BINDING_INDICATION: u16 = 0x0011;
/// How often idle allocations are swept.
const SWEEP: Duration = Duration::from_secs(1);
/// How often the counters are logged (at debug).
const LOG_EVERY: Duration = Duration::from_secs(30);
/// Beacon macs held for the node task at most (it takes them every second;
/// a supernode of 10,000 clients notes 10,000 a second).
const MAX_HEARD: usize = 1 << 17;
/// Datagrams read per system call on the primary socket.
pub const BATCH: usize = 32;
/// Receive buffer of each datagram: 64 KiB, so no datagram is ever truncated
/// (and so forwarded altered).
const DATAGRAM_BUF: usize = 65_536;
/// How long a socket thread waits for a datagram before it checks whether
/// the service stopped.
const POLL: Duration = Duration::from_millis(25);
/// Kernel buffers asked for on the sockets (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`): a burst of relayed media waits there
/// instead of being dropped.
const SOCKET_BUFFER: usize = 4 << 20;

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
    /// Liveness beacons echoed (docs/PROTOCOL.md, "Liveness beacons").
    pub beacons: u64,
    /// Beacon-shaped datagrams whose ticket did not verify for their
    /// source: dropped, no answer.
    pub beacons_refused: u64,
}

/// The shared counters, written by the socket threads once per batch and by
/// the TCP relay legs. On a cache line of their own (the node state nearby
/// is written by other threads).
#[derive(Debug, Default)]
#[repr(align(128))]
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
    beacons: AtomicU64,
    beacons_refused: AtomicU64,
}

/// Counts of one thread (or one TCP datagram) not yet added to [`Counters`].
#[derive(Debug, Default, Clone, Copy)]
struct Local {
    stun_answered: u64,
    stun_limited: u64,
    stun_too_small: u64,
    malformed: u64,
    binds: u64,
    binds_refused: u64,
    forwarded: u64,
    forwarded_bytes: u64,
    dropped_unbound: u64,
    dropped_quota: u64,
    beacons: u64,
    beacons_refused: u64,
}

impl Counters {
    /// Adds `local` and zeroes it.
    fn flush(&self, local: &mut Local) {
        let add = |a: &AtomicU64, n: u64| {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.stun_answered, local.stun_answered);
        add(&self.stun_limited, local.stun_limited);
        add(&self.stun_too_small, local.stun_too_small);
        add(&self.malformed, local.malformed);
        add(&self.binds, local.binds);
        add(&self.binds_refused, local.binds_refused);
        add(&self.forwarded, local.forwarded);
        add(&self.forwarded_bytes, local.forwarded_bytes);
        add(&self.dropped_unbound, local.dropped_unbound);
        add(&self.dropped_quota, local.dropped_quota);
        add(&self.beacons, local.beacons);
        add(&self.beacons_refused, local.beacons_refused);
        *local = Local::default();
    }
}

/// The two sockets, handed to the socket threads by [`UdpService::run`].
#[derive(Debug)]
pub(crate) struct UdpSockets {
    primary: Arc<UdpSocket>,
    alternate: Arc<UdpSocket>,
    /// Their bound addresses.
    bound: [SocketAddr; 2],
}

/// The advertised addresses, the relay table and the counters, shared with
/// the sessions (which allocate).
#[derive(Debug)]
pub(crate) struct UdpService {
    /// Advertised addresses (the bound port, the advertised IP when bound to
    /// a wildcard address).
    pub primary_addr: SocketAddr,
    pub alternate_addr: SocketAddr,
    /// The bound addresses of both sockets.
    bound: [SocketAddr; 2],
    /// The primary socket, while the service runs (the TCP relay legs
    /// forward from it).
    primary_socket: Mutex<Option<Arc<UdpSocket>>>,
    table: Mutex<RelayTable>,
    /// The key of the liveness tickets (`natter_proto::alive`): random per
    /// start, handed to the node core, which issues the tickets.
    alive_secret: [u8; 32],
    /// The ticket macs of the beacons echoed since the node task last took
    /// them ([`Self::take_heard`]); at most [`MAX_HEARD`].
    heard: Mutex<Vec<[u8; alive::MAC_LEN]>>,
    /// Answers STUN on both sockets.
    limiter: Mutex<StunLimiter>,
    counters: Counters,
    /// The TCP relay legs' write queues.
    pub legs: Legs,
    /// Set to stop the socket threads.
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
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

fn bind_std(addr: SocketAddr) -> Result<UdpSocket, BindError> {
    let socket = UdpSocket::bind(addr).map_err(|source| BindError { addr, source })?;
    // Blocking with a timeout: the socket threads wake up to see a stop.
    socket
        .set_read_timeout(Some(POLL))
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl UdpService {
    /// Binds the primary socket at `primary` (or, when `fallback` and that
    /// port is taken, at any free port of the same IP) and the alternate one
    /// at the next port (any free port when that is taken). Each TCP relay
    /// leg gets a queue of `leg_queue` datagrams.
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
        let sockets = UdpSockets {
            primary: Arc::new(first),
            alternate: Arc::new(second),
            bound: [local, alt_local],
        };
        let service = Self {
            primary_addr: advertised(local, advertise_ip),
            alternate_addr: advertised(alt_local, advertise_ip),
            bound: [local, alt_local],
            primary_socket: Mutex::new(Some(Arc::clone(&sockets.primary))),
            table: Mutex::new(RelayTable::new(
                limits,
                rand::Rng::r#gen(&mut rand::rngs::OsRng),
                Instant::now(),
            )),
            alive_secret: rand::Rng::r#gen(&mut rand::rngs::OsRng),
            heard: Mutex::new(Vec::new()),
            limiter: Mutex::new(StunLimiter::new(StunLimits::default(), Instant::now())),
            counters: Counters::default(),
            legs: Legs::new(leg_queue),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        };
        Ok((service, sockets))
    }

    /// The relay table (lock order: the node state, then this).
    pub fn table(&self) -> MutexGuard<'_, RelayTable> {
        lock(&self.table)
    }

    /// The key of the liveness tickets this service checks.
    pub fn alive_secret(&self) -> [u8; 32] {
        self.alive_secret
    }

    /// The ticket macs of the beacons echoed since the last call (the node
    /// task takes them every second: `core::Node::handle_beacons`).
    pub fn take_heard(&self) -> Vec<[u8; alive::MAC_LEN]> {
        std::mem::take(&mut *lock(&self.heard))
    }

    /// Notes the macs of a batch's beacons: one lock per batch, bounded (a
    /// mac beyond [`MAX_HEARD`] is dropped; its client beacons again in a
    /// second, and the node waits six).
    fn note_heard(&self, macs: &mut Vec<[u8; alive::MAC_LEN]>) {
        if macs.is_empty() {
            return;
        }
        let mut heard = lock(&self.heard);
        let room = MAX_HEARD.saturating_sub(heard.len());
        heard.extend(macs.drain(..).take(room));
        macs.clear();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> UdpStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (refusals, allocations) = {
            let table = self.table();
            (table.refusals(), table.allocation_count() as u64)
        };
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
            allocations,
            beacons: get(&c.beacons),
            beacons_refused: get(&c.beacons_refused),
        }
    }

    /// Serves both sockets, each on its own thread, and sweeps the relay
    /// table every second, until [`Self::stop`] or until this future is
    /// dropped (an aborted task), which stops the threads.
    pub async fn run(self: Arc<Self>, sockets: UdpSockets) {
        struct StopOnDrop(Arc<UdpService>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.stop();
            }
        }
        let _guard = StopOnDrop(Arc::clone(&self));
        if let Err(e) = self.spawn_threads(sockets) {
            tracing::warn!(error = %e, "cannot start the UDP service's threads");
            return;
        }
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_log = Instant::now();
        let mut last_logged = UdpStats::default();
        while !self.stop.load(Ordering::Relaxed) {
            sweep.tick().await;
            let now = Instant::now();
            lock(&self.limiter).expire(now);
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

    fn spawn_threads(self: &Arc<Self>, sockets: UdpSockets) -> io::Result<()> {
        let UdpSockets {
            primary,
            alternate,
            bound,
        } = sockets;
        let state = UdpSocketState::new(UdpSockRef::from(&*primary))?;
        // Best effort: the kernel caps them.
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&*primary), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&*primary), SOCKET_BUFFER);
        let service = Arc::clone(self);
        let (p, a) = (Arc::clone(&primary), Arc::clone(&alternate));
        let primary_thread = std::thread::Builder::new()
            .name("natter-relay".into())
            .spawn(move || service.serve_primary(&p, &a, &state))?;
        let service = Arc::clone(self);
        let alternate_thread = std::thread::Builder::new()
            .name("natter-stun-alt".into())
            .spawn(move || service.serve_alternate(&primary, &alternate))?;
        debug_assert_eq!(bound, self.bound);
        lock(&self.threads).extend([primary_thread, alternate_thread]);
        Ok(())
    }

    /// Stops the socket threads and waits for them: the sockets are closed
    /// when this returns (unless called from one of them).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        *lock(&self.primary_socket) = None;
        let threads: Vec<JoinHandle<()>> = lock(&self.threads).drain(..).collect();
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }

    fn is_own(&self, addr: SocketAddr) -> bool {
        self.bound.contains(&addr) || addr == self.primary_addr || addr == self.alternate_addr
    }

    /// The primary socket's loop: batches of datagrams, one table lock per
    /// batch. quinn-udp makes the socket non-blocking: the thread waits for
    /// it to become readable on a current-thread tokio runtime of its own
    /// (its own epoll, nothing shared with the node's runtime), then reads
    /// with `recvmmsg` until the socket is empty.
    fn serve_primary(&self, primary: &UdpSocket, alternate: &UdpSocket, state: &UdpSocketState) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the relay thread's runtime");
                return;
            }
        };
        runtime.block_on(self.serve_primary_on(primary, alternate, state));
    }

    async fn serve_primary_on(
        &self,
        primary: &UdpSocket,
        alternate: &UdpSocket,
        state: &UdpSocketState,
    ) {
        let readiness = match primary
            .try_clone()
            .and_then(tokio::net::UdpSocket::from_std)
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the relay socket");
                return;
            }
        };
        let mut bufs: Vec<Box<[u8]>> = (0..BATCH)
            .map(|_| vec![0u8; DATAGRAM_BUF].into_boxed_slice())
            .collect();
        let mut meta = [RecvMeta::default(); BATCH];
        let mut local = Local::default();
        // What the batch sends, once counted and the lock released: relayed
        // datagrams (buffer, start, end, destination) and bind replies.
        // Reused: nothing is allocated per forwarded datagram.
        let mut out: Vec<(usize, usize, usize, SocketAddr)> = Vec::with_capacity(4 * BATCH);
        let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        // The destinations of one `sendmmsg`, in the kernel's form.
        let mut addrs: Vec<SocketAddrAny> = Vec::with_capacity(BATCH);
        // Beacon echoes of the batch (no allocation: a beacon's length), and
        // their tickets' macs.
        let mut echoes: Vec<([u8; alive::BEACON_LEN], SocketAddr)> = Vec::with_capacity(BATCH);
        let mut macs: Vec<[u8; alive::MAC_LEN]> = Vec::with_capacity(BATCH);
        while !self.stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(POLL, readiness.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "UDP readiness failed (primary)");
                    continue;
                }
                Err(_) => continue,
            }
            let received = readiness.try_io(tokio::io::Interest::READABLE, || {
                let mut it = bufs.iter_mut();
                let mut slices: [IoSliceMut<'_>; BATCH] = std::array::from_fn(|_| {
                    IoSliceMut::new(it.next().map_or(&mut [][..], |b| &mut b[..]))
                });
                state.recv(UdpSockRef::from(primary), &mut slices, &mut meta)
            });
            let n = match received {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed (primary)");
                    continue;
                }
            };
            let now = Instant::now();
            let mut unix_secs = None;
            // Taken at the first relay datagram, held for the decisions of
            // the batch, released before its sends.
            let mut table: Option<MutexGuard<'_, RelayTable>> = None;
            for (i, m) in meta.iter().enumerate().take(n) {
                let from = m.addr;
                // GRO may have joined datagrams of one source: `stride` apart.
                // An empty datagram is one datagram too (dropped as malformed).
                let stride = if m.stride == 0 { m.len } else { m.stride }.max(1);
                for start in (0..m.len.max(1)).step_by(stride) {
                    let end = (start + stride).min(m.len);
                    let datagram = &bufs[i][start..end];
                    if self.is_own(from) {
                        // Only a spoofed source says this; binding it would loop.
                        local.malformed += 1;
                        continue;
                    }
                    if stun::looks_like_stun(datagram) {
                        self.on_stun(primary, alternate, &mut local, datagram, from, true);
                        continue;
                    }
                    if alive::looks_like_beacon(datagram) {
                        let now_secs = *unix_secs.get_or_insert_with(unix_now_secs);
                        match alive::answer(&self.alive_secret, datagram, from.ip(), now_secs) {
                            Some((echo, ticket)) => {
                                local.beacons += 1;
                                echoes.push((echo, from));
                                macs.push(ticket.mac);
                            }
                            None => local.beacons_refused += 1,
                        }
                        continue;
                    }
                    let table = table.get_or_insert_with(|| self.table());
                    match self.relay_in(table, &mut local, datagram, RelayPeer::Udp(from), now) {
                        Relayed::Reply(reply) => replies.push((reply, from)),
                        Relayed::Forward(RelayPeer::Udp(to)) => {
                            out.push((i, start, end, to));
                            local.forwarded += 1;
                            local.forwarded_bytes += datagram.len() as u64;
                        }
                        Relayed::Forward(to @ RelayPeer::Tcp(_)) => {
                            self.forward_to_leg(table, &mut local, to, datagram);
                        }
                        Relayed::Dropped => {}
                    }
                }
            }
            drop(table);
            self.note_heard(&mut macs);
            // Counted before sent: whoever sees a datagram arrive sees it
            // counted.
            self.counters.flush(&mut local);
            let replies_out = replies
                .iter()
                .map(|(reply, to)| (&reply[..], *to))
                .chain(echoes.iter().map(|(echo, to)| (&echo[..], *to)));
            let relayed_out = out
                .iter()
                .map(|&(i, start, end, to)| (&bufs[i][start..end], to));
            send_many(primary, replies_out.chain(relayed_out), &mut addrs);
            replies.clear();
            echoes.clear();
            out.clear();
        }
    }

    /// The alternate socket's loop: STUN only.
    fn serve_alternate(&self, primary: &UdpSocket, alternate: &UdpSocket) {
        let mut buf = vec![0u8; DATAGRAM_BUF];
        let mut local = Local::default();
        while !self.stop.load(Ordering::Relaxed) {
            match alternate.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if stun::looks_like_stun(&buf[..n]) {
                        self.on_stun(primary, alternate, &mut local, &buf[..n], from, false);
                    } else {
                        local.malformed += 1;
                    }
                    self.counters.flush(&mut local);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => tracing::debug!(error = %e, "UDP receive failed (alternate)"),
            }
        }
    }

    /// The primary socket, for the TCP relay legs (`None` once the service
    /// stopped).
    pub fn primary_socket(&self) -> Option<Arc<UdpSocket>> {
        lock(&self.primary_socket).clone()
    }

    /// A relay datagram (not STUN) from `from`, on either transport: a bind
    /// is answered (the reply goes back to `from`), anything else with a SoM
    /// header is routed through the relay table; everything is counted.
    pub fn relay(&self, datagram: &[u8], from: RelayPeer, now: Instant) -> Relayed {
        let mut local = Local::default();
        let relayed = self.relay_in(&mut self.table(), &mut local, datagram, from, now);
        self.counters.flush(&mut local);
        relayed
    }

    fn relay_in(
        &self,
        table: &mut RelayTable,
        local: &mut Local,
        datagram: &[u8],
        from: RelayPeer,
        now: Instant,
    ) -> Relayed {
        if let Ok(bind) = wire::decode_bind(datagram) {
            let (status, cookie) = table.bind(&bind.token, &bind.cookie, from, datagram.len(), now);
            match status {
                wire::BindStatus::Bound => local.binds += 1,
                wire::BindStatus::Cookie => {}
                _ => local.binds_refused += 1,
            }
            // As long as the bind: amplification 1.0 toward its source.
            return Relayed::Reply(wire::encode_bind_reply(datagram, status, &cookie));
        }
        if som::Header::decode(datagram).is_err() {
            local.malformed += 1;
            return Relayed::Dropped;
        }
        match table.route(from, datagram.len(), now) {
            Decision::Forward(to) => return Relayed::Forward(to),
            Decision::Unbound | Decision::PeerUnbound => local.dropped_unbound += 1,
            Decision::OverQuota => local.dropped_quota += 1,
        }
        Relayed::Dropped
    }

    /// Queues a routed datagram for TCP leg `to` without waiting (a full
    /// queue drops it, counted by [`Legs`]; a leg that is gone is unbound).
    fn forward_to_leg(
        &self,
        table: &mut RelayTable,
        local: &mut Local,
        to: RelayPeer,
        datagram: &[u8],
    ) {
        let RelayPeer::Tcp(id) = to else { return };
        match self.legs.push(id, datagram) {
            Ok(()) => {
                local.forwarded += 1;
                local.forwarded_bytes += datagram.len() as u64;
                // At once, as the UDP sends are (not the hot path).
                self.counters.flush(local);
            }
            Err(LegError::Gone) => {
                table.unbind(to);
                local.dropped_unbound += 1;
            }
            Err(LegError::Full | LegError::TooLong) => {}
        }
    }

    /// Sends a routed datagram on: to a UDP address from the primary socket
    /// (`socket`; dropped when `None`), or into a TCP leg's queue without
    /// waiting (a full queue drops it, counted by [`Legs`]; a leg that is
    /// gone is unbound).
    pub async fn forward(&self, socket: Option<&UdpSocket>, to: RelayPeer, datagram: &[u8]) {
        let mut local = Local::default();
        match to {
            RelayPeer::Udp(addr) => {
                if let Some(socket) = socket {
                    local.forwarded += 1;
                    local.forwarded_bytes += datagram.len() as u64;
                    self.counters.flush(&mut local);
                    send(socket, datagram, addr);
                }
            }
            RelayPeer::Tcp(_) => self.forward_to_leg(&mut self.table(), &mut local, to, datagram),
        }
        self.counters.flush(&mut local);
    }

    /// Answers a Binding request received on the primary socket or the
    /// alternate one: from the other socket when it asks for a change of
    /// port (a change of IP is not possible on one IP and is ignored), with
    /// what fits in 1.6 times the request (`stun::answer`), if the source's
    /// prefix has a token left.
    fn on_stun(
        &self,
        primary: &UdpSocket,
        alternate: &UdpSocket,
        local: &mut Local,
        datagram: &[u8],
        from: SocketAddr,
        on_primary: bool,
    ) {
        let request = match stun::Message::decode(datagram) {
            Ok(m) if m.kind == stun::BINDING_REQUEST => m,
            Ok(m) if m.kind == BINDING_INDICATION => return,
            _ => {
                local.malformed += 1;
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
            (primary, self.primary_addr)
        } else {
            (alternate, self.alternate_addr)
        };
        let Some(response) = stun::answer(&request, datagram.len(), from, origin, other) else {
            local.stun_too_small += 1;
            return;
        };
        if !lock(&self.limiter).allow(from.ip(), Instant::now()) {
            local.stun_limited += 1;
            return;
        }
        local.stun_answered += 1;
        // Counted before sent (see `serve_primary`).
        self.counters.flush(local);
        send(socket, &response, from);
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

/// Sends `datagrams` from `socket` with one `sendmmsg` per [`BATCH`] of
/// them. A datagram the kernel refuses is skipped and logged, as [`send`]
/// does; a full socket buffer (the socket is non-blocking) drops the rest of
/// the call's datagrams. `addrs` is scratch space, reused across calls.
///
/// Public for the relay bench's bare forwarder, which measures the
/// practical limit with this same batched send.
pub fn send_many<'b>(
    socket: &UdpSocket,
    datagrams: impl Iterator<Item = (&'b [u8], SocketAddr)>,
    addrs: &mut Vec<SocketAddrAny>,
) {
    let mut datagrams = datagrams.peekable();
    let mut iovs: Vec<[IoSlice<'b>; 1]> = Vec::with_capacity(BATCH);
    while datagrams.peek().is_some() {
        addrs.clear();
        iovs.clear();
        for (datagram, to) in datagrams.by_ref().take(BATCH) {
            addrs.push(SocketAddrAny::from(to));
            iovs.push([IoSlice::new(datagram)]);
        }
        let mut controls: [SendAncillaryBuffer<'_, '_, '_>; BATCH] =
            std::array::from_fn(|_| SendAncillaryBuffer::default());
        let mut messages: Vec<MMsgHdr<'_>> = addrs
            .iter()
            .zip(&iovs)
            .zip(controls.iter_mut())
            .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
            .collect();
        let mut sent = 0;
        while sent < messages.len() {
            match rustix::net::sendmmsg(socket, &mut messages[sent..], SendFlags::empty()) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(rustix::io::Errno::AGAIN) => {
                    tracing::debug!(dropped = messages.len() - sent, "UDP socket buffer full");
                    break;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    // The first datagram of the rest failed: skip it.
                    tracing::debug!(error = %e, "UDP send failed");
                    sent += 1;
                }
            }
        }
    }
}

/// Seconds since the Unix epoch (liveness tickets expire in Unix time).
fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One `sendto` (a UDP send does not wait on a full socket buffer for
/// long: the datagram is dropped at the device queue instead).
fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(datagram, to) {
        tracing::debug!(%to, error = %e, "UDP send failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    }

    /// More than one system call's worth of datagrams to three receivers,
    /// with one the kernel refuses (an IPv6 destination from an IPv4
    /// socket) in the middle of the first call: every other datagram
    /// arrives, unchanged and in order, at its own destination.
    #[test]
    fn send_many_delivers_every_datagram_and_skips_a_refused_one() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let receivers: Vec<UdpSocket> = (0..3).map(|_| receiver()).collect();
        let addrs: Vec<SocketAddr> = receivers.iter().map(|r| r.local_addr().unwrap()).collect();
        let refused: SocketAddr = "[::1]:9".parse().unwrap();
        let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 20 + usize::from(i)]).collect();
        let plan: Vec<(&[u8], SocketAddr)> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (&p[..], if i == 7 { refused } else { addrs[i % 3] }))
            .collect();
        let mut scratch = Vec::new();
        send_many(&sender, plan.iter().copied(), &mut scratch);
        for (r, receiver) in receivers.iter().enumerate() {
            let expected: Vec<&Vec<u8>> = payloads
                .iter()
                .enumerate()
                .filter(|&(i, _)| i % 3 == r && i != 7)
                .map(|(_, p)| p)
                .collect();
            let mut buf = [0u8; 256];
            for want in expected {
                let (n, from) = receiver.recv_from(&mut buf).unwrap();
                assert_eq!(from, sender.local_addr().unwrap());
                assert_eq!(&buf[..n], &want[..]);
            }
        }
    }
}
