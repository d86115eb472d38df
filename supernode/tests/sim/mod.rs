//! An in-memory overlay: N supernode [`Node`] cores and M clients on a
//! virtual clock and a virtual network (per-link delay, slow links,
//! partitions, crashes). Nothing here opens a socket or sleeps: events are
//! delivered in time order, and the cores' timers fire when the virtual
//! clock reaches them. Clients join with real certificates and real join
//! proofs; relay commands run on a real [`RelayTable`] per node.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_proto::cert;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Certificate, Envelope, JoinAccepted, JoinHello, JoinProof, JoinStatement, PresenceStatus,
};
use natter_proto::statement::SignedStatement;
use natter_supernode::NodeId;
use natter_supernode::core::{
    Carrier, LinkId, LinkOrigin, Node, NodeConfig, NodeCredentials, Now, Output, RelayCommand,
    SessionId,
};
use natter_supernode::membership::Timeouts;
use natter_supernode::relay::{RelayLimits, RelayTable};
use natter_supernode::store::ChatLimits;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use rsa::RsaPrivateKey;

use crate::common::{issuer, now_secs, user_key};

/// The test keys, reused for every simulated user (a certificate binds a
/// name to a key; several names may share one).
fn key_for(i: usize) -> &'static RsaPrivateKey {
    const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];
    user_key(NAMES[i % NAMES.len()])
}

/// A node id for node `i`: spread like random ids, but reproducible.
pub fn sim_node_id(i: usize) -> NodeId {
    let mut id = [0u8; 16];
    let mixed = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    id[..8].copy_from_slice(&mixed.to_be_bytes());
    id[8..].copy_from_slice(&(i as u64).to_be_bytes());
    id
}

/// A simulated node's credentials: every simulated node shares one key
/// (key generation is slow) with a certificate for its own addresses. The
/// simulated clients do not check the challenge (the real client's check is
/// tested over real sockets); the node ids stay [`sim_node_id`].
fn sim_credentials(addr: SocketAddr) -> NodeCredentials {
    let key = user_key("carol").clone();
    let now = now_secs();
    let certificate = issuer().issue(
        &mut rand::rngs::OsRng,
        &cert::Subject::Supernode {
            key: &key.to_public_key(),
            addrs: cert::SupernodeAddrs {
                quic: addr,
                reflector: natter_supernode::reflector_of(addr).unwrap(),
                tcp: None,
            },
        },
        1,
        now - 300,
        now + 24 * 3600,
    );
    NodeCredentials { key, certificate }
}

/// The exporter of simulated client `c`'s connection (unique per client).
fn sim_exporter(c: usize) -> natter_proto::binding::Exporter {
    let mut e = [0x5a; 32];
    e[..8].copy_from_slice(&(c as u64).to_be_bytes());
    e
}

/// The QUIC address of node `i`.
pub fn sim_addr(i: usize) -> SocketAddr {
    let i = u16::try_from(i).expect("fewer than 65536 nodes");
    SocketAddr::from(([10, 0, (i >> 8) as u8, (i & 0xff) as u8], 4000))
}

/// A client's address.
fn client_addr(i: usize) -> SocketAddr {
    let i = u16::try_from(i).expect("fewer than 65536 clients");
    SocketAddr::from(([192, 168, (i >> 8) as u8, (i & 0xff) as u8], 50000))
}

/// Tunables of a simulated node.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub replicas: usize,
    pub no_answer_timeout: Duration,
    pub gossip_interval: Duration,
    pub timeouts: Timeouts,
    pub peer_timeout: Duration,
    pub chat_limits: ChatLimits,
    pub chat_ack_timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            replicas: 3,
            no_answer_timeout: Duration::from_secs(30),
            gossip_interval: Duration::from_secs(1),
            timeouts: Timeouts::default(),
            peer_timeout: Duration::from_secs(1),
            chat_limits: ChatLimits::default(),
            chat_ack_timeout: Duration::from_secs(10),
        }
    }
}

/// A supernode in the simulation.
#[derive(Debug)]
pub struct SimNode {
    pub node: Node,
    pub relay: RelayTable,
    pub addr: SocketAddr,
    pub up: bool,
    /// When its next timer is scheduled.
    scheduled: Option<Instant>,
}

