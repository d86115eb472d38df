//! Client sessions: the join handshake, then requests on the session stream.
//! The same code serves both transports: a QUIC bidirectional stream or a
//! TLS-over-TCP connection ([`ControlConn`], [`EnvelopeSend`],
//! [`EnvelopeRecv`]), with the same close codes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_net::{ControlConn, EnvelopeRecv, EnvelopeSend, NetError, Transport};
use natter_proto::cert;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Ack, CallSignal, ChatMessage, ChatReceipt, Envelope, ErrorCode, ErrorReply, JoinAccepted,
    JoinChallenge, PresenceStatus, PresenceUpdate, RelayAllocate, RelayAllocated, SearchReply,
    call_signal,
};
use rand::RngCore;
use tokio::sync::mpsc;

use crate::node::{Inner, Out, RouteError, SessionEntry, now_ms, now_secs, push_session};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::relay::AllocError;
use crate::close;
use natter_proto::name as names;

/// Longest chat text accepted, in bytes.
const MAX_CHAT_TEXT: usize = 16 * 1024;
/// Longest message or invite id accepted, in bytes.
const MAX_ID_LEN: usize = 64;

fn error(code: ErrorCode, detail: impl Into<String>) -> Body {
    Body::Error(ErrorReply::new(code, detail))
}

/// Sends `body` as the last frame and closes the connection.
async fn refuse(
    conn: &ControlConn,
    send: &mut EnvelopeSend,
    request_id: u64,
    body: Body,
) -> Result<(), NetError> {
    send.send(&Envelope::new(request_id, body)).await?;
    send.finish(Duration::from_secs(1)).await?;
    conn.close(close::REFUSED, b"refused");
    Ok(())
}

/// Errors that mean the peer sent bytes that are not frames or records.
fn is_malformed(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Frame(_) | NetError::Record(_) | NetError::Truncated
    )
}

