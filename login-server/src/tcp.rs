//! The TLS-over-TCP shell, the firewall fallback for clients whose UDP is
//! blocked: the same protocol as [`crate::quic`] on one TLS 1.3 connection
//! (ALPN `natter/1`, the same certificate, so clients pin the same key),
//! carrying the records of [`natter_proto::record`].
//!
//! Every ENVELOPE record from the client is one request, handed to
//! [`LoginService::handle`]; its reply goes back as an ENVELOPE record with
//! the same `request_id`. Requests are multiplexed on the connection: up to
//! `max_streams_per_connection` are handled at once (the same bound as QUIC
//! streams) and replies go out in completion order; while that many are in
//! flight the server stops reading, so TCP flow control holds the client
//! back.
//!
//! A malformed record (unknown kind, bad length, undecodable envelope, wrong
//! version, no body) or a DATAGRAM record closes the connection with
//! [`CLOSE_MALFORMED`], as on QUIC; other connections are not affected. A
//! connection that receives nothing for the idle timeout is closed; one
//! whose reply cannot be written within the request deadline (a client that
//! does not read) is closed with [`CLOSE_SLOW_CLIENT`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use natter_net::tcp::{Accepted, TlsListener};
use natter_net::{NetError, TlsHandle, TransportSettings};
use natter_proto::record::Record;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::quic::{CLOSE_MALFORMED, CLOSE_SHUTDOWN, Limits};
use crate::service::LoginService;

/// Connection closed because a reply could not be written in time (the
/// client does not read).
pub const CLOSE_SLOW_CLIENT: u32 = 3;

/// A QUIC close code as a record's close code (the same numbers).
fn code(code: quinn::VarInt) -> u32 {
    u32::try_from(code.into_inner()).unwrap_or(u32::MAX)
}

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

/// Resolves once shutdown is signalled (never, if the server handle was
/// dropped without a shutdown: like the QUIC endpoint, the listener then
/// serves for as long as the runtime runs).
async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Accepts connections until shutdown, then closes every connection (code
/// [`CLOSE_SHUTDOWN`]) and waits briefly for them to finish.
pub(crate) async fn accept_loop(
    listener: TlsListener,
    service: Arc<LoginService>,
    limits: Limits,
    slots: Arc<Semaphore>,
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
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(peer = %accepted.remote_addr(), "connection limit reached; refusing tcp");
            drop(accepted);
            continue;
        };
        connections.spawn(serve_connection(
            accepted,
            Arc::clone(&service),
            limits,
            shutdown.clone(),
            permit,
        ));
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

/// Runs `f` unless shutdown comes first; then closes `handle`.
async fn or_shutdown<T>(
    f: impl Future<Output = T>,
    shutdown: &mut watch::Receiver<bool>,
    handle: &TlsHandle,
) -> Option<T> {
    tokio::select! {
        value = f => Some(value),
        () = shutdown_signal(shutdown) => {
            handle.close(code(CLOSE_SHUTDOWN), "server shutting down");
            None
        }
    }
}

async fn serve_connection(
    accepted: Accepted,
    service: Arc<LoginService>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let peer = accepted.remote_addr();
    let handshake = tokio::select! {
        conn = accepted.handshake(limits.request_timeout) => conn,
        () = shutdown_signal(&mut shutdown) => return,
    };
    let (mut reader, handle) = match handshake {
        Ok(conn) => conn.split(),
        Err(e) => {
            tracing::debug!(%peer, %e, "tls handshake failed");
            return;
        }
    };
    tracing::debug!(%peer, "tcp connection open");
    let in_flight = Arc::new(Semaphore::new(
        usize::try_from(limits.max_streams_per_connection.max(1)).unwrap_or(1),
    ));
    let mut requests = JoinSet::new();
    loop {
        // Wait for a request slot before reading on: a client with the
        // maximum in flight is not read until one is answered (or the
        // connection is closed, e.g. because it does not take its replies).
        let slot = async {
            tokio::select! {
                permit = Arc::clone(&in_flight).acquire_owned() => permit.ok(),
                () = handle.closed() => None,
            }
        };
        let Some(Some(permit)) = or_shutdown(slot, &mut shutdown, &handle).await else {
            break;
        };
        let Some(record) = or_shutdown(reader.next(), &mut shutdown, &handle).await else {
            break;
        };
        match record {
            Ok(Some(Record::Envelope(request))) => {
                let service = Arc::clone(&service);
                let handle = handle.clone();
                requests.spawn(async move {
                    let reply = service.handle(request, peer).await;
                    match tokio::time::timeout(
                        limits.request_timeout,
                        handle.send_envelope(&reply),
                    )
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(%peer, %e, "could not send the reply"),
                        Err(_) => {
                            tracing::info!(%peer, "reply not taken in time; closing the connection");
                            handle.close(CLOSE_SLOW_CLIENT, "reply not read in time");
                        }
                    }
                    drop(permit);
                });
            }
            Ok(Some(other)) => {
                let kind = match other {
                    Record::Datagram(_) => "datagram",
                    Record::Close { .. } => "close",
                    Record::Keepalive => "keepalive",
                    Record::Envelope(_) => "envelope",
                };
                tracing::info!(%peer, kind, "unexpected record; closing the connection");
                handle.close(
                    code(CLOSE_MALFORMED),
                    &format!("malformed request: unexpected {kind} record"),
                );
                break;
            }
            Ok(None) => {
                tracing::debug!(%peer, reason = ?handle.close_reason(), "tcp connection closed by the peer");
                break;
            }
            Err(e @ (NetError::Record(_) | NetError::Frame(_))) => {
                // The reader has closed the connection with CLOSE_MALFORMED.
                tracing::info!(%peer, %e, "malformed request; closing the connection");
                break;
            }
            Err(e) => {
                tracing::debug!(%peer, %e, "tcp connection ended");
                break;
            }
        }
        // Reap answered requests so the set stays small on long connections.
        while requests.try_join_next().is_some() {}
    }
    // The connection is closed (or its peer gone): replies cannot be sent.
    requests.abort_all();
    if handle.close_reason().is_none() {
        handle.close(0, "done");
    }
}
