//! QUIC endpoints, built from the TLS configurations of [`crate::tls`]
//! (TLS 1.3, ALPN `natter/1`), and the transport settings Natter uses on
//! control connections (QUIC and TLS over TCP alike).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_proto::messages::Envelope;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, VarInt};
use rustls::client::danger::ServerCertVerifier;

use crate::framed::{FramedRecv, write_envelope};
use crate::tls::{AcceptAnyServerCert, client_tls_config, provider, server_tls_config};
use crate::{NetError, TlsIdentity};

pub use crate::tls::ALPN;

/// Transport settings of a control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportSettings {
    /// How often to send a QUIC PING (or a KEEPALIVE record on TLS over
    /// TCP) when nothing else is sent. An interval not shorter than
    /// `idle_timeout` means no QUIC PINGs at all (a server's PINGs would be
    /// acknowledged, and the acknowledgements would keep an unused
    /// connection from ever timing out).
    pub keep_alive: Duration,
    /// A connection silent this long is considered dead (the smaller of both
    /// sides' values applies).
    pub idle_timeout: Duration,
    /// Concurrent bidirectional streams the peer may open.
    pub max_bidi_streams: u32,
}

impl TransportSettings {
    /// Client <-> supernode and supernode <-> supernode: keep-alive 1 s,
    /// idle timeout 3 s, so a dead node is noticed within about 3 s.
    pub const OVERLAY: Self = Self {
        keep_alive: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3),
        max_bidi_streams: 8,
    };

    /// A client's session with its supernode over QUIC: keep-alive 15 s,
    /// idle timeout 45 s. The client learns within about 3 s that its
    /// supernode died from liveness beacons to the supernode's UDP service,
    /// which cost the supernode far less than QUIC keep-alives every second
    /// (`natter_proto::alive`); these keep-alives only hold the NAT mapping
    /// open. The supernode's server configuration uses these settings too:
    /// a link dialled with [`Self::OVERLAY`] gets the smaller idle timeout
    /// of the two (3 s), as QUIC takes the smaller of both sides' values.
    pub const SESSION: Self = Self {
        keep_alive: Duration::from_secs(natter_proto::alive::SESSION_KEEP_ALIVE_SECS),
        idle_timeout: Duration::from_secs(natter_proto::alive::SESSION_IDLE_TIMEOUT_SECS),
        max_bidi_streams: 8,
    };

    /// These settings for the accepting side of a QUIC connection: the
    /// same idle timeout, no PINGs (QUIC PINGs are acknowledged, so the
    /// dialer's PINGs alone keep a live connection alive in both
    /// directions). TLS over TCP has no acknowledgements, so both sides of
    /// a TLS connection keep sending KEEPALIVE records.
    pub fn accepting(&self) -> Self {
        Self {
            keep_alive: self.idle_timeout,
            ..*self
        }
    }

    /// The quinn transport configuration.
    pub fn to_quinn(&self) -> Arc<quinn::TransportConfig> {
        let mut transport = quinn::TransportConfig::default();
        let frame = natter_proto::frame::MAX_FRAME_LEN as u32;
        transport
            .keep_alive_interval((self.keep_alive < self.idle_timeout).then_some(self.keep_alive))
            .max_idle_timeout(
                quinn::IdleTimeout::try_from(self.idle_timeout)
                    .ok()
                    .or(Some(quinn::IdleTimeout::from(VarInt::from_u32(30_000)))),
            )
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(4 * frame))
            .receive_window(VarInt::from_u32(16 * frame));
        Arc::new(transport)
    }
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self::OVERLAY
    }
}

/// A server configuration presenting `identity`, speaking ALPN `natter/1`.
///
/// The accepting side sends no QUIC PINGs of its own (see
/// [`TransportSettings::accepting`]): the dialer's keep-alives, and the
/// acknowledgements they draw, keep both ends' idle timers and the dialer's
/// NAT mapping fresh, and each end still notices a dead peer within the idle
/// timeout. That halves the packets an idle client costs a supernode.
pub fn server_config(
    identity: &TlsIdentity,
    transport: &TransportSettings,
) -> Result<quinn::ServerConfig, NetError> {
    let crypto = QuicServerConfig::try_from(server_tls_config(identity)?)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport.accepting().to_quinn());
    Ok(server)
}

/// A client configuration that checks the server with `verifier`.
pub fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    transport: &TransportSettings,
) -> Result<quinn::ClientConfig, NetError> {
    let crypto = QuicClientConfig::try_from(client_tls_config(verifier)?)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport.to_quinn());
    Ok(client)
}

/// A client configuration that accepts any server certificate (see the
/// crate documentation for why this is the security model for supernodes).
pub fn insecure_client_config(
    transport: &TransportSettings,
) -> Result<quinn::ClientConfig, NetError> {
    client_config(Arc::new(AcceptAnyServerCert(provider())), transport)
}

