//! The node's state and its basic moves: queueing output, sending requests
//! over links, timers. Everything above this file decides; this file only
//! carries out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Certificate, Envelope, ErrorCode, ErrorReply, HostCacheEntry, PresenceStatus, UserRecord,
};
use rand::rngs::StdRng;
use rsa::{RsaPrivateKey, RsaPublicKey};

use super::fit;
use super::interface::{LinkId, Now, Output, SessionId};
use super::jobs::{Done, Job, JobId};
use super::links::{Links, Pending};
use super::sessions::{Joined, Sessions};
use crate::membership::{Membership, Timeouts};
use crate::store::{self, ChatLimits, ChatStore, RecordMeta, RecordStore};
use crate::{Config, NodeId};

/// This supernode's certified identity: its RSA key and the login
/// server's SUPERNODE certificate for it (the node id is the key's id).
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    pub key: RsaPrivateKey,
    pub certificate: Certificate,
}

/// What the node core needs to know about itself and its limits.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `cert::key_id` of the certified key (the shell derives it).
    pub node_id: NodeId,
    /// The key and certificate clients and peers are shown. `None` until
    /// the login server certified this node: joins are refused meanwhile;
    /// [`crate::core::Node::handle_certificate`] sets (and renews) it.
    pub credentials: Option<NodeCredentials>,
    /// The advertised QUIC address.
    pub addr: SocketAddr,
    /// The bound QUIC address (a configured peer at this address is me).
    pub local_addr: SocketAddr,
    /// The advertised TLS-over-TCP listener, if one runs.
    pub tcp_addr: Option<SocketAddr>,
    /// The UDP service's primary address (reflector and relay).
    pub reflector: SocketAddr,
    /// The key of the liveness tickets the UDP service checks
    /// (`natter_proto::alive`); `None`: joins carry no ticket.
    pub alive_secret: Option<[u8; 32]>,
    /// Higher after a restart with the same node id.
    pub incarnation: u64,
    pub login_key: RsaPublicKey,
    /// Supernodes to keep dialing.
    pub peers: Vec<SocketAddr>,
    pub replicas: usize,
    pub no_answer_timeout: Duration,
    pub gossip_interval: Duration,
    pub timeouts: Timeouts,
    pub peer_timeout: Duration,
    pub handshake_timeout: Duration,
    pub rate_per_sec: f64,
    pub rate_burst: f64,
    pub max_subscriptions: usize,
    /// Requests one session may have waiting behind a busy one; more closes
    /// it as slow.
    pub max_backlog: usize,
    /// The relay allocation lifetime (told to clients).
    pub relay_lifetime: Duration,
    /// Byte caps on stored chat.
    pub chat_limits: ChatLimits,
    /// How long a session that acknowledges chat has to acknowledge a
    /// push; then a gather ends (what is unacknowledged stays on the
    /// replicas) and live chat is stored for the next join.
    pub chat_ack_timeout: Duration,
}

impl NodeConfig {
    /// The core's part of a supernode [`Config`], with what the shell
    /// learned when binding.
    #[allow(clippy::too_many_arguments)]
    pub fn from_config(
        config: &Config,
        node_id: NodeId,
        credentials: Option<NodeCredentials>,
        addr: SocketAddr,
        local_addr: SocketAddr,
        tcp_addr: Option<SocketAddr>,
        reflector: SocketAddr,
        incarnation: u64,
    ) -> Self {
        Self {
            node_id,
            credentials,
            addr,
            local_addr,
            tcp_addr,
            reflector,
            alive_secret: None,
            incarnation,
            login_key: config.login_key.clone(),
            peers: config.peers.clone(),
            replicas: config.replicas,
            no_answer_timeout: config.no_answer_timeout,
            gossip_interval: config.gossip_interval,
            timeouts: config.timeouts,
            peer_timeout: config.peer_timeout,
            handshake_timeout: config.handshake_timeout,
            rate_per_sec: config.rate_per_sec,
            rate_burst: config.rate_burst,
            max_subscriptions: config.max_subscriptions,
            max_backlog: config.session_queue,
            relay_lifetime: config.relay.lifetime,
            chat_limits: config.chat_limits,
            chat_ack_timeout: config.chat_ack_timeout,
        }
    }
}

/// Most supernodes one `JoinAccepted` or `SupernodeList` lists.
pub const MAX_HOST_CACHE: usize = 200;

