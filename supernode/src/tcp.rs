//! The TLS-over-TCP listener: the firewall fallback for clients whose UDP
//! (and so QUIC) is blocked. A connection carries the records of
//! [`natter_proto::record`]; its **first record** (within the handshake
//! timeout, like the TLS handshake before it) decides what it is:
//!
//! * an ENVELOPE with `JoinHello`: a client session, run by
//!   [`crate::session`] exactly as over QUIC (DATAGRAM records on it are
//!   ignored);
//! * a DATAGRAM that is a relay bind: a **TCP relay leg**. Every DATAGRAM on
//!   it is handled like a UDP datagram reaching the relay's primary socket
//!   ([`crate::udp::UdpService::relay`]), with the leg in place of a UDP
//!   address ([`RelayPeer::Tcp`]); bind replies and datagrams forwarded to
//!   the leg go out as DATAGRAM records through a bounded queue drained by
//!   the leg's own writer, so the UDP loop never waits for a TCP peer;
//! * anything else (gossip: supernode links are QUIC only; another request;
//!   a non-bind datagram): `ErrorReply{NOT_JOINED}` and close `REFUSED`; a
//!   malformed record closes `MALFORMED`.
//!
//! TCP connections share the QUIC endpoint's connection limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use natter_net::tcp::Accepted;
use natter_net::{
    ControlConn, EnvelopeRecv, EnvelopeSend, NetError, RecordReader, TlsHandle, TlsListener,
};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Envelope, ErrorCode, ErrorReply};
use natter_proto::record::{MAX_DATAGRAM_LEN, Record};
use natter_proto::stun;
use tokio::sync::mpsc;

use crate::close;
use crate::node::Inner;
use crate::relay::RelayPeer;
use crate::udp::Relayed;

/// How long to wait after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the counters are logged (at debug).
const LOG_EVERY: Duration = Duration::from_secs(30);
/// How often a relay leg checks that it is still bound.
const LEG_CHECK: Duration = Duration::from_secs(1);
/// Time allowed to write a refusal before closing.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Counters of the TLS-over-TCP listener, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections whose TLS handshake completed.
    pub accepted: u64,
    /// Connections whose TLS handshake failed or did not complete within
    /// the handshake timeout (not TLS, wrong ALPN, ...).
    pub handshake_failed: u64,
    /// Connections dropped at once because the supernode holds its
    /// maximum of connections (QUIC and TCP together).
    pub over_limit: u64,
    /// Connections refused after the handshake: no record within the
    /// handshake timeout, a first record that is neither a `JoinHello`
    /// envelope nor a relay bind, or an envelope on a relay leg.
    pub refused: u64,
    /// Connections closed for a malformed record as their first record or
    /// on a relay leg (a malformed record in a session closes it
    /// `MALFORMED` too, but is not counted here).
    pub malformed: u64,
    /// Client sessions joined over TCP now (gauge).
    pub sessions: u64,
    /// Client sessions joined over TCP since start.
    pub sessions_total: u64,
    /// TCP relay legs open now (gauge).
    pub relay_legs: u64,
    /// TCP relay legs opened since start.
    pub relay_legs_total: u64,
    /// Relay legs closed because they were bound to no live allocation for
    /// the relay lifetime.
    pub relay_legs_unbound: u64,
    /// Datagrams (forwarded media or bind replies) dropped because a relay
    /// leg's queue was full.
    pub dropped_queue_full: u64,
    /// Datagrams for a relay leg dropped because they do not fit a
    /// DATAGRAM record (over 1472 bytes).
    pub dropped_too_long: u64,
    /// STUN datagrams on a relay leg (not served over TCP), dropped.
    pub dropped_stun: u64,
}

/// The listener's counters and open connections, shared with the sessions.
#[derive(Debug, Default)]
pub(crate) struct TcpCounters {
    accepted: AtomicU64,
    handshake_failed: AtomicU64,
    over_limit: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
    sessions: AtomicU64,
    sessions_total: AtomicU64,
    relay_legs_unbound: AtomicU64,
    dropped_stun: AtomicU64,
    open: Mutex<Open>,
}

