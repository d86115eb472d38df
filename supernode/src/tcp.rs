//! The TLS-over-TCP listener: the firewall fallback for clients whose UDP
//! (and so QUIC) is blocked. A connection carries the records of
//! [`natter_proto::record`]; its **first record** (within the handshake
//! timeout, like the TLS handshake before it) decides what it is:
//!
//! * an ENVELOPE with `JoinHello`: a client session, run by
//!   [`crate::session_io`] exactly as over QUIC (DATAGRAM records on it are
//!   ignored);
//! * a DATAGRAM that is a relay bind: a **TCP relay leg**. Every DATAGRAM on
//!   it is handled like a UDP datagram reaching the relay's primary socket
//!   ([`crate::udp::UdpService::relay`]), with the leg in place of a UDP
//!   address ([`RelayPeer::Tcp`]); bind replies and datagrams forwarded to
//!   the leg go out as DATAGRAM records through a bounded queue drained by
//!   the leg's own writer, so the UDP loop never waits for a TCP peer (a
//!   write stuck for `write_timeout` closes the leg). A first bind that does
//!   not bind ends the leg once its reply is written;
//! * anything else (gossip: supernode links are QUIC only; another request;
//!   a non-bind datagram): `ErrorReply{NOT_JOINED}` and close `REFUSED`; a
//!   malformed record closes `MALFORMED`.
//!
//! TCP connections share the QUIC endpoint's connection limit and its cap
//! per IP address ([`crate::Config::max_connections_per_ip`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_net::tcp::Accepted;
use natter_net::{
    ControlConn, EnvelopeRecv, EnvelopeSend, NetError, RecordReader, TlsHandle, TlsListener,
};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Envelope, ErrorCode, ErrorReply};
use natter_proto::record::Record;
use natter_proto::stun;
use tokio::sync::{mpsc, watch};

use crate::close;
use crate::node_task::Snapshot;
use crate::relay::RelayPeer;
use crate::shell::Shell;
use crate::tcp_stats::{TcpStats, bump};
use crate::udp::Relayed;

/// How long to wait after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the counters are logged (at debug).
const LOG_EVERY: Duration = Duration::from_secs(30);
/// How often a relay leg checks that it is still bound.
const LEG_CHECK: Duration = Duration::from_secs(1);
/// Time allowed to write a refusal before closing.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// A snapshot of the listener's counters.
pub(crate) fn stats(shell: &Shell, snapshot: &watch::Receiver<Snapshot>) -> TcpStats {
    let sessions = snapshot.borrow().tcp_sessions;
    shell.tcp.snapshot(&shell.udp.legs, sessions)
}

/// Accepts TCP connections until aborted; each runs in its own task.
pub(crate) async fn accept_loop(
    shell: Arc<Shell>,
    listener: TlsListener,
    snapshot: watch::Receiver<Snapshot>,
) {
    let mut log = tokio::time::interval(LOG_EVERY);
    log.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_logged = TcpStats::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => admit(&shell, accepted),
                Err(e) => {
                    tracing::debug!(error = %e, "TCP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = log.tick() => {
                let stats = stats(&shell, &snapshot);
                if stats != last_logged {
                    tracing::debug!(?stats, "TCP listener counters");
                    last_logged = stats;
                }
            }
        }
    }
}

fn admit(shell: &Arc<Shell>, accepted: Accepted) {
    let Some(per_ip) = shell.per_ip.try_acquire(accepted.remote_addr().ip()) else {
        bump(&shell.tcp.over_ip_limit);
        tracing::debug!(remote = %accepted.remote_addr(), "per-address connection limit reached, TCP connection dropped");
        return;
    };
    let Ok(permit) = Arc::clone(&shell.connections).try_acquire_owned() else {
        bump(&shell.tcp.over_limit);
        tracing::debug!(remote = %accepted.remote_addr(), "connection limit reached, TCP connection dropped");
        return;
    };
    let shell = Arc::clone(shell);
    tokio::spawn(async move {
        let _permits = (permit, per_ip);
        serve(shell, accepted).await;
    });
}

