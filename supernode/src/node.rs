//! The running supernode: shared state, routing and directory operations.
//! Connections are handled in [`crate::session`] (clients) and
//! [`crate::overlay`] (other supernodes).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natter_net::{ControlConn, TlsIdentity, TlsListener, TransportSettings};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    CallHangup, CallSignal, ChatMessage, ChatReceipt, DirectoryLookup, DirectoryStore, Envelope,
    HangupReason, HostCacheEntry, PresenceStatus, PresenceUpdate, SupernodeAnnounce, SupernodeList,
    UserRecord, call_signal,
};
use quinn::{Connection, Endpoint, VarInt};
use rand::RngCore;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use crate::membership::Membership;
use crate::store::{self, ChatStore, RecordStore};
use crate::tcp::{TcpCounters, TcpStats};
use crate::udp::{UdpService, UdpStats};
use crate::{Config, NodeId, close, hrw};

/// File in the data directory holding the node id (hex).
pub const NODE_ID_FILE: &str = "node-id";

/// Why a supernode could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(transparent)]
    Net(#[from] natter_net::NetError),
    #[error("{path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} holds no valid node id")]
    BadNodeId(String),
    #[error("cannot advertise the unspecified address {0}: pass an advertise address")]
    Unspecified(SocketAddr),
    #[error(transparent)]
    Udp(#[from] crate::udp::BindError),
    #[error("cannot listen on TCP {addr} (the TLS-over-TCP listener, --tcp-listen): {source}")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Something queued for a client session's writer.
#[derive(Debug)]
pub(crate) enum Out {
    Frame(Envelope),
    /// Flush what is queued, then close the connection with this code.
    Close(u32, &'static str),
}

#[derive(Debug)]
pub(crate) struct SessionEntry {
    pub id: u64,
    pub tx: mpsc::Sender<Out>,
    /// QUIC or TLS over TCP: sessions are the same on both.
    pub conn: ControlConn,
    pub status: PresenceStatus,
    pub joined_at: i64,
    pub changed_at: i64,
    pub subscriptions: HashSet<String>,
}

#[derive(Debug)]
pub(crate) struct LinkEntry {
    pub id: u64,
    pub tx: mpsc::Sender<Envelope>,
    pub conn: Connection,
    pub addr: SocketAddr,
    pub dialer: NodeId,
}

#[derive(Debug)]
pub(crate) struct State {
    pub membership: Membership,
    pub records: RecordStore,
    pub chats: ChatStore,
    pub sessions: HashMap<String, SessionEntry>,
    pub links: HashMap<NodeId, LinkEntry>,
    pub pending: HashMap<(NodeId, u64), oneshot::Sender<Envelope>>,
    pub invites: HashMap<Vec<u8>, AbortHandle>,
    pub dialing: HashSet<SocketAddr>,
    pub last_live: Vec<NodeId>,
}

/// Why a message could not be routed to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// No record of the user anywhere.
    Unknown,
    /// The user is offline, or its supernode did not take the message.
    Offline,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: Config,
    pub node_id: NodeId,
    pub addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub endpoint: Endpoint,
    /// Shared by QUIC and TCP connections.
    pub connections: Arc<Semaphore>,
    /// STUN reflector and media relay.
    pub udp: Arc<UdpService>,
    /// The advertised address of the TLS-over-TCP listener, if it runs.
    pub tcp_addr: Option<SocketAddr>,
    /// Its bound address.
    pub tcp_local_addr: Option<SocketAddr>,
    /// Its counters.
    pub tcp: TcpCounters,
    state: Mutex<State>,
    next_id: AtomicU64,
}

/// Current unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Current unix time in seconds.
pub(crate) fn now_secs() -> i64 {
    now_ms() / 1000
}

pub(crate) fn short(id: &[u8]) -> String {
    hex::encode(id.get(..4).unwrap_or(id))
}

impl Inner {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The live supernodes, for `JoinAccepted` and `SupernodeList`. This
    /// node's entry carries its real reflector; the others' the one the
    /// convention gives (gossip carries no reflector). The TCP listener is
    /// this node's own, or what the member reported in gossip (unknown:
    /// none).
    pub fn host_cache(&self, st: &State) -> Vec<HostCacheEntry> {
        let now = now_ms();
        st.membership
            .live()
            .into_iter()
            .map(|(id, addr)| {
                let reflector = if id == self.node_id {
                    Some(self.udp.primary_addr)
                } else {
                    crate::reflector_of(addr)
                };
                HostCacheEntry {
                    addr: Some(addr.into()),
                    last_seen: now,
                    rtt_ms: 0,
                    node_id: id.to_vec(),
                    reflector: reflector.map(Into::into),
                    tcp: st.membership.tcp_of(&id).map(Into::into),
                }
            })
            .collect()
    }

    /// Queues `envelope` for the local session of `name`. A session whose
    /// queue is full is disconnected.
    pub fn push_local(&self, st: &State, name: &str, envelope: Envelope) -> bool {
        let Some(session) = st.sessions.get(name) else {
            return false;
        };
        push_session(session, envelope)
    }

    /// Queues `envelope` on the link to `peer`.
    pub fn send_link(&self, st: &State, peer: &NodeId, envelope: Envelope) -> bool {
        let Some(link) = st.links.get(peer) else {
            return false;
        };
        match link.tx.try_send(envelope) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(peer = %short(peer), "link queue full, closing link");
                link.conn
                    .close(VarInt::from_u32(close::DEAD), b"link queue full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Sends a request to `peer` and waits for the reply with its id.
    pub async fn request_peer(&self, peer: NodeId, body: Body) -> Option<Envelope> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.state();
            st.pending.insert((peer, id), tx);
            if !self.send_link(&st, &peer, Envelope::new(id, body)) {
                st.pending.remove(&(peer, id));
                return None;
            }
        }
        match tokio::time::timeout(self.config.peer_timeout, rx).await {
            Ok(Ok(reply)) => Some(reply),
            _ => {
                self.state().pending.remove(&(peer, id));
                None
            }
        }
    }

    /// The record of a user joined here.
    pub fn local_record(&self, name: &str, session: &SessionEntry) -> UserRecord {
        UserRecord {
            name: name.to_owned(),
            status: session.status as i32,
            last_seen: session.changed_at,
            home_node_id: self.node_id.to_vec(),
            home_addr: Some(self.addr.into()),
        }
    }

    fn effective(&self, st: &State, mut record: UserRecord) -> UserRecord {
        let status = store::effective_status(&record, |id| {
            crate::node_id(id).is_some_and(|id| st.membership.is_live(&id))
        });
        record.status = status as i32;
        record
    }

    /// Looks `name` up: a local session answers directly, otherwise the
    /// replicas are asked in HRW order and the first record found wins. The
    /// status is offline when the record's home supernode is not live.
    pub async fn lookup(&self, name: &str) -> Option<UserRecord> {
        let replicas = {
            let st = self.state();
            if let Some(session) = st.sessions.get(name) {
                return Some(self.local_record(name, session));
            }
            hrw::replicas(name, &st.membership.live_ids(), self.config.replicas)
        };
        for replica in replicas {
            if replica == self.node_id {
                let st = self.state();
                if let Some(record) = st.records.get(name).cloned() {
                    return Some(self.effective(&st, record));
                }
                continue;
            }
            let lookup = Body::DirectoryLookup(DirectoryLookup {
                name: name.to_owned(),
                take_pending_chat: false,
            });
            if let Some(Envelope {
                body: Some(Body::DirectoryRecords(found)),
                ..
            }) = self.request_peer(replica, lookup).await
                && let Some(record) = found.records.into_iter().find(|r| r.name == name)
            {
                let st = self.state();
                return Some(self.effective(&st, record));
            }
        }
        None
    }

    /// For a user who just joined here: asks every replica for its record
    /// and hands over the chat stored for it. Returns the newest record and
    /// the chat, deduplicated.
    pub async fn lookup_for_join(&self, name: &str) -> (Option<UserRecord>, Vec<ChatMessage>) {
        let replicas = {
            let st = self.state();
            hrw::replicas(name, &st.membership.live_ids(), self.config.replicas)
        };
        let mut records = Vec::new();
        let mut chat = Vec::new();
        for replica in replicas {
            if replica == self.node_id {
                let mut st = self.state();
                records.extend(st.records.get(name).cloned());
                chat.extend(st.chats.take(name));
                continue;
            }
            let lookup = Body::DirectoryLookup(DirectoryLookup {
                name: name.to_owned(),
                take_pending_chat: true,
            });
            if let Some(Envelope {
                body: Some(Body::DirectoryRecords(found)),
                ..
            }) = self.request_peer(replica, lookup).await
            {
                records.extend(found.records.into_iter().filter(|r| r.name == name));
                chat.extend(found.pending_chat.into_iter().filter(|m| m.to == name));
            }
        }
        let record = records.into_iter().max_by_key(|r| r.last_seen);
        (record, store::dedup_chat(chat))
    }

    /// Stores `record` on its replicas (locally when this node is one).
    /// With `broadcast`, also announces the status to every live supernode
    /// and to local subscribers.
    pub fn publish(&self, st: &mut State, record: &UserRecord, broadcast: bool) {
        let replicas = hrw::replicas(
            &record.name,
            &st.membership.live_ids(),
            self.config.replicas,
        );
        for replica in &replicas {
            if *replica == self.node_id {
                st.records.put(record.clone());
            } else {
                let store = Body::DirectoryStore(DirectoryStore {
                    records: vec![record.clone()],
                    pending_chat: Vec::new(),
                });
                self.send_link(st, replica, Envelope::new(0, store));
            }
        }
        if broadcast {
            let update = PresenceUpdate {
                name: record.name.clone(),
                status: record.status,
                last_seen: record.last_seen,
            };
            let peers: Vec<NodeId> = st.links.keys().copied().collect();
            for peer in peers {
                self.send_link(
                    st,
                    &peer,
                    Envelope::new(0, Body::PresenceUpdate(update.clone())),
                );
            }
            self.notify_subscribers(st, &update);
        }
    }

    /// Pushes `update` to the local sessions subscribed to its name.
    pub fn notify_subscribers(&self, st: &State, update: &PresenceUpdate) {
        for session in st.sessions.values() {
            if session.subscriptions.contains(&update.name) {
                push_session(
                    session,
                    Envelope::new(0, Body::PresenceUpdate(update.clone())),
                );
            }
        }
    }

    /// Publishes the status of the local session of `name`.
    pub fn publish_session(&self, st: &mut State, name: &str, broadcast: bool) {
        if let Some(session) = st.sessions.get(name) {
            let record = self.local_record(name, session);
            self.publish(st, &record, broadcast);
        }
    }

    /// Stores chat for an offline recipient on its replicas.
    pub fn store_pending(&self, st: &mut State, message: ChatMessage) {
        let replicas = hrw::replicas(&message.to, &st.membership.live_ids(), self.config.replicas);
        for replica in &replicas {
            if *replica == self.node_id {
                st.chats.add(message.clone(), now_ms());
            } else {
                let store = Body::DirectoryStore(DirectoryStore {
                    records: Vec::new(),
                    pending_chat: vec![message.clone()],
                });
                self.send_link(st, replica, Envelope::new(0, store));
            }
        }
    }

    /// Reacts to a change of the live set: tells the clients, moves the
    /// records and chat whose replica set changed, and re-publishes the
    /// records of local users to their (new) replicas.
    pub fn on_membership_change(&self, st: &mut State) {
        let live = st.membership.live_ids();
        let old = std::mem::replace(&mut st.last_live, live.clone());
        if old == live {
            return;
        }
        tracing::info!(
            live = live.len(),
            members = ?live.iter().map(|id| short(id)).collect::<Vec<_>>(),
            "membership changed"
        );
        let list = SupernodeList {
            entries: self.host_cache(st),
        };
        for session in st.sessions.values() {
            push_session(session, Envelope::new(0, Body::SupernodeList(list.clone())));
        }
        let k = self.config.replicas;
        for name in st.records.names() {
            let before = hrw::replicas(&name, &old, k);
            let after = hrw::replicas(&name, &live, k);
            if before == after {
                continue;
            }
            let Some(record) = st.records.get(&name).cloned() else {
                continue;
            };
            for replica in after.iter().filter(|r| **r != self.node_id) {
                let store = Body::DirectoryStore(DirectoryStore {
                    records: vec![record.clone()],
                    pending_chat: Vec::new(),
                });
                self.send_link(st, replica, Envelope::new(0, store));
            }
            if !after.contains(&self.node_id) {
                st.records.remove(&name);
            }
        }
        for name in st.chats.names() {
            let before = hrw::replicas(&name, &old, k);
            let after = hrw::replicas(&name, &live, k);
            if before == after {
                continue;
            }
            let chat = st.chats.take(&name);
            for replica in after.iter().filter(|r| **r != self.node_id) {
                let store = Body::DirectoryStore(DirectoryStore {
                    records: Vec::new(),
                    pending_chat: chat.clone(),
                });
                self.send_link(st, replica, Envelope::new(0, store));
            }
            if after.contains(&self.node_id) {
                let now = now_ms();
                for message in chat {
                    st.chats.add(message, now);
                }
            }
        }
        let names: Vec<String> = st.sessions.keys().cloned().collect();
        for name in names {
            self.publish_session(st, &name, false);
        }
    }

    /// Delivers a routed message (call signal, chat, receipt) to the local
    /// session named in its `to`. Chat delivered this way is receipted.
    pub fn deliver_local(self: &Arc<Self>, st: &mut State, body: Body) -> bool {
        let to = match &body {
            Body::CallSignal(signal) => signal.to.clone(),
            Body::ChatMessage(message) => message.to.clone(),
            Body::ChatReceipt(receipt) => receipt.to.clone(),
            _ => return false,
        };
        let signal = match &body {
            Body::CallSignal(signal) => {
                self.observe_signal(st, signal);
                Some(signal.clone())
            }
            _ => None,
        };
        let receipt = match &body {
            Body::ChatMessage(message) => Some(message.clone()),
            _ => None,
        };
        let delivered = self.push_local(st, &to, Envelope::new(0, body));
        if delivered && let Some(message) = receipt {
            self.send_receipt(&message);
        }
        if delivered && let Some(signal) = signal {
            self.note_routed(&signal);
        }
        delivered
    }

    /// Routes a call signal, chat message or receipt to the user in its
    /// `to`: locally, or over the link to the user's home supernode, which
    /// answers `Ack` once the message is queued for the user.
    pub async fn deliver(self: &Arc<Self>, to: &str, body: Body) -> Result<(), RouteError> {
        {
            let mut st = self.state();
            if st.sessions.contains_key(to) {
                return if self.deliver_local(&mut st, body) {
                    Ok(())
                } else {
                    Err(RouteError::Offline)
                };
            }
        }
        let record = self.lookup(to).await.ok_or(RouteError::Unknown)?;
        if record.status == PresenceStatus::Offline as i32 {
            return Err(RouteError::Offline);
        }
        let home = crate::node_id(&record.home_node_id).ok_or(RouteError::Offline)?;
        if home == self.node_id {
            // The record says here, but the session is gone.
            return Err(RouteError::Offline);
        }
        match self.request_peer(home, body).await {
            Some(Envelope {
                body: Some(Body::Ack(_)),
                ..
            }) => Ok(()),
            _ => Err(RouteError::Offline),
        }
    }

    /// Sends the delivery receipt of `message` to its sender, in the background.
    pub fn send_receipt(self: &Arc<Self>, message: &ChatMessage) {
        let receipt = ChatReceipt {
            message_id: message.message_id.clone(),
            from: message.to.clone(),
            to: message.from.clone(),
            delivered_at: now_ms(),
        };
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let to = receipt.to.clone();
            if let Err(e) = inner.deliver(&to, Body::ChatReceipt(receipt)).await {
                tracing::debug!(%to, ?e, "receipt not delivered");
            }
        });
    }

    /// Cancels the no-answer timer of a call that got an answer.
    pub fn observe_signal(&self, st: &mut State, signal: &CallSignal) {
        use call_signal::Kind;
        if matches!(
            signal.kind,
            Some(Kind::Accept(_) | Kind::Reject(_) | Kind::Busy(_) | Kind::Hangup(_))
        ) && let Some(timer) = st.invites.remove(&signal.invite_id)
        {
            timer.abort();
        }
    }

    /// Remembers that `signal` was routed through this supernode, so that
    /// its two users may allocate a relay for the call; a hangup, reject or
    /// busy releases the call's relay allocations.
    pub fn note_routed(&self, signal: &CallSignal) {
        use call_signal::Kind;
        let ended = matches!(
            signal.kind,
            Some(Kind::Reject(_) | Kind::Busy(_) | Kind::Hangup(_))
        );
        self.udp.table().note_signal(
            &signal.invite_id,
            &signal.from,
            &signal.to,
            ended,
            std::time::Instant::now(),
        );
    }

    /// Starts the no-answer timer of an invite routed from a local caller.
    pub fn start_invite_timer(self: &Arc<Self>, st: &mut State, invite: &CallSignal) {
        let inner = Arc::clone(self);
        let invite_id = invite.invite_id.clone();
        let (caller, callee) = (invite.from.clone(), invite.to.clone());
        let timeout = self.config.no_answer_timeout;
        let task = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            inner.state().invites.remove(&invite_id);
            tracing::debug!(%caller, %callee, "invite not answered, hanging up");
            let hangup = |from: &str, to: &str| CallSignal {
                invite_id: invite_id.clone(),
                from: from.to_owned(),
                to: to.to_owned(),
                kind: Some(call_signal::Kind::Hangup(CallHangup {
                    reason: HangupReason::NoAnswer as i32,
                })),
            };
            let _ = inner
                .deliver(&caller, Body::CallSignal(hangup(&callee, &caller)))
                .await;
            let _ = inner
                .deliver(&callee, Body::CallSignal(hangup(&caller, &callee)))
                .await;
        });
        if let Some(old) = st
            .invites
            .insert(invite.invite_id.clone(), task.abort_handle())
        {
            old.abort();
        }
    }
}

