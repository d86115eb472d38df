//! The link table: one live link per peer supernode (the shell may still
//! hold a second one being closed), the addresses being dialed, and the
//! requests sent over links that wait for their reply.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use natter_proto::binding::{self, Exporter, LinkRole};
use natter_proto::cert;
use natter_proto::messages::LinkHello;
use rsa::RsaPublicKey;

use super::interface::LinkId;
use super::jobs::JobId;
use crate::NodeId;

/// Why a peer's `LinkHello` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkHelloError {
    #[error("no certificate")]
    NoCertificate,
    #[error("certificate: {0}")]
    Certificate(#[from] cert::CertError),
    #[error("role {got} where {expected:?} was due")]
    WrongRole { expected: LinkRole, got: u32 },
    #[error("signature is not for this connection")]
    BadSignature,
    #[error("the peer claims this node's own id")]
    OwnId,
}

/// Checks the `LinkHello` a peer sent as the first frame of a link: a
/// SUPERNODE certificate of `login_key` valid at `now` (unix seconds), not
/// this node's own id, in the `expected` role, signed by the certified key
/// over this connection's `exporter` (a hello relayed from another link
/// fails). Returns the peer's certified node id. Revocation is the node
/// core's check ([`crate::core::Node::handle_link_up`]).
pub fn verify_link_hello(
    hello: &LinkHello,
    expected: LinkRole,
    exporter: &Exporter,
    login_key: &RsaPublicKey,
    own_id: &NodeId,
    now: i64,
) -> Result<NodeId, LinkHelloError> {
    let certificate = hello
        .certificate
        .as_ref()
        .ok_or(LinkHelloError::NoCertificate)?;
    let peer = cert::verify_supernode(certificate, login_key, now)?;
    if hello.role != expected as u32 {
        return Err(LinkHelloError::WrongRole {
            expected,
            got: hello.role,
        });
    }
    cert::verify_signature(
        &peer.public_key,
        &binding::link_hello_message(expected, exporter),
        &hello.signature,
    )
    .map_err(|_| LinkHelloError::BadSignature)?;
    if &peer.node_id == own_id {
        return Err(LinkHelloError::OwnId);
    }
    Ok(peer.node_id)
}

/// A link to another supernode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    pub id: LinkId,
    /// The peer's advertised address.
    pub addr: SocketAddr,
    /// The connection's remote address.
    pub remote: SocketAddr,
    /// Who dialed it: both sides keep the link dialed by the lower id.
    pub dialer: NodeId,
}

/// A request waiting for its reply from `peer`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    pub peer: NodeId,
    pub job: JobId,
}

/// Links, dials and pending requests.
#[derive(Debug, Default)]
pub(crate) struct Links {
    pub by_peer: HashMap<NodeId, Link>,
    /// Every link the shell reported and did not report down, with its peer.
    pub peer_of: HashMap<LinkId, NodeId>,
    pub dialing: HashSet<SocketAddr>,
    /// By request id (unique on this node).
    pub pending: HashMap<u64, Pending>,
    /// Dials of learned members left this tick (`MAX_DIALS_PER_TICK`).
    pub dial_budget: usize,
    /// Gossiped certificates that may still be verified this tick
    /// (`MAX_VERIFIES_PER_TICK`).
    pub verify_budget: usize,
}

impl Links {
    /// Whether a link to `addr` (advertised or remote) is up.
    pub fn reaches(&self, addr: SocketAddr) -> bool {
        self.by_peer
            .values()
            .any(|l| l.addr == addr || l.remote == addr)
    }

    /// The requests waiting on `peer`, removed.
    pub fn take_pending_of(&mut self, peer: &NodeId) -> Vec<(u64, Pending)> {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.peer == *peer)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.pending.remove(&id).map(|p| (id, p)))
            .collect()
    }
}
