//! The one session code path of the login server, for both transports: a
//! stream of request envelopes in, reply envelopes (same `request_id`) out.
//! [`crate::tcp`] runs one session per TLS-over-TCP connection,
//! [`crate::quic`] one per QUIC bidirectional stream; they differ only in
//! how the connection is accepted.
//!
//! Requests on a session are multiplexed: each is handed to
//! [`LoginService::handle`] at once, up to `max_streams_per_connection` per
//! connection at a time (a budget the sessions of one QUIC connection share),
//! and replies go out in completion order. While that many are in flight the
//! session stops reading, so flow control holds the client back. A stream
//! carrying one request and then its end (what older clients send: one QUIC
//! stream per request) is just a short session; its reply is written, then
//! the stream finished.
//!
//! A malformed request (oversized, truncated or undecodable frame or record,
//! wrong version, no body, or on TLS a record other than an envelope) closes
//! the connection with [`CLOSE_MALFORMED`]; other connections are not
//! affected. A reply that cannot be written within the request deadline (a
//! client that does not read) closes the connection with
//! [`CLOSE_SLOW_CLIENT`]. At shutdown the connection is closed with
//! [`CLOSE_SHUTDOWN`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use natter_net::{ControlConn, EnvelopeRecv, EnvelopeSend, NetError};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::service::LoginService;

/// Connection closed because a request was malformed or oversized (the same
/// code on QUIC and TLS over TCP).
pub const CLOSE_MALFORMED: u32 = natter_net::CLOSE_MALFORMED;
/// Connection closed because the server is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 2;
/// Connection closed because a reply could not be written in time (the
/// client does not read).
pub const CLOSE_SLOW_CLIENT: u32 = 3;

/// The limits both transports apply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) max_streams_per_connection: u32,
    pub(crate) request_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Self {
            max_connections: c.max_connections,
            max_streams_per_connection: c.max_streams_per_connection,
            request_timeout: c.request_timeout,
            idle_timeout: c.idle_timeout,
        }
    }
}

impl Limits {
    /// The budget of requests in flight on one connection.
    pub(crate) fn in_flight(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(
            usize::try_from(self.max_streams_per_connection.max(1)).unwrap_or(1),
        ))
    }
}

/// Resolves once shutdown is signalled (never, if the server handle was
/// dropped without a shutdown: the listeners then serve for as long as the
/// runtime runs).
pub(crate) async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs `f` unless shutdown comes first; then closes `conn`.
async fn or_shutdown<T>(
    f: impl Future<Output = T>,
    shutdown: &mut watch::Receiver<bool>,
    conn: &ControlConn,
) -> Option<T> {
    tokio::select! {
        value = f => Some(value),
        () = shutdown_signal(shutdown) => {
            conn.close(CLOSE_SHUTDOWN, b"server shutting down");
            None
        }
    }
}

/// Whether a read error means the client sent something malformed (rather
/// than the connection going away).
fn is_malformed(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Frame(_)
            | NetError::Record(_)
            | NetError::Truncated
            | NetError::UnexpectedRecord(_)
    )
}

/// What a session needs besides its stream.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub(crate) service: Arc<LoginService>,
    pub(crate) limits: Limits,
    /// The connection's budget of requests in flight.
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Serves the requests arriving on `recv` (a QUIC stream or a TLS
/// connection of `conn`), writing each reply to `send`, until the client
/// ends the stream, the connection closes, or the server shuts down.
pub(crate) async fn session(
    conn: ControlConn,
    send: EnvelopeSend,
    mut recv: EnvelopeRecv,
    served: Served,
) {
    let Served {
        service,
        limits,
        in_flight,
        mut shutdown,
    } = served;
    let peer = conn.remote_address();
    // What proofs of possession on this connection are bound to. Sessions
    // start after the handshake, so every connection has one.
    let exporter = match conn.exporter() {
        Ok(exporter) => exporter,
        Err(e) => {
            tracing::info!(%peer, %e, "no TLS exporter; closing the connection");
            conn.close(CLOSE_MALFORMED, b"no TLS exporter");
            return;
        }
    };
    let send = Arc::new(Mutex::new(send));
    let mut requests = JoinSet::new();
    let finished = loop {
        // Wait for a request slot before reading on: a client with the
        // maximum in flight is not read until one is answered (or the
        // connection is closed, e.g. because it does not take its replies).
        let slot = async {
            tokio::select! {
                permit = Arc::clone(&in_flight).acquire_owned() => permit.ok(),
                () = conn.closed() => None,
            }
        };
        let Some(Some(permit)) = or_shutdown(slot, &mut shutdown, &conn).await else {
            break false;
        };
        let Some(next) = or_shutdown(recv.next_strict(), &mut shutdown, &conn).await else {
            break false;
        };
        match next {
            Ok(Some(request)) => {
                let (service, send, conn) = (Arc::clone(&service), Arc::clone(&send), conn.clone());
                requests.spawn(async move {
                    let reply = service.handle(request, peer, &exporter).await;
                    let written = tokio::time::timeout(limits.request_timeout, async {
                        send.lock().await.send(&reply).await
                    })
                    .await;
                    match written {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(%peer, %e, "could not send the reply"),
                        Err(_) => {
                            tracing::info!(%peer, "reply not taken in time; closing the connection");
                            conn.close(CLOSE_SLOW_CLIENT, b"reply not read in time");
                        }
                    }
                    drop(permit);
                });
            }
            Ok(None) => break true,
            Err(e) if is_malformed(&e) => {
                if service.may_log(peer) {
                    tracing::info!(%peer, %e, "malformed request; closing the connection");
                }
                conn.close(
                    CLOSE_MALFORMED,
                    format!("malformed request: {e}").as_bytes(),
                );
                break false;
            }
            Err(e) => {
                tracing::debug!(%peer, %e, "session ended");
                break false;
            }
        }
        // Reap answered requests so the set stays small on long sessions.
        while requests.try_join_next().is_some() {}
    };
    if finished && !conn.is_closed() {
        // The client ended its side (on QUIC, a stream per request does
        // after its one request): answer what is in flight, then end ours.
        let drain = async {
            while requests.join_next().await.is_some() {}
            let _ = send.lock().await.finish(limits.request_timeout).await;
        };
        let _ = or_shutdown(drain, &mut shutdown, &conn).await;
    }
    // The connection is closed (or its peer gone): replies cannot be sent.
    requests.abort_all();
}
