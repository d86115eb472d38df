//! What goes into and comes out of the node core: the time, connection ids,
//! and the [`Output`] the shell carries out.

use std::net::SocketAddr;
use std::time::Instant;

use natter_proto::messages::Envelope;

/// A client session's id, chosen by the shell (one per connection).
pub type SessionId = u64;

/// A supernode link's id, chosen by the shell (one per connection).
pub type LinkId = u64;

/// The time, passed in by the shell: a monotonic instant for timers and the
/// unix time in milliseconds for what records and certificates carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: i64,
}

impl Now {
    /// The unix time in seconds.
    pub fn unix_secs(&self) -> i64 {
        self.unix_ms.div_euclid(1000)
    }
}

/// How a client session reached this supernode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// A QUIC bidirectional stream.
    Quic,
    /// TLS over TCP (the firewall fallback).
    Tcp,
}

/// How a supernode link came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOrigin {
    /// This node dialed the address (from an [`Output::Dial`]).
    Dialed(SocketAddr),
    /// The peer dialed this node.
    Accepted,
}

/// A decision for the relay service (the UDP loop's allocation table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayCommand {
    /// A call signal of `kind` for `invite_id` from `from` to `to` was
    /// routed here (an invite makes the call known and opens it to the
    /// caller's allocations, the callee's ringing or accept to the callee's,
    /// an end releases its allocations).
    NoteSignal {
        invite_id: Vec<u8>,
        from: String,
        to: String,
        kind: crate::relay::SignalKind,
    },
    /// `user` (session `session`, connected from `source`) asks for a relay
    /// for `invite_id`: the shell asks the relay table and hands the result
    /// to [`crate::core::Node::handle_relay_allocated`].
    Allocate {
        session: SessionId,
        request_id: u64,
        user: String,
        source: Option<std::net::IpAddr>,
        invite_id: Vec<u8>,
    },
}

/// What the node wants done, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Queue this envelope on the session's connection.
    ToSession(SessionId, Envelope),
    /// Flush what is queued for the session, then close it with this code.
    CloseSession(SessionId, u32, &'static str),
    /// Queue this envelope on the link.
    ToLink(LinkId, Envelope),
    /// Close the link with this code.
    CloseLink(LinkId, u32, &'static str),
    /// Dial a supernode, send `hello` (this node's gossip) and report the
    /// link with [`crate::core::Node::handle_link_up`] or the failure with
    /// [`crate::core::Node::handle_dial_failed`].
    Dial { addr: SocketAddr, hello: Envelope },
    /// Carry this out on the relay table.
    Relay(RelayCommand),
}