/// A simulated client.
#[derive(Debug)]
pub struct SimClient {
    pub name: String,
    key: &'static RsaPrivateKey,
    certificate: Certificate,
    pub node: usize,
    pub session: SessionId,
    pub accepted: Option<JoinAccepted>,
    /// Everything received but the join handshake, in order.
    pub inbox: VecDeque<Envelope>,
    /// The close code, once the node closed the session.
    pub closed: Option<u32>,
    /// Whether it answers the join challenge (a silent client tests the
    /// handshake timeout).
    pub answers_challenge: bool,
    /// Added to the virtual clock when it dates a join statement.
    pub clock_offset_ms: i64,
    /// The join statement it sent last.
    pub signed: Option<SignedStatement>,
    /// Its hellos say `acks_chat` (it acknowledges pushed chat).
    pub acks_chat: bool,
    next_rid: u64,
}

/// One end of a link.
#[derive(Debug, Clone, Copy)]
struct LinkEnd {
    node: usize,
    peer: usize,
    peer_link: LinkId,
    /// Dialed and waiting for the peer's gossip: the address dialed.
    dialing: Option<SocketAddr>,
}

#[derive(Debug)]
enum Event {
    Timer(usize),
    Accept {
        link: LinkId,
        hello: Envelope,
    },
    LinkFrame {
        link: LinkId,
        envelope: Envelope,
    },
    LinkDown(LinkId),
    DialFailed {
        node: usize,
        addr: SocketAddr,
    },
    ToNode {
        node: usize,
        session: SessionId,
        envelope: Envelope,
    },
    SessionClosed {
        node: usize,
        session: SessionId,
    },
    ToClient {
        client: usize,
        session: SessionId,
        envelope: Envelope,
    },
    ClientClosed {
        client: usize,
        session: SessionId,
        code: u32,
    },
}

/// The virtual network.
#[derive(Debug, Clone)]
pub struct Net {
    /// One-way delay between two supernodes.
    pub delay: Duration,
    /// One-way delay between a client and its supernode.
    pub client_delay: Duration,
    /// Per-link extra delay (a lossy link: frames are retransmitted).
    pub slow: HashMap<(usize, usize), Duration>,
    /// Pairs that cannot reach each other.
    pub partitions: HashSet<(usize, usize)>,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// The simulation.
#[derive(Debug)]
pub struct Sim {
    base: Instant,
    base_unix_ms: i64,
    pub t: Duration,
    pub nodes: Vec<SimNode>,
    pub clients: Vec<SimClient>,
    pub net: Net,
    events: BTreeMap<(Duration, u64), Event>,
    links: HashMap<LinkId, LinkEnd>,
    by_addr: HashMap<SocketAddr, usize>,
    session_client: HashMap<SessionId, usize>,
    seq: u64,
    rng: StdRng,
    /// Events processed.
    pub steps: u64,
    /// Envelopes a node emitted that do not fit a frame (the wire would
    /// refuse them; the simulation drops them, as a writer would).
    pub oversize: u64,
}

impl Sim {
    /// `n` supernodes, each configured with every node of a higher id as a
    /// peer.
    pub fn new(n: usize, config: &SimConfig) -> Self {
        let base = Instant::now();
        let base_unix_ms = now_secs() * 1000;
        let now = Now {
            mono: base,
            unix_ms: base_unix_ms,
        };
        let mut nodes = Vec::new();
        let mut by_addr = HashMap::new();
        for i in 0..n {
            let addr = sim_addr(i);
            let cfg = NodeConfig {
                node_id: sim_node_id(i),
                credentials: Some(sim_credentials(addr)),
                addr,
                local_addr: addr,
                tcp_addr: None,
                reflector: natter_supernode::reflector_of(addr).unwrap(),
                alive_secret: Some([0x5b; 32]),
                incarnation: 1,
                login_key: issuer().public_key(),
                // Simulated links carry no certificate (the nodes share one
                // key, so none could name a `sim_node_id`), and gossip
                // teaches only certified members: every node is configured
                // with the nodes of higher ids as peers instead, so that
                // the lower id dials, as it does the members gossip teaches.
                peers: (0..n)
                    .filter(|j| *j != i && (*j == 0 || sim_node_id(i) < sim_node_id(*j)))
                    .map(sim_addr)
                    .collect(),
                replicas: config.replicas,
                no_answer_timeout: config.no_answer_timeout,
                gossip_interval: config.gossip_interval,
                timeouts: config.timeouts,
                peer_timeout: config.peer_timeout,
                handshake_timeout: Duration::from_secs(10),
                rate_per_sec: 50.0,
                rate_burst: 100.0,
                max_subscriptions: 1000,
                max_backlog: 256,
                relay_lifetime: RelayLimits::default().lifetime,
                chat_limits: config.chat_limits,
                chat_ack_timeout: config.chat_ack_timeout,
            };
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            by_addr.insert(addr, i);
            nodes.push(SimNode {
                node: Node::new(cfg, seed, now),
                relay: RelayTable::new(RelayLimits::default(), seed, now.mono),
                addr,
                up: true,
                scheduled: None,
            });
        }
        let mut sim = Self {
            base,
            base_unix_ms,
            t: Duration::ZERO,
            nodes,
            clients: Vec::new(),
            net: Net {
                delay: Duration::from_millis(10),
                client_delay: Duration::from_millis(5),
                slow: HashMap::new(),
                partitions: HashSet::new(),
            },
            events: BTreeMap::new(),
            links: HashMap::new(),
            by_addr,
            session_client: HashMap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(7),
            steps: 0,
            oversize: 0,
        };
        for i in 0..n {
            sim.reschedule(i);
        }
        sim
    }

