//! A joined session with one supernode (docs/PROTOCOL.md, section 5.1 and
//! the session rules of section 8.2).
//!
//! [`SupernodeSession::join`] connects (QUIC, or TLS over TCP where UDP is
//! blocked, see [`dial`]), opens the session stream and proves the user's
//! certified key. Afterwards the stream belongs to a [`Mux`]:
//! [`SupernodeSession::request`] sends a request and waits for the reply
//! with the same request id, while every push (request id 0) goes to a
//! bounded queue read with [`SupernodeSession::next_push`]. When the
//! supernode goes away the push queue ends, which is how the overlay notices
//! it must move on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use natter_net::dial::{QuicTarget, TcpTarget};
use natter_net::tcp::{self, RecordConn};
use natter_net::{
    DialError, DialPlan, EnvelopeRecv, Mux, MuxConfig, MuxError, NetError, Pushes, Transport,
    TransportSettings,
};
use natter_proto::cert::{self, Identity};
use natter_proto::messages::{
    CertificateBody, ChatDelivered, Envelope, ErrorCode, ErrorReply, HostCacheEntry, JoinChallenge,
    JoinHello, JoinProof, JoinStatement, envelope,
};
use natter_proto::statement::SignedStatement;
use natter_proto::{alive, binding};
use prost::Message;
use rsa::RsaPublicKey;
use tokio::sync::Mutex;

pub use natter_net::Connected;

use crate::liveness::{self, LivenessTask};

/// Pushes buffered before the application reads them; beyond, the oldest
/// reader is too slow and new pushes are dropped (and counted).
pub const PUSH_QUEUE: usize = 256;
/// Requests in flight at once.
pub const MAX_PENDING: usize = 64;
/// How long QUIC has to connect before TLS over TCP is tried too (the UDP
/// attempt of a client behind a UDP-blocking firewall costs this much).
pub const TCP_HEAD_START: Duration = Duration::from_millis(400);
/// Time a dial has, both transports together.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS server name presented to supernodes (they are not authenticated by
/// TLS: see natter-net's security model).
const SERVER_NAME: &str = "natter-supernode";

/// Where a supernode listens and which transport to try first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dial {
    /// Its QUIC address (also its name in the host cache).
    pub addr: SocketAddr,
    /// Its TLS-over-TCP listener.
    pub tcp: SocketAddr,
    /// TCP worked last time and QUIC did not: try both at once.
    pub prefer_tcp: bool,
}

impl Dial {
    /// A supernode known only by its QUIC address (TCP on the same IP and port).
    pub fn quic_addr(addr: SocketAddr) -> Self {
        Self {
            addr,
            tcp: addr,
            prefer_tcp: false,
        }
    }

    /// The [`natter_net::dial`] plan: QUIC from `endpoint` (its default,
    /// insecure configuration), TLS over TCP after [`TCP_HEAD_START`], or at
    /// once when `prefer_tcp`.
    pub fn plan(self, endpoint: &quinn::Endpoint) -> Result<DialPlan, NetError> {
        Ok(DialPlan {
            server_name: SERVER_NAME.to_owned(),
            quic: Some(QuicTarget {
                endpoint: endpoint.clone(),
                addr: self.addr,
                // Keep-alives only for the NAT mapping: liveness is the
                // beacons' job (`crate::liveness`).
                config: Some(natter_net::insecure_client_config(
                    &TransportSettings::SESSION,
                )?),
            }),
            tcp: Some(TcpTarget {
                addr: self.tcp,
                config: tcp::insecure_client_tls_config()?,
                settings: TransportSettings::OVERLAY,
            }),
            head_start: if self.prefer_tcp {
                Duration::ZERO
            } else {
                TCP_HEAD_START
            },
            timeout: DIAL_TIMEOUT,
        })
    }
}

/// A TLS-over-TCP connection to a supernode's listener at `addr` (session
/// or relay leg), within `timeout`.
pub(crate) async fn connect_tls(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<RecordConn, NetError> {
    tcp::connect(
        addr,
        SERVER_NAME,
        tcp::insecure_client_tls_config()?,
        TransportSettings::OVERLAY,
        timeout,
    )
    .await
}

/// Connects to a supernode with [`natter_net::dial`], happy-eyeballs style:
/// QUIC first; TLS over TCP when QUIC fails or has not connected after
/// [`TCP_HEAD_START`] (at once when `dial.prefer_tcp`). The first to connect
/// wins, QUIC on a tie.
pub async fn dial(endpoint: &quinn::Endpoint, dial: Dial) -> Result<Connected, SessionError> {
    let addr = dial.addr;
    let plan = dial
        .plan(endpoint)
        .map_err(|source| SessionError::Connect { addr, source })?;
    natter_net::dial(plan)
        .await
        .map_err(|source| SessionError::Dial {
            addr,
            source: Box::new(source),
        })
}

/// What can go wrong talking to a supernode.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot reach supernode {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: NetError,
    },
    #[error("cannot reach supernode {addr}: {source}")]
    Dial {
        addr: SocketAddr,
        #[source]
        source: Box<DialError>,
    },
    #[error("supernode {addr} refused the join: {detail}")]
    Refused { addr: SocketAddr, detail: String },
    #[error("supernode {addr} is not a certified supernode on this connection: {detail}")]
    NotCertified { addr: SocketAddr, detail: String },
    #[error("supernode answered {code:?}: {detail}")]
    Remote { code: ErrorCode, detail: String },
    #[error("supernode {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("the session with supernode {0} is closed")]
    Closed(SocketAddr),
    #[error("supernode sent an unexpected {0}")]
    Unexpected(&'static str),
    #[error("too many requests in flight")]
    Busy,
}

