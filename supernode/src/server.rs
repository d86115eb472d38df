//! Starting a supernode: binding its sockets, building the node core, and
//! spawning the node task, the accept loops, the UDP service and the
//! announcements. [`Handle`] answers queries from snapshots the node task
//! publishes and from the services' own counters.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use natter_net::{TlsIdentity, TlsListener, TransportSettings};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Envelope, SupernodeAnnounce};
use quinn::VarInt;
use rand::RngCore;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::core::{Node, NodeConfig};
use crate::node_task::Snapshot;
use crate::shell::{EVENT_QUEUE, Shell, now};
use crate::tcp_stats::TcpStats;
use crate::udp::{UdpService, UdpStats};
use crate::{Config, NodeId, close};

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
    // Atomic (temporary sibling, fsync, rename): a crash while writing
    // leaves no half-written id that would stop the next start.
    natter_fsutil::write_atomic(&path, hex::encode(fresh).as_bytes(), natter_fsutil::PUBLIC)
        .map_err(|e| SpawnError::DataDir {
            path: e.path.display().to_string(),
            source: e.source,
        })?;
    Ok(fresh)
}

/// Starts supernodes.
#[derive(Debug)]
pub struct Supernode;

/// A running supernode. Dropping it stops it too.
#[derive(Debug)]
pub struct Handle {
    shell: Arc<Shell>,
    snapshot: watch::Receiver<Snapshot>,
    node_id: NodeId,
    addr: SocketAddr,
    local_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    tcp_local_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Supernode {
    /// Binds the endpoint and starts the supernode's tasks (the node task,
    /// accepting, the UDP service, announcing to the login server). Must be
    /// called inside a tokio runtime.
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
        let start = now();
        // A restarted node (same id from the data dir) gets a higher incarnation.
        let incarnation = u64::try_from(start.unix_ms).unwrap_or(0);
        let core_config = NodeConfig::from_config(
            &config,
            node_id,
            addr,
            local_addr,
            tcp_addr,
            udp.primary_addr,
            incarnation,
        );
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let node = Node::new(core_config, seed, start);
        let (snapshot_tx, snapshot) = watch::channel(Snapshot::of(&node));
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let shell = Arc::new(Shell::new(config, endpoint, Arc::clone(&udp), events_tx));
        tracing::info!(
            listen = %local_addr,
            advertise = %addr,
            node_id = %hex::encode(node_id),
            replicas = shell.config.replicas,
            "natter-supernode serving (QUIC, ALPN natter/1)"
        );
        tracing::info!(
            reflector = %udp.primary_addr,
            alternate = %udp.alternate_addr,
            "UDP service: STUN reflector and relay"
        );
        let mut tasks = vec![
            tokio::spawn(crate::node_task::run(
                Arc::clone(&shell),
                node,
                events,
                snapshot_tx,
            )),
            tokio::spawn(udp.run(sockets)),
            tokio::spawn(crate::quic::accept_loop(Arc::clone(&shell))),
        ];
        let tcp_local_addr = tcp.as_ref().map(|(_, bound, _)| *bound);
        if let Some((listener, bound, advertised)) = tcp {
            tracing::info!(
                listen = %bound,
                advertise = %advertised,
                "TLS over TCP: client sessions and relay legs"
            );
            tasks.push(tokio::spawn(crate::tcp::accept_loop(
                Arc::clone(&shell),
                listener,
                snapshot.clone(),
            )));
        }
        if let Some(login) = shell.config.login {
            tasks.push(tokio::spawn(announce_loop(
                Arc::clone(&shell),
                login,
                addr,
                node_id,
                tcp_addr,
            )));
        }
        Ok(Handle {
            shell,
            snapshot,
            node_id,
            addr,
            local_addr,
            tcp_addr,
            tcp_local_addr,
            tasks,
        })
    }
}

impl Handle {
    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The advertised address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This supernode's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The live supernodes in this node's view (itself included).
    pub fn live_members(&self) -> Vec<NodeId> {
        self.snapshot.borrow().live_members.clone()
    }

    /// Users joined here.
    pub fn session_count(&self) -> usize {
        self.snapshot.borrow().session_count
    }

    /// What the node core dropped or refused (records from peers among it).
    pub fn core_stats(&self) -> crate::core::CoreStats {
        self.snapshot.borrow().core
    }

    /// The UDP service's primary address (STUN reflector and relay), as
    /// advertised in `JoinAccepted.reflector`.
    pub fn reflector(&self) -> SocketAddr {
        self.shell.udp.primary_addr
    }

    /// The alternate STUN address (RFC 5780 change-port answers).
    pub fn udp_alternate(&self) -> SocketAddr {
        self.shell.udp.alternate_addr
    }

    /// The UDP service's counters.
    pub fn udp_stats(&self) -> UdpStats {
        self.shell.udp.stats()
    }

    /// The advertised address of the TLS-over-TCP listener (as in
    /// `HostCacheEntry.tcp`, `RelayAllocated.tcp` and the announcement), if
    /// it runs.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The bound address of the TLS-over-TCP listener, if it runs.
    pub fn tcp_local_addr(&self) -> Option<SocketAddr> {
        self.tcp_local_addr
    }

    /// The TLS-over-TCP listener's counters (all zero without one).
    pub fn tcp_stats(&self) -> TcpStats {
        crate::tcp::stats(&self.shell, &self.snapshot)
    }

    /// Stops the supernode: every connection is closed (peers and clients
    /// notice at once) and the tasks end.
    pub async fn shutdown(mut self) {
        self.stop();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.shell.endpoint.wait_idle()).await;
    }

    fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.shell
            .endpoint
            .close(VarInt::from_u32(close::NORMAL), b"shutdown");
        self.shell.tcp.close_all();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Announces this supernode to the login server now and every
/// `announce_interval`; failures are only logged.
async fn announce_loop(
    shell: Arc<Shell>,
    login: SocketAddr,
    addr: SocketAddr,
    node_id: NodeId,
    tcp_addr: Option<SocketAddr>,
) {
    let mut interval = tokio::time::interval(shell.config.announce_interval);
    loop {
        interval.tick().await;
        let announce = Envelope::new(
            1,
            Body::SupernodeAnnounce(SupernodeAnnounce {
                addr: Some(addr.into()),
                node_id: node_id.to_vec(),
                tcp: tcp_addr.map(Into::into),
                ..Default::default()
            }),
        );
        match natter_net::request_once(
            &shell.endpoint,
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
