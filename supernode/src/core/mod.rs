//! The supernode node core, sans-IO: membership, directory, presence, call
//! signaling and chat routing, the session and link tables and the relay
//! allocation requests, with no sockets, no tasks and no clock.
//!
//! The shell feeds it what happened — `handle_session_open`,
//! `handle_session`, `handle_session_closed`, `handle_link_up`,
//! `handle_link`, `handle_link_down`, `handle_dial_failed`,
//! `handle_relay_allocated`, `handle_timeout` — each with the time
//! ([`Now`]), and carries out what [`Node::poll_output`] yields until it
//! yields nothing; [`Node::poll_timeout`] says when to call
//! `handle_timeout` next. Randomness (join nonces) comes from a generator
//! the core owns, seeded by the shell. What used to wait inside a lookup (a
//! replica's answer, the home supernode's `Ack`, the no-answer timer, the
//! end of a join) is pending state here, ended by an answer or a timer.
//!
//! Files, from the bottom up: `interface` (what goes in and out),
//! `fit` (envelopes that fit a frame), `jobs`, `sessions`, `links` (tables),
//! `state` (the [`Node`] and its basic moves), `directory`, `routing`,
//! `statements` (join statements and record verification), `mailbox` (stored chat), `requests` (clients), `overlay` (peers),
//! and this file (the entry points and the dispatcher of finished jobs).

mod beacons;
mod directory;
mod expiry;
mod fit;
mod interface;
mod jobs;
mod links;
mod mailbox;
mod overlay;
mod requests;
mod routing;
mod sessions;
mod state;
pub mod statements;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Envelope, GossipMembership, UserRecord};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub use interface::{Carrier, LinkId, LinkOrigin, Now, Output, RelayCommand, SessionId};
pub use mailbox::{MAX_HANDOFFS, MAX_PAGE, MAX_UNACKED};
pub use overlay::{MAX_DIALS_PER_TICK, MAX_VERIFIES_PER_TICK};
pub use requests::{MAX_CHAT_TEXT, MAX_ID_LEN};
pub use state::{CoreStats, Node, NodeConfig, NodeCredentials};

use jobs::{Done, GatherFor, Job, LookupFor};
pub use links::{LinkHelloError, verify_link_hello};
use links::{Links, Pending};
use sessions::Sessions;
use state::Timer;

use crate::NodeId;
use crate::membership::Membership;
use crate::relay::{AllocError, Allocated};
use crate::store::{ChatStore, RecordStore};

impl Node {
    /// A node alone in its overlay at `now`, drawing its randomness from a
    /// generator seeded with `seed`.
    pub fn new(config: NodeConfig, seed: [u8; 32], now: Now) -> Self {
        let membership = Membership::new(
            config.node_id,
            config.addr,
            config.tcp_addr,
            config.incarnation,
            config.timeouts,
        );
        let mut node = Self {
            revoked: state::Revoked::default(),
            peer_certificates: HashMap::new(),
            certified: HashMap::new(),
            rng: StdRng::from_seed(seed),
            last_live: membership.live_ids(),
            parked_lookups: Vec::new(),
            membership,
            records: RecordStore::default(),
            chats: ChatStore::new(config.chat_limits),
            handoffs: HashSet::new(),
            sessions: Sessions::default(),
            links: Links {
                dial_budget: MAX_DIALS_PER_TICK,
                verify_budget: MAX_VERIFIES_PER_TICK,
                ..Links::default()
            },
            invites: HashMap::new(),
            jobs: HashMap::new(),
            ready: VecDeque::new(),
            timers: BTreeMap::new(),
            next_tick: now.mono,
            ticks: 0,
            next_id: 1,
            out: VecDeque::new(),
            now,
            stats: CoreStats::default(),
            config,
        };
        node.set_timer(now.mono, Timer::Tick);
        node
    }

    fn at(&mut self, now: Now) {
        self.now = Now {
            mono: now.mono.max(self.now.mono),
            unix_ms: now.unix_ms,
        };
    }

