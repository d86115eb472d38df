//! A joined session with one supernode (docs/PROTOCOL.md, section 5.1 and
//! the session rules of section 8.2).
//!
//! [`SupernodeSession::join`] connects (QUIC, or TLS over TCP where UDP is
//! blocked, see [`dial`]), opens the session stream and proves the user's
//! certified key. Afterwards [`SupernodeSession::request`]
//! sends a request and waits for the reply with the same request id, while a
//! reader task hands every push (request id 0) to a bounded queue read with
//! [`SupernodeSession::next_push`]. When the supernode goes away the push
//! queue ends, which is how the overlay notices it must move on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use natter_net::tcp::{self, RecordConn};
use natter_net::{
    ControlConn, EnvelopeRecv, EnvelopeSend, FramedRecv, FramedSend, NetError, Transport,
    TransportSettings,
};
use natter_proto::cert::{Identity, join_proof_message};
use natter_proto::messages::{
    Envelope, ErrorCode, ErrorReply, HostCacheEntry, JoinHello, JoinProof, envelope,
};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Pushes buffered before the application reads them; beyond, the oldest
/// reader is too slow and new pushes are dropped (and counted).
pub const PUSH_QUEUE: usize = 256;
/// Requests in flight at once.
pub const MAX_PENDING: usize = 64;
/// How long QUIC has to connect before TLS over TCP is tried too (the UDP
/// attempt of a client behind a UDP-blocking firewall costs this much).
pub const TCP_HEAD_START: Duration = Duration::from_millis(400);
/// TLS server name presented to supernodes (they are not authenticated by
/// TLS: see natter-net's security model).
const SERVER_NAME: &str = "natter-supernode";

/// A connection to a supernode, before the join.
#[derive(Debug)]
pub enum Connected {
    Quic(quinn::Connection),
    Tls(RecordConn),
}

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

