//! The link table: one live link per peer supernode (the shell may still
//! hold a second one being closed), the addresses being dialed, and the
//! requests sent over links that wait for their reply.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::interface::LinkId;
use super::jobs::JobId;
use crate::NodeId;

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
