//! [`LoginClient`]: requests to the login server over QUIC (one
//! bidirectional stream per request: write one frame, finish, read one
//! frame; docs/PROTOCOL.md section 8.1) or, where UDP is blocked, over TLS
//! on TCP (requests and replies as ENVELOPE records on one connection,
//! matched by `request_id` with [`natter_net::Mux`]). Only how a request
//! travels differs (the private `Link`); ids, the deadline, error mapping and
//! reply checks are shared.
//!
//! [`LoginClient::connect_to`] races the two with [`natter_net::dial`]
//! ("happy eyeballs"): QUIC starts at once; TLS over TCP starts when QUIC
//! has not connected within a short head start ([`TCP_HEAD_START`]), or at
//! once if QUIC fails outright. The first connection up wins; QUIC when both
//! are ready. Both pin the login server's signing key the same way
//! ([`crate::tls::login_verifier`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use natter_net::dial::{QuicTarget, TcpTarget};
use natter_net::{
    Connected, ControlConn, DialError, DialPlan, Mux, MuxConfig, MuxError, TransportSettings,
};
use natter_proto::cert::{self, VerifiedCertificate};
use natter_proto::frame::{self, FrameDecoder};
use natter_proto::messages::{
    BuddyBlob, BuddyBlobGet, BuddyBlobPut, Certificate, Envelope, HostCacheEntry, LoginRequest,
    RegisterRequest, envelope::Body,
};
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::ClientError;
use crate::tls::{TLS_SERVER_NAME, client_config, tcp_client_config};

pub use natter_net::Transport;

/// Default time to wait for a reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Default time to get a connection up, over either transport.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long QUIC may try alone before TLS over TCP is tried alongside.
pub const TCP_HEAD_START: Duration = Duration::from_millis(300);

/// Requests in flight at once on one TLS-over-TCP login connection (on
/// QUIC, concurrent requests are concurrent streams, bounded by the
/// server's stream limit).
pub const MAX_PENDING: usize = 256;

/// Transport settings of a login connection, QUIC and TLS over TCP alike:
/// it sends no keep-alives of its own (the interval is longer than the idle
/// timeout), so the server closes it after its idle timeout when unused; on
/// TCP the server's keepalives keep it from looking dead to us.
pub const LOGIN_SETTINGS: TransportSettings = TransportSettings {
    keep_alive: Duration::from_secs(24 * 60 * 60),
    idle_timeout: Duration::from_secs(20),
    max_bidi_streams: 8,
};

/// A successful login.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// The certificate as received.
    pub certificate: Certificate,
    /// Its verified contents.
    pub verified: VerifiedCertificate,
    /// The server's clock at issuance (unix milliseconds).
    pub server_time_ms: i64,
    /// Supernodes the login server knows (seed for the host cache).
    pub supernodes: Vec<HostCacheEntry>,
}

/// Where to reach a login server, and how long to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginTarget {
    /// QUIC (UDP) address; `None` to use TLS over TCP only.
    pub quic: Option<SocketAddr>,
    /// TLS-over-TCP address; `None` to use QUIC only.
    pub tcp: Option<SocketAddr>,
    /// How long QUIC tries alone before TCP is tried too.
    pub head_start: Duration,
    /// Time to get a connection up over either transport.
    pub timeout: Duration,
}

impl LoginTarget {
    /// QUIC and TLS over TCP on the same address (deployments serve both on
    /// port 443), with the default head start and timeout.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            quic: Some(addr),
            tcp: Some(addr),
            head_start: TCP_HEAD_START,
            timeout: CONNECT_TIMEOUT,
        }
    }

    /// QUIC only (no fallback).
    pub fn quic_only(addr: SocketAddr) -> Self {
        Self {
            tcp: None,
            ..Self::new(addr)
        }
    }

    /// TLS over TCP only.
    pub fn tcp_only(addr: SocketAddr) -> Self {
        Self {
            quic: None,
            ..Self::new(addr)
        }
    }

    /// The same target with TLS over TCP at `tcp` (`--login-tcp`).
    pub fn with_tcp(self, tcp: SocketAddr) -> Self {
        Self {
            tcp: Some(tcp),
            ..self
        }
    }
}