    /// The virtual time now.
    pub fn now(&self) -> Now {
        Now {
            mono: self.base + self.t,
            unix_ms: self.base_unix_ms + i64::try_from(self.t.as_millis()).unwrap(),
        }
    }

    fn fresh(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn at(&mut self, after: Duration, event: Event) {
        let seq = self.fresh();
        self.events.insert((self.t + after, seq), event);
    }

    fn link_delay(&self, a: usize, b: usize) -> Duration {
        self.net.delay + self.net.slow.get(&pair(a, b)).copied().unwrap_or_default()
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].up && self.nodes[b].up && !self.net.partitions.contains(&pair(a, b))
    }

    fn reschedule(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        let next = self.nodes[i].node.poll_timeout();
        if next != self.nodes[i].scheduled
            && let Some(next) = next
        {
            self.nodes[i].scheduled = Some(next);
            let after = next.saturating_duration_since(self.base + self.t);
            self.at(after, Event::Timer(i));
        }
    }

    /// Carries out everything node `i` wants done.
    fn drain(&mut self, i: usize) {
        while let Some(output) = self.nodes[i].node.poll_output() {
            // What is carried passes the real framing's check first.
            let envelope = match &output {
                Output::ToSession(session, e) if self.client_of(*session).is_some() => Some(e),
                Output::ToLink(link, e) if self.links.contains_key(link) => Some(e),
                Output::Dial { hello: e, .. } => Some(e),
                _ => None,
            };
            let fits = envelope.is_none_or(|e| natter_proto::frame::frame_len(e).is_ok());
            if !fits {
                self.oversize += 1;
                continue;
            }
            match output {
                Output::ToSession(session, envelope) => {
                    if let Some(client) = self.client_of(session) {
                        let d = self.net.client_delay;
                        self.at(
                            d,
                            Event::ToClient {
                                client,
                                session,
                                envelope,
                            },
                        );
                    }
                }
                Output::CloseSession(session, code, _) => {
                    if let Some(client) = self.client_of(session) {
                        let d = self.net.client_delay;
                        self.at(
                            d,
                            Event::ClientClosed {
                                client,
                                session,
                                code,
                            },
                        );
                    }
                    self.at(Duration::ZERO, Event::SessionClosed { node: i, session });
                }
                Output::ToLink(link, envelope) => {
                    if let Some(end) = self.links.get(&link).copied()
                        && self.reachable(end.node, end.peer)
                    {
                        let d = self.link_delay(end.node, end.peer);
                        self.at(
                            d,
                            Event::LinkFrame {
                                link: end.peer_link,
                                envelope,
                            },
                        );
                    }
                }
                Output::CloseLink(link, _, _) => {
                    if let Some(end) = self.links.get(&link).copied() {
                        let d = self.link_delay(end.node, end.peer);
                        self.at(Duration::ZERO, Event::LinkDown(link));
                        self.at(d, Event::LinkDown(end.peer_link));
                    }
                }
                Output::Dial { addr, hello } => self.dial(i, addr, hello),
                Output::Relay(command) => self.relay(i, command),
            }
        }
        self.reschedule(i);
    }

