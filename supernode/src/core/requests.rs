//! What clients ask: the join handshake (certificate, challenge, proof),
//! then requests on the session, one at a time per session (later ones wait
//! in a bounded backlog), rate limited.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;

use natter_proto::binding::{self, Exporter};
use natter_proto::cert;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Ack, CallSignal, ChatMessage, ChatReceipt, DirectoryStore, Envelope, ErrorCode, ErrorReply,
    JoinAccepted, JoinChallenge, JoinHello, JoinProof, PresenceStatus, PresenceUpdate,
    RelayAllocate, RelayAllocated, SearchReply, UserRecord,
};
use natter_proto::name as names;
use natter_proto::statement::StatementError;
use rand::RngCore;

use super::interface::{Carrier, Output, RelayCommand, SessionId};
use super::jobs::{AfterDelivery, GatherFor, JobId, LookupFor};
use super::routing::error;
use super::sessions::{ChatAcks, Joined, Phase, Session, SessionKeys};
use super::state::{Node, Timer};
use super::statements::{self, Certified, VerifiedRecord};
use crate::close;
use crate::ratelimit::{RateLimiter, Verdict};
use crate::relay::{AllocError, Allocated, Token};

/// Longest chat text a client may seal, in bytes (the supernode sees only
/// the sealed body, at most [`natter_proto::chat::MAX_SEALED_LEN`]).
pub const MAX_CHAT_TEXT: usize = natter_proto::chat::MAX_TEXT_LEN;
/// Longest message or invite id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

impl Node {
    /// A client connection whose first frame was a `JoinHello`.
    pub(crate) fn open_session(
        &mut self,
        id: SessionId,
        remote: SocketAddr,
        carrier: Carrier,
        exporter: Exporter,
    ) {
        let deadline = self.now.mono + self.config.handshake_timeout;
        let limiter = RateLimiter::new(
            self.config.rate_per_sec,
            self.config.rate_burst,
            self.now.mono,
        );
        self.sessions.all.insert(
            id,
            Session {
                keys: None,
                remote,
                exporter,
                carrier,
                phase: Phase::Hello,
                limiter,
                deadline: Some(deadline),
                acks_chat: false,
                beacons: false,
                heard: self.now.mono,
                ticket: None,
            },
        );
        self.set_timer(deadline, Timer::Handshake(id));
    }

    /// Sends `body` as the last frame and closes the session.
    fn refuse(&mut self, id: SessionId, request_id: u64, body: Body) {
        self.send_session(id, request_id, body);
        self.sessions.all.remove(&id);
        self.emit(Output::CloseSession(id, close::REFUSED, "refused"));
    }

    /// The handshake of `id` is overdue.
    pub(crate) fn handshake_overdue(&mut self, id: SessionId) {
        let overdue = self
            .sessions
            .all
            .get(&id)
            .is_some_and(|s| s.deadline.is_some_and(|d| d <= self.now.mono));
        if overdue {
            self.sessions.all.remove(&id);
            self.emit(Output::CloseSession(id, close::REFUSED, "no proof"));
        }
    }

    /// A frame on session `id`.
    pub(crate) fn session_frame(&mut self, id: SessionId, envelope: Envelope) {
        let Some(session) = self.sessions.all.get_mut(&id) else {
            return;
        };
        session.heard = self.now.mono;
        match &mut session.phase {
            Phase::Hello => match envelope.body {
                Some(Body::JoinHello(hello)) => self.join_hello(id, envelope.request_id, hello),
                _ => {
                    self.sessions.all.remove(&id);
                    self.emit(Output::CloseSession(id, close::REFUSED, "no hello"));
                }
            },
            Phase::Challenged { .. } => self.join_proof(id, envelope),
            // Served at once, even behind a busy request: the request it
            // is busy with (an `InboxFetch`) may be waiting for it.
            Phase::Joined(_) if matches!(envelope.body, Some(Body::ChatDelivered(_))) => {
                if let Some(Body::ChatDelivered(delivered)) = envelope.body {
                    self.chat_delivered(id, &delivered.message_ids);
                    if envelope.request_id != 0 {
                        self.send_session(id, envelope.request_id, Body::Ack(Ack {}));
                    }
                }
            }
            Phase::Joined(joined) => {
                // A relay allocation is answered at once, even behind a busy
                // request: it waits on nothing, and a call migrating to this
                // supernode needs it while its resume signal may still be
                // routed towards the peer's old, dead home (the lab's
                // relay-loss call lost 2 s of audio waiting behind it). The
                // relay table still grants it only for a call known here.
                if joined.busy.is_none() || matches!(envelope.body, Some(Body::RelayAllocate(_))) {
                    self.serve(id, envelope);
                } else if joined.backlog.len() < self.config.max_backlog {
                    joined.backlog.push_back(envelope);
                } else {
                    self.stats.backlog_full += 1;
                    self.end_session(id, close::SLOW, "push queue full");
                }
            }
        }
    }