    /// A client connection whose first frame is a `JoinHello`; that frame
    /// follows with [`Self::handle_session`]. `exporter` is the
    /// connection's TLS exporter (the join is bound to it both ways).
    pub fn handle_session_open(
        &mut self,
        id: SessionId,
        remote: SocketAddr,
        carrier: Carrier,
        exporter: natter_proto::binding::Exporter,
        now: Now,
    ) {
        self.at(now);
        self.open_session(id, remote, carrier, exporter);
    }

    /// A (new or renewed) certificate for this node's key from the login
    /// server. One for another key, or that is not a valid SUPERNODE
    /// certificate now, is ignored (and `false` returned).
    pub fn handle_certificate(
        &mut self,
        key: rsa::RsaPrivateKey,
        certificate: natter_proto::messages::Certificate,
        now: Now,
    ) -> bool {
        self.at(now);
        match natter_proto::cert::verify_supernode(
            &certificate,
            &self.config.login_key,
            self.now.unix_secs(),
        ) {
            Ok(v) if v.node_id == self.config.node_id && v.public_key == key.to_public_key() => {
                self.config.credentials = Some(NodeCredentials { key, certificate });
                true
            }
            Ok(_) => {
                tracing::warn!("certificate for another key ignored");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "invalid supernode certificate ignored");
                false
            }
        }
    }

    /// A frame on session `id`.
    pub fn handle_session(&mut self, id: SessionId, envelope: Envelope, now: Now) {
        self.at(now);
        self.session_frame(id, envelope);
        self.settle();
    }

    /// Session `id` is gone (the client closed it, it was malformed or
    /// slow, or the shell closed it on an [`Output::CloseSession`]).
    pub fn handle_session_closed(&mut self, id: SessionId, now: Now) {
        self.at(now);
        self.session_closed(id);
        self.settle();
    }

    /// A link to another supernode is up: the shell checked its
    /// `LinkHello` ([`verify_link_hello`]) and `peer` is the certified node
    /// id and `certificate` its certificate (handed to clients in host
    /// cache entries); `first` is the peer's gossip. A revoked peer, or gossip sent in
    /// another node's name, closes the link. For an accepted link the node
    /// answers with its own gossip before anything else.
    #[allow(clippy::too_many_arguments)] // one input, as the shell learned it
    pub fn handle_link_up(
        &mut self,
        link: LinkId,
        remote: SocketAddr,
        peer: NodeId,
        certificate: Option<natter_proto::messages::Certificate>,
        first: &GossipMembership,
        origin: LinkOrigin,
        now: Now,
    ) {
        self.at(now);
        self.link_up(link, remote, peer, certificate, first, origin);
        self.settle();
    }

    /// The login server's signed revocation list (from an announce answer,
    /// or passed along): checked against the pinned login key, ignored if
    /// older than the one held. Sessions of disabled users and links to
    /// revoked supernodes are closed now, and both are refused from now on.
    /// Returns whether the list was taken.
    pub fn handle_revocations(
        &mut self,
        list: &natter_proto::messages::RevocationList,
        now: Now,
    ) -> bool {
        self.at(now);
        let taken = self.revocations(list);
        self.settle();
        taken
    }

    /// A frame on a link.
    pub fn handle_link(&mut self, link: LinkId, envelope: Envelope, now: Now) {
        self.at(now);
        if let Some((rid, pending, reply)) = self.link_frame(link, envelope) {
            self.answer(rid, pending, Some(reply));
        }
        self.settle();
    }

    /// A link ended (whoever closed it).
    pub fn handle_link_down(&mut self, link: LinkId, now: Now) {
        self.at(now);
        for (rid, pending) in self.link_down(link) {
            self.answer(rid, pending, None);
        }
        self.settle();
    }

    /// A dial of [`Output::Dial`] failed.
    pub fn handle_dial_failed(&mut self, addr: SocketAddr, now: Now) {
        self.at(now);
        self.links.dialing.remove(&addr);
    }

    /// The relay table's answer to an [`RelayCommand::Allocate`].
    pub fn handle_relay_allocated(
        &mut self,
        session: SessionId,
        request_id: u64,
        invite_id: Vec<u8>,
        result: Result<Allocated, AllocError>,
        now: Now,
    ) {
        self.at(now);
        self.relay_allocated(session, request_id, invite_id, result);
    }

    /// Time passed: runs every timer due by `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        self.at(now);
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > self.now.mono {
                break;
            }
            let timer = entry.remove();
            match timer {
                Timer::Tick => {
                    let failed = self.tick();
                    for (rid, pending) in failed {
                        self.answer(rid, pending, None);
                    }
                    self.next_tick = self.now.mono + self.config.gossip_interval;
                    self.set_timer(self.next_tick, Timer::Tick);
                }
                Timer::Request(rid) => {
                    if let Some(pending) = self.links.pending.remove(&rid) {
                        self.stats.requests_timed_out += 1;
                        self.answer(rid, pending, None);
                    }
                }
                Timer::Handshake(id) => self.handshake_overdue(id),
                Timer::NoAnswer(invite_id) => self.no_answer(invite_id),
                Timer::CertificateExpiry(id) => self.certificate_due(id),
                Timer::GatherAcks(job) => self.gather_acks_due(job),
                Timer::LiveAck(id, message_id) => self.live_ack_due(id, &message_id),
                Timer::ParkedLookup(job) => self.resume_lookup(job),
            }
            self.settle();
        }
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The core's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The live supernodes in this node's view (itself included), ordered.
    pub fn live_members(&self) -> Vec<NodeId> {
        self.membership.live_ids()
    }

    /// Supernodes in this node's view (any state, itself included).
    pub fn known_members(&self) -> usize {
        self.membership.len() + 1
    }

    /// Users joined here.
    pub fn session_count(&self) -> usize {
        self.sessions.by_name.len()
    }

    /// Users joined here over TLS over TCP, now and since start.
    pub fn tcp_sessions(&self) -> (usize, u64) {
        (self.sessions.tcp_joined(), self.sessions.tcp_joined_total)
    }

    /// The record of `name` this node holds as a replica.
    pub fn held_record(&self, name: &str) -> Option<&UserRecord> {
        self.records.get(name)
    }

    /// Chat messages this node holds for `name`.
    pub fn held_chat(&self, name: &str) -> usize {
        self.chats.count(name)
    }

    /// Bytes of chat this node holds.
    pub fn held_chat_bytes(&self) -> usize {
        self.chats.total_bytes()
    }

    /// What the core dropped or gave up on.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Jobs waiting on other supernodes.
    pub fn pending_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// A link's reply (or `None`: timeout, link lost) to the job it is for.
    fn answer(&mut self, rid: u64, pending: Pending, reply: Option<Body>) {
        match self.jobs.get(&pending.job) {
            Some(Job::Lookup { .. }) => self.lookup_answer(pending.job, reply),
            Some(Job::Gather(_)) => self.gather_answer(pending.job, rid, reply),
            Some(Job::Deliver(_)) => self.deliver_answer(pending.job, reply),
            Some(Job::Store(_)) => self.store_answer(pending.job, rid, reply),
            Some(Job::Handoff(_)) => self.handoff_answer(pending.job, rid, reply),
            None => {}
        }
    }

    /// Acts on every finished job (which may finish others).
    fn settle(&mut self) {
        while let Some((_, done)) = self.ready.pop_front() {
            match done {
                Done::Lookup(purpose, record) => {
                    let waiting = match &purpose {
                        LookupFor::Search { session, .. } => Some(*session),
                        _ => None,
                    };
                    self.looked_up(purpose, record);
                    if let Some(session) = waiting {
                        self.resume(session);
                    }
                }
                Done::Gathered(purpose) => {
                    if let GatherFor::Inbox {
                        session,
                        request_id,
                    } = purpose
                    {
                        self.send_session(session, request_id, Body::Ack(Default::default()));
                        self.resume(session);
                    }
                }
                Done::Stored(Some(session)) => self.resume(session),
                Done::Stored(None) => {}
                Done::Delivered(delivery, result) => {
                    if let Some(session) = self.delivered(delivery, result) {
                        self.resume(session);
                    }
                }
            }
        }
    }
}