    fn dial(&mut self, from: usize, addr: SocketAddr, hello: Envelope) {
        let target = self.by_addr.get(&addr).copied();
        match target {
            Some(to) if self.reachable(from, to) => {
                let (la, lb) = (self.fresh(), self.fresh());
                self.links.insert(
                    la,
                    LinkEnd {
                        node: from,
                        peer: to,
                        peer_link: lb,
                        dialing: Some(addr),
                    },
                );
                self.links.insert(
                    lb,
                    LinkEnd {
                        node: to,
                        peer: from,
                        peer_link: la,
                        dialing: None,
                    },
                );
                let d = self.link_delay(from, to);
                self.at(d, Event::Accept { link: lb, hello });
            }
            _ => self.at(
                Duration::from_secs(1),
                Event::DialFailed { node: from, addr },
            ),
        }
    }

    fn relay(&mut self, i: usize, command: RelayCommand) {
        let now = self.now();
        match command {
            RelayCommand::NoteSignal {
                invite_id,
                from,
                to,
                kind,
            } => self.nodes[i]
                .relay
                .note_signal(&invite_id, &from, &to, kind, now.mono),
            RelayCommand::Allocate {
                session,
                request_id,
                user,
                source,
                invite_id,
            } => {
                let result = self.nodes[i].relay.allocate(
                    &user,
                    source,
                    &invite_id,
                    &mut self.rng,
                    now.mono,
                );
                self.nodes[i]
                    .node
                    .handle_relay_allocated(session, request_id, invite_id, result, now);
            }
        }
    }

    fn client_of(&self, session: SessionId) -> Option<usize> {
        self.session_client.get(&session).copied()
    }

    /// Processes one event; false when none is due by `until`.
    fn step(&mut self, until: Duration) -> bool {
        let Some(entry) = self.events.first_entry() else {
            return false;
        };
        if entry.key().0 > until {
            return false;
        }
        let ((t, _), event) = entry.remove_entry();
        self.t = self.t.max(t);
        self.steps += 1;
        let now = self.now();
        match event {
            Event::Timer(i) => {
                if self.nodes[i].up {
                    self.nodes[i].scheduled = None;
                    self.nodes[i].node.handle_timeout(now);
                    self.drain(i);
                }
            }
            Event::Accept { link, hello } => {
                let Some(end) = self.links.get(&link).copied() else {
                    return true;
                };
                if !self.nodes[end.node].up {
                    return true;
                }
                let remote = self.nodes[end.peer].addr;
                if let Some(Body::GossipMembership(gossip)) = hello.body {
                    let peer = natter_supernode::node_id(&gossip.sender_id).unwrap_or_default();
                    self.nodes[end.node].node.handle_link_up(
                        link,
                        remote,
                        peer,
                        None,
                        &gossip,
                        LinkOrigin::Accepted,
                        now,
                    );
                    self.drain(end.node);
                }
            }
            Event::LinkFrame { link, envelope } => {
                let Some(end) = self.links.get(&link).copied() else {
                    return true;
                };
                if !self.nodes[end.node].up {
                    return true;
                }
                if let Some(addr) = end.dialing {
                    // The dialer waits for the peer's gossip.
                    if let Some(Body::GossipMembership(gossip)) = envelope.body {
                        if let Some(e) = self.links.get_mut(&link) {
                            e.dialing = None;
                        }
                        let remote = self.nodes[end.peer].addr;
                        let peer = natter_supernode::node_id(&gossip.sender_id).unwrap_or_default();
                        self.nodes[end.node].node.handle_link_up(
                            link,
                            remote,
                            peer,
                            None,
                            &gossip,
                            LinkOrigin::Dialed(addr),
                            now,
                        );
                    }
                } else {
                    self.nodes[end.node].node.handle_link(link, envelope, now);
                }
                self.drain(end.node);
            }
            Event::LinkDown(link) => {
                if let Some(end) = self.links.remove(&link) {
                    if let Some(addr) = end.dialing
                        && self.nodes[end.node].up
                    {
                        self.nodes[end.node].node.handle_dial_failed(addr, now);
                    }
                    if self.nodes[end.node].up {
                        self.nodes[end.node].node.handle_link_down(link, now);
                        self.drain(end.node);
                    }
                }
            }
            Event::DialFailed { node, addr } => {
                if self.nodes[node].up {
                    self.nodes[node].node.handle_dial_failed(addr, now);
                    self.drain(node);
                }
            }
            Event::ToNode {
                node,
                session,
                envelope,
            } => {
                if self.nodes[node].up {
                    self.nodes[node].node.handle_session(session, envelope, now);
                    self.drain(node);
                }
            }
            Event::SessionClosed { node, session } => {
                if self.nodes[node].up {
                    self.nodes[node].node.handle_session_closed(session, now);
                    self.drain(node);
                }
            }
            Event::ToClient {
                client,
                session,
                envelope,
            } => self.client_receives(client, session, envelope),
            Event::ClientClosed {
                client,
                session,
                code,
            } => {
                let c = &mut self.clients[client];
                if c.session == session {
                    c.closed = Some(code);
                }
            }
        }
        true
    }