/// Something that happens at a time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// Gossip, failure detection, dials, expiry.
    Tick,
    /// A request over a link got no reply.
    Request(u64),
    /// A session's join handshake did not finish.
    Handshake(SessionId),
    /// An invite got no answer (the id and when it was due).
    NoAnswer(Vec<u8>),
    /// A session's certificate expires.
    CertificateExpiry(SessionId),
    /// A gather's pushed chat is due to be acknowledged.
    GatherAcks(JobId),
    /// A live chat message pushed to a session is due to be acknowledged.
    LiveAck(SessionId, Vec<u8>),
    /// A lookup parked while the node had no link yet waited long enough.
    ParkedLookup(JobId),
}

/// A call invite from a local caller waiting for an answer.
#[derive(Debug, Clone)]
pub(crate) struct Invite {
    pub caller: String,
    pub callee: String,
    pub due: Instant,
}

/// Counters of what the core dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Lookups that waited for the node's first link.
    pub lookups_parked: u64,
    /// Frames on a link that are not for a link, or replies nobody waits for.
    pub link_ignored: u64,
    /// Requests over links that got no reply in time.
    pub requests_timed_out: u64,
    /// Sessions closed because their backlog of requests was full.
    pub backlog_full: u64,
    /// Envelopes that would not fit a frame, refused (a reply is replaced
    /// by an `Internal` error, anything else dropped).
    pub oversize_refused: u64,
    /// Chat refused over a byte cap (`MailboxFull`).
    pub mailbox_full: u64,
    /// Hand-over pages no replica acknowledged (kept, retried).
    pub handoffs_failed: u64,
    /// Hand-over pages some but not all new replicas acknowledged (kept
    /// here, handed over again).
    pub handoffs_partial: u64,
    /// Chat refused because it was not sealed or not well formed
    /// (`natter_proto::chat::check_envelope`), from a client or a peer.
    pub chat_malformed: u64,
    /// Records from peers that did not verify (certificate, join
    /// statement, name or home), the future ones included.
    pub records_refused: u64,
    /// Of those, records with a `last_seen` or `joined_at` in the future.
    pub records_from_future: u64,
    /// Verified records not newer than the one held (an older statement,
    /// or a presence change not from the record's home).
    pub records_stale: u64,
    /// Links refused by the core: a revoked peer, or gossip in another
    /// node's name. (Links without a valid `LinkHello` never reach the
    /// core: the shell counts those.)
    pub links_refused: u64,
    /// Sessions ended or joins refused because the user is revoked.
    pub sessions_revoked: u64,
    /// Sessions ended because their certificate expired (not renewed).
    pub sessions_expired: u64,
    /// Gossip entries dropped for their certificate: missing, not
    /// verifying, naming another node or other addresses, or revoked.
    pub gossip_refused: u64,
    /// Gossip entries dropped for a cap (`membership::MAX_GOSSIP_ENTRIES`
    /// per message, `membership::MAX_MEMBERS` in the table).
    pub gossip_over_cap: u64,
    /// Member certificates verified (RSA) for gossip: once per member and
    /// certificate, not per entry or tick.
    pub gossip_certificates_verified: u64,
    /// Gossip entries whose certificate was not verified this tick for
    /// the verification budget (`MAX_VERIFIES_PER_TICK`); also counted in
    /// `gossip_refused`, taken when gossiped again.
    pub gossip_verify_deferred: u64,
    /// Dials of learned members put off to a later tick by the dial budget
    /// (`MAX_DIALS_PER_TICK`).
    pub dials_deferred: u64,
    /// Chat pushes a session did not acknowledge in time (kept on the
    /// replicas, or stored there for live chat).
    pub chat_unacked: u64,
    /// Sessions ended because their beaconing client went silent
    /// (core/beacons.rs).
    pub sessions_silent: u64,
}

/// A member's certificate, verified (for gossip, see
/// [`crate::membership::Membership::learn`]).
#[derive(Debug, Clone)]
pub(crate) struct CertifiedMember {
    pub certificate: Certificate,
    pub addrs: natter_proto::cert::SupernodeAddrs,
    /// Unix seconds; verified again after this.
    pub not_after: i64,
}

/// What the latest revocation list revokes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Revoked {
    /// `issued_at` of the list held (unix ms); older lists are ignored.
    pub issued_at: i64,
    pub users: HashSet<String>,
    pub nodes: HashSet<NodeId>,
}

