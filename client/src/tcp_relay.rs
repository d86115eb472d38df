//! Relay legs over TLS on TCP: media where UDP is blocked.
//!
//! A leg is one TLS connection to a supernode's TCP listener, bound to one
//! side of a relay allocation by sending the same bind datagram UDP would
//! carry, as a DATAGRAM record. Afterwards every SoM datagram of the call
//! travels as a DATAGRAM record and the supernode relays it to the other
//! side, over UDP or TCP, whatever that side has (docs/PROTOCOL.md,
//! section 10). Nothing is suppressed: the call sends 50 datagrams a second,
//! speech or silence, which also keeps TCP's congestion window open.
//!
//! Each leg runs in its own task and reconnects (and re-binds) when its
//! connection drops. Queues are bounded both ways; a full queue drops the
//! datagram (voice is useless late) and counts it.
//!
//! Which legs open, and what goes over them, is decided by the call session
//! ([`natter_proto::session::CallSession`]); this module only carries bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use natter_proto::record::Record;
use natter_proto::relay::{self, BindStatus, RelayLeg};
use natter_proto::session::MAX_TCP_LEGS;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Datagrams queued towards one leg.
const OUT_QUEUE: usize = 64;
/// Datagrams from all legs queued towards the call.
const IN_QUEUE: usize = 256;
/// Time allowed to connect and complete TLS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between reconnection attempts.
const RETRY: Duration = Duration::from_millis(500);
/// Connection attempts per leg before it gives up.
const MAX_ATTEMPTS: u32 = 20;

#[derive(Debug)]
struct Open {
    leg: RelayLeg,
    out: mpsc::Sender<Vec<u8>>,
    task: JoinHandle<()>,
}

/// Counters of the TCP legs.
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Connections made (first ones and reconnections).
    pub connects: AtomicU64,
    /// Datagrams dropped because a queue was full.
    pub dropped: AtomicU64,
}

/// The TCP relay legs of one call.
#[derive(Debug)]
pub struct TcpLegs {
    open: Vec<Open>,
    to_call: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    from_legs: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    stats: Arc<TcpStats>,
}

impl Default for TcpLegs {
    fn default() -> Self {
        let (to_call, from_legs) = mpsc::channel(IN_QUEUE);
        Self {
            open: Vec::new(),
            to_call,
            from_legs,
            stats: Arc::default(),
        }
    }
}

impl Drop for TcpLegs {
    fn drop(&mut self) {
        for open in &self.open {
            open.task.abort();
        }
    }
}

impl TcpLegs {
    /// Opens `leg` (to the supernode's TLS listener `leg.addr`; ignored when
    /// a leg to the same address is open, or when [`MAX_TCP_LEGS`] are).
    /// Returns whether it was opened.
    pub fn open(&mut self, leg: RelayLeg) -> bool {
        if self.contains(leg.addr) || self.open.len() >= MAX_TCP_LEGS {
            return false;
        }
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let task = tokio::spawn(run_leg(
            leg,
            out_rx,
            self.to_call.clone(),
            Arc::clone(&self.stats),
        ));
        self.open.push(Open { leg, out, task });
        true
    }

    /// Whether a leg to `addr` is open.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.open.iter().any(|o| o.leg.addr == addr)
    }

    /// Queues `datagram` on the leg to `addr`; false when there is no such
    /// leg or its queue is full (the datagram is dropped and counted).
    pub fn send(&self, addr: SocketAddr, datagram: &[u8]) -> bool {
        let Some(open) = self.open.iter().find(|o| o.leg.addr == addr) else {
            return false;
        };
        if open.out.try_send(datagram.to_vec()).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The next datagram from any leg, with the leg's address. Pending
    /// forever when no leg is open (for use in `select!`).
    pub async fn recv(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.from_legs.recv().await
    }

    /// A datagram already delivered by a leg, if there is one (no waiting).
    pub fn try_recv(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.from_legs.try_recv().ok()
    }

    /// The counters.
    pub fn stats(&self) -> &TcpStats {
        &self.stats
    }
}

/// One leg: connect, bind, then carry datagrams both ways; reconnect when
/// the connection drops, until the relay refuses or attempts run out.
async fn run_leg(
    leg: RelayLeg,
    mut out: mpsc::Receiver<Vec<u8>>,
    to_call: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    stats: Arc<TcpStats>,
) {
    let mut msg_id: u16 = rand::random();
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(RETRY).await;
        }
        let Ok(conn) = crate::supernode::connect_tls(leg.addr, CONNECT_TIMEOUT).await else {
            continue;
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        let (mut reader, handle) = conn.split();
        msg_id = msg_id.wrapping_add(1);
        if handle
            .send_datagram(&relay::encode_leg_bind(&leg.token, msg_id))
            .await
            .is_err()
        {
            continue;
        }
        // What was queued while disconnected is stale.
        while out.try_recv().is_ok() {}
        loop {
            tokio::select! {
                datagram = out.recv() => {
                    let Some(datagram) = datagram else {
                        handle.close(0, "call over");
                        return;
                    };
                    if handle.send_datagram(&datagram).await.is_err() {
                        break;
                    }
                }
                record = reader.next() => match record {
                    Ok(Some(Record::Datagram(d))) => {
                        if let Ok(reply) = relay::decode_bind_reply(&d) {
                            if reply.status != BindStatus::Bound {
                                handle.close(0, "bind refused");
                                return;
                            }
                            continue;
                        }
                        if to_call.try_send((leg.addr, d)).is_err() {
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
            }
        }
    }
}