    fn client_receives(&mut self, client: usize, session: SessionId, envelope: Envelope) {
        let c = &self.clients[client];
        if c.session != session || c.closed.is_some() {
            return;
        }
        let now_ms = self.now().unix_ms;
        match envelope.body {
            Some(Body::JoinChallenge(challenge)) if self.clients[client].answers_challenge => {
                let signed = self.sign_statement(
                    client,
                    &challenge.node_id,
                    now_ms + self.clients[client].clock_offset_ms,
                    &challenge.nonce,
                );
                let c = &mut self.clients[client];
                let message = natter_proto::binding::join_proof_message(
                    &sim_exporter(client),
                    &challenge.node_id,
                    &challenge.nonce,
                    &signed.statement,
                );
                let signature = cert::sign(c.key, &message);
                c.signed = Some(signed.clone());
                let proof = Envelope::new(
                    2,
                    Body::JoinProof(JoinProof {
                        signature,
                        statement: signed.statement,
                        statement_signature: signed.signature,
                    }),
                );
                let node = c.node;
                let d = self.net.client_delay;
                self.at(
                    d,
                    Event::ToNode {
                        node,
                        session,
                        envelope: proof,
                    },
                );
            }
            Some(Body::JoinAccepted(accepted)) => self.clients[client].accepted = Some(accepted),
            _ => self.clients[client].inbox.push_back(envelope),
        }
    }

    /// Runs the simulation for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.t + d;
        while self.step(until) {}
        self.t = until;
    }

    /// Runs until `done` holds (checked after every event), at most `max`
    /// of virtual time; returns whether it held.
    pub fn run_until(&mut self, max: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        // Checked whenever the clock is about to move, not after every
        // event: a check may look at every node.
        let until = self.t + max;
        loop {
            let next = self.events.first_key_value().map(|((t, _), _)| *t);
            if next.is_none_or(|t| t > self.t) && done(self) {
                return true;
            }
            if !self.step(until) {
                self.t = until;
                return done(self);
            }
        }
    }

    /// Whether every live node sees exactly the live nodes.
    pub fn meshed(&self) -> bool {
        let live: Vec<NodeId> = {
            let mut ids: Vec<NodeId> = (0..self.nodes.len())
                .filter(|i| self.nodes[*i].up)
                .map(sim_node_id)
                .collect();
            ids.sort_unstable();
            ids
        };
        self.nodes
            .iter()
            .filter(|n| n.up)
            .all(|n| n.node.live_members() == live)
    }

