//! QUIC connections: the accept loop (telling clients from supernodes by
//! their first frame), supernode links (one bidirectional stream; a
//! `LinkHello` proving a supernode certificate on this connection first
//! both ways, then gossip; QUIC only) and dials. A peer that sends anything
//! else first, or a hello that does not verify, is closed with REFUSED
//! and counted, before the node core hears of it. Each link has a reader feeding
//! the node task and a writer draining a bounded queue the node task fills.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use natter_net::{ControlConn, EnvelopeRecv, EnvelopeSend, FramedRecv, FramedSend};
use natter_proto::binding::{self, LinkRole};
use natter_proto::cert;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Envelope, ErrorCode, ErrorReply, GossipMembership, LinkHello};
use quinn::{Connection, VarInt};
use tokio::sync::mpsc;

use crate::core::{LinkOrigin, verify_link_hello};
use crate::shell::{Event, Shell, now};
use crate::{NodeId, close};

/// Accepts connections until the endpoint closes.
/// Only clients that proved their address get here
/// ([`natter_net::accept_validated`]: a Retry first). A connection needs a slot of the global limit and one of its IP address
/// ([`crate::Config::max_connections_per_ip`]); without either it is refused
/// before any handshake work.
pub(crate) async fn accept_loop(shell: Arc<Shell>) {
    while let Some(incoming) = natter_net::accept_validated(&shell.endpoint).await {
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
        Some(Body::LinkHello(hello)) => {
            let Some((peer, gossip)) =
                accept_link(&shell, &conn, &mut send, &mut recv, &hello).await?
            else {
                return Ok(());
            };
            run_link(shell, conn, send, recv, peer, gossip, LinkOrigin::Accepted).await;
            Ok(())
        }
        Some(Body::GossipMembership(_)) => {
            // A peer that does not prove a supernode certificate first.
            refuse_link(&shell, &conn, "no LinkHello");
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

/// Closes a link attempt that did not prove a supernode certificate, and
/// counts it.
fn refuse_link(shell: &Shell, conn: &Connection, why: &str) {
    shell.links_refused.fetch_add(1, Ordering::Relaxed);
    tracing::info!(remote = %conn.remote_address(), why, "supernode link refused");
    conn.close(VarInt::from_u32(close::REFUSED), b"link refused");
}

/// This node's `LinkHello` in `role` on `conn`: its certificate and the
/// certified key's signature over the role and the connection's exporter
/// (blinded: a peer triggers it at will). `None` before certification.
fn own_link_hello(shell: &Shell, conn: &Connection, role: LinkRole) -> Option<Envelope> {
    let credentials = shell.credentials()?;
    let exporter = natter_net::exporter::quic_exporter(conn).ok()?;
    let signature = cert::sign_blinded(
        &credentials.key,
        &mut rand::rngs::OsRng,
        &binding::link_hello_message(role, &exporter),
    );
    Some(Envelope::new(
        0,
        Body::LinkHello(LinkHello {
            certificate: Some(credentials.certificate),
            signature,
            role: role as u32,
        }),
    ))
}

/// A linked peer: its certified node id and the certificate it proved.
type Peer = (NodeId, Option<natter_proto::messages::Certificate>);

/// Checks a peer's `LinkHello` in `role` on `conn`; the certified node id
/// and its certificate.
fn check_link_hello(
    shell: &Shell,
    conn: &Connection,
    hello: &LinkHello,
    role: LinkRole,
) -> Result<Peer, String> {
    let exporter = natter_net::exporter::quic_exporter(conn).map_err(|e| e.to_string())?;
    let own = shell
        .credentials()
        .ok_or_else(|| "not certified yet".to_owned())?;
    let own_id = cert::key_id(&own.key.to_public_key());
    verify_link_hello(
        hello,
        role,
        &exporter,
        &shell.config.login_key,
        &own_id,
        now().unix_secs(),
    )
    .map(|id| (id, hello.certificate.clone()))
    .map_err(|e| e.to_string())
}

/// The acceptor's side of the link handshake after the dialler's
/// `LinkHello`: check it, answer with ours, read the dialler's gossip.
/// `None` when refused (the connection is closed).
async fn accept_link(
    shell: &Shell,
    conn: &Connection,
    send: &mut FramedSend,
    recv: &mut FramedRecv,
    hello: &LinkHello,
) -> Result<Option<(Peer, GossipMembership)>, natter_net::NetError> {
    let peer = match check_link_hello(shell, conn, hello, LinkRole::Dialler) {
        Ok(peer) => peer,
        Err(why) => {
            refuse_link(shell, conn, &why);
            return Ok(None);
        }
    };
    let Some(ours) = own_link_hello(shell, conn, LinkRole::Acceptor) else {
        refuse_link(shell, conn, "not certified yet");
        return Ok(None);
    };
    send.send(&ours).await?;
    let next = tokio::time::timeout(shell.config.handshake_timeout, recv.next())
        .await
        .map_err(|_| natter_net::NetError::Timeout)??;
    match next.and_then(|f| f.body) {
        Some(Body::GossipMembership(gossip)) => Ok(Some((peer, gossip))),
        _ => {
            refuse_link(shell, conn, "no gossip after the LinkHello");
            Ok(None)
        }
    }
}

/// Dials a supernode at `addr`: our `LinkHello` and `hello` (this node's
/// gossip) out, its `LinkHello` (checked) and gossip in, then runs the
/// link; a failure is reported to the node.
pub(crate) async fn dial(shell: Arc<Shell>, addr: SocketAddr, hello: Envelope) {
    let result = async {
        let conn = shell.endpoint.connect(addr, "natter-supernode")?.await?;
        let Some(ours) = own_link_hello(&shell, &conn, LinkRole::Dialler) else {
            conn.close(VarInt::from_u32(close::REFUSED), b"not certified yet");
            return Err(natter_net::NetError::NoReply);
        };
        let (send, recv) = conn.open_bi().await?;
        let mut send = FramedSend::new(send);
        let mut recv = FramedRecv::new(recv);
        send.send(&ours).await?;
        send.send(&hello).await?;
        let mut next = async || {
            tokio::time::timeout(shell.config.handshake_timeout, recv.next())
                .await
                .map_err(|_| natter_net::NetError::Timeout)?
                .map(|f| f.and_then(|f| f.body))
        };
        let peer = match next().await? {
            Some(Body::LinkHello(theirs)) => {
                match check_link_hello(&shell, &conn, &theirs, LinkRole::Acceptor) {
                    Ok(peer) => peer,
                    Err(why) => {
                        refuse_link(&shell, &conn, &why);
                        return Err(natter_net::NetError::NoReply);
                    }
                }
            }
            _ => {
                refuse_link(&shell, &conn, "no LinkHello from the acceptor");
                return Err(natter_net::NetError::NoReply);
            }
        };
        match next().await? {
            Some(Body::GossipMembership(gossip)) => Ok((conn, send, recv, peer, gossip)),
            _ => {
                conn.close(VarInt::from_u32(close::REFUSED), b"expected gossip");
                Err(natter_net::NetError::NoReply)
            }
        }
    }
    .await;
    match result {
        Ok((conn, send, recv, peer, gossip)) => {
            run_link(
                shell,
                conn,
                send,
                recv,
                peer,
                gossip,
                LinkOrigin::Dialed(addr),
            )
            .await;
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
    peer: Peer,
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
        peer: peer.0,
        certificate: peer.1,
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
