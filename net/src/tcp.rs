//! TLS over TCP: the firewall fallback where UDP (and so QUIC) is blocked.
//!
//! A connection carries the typed records of [`natter_proto::record`]:
//! envelopes (the same messages a QUIC stream carries), datagrams (SoM media
//! and relay binds, as UDP would carry them), a final CLOSE with an
//! application code, and KEEPALIVEs. TLS 1.3 only, ALPN `natter/1`, the same
//! certificates as the QUIC endpoints; `TCP_NODELAY` is set because every
//! record is a small, urgent message (a voice frame must not wait for the
//! next one).
//!
//! [`TransportSettings`] apply as on QUIC: a connection that sent nothing
//! for `keep_alive` sends a KEEPALIVE record, and one that received nothing
//! for `idle_timeout` is dead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use natter_proto::messages::Envelope;
use natter_proto::record::{self, Record, RecordDecoder};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::endpoint::TransportSettings;
use crate::tls::server_tls_config;
use crate::{NetError, TlsIdentity};

pub use crate::tls::{client_tls_config, insecure_client_tls_config};

/// Bytes read from the connection at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Time allowed to flush the CLOSE record when closing.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

type Stream = TlsStream<TcpStream>;

/// A TLS-over-TCP listener.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    settings: TransportSettings,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("addr", &self.tcp.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Listens on `addr`, presenting `identity`.
    pub async fn bind(
        addr: SocketAddr,
        identity: &TlsIdentity,
        settings: TransportSettings,
    ) -> Result<Self, NetError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| NetError::io(format!("listen on tcp {addr}"), e))?;
        Self::from_listener(tcp, identity, settings)
    }

    /// Serves TLS on an already bound listener (for callers that bind
    /// synchronously, e.g. with [`tokio::net::TcpSocket`]), presenting `identity`.
    pub fn from_listener(
        tcp: TcpListener,
        identity: &TlsIdentity,
        settings: TransportSettings,
    ) -> Result<Self, NetError> {
        Ok(Self {
            tcp,
            acceptor: TlsAcceptor::from(server_tls_config(identity)?),
            settings,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.tcp
            .local_addr()
            .map_err(|e| NetError::io("tcp listener address", e))
    }

    /// The next TCP connection. The TLS handshake is not done yet: run
    /// [`Accepted::handshake`] in the connection's own task, so one slow
    /// client cannot hold up the accept loop.
    pub async fn accept(&self) -> Result<Accepted, NetError> {
        let (tcp, remote) = self
            .tcp
            .accept()
            .await
            .map_err(|e| NetError::io("tcp accept", e))?;
        Ok(Accepted {
            tcp,
            remote,
            acceptor: self.acceptor.clone(),
            settings: self.settings,
        })
    }
}

/// An accepted TCP connection before its TLS handshake.
pub struct Accepted {
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    settings: TransportSettings,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl Accepted {
    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Runs the TLS handshake, within `timeout`.
    pub async fn handshake(self, timeout: Duration) -> Result<RecordConn, NetError> {
        let _ = self.tcp.set_nodelay(true);
        let local = self
            .tcp
            .local_addr()
            .map_err(|e| NetError::io("tcp local address", e))?;
        let stream = tokio::time::timeout(timeout, self.acceptor.accept(self.tcp))
            .await
            .map_err(|_| NetError::Timeout)?
            .map_err(|e| NetError::io(format!("tls handshake with {}", self.remote), e))?;
        Ok(RecordConn::new(
            TlsStream::Server(stream),
            local,
            self.remote,
            self.settings,
        ))
    }
}

/// Connects to `addr` over TCP and runs the TLS handshake (server name
/// `server_name`), all within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    settings: TransportSettings,
    timeout: Duration,
) -> Result<RecordConn, NetError> {
    connect_staged(addr, server_name, config, settings, timeout)
        .await
        .map_err(|e| match e {
            ConnectError::ServerName { .. } => NetError::Tls(e.to_string()),
            ConnectError::Tcp(source) => NetError::io(format!("tcp connect to {addr}"), source),
            ConnectError::Handshake(source) => {
                NetError::io(format!("tls handshake with {addr}"), source)
            }
            ConnectError::Timeout => NetError::Timeout,
        })
}

/// Why [`connect_staged`] failed, by stage (the address is the caller's).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("server name {name:?}: {source}")]
    ServerName {
        name: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("tcp connect: {0}")]
    Tcp(#[source] std::io::Error),
    #[error("tls handshake: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("timed out")]
    Timeout,
}

/// [`connect`] with an error naming the stage that failed.
pub async fn connect_staged(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    settings: TransportSettings,
    timeout: Duration,
) -> Result<RecordConn, ConnectError> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|source| {
        ConnectError::ServerName {
            name: server_name.to_owned(),
            source,
        }
    })?;
    let connecting = async {
        let tcp = TcpStream::connect(addr).await.map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(ConnectError::Tcp)?;
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(ConnectError::Handshake)?;
        Ok(RecordConn::new(
            TlsStream::Client(stream),
            local,
            addr,
            settings,
        ))
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| ConnectError::Timeout)?
}

