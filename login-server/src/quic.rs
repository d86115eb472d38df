//! The QUIC shell, and [`LoginServer`], which runs it (and the TLS-over-TCP
//! shell of [`crate::tcp`] when configured): accepts connections (ALPN
//! `natter/1`), reads one request frame per bidirectional stream, hands it to
//! [`LoginService::handle`] and writes the reply frame back.
//!
//! Limits: a bounded number of connections (QUIC and TCP together), a
//! bounded number of concurrent streams per connection, a deadline for each
//! request, an idle timeout. A stream carrying an oversized, truncated or
//! undecodable frame closes its connection (QUIC application error
//! [`CLOSE_MALFORMED`]); other connections are not affected.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use natter_proto::cert::{self, Issuer};
use natter_proto::frame::{self, FrameDecoder, FrameError};
use natter_proto::messages::Envelope;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, Incoming, VarInt};
use rsa::RsaPublicKey;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::datadir::{DataDir, DataDirError, PUBLIC_KEY_FILE, TlsIdentity};
use crate::service::LoginService;
use crate::storage::{Store, StoreError};

/// Connection closed because a request was malformed or oversized (the same
/// code closes a TLS-over-TCP connection).
pub const CLOSE_MALFORMED: VarInt = VarInt::from_u32(natter_net::CLOSE_MALFORMED);
/// Connection closed because the server is shutting down.
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(2);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on tcp {addr}: {source}")]
    TcpBind {
        addr: SocketAddr,
        #[source]
        source: natter_net::NetError,
    },
    #[error(transparent)]
    Hash(#[from] crate::hashing::HashError),
}

/// A running login server.
#[derive(Debug)]
pub struct LoginServer {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    service: Arc<LoginService>,
    accept: JoinHandle<()>,
    /// The TLS-over-TCP listener's address and accept loop, when configured.
    tcp: Option<(SocketAddr, JoinHandle<()>)>,
    /// Tells the TCP shell to close its connections.
    shutdown: watch::Sender<bool>,
    public_key: RsaPublicKey,
    public_key_path: PathBuf,
}

/// Builds the rustls/quinn server configuration.
fn server_config(tls: TlsIdentity, config: &Config) -> Result<quinn::ServerConfig, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(tls.cert_chain, tls.key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    crypto.alpn_protocols = vec![crate::ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(crypto).map_err(|e| ServeError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams_per_connection))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(
            config
                .idle_timeout
                .try_into()
                .map_err(|_| ServeError::Tls("idle timeout too large".into()))?,
        ))
        .stream_receive_window(VarInt::from_u32(2 * frame::MAX_FRAME_LEN as u32))
        .receive_window(VarInt::from_u32(8 * frame::MAX_FRAME_LEN as u32));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

impl LoginServer {
    /// Prepares the data directory (creating keys and database on first
    /// start), then listens on `config.listen`.
    pub async fn start(config: Config) -> Result<Self, ServeError> {
        let data = DataDir::open(&config.data_dir)?;
        let (signing_key, created) = data.signing_key()?;
        let tls = data.tls_identity(&signing_key)?;
        let store = Store::open(&data.private_db_path()?).await?;
        let issuer = Issuer::new(signing_key);
        let public_key = issuer.public_key();
        let service = Arc::new(LoginService::new(store, issuer, &config)?);

        let tcp_identity = tls.clone();
        let endpoint =
            Endpoint::server(server_config(tls, &config)?, config.listen).map_err(|source| {
                ServeError::Bind {
                    addr: config.listen,
                    source,
                }
            })?;
        let local_addr = endpoint.local_addr().map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
        let limits = Limits::from(&config);
        let tcp_listener = match config.tcp_listen {
            None => None,
            Some(addr) => {
                let tcp_err = |source| ServeError::TcpBind { addr, source };
                let listener = natter_net::TlsListener::bind(
                    addr,
                    &tcp_identity,
                    crate::tcp::settings(&limits),
                )
                .await
                .map_err(tcp_err)?;
                let bound = listener.local_addr().map_err(tcp_err)?;
                Some((listener, bound))
            }
        };
        let tcp_addr = tcp_listener.as_ref().map(|(_, addr)| *addr);
        tracing::info!(
            listen = %local_addr,
            tcp = %tcp_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            data_dir = %data.path().display(),
            login_key = %cert::fingerprint(&public_key),
            new_key = created,
            "natter-login serving (QUIC{}, ALPN natter/1)",
            if tcp_addr.is_some() { " and TLS over TCP" } else { "" }
        );
        // One budget of connections for both transports.
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(
            endpoint.clone(),
            Arc::clone(&service),
            limits,
            Arc::clone(&slots),
        ));
        let tcp = tcp_listener.map(|(listener, addr)| {
            let task = tokio::spawn(crate::tcp::accept_loop(
                listener,
                Arc::clone(&service),
                limits,
                slots,
                shutdown_rx,
            ));
            (addr, task)
        });
        Ok(Self {
            endpoint,
            local_addr,
            service,
            accept,
            tcp,
            shutdown,
            public_key,
            public_key_path: data.file(PUBLIC_KEY_FILE),
        })
    }

    /// The address it listens on (UDP, QUIC).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the TLS-over-TCP listener, if it runs one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().map(|(addr, _)| *addr)
    }

    /// The signing public key (what `login-key.pub` holds).
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public_key
    }

    /// Path of `login-key.pub`.
    pub fn public_key_path(&self) -> &std::path::Path {
        &self.public_key_path
    }

    /// The request handler.
    pub fn service(&self) -> &Arc<LoginService> {
        &self.service
    }

    /// Runs until the endpoint is closed.
    pub async fn wait(&mut self) {
        let _ = (&mut self.accept).await;
    }

    /// Closes every connection (QUIC and TCP), stops accepting, and closes
    /// the database.
    pub async fn shutdown(self) {
        self.endpoint.close(CLOSE_SHUTDOWN, b"server shutting down");
        self.shutdown.send_replace(true);
        let _ = self.accept.await;
        if let Some((_, tcp)) = self.tcp {
            let _ = tcp.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.service.store().close().await;
    }
}