/// The next connection attempt on a server `endpoint` whose client has
/// proved its address: an Initial from an address not yet validated (no
/// Retry token, no validation token from an earlier connection's
/// NEW_TOKEN frame) is answered with a QUIC Retry (RFC 9000 section 8.1.2)
/// and not handed out; the client comes back echoing the Retry token and
/// is accepted then. So a spoofed Initial gets one Retry packet (smaller
/// than the 1200-byte Initial) and never the TLS server flight, which
/// without a Retry could be up to three times the Initial (QUIC's
/// anti-amplification limit). No state is kept for a retried attempt. Every
/// Natter QUIC server accepts through this. `None` when the endpoint is
/// closed.
pub async fn accept_validated(endpoint: &Endpoint) -> Option<quinn::Incoming> {
    loop {
        let incoming = endpoint.accept().await?;
        if incoming.remote_address_validated() {
            return Some(incoming);
        }
        // Not validated implies a Retry is allowed (quinn guarantees it);
        // should it fail anyway, the attempt is dropped without an answer.
        if let Err(e) = incoming.retry() {
            e.into_incoming().ignore();
        }
    }
}

/// Receive and send buffer asked for a server endpoint's socket. One
/// socket carries every connection's packets (a supernode with 10,000 idle
/// clients receives about 10,000 keep-alive datagrams a second); the
/// default buffer (208 KiB, some 160 small datagrams on loopback) overflows
/// whenever the process is not scheduled for a few tens of milliseconds, and
/// every datagram dropped there is a keep-alive or handshake packet to send
/// again.
pub const SERVER_SOCKET_BUFFER: usize = 4 << 20;

/// A server endpoint on `addr` (its socket's buffers raised to
/// [`SERVER_SOCKET_BUFFER`]) that can also dial out (with
/// [`insecure_client_config`] as its default client configuration).
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &TlsIdentity,
    transport: &TransportSettings,
) -> Result<Endpoint, NetError> {
    let io = |e| NetError::io(format!("listen on {addr}"), e);
    let socket = std::net::UdpSocket::bind(addr).map_err(io)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into()).map_err(io)?;
    // Best effort: the kernel caps them (net.core.rmem_max, wmem_max).
    let _ = state.set_recv_buffer_size((&socket).into(), SERVER_SOCKET_BUFFER);
    let _ = state.set_send_buffer_size((&socket).into(), SERVER_SOCKET_BUFFER);
    let runtime =
        quinn::default_runtime().ok_or_else(|| io(std::io::Error::other("no async runtime")))?;
    let mut endpoint = Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config(identity, transport)?),
        socket,
        runtime,
    )
    .map_err(io)?;
    endpoint.set_default_client_config(insecure_client_config(transport)?);
    Ok(endpoint)
}

/// A client-only endpoint bound to `addr` (use port 0), with
/// [`insecure_client_config`] as its default client configuration.
pub fn client_endpoint(
    addr: SocketAddr,
    transport: &TransportSettings,
) -> Result<Endpoint, NetError> {
    let mut endpoint =
        Endpoint::client(addr).map_err(|e| NetError::io(format!("bind {addr}"), e))?;
    endpoint.set_default_client_config(insecure_client_config(transport)?);
    Ok(endpoint)
}

/// One request/response exchange on a fresh connection: connect to `addr`
/// (TLS server name `server_name`), open a bidirectional stream, write
/// `request`, finish the stream, and read one reply frame. The whole exchange
/// is bounded by `timeout`; the connection is closed afterwards.
pub async fn request_once(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    request: &Envelope,
    timeout: Duration,
) -> Result<Envelope, NetError> {
    request_once_bound(endpoint, addr, server_name, |_| request.clone(), timeout).await
}

/// As [`request_once`], the request made by `make` from the new
/// connection's TLS exporter (for requests carrying a signature bound to
/// the connection, see `natter_proto::binding`).
pub async fn request_once_bound(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    make: impl FnOnce(&natter_proto::binding::Exporter) -> Envelope,
    timeout: Duration,
) -> Result<Envelope, NetError> {
    let exchange = async {
        let connection = endpoint.connect(addr, server_name)?.await?;
        let result = async {
            let request = make(&crate::exporter::quic_exporter(&connection)?);
            let (mut send, recv) = connection.open_bi().await?;
            write_envelope(&mut send, &request).await?;
            send.finish()?;
            FramedRecv::new(recv).next().await?.ok_or(NetError::NoReply)
        }
        .await;
        connection.close(VarInt::from_u32(0), b"done");
        result
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| NetError::Timeout)?
}