/// One TLS connection carrying records: a reader and a cloneable handle
/// that writes and closes.
#[derive(Debug)]
pub struct RecordConn {
    reader: RecordReader,
    handle: TlsHandle,
}

impl RecordConn {
    fn new(
        stream: Stream,
        local: SocketAddr,
        remote: SocketAddr,
        settings: TransportSettings,
    ) -> Self {
        let exporter = {
            let mut out = [0u8; natter_proto::binding::EXPORTER_LEN];
            let label = natter_proto::binding::EXPORTER_LABEL;
            // Fails only before the handshake completes (it has here).
            let exported = match &stream {
                TlsStream::Client(s) => s
                    .get_ref()
                    .1
                    .export_keying_material(&mut out[..], label, None)
                    .is_ok(),
                TlsStream::Server(s) => s
                    .get_ref()
                    .1
                    .export_keying_material(&mut out[..], label, None)
                    .is_ok(),
            };
            exported.then_some(out)
        };
        let (read, write) = tokio::io::split(stream);
        let (closed, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            local,
            remote,
            exporter,
            writer: Mutex::new(Some(write)),
            closed,
            epoch: Instant::now(),
            last_write_ms: AtomicU64::new(0),
        });
        tokio::spawn(keep_alive(Arc::downgrade(&shared), settings.keep_alive));
        let handle = TlsHandle(shared);
        Self {
            reader: RecordReader {
                read,
                decoder: RecordDecoder::default(),
                buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
                handle: handle.clone(),
                idle: settings.idle_timeout,
                failed: false,
            },
            handle,
        }
    }

    /// The handle (writes, close, addresses).
    pub fn handle(&self) -> &TlsHandle {
        &self.handle
    }

    /// Splits into the reader and the handle.
    pub fn split(self) -> (RecordReader, TlsHandle) {
        (self.reader, self.handle)
    }
}

struct Shared {
    local: SocketAddr,
    remote: SocketAddr,
    /// The TLS exporter value every Natter binding signs (see
    /// [`natter_proto::binding`]).
    exporter: Option<natter_proto::binding::Exporter>,
    /// `None` once the connection is shut down.
    writer: Mutex<Option<WriteHalf<Stream>>>,
    /// The close code and reason, once closed by either side.
    closed: watch::Sender<Option<(u32, String)>>,
    epoch: Instant,
    last_write_ms: AtomicU64,
}

/// Writes records to a TLS connection and closes it; cheap to clone.
#[derive(Clone)]
pub struct TlsHandle(Arc<Shared>);

impl std::fmt::Debug for TlsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsHandle")
            .field("remote", &self.0.remote)
            .field("closed", &*self.0.closed.borrow())
            .finish()
    }
}

impl TlsHandle {
    /// This connection's TLS exporter value (see [`natter_proto::binding`]).
    pub fn exporter(&self) -> Result<natter_proto::binding::Exporter, NetError> {
        self.0.exporter.ok_or(NetError::NoExporter)
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote
    }

    /// This side's address.
    pub fn local_address(&self) -> SocketAddr {
        self.0.local
    }

    /// Writes one record (and flushes it: records are urgent).
    pub async fn send(&self, record: &Record) -> Result<(), NetError> {
        let bytes = record::to_bytes(record)?;
        self.write(&bytes).await
    }

    /// Writes one envelope record.
    pub async fn send_envelope(&self, envelope: &Envelope) -> Result<(), NetError> {
        let mut bytes = Vec::new();
        record::encode_envelope(envelope, &mut bytes)?;
        self.write(&bytes).await
    }

    /// Writes one datagram record.
    pub async fn send_datagram(&self, datagram: &[u8]) -> Result<(), NetError> {
        let mut bytes = Vec::with_capacity(record::HEADER_LEN + datagram.len());
        record::encode_datagram(datagram, &mut bytes)?;
        self.write(&bytes).await
    }