impl From<SocketAddr> for LoginTarget {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr)
    }
}

impl From<&LoginTarget> for LoginTarget {
    fn from(target: &LoginTarget) -> Self {
        *target
    }
}

impl fmt::Display for LoginTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.quic, self.tcp) {
            (Some(q), Some(t)) if q == t => write!(f, "{q}"),
            (Some(q), Some(t)) => write!(f, "{q} (TCP {t})"),
            (Some(q), None) => write!(f, "{q}"),
            (None, Some(t)) => write!(f, "{t} (TCP)"),
            (None, None) => write!(f, "no address"),
        }
    }
}

/// How requests travel to the login server: the one thing that differs
/// between the transports.
#[derive(Debug)]
enum Link {
    /// One bidirectional stream per request (docs/PROTOCOL.md section 8.1);
    /// concurrent requests are concurrent streams.
    Quic {
        /// Kept to let the close go out.
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
    },
    /// One connection; requests and replies matched by `request_id`.
    Tls(Mux),
}

impl Link {
    /// Sends `request` and returns the reply it gets: on QUIC the one
    /// envelope on the request's stream, on TLS the envelope with its id.
    /// The caller bounds the whole exchange by `timeout`; the multiplexer
    /// is given the same bound.
    async fn exchange(
        &self,
        request: &Envelope,
        timeout: Duration,
    ) -> Result<Envelope, ClientError> {
        match self {
            Link::Quic { conn, .. } => {
                let bytes = frame::to_frame(request)
                    .map_err(|e| ClientError::Protocol(format!("request: {e}")))?;
                one_reply(&stream_exchange(conn, &bytes).await?)
            }
            Link::Tls(mux) => Ok(mux.exchange(request.clone(), timeout).await?),
        }
    }

    /// The connection's TLS exporter, which the login proof is bound to.
    fn exporter(&self) -> Result<natter_proto::binding::Exporter, ClientError> {
        let exporter = match self {
            Link::Quic { conn, .. } => natter_net::exporter::quic_exporter(conn),
            Link::Tls(mux) => mux.connection().exporter(),
        };
        exporter.map_err(|e| ClientError::Protocol(format!("TLS exporter: {e}")))
    }
}

/// Writes `bytes` on a new QUIC stream, finishes it, and returns everything
/// the server writes back until it finishes its side.
async fn stream_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(connection_error)?;
    send.write_all(bytes).await.map_err(|e| match e {
        quinn::WriteError::ConnectionLost(c) => connection_error(c),
        other => closed(other),
    })?;
    let _ = send.finish();
    recv.read_to_end(2 * frame::MAX_FRAME_LEN)
        .await
        .map_err(|e| match e {
            quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(c)) => connection_error(c),
            other => closed(other),
        })
}

/// The one reply frame a stream carried (nothing before or after it).
fn one_reply(bytes: &[u8]) -> Result<Envelope, ClientError> {
    let mut decoder = FrameDecoder::default();
    decoder
        .handle_data(bytes)
        .map_err(|e| ClientError::Protocol(format!("reply: {e}")))?;
    match decoder.poll_frame() {
        Some(Ok(envelope)) if decoder.buffered() == 0 => Ok(envelope),
        Some(Ok(_)) => Err(ClientError::Protocol(
            "more than one reply frame on a request stream".into(),
        )),
        Some(Err(e)) => Err(ClientError::Protocol(format!("reply: {e}"))),
        None => Err(ClientError::Protocol("empty or truncated reply".into())),
    }
}

/// A connection to a login server whose signing key is pinned, over QUIC
/// (one bidirectional stream per request) or TLS over TCP (requests
/// multiplexed by `request_id`); several requests may be in flight at once
/// on either.
#[derive(Debug)]
pub struct LoginClient {
    link: Link,
    remote: SocketAddr,
    login_key: RsaPublicKey,
    next_id: AtomicU64,
    timeout: Duration,
}

