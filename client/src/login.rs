//! [`LoginClient`]: requests to the login server over QUIC (one
//! bidirectional stream per request: write one frame, finish, read one
//! frame) or, where UDP is blocked, over TLS on TCP (requests and replies as
//! ENVELOPE records on one connection, matched by `request_id`).
//!
//! [`LoginClient::connect_to`] races the two ("happy eyeballs"): QUIC starts
//! at once; TLS over TCP starts when QUIC has not connected within a short
//! head start ([`TCP_HEAD_START`]), or at once if QUIC fails outright. The
//! first connection up wins; QUIC when both are ready. Both pin the login
//! server's signing key the same way ([`crate::tls::login_verifier`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use natter_net::tcp::RecordReader;
use natter_net::{NetError, TlsHandle, TransportSettings};
use natter_proto::cert::{self, VerifiedCertificate};
use natter_proto::frame::{self, FrameDecoder};
use natter_proto::messages::{
    BuddyBlob, BuddyBlobGet, BuddyBlobPut, Certificate, Envelope, HostCacheEntry, LoginRequest,
    RegisterRequest, envelope::Body,
};
use natter_proto::record::Record;
use rsa::{RsaPrivateKey, RsaPublicKey};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ClientError;
use crate::tls::{TLS_SERVER_NAME, client_config, tcp_client_config};

pub use natter_net::Transport;

/// Default time to wait for a reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Default time to get a connection up, over either transport.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long QUIC may try alone before TLS over TCP is tried alongside.
pub const TCP_HEAD_START: Duration = Duration::from_millis(300);

/// TLS-over-TCP transport settings of a login connection. Like the QUIC
/// connection (which sends no keep-alives), it sends no KEEPALIVE of its
/// own, so the server closes it after its idle timeout when unused; the
/// server's keepalives keep it from looking dead to us.
const TCP_SETTINGS: TransportSettings = TransportSettings {
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

/// Replies awaited on a TLS-over-TCP connection, by request id.
#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Envelope>>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

type SharedPending = Arc<Mutex<Pending>>;

fn lock(pending: &SharedPending) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A TLS-over-TCP login connection: a task reads replies and hands each
/// to the request waiting for its id.
#[derive(Debug)]
struct TcpConn {
    handle: TlsHandle,
    pending: SharedPending,
    reader: JoinHandle<()>,
}

impl TcpConn {
    fn new(conn: natter_net::RecordConn) -> Self {
        let (reader, handle) = conn.split();
        let pending = SharedPending::default();
        let reader = tokio::spawn(read_replies(reader, Arc::clone(&pending)));
        Self {
            handle,
            pending,
            reader,
        }
    }

    fn closed_reason(&self) -> String {
        lock(&self.pending)
            .closed
            .clone()
            .or_else(|| self.handle.close_reason().map(|(_, reason)| reason))
            .unwrap_or_else(|| "connection closed".into())
    }

    async fn exchange(
        &self,
        request: &Envelope,
        timeout: Duration,
    ) -> Result<Envelope, ClientError> {
        let id = request.request_id;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.closed {
                return Err(ClientError::ConnectionClosed(reason.clone()));
            }
            if pending.waiting.contains_key(&id) {
                return Err(ClientError::Protocol(format!(
                    "request id {id} is already in flight"
                )));
            }
            pending.waiting.insert(id, tx);
        }
        // Forget the id however this ends (reply, error, timeout, or the
        // caller dropping the future).
        let _forget = Forget {
            pending: &self.pending,
            id,
        };
        let exchange = async {
            self.handle
                .send_envelope(request)
                .await
                .map_err(|e| match e {
                    NetError::Closed(_) => ClientError::ConnectionClosed(self.closed_reason()),
                    other => ClientError::ConnectionClosed(other.to_string()),
                })?;
            rx.await
                .map_err(|_| ClientError::ConnectionClosed(self.closed_reason()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        self.reader.abort();
        // Closing writes a CLOSE record from a task: only inside a runtime.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.handle.close(0, "bye");
        }
    }
}

struct Forget<'a> {
    pending: &'a SharedPending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).waiting.remove(&self.id);
    }
}

/// Hands every reply to its request; when the connection ends, records why
/// and wakes every request still waiting.
async fn read_replies(mut reader: RecordReader, pending: SharedPending) {
    let reason = loop {
        match reader.next().await {
            Ok(Some(Record::Envelope(reply))) => {
                // A reply nobody waits for (its request timed out) is dropped.
                let waiter = lock(&pending).waiting.remove(&reply.request_id);
                if let Some(tx) = waiter {
                    let _ = tx.send(reply);
                }
            }
            // Datagrams have no business on a login connection.
            Ok(Some(_)) => {}
            Ok(None) => {
                break reader
                    .handle()
                    .close_reason()
                    .map_or_else(|| "connection closed".to_owned(), |(_, r)| r);
            }
            Err(e) => {
                break match reader.handle().close_reason() {
                    Some((_, reason)) if !reason.is_empty() => reason,
                    _ => e.to_string(),
                };
            }
        }
    };
    let mut pending = lock(&pending);
    pending.closed = Some(reason);
    // Dropping the senders wakes their requests.
    pending.waiting.clear();
}

