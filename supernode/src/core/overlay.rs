//! The overlay side: links to other supernodes (GossipMembership first,
//! one link per pair, the one dialed by the lower id wins), gossip and
//! failure detection every tick, dialing, and the frames peers send.

use std::net::SocketAddr;

use natter_proto::cert;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Certificate, Envelope, GossipMembership, Pong, RevocationList};
use natter_proto::name as names;

use super::fit;
use super::interface::{LinkId, LinkOrigin, Output, SessionId};
use super::links::{Link, Pending};
use super::state::{Node, Revoked};
use crate::membership::tcp_of;
use crate::{NodeId, close};

/// Every this many ticks, chat held for names this node is no longer a
/// replica of is handed over (again).
const HANDOFF_TICKS: u64 = 5;

/// The addresses a gossip sender reports for itself.
fn self_report(gossip: &GossipMembership) -> Option<(SocketAddr, Option<SocketAddr>, u64)> {
    gossip
        .members
        .iter()
        .find(|m| m.node_id == gossip.sender_id)
        .and_then(|m| {
            let addr = SocketAddr::try_from(m.addr.as_ref()?).ok()?;
            Some((addr, tcp_of(m), m.incarnation))
        })
}

impl Node {
    /// This node's gossip: itself first, then as many others as fit a
    /// frame, starting at an offset that moves every tick so that a view
    /// too large for one frame is gossiped over several.
    pub(crate) fn own_gossip(&self) -> Envelope {
        let mut view = self.membership.view();
        let others = view.split_off(1.min(view.len()));
        let make = |members| {
            Envelope::new(
                0,
                Body::GossipMembership(GossipMembership {
                    sender_id: self.config.node_id.to_vec(),
                    members,
                }),
            )
        };
        let (_, per_frame) = fit::fitted(view.iter().chain(&others).cloned(), usize::MAX, make);
        let mut others = others;
        if per_frame <= others.len() && !others.is_empty() {
            let page = per_frame.saturating_sub(1).max(1);
            let start = (self.ticks as usize).wrapping_mul(page) % others.len();
            others.rotate_left(start);
        }
        fit::fitted(view.into_iter().chain(others), usize::MAX, make).0
    }

    /// A link is up: `first` is the peer's gossip.
    pub(crate) fn link_up(
        &mut self,
        link: LinkId,
        remote: SocketAddr,
        peer: NodeId,
        certificate: Option<Certificate>,
        first: &GossipMembership,
        origin: LinkOrigin,
    ) {
        if let LinkOrigin::Dialed(addr) = origin {
            self.links.dialing.remove(&addr);
        }
        if self.revoked.nodes.contains(&peer) {
            self.stats.links_refused += 1;
            self.emit(Output::CloseLink(link, close::REFUSED, "revoked"));
            return;
        }
        // Gossip speaks only for the certified peer.
        if first.sender_id != peer {
            self.stats.links_refused += 1;
            self.emit(Output::CloseLink(
                link,
                close::REFUSED,
                "gossip for another node",
            ));
            return;
        }
        if let Some(certificate) = certificate {
            match cert::verify_supernode(&certificate, &self.config.login_key, self.now.unix_secs())
            {
                Ok(v) if v.node_id == peer => {
                    self.peer_certificates.insert(peer, (certificate, v.addrs));
                }
                _ => {
                    self.stats.links_refused += 1;
                    self.emit(Output::CloseLink(link, close::REFUSED, "certificate"));
                    return;
                }
            }
        }
        let dialed = match origin {
            LinkOrigin::Dialed(addr) => {
                self.links.dialing.remove(&addr);
                true
            }
            LinkOrigin::Accepted => {
                let hello = self.own_gossip();
                self.emit(Output::ToLink(link, hello));
                false
            }
        };
        let me = self.config.node_id;
        if peer == me {
            self.emit(Output::CloseLink(link, close::DUPLICATE_LINK, "that is me"));
            return;
        }
        let (addr, tcp, incarnation) = self_report(first).unwrap_or((remote, None, 0));
        let dialer = if dialed { me } else { peer };
        if let Some(existing) = self.links.by_peer.get(&peer).copied() {
            let keep_new = dialer == me.min(peer) && existing.dialer != dialer;
            if !keep_new {
                self.emit(Output::CloseLink(
                    link,
                    close::DUPLICATE_LINK,
                    "duplicate link",
                ));
                return;
            }
            self.links.peer_of.remove(&existing.id);
            self.emit(Output::CloseLink(
                existing.id,
                close::DUPLICATE_LINK,
                "duplicate link",
            ));
        }
        self.links.by_peer.insert(
            peer,
            Link {
                id: link,
                addr,
                remote,
                dialer,
            },
        );
        self.links.peer_of.insert(link, peer);
        tracing::info!(peer = %short(&peer), %addr, dialed, "supernode link up");
        let now = self.now.mono;
        let changed = self
            .membership
            .heard_from(peer, addr, tcp, incarnation, now);
        let fresh = self.membership.learn(&first.members, now);
        if changed {
            self.on_membership_change();
        }
        self.dial_new(fresh);
    }