    fn join_hello(&mut self, id: SessionId, request_id: u64, hello: JoinHello) {
        if self.config.credentials.is_none() {
            let body = error(
                ErrorCode::NotApproved,
                "this supernode is not certified yet",
            );
            return self.refuse(id, request_id, body);
        }
        let Some(certificate) = hello.certificate else {
            let body = error(ErrorCode::CertificateRejected, "no certificate");
            return self.refuse(id, request_id, body);
        };
        let verified =
            match cert::verify(&certificate, &self.config.login_key, self.now.unix_secs()) {
                Ok(verified) => verified,
                Err(e) => {
                    tracing::debug!(error = %e, "certificate rejected");
                    let body = error(ErrorCode::CertificateRejected, e.to_string());
                    return self.refuse(id, request_id, body);
                }
            };
        let Ok(name) = names::normalise(&verified.name) else {
            let body = error(
                ErrorCode::CertificateRejected,
                "certificate names no valid user",
            );
            return self.refuse(id, request_id, body);
        };
        if self.revoked.users.contains(&name) {
            self.stats.sessions_revoked += 1;
            let body = error(ErrorCode::Revoked, format!("{name:?} is revoked"));
            return self.refuse(id, request_id, body);
        }
        let mut nonce = [0u8; 32];
        self.rng.fill_bytes(&mut nonce);
        let Some(challenge) = self.signed_challenge(id, nonce) else {
            return;
        };
        if let Some(session) = self.sessions.all.get_mut(&id) {
            session.acks_chat = hello.acks_chat;
            session.beacons = hello.beacons;
            session.keys = Some(SessionKeys {
                public_key: verified.public_key.clone(),
                chat_key: verified.chat_key,
                not_after: verified.not_after,
            });
            let certified = Certified {
                certificate,
                name: name.clone(),
                public_key: verified.public_key,
                not_after: verified.not_after,
            };
            session.phase = Phase::Challenged {
                name,
                certified: Box::new(certified),
                nonce,
            };
        }
        self.arm_expiry(id, verified.not_after);
        self.send_session(id, request_id, Body::JoinChallenge(challenge));
    }

