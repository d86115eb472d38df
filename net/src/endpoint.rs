//! QUIC endpoints: TLS 1.3 (rustls with *ring*), ALPN `natter/1`, and the
//! transport settings Natter uses on control connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_proto::messages::Envelope;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::framed::{FramedRecv, write_envelope};
use crate::{NetError, TlsIdentity};

/// ALPN protocol id of every Natter control connection.
pub const ALPN: &[u8] = b"natter/1";

/// Transport settings of a control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportSettings {
    /// How often to send a QUIC PING when nothing else is sent.
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

    /// The quinn transport configuration.
    pub fn to_quinn(&self) -> Arc<quinn::TransportConfig> {
        let mut transport = quinn::TransportConfig::default();
        let frame = natter_proto::frame::MAX_FRAME_LEN as u32;
        transport
            .keep_alive_interval(Some(self.keep_alive))
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

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration presenting `identity`, speaking ALPN `natter/1`.
pub fn server_config(
    identity: &TlsIdentity,
    transport: &TransportSettings,
) -> Result<quinn::ServerConfig, NetError> {
    let identity = identity.clone();
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain, identity.key)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(crypto).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport.to_quinn());
    Ok(server)
}

/// A client configuration that checks the server with `verifier`.
pub fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    transport: &TransportSettings,
) -> Result<quinn::ClientConfig, NetError> {
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| NetError::Tls(e.to_string()))?;
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

/// A server endpoint on `addr` that can also dial out (with
/// [`insecure_client_config`] as its default client configuration).
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &TlsIdentity,
    transport: &TransportSettings,
) -> Result<Endpoint, NetError> {
    let mut endpoint = Endpoint::server(server_config(identity, transport)?, addr)
        .map_err(|e| NetError::io(format!("listen on {addr}"), e))?;
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
    let exchange = async {
        let connection = endpoint.connect(addr, server_name)?.await?;
        let result = async {
            let (mut send, recv) = connection.open_bi().await?;
            write_envelope(&mut send, request).await?;
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

/// Accepts any server certificate but still verifies the handshake
/// signature made with it.
#[derive(Debug)]
pub(crate) struct AcceptAnyServerCert(pub(crate) Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