    async fn write(&self, bytes: &[u8]) -> Result<(), NetError> {
        if let Some(reason) = self.close_reason() {
            return Err(NetError::Closed(reason.1));
        }
        let mut writer = self.0.writer.lock().await;
        let Some(w) = writer.as_mut() else {
            return Err(NetError::Closed("connection shut down".into()));
        };
        let result = async {
            w.write_all(bytes).await?;
            w.flush().await
        }
        .await;
        if let Err(e) = result {
            *writer = None;
            self.mark_closed(0, "write failed");
            return Err(NetError::io(format!("tls write to {}", self.0.remote), e));
        }
        let ms = self.0.epoch.elapsed().as_millis() as u64;
        self.0.last_write_ms.store(ms, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the connection with an application `code` (QUIC's close codes):
    /// readers end at once, and a CLOSE record is flushed (best effort,
    /// within a second) before the TCP connection is shut down.
    pub fn close(&self, code: u32, reason: &str) {
        if !self.mark_closed(code, reason) {
            return;
        }
        let shared = Arc::clone(&self.0);
        let mut bytes = Vec::new();
        record::encode_close(code, reason, &mut bytes);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLOSE_FLUSH, async {
                let mut writer = shared.writer.lock().await;
                if let Some(mut w) = writer.take() {
                    let _ = w.write_all(&bytes).await;
                    let _ = w.shutdown().await;
                }
            })
            .await;
        });
    }

    /// Records the close; false if it was already closed.
    fn mark_closed(&self, code: u32, reason: &str) -> bool {
        self.0.closed.send_if_modified(|c| {
            if c.is_some() {
                return false;
            }
            *c = Some((code, reason.to_owned()));
            true
        })
    }

    /// The close code and reason, once closed by either side.
    pub fn close_reason(&self) -> Option<(u32, String)> {
        self.0.closed.borrow().clone()
    }

    /// Resolves when the connection is closed (by either side or by failure).
    pub async fn closed(&self) {
        let mut rx = self.0.closed.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }
}

/// Sends a KEEPALIVE when nothing was written for `interval`; ends with
/// the connection.
async fn keep_alive(shared: Weak<Shared>, interval: Duration) {
    let interval_ms = interval.as_millis() as u64;
    loop {
        tokio::time::sleep(interval / 2).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let handle = TlsHandle(shared);
        if handle.close_reason().is_some() {
            return;
        }
        let now = handle.0.epoch.elapsed().as_millis() as u64;
        let last = handle.0.last_write_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= interval_ms && handle.send(&Record::Keepalive).await.is_err()
        {
            return;
        }
    }
}

/// Reads records from a TLS connection.
pub struct RecordReader {
    read: ReadHalf<Stream>,
    decoder: RecordDecoder,
    buf: Box<[u8]>,
    handle: TlsHandle,
    idle: Duration,
    failed: bool,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("remote", &self.handle.0.remote)
            .field("buffered", &self.decoder.buffered())
            .finish_non_exhaustive()
    }
}

impl RecordReader {
    /// The next record other than KEEPALIVE; `None` when the peer closed
    /// cleanly (a CLOSE record, whose code [`TlsHandle::close_reason`] then
    /// gives, or end of stream between records). Errors are final: a
    /// malformed record, a truncated stream, a local close, or nothing
    /// received for the idle timeout. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Record>, NetError> {
        if self.failed {
            return Err(NetError::Truncated);
        }
        let result = self.next_inner().await;
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    async fn next_inner(&mut self) -> Result<Option<Record>, NetError> {
        let mut closed = self.handle.0.closed.subscribe();
        loop {
            match self.decoder.poll_record() {
                Some(Ok(Record::Keepalive)) => continue,
                Some(Ok(Record::Close { code, reason })) => {
                    self.handle.mark_closed(code, &reason);
                    return Ok(None);
                }
                Some(Ok(record)) => return Ok(Some(record)),
                Some(Err(e)) => {
                    self.handle
                        .close(crate::CLOSE_MALFORMED, "malformed record");
                    return Err(e.into());
                }
                None => {}
            }
            if let Some((_, reason)) = self.handle.close_reason() {
                return Err(NetError::Closed(reason));
            }
            let read = tokio::select! {
                _ = closed.wait_for(Option::is_some) => continue,
                read = tokio::time::timeout(self.idle, self.read.read(&mut self.buf)) => read,
            };
            match read {
                Err(_) => {
                    self.handle.close(0, "idle timeout");
                    return Err(NetError::Timeout);
                }
                Ok(Err(e)) => {
                    self.handle.mark_closed(0, "read failed");
                    return Err(NetError::io(
                        format!("tls read from {}", self.handle.0.remote),
                        e,
                    ));
                }
                Ok(Ok(0)) => {
                    self.handle.mark_closed(0, "end of stream");
                    return if self.decoder.buffered() == 0 {
                        Ok(None)
                    } else {
                        Err(NetError::Truncated)
                    };
                }
                Ok(Ok(n)) => {
                    let data = self.buf.get(..n).unwrap_or_default();
                    if let Err(e) = self.decoder.handle_data(data) {
                        self.handle
                            .close(crate::CLOSE_MALFORMED, "record buffer full");
                        return Err(e.into());
                    }
                }
            }
        }
    }

    /// The connection's handle.
    pub fn handle(&self) -> &TlsHandle {
        &self.handle
    }
}