    fn join_proof(&mut self, id: SessionId, proof: Envelope) {
        let Some(session) = self.sessions.all.get(&id) else {
            return;
        };
        let Phase::Challenged {
            name,
            certified,
            nonce,
        } = &session.phase
        else {
            return;
        };
        let proof_body = match &proof.body {
            Some(Body::JoinProof(p)) => Some(p),
            _ => None,
        };
        let valid =
            proof_body.is_some_and(|p| self.proof_binds(session, &certified.public_key, nonce, p));
        if !valid {
            tracing::debug!(user = %name, "join proof failed");
            let body = error(
                ErrorCode::ChallengeFailed,
                "proof does not verify with the certified key",
            );
            return self.refuse(id, proof.request_id, body);
        }
        // The statement the user's records will carry (only after the
        // proof verified: no second RSA operation for a bad proof).
        let signed = proof_body
            .ok_or_else(|| StatementError::Missing.into())
            .and_then(|p| {
                statements::verify_join(
                    &p.statement,
                    &p.statement_signature,
                    certified,
                    &self.config.node_id,
                    nonce,
                    self.now.unix_ms,
                )
            });
        let signed = match signed {
            Ok(signed) => signed,
            Err(e) => {
                tracing::debug!(user = %name, error = %e, "join statement refused");
                let body = error(ErrorCode::ChallengeFailed, e.to_string());
                return self.refuse(id, proof.request_id, body);
            }
        };
        let name = name.clone();
        let observed = session.remote;
        let acks_chat = session.acks_chat;
        let ticket = self.issue_ticket(id, observed.ip());
        let accepted = self.host_cache_envelope(|supernodes| {
            Envelope::new(
                proof.request_id,
                Body::JoinAccepted(JoinAccepted {
                    observed_addr: Some(observed.into()),
                    supernodes,
                    reflector: Some(self.config.reflector.into()),
                    acks_chat,
                    alive_ticket: ticket.map(|t| t.to_bytes().to_vec()).unwrap_or_default(),
                }),
            )
        });
        if let Some(body) = accepted.body {
            self.send_session(id, proof.request_id, body);
        }
        let now_ms = self.now.unix_ms;
        let Some(session) = self.sessions.all.get_mut(&id) else {
            return;
        };
        session.deadline = None;
        session.phase = Phase::Joined(Joined {
            name: name.clone(),
            status: PresenceStatus::Online,
            signed,
            changed_at: now_ms,
            subscriptions: HashSet::new(),
            busy: None,
            backlog: VecDeque::new(),
            acks: Box::new(ChatAcks {
                enabled: acks_chat,
                ..ChatAcks::default()
            }),
        });
        if session.carrier == Carrier::Tcp {
            self.sessions.tcp_joined_total += 1;
        }
        if let Some(old) = self.sessions.by_name.insert(name.clone(), id) {
            tracing::info!(user = %name, "second session replaces the first");
            self.forget_session(old);
            self.emit(Output::CloseSession(old, close::REPLACED, "joined again"));
        }
        tracing::info!(user = %name, "user joined");
        self.start_gather(&name, GatherFor::Join { session: id });
    }

    /// The challenge for session `id`: the nonce, this node's certificate
    /// and its signature over the nonce bound to the connection's exporter
    /// (blinded: any client triggers it at will). `None` (and nothing sent)
    /// if the session or the credentials are gone.
    fn signed_challenge(&mut self, id: SessionId, nonce: [u8; 32]) -> Option<JoinChallenge> {
        let exporter = self.sessions.all.get(&id)?.exporter;
        let credentials = self.config.credentials.as_ref()?;
        let message = binding::supernode_join_message(&exporter, &nonce);
        let signature = cert::sign_blinded(&credentials.key, &mut self.rng, &message);
        Some(JoinChallenge {
            nonce: nonce.to_vec(),
            node_id: self.config.node_id.to_vec(),
            certificate: Some(credentials.certificate.clone()),
            signature,
        })
    }

    /// Whether a join proof is the certified key's signature over this
    /// connection's exporter, this node's id, the nonce and the statement:
    /// a proof made for another connection (relayed by a rogue supernode)
    /// fails.
    fn proof_binds(
        &self,
        session: &Session,
        public_key: &rsa::RsaPublicKey,
        nonce: &[u8; 32],
        proof: &JoinProof,
    ) -> bool {
        let message = binding::join_proof_message(
            &session.exporter,
            &self.config.node_id,
            nonce,
            &proof.statement,
        );
        cert::verify_signature(public_key, &message, &proof.signature).is_ok()
    }

    /// Ends a joined session (left, or closed by the shell): the user is
    /// published offline unless a newer session replaced it.
    pub(crate) fn session_closed(&mut self, id: SessionId) {
        let Some(session) = self.sessions.all.remove(&id) else {
            return;
        };
        if let Some(mac) = session.ticket {
            self.sessions.by_ticket.remove(&mac);
        }
        let Phase::Joined(mut joined) = session.phase else {
            return;
        };
        self.release_acks(*std::mem::take(&mut joined.acks));
        if self.sessions.is_current(id, &joined.name) {
            self.sessions.by_name.remove(&joined.name);
            joined.status = PresenceStatus::Offline;
            joined.changed_at = self.now.unix_ms.max(joined.changed_at);
            let record = self.local_record(&joined.name, &joined);
            self.publish(&record, joined.signed.meta, true);
            tracing::info!(user = %joined.name, "user left");
        }
    }