/// Runs the join handshake (`hello` is the first frame, a `JoinHello`) and
/// then the session until the client leaves or the connection dies.
pub(crate) async fn run(
    inner: Arc<Inner>,
    conn: ControlConn,
    mut send: EnvelopeSend,
    mut recv: EnvelopeRecv,
    hello: Envelope,
) -> Result<(), NetError> {
    let Some(Body::JoinHello(join)) = hello.body else {
        return Ok(());
    };
    let Some(certificate) = join.certificate else {
        let body = error(ErrorCode::CertificateRejected, "no certificate");
        return refuse(&conn, &mut send, hello.request_id, body).await;
    };
    let verified = match cert::verify(&certificate, &inner.config.login_key, now_secs()) {
        Ok(verified) => verified,
        Err(e) => {
            tracing::debug!(remote = %conn.remote_address(), error = %e, "certificate rejected");
            let body = error(ErrorCode::CertificateRejected, e.to_string());
            return refuse(&conn, &mut send, hello.request_id, body).await;
        }
    };
    let Some(name) = names::normalise(&verified.name).ok() else {
        let body = error(
            ErrorCode::CertificateRejected,
            "certificate names no valid user",
        );
        return refuse(&conn, &mut send, hello.request_id, body).await;
    };
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let challenge = Body::JoinChallenge(JoinChallenge {
        nonce: nonce.to_vec(),
        node_id: inner.node_id.to_vec(),
    });
    send.send(&Envelope::new(hello.request_id, challenge))
        .await?;
    let proof = match tokio::time::timeout(inner.config.handshake_timeout, recv.next()).await {
        Ok(Ok(Some(proof))) => proof,
        Ok(Err(e)) if is_malformed(&e) => {
            conn.close(close::MALFORMED, b"malformed frame");
            return Ok(());
        }
        _ => {
            conn.close(close::REFUSED, b"no proof");
            return Ok(());
        }
    };
    let message = cert::join_proof_message(&inner.node_id, &nonce);
    let valid = match &proof.body {
        Some(Body::JoinProof(p)) => {
            cert::verify_signature(&verified.public_key, &message, &p.signature).is_ok()
        }
        _ => false,
    };
    if !valid {
        tracing::debug!(user = %name, "join proof failed");
        let body = error(
            ErrorCode::ChallengeFailed,
            "proof does not verify with the certified key",
        );
        return refuse(&conn, &mut send, proof.request_id, body).await;
    }

    // Joined.
    let accepted = {
        let st = inner.state();
        Body::JoinAccepted(JoinAccepted {
            observed_addr: Some(conn.remote_address().into()),
            supernodes: inner.host_cache(&st),
            reflector: Some(inner.udp.primary_addr.into()),
        })
    };
    send.send(&Envelope::new(proof.request_id, accepted))
        .await?;
    let (tx, rx) = mpsc::channel(inner.config.session_queue);
    let session_id = inner.next_id();
    let joined_at = now_ms();
    {
        let mut st = inner.state();
        let entry = SessionEntry {
            id: session_id,
            tx: tx.clone(),
            conn: conn.clone(),
            status: PresenceStatus::Online,
            joined_at,
            changed_at: joined_at,
            subscriptions: HashSet::new(),
        };
        if let Some(old) = st.sessions.insert(name.clone(), entry) {
            tracing::info!(user = %name, "second session replaces the first");
            old.conn.close(close::REPLACED, b"joined again");
        }
    }
    let transport = conn.transport();
    let _tcp_session = (transport == Transport::Tls).then(|| inner.tcp.session());
    tracing::info!(
        user = %name,
        remote = %conn.remote_address(),
        transport = transport.name(),
        "user joined"
    );
    let writer = tokio::spawn(write_loop(send, rx, conn.clone()));
    let session = Session {
        inner: Arc::clone(&inner),
        name: name.clone(),
        id: session_id,
        tx,
        conn: conn.clone(),
    };
    // Not aborted when the session ends early: it puts back any chat it
    // took from the replicas.
    tokio::spawn(finish_join(Arc::clone(&inner), name.clone(), session_id));
    let outcome = session.serve(&mut recv).await;

    // Clean up, unless the session was replaced.
    {
        let mut st = inner.state();
        if st.sessions.get(&name).is_some_and(|s| s.id == session_id) {
            if let Some(mut entry) = st.sessions.remove(&name) {
                entry.status = PresenceStatus::Offline;
                entry.changed_at = now_ms().max(entry.changed_at);
                let record = inner.local_record(&name, &entry);
                inner.publish(&mut st, &record, true);
            }
            tracing::info!(user = %name, "user left");
        }
    }
    match outcome {
        Flow::Close(code, reason) => {
            if session.tx.try_send(Out::Close(code, reason)).is_err() {
                conn.close(code, reason.as_bytes());
            }
        }
        Flow::Continue => conn.close(close::NORMAL, b"bye"),
    }
    drop(session);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

/// After a join: fetches the previous record and the chat stored for the
/// user from its replicas, publishes the user online (telling a supernode
/// that still holds an older session), and delivers the chat.
async fn finish_join(inner: Arc<Inner>, name: String, session_id: u64) {
    let (previous, chat) = inner.lookup_for_join(&name).await;
    let mut st = inner.state();
    let Some(session) = st.sessions.get(&name).filter(|s| s.id == session_id) else {
        // Gone meanwhile: put the chat back.
        for message in chat {
            inner.store_pending(&mut st, message);
        }
        return;
    };
    let record = inner.local_record(&name, session);
    inner.publish(&mut st, &record, true);
    if let Some(previous) = previous
        && previous.status != PresenceStatus::Offline as i32
        && let Some(home) = crate::node_id(&previous.home_node_id)
        && home != inner.node_id
    {
        let store = Body::DirectoryStore(natter_proto::messages::DirectoryStore {
            records: vec![record],
            pending_chat: Vec::new(),
        });
        inner.send_link(&st, &home, Envelope::new(0, store));
    }
    deliver_stored(&inner, &mut st, &name, chat);
}

/// Pushes stored chat to the local session of `name` and receipts it.
fn deliver_stored(
    inner: &Arc<Inner>,
    st: &mut crate::node::State,
    name: &str,
    chat: Vec<ChatMessage>,
) {
    for message in chat {
        if !inner.push_local(
            st,
            name,
            Envelope::new(0, Body::ChatMessage(message.clone())),
        ) {
            inner.store_pending(st, message);
            continue;
        }
        inner.send_receipt(&message);
    }
}

async fn write_loop(mut send: EnvelopeSend, mut rx: mpsc::Receiver<Out>, conn: ControlConn) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Frame(envelope) => {
                if send.send(&envelope).await.is_err() {
                    break;
                }
            }
            Out::Close(code, reason) => {
                let _ = send.finish(Duration::from_secs(1)).await;
                conn.close(code, reason.as_bytes());
                break;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close(u32, &'static str),
}

struct Session {
    inner: Arc<Inner>,
    name: String,
    id: u64,
    tx: mpsc::Sender<Out>,
    conn: ControlConn,
}

impl Session {
    async fn serve(&self, recv: &mut EnvelopeRecv) -> Flow {
        let config = &self.inner.config;
        let mut limiter = RateLimiter::new(config.rate_per_sec, config.rate_burst, Instant::now());
        loop {
            let envelope = match recv.next().await {
                Ok(Some(envelope)) => envelope,
                Ok(None) => return Flow::Continue,
                Err(e) if is_malformed(&e) => {
                    tracing::debug!(user = %self.name, "malformed frame, closing");
                    self.conn.close(close::MALFORMED, b"malformed frame");
                    return Flow::Continue;
                }
                Err(_) => return Flow::Continue,
            };
            match limiter.check(Instant::now()) {
                Verdict::Allow => {}
                Verdict::Limit(after) => {
                    let mut reply = ErrorReply::new(ErrorCode::RateLimited, "slow down");
                    reply.retry_after_ms =
                        u32::try_from(after.as_millis()).unwrap_or(u32::MAX).max(1);
                    self.reply(envelope.request_id, Body::Error(reply));
                    continue;
                }
                Verdict::Close => {
                    tracing::info!(user = %self.name, "flooding while rate limited, closing");
                    let mut reply =
                        ErrorReply::new(ErrorCode::RateLimited, "rate limit exceeded, closing");
                    reply.retry_after_ms = 1000;
                    self.reply(envelope.request_id, Body::Error(reply));
                    return Flow::Close(close::RATE_LIMITED, "rate limited");
                }
            }
            let flow = self.handle(envelope).await;
            if flow != Flow::Continue {
                return flow;
            }
            if self.conn.is_closed() {
                return Flow::Continue;
            }
        }
    }

    /// Queues a reply (or push); a full queue disconnects the client.
    fn reply(&self, request_id: u64, body: Body) -> bool {
        match self
            .tx
            .try_send(Out::Frame(Envelope::new(request_id, body)))
        {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.conn.close(close::SLOW, b"push queue full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    async fn handle(&self, envelope: Envelope) -> Flow {
        let rid = envelope.request_id;
        let Some(body) = envelope.body else {
            return Flow::Continue;
        };
        if rid == 0 {
            self.reply(
                0,
                error(ErrorCode::Malformed, "requests need a request id > 0"),
            );
            return Flow::Continue;
        }
        let inner = &self.inner;
        match body {
            Body::Ping(ping) => {
                self.reply(
                    rid,
                    Body::Pong(natter_proto::messages::Pong { nonce: ping.nonce }),
                );
            }
            Body::SetPresence(presence) => {
                let status =
                    PresenceStatus::try_from(presence.status).unwrap_or(PresenceStatus::Online);
                let mut st = inner.state();
                if let Some(session) = st.sessions.get_mut(&self.name).filter(|s| s.id == self.id) {
                    session.status = status;
                    session.changed_at = now_ms().max(session.changed_at);
                    inner.publish_session(&mut st, &self.name, true);
                }
                drop(st);
                self.reply(rid, Body::Ack(Ack {}));
            }
            Body::PresenceSubscribe(subscribe) => {
                let wanted: Vec<String> = subscribe
                    .names
                    .iter()
                    .filter_map(|n| names::normalise(n).ok())
                    .collect();
                let accepted = {
                    let mut st = inner.state();
                    let max = inner.config.max_subscriptions;
                    match st.sessions.get_mut(&self.name).filter(|s| s.id == self.id) {
                        Some(session) => {
                            let mut accepted = Vec::new();
                            for name in wanted {
                                if session.subscriptions.len() >= max {
                                    break;
                                }
                                if session.subscriptions.insert(name.clone()) {
                                    accepted.push(name);
                                }
                            }
                            accepted
                        }
                        None => Vec::new(),
                    }
                };
                self.reply(rid, Body::Ack(Ack {}));
                let inner = Arc::clone(inner);
                let (me, id) = (self.name.clone(), self.id);
                tokio::spawn(async move {
                    for name in accepted {
                        if let Some(record) = inner.lookup(&name).await {
                            let st = inner.state();
                            if let Some(session) = st.sessions.get(&me).filter(|s| s.id == id) {
                                let update = PresenceUpdate {
                                    name: record.name,
                                    status: record.status,
                                    last_seen: record.last_seen,
                                };
                                push_session(
                                    session,
                                    Envelope::new(0, Body::PresenceUpdate(update)),
                                );
                            }
                        }
                    }
                });
            }
            Body::SearchRequest(search) => {
                let record = match names::normalise(&search.name).ok() {
                    Some(name) => inner.lookup(&name).await,
                    None => None,
                };
                let reply = match record {
                    Some(record) => {
                        let online = record.status != PresenceStatus::Offline as i32;
                        SearchReply {
                            name: record.name,
                            found: true,
                            status: record.status,
                            last_seen: record.last_seen,
                            supernode: if online { record.home_addr } else { None },
                        }
                    }
                    None => SearchReply {
                        name: names::normalise(&search.name).ok().unwrap_or(search.name),
                        found: false,
                        status: PresenceStatus::Offline as i32,
                        last_seen: 0,
                        supernode: None,
                    },
                };
                self.reply(rid, Body::SearchReply(reply));
            }
            Body::ChatMessage(message) => self.chat(rid, message).await,
            Body::ChatReceipt(receipt) => self.receipt(rid, receipt).await,
            Body::InboxFetch(_) => {
                let (_, chat) = inner.lookup_for_join(&self.name).await;
                let mut st = inner.state();
                for message in chat {
                    if !push_own(&st, &self.name, self.id, Body::ChatMessage(message.clone())) {
                        inner.store_pending(&mut st, message);
                        continue;
                    }
                    inner.send_receipt(&message);
                }
                drop(st);
                self.reply(rid, Body::Ack(Ack {}));
            }
            Body::CallSignal(signal) => self.call_signal(rid, signal).await,
            Body::Leave(_) => {
                self.reply(rid, Body::Ack(Ack {}));
                return Flow::Close(close::NORMAL, "left");
            }
            Body::RelayAllocate(request) => self.relay_allocate(rid, request),
            other => {
                self.reply(
                    rid,
                    error(
                        ErrorCode::Malformed,
                        format!("unexpected {} in a session", other.type_name()),
                    ),
                );
            }
        }
        Flow::Continue
    }

    async fn chat(&self, rid: u64, mut message: ChatMessage) {
        message.from.clone_from(&self.name);
        let Some(to) = names::normalise(&message.to).ok() else {
            self.reply(rid, error(ErrorCode::UserUnknown, "not a user name"));
            return;
        };
        message.to = to.clone();
        if message.message_id.is_empty()
            || message.message_id.len() > MAX_ID_LEN
            || message.text.len() > MAX_CHAT_TEXT
        {
            self.reply(
                rid,
                error(ErrorCode::Malformed, "bad message id or text too long"),
            );
            return;
        }
        match self
            .inner
            .deliver(&to, Body::ChatMessage(message.clone()))
            .await
        {
            Ok(()) => {
                self.reply(rid, Body::Ack(Ack {}));
            }
            Err(RouteError::Unknown) => {
                self.reply(rid, error(ErrorCode::UserUnknown, format!("no user {to}")));
            }
            Err(RouteError::Offline) => {
                let mut st = self.inner.state();
                self.inner.store_pending(&mut st, message);
                drop(st);
                self.reply(rid, Body::Ack(Ack {}));
            }
        }
    }

    async fn receipt(&self, rid: u64, mut receipt: ChatReceipt) {
        receipt.from.clone_from(&self.name);
        let Some(to) = names::normalise(&receipt.to).ok() else {
            self.reply(rid, error(ErrorCode::UserUnknown, "not a user name"));
            return;
        };
        receipt.to = to.clone();
        let reply = match self.inner.deliver(&to, Body::ChatReceipt(receipt)).await {
            Ok(()) => Body::Ack(Ack {}),
            Err(e) => route_error(&to, e),
        };
        self.reply(rid, reply);
    }

    async fn call_signal(&self, rid: u64, mut signal: CallSignal) {
        signal.from.clone_from(&self.name);
        let Some(to) = names::normalise(&signal.to).ok() else {
            self.reply(rid, error(ErrorCode::UserUnknown, "not a user name"));
            return;
        };
        signal.to = to.clone();
        if signal.invite_id.is_empty()
            || signal.invite_id.len() > MAX_ID_LEN
            || signal.kind.is_none()
        {
            self.reply(
                rid,
                error(
                    ErrorCode::Malformed,
                    "call signal needs an invite id and a kind",
                ),
            );
            return;
        }
        {
            let mut st = self.inner.state();
            self.inner.observe_signal(&mut st, &signal);
        }
        let invite = matches!(signal.kind, Some(call_signal::Kind::Invite(_)));
        match self
            .inner
            .deliver(&to, Body::CallSignal(signal.clone()))
            .await
        {
            Ok(()) => {
                self.inner.note_routed(&signal);
                if invite {
                    let mut st = self.inner.state();
                    self.inner.start_invite_timer(&mut st, &signal);
                }
                self.reply(rid, Body::Ack(Ack {}));
            }
            Err(e) => {
                self.reply(rid, route_error(&to, e));
            }
        }
    }
}

impl Session {
    /// A relay for a call routed through this supernode that involves this
    /// session's user.
    fn relay_allocate(&self, rid: u64, request: RelayAllocate) {
        if request.invite_id.is_empty() || request.invite_id.len() > MAX_ID_LEN {
            self.reply(rid, error(ErrorCode::Malformed, "bad invite id"));
            return;
        }
        let udp = &self.inner.udp;
        let result = udp.table().allocate(
            &self.name,
            &request.invite_id,
            &mut rand::rngs::OsRng,
            Instant::now(),
        );
        let lifetime = udp.table().limits().lifetime;
        let body = match result {
            Ok(allocated) => {
                tracing::debug!(
                    user = %self.name,
                    peer = %allocated.peer,
                    invite = %crate::node::short(&request.invite_id),
                    "relay allocated"
                );
                Body::RelayAllocated(RelayAllocated {
                    invite_id: request.invite_id,
                    relay: Some(udp.primary_addr.into()),
                    token: allocated.token.to_vec(),
                    lifetime_s: u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX).max(1),
                    peer_token: allocated.peer_token.to_vec(),
                    tcp: self.inner.tcp_addr.map(Into::into),
                })
            }
            Err(e @ AllocError::NotInCall) => error(ErrorCode::NotJoined, e.to_string()),
            Err(e @ (AllocError::UserQuota | AllocError::Full)) => {
                let mut reply = ErrorReply::new(ErrorCode::RateLimited, e.to_string());
                reply.retry_after_ms = u32::try_from(lifetime.as_millis()).unwrap_or(u32::MAX);
                Body::Error(reply)
            }
        };
        self.reply(rid, body);
    }
}

fn route_error(to: &str, e: RouteError) -> Body {
    match e {
        RouteError::Unknown => error(ErrorCode::UserUnknown, format!("no user {to}")),
        RouteError::Offline => error(ErrorCode::UserOffline, format!("{to} is offline")),
    }
}

/// Pushes to the session `id` of `name` (not to a newer one).
fn push_own(st: &crate::node::State, name: &str, id: u64, body: Body) -> bool {
    st.sessions
        .get(name)
        .filter(|s| s.id == id)
        .is_some_and(|s| push_session(s, Envelope::new(0, body)))
}