/// Connections past their TLS handshake, closed at shutdown.
#[derive(Debug, Default)]
struct Open {
    handles: HashMap<u64, TlsHandle>,
    shut_down: bool,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counts a gauge up while alive.
#[derive(Debug)]
pub(crate) struct Live<'a>(&'a AtomicU64);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TcpCounters {
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a connection past its handshake; false after shutdown.
    fn register(&self, id: u64, handle: &TlsHandle) -> bool {
        let mut open = self.open();
        if open.shut_down {
            return false;
        }
        open.handles.insert(id, handle.clone());
        true
    }

    fn unregister(&self, id: u64) {
        self.open().handles.remove(&id);
    }

    /// Closes every TCP connection (shutdown); later ones are closed at once.
    pub fn close_all(&self) {
        let handles = {
            let mut open = self.open();
            open.shut_down = true;
            std::mem::take(&mut open.handles)
        };
        for handle in handles.into_values() {
            handle.close(close::NORMAL, "shutdown");
        }
    }

    /// A client session joined over TCP: counted while the guard lives.
    pub fn session(&self) -> Live<'_> {
        bump(&self.sessions);
        bump(&self.sessions_total);
        Live(&self.sessions)
    }
}

/// Why a datagram could not be queued for a relay leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LegError {
    /// The leg's queue is full (counted).
    #[error("relay leg queue full")]
    Full,
    /// Longer than a DATAGRAM record may be (counted).
    #[error("datagram too long for a record")]
    TooLong,
    /// No such leg (it ended).
    #[error("relay leg gone")]
    Gone,
}

/// The TCP relay legs' bounded write queues, by connection id.
#[derive(Debug)]
pub(crate) struct Legs {
    queue: usize,
    senders: Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>,
    opened: AtomicU64,
    dropped_full: AtomicU64,
    dropped_too_long: AtomicU64,
}

impl Legs {
    /// No legs; each will queue at most `queue` datagrams.
    pub fn new(queue: usize) -> Self {
        Self {
            queue: queue.max(1),
            senders: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_too_long: AtomicU64::new(0),
        }
    }

    fn senders(&self) -> MutexGuard<'_, HashMap<u64, mpsc::Sender<Vec<u8>>>> {
        self.senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the queue of leg `id`; its writer drains the receiver.
    fn open(&self, id: u64) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(self.queue);
        self.senders().insert(id, tx);
        bump(&self.opened);
        rx
    }

    /// Closes the queue of leg `id` (its writer ends once it is drained).
    fn close(&self, id: u64) {
        self.senders().remove(&id);
    }

    /// Open legs.
    pub fn count(&self) -> usize {
        self.senders().len()
    }

    /// Queues `datagram` for leg `id` without waiting.
    pub fn push(&self, id: u64, datagram: &[u8]) -> Result<(), LegError> {
        let senders = self.senders();
        let Some(tx) = senders.get(&id) else {
            return Err(LegError::Gone);
        };
        if datagram.len() > MAX_DATAGRAM_LEN {
            bump(&self.dropped_too_long);
            return Err(LegError::TooLong);
        }
        match tx.try_send(datagram.to_vec()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.dropped_full);
                Err(LegError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(LegError::Gone),
        }
    }
}

/// A snapshot of the counters.
pub(crate) fn stats(inner: &Inner) -> TcpStats {
    let c = &inner.tcp;
    let legs = &inner.udp.legs;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    TcpStats {
        accepted: get(&c.accepted),
        handshake_failed: get(&c.handshake_failed),
        over_limit: get(&c.over_limit),
        refused: get(&c.refused),
        malformed: get(&c.malformed),
        sessions: get(&c.sessions),
        sessions_total: get(&c.sessions_total),
        relay_legs: legs.count() as u64,
        relay_legs_total: get(&legs.opened),
        relay_legs_unbound: get(&c.relay_legs_unbound),
        dropped_queue_full: get(&legs.dropped_full),
        dropped_too_long: get(&legs.dropped_too_long),
        dropped_stun: get(&c.dropped_stun),
    }
}

/// Accepts TCP connections until aborted; each runs in its own task.
pub(crate) async fn accept_loop(inner: Arc<Inner>, listener: TlsListener) {
    let mut log = tokio::time::interval(LOG_EVERY);
    log.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_logged = TcpStats::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => admit(&inner, accepted),
                Err(e) => {
                    tracing::debug!(error = %e, "TCP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = log.tick() => {
                let stats = stats(&inner);
                if stats != last_logged {
                    tracing::debug!(?stats, "TCP listener counters");
                    last_logged = stats;
                }
            }
        }
    }
}