impl SessionError {
    fn remote(reply: ErrorReply) -> Self {
        Self::Remote {
            code: ErrorCode::try_from(reply.code).unwrap_or(ErrorCode::Unspecified),
            detail: reply.detail,
        }
    }
}

/// The user's signed join statement for the supernode `node_id` that
/// challenged with `nonce`: "I, the name my certificate names, am joined
/// there since now" (docs/PROTOCOL.md, section 5.1). It travels with the
/// user's directory record, so that no other supernode can claim to be
/// the user's home.
pub fn join_statement(
    identity: &Identity,
    node_id: &[u8],
    nonce: &[u8],
) -> Result<SignedStatement, SessionError> {
    let body = CertificateBody::decode(identity.certificate.body.as_slice())
        .map_err(|_| SessionError::Unexpected("an unreadable own certificate"))?;
    let joined_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let statement = JoinStatement {
        name: body.name,
        home_node_id: node_id.to_vec(),
        joined_at,
        nonce: nonce.to_vec(),
    };
    Ok(natter_proto::statement::sign(
        &identity.key,
        &mut rand::rngs::OsRng,
        &statement,
    ))
}

/// Checks a supernode's `JoinChallenge` before the client answers it: a
/// SUPERNODE certificate of the pinned `login_key`, valid at `now`, for
/// the challenge's node id and the QUIC address `addr` being joined, and
/// the certified key's signature over the nonce bound to this connection's
/// `exporter`. A rogue relaying an honest supernode's challenge (another
/// connection, another exporter) fails here, and so does anyone without a
/// certificate.
pub fn check_challenge(
    challenge: &JoinChallenge,
    exporter: &binding::Exporter,
    addr: SocketAddr,
    login_key: &RsaPublicKey,
    now: i64,
) -> Result<cert::VerifiedSupernode, SessionError> {
    let refuse = |detail: String| SessionError::NotCertified { addr, detail };
    let certificate = challenge
        .certificate
        .as_ref()
        .ok_or_else(|| refuse("the challenge carries no certificate".into()))?;
    let verified = cert::verify_supernode(certificate, login_key, now)
        .map_err(|e| refuse(format!("certificate: {e}")))?;
    if challenge.node_id != verified.node_id {
        return Err(refuse("the certificate is for another node id".into()));
    }
    if verified.addrs.quic != addr {
        return Err(refuse(format!(
            "the certificate is for {}, not {addr}",
            verified.addrs.quic
        )));
    }
    let message = binding::supernode_join_message(exporter, &challenge.nonce);
    cert::verify_signature(&verified.public_key, &message, &challenge.signature)
        .map_err(|_| refuse("the challenge signature is not for this connection".into()))?;
    Ok(verified)
}

/// A joined session.
#[derive(Debug)]
pub struct SupernodeSession {
    addr: SocketAddr,
    mux: Arc<Mux>,
    pushes: Mutex<Pushes>,
    observed_addr: Option<SocketAddr>,
    reflector: Option<SocketAddr>,
    supernodes: Vec<HostCacheEntry>,
    rtt: Duration,
    /// The supernode waits for `ChatDelivered` (its `JoinAccepted` said
    /// so; an older one does not, and is sent none).
    acks_chat: bool,
    /// The liveness check of a QUIC session (`None` over TLS).
    liveness: Option<LivenessTask>,
}

