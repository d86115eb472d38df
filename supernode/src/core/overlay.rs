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
use super::state::{CertifiedMember, Node, Revoked};
use crate::membership::{MAX_MEMBERS, tcp_of};
use crate::{NodeId, close};

/// Every this many ticks, chat held for names this node is no longer a
/// replica of is handed over (again).
const HANDOFF_TICKS: u64 = 5;

/// Most dials of members learned from gossip per tick (between one tick
/// and the next, counting those made at once when a member is learned).
/// At the default 1 s gossip interval that is at most 8 QUIC handshakes a
/// second toward gossiped addresses, however much is gossiped; an overlay
/// of 1,000 supernodes meshes in about two minutes. Configured peers are
/// not counted.
pub const MAX_DIALS_PER_TICK: usize = 8;

/// Most gossiped member certificates verified (RSA) per tick, all peers
/// together: an entry past it is dropped this time (counted in
/// `gossip_refused` and `gossip_verify_deferred`) and taken when gossiped
/// again. A verified certificate is not verified again, so an honest
/// overlay needs this only while it meets new members; a peer listing
/// bogus certificates costs at most 64 RSA verifications a second.
pub const MAX_VERIFIES_PER_TICK: usize = 64;

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
    /// too large for one frame is gossiped over several. Every entry
    /// carries the member's certificate (this node's own once certified);
    /// a member without a verified one, or revoked, is not gossiped
    /// (receivers would drop it).
    pub(crate) fn own_gossip(&self) -> Envelope {
        let mut view = self.membership.view();
        let mut others = view.split_off(1.min(view.len()));
        if let (Some(me), Some(credentials)) = (view.first_mut(), &self.config.credentials) {
            me.certificate = Some(credentials.certificate.clone());
        }
        others.retain_mut(|entry| {
            let certified = crate::node_id(&entry.node_id)
                .filter(|id| !self.revoked.nodes.contains(id))
                .and_then(|id| self.certified.get(&id));
            match certified {
                Some(c) => {
                    entry.addr = Some(c.addrs.quic.into());
                    entry.tcp = c.addrs.tcp.map(Into::into);
                    entry.certificate = Some(c.certificate.clone());
                    true
                }
                None => false,
            }
        });
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
        if per_frame <= others.len() && !others.is_empty() {
            let page = per_frame.saturating_sub(1).max(1);
            let start = (self.ticks as usize).wrapping_mul(page) % others.len();
            others.rotate_left(start);
        }
        fit::fitted(view.into_iter().chain(others), usize::MAX, make).0
    }

    /// Merges `members` gossiped by a linked peer (see
    /// [`crate::membership::Membership::learn`]): each entry's certificate
    /// is checked against the login key now, for the entry's node id, not
    /// revoked; one already verified (same member, same bytes, not
    /// expired) is not verified again. Dials what is fresh, within the
    /// budget.
    fn learn_gossip(&mut self, members: &[natter_proto::messages::Member]) {
        let now = self.now.mono;
        let unix = self.now.unix_secs();
        let login_key = &self.config.login_key;
        let revoked = &self.revoked.nodes;
        let cache = &mut self.certified;
        let budget = &mut self.links.verify_budget;
        let stats = &mut self.stats;
        let learned = self.membership.learn(members, now, |id, certificate| {
            if revoked.contains(&id) {
                return None;
            }
            if let Some(c) = cache.get(&id)
                && c.certificate == *certificate
                && c.not_after >= unix
            {
                return Some(c.addrs);
            }
            if *budget == 0 {
                stats.gossip_verify_deferred += 1;
                return None;
            }
            *budget -= 1;
            stats.gossip_certificates_verified += 1;
            let v = cert::verify_supernode(certificate, login_key, unix).ok()?;
            if v.node_id != id {
                return None;
            }
            if cache.len() < 2 * MAX_MEMBERS || cache.contains_key(&id) {
                cache.insert(
                    id,
                    CertifiedMember {
                        certificate: certificate.clone(),
                        addrs: v.addrs,
                        not_after: v.not_after,
                    },
                );
            }
            Some(v.addrs)
        });
        self.stats.gossip_refused += learned.refused;
        self.stats.gossip_over_cap += learned.over_cap;
        if learned.refused + learned.over_cap > 0 {
            tracing::debug!(
                refused = learned.refused,
                over_cap = learned.over_cap,
                "gossip entries dropped"
            );
        }
        self.dial_new(learned.fresh);
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
                    self.certified.insert(
                        peer,
                        CertifiedMember {
                            certificate: certificate.clone(),
                            addrs: v.addrs,
                            not_after: v.not_after,
                        },
                    );
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
        let (addr, tcp, incarnation) = self.peer_report(&peer, first, remote);
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
        if changed {
            self.on_membership_change();
        }
        self.learn_gossip(&first.members);
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

    /// Whether this node dials the learned member `id` at `addr` now: it is
    /// the lower id, has no link to it, is not dialing it already, and
    /// this tick's dial budget has room (taken here; a member over budget
    /// is counted in `dials_deferred` and stays a suspect).
    fn may_dial_learned(&mut self, id: NodeId, addr: SocketAddr) -> bool {
        if self.config.node_id >= id
            || self.links.by_peer.contains_key(&id)
            || self.links.dialing.contains(&addr)
        {
            return false;
        }
        if self.links.dial_budget == 0 {
            self.stats.dials_deferred += 1;
            return false;
        }
        self.links.dial_budget -= 1;
        true
    }

    /// Dials newly learned members this node is responsible for dialing
    /// (the lower node id dials), within this tick's dial budget; the
    /// others stay suspects, dialed on a later tick.
    fn dial_new(&mut self, fresh: Vec<(NodeId, SocketAddr)>) {
        let mut hello = None;
        for (id, addr) in fresh {
            if self.may_dial_learned(id, addr) {
                self.links.dialing.insert(addr);
                let hello = hello.get_or_insert_with(|| self.own_gossip()).clone();
                self.emit(Output::Dial { addr, hello });
            }
        }
    }

    /// The addresses `peer` is reached at: those its certificate names
    /// when it proved one on the link, else what its gossip says of itself
    /// (else `fallback`); the incarnation is always its own word.
    fn peer_report(
        &self,
        peer: &NodeId,
        gossip: &GossipMembership,
        fallback: SocketAddr,
    ) -> (SocketAddr, Option<SocketAddr>, u64) {
        let reported = self_report(gossip);
        let incarnation = reported.map_or(0, |(_, _, i)| i);
        match (self.peer_certificates.get(peer), reported) {
            (Some((_, addrs)), _) => (addrs.quic, addrs.tcp, incarnation),
            (None, Some(report)) => report,
            (None, None) => (fallback, None, 0),
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
                let (addr, tcp, incarnation) = self.peer_report(&peer, &gossip, fallback);
                let now = self.now.mono;
                let changed = self
                    .membership
                    .heard_from(peer, addr, tcp, incarnation, now);
                if changed {
                    self.on_membership_change();
                }
                self.learn_gossip(&gossip.members);
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
        self.end_silent_sessions();
        let now = self.now.mono;
        let mut failed = Vec::new();
        let died = self.membership.tick(now);
        // The certificate cache: expired ones go; past MAX_MEMBERS, those
        // of members no longer in the table go too.
        let unix = self.now.unix_secs();
        self.certified.retain(|_, c| c.not_after >= unix);
        if self.certified.len() > MAX_MEMBERS {
            let membership = &self.membership;
            self.certified.retain(|id, _| membership.get(id).is_some());
        }
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
        // Learned members: at most MAX_DIALS_PER_TICK new dials a tick
        // (with those `dial_new` makes between ticks).
        self.links.dial_budget = MAX_DIALS_PER_TICK;
        self.links.verify_budget = MAX_VERIFIES_PER_TICK;
        let mut to_dial = Vec::new();
        for (id, addr) in self.membership.suspects() {
            if self.may_dial_learned(id, addr) {
                to_dial.push(addr);
            }
        }
        // Configured peers are the operator's word: always dialed.
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