/// The connection underneath a [`LoginClient`].
#[derive(Debug)]
enum Conn {
    Quic {
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
    },
    Tcp(TcpConn),
}

/// A connection to a login server whose signing key is pinned, over QUIC
/// or TLS over TCP.
#[derive(Debug)]
pub struct LoginClient {
    conn: Conn,
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

type Attempt = Pin<Box<dyn Future<Output = Result<Conn, String>> + Send>>;

/// Dials QUIC; the error is one line for the combined message.
async fn dial_quic(addr: SocketAddr, config: quinn::ClientConfig) -> Result<Conn, String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(addr, TLS_SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(Conn::Quic { endpoint, conn })
}

/// Dials TLS over TCP.
async fn dial_tcp(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Conn, String> {
    let conn = natter_net::tcp::connect(addr, TLS_SERVER_NAME, config, TCP_SETTINGS, timeout)
        .await
        .map_err(|e| match e {
            // "tcp connect to ADDR: refused" -> "tcp connect: refused": the
            // combined message names the address once.
            NetError::Io { what, source } => {
                let what = what
                    .replace(&format!(" to {addr}"), "")
                    .replace(&format!(" with {addr}"), "");
                format!("{what}: {source}")
            }
            NetError::Timeout => "timed out".to_owned(),
            other => other.to_string(),
        })?;
    Ok(Conn::Tcp(TcpConn::new(conn)))
}

/// Polls an attempt that may not exist (then never resolves).
async fn attempt(slot: &mut Option<Attempt>) -> Result<Conn, String> {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl LoginClient {
    /// Connects to the login server at `addr`, QUIC first with a fallback
    /// to TLS over TCP on the same address, trusting only `login_key`.
    pub async fn connect(addr: SocketAddr, login_key: RsaPublicKey) -> Result<Self, ClientError> {
        Self::connect_to(&LoginTarget::new(addr), login_key).await
    }

    /// Connects to `target`, trusting only `login_key`: QUIC at once, TLS
    /// over TCP after `target.head_start` (or as soon as QUIC fails); the
    /// first connection up wins, QUIC when both are. When both fail, the
    /// error names both attempts.
    pub async fn connect_to(
        target: &LoginTarget,
        login_key: RsaPublicKey,
    ) -> Result<Self, ClientError> {
        if target.quic.is_none() && target.tcp.is_none() {
            return Err(ClientError::Usage(
                "no login server address (QUIC or TCP)".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + target.timeout;
        let quic_config = client_config(&login_key)?;
        let tcp_config = tcp_client_config(&login_key)?;
        let start_tcp = |addr: SocketAddr| -> Attempt {
            let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
            Box::pin(dial_tcp(addr, Arc::clone(&tcp_config), timeout))
        };
        let mut quic: Option<Attempt> = target
            .quic
            .map(|addr| Box::pin(dial_quic(addr, quic_config)) as Attempt);
        let mut tcp: Option<Attempt> = None;
        // The TCP attempt not started yet.
        let mut tcp_later = target.tcp;
        let (mut quic_error, mut tcp_error) = (None, None);
        let head_start = tokio::time::sleep(target.head_start);
        tokio::pin!(head_start);
        let expired = tokio::time::sleep_until(deadline);
        tokio::pin!(expired);
        let won = loop {
            if quic.is_none()
                && let Some(addr) = tcp_later.take()
            {
                tcp = Some(start_tcp(addr));
            }
            if quic.is_none() && tcp.is_none() {
                break None;
            }
            tokio::select! {
                // QUIC first: it wins when both are ready.
                biased;
                r = attempt(&mut quic) => {
                    quic = None;
                    match r {
                        Ok(conn) => break Some(conn),
                        Err(e) => quic_error = Some(e),
                    }
                }
                r = attempt(&mut tcp) => {
                    tcp = None;
                    match r {
                        Ok(conn) => break Some(conn),
                        Err(e) => tcp_error = Some(e),
                    }
                }
                () = &mut head_start, if tcp_later.is_some() => {
                    if let Some(addr) = tcp_later.take() {
                        tcp = Some(start_tcp(addr));
                    }
                }
                () = &mut expired => {
                    if quic.take().is_some() {
                        quic_error = Some("timed out".to_owned());
                    }
                    if tcp.take().is_some() || tcp_later.take().is_some() {
                        tcp_error = Some("timed out".to_owned());
                    }
                    break None;
                }
            }
        };
        let Some(conn) = won else {
            return Err(Self::both_failed(target, quic_error, tcp_error));
        };
        let remote = match &conn {
            Conn::Quic { conn, .. } => conn.remote_address(),
            Conn::Tcp(tcp) => tcp.handle.remote_address(),
        };
        Ok(Self {
            conn,
            remote,
            login_key,
            next_id: AtomicU64::new(1),
            timeout: REQUEST_TIMEOUT,
        })
    }

    fn both_failed(
        target: &LoginTarget,
        quic_error: Option<String>,
        tcp_error: Option<String>,
    ) -> ClientError {
        let mut parts = Vec::new();
        if target.quic.is_some() {
            let e = quic_error.unwrap_or_else(|| "not tried".into());
            parts.push(format!("QUIC: {e}"));
        }
        if let Some(tcp) = target.tcp {
            let e = tcp_error.unwrap_or_else(|| "not tried".into());
            if target.quic.is_none() || target.quic == Some(tcp) {
                parts.push(format!("TLS over TCP: {e}"));
            } else {
                parts.push(format!("TLS over TCP to {tcp}: {e}"));
            }
        }
        let mut detail = parts.join("; ");
        if detail.contains("certificate") {
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
        match self.conn {
            Conn::Quic { .. } => Transport::Quic,
            Conn::Tcp(_) => Transport::Tls,
        }
    }

    /// The login server's address on that transport.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The pinned signing key.
    pub fn login_key(&self) -> &RsaPublicKey {
        &self.login_key
    }

    /// The QUIC connection, when connected over QUIC (tests use it).
    pub fn quic_connection(&self) -> Option<&quinn::Connection> {
        match &self.conn {
            Conn::Quic { conn, .. } => Some(conn),
            Conn::Tcp(_) => None,
        }
    }

    /// On TLS over TCP: the close code and reason once the connection is
    /// closed (by either side). `None` while open, and on QUIC.
    pub fn tcp_close_reason(&self) -> Option<(u32, String)> {
        match &self.conn {
            Conn::Tcp(tcp) => tcp.handle.close_reason(),
            Conn::Quic { .. } => None,
        }
    }

    /// Sends raw bytes on a new QUIC stream and returns everything the
    /// server writes back. For tests and diagnostics; QUIC only (raw bytes
    /// on TLS over TCP need a raw TLS stream, see the login-server tests).
    pub async fn raw_exchange(&self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        let Conn::Quic { conn, .. } = &self.conn else {
            return Err(ClientError::Usage(
                "raw_exchange needs a QUIC connection; this one is TLS over TCP".into(),
            ));
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(connection_error)?;
        let exchange = async {
            send.write_all(bytes).await.map_err(|e| match e {
                quinn::WriteError::ConnectionLost(c) => connection_error(c),
                other => closed(other),
            })?;
            let _ = send.finish();
            recv.read_to_end(2 * frame::MAX_FRAME_LEN)
                .await
                .map_err(|e| match e {
                    quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(c)) => {
                        connection_error(c)
                    }
                    other => closed(other),
                })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Sends one request envelope as is (its `request_id` included) and
    /// returns the reply envelope, whose id must match. Several may be in
    /// flight at once on either transport.
    pub async fn exchange(&self, request: &Envelope) -> Result<Envelope, ClientError> {
        let id = request.request_id;
        let envelope = match &self.conn {
            Conn::Tcp(tcp) => tcp.exchange(request, self.timeout).await?,
            Conn::Quic { .. } => {
                let bytes = frame::to_frame(request)
                    .map_err(|e| ClientError::Protocol(format!("request: {e}")))?;
                let reply = self.raw_exchange(&bytes).await?;
                let mut decoder = FrameDecoder::default();
                decoder
                    .handle_data(&reply)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                match decoder.poll_frame() {
                    Some(Ok(envelope)) => envelope,
                    Some(Err(e)) => return Err(ClientError::Protocol(format!("reply: {e}"))),
                    None => return Err(ClientError::Protocol("empty or truncated reply".into())),
                }
            }
        };
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

    /// Logs in with `key`'s public half and checks the returned certificate:
    /// it must verify against the pinned key, name this user and certify `key`.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        key: &RsaPrivateKey,
    ) -> Result<LoginOutcome, ClientError> {
        let public = key.to_public_key();
        let body = Body::LoginRequest(LoginRequest {
            name: name.to_owned(),
            password: password.to_owned(),
            public_key: cert::public_key_der(&public),
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
        if verified.public_key != public {
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
        match &self.conn {
            Conn::Quic { endpoint, conn } => {
                conn.close(quinn::VarInt::from_u32(0), b"bye");
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            Conn::Tcp(tcp) => {
                tcp.handle.close(0, "bye");
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