/// The supernode node core. See [`crate::core`].
#[derive(Debug)]
pub struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) revoked: Revoked,
    /// The certificates linked peers proved (their certified addresses),
    /// for host cache entries; dropped when the link goes.
    pub(crate) peer_certificates:
        HashMap<NodeId, (Certificate, natter_proto::cert::SupernodeAddrs)>,
    /// The verified certificates of members (linked or learned from
    /// gossip), gossiped with them; a certificate is verified once, then
    /// recognised by its bytes. Kept for members in the table only.
    pub(crate) certified: HashMap<NodeId, CertifiedMember>,
    pub(crate) rng: StdRng,
    pub(crate) membership: Membership,
    pub(crate) last_live: Vec<NodeId>,
    /// Lookups waiting for the node's first link (see
    /// [`crate::core::directory`]'s `start_lookup`).
    pub(crate) parked_lookups: Vec<JobId>,
    pub(crate) records: RecordStore,
    pub(crate) chats: ChatStore,
    /// Names whose stored chat is being handed over (one page at a time).
    pub(crate) handoffs: HashSet<String>,
    pub(crate) sessions: Sessions,
    pub(crate) links: Links,
    pub(crate) invites: HashMap<Vec<u8>, Invite>,
    pub(crate) jobs: HashMap<JobId, Job>,
    /// Jobs finished, waiting for the dispatcher.
    pub(crate) ready: VecDeque<(JobId, Done)>,
    pub(crate) timers: BTreeMap<(Instant, u64), Timer>,
    pub(crate) next_tick: Instant,
    pub(crate) ticks: u64,
    pub(crate) next_id: u64,
    pub(crate) out: VecDeque<Output>,
    pub(crate) now: Now,
    pub(crate) stats: CoreStats,
}

impl Node {
    /// A fresh id (request ids, job ids, timer tie-breaks).
    pub(crate) fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queues `output`. An envelope that would not fit a frame is refused
    /// here, counted, never handed to a writer: a reply to a client
    /// becomes an `Internal` error on that request, anything else is
    /// dropped (a request over a link then times out).
    pub(crate) fn emit(&mut self, output: Output) {
        let output = match output {
            Output::ToSession(id, envelope) if !fit::fits(&envelope) => {
                self.stats.oversize_refused += 1;
                tracing::warn!(
                    kind = envelope.type_name(),
                    "reply too large for a frame, refused"
                );
                if envelope.request_id == 0 {
                    return;
                }
                let reply = ErrorReply::new(ErrorCode::Internal, "reply too large for a frame");
                Output::ToSession(id, Envelope::new(envelope.request_id, Body::Error(reply)))
            }
            Output::ToLink(_, envelope) if !fit::fits(&envelope) => {
                self.stats.oversize_refused += 1;
                tracing::warn!(
                    kind = envelope.type_name(),
                    "envelope too large for a frame, refused"
                );
                return;
            }
            other => other,
        };
        self.out.push_back(output);
    }

    pub(crate) fn set_timer(&mut self, at: Instant, timer: Timer) {
        let seq = self.fresh_id();
        self.timers.insert((at, seq), timer);
    }

    /// Queues `body` for session `id`, if it is still open.
    pub(crate) fn send_session(&mut self, id: SessionId, request_id: u64, body: Body) {
        if self.sessions.all.contains_key(&id) {
            self.emit(Output::ToSession(id, Envelope::new(request_id, body)));
        }
    }

    /// Queues a push for the current session of `name`; false when `name`
    /// has none.
    pub(crate) fn push_to_name(&mut self, name: &str, body: Body) -> bool {
        let Some(&id) = self.sessions.by_name.get(name) else {
            return false;
        };
        self.emit(Output::ToSession(id, Envelope::new(0, body)));
        true
    }

    /// Queues `envelope` on the link to `peer`; false without one.
    pub(crate) fn send_link(&mut self, peer: &NodeId, envelope: Envelope) -> bool {
        let Some(link) = self.links.by_peer.get(peer) else {
            return false;
        };
        let id: LinkId = link.id;
        self.emit(Output::ToLink(id, envelope));
        true
    }