    /// Ends session `id` and tells the shell to close it with `code`.
    pub(crate) fn end_session(&mut self, id: SessionId, code: u32, reason: &'static str) {
        self.session_closed(id);
        self.emit(Output::CloseSession(id, code, reason));
    }

    /// The request session `id` was busy with finished (a session has one
    /// at a time): serves the requests that waited behind it.
    pub(crate) fn resume(&mut self, id: SessionId) {
        let Some(joined) = self.sessions.joined_mut(id) else {
            return;
        };
        joined.busy = None;
        loop {
            let Some(joined) = self.sessions.joined_mut(id) else {
                return;
            };
            if joined.busy.is_some() {
                return;
            }
            let Some(next) = joined.backlog.pop_front() else {
                return;
            };
            self.serve(id, next);
        }
    }

    fn busy(&mut self, id: SessionId, job: JobId) {
        if let Some(joined) = self.sessions.joined_mut(id) {
            joined.busy = Some(job);
        }
    }

    /// One request of joined session `id`.
    fn serve(&mut self, id: SessionId, envelope: Envelope) {
        let now = self.now.mono;
        let Some(session) = self.sessions.all.get_mut(&id) else {
            return;
        };
        let Some(name) = session.joined().map(|j| j.name.clone()) else {
            return;
        };
        match session.limiter.check(now) {
            Verdict::Allow => {}
            Verdict::Limit(after) => {
                let mut reply = ErrorReply::new(ErrorCode::RateLimited, "slow down");
                reply.retry_after_ms = u32::try_from(after.as_millis()).unwrap_or(u32::MAX).max(1);
                self.send_session(id, envelope.request_id, Body::Error(reply));
                return;
            }
            Verdict::Close => {
                tracing::info!(user = %name, "flooding while rate limited, closing");
                let mut reply =
                    ErrorReply::new(ErrorCode::RateLimited, "rate limit exceeded, closing");
                reply.retry_after_ms = 1000;
                self.send_session(id, envelope.request_id, Body::Error(reply));
                self.end_session(id, close::RATE_LIMITED, "rate limited");
                return;
            }
        }
        let rid = envelope.request_id;
        let Some(body) = envelope.body else {
            return;
        };
        if rid == 0 {
            let body = error(ErrorCode::Malformed, "requests need a request id > 0");
            self.send_session(id, 0, body);
            return;
        }
        match body {
            Body::Ping(ping) => {
                let pong = Body::Pong(natter_proto::messages::Pong { nonce: ping.nonce });
                self.send_session(id, rid, pong);
            }
            Body::CertificateRenewal(renewal) => self.renew_certificate(id, rid, renewal),
            Body::SetPresence(presence) => {
                let status =
                    PresenceStatus::try_from(presence.status).unwrap_or(PresenceStatus::Online);
                let now_ms = self.now.unix_ms;
                if let Some(joined) = self.sessions.joined_mut(id) {
                    joined.status = status;
                    joined.changed_at = now_ms.max(joined.changed_at);
                }
                self.publish_session(&name, true);
                self.send_session(id, rid, Body::Ack(Ack {}));
            }
            Body::PresenceSubscribe(subscribe) => {
                let max = self.config.max_subscriptions;
                let mut accepted = Vec::new();
                if let Some(joined) = self.sessions.joined_mut(id) {
                    for wanted in subscribe
                        .names
                        .iter()
                        .filter_map(|n| names::normalise(n).ok())
                    {
                        if joined.subscriptions.len() >= max {
                            break;
                        }
                        if joined.subscriptions.insert(wanted.clone()) {
                            accepted.push(wanted);
                        }
                    }
                }
                self.send_session(id, rid, Body::Ack(Ack {}));
                for wanted in accepted {
                    self.start_lookup(&wanted, LookupFor::Subscribe { session: id });
                }
            }
            Body::SearchRequest(search) => match names::normalise(&search.name) {
                Ok(wanted) => {
                    let purpose = LookupFor::Search {
                        session: id,
                        request_id: rid,
                        name: wanted.clone(),
                    };
                    let job = self.start_lookup(&wanted, purpose);
                    self.busy(id, job);
                }
                Err(_) => {
                    let reply = not_found(search.name);
                    self.send_session(id, rid, Body::SearchReply(reply));
                }
            },
            Body::ChatMessage(message) => self.chat(id, rid, &name, message),
            Body::ChatReceipt(receipt) => self.receipt(id, rid, &name, receipt),
            Body::InboxFetch(_) => {
                let job = self.start_gather(
                    &name,
                    GatherFor::Inbox {
                        session: id,
                        request_id: rid,
                    },
                );
                self.busy(id, job);
            }
            Body::CallSignal(signal) => self.call_signal(id, rid, &name, signal),
            Body::Leave(_) => {
                self.send_session(id, rid, Body::Ack(Ack {}));
                self.end_session(id, close::NORMAL, "left");
            }
            Body::RelayAllocate(request) => self.relay_allocate(id, rid, &name, request),
            other => {
                let detail = format!("unexpected {} in a session", other.type_name());
                self.send_session(id, rid, error(ErrorCode::Malformed, detail));
            }
        }
    }