    /// A client for `name` joining node `node` (with a certificate from the
    /// test issuer); returns its index. Run the simulation to complete it.
    pub fn add_client(&mut self, name: &str, node: usize) -> usize {
        self.add_client_with(name, node, false)
    }

    /// [`Self::add_client`] for a client whose hellos say `acks_chat`.
    pub fn add_acking_client(&mut self, name: &str, node: usize) -> usize {
        self.add_client_with(name, node, true)
    }

    fn add_client_with(&mut self, name: &str, node: usize, acks_chat: bool) -> usize {
        let index = self.clients.len();
        let key = key_for(index);
        let now = self.now().unix_secs();
        let certificate = issuer().issue(
            &mut StdRng::seed_from_u64(index as u64),
            &natter_proto::cert::Subject::User {
                name,
                key: &key.to_public_key(),
                chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
            },
            1,
            now - 300,
            now + 3600,
        );
        self.clients.push(SimClient {
            name: name.to_owned(),
            key,
            certificate,
            node,
            session: 0,
            accepted: None,
            inbox: VecDeque::new(),
            closed: None,
            answers_challenge: true,
            clock_offset_ms: 0,
            signed: None,
            acks_chat,
            next_rid: 10,
        });
        self.connect(index, node);
        index
    }

    /// (Re)connects client `c` to `node`: a new session and a `JoinHello`.
    pub fn connect(&mut self, c: usize, node: usize) {
        let session = self.fresh();
        self.session_client.insert(session, c);
        let now = self.now();
        let hello = {
            let client = &mut self.clients[c];
            client.node = node;
            client.session = session;
            client.accepted = None;
            client.closed = None;
            Envelope::new(
                1,
                Body::JoinHello(JoinHello {
                    certificate: Some(client.certificate.clone()),
                    acks_chat: client.acks_chat,
                    beacons: false,
                }),
            )
        };
        if !self.nodes[node].up {
            self.clients[c].closed = Some(u32::MAX);
            return;
        }
        self.nodes[node].node.handle_session_open(
            session,
            client_addr(c),
            Carrier::Quic,
            sim_exporter(c),
            now,
        );
        let d = self.net.client_delay;
        self.at(
            d,
            Event::ToNode {
                node,
                session,
                envelope: hello,
            },
        );
    }

    /// Client `c` sends a request; returns its request id.
    pub fn send(&mut self, c: usize, body: Body) -> u64 {
        let client = &mut self.clients[c];
        client.next_rid += 1;
        let rid = client.next_rid;
        let (node, session) = (client.node, client.session);
        let d = self.net.client_delay;
        self.at(
            d,
            Event::ToNode {
                node,
                session,
                envelope: Envelope::new(rid, body),
            },
        );
        rid
    }

    /// Takes the reply to `rid` from client `c`'s inbox.
    pub fn take_reply(&mut self, c: usize, rid: u64) -> Option<Body> {
        let inbox = &mut self.clients[c].inbox;
        let at = inbox.iter().position(|e| e.request_id == rid)?;
        inbox.remove(at).and_then(|e| e.body)
    }

    /// Sends a request and runs until its reply (at most `max`).
    pub fn request(&mut self, c: usize, body: Body, max: Duration) -> Option<Body> {
        let rid = self.send(c, body);
        let found = self.run_until(max, |sim| {
            sim.clients[c].inbox.iter().any(|e| e.request_id == rid)
        });
        if found { self.take_reply(c, rid) } else { None }
    }

    /// Takes the first push (request id 0) from client `c` matching `pick`.
    pub fn take_push<T>(
        &mut self,
        c: usize,
        mut pick: impl FnMut(&Body) -> Option<T>,
    ) -> Option<T> {
        let inbox = &mut self.clients[c].inbox;
        let at = inbox
            .iter()
            .position(|e| e.request_id == 0 && e.body.as_ref().and_then(&mut pick).is_some())?;
        inbox.remove(at).and_then(|e| e.body).and_then(|b| pick(&b))
    }

