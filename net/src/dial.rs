//! One dial for both transports, happy-eyeballs style: QUIC first; TLS over
//! TCP once QUIC has not connected within a head start, or at once when
//! QUIC fails (or is not tried, or the head start is zero, e.g. because TCP
//! is what worked last time). The first connection up wins, QUIC when both
//! are ready at the same moment. When every attempt fails, [`DialError`]
//! names each.
//!
//! The login client and the client's supernode session both dial with
//! [`dial`]; they differ only in the [`DialPlan`] (head start, timeout,
//! server name, TLS verifier).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::tcp::{self, ConnectError, RecordConn};
use crate::{ControlConn, EnvelopeRecv, EnvelopeSend, FramedRecv, FramedSend, NetError};
use crate::{Transport, TransportSettings};

/// Where and how to try QUIC.
#[derive(Debug, Clone)]
pub struct QuicTarget {
    /// The endpoint to connect from.
    pub endpoint: quinn::Endpoint,
    /// The server's UDP address.
    pub addr: SocketAddr,
    /// The client configuration; `None` for the endpoint's default.
    pub config: Option<quinn::ClientConfig>,
}

/// Where and how to try TLS over TCP.
#[derive(Debug, Clone)]
pub struct TcpTarget {
    /// The server's TCP address.
    pub addr: SocketAddr,
    /// The TLS client configuration (see [`crate::tls::client_tls_config`]).
    pub config: Arc<rustls::ClientConfig>,
    /// Keepalive and idle timeout of the connection.
    pub settings: TransportSettings,
}

/// What [`dial`] tries.
#[derive(Debug, Clone)]
pub struct DialPlan {
    /// The TLS server name (SNI, and what the verifier checks).
    pub server_name: String,
    /// QUIC, if tried.
    pub quic: Option<QuicTarget>,
    /// TLS over TCP, if tried.
    pub tcp: Option<TcpTarget>,
    /// How long QUIC tries alone before TLS over TCP starts too.
    pub head_start: Duration,
    /// Time for the whole dial; attempts still running then fail with a
    /// timeout.
    pub timeout: Duration,
}

/// A connection [`dial`] made, before any stream is opened on it.
#[derive(Debug)]
pub enum Connected {
    Quic(quinn::Connection),
    Tls(RecordConn),
}

impl Connected {
    /// The transport that won.
    pub fn transport(&self) -> Transport {
        match self {
            Connected::Quic(_) => Transport::Quic,
            Connected::Tls(_) => Transport::Tls,
        }
    }

    /// The server's address on that transport.
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Connected::Quic(c) => c.remote_address(),
            Connected::Tls(c) => c.handle().remote_address(),
        }
    }

    /// Opens the control stream: a new bidirectional stream on QUIC, the
    /// connection itself on TLS over TCP.
    pub async fn open_control(self) -> Result<(ControlConn, EnvelopeSend, EnvelopeRecv), NetError> {
        match self {
            Connected::Quic(connection) => {
                let (send, recv) = connection.open_bi().await?;
                Ok((
                    ControlConn::Quic(connection),
                    EnvelopeSend::Quic(FramedSend::new(send)),
                    EnvelopeRecv::Quic(FramedRecv::new(recv)),
                ))
            }
            Connected::Tls(conn) => {
                let (reader, handle) = conn.split();
                Ok((
                    ControlConn::Tls(handle.clone()),
                    EnvelopeSend::Tls(handle),
                    EnvelopeRecv::Tls(reader),
                ))
            }
        }
    }
}

/// Why the QUIC attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum QuicDialError {
    #[error("{0}")]
    Connect(#[source] quinn::ConnectError),
    #[error("{0}")]
    Connection(#[source] quinn::ConnectionError),
    #[error("timed out")]
    Timeout,
}

/// One failed attempt: where it went and why it failed.
#[derive(Debug)]
pub struct Attempt<E> {
    pub addr: SocketAddr,
    pub error: E,
}

/// Every attempt of a [`dial`] failed; `None` for a transport the plan did
/// not try.
#[derive(Debug)]
pub struct DialError {
    pub quic: Option<Attempt<QuicDialError>>,
    pub tcp: Option<Attempt<ConnectError>>,
}

impl DialError {
    /// Whether an attempt failed on the server's certificate (the TLS
    /// handshake refused it).
    pub fn is_certificate(&self) -> bool {
        self.to_string().contains("certificate")
    }
}

impl fmt::Display for DialError {
    /// `QUIC: <why>; TLS over TCP: <why>`, naming the TCP address when it is
    /// not the QUIC one (the caller names the server).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(quic) = &self.quic {
            write!(f, "QUIC: {}", quic.error)?;
            sep = "; ";
        }
        if let Some(tcp) = &self.tcp {
            match &self.quic {
                Some(quic) if quic.addr != tcp.addr => {
                    write!(f, "{sep}TLS over TCP to {}: {}", tcp.addr, tcp.error)?;
                }
                _ => write!(f, "{sep}TLS over TCP: {}", tcp.error)?,
            }
        }
        if self.quic.is_none() && self.tcp.is_none() {
            f.write_str("no transport to try")?;
        }
        Ok(())
    }
}

