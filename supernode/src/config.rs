//! Supernode configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use natter_proto::cert::Issuer;
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::membership::Timeouts;
use crate::relay::RelayLimits;

/// Who certifies this supernode's key.
#[derive(Debug, Clone)]
pub enum Certification {
    /// The login server at [`Config::login`]: the node announces (signed,
    /// bound to the connection) and serves once the answer carries a
    /// certificate. `enrol_token` is a one-time token from `natter-login
    /// supernodes token`; without one, the operator approves the key's
    /// fingerprint (`natter-login supernodes approve`).
    LoginServer { enrol_token: Option<String> },
    /// A promoted client (docs/ARCHITECTURE.md, "Supernode promotion"):
    /// like `LoginServer`, each announce also carries the user's
    /// certificate and the user's signature over the announce binding
    /// (`NATTER-PROMOTE-V1`), so the login server can approve the key under
    /// its policy for users (`natter-login serve --auto-approve-users`)
    /// instead of waiting for the operator.
    Sponsored(Arc<Sponsor>),
    /// An issuer in this process (tests, single-box setups): the same
    /// [`Issuer::issue`] the login server calls, with this login key's
    /// private half, certifying for `validity`.
    Local {
        issuer: Arc<Issuer>,
        validity: Duration,
    },
}

/// The user vouching for a promoted client's supernode: its USER
/// certificate and the certified key, which signs each announce's
/// sponsorship.
#[derive(Clone)]
pub struct Sponsor {
    pub certificate: natter_proto::messages::Certificate,
    pub key: RsaPrivateKey,
}

impl std::fmt::Debug for Sponsor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sponsor").finish_non_exhaustive()
    }
}

/// Everything a supernode needs to run. [`Config::new`] fills in defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP address to listen on (QUIC).
    pub listen: SocketAddr,
    /// Address announced to peers, clients and the login server; defaults to
    /// the bound address (which must then not be unspecified).
    pub advertise: Option<SocketAddr>,
    /// The login server, announced to every `announce_interval`.
    pub login: Option<SocketAddr>,
    /// The login server's signing key: user certificates are checked against it.
    pub login_key: RsaPublicKey,
    /// Supernodes to connect to at start (and to keep reconnecting to).
    pub peers: Vec<SocketAddr>,
    /// Keeps the node key (hence the node id) and TLS identity across restarts.
    pub data_dir: Option<PathBuf>,
    /// The node key to use instead of the data directory's (tests).
    pub node_key: Option<RsaPrivateKey>,
    /// Who certifies the node key.
    pub certification: Certification,
    /// Renew the certificate when less than this much of it is left.
    pub renew_before: Duration,
    /// Directory replicas per user record (K).
    pub replicas: usize,
    /// An unanswered call invite is hung up after this long.
    pub no_answer_timeout: Duration,
    /// Gossip period.
    pub gossip_interval: Duration,
    /// Failure detector timeouts.
    pub timeouts: Timeouts,
    /// Period of the announcement to the login server (each answer brings
    /// the current revocation list, so this bounds how late a revocation
    /// reaches this node).
    pub announce_interval: Duration,
    /// How long to wait for one replica (or peer) to answer.
    pub peer_timeout: Duration,
    /// Time allowed for the join handshake.
    pub handshake_timeout: Duration,
    /// Bounded push queue of each client session.
    pub session_queue: usize,
    /// Bounded queue of each supernode link.
    pub link_queue: usize,
    /// Requests per second allowed per session.
    pub rate_per_sec: f64,
    /// Burst of requests allowed per session.
    pub rate_burst: f64,
    /// Most simultaneous connections (clients and supernodes).
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address (QUIC and TCP
    /// together, clients and supernodes): one host cannot take every slot.
    pub max_connections_per_ip: usize,
    /// A write to a client session or TCP relay leg that takes longer than
    /// this (a peer that stopped reading) closes the connection.
    pub write_timeout: Duration,
    /// Most names one session may subscribe to.
    pub max_subscriptions: usize,
    /// Primary address of the UDP service (STUN reflector and media relay).
    /// `None`: the listen IP, port = the bound QUIC port + 1 (the convention
    /// peers assume, see [`crate::reflector_of`]); when `listen` has port 0
    /// and that port is taken, any free port. The alternate STUN socket
    /// (RFC 5780 change-port) takes the next port, or any free one.
    pub udp: Option<SocketAddr>,
    /// Relay allocation limits: lifetime, quotas, rate limits.
    pub relay: RelayLimits,
    /// TCP address of the TLS-over-TCP listener, the firewall fallback for
    /// clients whose UDP is blocked (client sessions and TCP relay legs;
    /// port 443 in deployments). `None`: no listener. It is advertised like
    /// the QUIC address: with the IP of `advertise` when that is set or when
    /// it is bound to a wildcard address, with its bound port.
    pub tcp_listen: Option<SocketAddr>,
    /// TCP address of the Prometheus endpoint (`GET /metrics`,
    /// [`natter_net::metrics`]). `None`: off.
    pub metrics: Option<SocketAddr>,
    /// Bounded queue of datagrams waiting to be written to one TCP relay
    /// leg; a datagram forwarded to a full queue is dropped.
    pub tcp_leg_queue: usize,
    /// Byte caps on the chat stored for offline users.
    pub chat_limits: crate::store::ChatLimits,
    /// How long a client that acknowledges chat has to acknowledge a pushed
    /// message before it counts as not delivered (docs/PROTOCOL.md, 8.7).
    pub chat_ack_timeout: Duration,
}

impl Config {
    /// A configuration with the defaults: K = 3, no-answer timeout 30 s,
    /// gossip every second, dead after 3 s of silence.
    pub fn new(listen: SocketAddr, login_key: RsaPublicKey) -> Self {
        Self {
            listen,
            advertise: None,
            login: None,
            login_key,
            peers: Vec::new(),
            data_dir: None,
            node_key: None,
            certification: Certification::LoginServer { enrol_token: None },
            renew_before: Duration::from_secs(3600),
            replicas: 3,
            no_answer_timeout: Duration::from_secs(30),
            gossip_interval: Duration::from_secs(1),
            timeouts: Timeouts::default(),
            announce_interval: Duration::from_secs(15),
            peer_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            session_queue: 256,
            link_queue: 4096,
            rate_per_sec: 50.0,
            rate_burst: 100.0,
            max_connections: 10_000,
            max_connections_per_ip: 64,
            write_timeout: Duration::from_secs(10),
            max_subscriptions: 1000,
            udp: None,
            relay: RelayLimits::default(),
            tcp_listen: None,
            metrics: None,
            tcp_leg_queue: 64,
            chat_limits: crate::store::ChatLimits::default(),
            chat_ack_timeout: Duration::from_secs(10),
        }
    }
}
