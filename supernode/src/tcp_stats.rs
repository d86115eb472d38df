//! Counters of the TLS-over-TCP listener: the public snapshot
//! ([`TcpStats`]) and the atomics the connection tasks bump, with the open
//! connections closed at shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use natter_net::TlsHandle;

use crate::close;
use crate::legs::Legs;

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
    /// Connections dropped at once because their IP address holds
    /// `max_connections_per_ip` connections (QUIC and TCP together).
    pub over_ip_limit: u64,
    /// Connections refused after the handshake: no record within the
    /// handshake timeout, a first record that is neither a `JoinHello`
    /// envelope nor a relay bind, a relay leg whose first bind did not
    /// bind, or an envelope on a relay leg.
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

/// The listener's counters and open connections, shared with the
/// connection tasks (the session gauges come from the node core).
#[derive(Debug, Default)]
pub(crate) struct TcpCounters {
    pub accepted: AtomicU64,
    pub handshake_failed: AtomicU64,
    pub over_limit: AtomicU64,
    pub over_ip_limit: AtomicU64,
    pub refused: AtomicU64,
    pub malformed: AtomicU64,
    pub relay_legs_unbound: AtomicU64,
    pub dropped_stun: AtomicU64,
    open: Mutex<Open>,
}

/// Connections past their TLS handshake, closed at shutdown.
#[derive(Debug, Default)]
struct Open {
    handles: HashMap<u64, TlsHandle>,
    shut_down: bool,
}

/// Adds one.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl TcpCounters {
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a connection past its handshake; false after shutdown.
    pub fn register(&self, id: u64, handle: &TlsHandle) -> bool {
        let mut open = self.open();
        if open.shut_down {
            return false;
        }
        open.handles.insert(id, handle.clone());
        true
    }

    /// Forgets a connection that ended.
    pub fn unregister(&self, id: u64) {
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

    /// A snapshot, with the relay legs' counters and the sessions joined
    /// over TCP (now, since start) as the node core counts them.
    pub fn snapshot(&self, legs: &Legs, sessions: (usize, u64)) -> TcpStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (legs_open, legs_total, full, too_long) = legs.counts();
        TcpStats {
            accepted: get(&self.accepted),
            handshake_failed: get(&self.handshake_failed),
            over_limit: get(&self.over_limit),
            over_ip_limit: get(&self.over_ip_limit),
            refused: get(&self.refused),
            malformed: get(&self.malformed),
            sessions: sessions.0 as u64,
            sessions_total: sessions.1,
            relay_legs: legs_open,
            relay_legs_total: legs_total,
            relay_legs_unbound: get(&self.relay_legs_unbound),
            dropped_queue_full: full,
            dropped_too_long: too_long,
            dropped_stun: get(&self.dropped_stun),
        }
    }
}
