//! What the connection tasks share: the configuration, the QUIC endpoint,
//! the connection limit, the UDP service, the TCP counters, and the bounded
//! queue of [`Event`]s into the node task (the only owner of the node
//! core). No node state lives here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use natter_net::ControlConn;
use natter_proto::messages::{Envelope, GossipMembership};
use quinn::{Connection, Endpoint};
use tokio::sync::{Semaphore, mpsc};

use crate::Config;
use crate::core::{Carrier, LinkId, LinkOrigin, NodeCredentials, Now, SessionId};
use crate::tcp_stats::TcpCounters;
use crate::udp::UdpService;

/// Events queued for the node task at most; readers wait when it is full.
pub(crate) const EVENT_QUEUE: usize = 4096;

/// Something queued for a client session's writer.
#[derive(Debug)]
pub(crate) enum Out {
    /// Boxed: the queue's slots are allocated a block at a time up front
    /// (32 of them per idle session), so each slot stays pointer-sized.
    Frame(Box<Envelope>),
    /// Flush what is queued, then close the connection with this code.
    Close(u32, &'static str),
}

/// What a connection task tells the node task.
#[derive(Debug)]
pub(crate) enum Event {
    /// A client connection whose first frame, `hello`, is a `JoinHello`.
    SessionOpen {
        id: SessionId,
        carrier: Carrier,
        conn: ControlConn,
        tx: mpsc::Sender<Out>,
        hello: Envelope,
    },
    SessionFrame {
        id: SessionId,
        envelope: Envelope,
    },
    SessionClosed {
        id: SessionId,
    },
    /// A supernode link is up: `peer` is the node id its `LinkHello`
    /// proved; `first` is the peer's gossip.
    LinkUp {
        id: LinkId,
        peer: crate::NodeId,
        certificate: Option<natter_proto::messages::Certificate>,
        conn: Connection,
        tx: mpsc::Sender<Envelope>,
        first: GossipMembership,
        origin: LinkOrigin,
    },
    LinkFrame {
        id: LinkId,
        envelope: Envelope,
    },
    LinkDown {
        id: LinkId,
    },
    DialFailed {
        addr: SocketAddr,
    },
    /// The login server's signed revocation list.
    Revocations(natter_proto::messages::RevocationList),
    /// The node key's (new or renewed) certificate.
    Certified {
        key: Box<rsa::RsaPrivateKey>,
        certificate: natter_proto::messages::Certificate,
    },
}

/// The context of every connection task.
#[derive(Debug)]
pub(crate) struct Shell {
    pub config: Config,
    pub endpoint: Endpoint,
    /// Shared by QUIC and TCP connections.
    pub connections: Arc<Semaphore>,
    /// Connections per IP address, QUIC and TCP together.
    pub per_ip: Arc<natter_net::PerIp>,
    /// STUN reflector and media relay.
    pub udp: Arc<UdpService>,
    /// The TLS-over-TCP listener's counters.
    pub tcp: TcpCounters,
    pub events: mpsc::Sender<Event>,
    /// The node key and certificate links are opened with (`None` until
    /// certified); the node task's core holds the same for joins.
    credentials: RwLock<Option<NodeCredentials>>,
    /// Link attempts refused for a missing or invalid `LinkHello`.
    pub links_refused: AtomicU64,
    next_id: AtomicU64,
}

impl Shell {
    pub fn new(
        config: Config,
        endpoint: Endpoint,
        udp: Arc<UdpService>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            per_ip: natter_net::PerIp::new(config.max_connections_per_ip),
            config,
            endpoint,
            udp,
            tcp: TcpCounters::default(),
            events,
            credentials: RwLock::new(None),
            links_refused: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// The credentials links are opened with.
    pub fn credentials(&self) -> Option<NodeCredentials> {
        self.credentials.read().ok().and_then(|c| c.clone())
    }

    /// Sets the credentials links are opened with (the node task is told
    /// separately).
    pub fn set_credentials(&self, credentials: NodeCredentials) {
        if let Ok(mut held) = self.credentials.write() {
            *held = Some(credentials);
        }
    }

    /// Installs (new or renewed) credentials, for links and, through the
    /// node task, for joins.
    pub async fn certified(&self, credentials: NodeCredentials) -> bool {
        self.set_credentials(credentials.clone());
        self.tell(Event::Certified {
            key: Box::new(credentials.key),
            certificate: credentials.certificate,
        })
        .await
    }

    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues `event` for the node task, waiting while its queue is full;
    /// false once the node task is gone.
    pub async fn tell(&self, event: Event) -> bool {
        self.events.send(event).await.is_ok()
    }
}

/// The current time, for the node core.
pub(crate) fn now() -> Now {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Now {
        mono: Instant::now(),
        unix_ms,
    }
}