fn admit(inner: &Arc<Inner>, accepted: Accepted) {
    let Ok(permit) = Arc::clone(&inner.connections).try_acquire_owned() else {
        bump(&inner.tcp.over_limit);
        tracing::debug!(remote = %accepted.remote_addr(), "connection limit reached, TCP connection dropped");
        return;
    };
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        let _permit = permit;
        serve(inner, accepted).await;
    });
}

/// One TCP connection: TLS handshake, then the first record decides.
async fn serve(inner: Arc<Inner>, accepted: Accepted) {
    let remote = accepted.remote_addr();
    let timeout = inner.config.handshake_timeout;
    let conn = match accepted.handshake(timeout).await {
        Ok(conn) => conn,
        Err(e) => {
            bump(&inner.tcp.handshake_failed);
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
    };
    bump(&inner.tcp.accepted);
    let (mut reader, handle) = conn.split();
    let id = inner.next_id();
    if !inner.tcp.register(id, &handle) {
        handle.close(close::NORMAL, "shutting down");
        return;
    }
    let first = tokio::time::timeout(timeout, reader.next()).await;
    match first {
        Ok(Ok(Some(Record::Envelope(hello)))) if matches!(hello.body, Some(Body::JoinHello(_))) => {
            let conn = ControlConn::Tls(handle.clone());
            let (send, recv) = (EnvelopeSend::Tls(handle), EnvelopeRecv::Tls(reader));
            if let Err(e) = crate::session::run(Arc::clone(&inner), conn, send, recv, hello).await {
                tracing::debug!(%remote, error = %e, "TCP session ended");
            }
        }
        Ok(Ok(Some(Record::Datagram(bind)))) if natter_proto::relay::decode_bind(&bind).is_ok() => {
            run_leg(&inner, id, reader, &handle, bind).await;
        }
        Ok(Ok(Some(other))) => {
            bump(&inner.tcp.refused);
            let request_id = match &other {
                Record::Envelope(e) => e.request_id,
                _ => 0,
            };
            tracing::debug!(%remote, record = ?kind(&other), "TCP connection refused: not a join or relay bind");
            refuse(&handle, request_id).await;
        }
        Ok(Err(NetError::Record(_) | NetError::Truncated)) => {
            bump(&inner.tcp.malformed);
            handle.close(close::MALFORMED, "malformed record");
        }
        Ok(Ok(None) | Err(_)) | Err(_) => {
            bump(&inner.tcp.refused);
            handle.close(close::REFUSED, "no hello");
        }
    }
    inner.tcp.unregister(id);
}

fn kind(record: &Record) -> &'static str {
    match record {
        Record::Envelope(e) => e.type_name(),
        Record::Datagram(_) => "datagram",
        Record::Close { .. } => "close",
        Record::Keepalive => "keepalive",
    }
}

/// `ErrorReply{NOT_JOINED}` for `request_id`, then close `REFUSED`.
async fn refuse(handle: &TlsHandle, request_id: u64) {
    let refusal = Envelope::new(
        request_id,
        Body::Error(ErrorReply::new(
            ErrorCode::NotJoined,
            "join first (JoinHello), or bind a relay leg",
        )),
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE, handle.send_envelope(&refusal)).await;
    handle.close(close::REFUSED, "not joined");
}