    /// A link ended. Returns the requests that waited on it (they fail).
    pub(crate) fn link_down(&mut self, link: LinkId) -> Vec<(u64, Pending)> {
        let Some(peer) = self.links.peer_of.remove(&link) else {
            return Vec::new();
        };
        if self.links.by_peer.get(&peer).is_none_or(|l| l.id != link) {
            return Vec::new();
        }
        self.links.by_peer.remove(&peer);
        self.peer_certificates.remove(&peer);
        let failed = self.links.take_pending_of(&peer);
        if self.membership.link_lost(&peer, self.now.mono) {
            tracing::info!(peer = %short(&peer), "supernode link lost: dead");
            self.on_membership_change();
        }
        failed
    }

    /// Dials newly learned members this node is responsible for dialing
    /// (the lower node id dials).
    fn dial_new(&mut self, fresh: Vec<(NodeId, SocketAddr)>) {
        let mut hello = None;
        for (id, addr) in fresh {
            if self.config.node_id < id
                && !self.links.by_peer.contains_key(&id)
                && self.links.dialing.insert(addr)
            {
                let hello = hello.get_or_insert_with(|| self.own_gossip()).clone();
                self.emit(Output::Dial { addr, hello });
            }
        }
    }

    /// A frame on `link`. Returns a reply to a request of this node, for
    /// the dispatcher: its request id, what waited and the body.
    pub(crate) fn link_frame(
        &mut self,
        link: LinkId,
        envelope: Envelope,
    ) -> Option<(u64, Pending, Body)> {
        let peer = *self.links.peer_of.get(&link)?;
        let rid = envelope.request_id;
        let body = envelope.body?;
        match body {
            Body::GossipMembership(gossip) => {
                if gossip.sender_id != peer {
                    return None;
                }
                let fallback = self
                    .links
                    .by_peer
                    .get(&peer)
                    .map_or(self.config.addr, |l| l.addr);
                let (addr, tcp, incarnation) = self_report(&gossip).unwrap_or((fallback, None, 0));
                let now = self.now.mono;
                let changed = self
                    .membership
                    .heard_from(peer, addr, tcp, incarnation, now);
                let fresh = self.membership.learn(&gossip.members, now);
                if changed {
                    self.on_membership_change();
                }
                self.dial_new(fresh);
            }
            Body::DirectoryStore(store) => {
                let answer = self.on_directory_store(&peer, store);
                if rid != 0 {
                    self.emit(Output::ToLink(link, Envelope::new(rid, answer)));
                }
            }
            Body::DirectoryLookup(lookup) => {
                let found = self.on_directory_lookup(&lookup);
                self.emit(Output::ToLink(
                    link,
                    Envelope::new(rid, Body::DirectoryRecords(found)),
                ));
            }
            Body::PresenceUpdate(update) => self.notify_subscribers(&update),
            body @ (Body::CallSignal(_)
            | Body::ChatMessage(_)
            | Body::ChatReceipt(_)
            | Body::RelayAllocated(_)) => {
                self.routed_from_peer(&peer, rid, body);
            }
            Body::Ping(ping) => {
                let pong = Body::Pong(Pong { nonce: ping.nonce });
                self.emit(Output::ToLink(link, Envelope::new(rid, pong)));
            }
            reply @ (Body::DirectoryRecords(_) | Body::Ack(_) | Body::Error(_) | Body::Pong(_)) => {
                let waiting = self.links.pending.get(&rid).copied();
                match waiting {
                    Some(pending) if rid != 0 && pending.peer == peer => {
                        self.links.pending.remove(&rid);
                        return Some((rid, pending, reply));
                    }
                    _ => self.stats.link_ignored += 1,
                }
            }
            other => {
                self.stats.link_ignored += 1;
                tracing::debug!(peer = %short(&peer), kind = other.type_name(), "ignored on supernode link");
            }
        }
        None
    }