fn closed(e: impl std::fmt::Display) -> ClientError {
    ClientError::ConnectionClosed(e.to_string())
}

fn connection_error(e: quinn::ConnectionError) -> ClientError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ClientError::ConnectionClosed(String::from_utf8_lossy(&close.reason).into_owned())
        }
        quinn::ConnectionError::TimedOut => ClientError::Timeout,
        other => closed(other),
    }
}

impl From<MuxError> for ClientError {
    fn from(e: MuxError) -> Self {
        match e {
            MuxError::Timeout(_) => ClientError::Timeout,
            MuxError::DuplicateId(id) => {
                ClientError::Protocol(format!("request id {id} is already in flight"))
            }
            MuxError::Closed { reason } => ClientError::ConnectionClosed(reason),
            other => closed(other),
        }
    }
}

/// A client-only QUIC endpoint on the unspecified address of `addr`'s family.
fn quic_endpoint(addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(bind)
}

impl LoginClient {
    /// Connects to the login server at `addr`, QUIC first with a fallback
    /// to TLS over TCP on the same address, trusting only `login_key`.
    pub async fn connect(addr: SocketAddr, login_key: RsaPublicKey) -> Result<Self, ClientError> {
        Self::connect_to(&LoginTarget::new(addr), login_key).await
    }

    /// Connects to `target`, trusting only `login_key`, with
    /// [`natter_net::dial`]: QUIC at once, TLS over TCP after
    /// `target.head_start` (or as soon as QUIC fails); the first connection
    /// up wins, QUIC when both are. When both fail, the error names both
    /// attempts.
    pub async fn connect_to(
        target: &LoginTarget,
        login_key: RsaPublicKey,
    ) -> Result<Self, ClientError> {
        if target.quic.is_none() && target.tcp.is_none() {
            return Err(ClientError::Usage(
                "no login server address (QUIC or TCP)".into(),
            ));
        }
        let quic = match target.quic {
            None => None,
            Some(addr) => {
                let endpoint = quic_endpoint(addr).map_err(|e| ClientError::Connect {
                    addr: target.to_string(),
                    detail: format!("QUIC: cannot bind a UDP socket: {e}"),
                })?;
                Some(QuicTarget {
                    endpoint,
                    addr,
                    config: Some(client_config(&login_key, &LOGIN_SETTINGS)?),
                })
            }
        };
        let endpoint = quic.as_ref().map(|q| q.endpoint.clone());
        let tcp = match target.tcp {
            None => None,
            Some(addr) => Some(TcpTarget {
                addr,
                config: tcp_client_config(&login_key)?,
                settings: LOGIN_SETTINGS,
            }),
        };
        let plan = DialPlan {
            server_name: TLS_SERVER_NAME.to_owned(),
            quic,
            tcp,
            head_start: target.head_start,
            timeout: target.timeout,
        };
        let connected = natter_net::dial(plan)
            .await
            .map_err(|e| Self::both_failed(target, &e))?;
        let remote = connected.remote_address();
        let link = match connected {
            Connected::Quic(conn) => match endpoint {
                Some(endpoint) => Link::Quic { endpoint, conn },
                // dial connects over QUIC only when given a QUIC target.
                None => return Err(closed("QUIC connection without a QUIC target")),
            },
            connected @ Connected::Tls(_) => {
                let (conn, send, recv) = connected.open_control().await.map_err(closed)?;
                let (mux, _pushes) = Mux::start(
                    conn,
                    send,
                    recv,
                    MuxConfig {
                        first_id: 1,
                        max_pending: MAX_PENDING,
                        // The login server sends no pushes: any is dropped
                        // and counted.
                        push_queue: 1,
                    },
                );
                Link::Tls(mux)
            }
        };
        Ok(Self {
            link,
            remote,
            login_key,
            next_id: AtomicU64::new(1),
            timeout: REQUEST_TIMEOUT,
        })
    }