impl SupernodeSession {
    /// Connects to `addr` (QUIC, falling back to TLS over TCP on the same
    /// IP and port) and joins as `identity`, all within `timeout`.
    pub async fn join(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        identity: &Identity,
        login_key: &RsaPublicKey,
        timeout: Duration,
    ) -> Result<Self, SessionError> {
        let started = Instant::now();
        tokio::time::timeout(timeout, async {
            let connected = dial(endpoint, Dial::quic_addr(addr)).await?;
            // An endpoint bound to one address sends from it: so must the
            // beacons (the ticket is for the address the supernode sees).
            let local_ip = endpoint
                .local_addr()
                .ok()
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified());
            Self::join_inner(connected, addr, identity, login_key, started, local_ip).await
        })
        .await
        .map_err(|_| SessionError::Timeout(addr))?
    }

    /// Opens the QUIC connection only (the cheap part to race between
    /// candidates); finish with [`Self::join_on`].
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, SessionError> {
        let connect = |source| SessionError::Connect { addr, source };
        endpoint
            .connect(addr, "natter-supernode")
            .map_err(|e| connect(NetError::from(e)))?
            .await
            .map_err(|e| connect(NetError::from(e)))
    }

    /// Joins as `identity` over an open connection to the supernode whose
    /// QUIC address is `addr`, within `timeout`.
    pub async fn join_on(
        connected: Connected,
        addr: SocketAddr,
        identity: &Identity,
        login_key: &RsaPublicKey,
        timeout: Duration,
    ) -> Result<Self, SessionError> {
        let started = Instant::now();
        tokio::time::timeout(
            timeout,
            Self::join_inner(connected, addr, identity, login_key, started, None),
        )
        .await
        .map_err(|_| SessionError::Timeout(addr))?
    }

    async fn join_inner(
        connected: Connected,
        addr: SocketAddr,
        identity: &Identity,
        login_key: &RsaPublicKey,
        started: Instant,
        local_ip: Option<std::net::IpAddr>,
    ) -> Result<Self, SessionError> {
        let connect = |source| SessionError::Connect { addr, source };
        let quic = connected.transport() == Transport::Quic;
        let (connection, mut send, mut recv) = connected.open_control().await.map_err(connect)?;
        let exporter = connection.exporter().map_err(connect)?;

        let hello = Envelope::new(
            1,
            envelope::Body::JoinHello(JoinHello {
                certificate: Some(identity.certificate.clone()),
                acks_chat: true,
                // A QUIC session runs the liveness check (`crate::liveness`);
                // over TLS both ends send keep-alive records instead.
                beacons: quic,
            }),
        );
        send.send(&hello).await.map_err(connect)?;
        let challenge = match next_body(&mut recv, addr).await? {
            envelope::Body::JoinChallenge(c) => c,
            envelope::Body::Error(e) => return Err(refused(addr, e)),
            other => return Err(SessionError::Unexpected(other.type_name())),
        };
        check_challenge(
            &challenge,
            &exporter,
            addr,
            login_key,
            crate::now_unix_secs(),
        )?;
        let signed = join_statement(identity, &challenge.node_id, &challenge.nonce)?;
        let signature = identity.sign(&binding::join_proof_message(
            &exporter,
            &challenge.node_id,
            &challenge.nonce,
            &signed.statement,
        ));
        let proof = Envelope::new(
            2,
            envelope::Body::JoinProof(JoinProof {
                signature,
                statement: signed.statement,
                statement_signature: signed.signature,
            }),
        );
        send.send(&proof).await.map_err(connect)?;
        let accepted = match next_body(&mut recv, addr).await? {
            envelope::Body::JoinAccepted(a) => a,
            envelope::Body::Error(e) => return Err(refused(addr, e)),
            other => return Err(SessionError::Unexpected(other.type_name())),
        };
        let rtt = started.elapsed();

        let (mux, pushes) = Mux::start(
            connection,
            send,
            recv,
            MuxConfig {
                first_id: 3,
                max_pending: MAX_PENDING,
                push_queue: PUSH_QUEUE,
            },
        );
        let mux = Arc::new(mux);
        let reflector = accepted
            .reflector
            .as_ref()
            .and_then(|a| SocketAddr::try_from(a).ok());
        let ticket = alive::Ticket::from_bytes(&accepted.alive_ticket);
        let liveness = liveness::needed(&mux)
            .then(|| liveness::spawn(Arc::downgrade(&mux), reflector, ticket, local_ip));
        Ok(Self {
            addr,
            mux,
            pushes: Mutex::new(pushes),
            observed_addr: accepted
                .observed_addr
                .as_ref()
                .and_then(|a| SocketAddr::try_from(a).ok()),
            reflector,
            supernodes: accepted.supernodes,
            rtt,
            acks_chat: accepted.acks_chat,
            liveness,
        })
    }

    /// The supernode's (QUIC) address, its name in the host cache.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The transport of the session: TLS over TCP means UDP did not work.
    pub fn transport(&self) -> Transport {
        self.mux.connection().transport()
    }

    /// This client's address as the supernode saw it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        self.observed_addr
    }

    /// The supernode's UDP service (STUN reflector and relay), if it has one.
    pub fn reflector(&self) -> Option<SocketAddr> {
        self.reflector
    }

    /// Supernodes the join reply listed (for the host cache).
    pub fn supernodes(&self) -> &[HostCacheEntry] {
        &self.supernodes
    }

    /// Time the join took (connect + two round trips).
    pub fn join_rtt(&self) -> Duration {
        self.rtt
    }

    /// Pushes dropped because the application read them too slowly.
    pub fn dropped_pushes(&self) -> u64 {
        self.mux.dropped_pushes()
    }

    /// When the supernode's UDP service last echoed this session's liveness
    /// beacon (`None` over TLS, or before the first echo): this side's UDP
    /// to the supernode's relay port worked both ways then.
    pub fn udp_echoed_at(&self) -> Option<std::time::Instant> {
        self.liveness.as_ref().and_then(LivenessTask::last_echo)
    }

    /// Whether the connection is still up.
    pub fn is_alive(&self) -> bool {
        !self.mux.connection().is_closed()
    }

    /// Sends `body` and waits up to `timeout` for its reply. An `ErrorReply`
    /// becomes [`SessionError::Remote`].
    pub async fn request(
        &self,
        body: envelope::Body,
        timeout: Duration,
    ) -> Result<envelope::Body, SessionError> {
        let reply = self.mux.request(body, timeout).await.map_err(|e| match e {
            MuxError::Busy => SessionError::Busy,
            MuxError::Timeout(_) => SessionError::Timeout(self.addr),
            _ => SessionError::Closed(self.addr),
        })?;
        match reply.body {
            Some(envelope::Body::Error(e)) => Err(SessionError::remote(e)),
            Some(body) => Ok(body),
            None => Err(SessionError::Unexpected("empty reply")),
        }
    }

    /// Whether the supernode counts pushed chat as delivered only once
    /// acknowledged ([`Self::chat_delivered`]).
    pub fn acks_chat(&self) -> bool {
        self.acks_chat
    }

    /// Tells the supernode that the pushed chat `message_ids` is stored in
    /// the inbox (or was refused): it may be deleted from the mailbox. A
    /// supernode that did not ask for acknowledgements is sent nothing.
    pub async fn chat_delivered(
        &self,
        message_ids: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(), SessionError> {
        if !self.acks_chat || message_ids.is_empty() {
            return Ok(());
        }
        self.request(
            envelope::Body::ChatDelivered(ChatDelivered { message_ids }),
            timeout,
        )
        .await
        .map(drop)
    }

    /// The next push from the supernode; `None` once the session ended.
    pub async fn next_push(&self) -> Option<envelope::Body> {
        self.pushes.lock().await.next().await.and_then(|e| e.body)
    }

    /// Leaves politely (best effort) and closes the connection.
    pub async fn leave(&self) {
        let _ = self
            .request(
                envelope::Body::Leave(Default::default()),
                Duration::from_millis(500),
            )
            .await;
        self.mux.close(0, b"leave");
    }

    /// Closes the connection at once.
    pub fn close(&self) {
        self.mux.close(0, b"bye");
    }
}