/// One TCP connection: TLS handshake, then the first record decides.
async fn serve(shell: Arc<Shell>, accepted: Accepted) {
    let remote = accepted.remote_addr();
    let timeout = shell.config.handshake_timeout;
    let conn = match accepted.handshake(timeout).await {
        Ok(conn) => conn,
        Err(e) => {
            bump(&shell.tcp.handshake_failed);
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
    };
    bump(&shell.tcp.accepted);
    let (mut reader, handle) = conn.split();
    let id = shell.next_id();
    if !shell.tcp.register(id, &handle) {
        handle.close(close::NORMAL, "shutting down");
        return;
    }
    let first = tokio::time::timeout(timeout, reader.next()).await;
    match first {
        Ok(Ok(Some(Record::Envelope(hello)))) if matches!(hello.body, Some(Body::JoinHello(_))) => {
            let conn = ControlConn::Tls(handle.clone());
            let (send, recv) = (EnvelopeSend::Tls(handle), EnvelopeRecv::Tls(reader));
            crate::session_io::run(Arc::clone(&shell), conn, send, recv, hello).await;
            tracing::debug!(%remote, "TCP session ended");
        }
        Ok(Ok(Some(Record::Datagram(bind)))) if natter_proto::relay::decode_bind(&bind).is_ok() => {
            run_leg(&shell, id, reader, &handle, bind).await;
        }
        Ok(Ok(Some(other))) => {
            bump(&shell.tcp.refused);
            let request_id = match &other {
                Record::Envelope(e) => e.request_id,
                _ => 0,
            };
            tracing::debug!(%remote, record = ?kind(&other), "TCP connection refused: not a join or relay bind");
            refuse(&handle, request_id).await;
        }
        Ok(Err(NetError::Record(_) | NetError::Truncated)) => {
            bump(&shell.tcp.malformed);
            handle.close(close::MALFORMED, "malformed record");
        }
        Ok(Ok(None) | Err(_)) | Err(_) => {
            bump(&shell.tcp.refused);
            handle.close(close::REFUSED, "no hello");
        }
    }
    shell.tcp.unregister(id);
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
    shell: &Arc<Shell>,
    id: u64,
    mut reader: RecordReader,
    handle: &TlsHandle,
    bind: Vec<u8>,
) {
    let peer = RelayPeer::Tcp(id);
    let udp = &shell.udp;
    let rx = udp.legs.open(id);
    let mut writer = tokio::spawn(write_leg(handle.clone(), rx, shell.config.write_timeout));
    tracing::debug!(remote = %handle.remote_address(), leg = id, "TCP relay leg opened");
    // A first bind that does not bind (unknown token, over quota) ends the
    // leg once its reply is written: no slot is held for a leg that serves
    // no allocation.
    on_leg_datagram(shell, id, &bind).await;
    if !udp.table().is_bound(peer, Instant::now()) {
        bump(&shell.tcp.refused);
        udp.legs.close(id);
        if tokio::time::timeout(REFUSAL_WRITE, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        handle.close(close::REFUSED, "relay bind refused");
        tracing::debug!(leg = id, "TCP relay leg refused: first bind did not bind");
        return;
    }
    let lifetime = udp.table().limits().lifetime;
    let mut check = tokio::time::interval(LEG_CHECK.min(lifetime));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bound_at = Instant::now();
    let mut next: Option<Vec<u8>> = None;
    let end = loop {
        if let Some(datagram) = next.take() {
            on_leg_datagram(shell, id, &datagram).await;
        }
        tokio::select! {
            record = reader.next() => match record {
                Ok(Some(Record::Datagram(datagram))) => next = Some(datagram),
                Ok(Some(Record::Envelope(e))) => {
                    bump(&shell.tcp.refused);
                    refuse(handle, e.request_id).await;
                    break None;
                }
                Ok(Some(Record::Close { .. } | Record::Keepalive)) => {}
                Ok(None) => break Some((close::NORMAL, "bye")),
                Err(NetError::Record(_) | NetError::Truncated) => {
                    bump(&shell.tcp.malformed);
                    break Some((close::MALFORMED, "malformed record"));
                }
                Err(_) => break None,
            },
            _ = check.tick() => {
                let now = Instant::now();
                if udp.table().is_bound(peer, now) {
                    bound_at = now;
                } else if now.saturating_duration_since(bound_at) >= lifetime {
                    bump(&shell.tcp.relay_legs_unbound);
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
async fn on_leg_datagram(shell: &Shell, id: u64, datagram: &[u8]) {
    let udp = &shell.udp;
    if stun::looks_like_stun(datagram) {
        bump(&shell.tcp.dropped_stun);
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

/// Drains a relay leg's queue onto its connection; a write that takes
/// longer than `write_timeout` (a peer that stopped reading) closes it.
async fn write_leg(handle: TlsHandle, mut rx: mpsc::Receiver<Vec<u8>>, write_timeout: Duration) {
    while let Some(datagram) = rx.recv().await {
        match tokio::time::timeout(write_timeout, handle.send_datagram(&datagram)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TCP relay leg write failed");
                break;
            }
            Err(_) => {
                handle.close(close::SLOW, "write timeout");
                break;
            }
        }
    }
}