impl std::error::Error for DialError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match (&self.quic, &self.tcp) {
            (Some(q), _) => Some(&q.error),
            (None, Some(t)) => Some(&t.error),
            (None, None) => None,
        }
    }
}

type Pending<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Polls an attempt that may not be running (then never resolves).
async fn poll_slot<T, E>(slot: &mut Option<Pending<T, E>>) -> Result<T, E> {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn dial_quic(
    target: QuicTarget,
    server_name: String,
) -> Result<quinn::Connection, QuicDialError> {
    let connecting = match target.config {
        Some(config) => target
            .endpoint
            .connect_with(config, target.addr, &server_name),
        None => target.endpoint.connect(target.addr, &server_name),
    }
    .map_err(QuicDialError::Connect)?;
    connecting.await.map_err(QuicDialError::Connection)
}

/// Dials `plan` (see the module documentation).
pub async fn dial(plan: DialPlan) -> Result<Connected, DialError> {
    let deadline = tokio::time::Instant::now() + plan.timeout;
    let quic_addr = plan.quic.as_ref().map(|q| q.addr);
    let tcp_addr = plan.tcp.as_ref().map(|t| t.addr);
    let mut quic: Option<Pending<quinn::Connection, QuicDialError>> = plan
        .quic
        .map(|target| Box::pin(dial_quic(target, plan.server_name.clone())) as Pending<_, _>);
    let server_name = plan.server_name;
    let start_tcp = |target: TcpTarget| -> Pending<RecordConn, ConnectError> {
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let name = server_name.clone();
        Box::pin(async move {
            tcp::connect_staged(target.addr, &name, target.config, target.settings, timeout).await
        })
    };
    let mut tcp = None;
    // The TCP attempt not started yet.
    let mut tcp_later = plan.tcp;
    if plan.head_start.is_zero() {
        tcp = tcp_later.take().map(&start_tcp);
    }
    let (mut quic_error, mut tcp_error) = (None, None);
    let head_start = tokio::time::sleep(plan.head_start);
    tokio::pin!(head_start);
    let expired = tokio::time::sleep_until(deadline);
    tokio::pin!(expired);
    loop {
        if quic.is_none()
            && let Some(target) = tcp_later.take()
        {
            tcp = Some(start_tcp(target));
        }
        if quic.is_none() && tcp.is_none() {
            break;
        }
        tokio::select! {
            // QUIC first: it wins when both are ready.
            biased;
            r = poll_slot(&mut quic) => {
                quic = None;
                match r {
                    Ok(c) => return Ok(Connected::Quic(c)),
                    Err(e) => quic_error = Some(e),
                }
            }
            r = poll_slot(&mut tcp) => {
                tcp = None;
                match r {
                    Ok(c) => return Ok(Connected::Tls(c)),
                    Err(e) => tcp_error = Some(e),
                }
            }
            () = &mut head_start, if tcp_later.is_some() => {
                tcp = tcp_later.take().map(&start_tcp);
            }
            () = &mut expired => {
                if quic.take().is_some() {
                    quic_error = Some(QuicDialError::Timeout);
                }
                if tcp.take().is_some() || tcp_later.take().is_some() {
                    tcp_error = Some(ConnectError::Timeout);
                }
                break;
            }
        }
    }
    Err(DialError {
        quic: quic_addr.map(|addr| Attempt {
            addr,
            error: quic_error.unwrap_or(QuicDialError::Timeout),
        }),
        tcp: tcp_addr.map(|addr| Attempt {
            addr,
            error: tcp_error.unwrap_or(ConnectError::Timeout),
        }),
    })
}