    fn both_failed(target: &LoginTarget, e: &DialError) -> ClientError {
        let mut detail = e.to_string();
        if e.is_certificate() {
            detail.push_str(" (is --login-key the key of this login server?)");
        }
        ClientError::Connect {
            addr: target.to_string(),
            detail,
        }
    }

    /// Connects over QUIC only (no fallback).
    pub async fn connect_quic(
        addr: SocketAddr,
        login_key: RsaPublicKey,
    ) -> Result<Self, ClientError> {
        Self::connect_to(&LoginTarget::quic_only(addr), login_key).await
    }

    /// Connects over TLS on TCP only.
    pub async fn connect_tcp(
        addr: SocketAddr,
        login_key: RsaPublicKey,
    ) -> Result<Self, ClientError> {
        Self::connect_to(&LoginTarget::tcp_only(addr), login_key).await
    }

    /// The transport this client connected over.
    pub fn transport(&self) -> Transport {
        match self.link {
            Link::Quic { .. } => Transport::Quic,
            Link::Tls(_) => Transport::Tls,
        }
    }

    /// The login server's address on that transport.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// This connection's TLS exporter (what the login proof is bound to).
    pub fn exporter(&self) -> Result<natter_proto::binding::Exporter, ClientError> {
        self.link.exporter()
    }

    /// The pinned signing key.
    pub fn login_key(&self) -> &RsaPublicKey {
        &self.login_key
    }

    /// The QUIC connection, when connected over QUIC (tests use it).
    pub fn quic_connection(&self) -> Option<&quinn::Connection> {
        match &self.link {
            Link::Quic { conn, .. } => Some(conn),
            Link::Tls(_) => None,
        }
    }

    /// On TLS over TCP: the close code and reason once the connection is
    /// closed (by either side). `None` while open, and on QUIC.
    pub fn tcp_close_reason(&self) -> Option<(u32, String)> {
        match &self.link {
            Link::Tls(mux) => match mux.connection() {
                ControlConn::Tls(handle) => handle.close_reason(),
                ControlConn::Quic(_) => None,
            },
            Link::Quic { .. } => None,
        }
    }

    /// Sends raw bytes on a new QUIC stream, finishes it, and returns
    /// everything the server writes back (what [`Self::exchange`] does with
    /// one request frame). For tests and diagnostics; QUIC only (raw bytes
    /// on TLS over TCP need a raw TLS stream, see the login-server tests).
    pub async fn raw_exchange(&self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        let Link::Quic { conn, .. } = &self.link else {
            return Err(ClientError::Usage(
                "raw_exchange needs a QUIC connection; this one is TLS over TCP".into(),
            ));
        };
        tokio::time::timeout(self.timeout, stream_exchange(conn, bytes))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Sends one request envelope as is (its `request_id` included) and
    /// returns the reply envelope, whose id must match. Several may be in
    /// flight at once on either transport: on QUIC each on its own stream,
    /// on TLS over TCP matched by id (which must then not be in flight).
    pub async fn exchange(&self, request: &Envelope) -> Result<Envelope, ClientError> {
        let id = request.request_id;
        let envelope =
            tokio::time::timeout(self.timeout, self.link.exchange(request, self.timeout))
                .await
                .map_err(|_| ClientError::Timeout)??;
        if envelope.request_id != id {
            return Err(ClientError::Protocol(format!(
                "reply to request {} for request {id}",
                envelope.request_id
            )));
        }
        Ok(envelope)
    }

    /// Sends one request and returns the reply body; an error reply is
    /// mapped to a [`ClientError`] naming `name`.
    pub async fn request(&self, body: Body, name: &str) -> Result<Body, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let envelope = self.exchange(&Envelope::new(id, body)).await?;
        match envelope.body {
            Some(Body::Error(e)) => Err(ClientError::from_reply(e, name)),
            Some(body) => Ok(body),
            None => Err(ClientError::Protocol("reply has no body".into())),
        }
    }

    fn unexpected(body: &Body) -> ClientError {
        ClientError::Protocol(format!("unexpected reply {}", body.type_name()))
    }

