//! # natter-supernode
//!
//! A Natter supernode: it admits certified users (join challenge), keeps
//! their sessions, and together with the other supernodes forms the overlay
//! that holds the user directory, spreads presence, and routes call
//! signaling and chat. docs/PROTOCOL.md describes the wire behaviour.
//!
//! The pure logic lives in sans-IO modules that take the time as an
//! argument: the node core [`core::Node`] (sessions, links, directory,
//! presence, signaling and chat routing), built on [`hrw`] (replica
//! placement), [`membership`] (failure detector), [`store`] (records and
//! pending chat) and [`ratelimit`]; [`relay`] (relay allocations and
//! forwarding decisions) and [`stun_limit`] (STUN answers per source prefix). The tokio + quinn shell ([`Supernode::spawn`])
//! runs one node task owning the core, fed by one reader task per
//! connection through a bounded queue; the UDP service (STUN reflector and
//! relay) is its own socket loop, and the optional TLS-over-TCP listener
//! (`tcp`) carries client sessions and relay legs where UDP is blocked.

pub mod config;
pub mod core;
pub mod hrw;
pub mod identity;
pub mod membership;
pub mod ratelimit;
pub mod relay;
pub mod store;
pub mod stun_limit;

mod legs;
mod metrics;
mod node_task;
mod quic;
mod server;
mod session_io;
mod shell;
mod tcp;
mod tcp_stats;
mod udp;

pub use config::{Certification, Config, Sponsor};
pub use server::{Handle, SpawnError, Supernode};
pub use stun_limit::StunLimits;
pub use tcp_stats::TcpStats;
pub use udp::{BATCH as UDP_BATCH, UdpStats, send_many};

/// The reflector (UDP service) address of a supernode known only by its QUIC
/// address, as gossip carries no reflector: by convention the same IP and
/// the QUIC port + 1 (`None` for port 65535). A supernode started with a
/// non-default `--udp` is reachable at its real reflector only through its
/// own `JoinAccepted` / host cache entry.
pub fn reflector_of(quic: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
    let port = quic.port().checked_add(1)?;
    Some(std::net::SocketAddr::new(quic.ip(), port))
}

/// A supernode's 16-byte id.
pub type NodeId = [u8; 16];

/// Reads a node id from wire bytes.
pub fn node_id(bytes: &[u8]) -> Option<NodeId> {
    bytes.try_into().ok()
}

/// Application close codes used by the supernode, the same on QUIC
/// (CONNECTION_CLOSE) and on TLS over TCP (the CLOSE record).
pub mod close {
    /// Orderly end (leave, shutdown).
    pub const NORMAL: u32 = 0;
    /// A malformed or oversized frame.
    pub const MALFORMED: u32 = 1;
    /// Join refused, or a request before joining.
    pub const REFUSED: u32 = 2;
    /// The same user joined again; this session is replaced.
    pub const REPLACED: u32 = 3;
    /// The client did not read its pushes fast enough.
    pub const SLOW: u32 = 4;
    /// The client kept flooding while rate limited.
    pub const RATE_LIMITED: u32 = 5;
    /// A second link between the same two supernodes.
    pub const DUPLICATE_LINK: u32 = 6;
    /// The peer supernode is considered dead.
    pub const DEAD: u32 = 7;
}

/// The protocol version this component speaks.
pub fn protocol_version() -> u32 {
    natter_proto::PROTOCOL_VERSION
}