/// The limits both shells apply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) max_streams_per_connection: u32,
    pub(crate) request_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Self {
            max_connections: c.max_connections,
            max_streams_per_connection: c.max_streams_per_connection,
            request_timeout: c.request_timeout,
            idle_timeout: c.idle_timeout,
        }
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    service: Arc<LoginService>,
    limits: Limits,
    slots: Arc<Semaphore>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(peer = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            serve_connection(incoming, service, limits).await;
            drop(permit);
        });
    }
}

async fn serve_connection(incoming: Incoming, service: Arc<LoginService>, limits: Limits) {
    let peer = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(%peer, %e, "handshake failed");
            return;
        }
    };
    tracing::debug!(%peer, "connection open");
    let mut streams = tokio::task::JoinSet::new();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(%peer, %e, "connection closed");
                break;
            }
        };
        let conn = conn.clone();
        let service = Arc::clone(&service);
        streams.spawn(async move {
            serve_stream(conn, send, recv, service, limits).await;
        });
        // Reap finished streams so the set stays small on long connections.
        while streams.try_join_next().is_some() {}
    }
    streams.abort_all();
}

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("data after the request frame")]
    Trailing,
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
}

/// Reads exactly one frame from the stream.
async fn read_request(recv: &mut quinn::RecvStream) -> Result<Option<Envelope>, RequestError> {
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match recv.read(&mut buf).await? {
            None if decoder.buffered() == 0 => return Ok(None),
            None => return Err(RequestError::Truncated),
            Some(n) => decoder.handle_data(&buf[..n])?,
        }
        if let Some(result) = decoder.poll_frame() {
            let envelope = result?;
            if decoder.buffered() != 0 {
                return Err(RequestError::Trailing);
            }
            // The client finishes the stream after its one frame.
            return match recv.read(&mut buf).await? {
                None | Some(0) => Ok(Some(envelope)),
                Some(_) => Err(RequestError::Trailing),
            };
        }
    }
}

async fn serve_stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    service: Arc<LoginService>,
    limits: Limits,
) {
    let peer = conn.remote_address();
    let request = match tokio::time::timeout(limits.request_timeout, read_request(&mut recv)).await
    {
        Err(_) => {
            tracing::debug!(%peer, "request timed out");
            let _ = send.reset(VarInt::from_u32(0));
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(request))) => request,
        Ok(Err(RequestError::Stream(e))) => {
            tracing::debug!(%peer, %e, "stream failed");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(%peer, %e, "malformed request; closing the connection");
            let reason = format!("malformed request: {e}");
            conn.close(CLOSE_MALFORMED, reason.as_bytes());
            return;
        }
    };
    let reply = service.handle(request, peer).await;
    let bytes = match frame::to_frame(&reply) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(%peer, %e, "reply does not fit in a frame");
            let _ = send.reset(VarInt::from_u32(0));
            return;
        }
    };
    if let Err(e) = send.write_all(&bytes).await {
        tracing::debug!(%peer, %e, "could not send the reply");
        return;
    }
    let _ = send.finish();
    // Wait until the peer has the reply (or gave up), so dropping the stream
    // does not cut it short.
    let _ = tokio::time::timeout(limits.request_timeout, send.stopped()).await;
}
