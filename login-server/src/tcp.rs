//! How the login server accepts TLS over TCP, the firewall fallback for
//! clients whose UDP is blocked: TLS 1.3 connections (ALPN `natter/1`, the
//! same certificate as QUIC, so clients pin the same key) carrying the
//! records of [`natter_proto::record`], within the connection budget shared
//! with QUIC; each connection is one [`session`].
//!
//! A connection that receives nothing for the idle timeout is closed (the
//! server sends KEEPALIVEs often enough that it never looks idle to a
//! client). At shutdown the listener stops and every connection is closed.

use std::sync::Arc;
use std::time::Duration;

use natter_net::tcp::{Accepted, TlsListener};
use natter_net::{ControlConn, EnvelopeRecv, EnvelopeSend, PerIp, PerIpPermit, TransportSettings};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::service::LoginService;
use crate::session::{Limits, Served, session, shutdown_signal};

/// How long connections get to close cleanly at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The transport settings of the listener: the server's idle timeout, and
/// keepalives often enough that a live server never looks idle to a client.
pub(crate) fn settings(limits: &Limits) -> TransportSettings {
    TransportSettings {
        keep_alive: (limits.idle_timeout / 3).max(Duration::from_millis(100)),
        idle_timeout: limits.idle_timeout,
        max_bidi_streams: limits.max_streams_per_connection,
    }
}

/// Accepts connections until shutdown, then waits briefly for them to
/// finish (each session closes its connection with `CLOSE_SHUTDOWN`).
pub(crate) async fn accept_loop(
    listener: TlsListener,
    service: Arc<LoginService>,
    limits: Limits,
    (slots, per_ip): (Arc<Semaphore>, Arc<PerIp>),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown_signal(&mut shutdown) => break,
        };
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(%e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(ip_slot) = per_ip.try_acquire(accepted.remote_addr().ip()) else {
            // Debug: see quic.rs.
            tracing::debug!(peer = %accepted.remote_addr(), "per-address connection limit reached; refusing tcp");
            drop(accepted);
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(peer = %accepted.remote_addr(), "connection limit reached; refusing tcp");
            drop(accepted);
            continue;
        };
        let permit = (permit, ip_slot);
        let served = Served {
            service: Arc::clone(&service),
            limits,
            in_flight: limits.in_flight(),
            shutdown: shutdown.clone(),
        };
        connections.spawn(serve_connection(accepted, served, permit));
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
}

async fn serve_connection(
    accepted: Accepted,
    mut served: Served,
    _slot: (OwnedSemaphorePermit, PerIpPermit),
) {
    let peer = accepted.remote_addr();
    let handshake = tokio::select! {
        conn = accepted.handshake(served.limits.request_timeout) => conn,
        () = shutdown_signal(&mut served.shutdown) => return,
    };
    let (reader, handle) = match handshake {
        Ok(conn) => conn.split(),
        Err(e) => {
            tracing::debug!(%peer, %e, "tls handshake failed");
            return;
        }
    };
    tracing::debug!(%peer, "tcp connection open");
    session(
        ControlConn::Tls(handle.clone()),
        EnvelopeSend::Tls(handle.clone()),
        EnvelopeRecv::Tls(reader),
        served,
    )
    .await;
    if handle.close_reason().is_none() {
        handle.close(0, "done");
    }
}