/// A TCP relay leg: every DATAGRAM record is a datagram reaching the relay
/// from [`RelayPeer::Tcp`]`(id)`. Ends with the connection, on an envelope
/// (refused) or a malformed record, or when the leg has been bound to no
/// live allocation for the relay lifetime; its binding goes with it.
async fn run_leg(
    inner: &Arc<Inner>,
    id: u64,
    mut reader: RecordReader,
    handle: &TlsHandle,
    bind: Vec<u8>,
) {
    let peer = RelayPeer::Tcp(id);
    let udp = &inner.udp;
    let rx = udp.legs.open(id);
    let writer = tokio::spawn(write_leg(handle.clone(), rx));
    tracing::debug!(remote = %handle.remote_address(), leg = id, "TCP relay leg opened");
    let lifetime = udp.table().limits().lifetime;
    let mut check = tokio::time::interval(LEG_CHECK.min(lifetime));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bound_at = Instant::now();
    let mut next = Some(bind);
    let end = loop {
        if let Some(datagram) = next.take() {
            on_leg_datagram(inner, id, &datagram).await;
        }
        tokio::select! {
            record = reader.next() => match record {
                Ok(Some(Record::Datagram(datagram))) => next = Some(datagram),
                Ok(Some(Record::Envelope(e))) => {
                    bump(&inner.tcp.refused);
                    refuse(handle, e.request_id).await;
                    break None;
                }
                Ok(Some(Record::Close { .. } | Record::Keepalive)) => {}
                Ok(None) => break Some((close::NORMAL, "bye")),
                Err(NetError::Record(_) | NetError::Truncated) => {
                    bump(&inner.tcp.malformed);
                    break Some((close::MALFORMED, "malformed record"));
                }
                Err(_) => break None,
            },
            _ = check.tick() => {
                let now = Instant::now();
                if udp.table().is_bound(peer, now) {
                    bound_at = now;
                } else if now.saturating_duration_since(bound_at) >= lifetime {
                    bump(&inner.tcp.relay_legs_unbound);
                    break Some((close::NORMAL, "relay leg not bound"));
                }
            }
        }
    };
    udp.legs.close(id);
    udp.table().unbind(peer);
    if let Some((code, reason)) = end {
        handle.close(code, reason);
    }
    writer.abort();
    tracing::debug!(leg = id, "TCP relay leg closed");
}

/// One datagram from relay leg `id`: STUN is not served over TCP; binds are
/// answered on the leg; media is routed like a UDP datagram.
async fn on_leg_datagram(inner: &Inner, id: u64, datagram: &[u8]) {
    let udp = &inner.udp;
    if stun::looks_like_stun(datagram) {
        bump(&inner.tcp.dropped_stun);
        return;
    }
    match udp.relay(datagram, RelayPeer::Tcp(id), Instant::now()) {
        Relayed::Reply(reply) => {
            // A full queue drops the reply (counted); the client re-binds.
            let _ = udp.legs.push(id, &reply);
        }
        Relayed::Forward(to) => {
            let socket = match to {
                RelayPeer::Udp(_) => udp.primary_socket(),
                RelayPeer::Tcp(_) => None,
            };
            udp.forward(socket.as_deref(), to, datagram).await;
        }
        Relayed::Dropped => {}
    }
}

/// Drains a relay leg's queue onto its connection.
async fn write_leg(handle: TlsHandle, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(datagram) = rx.recv().await {
        if let Err(e) = handle.send_datagram(&datagram).await {
            tracing::debug!(error = %e, "TCP relay leg write failed");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_leg_queue_drops_and_counts_without_waiting() {
        let legs = Legs::new(2);
        assert_eq!(legs.push(1, &[0; 61]), Err(LegError::Gone));
        let mut rx = legs.open(1);
        assert_eq!(legs.count(), 1);
        assert_eq!(legs.push(1, &[1; 61]), Ok(()));
        assert_eq!(legs.push(1, &[2; 61]), Ok(()));
        assert_eq!(legs.push(1, &[3; 61]), Err(LegError::Full));
        assert_eq!(legs.dropped_full.load(Ordering::Relaxed), 1);
        assert_eq!(
            legs.push(1, &[4; MAX_DATAGRAM_LEN + 1]),
            Err(LegError::TooLong)
        );
        assert_eq!(legs.dropped_too_long.load(Ordering::Relaxed), 1);
        // The writer drains in order; room again.
        assert_eq!(rx.try_recv().unwrap(), vec![1; 61]);
        assert_eq!(legs.push(1, &[5; 61]), Ok(()));
        assert_eq!(rx.try_recv().unwrap(), vec![2; 61]);
        assert_eq!(rx.try_recv().unwrap(), vec![5; 61]);
        legs.close(1);
        assert_eq!(legs.count(), 0);
        assert_eq!(legs.push(1, &[6; 61]), Err(LegError::Gone));
        assert!(rx.try_recv().is_err(), "closed: the writer ends");
    }
}
