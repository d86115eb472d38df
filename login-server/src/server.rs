//! [`LoginServer`]: prepares the data directory, listens on QUIC (and TLS
//! over TCP when configured), and serves both through the one session code
//! path of [`crate::session`]. The transports differ only in how a
//! connection is accepted ([`crate::quic`], [`crate::tcp`]).
//!
//! Limits: a bounded number of connections (QUIC and TCP together), a
//! bounded number of requests in flight per connection, a deadline for each
//! reply, an idle timeout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use natter_net::{NetError, TlsListener, TransportSettings};
use natter_proto::cert::{self, Issuer};
use quinn::{Endpoint, VarInt};
use rsa::RsaPublicKey;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::datadir::{DataDir, DataDirError, PUBLIC_KEY_FILE};
use crate::service::LoginService;
use crate::session::{CLOSE_SHUTDOWN, Limits};
use crate::storage::{Store, StoreError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("TLS configuration: {0}")]
    Tls(#[source] NetError),
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
        source: NetError,
    },
    #[error(transparent)]
    Hash(#[from] crate::hashing::HashError),
    #[error("cannot listen on tcp {addr} (the Prometheus endpoint, --metrics): {source}")]
    MetricsBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
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
    /// Tells every session to close its connection.
    shutdown: watch::Sender<bool>,
    public_key: RsaPublicKey,
    public_key_path: PathBuf,
    /// The Prometheus endpoint's bound address and task, when configured.
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
}

/// QUIC transport settings: the server's idle timeout and stream budget,
/// and no PINGs of its own (their acknowledgements would keep an unused
/// client connection from ever timing out).
fn quic_settings(limits: &Limits) -> TransportSettings {
    TransportSettings {
        keep_alive: limits.idle_timeout,
        idle_timeout: limits.idle_timeout,
        max_bidi_streams: limits.max_streams_per_connection,
    }
}

impl LoginServer {
    /// Prepares the data directory (creating keys and database on first
    /// start), then listens on `config.listen`.
    pub async fn start(config: Config) -> Result<Self, ServeError> {
        let data = DataDir::open(&config.data_dir)?;
        let (signing_key, created) = data.signing_key()?;
        let tls = data.tls_identity(&signing_key)?;
        let store = match &config.database {
            Some(url) => Store::connect(url).await?,
            None => Store::open(&data.private_db_path()?).await?,
        };
        let issuer = Issuer::new(signing_key);
        let public_key = issuer.public_key();
        let service = Arc::new(LoginService::new(store, issuer, &config)?);

        let limits = Limits::from(&config);
        let server_config =
            natter_net::server_config(&tls, &quic_settings(&limits)).map_err(ServeError::Tls)?;
        let endpoint =
            Endpoint::server(server_config, config.listen).map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = endpoint.local_addr().map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
        let tcp_listener = match config.tcp_listen {
            None => None,
            Some(addr) => {
                let tcp_err = |source| ServeError::TcpBind { addr, source };
                let listener = TlsListener::bind(addr, &tls, crate::tcp::settings(&limits))
                    .await
                    .map_err(tcp_err)?;
                let bound = listener.local_addr().map_err(tcp_err)?;
                Some((listener, bound))
            }
        };
        let metrics_listener = match config.metrics {
            None => None,
            Some(addr) => {
                let io = |source| ServeError::MetricsBind { addr, source };
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(io)?;
                let bound = listener.local_addr().map_err(io)?;
                Some((listener, bound))
            }
        };
        let tcp_addr = tcp_listener.as_ref().map(|(_, addr)| *addr);
        tracing::info!(
            listen = %local_addr,
            tcp = %tcp_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            data_dir = %data.path().display(),
            database = %service.store().backend().name(),
            login_key = %cert::fingerprint(&public_key),
            new_key = created,
            "natter-login serving (QUIC{}, ALPN natter/1)",
            if tcp_addr.is_some() { " and TLS over TCP" } else { "" }
        );
        // One budget of connections for both transports.
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        // And one cap per IP address, over both transports too.
        let per_ip = natter_net::PerIp::new(config.max_connections_per_ip);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept = tokio::spawn(crate::quic::accept_loop(
            endpoint.clone(),
            Arc::clone(&service),
            limits,
            (Arc::clone(&slots), Arc::clone(&per_ip)),
            shutdown_rx.clone(),
        ));
        let metrics = metrics_listener.map(|(listener, bound)| {
            let (service, slots) = (Arc::clone(&service), Arc::clone(&slots));
            let max = limits.max_connections.max(1);
            let task = tokio::spawn(natter_net::metrics::serve(listener, move || {
                crate::metrics::render(&crate::metrics::Figures {
                    connections: max.saturating_sub(slots.available_permits()) as u64,
                    max_connections: max as u64,
                    outcomes: service.outcomes(),
                })
            }));
            tracing::info!(%bound, "Prometheus metrics on http://{bound}/metrics");
            (bound, task)
        });
        let tcp = tcp_listener.map(|(listener, addr)| {
            let task = tokio::spawn(crate::tcp::accept_loop(
                listener,
                Arc::clone(&service),
                limits,
                (slots, per_ip),
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
            metrics,
        })
    }

    /// The bound address of the Prometheus endpoint, if it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
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
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"server shutting down");
        self.shutdown.send_replace(true);
        if let Some((_, metrics)) = &self.metrics {
            metrics.abort();
        }
        let _ = self.accept.await;
        if let Some((_, tcp)) = self.tcp {
            let _ = tcp.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.service.store().close().await;
    }
}