    /// Sends a request to `peer` for `job`; returns its request id, or
    /// `None` without a link.
    pub(crate) fn request(&mut self, peer: NodeId, body: Body, job: JobId) -> Option<u64> {
        if !self.links.by_peer.contains_key(&peer) {
            return None;
        }
        let rid = self.fresh_id();
        self.send_link(&peer, Envelope::new(rid, body));
        self.links.pending.insert(rid, Pending { peer, job });
        let due = self.now.mono + self.config.peer_timeout;
        self.set_timer(due, Timer::Request(rid));
        Some(rid)
    }

    /// Hands a finished job to the dispatcher.
    pub(crate) fn finish(&mut self, job: JobId, done: Done) {
        self.jobs.remove(&job);
        self.ready.push_back((job, done));
    }

    /// The live supernodes for `JoinAccepted` and `SupernodeList`: this
    /// node with its real reflector, the others with the conventional one;
    /// this node first, then the others in id order, as many as `make`
    /// (the envelope they go in) fits in a frame.
    pub(crate) fn host_cache_envelope(
        &self,
        make: impl Fn(Vec<HostCacheEntry>) -> Envelope,
    ) -> Envelope {
        let mut entries = self.host_cache();
        let me = self.config.node_id.to_vec();
        if let Some(at) = entries.iter().position(|e| e.node_id == me) {
            entries[..=at].rotate_right(1);
        }
        fit::fitted(entries, MAX_HOST_CACHE, make).0
    }

    fn host_cache(&self) -> Vec<HostCacheEntry> {
        let me = self.config.node_id;
        self.membership
            .live()
            .into_iter()
            .map(|(id, addr)| {
                // Each entry carries the certificate that names it (clients
                // keep only such entries): ours, or what the peer proved on
                // its link, with the certified addresses.
                if id == me
                    && let Some(credentials) = &self.config.credentials
                {
                    return HostCacheEntry {
                        addr: Some(self.config.addr.into()),
                        last_seen: self.now.unix_ms,
                        rtt_ms: 0,
                        node_id: id.to_vec(),
                        reflector: Some(self.config.reflector.into()),
                        tcp: self.config.tcp_addr.map(Into::into),
                        certificate: Some(credentials.certificate.clone()),
                    };
                }
                if let Some((certificate, addrs)) = self.peer_certificates.get(&id) {
                    return HostCacheEntry {
                        addr: Some(addrs.quic.into()),
                        last_seen: self.now.unix_ms,
                        rtt_ms: 0,
                        node_id: id.to_vec(),
                        reflector: Some(addrs.reflector.into()),
                        tcp: addrs.tcp.map(Into::into),
                        certificate: Some(certificate.clone()),
                    };
                }
                let reflector = if id == me {
                    Some(self.config.reflector)
                } else {
                    crate::reflector_of(addr)
                };
                HostCacheEntry {
                    addr: Some(addr.into()),
                    last_seen: self.now.unix_ms,
                    rtt_ms: 0,
                    node_id: id.to_vec(),
                    reflector: reflector.map(Into::into),
                    tcp: self.membership.tcp_of(&id).map(Into::into),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// The record of a user joined here, with the user's signed join
    /// statement and certificate.
    pub(crate) fn local_record(&self, name: &str, joined: &Joined) -> UserRecord {
        UserRecord {
            name: name.to_owned(),
            status: joined.status as i32,
            last_seen: joined.changed_at,
            home_node_id: self.config.node_id.to_vec(),
            home_addr: Some(self.config.addr.into()),
            statement: joined.signed.statement.clone(),
            statement_signature: joined.signed.signature.clone(),
            certificate: Some(joined.signed.certificate.clone()),
        }
    }

    /// A verified `record` as this node reports it: offline when its home
    /// is not live or its certificate expired; when online, the home's
    /// address as this node knows the home (never the record's word).
    pub(crate) fn effective(&self, mut record: UserRecord, meta: &RecordMeta) -> UserRecord {
        let status = store::effective_status(&record, meta, self.now.unix_ms, |id| {
            crate::node_id(id).is_some_and(|id| self.membership.is_live(&id))
        });
        record.status = status as i32;
        if status != PresenceStatus::Offline
            && let Some(home) = crate::node_id(&record.home_node_id)
        {
            record.home_addr = self
                .membership
                .live()
                .into_iter()
                .find(|(id, _)| *id == home)
                .map(|(_, addr)| addr.into());
        }
        record
    }
}