/// Queues `envelope` for `session`; a full queue disconnects the client.
pub(crate) fn push_session(session: &SessionEntry, envelope: Envelope) -> bool {
    match session.tx.try_send(Out::Frame(envelope)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::info!("session push queue full, disconnecting slow client");
            session.conn.close(close::SLOW, b"push queue full");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Binds the TCP listener synchronously (reusing the address, as a server
/// restarting on port 443 must), inside a tokio runtime.
fn bind_tcp(addr: SocketAddr, identity: &TlsIdentity) -> Result<TlsListener, SpawnError> {
    let io = |source| SpawnError::Tcp { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(io)?;
    socket.set_reuseaddr(true).map_err(io)?;
    socket.bind(addr).map_err(io)?;
    let listener = socket.listen(1024).map_err(io)?;
    Ok(TlsListener::from_listener(
        listener,
        identity,
        TransportSettings::OVERLAY,
    )?)
}

/// The advertised address of a TCP listener bound at `bound`: the rule of
/// the QUIC address. An explicit advertise address (`explicit`) gives its IP
/// (the QUIC advertised IP `quic`); so does a wildcard bind; the port is the
/// bound one.
fn advertised_tcp(bound: SocketAddr, quic: SocketAddr, explicit: bool) -> SocketAddr {
    if explicit || bound.ip().is_unspecified() {
        SocketAddr::new(quic.ip(), bound.port())
    } else {
        bound
    }
}

/// Starts supernodes.
#[derive(Debug)]
pub struct Supernode;

/// A running supernode. Dropping it stops it too.
#[derive(Debug)]
pub struct Handle {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

fn load_node_id(dir: Option<&Path>) -> Result<NodeId, SpawnError> {
    let mut fresh = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut fresh);
    let Some(dir) = dir else {
        return Ok(fresh);
    };
    let path = dir.join(NODE_ID_FILE);
    let io = |source| SpawnError::DataDir {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(io)?;
        return hex::decode(text.trim())
            .ok()
            .and_then(|b| crate::node_id(&b))
            .ok_or_else(|| SpawnError::BadNodeId(path.display().to_string()));
    }
    std::fs::create_dir_all(dir).map_err(|source| SpawnError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    std::fs::write(&path, hex::encode(fresh)).map_err(io)?;
    Ok(fresh)
}

impl Supernode {
    /// Binds the endpoint and starts the supernode's tasks (accepting,
    /// gossip and failure detection, dialing peers, announcing to the login
    /// server). Must be called inside a tokio runtime.
    pub fn spawn(config: Config) -> Result<Handle, SpawnError> {
        let data_dir = config.data_dir.as_deref();
        let node_id = load_node_id(data_dir)?;
        let identity = TlsIdentity::load_or_generate(data_dir, "natter-supernode")?;
        let endpoint =
            natter_net::server_endpoint(config.listen, &identity, &TransportSettings::OVERLAY)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| SpawnError::DataDir {
                path: "local address".into(),
                source,
            })?;
        let addr = config.advertise.unwrap_or(local_addr);
        if addr.ip().is_unspecified() {
            return Err(SpawnError::Unspecified(addr));
        }
        let (udp_addr, fallback) = match config.udp {
            Some(udp) => (udp, false),
            None => {
                let port = crate::reflector_of(local_addr).map_or(0, |r| r.port());
                (
                    SocketAddr::new(local_addr.ip(), port),
                    config.listen.port() == 0,
                )
            }
        };
        let (udp, sockets) = UdpService::bind(
            udp_addr,
            fallback,
            addr.ip(),
            config.relay.clone(),
            config.tcp_leg_queue,
        )?;
        let udp = Arc::new(udp);
        let tcp = match config.tcp_listen {
            Some(listen) => {
                let listener = bind_tcp(listen, &identity)?;
                let bound = listener.local_addr()?;
                let advertised = advertised_tcp(bound, addr, config.advertise.is_some());
                Some((listener, bound, advertised))
            }
            None => None,
        };
        let tcp_addr = tcp.as_ref().map(|(_, _, advertised)| *advertised);
        // A restarted node (same id from the data dir) gets a higher incarnation.
        let incarnation = u64::try_from(now_ms()).unwrap_or(0);
        let membership = Membership::new(node_id, addr, tcp_addr, incarnation, config.timeouts);
        let state = State {
            last_live: membership.live_ids(),
            membership,
            records: RecordStore::default(),
            chats: ChatStore::default(),
            sessions: HashMap::new(),
            links: HashMap::new(),
            pending: HashMap::new(),
            invites: HashMap::new(),
            dialing: HashSet::new(),
        };
        let inner = Arc::new(Inner {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            udp: Arc::clone(&udp),
            tcp_addr,
            tcp_local_addr: tcp.as_ref().map(|(_, bound, _)| *bound),
            tcp: TcpCounters::default(),
            config,
            node_id,
            addr,
            local_addr,
            endpoint,
            state: Mutex::new(state),
            next_id: AtomicU64::new(1),
        });
        tracing::info!(
            listen = %local_addr,
            advertise = %addr,
            node_id = %hex::encode(node_id),
            replicas = inner.config.replicas,
            "natter-supernode serving (QUIC, ALPN natter/1)"
        );
        tracing::info!(
            reflector = %udp.primary_addr,
            alternate = %udp.alternate_addr,
            "UDP service: STUN reflector and relay"
        );
        let mut tasks = vec![
            tokio::spawn(udp.run(sockets)),
            tokio::spawn(crate::overlay::accept_loop(Arc::clone(&inner))),
            tokio::spawn(crate::overlay::maintenance_loop(Arc::clone(&inner))),
        ];
        if let Some((listener, bound, advertised)) = tcp {
            tracing::info!(
                listen = %bound,
                advertise = %advertised,
                "TLS over TCP: client sessions and relay legs"
            );
            tasks.push(tokio::spawn(crate::tcp::accept_loop(
                Arc::clone(&inner),
                listener,
            )));
        }
        if let Some(login) = inner.config.login {
            tasks.push(tokio::spawn(announce_loop(Arc::clone(&inner), login)));
        }
        Ok(Handle { inner, tasks })
    }
}

impl Handle {
    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The advertised address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// This supernode's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The live supernodes in this node's view (itself included).
    pub fn live_members(&self) -> Vec<NodeId> {
        self.inner.state().membership.live_ids()
    }

    /// Users joined here.
    pub fn session_count(&self) -> usize {
        self.inner.state().sessions.len()
    }

    /// The UDP service's primary address (STUN reflector and relay), as
    /// advertised in `JoinAccepted.reflector`.
    pub fn reflector(&self) -> SocketAddr {
        self.inner.udp.primary_addr
    }

    /// The alternate STUN address (RFC 5780 change-port answers).
    pub fn udp_alternate(&self) -> SocketAddr {
        self.inner.udp.alternate_addr
    }

    /// The UDP service's counters.
    pub fn udp_stats(&self) -> UdpStats {
        self.inner.udp.stats()
    }

    /// The advertised address of the TLS-over-TCP listener (as in
    /// `HostCacheEntry.tcp`, `RelayAllocated.tcp` and the announcement), if
    /// it runs.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.inner.tcp_addr
    }

    /// The bound address of the TLS-over-TCP listener, if it runs.
    pub fn tcp_local_addr(&self) -> Option<SocketAddr> {
        self.inner.tcp_local_addr
    }

    /// The TLS-over-TCP listener's counters (all zero without one).
    pub fn tcp_stats(&self) -> TcpStats {
        crate::tcp::stats(&self.inner)
    }

    /// Stops the supernode: every connection is closed (peers and clients
    /// notice at once) and the tasks end.
    pub async fn shutdown(mut self) {
        self.stop();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }

    fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.inner
            .endpoint
            .close(VarInt::from_u32(close::NORMAL), b"shutdown");
        self.inner.tcp.close_all();
        let mut st = self.inner.state();
        for (_, timer) in st.invites.drain() {
            timer.abort();
        }
        st.sessions.clear();
        st.links.clear();
        st.pending.clear();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Announces this supernode to the login server now and every
/// `announce_interval`; failures are only logged.
async fn announce_loop(inner: Arc<Inner>, login: SocketAddr) {
    let mut interval = tokio::time::interval(inner.config.announce_interval);
    loop {
        interval.tick().await;
        let announce = Envelope::new(
            1,
            Body::SupernodeAnnounce(SupernodeAnnounce {
                addr: Some(inner.addr.into()),
                node_id: inner.node_id.to_vec(),
                tcp: inner.tcp_addr.map(Into::into),
            }),
        );
        match natter_net::request_once(
            &inner.endpoint,
            login,
            "natter-login",
            &announce,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(reply) => {
                tracing::debug!(%login, reply = reply.type_name(), "announced to the login server")
            }
            Err(e) => {
                tracing::debug!(%login, error = %e, "announcement to the login server failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tcp_listener_is_advertised_like_the_quic_address() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let quic = sa("203.0.113.5:5001");
        // Bound to a real address, no --advertise: as bound.
        assert_eq!(
            advertised_tcp(sa("192.0.2.1:443"), quic, false),
            sa("192.0.2.1:443")
        );
        // A wildcard bind takes the QUIC address's IP.
        assert_eq!(
            advertised_tcp(sa("0.0.0.0:443"), quic, false),
            sa("203.0.113.5:443")
        );
        // --advertise overrides the IP, never the port.
        assert_eq!(
            advertised_tcp(sa("192.0.2.1:8443"), quic, true),
            sa("203.0.113.5:8443")
        );
    }
}