/// Connects to a supernode, happy-eyeballs style: QUIC first; TLS over TCP
/// when QUIC fails or has not connected after [`TCP_HEAD_START`] (at once
/// when `dial.prefer_tcp`). The first to connect wins, QUIC on a tie.
pub async fn dial(endpoint: &quinn::Endpoint, dial: Dial) -> Result<Connected, SessionError> {
    let addr = dial.addr;
    let quic = SupernodeSession::connect(endpoint, addr);
    let tls = async {
        connect_tls(dial.tcp, Duration::from_secs(10))
            .await
            .map_err(|source| SessionError::Connect {
                addr: dial.tcp,
                source,
            })
    };
    tokio::pin!(quic, tls);
    let head_start = if dial.prefer_tcp {
        Duration::ZERO
    } else {
        TCP_HEAD_START
    };
    let delay = tokio::time::sleep(head_start);
    tokio::pin!(delay);
    let mut quic_error = None;
    let mut tls_error = None;
    let mut tls_started = dial.prefer_tcp;
    loop {
        tokio::select! {
            biased;
            result = &mut quic, if quic_error.is_none() => match result {
                Ok(c) => return Ok(Connected::Quic(c)),
                Err(e) => {
                    quic_error = Some(e);
                    tls_started = true;
                }
            },
            result = &mut tls, if tls_started && tls_error.is_none() => match result {
                Ok(c) => return Ok(Connected::Tls(c)),
                Err(e) => tls_error = Some(e),
            },
            () = &mut delay, if !tls_started => tls_started = true,
        }
        if quic_error.is_some()
            && let Some(tls) = tls_error.take()
        {
            return Err(tls);
        }
    }
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
    #[error("supernode {addr} refused the join: {detail}")]
    Refused { addr: SocketAddr, detail: String },
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

type Pending = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Envelope>>>>;

/// A joined session.
#[derive(Debug)]
pub struct SupernodeSession {
    addr: SocketAddr,
    connection: ControlConn,
    send: Mutex<EnvelopeSend>,
    pending: Pending,
    next_id: AtomicU64,
    pushes: Mutex<mpsc::Receiver<Envelope>>,
    dropped_pushes: Arc<AtomicU64>,
    observed_addr: Option<SocketAddr>,
    reflector: Option<SocketAddr>,
    supernodes: Vec<HostCacheEntry>,
    rtt: Duration,
}

impl SupernodeSession {
    /// Connects to `addr` (QUIC, falling back to TLS over TCP on the same
    /// IP and port) and joins as `identity`, all within `timeout`.
    pub async fn join(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        identity: &Identity,
        timeout: Duration,
    ) -> Result<Self, SessionError> {
        let started = Instant::now();
        tokio::time::timeout(timeout, async {
            let connected = dial(endpoint, Dial::quic_addr(addr)).await?;
            Self::join_inner(connected, addr, identity, started).await
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
        timeout: Duration,
    ) -> Result<Self, SessionError> {
        let started = Instant::now();
        tokio::time::timeout(
            timeout,
            Self::join_inner(connected, addr, identity, started),
        )
        .await
        .map_err(|_| SessionError::Timeout(addr))?
    }

    async fn join_inner(
        connected: Connected,
        addr: SocketAddr,
        identity: &Identity,
        started: Instant,
    ) -> Result<Self, SessionError> {
        let connect = |source| SessionError::Connect { addr, source };
        let (connection, mut send, mut recv) = match connected {
            Connected::Quic(connection) => {
                let (send, recv) = connection
                    .open_bi()
                    .await
                    .map_err(|e| connect(NetError::from(e)))?;
                (
                    ControlConn::Quic(connection),
                    EnvelopeSend::Quic(FramedSend::new(send)),
                    EnvelopeRecv::Quic(FramedRecv::new(recv)),
                )
            }
            Connected::Tls(conn) => {
                let (reader, handle) = conn.split();
                (
                    ControlConn::Tls(handle.clone()),
                    EnvelopeSend::Tls(handle),
                    EnvelopeRecv::Tls(reader),
                )
            }
        };

        let hello = Envelope::new(
            1,
            envelope::Body::JoinHello(JoinHello {
                certificate: Some(identity.certificate.clone()),
            }),
        );
        send.send(&hello).await.map_err(connect)?;
        let challenge = match next_body(&mut recv, addr).await? {
            envelope::Body::JoinChallenge(c) => c,
            envelope::Body::Error(e) => return Err(refused(addr, e)),
            other => return Err(SessionError::Unexpected(other.type_name())),
        };
        let signature = identity.sign(&join_proof_message(&challenge.node_id, &challenge.nonce));
        let proof = Envelope::new(2, envelope::Body::JoinProof(JoinProof { signature }));
        send.send(&proof).await.map_err(connect)?;
        let accepted = match next_body(&mut recv, addr).await? {
            envelope::Body::JoinAccepted(a) => a,
            envelope::Body::Error(e) => return Err(refused(addr, e)),
            other => return Err(SessionError::Unexpected(other.type_name())),
        };
        let rtt = started.elapsed();

        let pending: Pending = Arc::default();
        let dropped_pushes = Arc::new(AtomicU64::new(0));
        let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE);
        tokio::spawn(read_loop(
            recv,
            pending.clone(),
            push_tx,
            dropped_pushes.clone(),
        ));
        Ok(Self {
            addr,
            connection,
            send: Mutex::new(send),
            pending,
            next_id: AtomicU64::new(3),
            pushes: Mutex::new(push_rx),
            dropped_pushes,
            observed_addr: accepted
                .observed_addr
                .as_ref()
                .and_then(|a| SocketAddr::try_from(a).ok()),
            reflector: accepted
                .reflector
                .as_ref()
                .and_then(|a| SocketAddr::try_from(a).ok()),
            supernodes: accepted.supernodes,
            rtt,
        })
    }

    /// The supernode's (QUIC) address, its name in the host cache.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The transport of the session: TLS over TCP means UDP did not work.
    pub fn transport(&self) -> Transport {
        self.connection.transport()
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
        self.dropped_pushes.load(Ordering::Relaxed)
    }

    /// Whether the connection is still up.
    pub fn is_alive(&self) -> bool {
        !self.connection.is_closed()
    }

    /// Sends `body` and waits up to `timeout` for its reply. An `ErrorReply`
    /// becomes [`SessionError::Remote`].
    pub async fn request(
        &self,
        body: envelope::Body,
        timeout: Duration,
    ) -> Result<envelope::Body, SessionError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| SessionError::Closed(self.addr))?;
            if pending.len() >= MAX_PENDING {
                return Err(SessionError::Busy);
            }
            pending.insert(id, tx);
        }
        let result = async {
            self.send
                .lock()
                .await
                .send(&Envelope::new(id, body))
                .await
                .map_err(|_| SessionError::Closed(self.addr))?;
            match tokio::time::timeout(timeout, rx).await {
                Err(_) => Err(SessionError::Timeout(self.addr)),
                Ok(Err(_)) => Err(SessionError::Closed(self.addr)),
                Ok(Ok(reply)) => match reply.body {
                    Some(envelope::Body::Error(e)) => Err(SessionError::remote(e)),
                    Some(body) => Ok(body),
                    None => Err(SessionError::Unexpected("empty reply")),
                },
            }
        }
        .await;
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&id);
        }
        result
    }

    /// The next push from the supernode; `None` once the session ended.
    pub async fn next_push(&self) -> Option<envelope::Body> {
        self.pushes.lock().await.recv().await.and_then(|e| e.body)
    }

    /// Leaves politely (best effort) and closes the connection.
    pub async fn leave(&self) {
        let _ = self
            .request(
                envelope::Body::Leave(Default::default()),
                Duration::from_millis(500),
            )
            .await;
        self.connection.close(0, b"leave");
    }

    /// Closes the connection at once.
    pub fn close(&self) {
        self.connection.close(0, b"bye");
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

/// Routes replies to their waiting requests and pushes to the bounded queue.
async fn read_loop(
    mut recv: EnvelopeRecv,
    pending: Pending,
    pushes: mpsc::Sender<Envelope>,
    dropped: Arc<AtomicU64>,
) {
    while let Ok(Some(envelope)) = recv.next().await {
        if envelope.request_id != 0 {
            let waiter = pending
                .lock()
                .ok()
                .and_then(|mut p| p.remove(&envelope.request_id));
            if let Some(waiter) = waiter {
                let _ = waiter.send(envelope);
            }
            continue;
        }
        if pushes.try_send(envelope).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Dropping `pushes` ends `next_push`; dropping the waiters fails requests.
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
}
