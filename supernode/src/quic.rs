//! QUIC connections: the accept loop (telling clients from supernodes by
//! their first frame), supernode links (one bidirectional stream, gossip
//! first both ways; QUIC only) and dials. Each link has a reader feeding
//! the node task and a writer draining a bounded queue the node task fills.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_net::{ControlConn, EnvelopeRecv, EnvelopeSend, FramedRecv, FramedSend};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Envelope, ErrorCode, ErrorReply, GossipMembership};
use quinn::{Connection, VarInt};
use tokio::sync::mpsc;

use crate::close;
use crate::core::LinkOrigin;
use crate::shell::{Event, Shell};

/// Accepts connections until the endpoint closes.
/// A connection needs a slot of the global limit and one of its IP address
/// ([`crate::Config::max_connections_per_ip`]); without either it is refused
/// before any handshake work.
pub(crate) async fn accept_loop(shell: Arc<Shell>) {
    while let Some(incoming) = shell.endpoint.accept().await {
        let Some(per_ip) = shell.per_ip.try_acquire(incoming.remote_address().ip()) else {
            tracing::debug!(remote = %incoming.remote_address(), "per-address connection limit reached, QUIC connection refused");
            incoming.refuse();
            continue;
        };
        let Ok(permit) = Arc::clone(&shell.connections).try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let shell = Arc::clone(&shell);
        tokio::spawn(async move {
            let _permits = (permit, per_ip);
            if let Err(e) = serve_incoming(shell, incoming).await {
                tracing::debug!(error = %e, "incoming connection ended");
            }
        });
    }
}

async fn serve_incoming(
    shell: Arc<Shell>,
    incoming: quinn::Incoming,
) -> Result<(), natter_net::NetError> {
    let conn = incoming.await?;
    let handshake = shell.config.handshake_timeout;
    let Ok(stream) = tokio::time::timeout(handshake, conn.accept_bi()).await else {
        conn.close(VarInt::from_u32(close::REFUSED), b"no stream");
        return Ok(());
    };
    let (send, recv) = stream?;
    let mut send = FramedSend::new(send);
    let mut recv = FramedRecv::new(recv);
    let first = match tokio::time::timeout(handshake, recv.next()).await {
        Ok(Ok(Some(first))) => first,
        Ok(Ok(None)) | Err(_) => {
            conn.close(VarInt::from_u32(close::REFUSED), b"no hello");
            return Ok(());
        }
        Ok(Err(e)) => {
            conn.close(VarInt::from_u32(close::MALFORMED), b"malformed frame");
            return Err(e);
        }
    };
    match first.body {
        Some(Body::JoinHello(_)) => {
            let (send, recv) = (EnvelopeSend::Quic(send), EnvelopeRecv::Quic(recv));
            crate::session_io::run(shell, ControlConn::Quic(conn), send, recv, first).await;
            Ok(())
        }
        Some(Body::GossipMembership(gossip)) => {
            run_link(shell, conn, send, recv, gossip, LinkOrigin::Accepted).await;
            Ok(())
        }
        _ => {
            let refusal = Envelope::new(
                first.request_id,
                Body::Error(ErrorReply::new(
                    ErrorCode::NotJoined,
                    "join first (JoinHello)",
                )),
            );
            send.send(&refusal).await?;
            send.finish(Duration::from_secs(1)).await?;
            conn.close(VarInt::from_u32(close::REFUSED), b"not joined");
            Ok(())
        }
    }
}

/// Dials a supernode at `addr`, sends `hello` (this node's gossip), waits
/// for its gossip and runs the link; a failure is reported to the node.
pub(crate) async fn dial(shell: Arc<Shell>, addr: SocketAddr, hello: Envelope) {
    let result = async {
        let conn = shell.endpoint.connect(addr, "natter-supernode")?.await?;
        let (send, recv) = conn.open_bi().await?;
        let mut send = FramedSend::new(send);
        let mut recv = FramedRecv::new(recv);
        send.send(&hello).await?;
        let first = tokio::time::timeout(shell.config.handshake_timeout, recv.next())
            .await
            .map_err(|_| natter_net::NetError::Timeout)??;
        match first.and_then(|f| f.body) {
            Some(Body::GossipMembership(gossip)) => Ok((conn, send, recv, gossip)),
            _ => {
                conn.close(VarInt::from_u32(close::REFUSED), b"expected gossip");
                Err(natter_net::NetError::NoReply)
            }
        }
    }
    .await;
    match result {
        Ok((conn, send, recv, gossip)) => {
            run_link(shell, conn, send, recv, gossip, LinkOrigin::Dialed(addr)).await;
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "cannot reach supernode");
            shell.tell(Event::DialFailed { addr }).await;
        }
    }
}

/// Serves one supernode link until it dies: frames go to the node task,
/// the node task's frames come back through a bounded queue.
async fn run_link(
    shell: Arc<Shell>,
    conn: Connection,
    mut send: FramedSend,
    mut recv: FramedRecv,
    first: GossipMembership,
    origin: LinkOrigin,
) {
    let id = shell.next_id();
    let (tx, mut rx) = mpsc::channel::<Envelope>(shell.config.link_queue.max(1));
    let writer = tokio::spawn(async move {
        while let Some(envelope) = rx.recv().await {
            match send.send(&envelope).await {
                Ok(()) => {}
                // Refused before a byte was written: that message only.
                Err(natter_net::NetError::Frame(e)) => {
                    tracing::warn!(error = %e, "frame not sent on link");
                }
                Err(_) => break,
            }
        }
    });
    let up = Event::LinkUp {
        id,
        conn: conn.clone(),
        tx,
        first,
        origin,
    };
    if shell.tell(up).await {
        loop {
            match recv.next().await {
                Ok(Some(envelope)) => {
                    if !shell.tell(Event::LinkFrame { id, envelope }).await {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if crate::session_io::is_malformed(&e) {
                        conn.close(VarInt::from_u32(close::MALFORMED), b"malformed frame");
                    }
                    tracing::debug!(error = %e, "supernode link ended");
                    break;
                }
            }
        }
    }
    writer.abort();
    conn.close(VarInt::from_u32(close::NORMAL), b"link ended");
    shell.tell(Event::LinkDown { id }).await;
}