fn refused(addr: SocketAddr, e: ErrorReply) -> SessionError {
    let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
    SessionError::Refused {
        addr,
        detail: format!("{}: {}", code.as_str_name(), e.detail),
    }
}

async fn next_body(
    recv: &mut EnvelopeRecv,
    addr: SocketAddr,
) -> Result<envelope::Body, SessionError> {
    recv.next()
        .await
        .map_err(|_| SessionError::Closed(addr))?
        .and_then(|e| e.body)
        .ok_or(SessionError::Closed(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_supernode_that_worked_over_tcp_is_dialled_on_both_transports_at_once() {
        let endpoint = natter_net::client_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &TransportSettings::OVERLAY,
        )
        .unwrap();
        let addr: SocketAddr = "192.0.2.7:443".parse().unwrap();
        let tcp: SocketAddr = "192.0.2.7:8443".parse().unwrap();

        let fresh = Dial::quic_addr(addr).plan(&endpoint).unwrap();
        assert_eq!(fresh.head_start, TCP_HEAD_START);
        assert_eq!(fresh.quic.as_ref().map(|q| q.addr), Some(addr));
        assert_eq!(fresh.tcp.as_ref().map(|t| t.addr), Some(addr));
        assert_eq!(fresh.server_name, SERVER_NAME);

        let tcp_last_time = Dial {
            addr,
            tcp,
            prefer_tcp: true,
        }
        .plan(&endpoint)
        .unwrap();
        assert_eq!(tcp_last_time.head_start, Duration::ZERO);
        assert_eq!(tcp_last_time.tcp.as_ref().map(|t| t.addr), Some(tcp));
        assert_eq!(tcp_last_time.quic.as_ref().map(|q| q.addr), Some(addr));
    }
}