    fn chat(&mut self, id: SessionId, rid: u64, name: &str, mut message: ChatMessage) {
        message.from = name.to_owned();
        let Ok(to) = names::normalise(&message.to) else {
            self.send_session(id, rid, error(ErrorCode::UserUnknown, "not a user name"));
            return;
        };
        message.to.clone_from(&to);
        // Version 2 chat is sealed end to end: plaintext, a bad id or an
        // oversize body is refused, never stored or forwarded.
        if let Err(e) = natter_proto::chat::check_envelope(&message) {
            self.stats.chat_malformed += 1;
            self.send_session(id, rid, error(ErrorCode::Malformed, e.to_string()));
            return;
        }
        let then = AfterDelivery::Chat {
            session: id,
            request_id: rid,
            message: message.clone(),
        };
        let job = self.deliver(&to, Body::ChatMessage(message), then);
        self.busy(id, job);
    }

    fn receipt(&mut self, id: SessionId, rid: u64, name: &str, mut receipt: ChatReceipt) {
        receipt.from = name.to_owned();
        let Ok(to) = names::normalise(&receipt.to) else {
            self.send_session(id, rid, error(ErrorCode::UserUnknown, "not a user name"));
            return;
        };
        receipt.to.clone_from(&to);
        let then = AfterDelivery::Receipt {
            session: id,
            request_id: rid,
        };
        let job = self.deliver(&to, Body::ChatReceipt(receipt), then);
        self.busy(id, job);
    }

    fn call_signal(&mut self, id: SessionId, rid: u64, name: &str, mut signal: CallSignal) {
        signal.from = name.to_owned();
        let Ok(to) = names::normalise(&signal.to) else {
            self.send_session(id, rid, error(ErrorCode::UserUnknown, "not a user name"));
            return;
        };
        signal.to.clone_from(&to);
        if signal.invite_id.is_empty()
            || signal.invite_id.len() > MAX_ID_LEN
            || signal.kind.is_none()
        {
            let body = error(
                ErrorCode::Malformed,
                "call signal needs an invite id and a kind",
            );
            self.send_session(id, rid, body);
            return;
        }
        self.observe_signal(&signal);
        let then = AfterDelivery::Signal {
            session: id,
            request_id: rid,
            signal: signal.clone(),
        };
        let job = self.deliver(&to, Body::CallSignal(signal), then);
        self.busy(id, job);
    }

    fn relay_allocate(&mut self, id: SessionId, rid: u64, name: &str, request: RelayAllocate) {
        if request.invite_id.is_empty() || request.invite_id.len() > MAX_ID_LEN {
            self.send_session(id, rid, error(ErrorCode::Malformed, "bad invite id"));
            return;
        }
        let source = self.sessions.all.get(&id).map(|s| s.remote.ip());
        self.emit(Output::Relay(RelayCommand::Allocate {
            session: id,
            request_id: rid,
            user: name.to_owned(),
            source,
            invite_id: request.invite_id,
        }));
    }

