//! QUIC connections: the accept loop (telling clients from supernodes by
//! their first frame), supernode links (one bidirectional stream per pair,
//! GossipMembership first both ways; QUIC only), gossip and failure
//! detection. Client sessions over TLS/TCP are accepted in [`crate::tcp`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_net::{ControlConn, EnvelopeRecv, EnvelopeSend, FramedRecv, FramedSend};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Ack, DirectoryRecords, Envelope, ErrorCode, ErrorReply, GossipMembership, Pong,
};
use quinn::{Connection, VarInt};
use tokio::sync::mpsc;

use crate::membership::tcp_of;
use crate::node::{Inner, LinkEntry, now_ms, short};
use crate::{NodeId, close};

/// Accepts connections until the endpoint closes.
pub(crate) async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let Ok(permit) = Arc::clone(&inner.connections).try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_incoming(inner, incoming).await {
                tracing::debug!(error = %e, "incoming connection ended");
            }
        });
    }
}

async fn serve_incoming(
    inner: Arc<Inner>,
    incoming: quinn::Incoming,
) -> Result<(), natter_net::NetError> {
    let conn = incoming.await?;
    let handshake = inner.config.handshake_timeout;
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
            crate::session::run(inner, ControlConn::Quic(conn), send, recv, first).await
        }
        Some(Body::GossipMembership(ref gossip)) => {
            let gossip = gossip.clone();
            send.send(&Envelope::new(
                0,
                Body::GossipMembership(own_gossip(&inner)),
            ))
            .await?;
            run_link(inner, conn, send, recv, gossip, false).await;
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

fn own_gossip(inner: &Inner) -> GossipMembership {
    GossipMembership {
        sender_id: inner.node_id.to_vec(),
        members: inner.state().membership.view(),
    }
}

/// Dials a supernode at `addr` and runs the link.
pub(crate) async fn dial(inner: Arc<Inner>, addr: SocketAddr) {
    let result = async {
        let conn = inner.endpoint.connect(addr, "natter-supernode")?.await?;
        let (send, recv) = conn.open_bi().await?;
        let mut send = FramedSend::new(send);
        let mut recv = FramedRecv::new(recv);
        send.send(&Envelope::new(
            0,
            Body::GossipMembership(own_gossip(&inner)),
        ))
        .await?;
        let first = tokio::time::timeout(inner.config.handshake_timeout, recv.next())
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
    inner.state().dialing.remove(&addr);
    match result {
        Ok((conn, send, recv, gossip)) => run_link(inner, conn, send, recv, gossip, true).await,
        Err(e) => tracing::debug!(%addr, error = %e, "cannot reach supernode"),
    }
}

/// Serves one supernode link until it dies.
async fn run_link(
    inner: Arc<Inner>,
    conn: Connection,
    mut send: FramedSend,
    mut recv: FramedRecv,
    first: GossipMembership,
    dialed: bool,
) {
    let Some(peer) = crate::node_id(&first.sender_id) else {
        conn.close(VarInt::from_u32(close::MALFORMED), b"bad node id");
        return;
    };
    if peer == inner.node_id {
        conn.close(VarInt::from_u32(close::DUPLICATE_LINK), b"that is me");
        return;
    }
    let (peer_addr, peer_tcp, incarnation) = first
        .members
        .iter()
        .find(|m| m.node_id == first.sender_id)
        .and_then(|m| {
            let addr = SocketAddr::try_from(m.addr.as_ref()?).ok()?;
            Some((addr, tcp_of(m), m.incarnation))
        })
        .unwrap_or((conn.remote_address(), None, 0));
    let dialer = if dialed { inner.node_id } else { peer };
    let link_id = inner.next_id();
    let (tx, mut rx) = mpsc::channel::<Envelope>(inner.config.link_queue);
    {
        let mut st = inner.state();
        if let Some(existing) = st.links.get(&peer) {
            // Two links between the same pair: both sides keep the one
            // dialed by the lower node id.
            let keep_new = existing.conn.close_reason().is_some()
                || (dialer == inner.node_id.min(peer) && existing.dialer != dialer);
            if !keep_new {
                drop(st);
                conn.close(VarInt::from_u32(close::DUPLICATE_LINK), b"duplicate link");
                return;
            }
            existing
                .conn
                .close(VarInt::from_u32(close::DUPLICATE_LINK), b"duplicate link");
        }
        st.links.insert(
            peer,
            LinkEntry {
                id: link_id,
                tx,
                conn: conn.clone(),
                addr: peer_addr,
                dialer,
            },
        );
        tracing::debug!(peer = %short(&peer), %peer_addr, dialed, "supernode link up");
        let changed =
            st.membership
                .heard_from(peer, peer_addr, peer_tcp, incarnation, Instant::now());
        let fresh = st.membership.learn(&first.members, Instant::now());
        if changed {
            inner.on_membership_change(&mut st);
        }
        drop(st);
        dial_new(&inner, fresh);
    }
    let writer_conn = conn.clone();
    let writer = tokio::spawn(async move {
        while let Some(envelope) = rx.recv().await {
            if send.send(&envelope).await.is_err() {
                break;
            }
        }
        drop(writer_conn);
    });
    loop {
        match recv.next().await {
            Ok(Some(envelope)) => handle_link_frame(&inner, peer, envelope),
            Ok(None) => break,
            Err(e) => {
                if matches!(
                    e,
                    natter_net::NetError::Frame(_) | natter_net::NetError::Truncated
                ) {
                    conn.close(VarInt::from_u32(close::MALFORMED), b"malformed frame");
                }
                tracing::debug!(peer = %short(&peer), error = %e, "supernode link ended");
                break;
            }
        }
    }
    writer.abort();
    conn.close(VarInt::from_u32(close::NORMAL), b"link ended");
    let mut st = inner.state();
    if st.links.get(&peer).is_some_and(|l| l.id == link_id) {
        st.links.remove(&peer);
        st.pending.retain(|(p, _), _| *p != peer);
        if st.membership.link_lost(&peer, Instant::now()) {
            tracing::info!(peer = %short(&peer), "supernode link lost: dead");
            inner.on_membership_change(&mut st);
        }
    }
}

/// Dials newly learned members this node is responsible for dialing (the
/// lower node id dials).
fn dial_new(inner: &Arc<Inner>, fresh: Vec<(NodeId, SocketAddr)>) {
    let mut st = inner.state();
    for (id, addr) in fresh {
        if inner.node_id < id && !st.links.contains_key(&id) && st.dialing.insert(addr) {
            tokio::spawn(dial(Arc::clone(inner), addr));
        }
    }
}

fn handle_link_frame(inner: &Arc<Inner>, peer: NodeId, envelope: Envelope) {
    let rid = envelope.request_id;
    let Some(body) = envelope.body else {
        return;
    };
    match body {
        Body::GossipMembership(gossip) => {
            if gossip.sender_id != peer {
                return;
            }
            let now = Instant::now();
            let mut st = inner.state();
            let (addr, tcp, incarnation) = gossip
                .members
                .iter()
                .find(|m| m.node_id == gossip.sender_id)
                .and_then(|m| {
                    let addr = SocketAddr::try_from(m.addr.as_ref()?).ok()?;
                    Some((addr, tcp_of(m), m.incarnation))
                })
                .or_else(|| st.links.get(&peer).map(|l| (l.addr, None, 0)))
                .unwrap_or((inner.addr, None, 0));
            let changed = st.membership.heard_from(peer, addr, tcp, incarnation, now);
            let fresh = st.membership.learn(&gossip.members, now);
            if changed {
                inner.on_membership_change(&mut st);
            }
            drop(st);
            dial_new(inner, fresh);
        }
        Body::DirectoryStore(store) => {
            let mut st = inner.state();
            let now = now_ms();
            for record in store.records {
                if let Some(session) = st.sessions.get(&record.name)
                    && record.home_node_id != inner.node_id
                    && record.status != natter_proto::messages::PresenceStatus::Offline as i32
                    && record.last_seen >= session.joined_at
                {
                    // The user joined again through another supernode.
                    tracing::info!(user = %record.name, "session replaced by a join elsewhere");
                    session.conn.close(close::REPLACED, b"joined elsewhere");
                    st.sessions.remove(&record.name);
                }
                st.records.put(record);
            }
            for message in store.pending_chat {
                st.chats.add(message, now);
            }
        }
        Body::DirectoryLookup(lookup) => {
            let mut st = inner.state();
            let mut records: Vec<_> = st.records.get(&lookup.name).cloned().into_iter().collect();
            if let Some(session) = st.sessions.get(&lookup.name) {
                records = vec![inner.local_record(&lookup.name, session)];
            }
            let pending_chat = if lookup.take_pending_chat {
                st.chats.take(&lookup.name)
            } else {
                Vec::new()
            };
            let reply = Body::DirectoryRecords(DirectoryRecords {
                records,
                pending_chat,
            });
            inner.send_link(&st, &peer, Envelope::new(rid, reply));
        }
        Body::PresenceUpdate(update) => {
            let st = inner.state();
            inner.notify_subscribers(&st, &update);
        }
        body @ (Body::CallSignal(_) | Body::ChatMessage(_) | Body::ChatReceipt(_)) => {
            let mut st = inner.state();
            let delivered = inner.deliver_local(&mut st, body);
            if rid != 0 {
                let reply = if delivered {
                    Body::Ack(Ack {})
                } else {
                    Body::Error(ErrorReply::new(ErrorCode::UserOffline, "not joined here"))
                };
                inner.send_link(&st, &peer, Envelope::new(rid, reply));
            }
        }
        Body::Ping(ping) => {
            let st = inner.state();
            inner.send_link(
                &st,
                &peer,
                Envelope::new(rid, Body::Pong(Pong { nonce: ping.nonce })),
            );
        }
        reply @ (Body::DirectoryRecords(_) | Body::Ack(_) | Body::Error(_) | Body::Pong(_)) => {
            if rid != 0
                && let Some(waiter) = inner.state().pending.remove(&(peer, rid))
            {
                let _ = waiter.send(Envelope::new(rid, reply));
            }
        }
        other => {
            tracing::debug!(peer = %short(&peer), kind = other.type_name(), "ignored on supernode link");
        }
    }
}

/// Every gossip interval: detect failures, gossip, (re)dial, expire.
pub(crate) async fn maintenance_loop(inner: Arc<Inner>) {
    let mut interval = tokio::time::interval(inner.config.gossip_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        interval.tick().await;
        ticks += 1;
        let now = Instant::now();
        let mut to_dial = Vec::new();
        {
            let mut st = inner.state();
            let died = st.membership.tick(now);
            for id in &died {
                if let Some(link) = st.links.remove(id) {
                    tracing::info!(peer = %short(id), "supernode silent: dead");
                    link.conn.close(VarInt::from_u32(close::DEAD), b"silent");
                }
            }
            let linked: Vec<NodeId> = st.links.keys().copied().collect();
            st.pending
                .retain(|(p, _), waiter| linked.contains(p) && !waiter.is_closed());
            if !died.is_empty() {
                inner.on_membership_change(&mut st);
            }
            let gossip = GossipMembership {
                sender_id: inner.node_id.to_vec(),
                members: st.membership.view(),
            };
            let peers: Vec<NodeId> = st.links.keys().copied().collect();
            for peer in peers {
                inner.send_link(
                    &st,
                    &peer,
                    Envelope::new(0, Body::GossipMembership(gossip.clone())),
                );
            }
            for (id, addr) in st.membership.suspects() {
                if inner.node_id < id && !st.links.contains_key(&id) {
                    to_dial.push(addr);
                }
            }
            for addr in &inner.config.peers {
                let linked = st
                    .links
                    .values()
                    .any(|l| l.addr == *addr || l.conn.remote_address() == *addr);
                if !linked && *addr != inner.addr && *addr != inner.local_addr {
                    to_dial.push(*addr);
                }
            }
            to_dial.retain(|addr| st.dialing.insert(*addr));
            if ticks.is_multiple_of(60) {
                let now_ms = now_ms();
                let membership = &st.membership;
                let live: Vec<NodeId> = membership.live_ids();
                st.records.expire(now_ms, |id| {
                    crate::node_id(id).is_some_and(|id| live.contains(&id))
                });
                st.chats.expire(now_ms);
            }
        }
        for addr in to_dial {
            tokio::spawn(dial(Arc::clone(&inner), addr));
        }
    }
}
