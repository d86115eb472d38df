//! How the login server accepts QUIC: connections (ALPN `natter/1`, within
//! the connection budget shared with TLS over TCP), then each bidirectional
//! stream the client opens, served as one [`session`]. A client may keep one
//! stream for all its requests or open one per request; both are sessions.

use std::sync::Arc;

use natter_net::PerIp;
use natter_net::{ControlConn, EnvelopeRecv, EnvelopeSend, FramedRecv, FramedSend};
use quinn::{Endpoint, Incoming};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::service::LoginService;
use crate::session::{Limits, Served, session};

/// Accepts connections until the endpoint is closed, from clients that
/// proved their address ([`natter_net::accept_validated`]: a Retry first).
pub(crate) async fn accept_loop(
    endpoint: Endpoint,
    service: Arc<LoginService>,
    limits: Limits,
    (slots, per_ip): (Arc<Semaphore>, Arc<PerIp>),
    shutdown: watch::Receiver<bool>,
) {
    while let Some(incoming) = natter_net::accept_validated(&endpoint).await {
        let Some(ip_slot) = per_ip.try_acquire(incoming.remote_address().ip()) else {
            // Debug, as on the supernode: one line per refusal would let one
            // host write the log as fast as it can connect.
            tracing::debug!(peer = %incoming.remote_address(), "per-address connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(peer = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let permit = (permit, ip_slot);
        let served = Served {
            service: Arc::clone(&service),
            limits,
            in_flight: limits.in_flight(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(async move {
            serve_connection(incoming, served).await;
            drop(permit);
        });
    }
}

async fn serve_connection(incoming: Incoming, served: Served) {
    let peer = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(%peer, %e, "handshake failed");
            return;
        }
    };
    tracing::debug!(%peer, "connection open");
    let mut sessions = JoinSet::new();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(%peer, %e, "connection closed");
                break;
            }
        };
        sessions.spawn(session(
            ControlConn::Quic(conn.clone()),
            EnvelopeSend::Quic(FramedSend::new(send)),
            EnvelopeRecv::Quic(FramedRecv::new(recv)),
            served.clone(),
        ));
        // Reap finished sessions so the set stays small on long connections.
        while sessions.try_join_next().is_some() {}
    }
    sessions.abort_all();
}