    /// The relay table's answer to an allocation request. The requester
    /// gets its own side's token only; a new allocation's other side goes to
    /// the other user of the call, routed to it like a call signal (a
    /// `RelayAllocated` with `to` and request id 0).
    pub(crate) fn relay_allocated(
        &mut self,
        id: SessionId,
        rid: u64,
        invite_id: Vec<u8>,
        result: Result<Allocated, AllocError>,
    ) {
        let lifetime = self.config.relay_lifetime;
        let grant = |token: Token, to: String| RelayAllocated {
            invite_id: invite_id.clone(),
            relay: Some(self.config.reflector.into()),
            token: token.to_vec(),
            lifetime_s: u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX).max(1),
            peer_token: Vec::new(),
            tcp: self.config.tcp_addr.map(Into::into),
            to,
        };
        let (body, push) = match result {
            Ok(allocated) => (
                Body::RelayAllocated(grant(allocated.token, String::new())),
                allocated
                    .for_peer
                    .map(|token| grant(token, allocated.peer.clone())),
            ),
            Err(e @ AllocError::NotInCall) => (error(ErrorCode::NotJoined, e.to_string()), None),
            Err(e @ (AllocError::UserQuota | AllocError::PrefixQuota | AllocError::Full)) => {
                let mut reply = ErrorReply::new(ErrorCode::RateLimited, e.to_string());
                reply.retry_after_ms = u32::try_from(lifetime.as_millis()).unwrap_or(u32::MAX);
                (Body::Error(reply), None)
            }
        };
        self.send_session(id, rid, body);
        if let Some(push) = push {
            let to = push.to.clone();
            self.deliver(&to, Body::RelayAllocated(push), AfterDelivery::Quiet);
        }
    }

    /// A search or subscription lookup finished.
    pub(crate) fn looked_up(&mut self, purpose: LookupFor, record: Option<UserRecord>) {
        match purpose {
            LookupFor::Search {
                session,
                request_id,
                name,
            } => {
                let reply = match record {
                    Some(record) => {
                        let online = record.status != PresenceStatus::Offline as i32;
                        SearchReply {
                            name: record.name,
                            found: true,
                            status: record.status,
                            last_seen: record.last_seen,
                            supernode: if online { record.home_addr } else { None },
                            certificate: record.certificate,
                        }
                    }
                    None => not_found(name),
                };
                self.send_session(session, request_id, Body::SearchReply(reply));
            }
            LookupFor::Subscribe { session } => {
                if let Some(record) = record
                    && self.sessions.joined(session).is_some()
                {
                    let update = PresenceUpdate {
                        name: record.name,
                        status: record.status,
                        last_seen: record.last_seen,
                    };
                    self.send_session(session, 0, Body::PresenceUpdate(update));
                }
            }
            LookupFor::Deliver(delivery) => self.deliver_found(delivery, record),
        }
    }

    /// The first round of a gather for `name` (session of `purpose`)
    /// finished with the `previous` record: a join is published, and an
    /// older home that still thinks the user is there is told.
    pub(crate) fn gathered_record(
        &mut self,
        purpose: &GatherFor,
        name: &str,
        previous: Option<VerifiedRecord>,
    ) {
        let GatherFor::Join { session } = purpose else {
            return;
        };
        if !self.sessions.is_current(*session, name) {
            return;
        }
        let Some((_, joined)) = self.sessions.of_name(name) else {
            return;
        };
        let record = self.local_record(name, joined);
        let meta = joined.signed.meta;
        self.publish(&record, meta, true);
        if let Some(previous) = previous
            && previous.online()
            && previous.home() != self.config.node_id
        {
            let home = previous.home();
            let store = Body::DirectoryStore(DirectoryStore {
                records: vec![record],
                pending_chat: Vec::new(),
            });
            self.send_link(&home, Envelope::new(0, store));
        }
    }
}

fn not_found(name: String) -> SearchReply {
    SearchReply {
        name,
        found: false,
        status: PresenceStatus::Offline as i32,
        last_seen: 0,
        supernode: None,
        ..Default::default()
    }
}
