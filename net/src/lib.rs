//! # natter-net
//!
//! Reusable QUIC plumbing shared by Natter's login server, supernodes and
//! clients: nothing here knows about accounts, sessions or the overlay.
//!
//! | module | what |
//! |---|---|
//! | [`tls`] | ALPN `natter/1`, the one server and one client rustls configuration (TLS 1.3, *ring*) of both transports; a self-signed TLS identity (rcgen), persisted in a data directory when one is given |
//! | [`endpoint`] | QUIC server and client configurations (quinn 0.11) built from [`tls`], transport settings; [`accept_validated`]: a QUIC Retry before any handshake from an address not yet validated |
//! | [`framed`] | reading and writing [`natter_proto::messages::Envelope`] frames on QUIC streams |
//! | [`tcp`] | TLS over TCP (tokio-rustls), the firewall fallback: typed records, keepalive, close codes |
//! | [`control`] | a control connection over either transport (QUIC stream or TLS records) |
//! | [`dial`] | one happy-eyeballs dial racing QUIC and TLS over TCP, with one error naming both attempts |
//! | [`mux`] | requests and replies matched by `request_id` over a control connection; pushes to a bounded queue |
//! | [`metrics`] | the one Prometheus endpoint (`GET /metrics`, text format), small and capped |
//! | [`per_ip`] | a cap on the connections one IP address holds at once on a listener |
//!
//! ## Security model
//!
//! Clients and supernodes do **not** authenticate supernodes through TLS:
//! supernodes are ordinary volunteer machines with self-signed certificates,
//! and [`endpoint::insecure_client_config`] accepts any server certificate
//! (it still checks the TLS 1.3 handshake signature, so the session keys are
//! bound to the certificate the server presented). TLS gives confidentiality
//! against passive observers only. What is authenticated is the *user*: a
//! supernode admits a client only with a certificate from the login server
//! and a signature proving possession of the certified key (docs/PROTOCOL.md,
//! section 5.1), and it stamps the authenticated name on everything the user
//! sends. Media and call keys are end-to-end (signed X25519 shares), so a
//! hostile supernode can drop or delay signaling but cannot read or forge
//! calls. Components that *can* pin the server (the client pins the login
//! server's signing key) pass their own verifier to [`endpoint::client_config`].

pub mod control;
pub mod dial;
pub mod endpoint;
pub mod exporter;
pub mod framed;
pub mod metrics;
pub mod mux;
pub mod per_ip;
pub mod tcp;
pub mod tls;

pub use control::{ControlConn, EnvelopeRecv, EnvelopeSend, Transport};
pub use dial::{Connected, DialError, DialPlan, dial};
pub use mux::{Mux, MuxConfig, MuxError, Pushes};
pub use per_ip::{PerIp, PerIpPermit};
pub use tcp::{RecordConn, RecordReader, TlsHandle, TlsListener};

/// Close code of a connection that sent a malformed frame or record (the
/// same on QUIC and TLS).
pub const CLOSE_MALFORMED: u32 = 1;

pub use tls::ALPN;

pub use endpoint::{
    TransportSettings, accept_validated, client_config, client_endpoint, insecure_client_config,
    request_once, request_once_bound, server_config, server_endpoint,
};
pub use framed::{FramedRecv, FramedSend, write_envelope};
pub use tls::TlsIdentity;

/// Errors of the QUIC plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS identity: {0}")]
    Identity(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream already closed")]
    ClosedStream(#[from] quinn::ClosedStream),
    #[error("bad frame: {0}")]
    Frame(#[from] natter_proto::frame::FrameError),
    #[error("bad record: {0}")]
    Record(#[from] natter_proto::record::RecordError),
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("unexpected {0} record")]
    UnexpectedRecord(&'static str),
    #[error("stream ended before a reply")]
    NoReply,
    #[error("timed out")]
    Timeout,
    #[error("the connection has no TLS exporter (handshake not complete)")]
    NoExporter,
}

impl NetError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