    /// Registers `name`; returns the normalised name.
    pub async fn register(&self, name: &str, password: &str) -> Result<String, ClientError> {
        let body = Body::RegisterRequest(RegisterRequest {
            name: name.to_owned(),
            password: password.to_owned(),
        });
        match self.request(body, name).await? {
            Body::RegisterReply(r) => Ok(r.name),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// Logs in with `key`'s public half and the chat key of `chat_secret`,
    /// and checks the returned certificate: it must verify against the
    /// pinned key, name this user and certify both keys.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        key: &RsaPrivateKey,
        chat_secret: &[u8; cert::CHAT_KEY_LEN],
    ) -> Result<LoginOutcome, ClientError> {
        let public = key.to_public_key();
        let chat_key = cert::chat_public(chat_secret);
        let public_key = cert::public_key_der(&public);
        // Proof of possession, bound to this connection (docs/LOGIN.md).
        let proof = cert::sign(
            key,
            &natter_proto::binding::login_message(
                &self.link.exporter()?,
                name,
                &public_key,
                &chat_key,
            ),
        );
        let body = Body::LoginRequest(LoginRequest {
            name: name.to_owned(),
            password: password.to_owned(),
            public_key,
            chat_key: chat_key.to_vec(),
            proof,
        });
        let reply = match self.request(body, name).await? {
            Body::LoginReply(r) => r,
            other => return Err(Self::unexpected(&other)),
        };
        let certificate = reply
            .certificate
            .ok_or_else(|| ClientError::Protocol("login reply without a certificate".into()))?;
        // Checked at the server's time, so a skewed local clock does not
        // reject a fresh certificate.
        let verified = cert::verify(
            &certificate,
            &self.login_key,
            reply.server_time.div_euclid(1000),
        )
        .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        if !natter_proto::name::same(&verified.name, name) {
            return Err(ClientError::BadCertificate(format!(
                "certificate is for {:?}, not {name:?}",
                verified.name
            )));
        }
        if verified.public_key != public || verified.chat_key != chat_key {
            return Err(ClientError::BadCertificate(
                "certificate is for another key".into(),
            ));
        }
        Ok(LoginOutcome {
            certificate,
            verified,
            server_time_ms: reply.server_time,
            supernodes: reply.supernodes,
        })
    }

    /// Stores a buddy blob replacing `base_version`; returns the new version.
    pub async fn buddy_blob_put(
        &self,
        name: &str,
        password: &str,
        base_version: u64,
        ciphertext: Vec<u8>,
    ) -> Result<u64, ClientError> {
        let body = Body::BuddyBlobPut(BuddyBlobPut {
            name: name.to_owned(),
            password: password.to_owned(),
            base_version,
            ciphertext,
        });
        match self.request(body, name).await? {
            Body::BuddyBlob(b) => Ok(b.version),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// Fetches the buddy blob (version 0 and no bytes if never written).
    pub async fn buddy_blob_get(
        &self,
        name: &str,
        password: &str,
    ) -> Result<BuddyBlob, ClientError> {
        let body = Body::BuddyBlobGet(BuddyBlobGet {
            name: name.to_owned(),
            password: password.to_owned(),
        });
        match self.request(body, name).await? {
            Body::BuddyBlob(b) => Ok(b),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// Closes the connection politely and waits (briefly) for the close to
    /// be sent.
    pub async fn close(self) {
        match &self.link {
            Link::Quic { endpoint, conn } => {
                conn.close(quinn::VarInt::from_u32(0), b"bye");
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            Link::Tls(mux) => {
                mux.close(0, b"bye");
                // The CLOSE record is written by a task; let it run.
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Generates an RSA-2048 key pair (on a blocking thread: it takes a while).
pub async fn generate_key() -> Result<RsaPrivateKey, ClientError> {
    tokio::task::spawn_blocking(|| RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048))
        .await
        .map_err(|e| ClientError::Crypto(e.to_string()))?
        .map_err(|e| ClientError::Crypto(format!("RSA key generation: {e}")))
}