    /// Every gossip interval: detect failures, gossip, (re)dial, expire.
    /// Returns the requests that waited on links closed as dead.
    pub(crate) fn tick(&mut self) -> Vec<(u64, Pending)> {
        self.ticks += 1;
        let now = self.now.mono;
        let mut failed = Vec::new();
        let died = self.membership.tick(now);
        for id in &died {
            self.peer_certificates.remove(id);
            if let Some(link) = self.links.by_peer.remove(id) {
                tracing::info!(peer = %short(id), "supernode silent: dead");
                self.links.peer_of.remove(&link.id);
                self.emit(Output::CloseLink(link.id, close::DEAD, "silent"));
                failed.extend(self.links.take_pending_of(id));
            }
        }
        if !died.is_empty() {
            self.on_membership_change();
        }
        let gossip = self.own_gossip();
        let mut links: Vec<LinkId> = self.links.by_peer.values().map(|l| l.id).collect();
        links.sort_unstable();
        for link in links {
            self.emit(Output::ToLink(link, gossip.clone()));
        }
        let mut to_dial = Vec::new();
        for (id, addr) in self.membership.suspects() {
            if self.config.node_id < id && !self.links.by_peer.contains_key(&id) {
                to_dial.push(addr);
            }
        }
        for addr in self.config.peers.clone() {
            if !self.links.reaches(addr)
                && addr != self.config.addr
                && addr != self.config.local_addr
            {
                to_dial.push(addr);
            }
        }
        to_dial.retain(|addr| self.links.dialing.insert(*addr));
        for addr in to_dial {
            self.emit(Output::Dial {
                addr,
                hello: gossip.clone(),
            });
        }
        if self.ticks.is_multiple_of(60) {
            self.expire_directory();
        }
        if self.ticks.is_multiple_of(HANDOFF_TICKS) {
            self.handoffs_due();
        }
        failed
    }
}

impl Node {
    /// Takes a revocation list (see [`Node::handle_revocations`]).
    pub(crate) fn revocations(&mut self, list: &RevocationList) -> bool {
        let body = match cert::verify_revocations(list, &self.config.login_key) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(error = %e, "revocation list refused");
                return false;
            }
        };
        if body.issued_at < self.revoked.issued_at {
            return false;
        }
        self.revoked = Revoked {
            issued_at: body.issued_at,
            users: body
                .disabled_users
                .iter()
                .filter_map(|n| names::normalise(n).ok())
                .collect(),
            nodes: body
                .revoked_supernodes
                .iter()
                .filter_map(|id| crate::node_id(id))
                .collect(),
        };
        // Links to revoked supernodes end now.
        let mut gone: Vec<LinkId> = self
            .links
            .by_peer
            .iter()
            .filter(|(peer, _)| self.revoked.nodes.contains(*peer))
            .map(|(_, l)| l.id)
            .collect();
        gone.sort_unstable();
        for link in gone {
            tracing::info!("link to a revoked supernode closed");
            self.stats.links_refused += 1;
            self.emit(Output::CloseLink(link, close::REFUSED, "revoked"));
        }
        // Sessions of disabled users end now.
        let mut ended: Vec<(SessionId, String)> = self
            .sessions
            .by_name
            .iter()
            .filter(|(name, _)| self.revoked.users.contains(*name))
            .map(|(name, id)| (*id, name.clone()))
            .collect();
        ended.sort_unstable();
        for (id, name) in ended {
            tracing::info!(user = %name, "session of a revoked user closed");
            self.stats.sessions_revoked += 1;
            self.session_closed(id);
            self.emit(Output::CloseSession(id, close::REFUSED, "revoked"));
        }
        true
    }
}

/// The first bytes of an id, for logs.
pub(crate) fn short(id: &[u8]) -> String {
    hex::encode(id.get(..4).unwrap_or(id))
}