    /// Runs until client `c` has a push matching `pick` (at most `max`) and
    /// takes it.
    pub fn wait_push<T>(
        &mut self,
        c: usize,
        max: Duration,
        mut pick: impl FnMut(&Body) -> Option<T>,
    ) -> Option<T> {
        self.run_until(max, |sim| {
            sim.clients[c]
                .inbox
                .iter()
                .any(|e| e.request_id == 0 && e.body.as_ref().and_then(&mut pick).is_some())
        });
        self.take_push(c, pick)
    }

    /// Client `c`'s connection drops (its supernode notices at once).
    pub fn disconnect(&mut self, c: usize) {
        let (node, session) = (self.clients[c].node, self.clients[c].session);
        self.clients[c].closed = Some(u32::MAX);
        self.at(Duration::ZERO, Event::SessionClosed { node, session });
    }

    /// Whether client `c` is joined.
    pub fn joined(&self, c: usize) -> bool {
        let client = &self.clients[c];
        client.accepted.is_some() && client.closed.is_none()
    }

    /// Crashes node `i` silently: its peers find out through their failure
    /// detectors; its clients' connections drop.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].up = false;
        let ids: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, e)| e.node == i)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.links.remove(&id);
        }
        for c in 0..self.clients.len() {
            if self.clients[c].node == i && self.clients[c].closed.is_none() {
                self.clients[c].closed = Some(u32::MAX);
            }
        }
    }

    /// Restarts crashed node `i` with an empty state and a higher
    /// incarnation; it dials its peers on its first tick.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.nodes[i].up, "node {i} is running");
        let mut config = self.nodes[i].node.config().clone();
        config.incarnation += 1;
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
        seed[8..16].copy_from_slice(&config.incarnation.to_be_bytes());
        let now = self.now();
        self.nodes[i].node = Node::new(config, seed, now);
        self.nodes[i].relay = RelayTable::new(RelayLimits::default(), seed, now.mono);
        self.nodes[i].up = true;
        self.nodes[i].scheduled = None;
        self.reschedule(i);
    }

    /// Delivers `envelope` to node `to` as if node `from` had sent it on
    /// their link (a peer that lies, or a test shortcut); false without a
    /// link between them.
    pub fn inject_from_peer(&mut self, from: usize, to: usize, envelope: Envelope) -> bool {
        let Some(end) = self
            .links
            .values()
            .find(|e| e.node == from && e.peer == to && e.dialing.is_none())
            .copied()
        else {
            return false;
        };
        self.at(
            Duration::ZERO,
            Event::LinkFrame {
                link: end.peer_link,
                envelope,
            },
        );
        true
    }

    /// Cuts nodes `a` and `b` apart (both ways).
    pub fn partition(&mut self, a: usize, b: usize) {
        self.net.partitions.insert(pair(a, b));
    }

    /// Heals a partition.
    pub fn heal(&mut self, a: usize, b: usize) {
        self.net.partitions.remove(&pair(a, b));
    }

    /// The presence status a push carried, if it is a presence update for `name`.
    pub fn presence_of(name: &str) -> impl FnMut(&Body) -> Option<PresenceStatus> + '_ {
        move |body| match body {
            Body::PresenceUpdate(u) if u.name == name => PresenceStatus::try_from(u.status).ok(),
            _ => None,
        }
    }

    /// Client `c`'s certificate.
    pub fn certificate(&self, c: usize) -> Certificate {
        self.clients[c].certificate.clone()
    }

    /// A join statement signed by client `c`'s key (what it sends when
    /// joining, or what an attacker replays or forges with a test key).
    pub fn sign_statement(
        &mut self,
        c: usize,
        home: &[u8],
        joined_at: i64,
        nonce: &[u8],
    ) -> SignedStatement {
        let statement = JoinStatement {
            name: self.clients[c].name.clone(),
            home_node_id: home.to_vec(),
            joined_at,
            nonce: nonce.to_vec(),
        };
        natter_proto::statement::sign(self.clients[c].key, &mut self.rng, &statement)
    }

    /// A random-looking id for messages and invites.
    pub fn random_id(&mut self) -> Vec<u8> {
        let mut id = vec![0u8; 16];
        self.rng.fill_bytes(&mut id);
        id
    }
}
