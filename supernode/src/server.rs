//! Starting a supernode: binding its sockets, building the node core, and
//! spawning the node task, the accept loops, the UDP service and the
//! announcements. [`Handle`] answers queries from snapshots the node task
//! publishes and from the services' own counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_net::{TlsIdentity, TlsListener, TransportSettings};
use natter_proto::binding;
use natter_proto::cert::{self, Issuer, SupernodeAddrs};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Certificate, Envelope, ErrorCode, SupernodeAnnounce, SupernodeAnnounced,
};
use quinn::VarInt;
use rand::RngCore;
use rsa::RsaPrivateKey;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Certification;
use crate::core::{Node, NodeConfig, NodeCredentials};
use crate::node_task::Snapshot;
use crate::shell::{EVENT_QUEUE, Event, Shell, now};
use crate::tcp_stats::TcpStats;
use crate::udp::{UdpService, UdpStats};
use crate::{Config, NodeId, close};

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
    #[error("node key: {0}")]
    NodeKey(#[from] crate::identity::IdentityError),
    #[error("no certification: a supernode needs a login server (--login) or a local issuer")]
    NoCertification,
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
    #[error("cannot listen on TCP {addr} (the Prometheus endpoint, --metrics): {source}")]
    Metrics {
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
    metrics_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Supernode {
    /// Binds the endpoint and starts the supernode's tasks (the node task,
    /// accepting, the UDP service, announcing to the login server). Must be
    /// called inside a tokio runtime.
    pub fn spawn(config: Config) -> Result<Handle, SpawnError> {
        let data_dir = config.data_dir.as_deref();
        let node_key = match &config.node_key {
            Some(key) => key.clone(),
            None => crate::identity::load_or_generate(data_dir)?,
        };
        // The node id is the certified key's id: nobody can claim it
        // without the key.
        let node_id: NodeId = cert::key_id(&node_key.to_public_key());
        if matches!(
            config.certification,
            Certification::LoginServer { .. } | Certification::Sponsored(_)
        ) && config.login.is_none()
        {
            return Err(SpawnError::NoCertification);
        }
        let identity = TlsIdentity::load_or_generate(data_dir, "natter-supernode")?;
        // Clients' sessions: idle timeout 45 s, their liveness is beaconed
        // (`natter_proto::alive`). Links to other supernodes are dialled with
        // the overlay's 1 s keep-alive and 3 s idle timeout, which is also
        // what a link dialled by a peer gets (QUIC takes the smaller value).
        let mut endpoint =
            natter_net::server_endpoint(config.listen, &identity, &TransportSettings::SESSION)?;
        endpoint.set_default_client_config(natter_net::insecure_client_config(
            &TransportSettings::OVERLAY,
        )?);
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
        let addrs = SupernodeAddrs {
            quic: addr,
            reflector: udp.primary_addr,
            tcp: tcp_addr,
        };
        let credentials = match &config.certification {
            Certification::Local { issuer, validity } => Some(NodeCredentials {
                certificate: local_certificate(
                    issuer,
                    &node_key,
                    addrs,
                    *validity,
                    start.unix_secs(),
                ),
                key: node_key.clone(),
            }),
            Certification::LoginServer { .. } | Certification::Sponsored(_) => None,
        };
        let mut core_config = NodeConfig::from_config(
            &config,
            node_id,
            credentials,
            addr,
            local_addr,
            tcp_addr,
            udp.primary_addr,
            incarnation,
        );
        core_config.alive_secret = Some(udp.alive_secret());
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let node = Node::new(core_config, seed, start);
        let (snapshot_tx, snapshot) = watch::channel(Snapshot::of(&node));
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let initial = node.config().credentials.clone();
        let shell = Arc::new(Shell::new(config, endpoint, Arc::clone(&udp), events_tx));
        if let Some(credentials) = initial {
            // The core has them already (NodeConfig); links need them too.
            shell.set_credentials(credentials);
        }
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
        // Bound before any task starts: a port in use fails the start.
        let metrics = match shell.config.metrics {
            Some(addr) => {
                let io = |source| SpawnError::Metrics { addr, source };
                let listener = std::net::TcpListener::bind(addr).map_err(io)?;
                listener.set_nonblocking(true).map_err(io)?;
                let listener = tokio::net::TcpListener::from_std(listener).map_err(io)?;
                let bound = listener.local_addr().map_err(io)?;
                Some((listener, bound))
            }
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(|(_, bound)| *bound);
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
        if let Some((listener, bound)) = metrics {
            let (shell, snapshot) = (Arc::clone(&shell), snapshot.clone());
            tasks.push(tokio::spawn(natter_net::metrics::serve(
                listener,
                move || crate::metrics::render(&crate::metrics::figures(&shell, &snapshot)),
            )));
            tracing::info!(%bound, "Prometheus metrics on http://{bound}/metrics");
        }
        if let Certification::Local { issuer, validity } = &shell.config.certification {
            tasks.push(tokio::spawn(local_renew_loop(
                Arc::clone(&shell),
                Arc::clone(issuer),
                *validity,
                node_key.clone(),
                addrs,
            )));
        }
        if let Some(login) = shell.config.login {
            tasks.push(tokio::spawn(announce_loop(
                Arc::clone(&shell),
                login,
                node_key,
                addrs,
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
            metrics_addr,
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

    /// Supernodes in this node's membership table (any state, itself
    /// included): bounded by `membership::MAX_MEMBERS` + 1.
    pub fn known_members(&self) -> usize {
        self.snapshot.borrow().known_members
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

    /// The supernode certificate this node serves with: `None` until the
    /// login server (or the local issuer) certified it, so a node waiting
    /// for approval neither accepts joins nor links.
    pub fn certificate(&self) -> Option<Certificate> {
        self.shell.credentials().map(|c| c.certificate)
    }

    /// Link attempts refused for a missing or invalid `LinkHello` (no
    /// supernode certificate of the pinned login key on that connection).
    pub fn links_refused(&self) -> u64 {
        self.shell
            .links_refused
            .load(std::sync::atomic::Ordering::Relaxed)
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

    /// The bound address of the Prometheus endpoint, if it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
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
        // The UDP service's threads end and close its sockets now.
        self.shell.udp.stop();
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

/// A certificate for `key` at `addrs` from an in-process issuer: the same
/// [`Issuer::issue`] the login server calls.
fn local_certificate(
    issuer: &Issuer,
    key: &RsaPrivateKey,
    addrs: SupernodeAddrs,
    validity: Duration,
    now_secs: i64,
) -> Certificate {
    let validity = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
    issuer.issue(
        &mut rand::rngs::OsRng,
        &cert::Subject::Supernode {
            key: &key.to_public_key(),
            addrs,
        },
        rand::rngs::OsRng.next_u64() >> 1,
        now_secs.saturating_sub(300),
        now_secs.saturating_add(validity),
    )
}

/// Renews a locally issued certificate when half its validity is gone.
async fn local_renew_loop(
    shell: Arc<Shell>,
    issuer: Arc<Issuer>,
    validity: Duration,
    key: RsaPrivateKey,
    addrs: SupernodeAddrs,
) {
    let period = (validity / 2).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        let certificate = local_certificate(&issuer, &key, addrs, validity, now().unix_secs());
        let credentials = NodeCredentials {
            key: key.clone(),
            certificate,
        };
        if !shell.certified(credentials).await {
            return;
        }
    }
}

/// Why one announce did not bring a certificate.
#[derive(Debug, thiserror::Error)]
enum AnnounceError {
    #[error(transparent)]
    Net(#[from] natter_net::NetError),
    #[error("not approved: run `natter-login supernodes approve {0}` on the login server")]
    NotApproved(String),
    #[error("revoked by the login server: {0}")]
    Revoked(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("unexpected answer {0}")]
    Unexpected(&'static str),
}

/// One signed announce; the certificate the login server answers with.
async fn announce_once(
    shell: &Shell,
    login: SocketAddr,
    key: &RsaPrivateKey,
    addrs: SupernodeAddrs,
    enrol_token: &str,
    sponsor: Option<&crate::Sponsor>,
) -> Result<SupernodeAnnounced, AnnounceError> {
    let public = key.to_public_key();
    let node_id = cert::key_id(&public);
    let reply = natter_net::request_once_bound(
        &shell.endpoint,
        login,
        "natter-login",
        |exporter| {
            Envelope::new(
                1,
                Body::SupernodeAnnounce(SupernodeAnnounce {
                    addr: Some(addrs.quic.into()),
                    node_id: node_id.to_vec(),
                    tcp: addrs.tcp.map(Into::into),
                    public_key: cert::public_key_der(&public),
                    reflector: Some(addrs.reflector.into()),
                    enrol_token: enrol_token.to_owned(),
                    signature: cert::sign(key, &binding::announce_message(exporter, &node_id)),
                    sponsor: sponsor.map(|s| s.certificate.clone()),
                    sponsor_signature: sponsor
                        .map(|s| cert::sign(&s.key, &binding::promote_message(exporter, &node_id)))
                        .unwrap_or_default(),
                }),
            )
        },
        Duration::from_secs(5),
    )
    .await?;
    match reply.body {
        Some(Body::SupernodeAnnounced(a)) => Ok(a),
        Some(Body::Error(e)) if e.code == ErrorCode::NotApproved as i32 => {
            Err(AnnounceError::NotApproved(cert::fingerprint(&public)))
        }
        Some(Body::Error(e)) if e.code == ErrorCode::Revoked as i32 => {
            Err(AnnounceError::Revoked(e.detail))
        }
        Some(Body::Error(e)) => Err(AnnounceError::Refused(e.detail)),
        Some(other) => Err(AnnounceError::Unexpected(other.type_name())),
        None => Err(AnnounceError::Unexpected("empty envelope")),
    }
}

/// Announces this supernode to the login server (signed with the node key,
/// bound to the connection) now and every `announce_interval`; each answer
/// brings a fresh certificate (so it is renewed long before it expires),
/// which the node task installs. Until the key is approved, retries with
/// backoff and says what the operator must do.
async fn announce_loop(
    shell: Arc<Shell>,
    login: SocketAddr,
    key: RsaPrivateKey,
    addrs: SupernodeAddrs,
) {
    let mut token = match &shell.config.certification {
        Certification::LoginServer { enrol_token } => enrol_token.clone().unwrap_or_default(),
        Certification::Local { .. } | Certification::Sponsored(_) => String::new(),
    };
    let sponsor = match &shell.config.certification {
        Certification::Sponsored(sponsor) => Some(sponsor.clone()),
        _ => None,
    };
    let interval = shell.config.announce_interval;
    let mut backoff = Duration::from_millis(500).min(interval);
    loop {
        let wait = match announce_once(&shell, login, &key, addrs, &token, sponsor.as_deref()).await
        {
            Ok(announced) => {
                // A token is good once: the key is approved now.
                token.clear();
                backoff = Duration::from_millis(500).min(interval);
                tracing::debug!(%login, "announced to the login server");
                if let Some(certificate) = announced.certificate {
                    let credentials = NodeCredentials {
                        key: key.clone(),
                        certificate,
                    };
                    if !shell.certified(credentials).await {
                        return;
                    }
                }
                if let Some(list) = announced.revocations
                    && !shell.tell(Event::Revocations(list)).await
                {
                    return;
                }
                interval
            }
            Err(e @ (AnnounceError::NotApproved(_) | AnnounceError::Revoked(_))) => {
                tracing::warn!(%login, "{e}");
                backoff = (backoff * 2).min(interval);
                backoff
            }
            Err(e) => {
                tracing::info!(%login, error = %e, "announcement to the login server failed");
                backoff = (backoff * 2).min(interval);
                backoff
            }
        };
        tokio::time::sleep(wait).await;
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
