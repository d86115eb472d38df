//! The media relay's state, without sockets or clock: which calls passed
//! through this supernode, the relay allocations made for them, which
//! endpoint ([`RelayPeer`]: a UDP address or a TLS-over-TCP relay leg) is
//! bound to which side of which allocation, and what to do with a datagram
//! from a given endpoint. Every function that needs the time takes it as an
//! argument; [`crate::udp`] drives this from the UDP sockets and
//! [`crate::tcp`] from the TCP relay legs.
//!
//! An allocation belongs to one call (`invite_id`) and has two sides: side 0
//! binds with `token` (handed to the requester), side 1 with `peer_token`
//! (which the requester passes to the other party in a relay candidate). A
//! datagram is forwarded only from an endpoint bound to one side, only to the
//! endpoint bound to the other side, and only within the allocation's rate
//! limit; the two sides may be on different transports. An allocation
//! without traffic (binds or forwarded datagrams) for its lifetime is gone.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_proto::relay::{BindStatus, TOKEN_LEN};
use rand::RngCore;

/// A relay token.
pub type Token = [u8; TOKEN_LEN];

/// Limits of the relay.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayLimits {
    /// An allocation ends after this long without binds or forwarded traffic.
    pub lifetime: Duration,
    /// Most allocations alive at once on this supernode.
    pub max_allocations: usize,
    /// Most allocations alive at once requested by one user.
    pub per_user: usize,
    /// A call may get allocations until this long after the last call
    /// signal for it passed through this supernode (or while it has a live
    /// allocation).
    pub invite_ttl: Duration,
    /// Most calls remembered at once (the oldest are forgotten first).
    pub max_invites: usize,
    /// Datagrams per second one allocation may carry (both directions, binds
    /// included); the burst is one second's worth.
    pub packets_per_sec: u32,
    /// Bytes per second one allocation may carry (both directions).
    pub bytes_per_sec: u32,
}

impl Default for RelayLimits {
    /// Lifetime 30 s, 10 000 allocations, 4 per user, calls remembered for
    /// 10 min (at most 20 000), 200 datagrams/s and 100 kB/s per allocation
    /// (a voice call needs 2 x 50 datagrams/s of about 61 bytes).
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(30),
            max_allocations: 10_000,
            per_user: 4,
            invite_ttl: Duration::from_secs(600),
            max_invites: 20_000,
            packets_per_sec: 200,
            bytes_per_sec: 100_000,
        }
    }
}

/// Why an allocation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No call with this id involving the requester passed through here
    /// (the same answer whether the call is unknown or belongs to others).
    #[error("no call with this invite id involving you was routed through this supernode")]
    NotInCall,
    /// The requester already has `per_user` live allocations.
    #[error("too many relay allocations for this user")]
    UserQuota,
    /// The supernode holds `max_allocations`.
    #[error("this relay is full")]
    Full,
}

/// A granted allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The requester binds with this one (side 0).
    pub token: Token,
    /// The other party binds with this one (side 1).
    pub peer_token: Token,
    /// The user the requester is in the call with.
    pub peer: String,
}

/// Where one side of an allocation is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayPeer {
    /// A UDP address: datagrams go out of the relay's primary UDP socket.
    Udp(SocketAddr),
    /// A TLS-over-TCP relay leg (its connection id): datagrams go out as
    /// DATAGRAM records on that connection.
    Tcp(u64),
}

/// What to do with a datagram that is neither STUN nor a relay bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it, unchanged, to this endpoint.
    Forward(RelayPeer),
    /// Its source is not bound to any live allocation.
    Unbound,
    /// Its source is bound, but the other side is not (yet).
    PeerUnbound,
    /// The allocation is over its rate limit.
    OverQuota,
}

#[derive(Debug, Clone)]
struct Invite {
    caller: String,
    callee: String,
    seen_at: Instant,
}

impl Invite {
    fn other(&self, user: &str) -> Option<&str> {
        if user == self.caller {
            Some(&self.callee)
        } else if user == self.callee {
            Some(&self.caller)
        } else {
            None
        }
    }

    fn is_pair(&self, a: &str, b: &str) -> bool {
        (a == self.caller && b == self.callee) || (a == self.callee && b == self.caller)
    }
}

/// A token bucket refilled at `rate` per second up to `rate`.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            level: f64::from(rate),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.level = (self.level + elapsed * self.rate).min(self.rate);
    }
}

#[derive(Debug)]
struct Allocation {
    invite_id: Vec<u8>,
    requester: String,
    peer: String,
    tokens: [Token; 2],
    bound: [Option<RelayPeer>; 2],
    last_activity: Instant,
    packets: Bucket,
    bytes: Bucket,
}

impl Allocation {
    /// Takes one datagram of `len` bytes out of the buckets, or none.
    fn admit(&mut self, len: usize, now: Instant) -> bool {
        self.packets.refill(now);
        self.bytes.refill(now);
        let len = len as f64;
        if self.packets.level < 1.0 || self.bytes.level < len {
            return false;
        }
        self.packets.level -= 1.0;
        self.bytes.level -= len;
        true
    }
}

/// Calls seen, allocations, tokens and bound endpoints.
#[derive(Debug)]
pub struct RelayTable {
    limits: RelayLimits,
    invites: HashMap<Vec<u8>, Invite>,
    allocations: HashMap<u64, Allocation>,
    tokens: HashMap<Token, (u64, usize)>,
    bound: HashMap<RelayPeer, (u64, usize)>,
    next_id: u64,
}

impl RelayTable {
    /// An empty table.
    pub fn new(limits: RelayLimits) -> Self {
        Self {
            limits,
            invites: HashMap::new(),
            allocations: HashMap::new(),
            tokens: HashMap::new(),
            bound: HashMap::new(),
            next_id: 1,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    /// Live allocations (some may have expired since the last [`Self::expire`]).
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Calls remembered.
    pub fn invite_count(&self) -> usize {
        self.invites.len()
    }

    /// Records that a call signal for `invite_id` between `from` and `to`
    /// was routed through this supernode. The first signal of an id fixes
    /// its two users; a later signal with the same id but other users does
    /// not change them (nor refresh the call). With `ended` (hangup, reject,
    /// busy) the call is forgotten and its allocations released.
    pub fn note_signal(
        &mut self,
        invite_id: &[u8],
        from: &str,
        to: &str,
        ended: bool,
        now: Instant,
    ) {
        if let Some(invite) = self.invites.get_mut(invite_id) {
            if !invite.is_pair(from, to) {
                return;
            }
            if ended {
                self.invites.remove(invite_id);
                let ids: Vec<u64> = self
                    .allocations
                    .iter()
                    .filter(|(_, a)| a.invite_id == invite_id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.remove(id);
                }
            } else {
                invite.seen_at = now;
            }
            return;
        }
        if ended || from == to {
            return;
        }
        if self.invites.len() >= self.limits.max_invites {
            self.expire(now);
        }
        if self.invites.len() >= self.limits.max_invites
            && let Some(oldest) = self
                .invites
                .iter()
                .min_by_key(|(_, i)| i.seen_at)
                .map(|(id, _)| id.clone())
        {
            self.invites.remove(&oldest);
        }
        self.invites.insert(
            invite_id.to_vec(),
            Invite {
                caller: from.to_owned(),
                callee: to.to_owned(),
                seen_at: now,
            },
        );
    }

    /// Allocates a relay for `user` in the call `invite_id`, with fresh
    /// random tokens from `rng`.
    pub fn allocate(
        &mut self,
        user: &str,
        invite_id: &[u8],
        rng: &mut impl RngCore,
        now: Instant,
    ) -> Result<Allocated, AllocError> {
        self.expire(now);
        let peer = self
            .invites
            .get(invite_id)
            .and_then(|i| i.other(user))
            .ok_or(AllocError::NotInCall)?
            .to_owned();
        // One allocation per call on this relay: when both parties joined
        // through this supernode, the second request gets the first one's
        // allocation, seen from the other side. Two allocations would bind
        // each party's one address to two allocations, and an address
        // belongs to one side at a time.
        let existing = self
            .allocations
            .iter()
            .find(|(id, a)| a.invite_id == invite_id && !self.expired(**id, now));
        if let Some((_, a)) = existing {
            let (token, peer_token) = if a.requester == user {
                (a.tokens[0], a.tokens[1])
            } else {
                (a.tokens[1], a.tokens[0])
            };
            return Ok(Allocated {
                token,
                peer_token,
                peer,
            });
        }
        let mine = self
            .allocations
            .values()
            .filter(|a| a.requester == user)
            .count();
        if mine >= self.limits.per_user {
            return Err(AllocError::UserQuota);
        }
        if self.allocations.len() >= self.limits.max_allocations {
            return Err(AllocError::Full);
        }
        let mut fresh = || loop {
            let mut token = [0u8; TOKEN_LEN];
            rng.fill_bytes(&mut token);
            if !self.tokens.contains_key(&token) {
                return token;
            }
        };
        let token = fresh();
        let mut peer_token = fresh();
        while peer_token == token {
            peer_token = fresh();
        }
        let id = self.next_id;
        self.next_id += 1;
        self.tokens.insert(token, (id, 0));
        self.tokens.insert(peer_token, (id, 1));
        self.allocations.insert(
            id,
            Allocation {
                invite_id: invite_id.to_vec(),
                requester: user.to_owned(),
                peer: peer.clone(),
                tokens: [token, peer_token],
                bound: [None, None],
                last_activity: now,
                packets: Bucket::new(self.limits.packets_per_sec, now),
                bytes: Bucket::new(self.limits.bytes_per_sec, now),
            },
        );
        Ok(Allocated {
            token,
            peer_token,
            peer,
        })
    }

    /// A bind datagram with `token` from `from`: binds `from` to that side
    /// (replacing its previous endpoint, whatever its transport, and taking
    /// `from` away from any other side it was bound to).
    pub fn bind(&mut self, token: &Token, from: RelayPeer, len: usize, now: Instant) -> BindStatus {
        let Some(&(id, side)) = self.tokens.get(token) else {
            return BindStatus::UnknownToken;
        };
        if self.expired(id, now) {
            self.remove(id);
            return BindStatus::UnknownToken;
        }
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return BindStatus::UnknownToken;
        };
        if !allocation.admit(len, now) {
            return BindStatus::OverQuota;
        }
        allocation.last_activity = now;
        let old = allocation.bound[side].replace(from);
        if let Some(old) = old
            && old != from
        {
            self.bound.remove(&old);
        }
        if let Some((other_id, other_side)) = self.bound.insert(from, (id, side))
            && (other_id, other_side) != (id, side)
            && let Some(other) = self.allocations.get_mut(&other_id)
        {
            other.bound[other_side] = None;
        }
        BindStatus::Bound
    }

    /// Decides about a datagram of `len` bytes from `from` (not STUN, not a
    /// bind).
    pub fn route(&mut self, from: RelayPeer, len: usize, now: Instant) -> Decision {
        let Some(&(id, side)) = self.bound.get(&from) else {
            return Decision::Unbound;
        };
        if self.expired(id, now) {
            self.remove(id);
            return Decision::Unbound;
        }
        let Some(allocation) = self.allocations.get_mut(&id) else {
            self.bound.remove(&from);
            return Decision::Unbound;
        };
        let Some(to) = allocation.bound[1 - side] else {
            return Decision::PeerUnbound;
        };
        if !allocation.admit(len, now) {
            return Decision::OverQuota;
        }
        allocation.last_activity = now;
        Decision::Forward(to)
    }

    /// Whether `peer` is bound to a side of an allocation that has not
    /// expired.
    pub fn is_bound(&self, peer: RelayPeer, now: Instant) -> bool {
        self.bound
            .get(&peer)
            .is_some_and(|(id, _)| !self.expired(*id, now))
    }

    /// Unbinds `peer` (a TCP relay leg that ended): its side stays
    /// unbound until the next bind. Returns whether it was bound.
    pub fn unbind(&mut self, peer: RelayPeer) -> bool {
        let Some((id, side)) = self.bound.remove(&peer) else {
            return false;
        };
        if let Some(allocation) = self.allocations.get_mut(&id)
            && allocation.bound[side] == Some(peer)
        {
            allocation.bound[side] = None;
        }
        true
    }

    /// Drops idle allocations, and calls neither signalled within
    /// `invite_ttl` nor holding an allocation. Returns how many allocations
    /// ended.
    pub fn expire(&mut self, now: Instant) -> usize {
        let idle: Vec<u64> = self
            .allocations
            .keys()
            .copied()
            .filter(|id| self.expired(*id, now))
            .collect();
        for id in &idle {
            self.remove(*id);
        }
        let ttl = self.limits.invite_ttl;
        let in_use: HashSet<&[u8]> = self
            .allocations
            .values()
            .map(|a| a.invite_id.as_slice())
            .collect();
        self.invites.retain(|invite_id, invite| {
            now.saturating_duration_since(invite.seen_at) < ttl
                || in_use.contains(invite_id.as_slice())
        });
        idle.len()
    }

    fn expired(&self, id: u64, now: Instant) -> bool {
        self.allocations
            .get(&id)
            .is_none_or(|a| now.saturating_duration_since(a.last_activity) >= self.limits.lifetime)
    }

    fn remove(&mut self, id: u64) {
        if let Some(allocation) = self.allocations.remove(&id) {
            for token in &allocation.tokens {
                self.tokens.remove(token);
            }
            for peer in allocation.bound.iter().flatten() {
                if self.bound.get(peer).is_some_and(|(owner, _)| *owner == id) {
                    self.bound.remove(peer);
                }
            }
            tracing::debug!(
                requester = %allocation.requester,
                peer = %allocation.peer,
                "relay allocation ended"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn addr(port: u16) -> RelayPeer {
        RelayPeer::Udp(SocketAddr::from(([192, 0, 2, 1], port)))
    }

    fn leg(id: u64) -> RelayPeer {
        RelayPeer::Tcp(id)
    }

    fn table() -> (RelayTable, rand::rngs::StdRng, Instant) {
        let limits = RelayLimits {
            lifetime: Duration::from_secs(30),
            max_allocations: 3,
            per_user: 2,
            invite_ttl: Duration::from_secs(600),
            max_invites: 4,
            packets_per_sec: 10,
            bytes_per_sec: 1000,
        };
        (
            RelayTable::new(limits),
            rand::rngs::StdRng::seed_from_u64(7),
            Instant::now(),
        )
    }

    #[test]
    fn only_parties_of_a_routed_call_get_an_allocation() {
        let (mut t, mut rng, now) = table();
        assert_eq!(
            t.allocate("alice", b"call-1", &mut rng, now),
            Err(AllocError::NotInCall)
        );
        t.note_signal(b"call-1", "alice", "bob", false, now);
        // A third user, or a stranger reusing the id, gets nothing.
        assert_eq!(
            t.allocate("carol", b"call-1", &mut rng, now),
            Err(AllocError::NotInCall)
        );
        t.note_signal(b"call-1", "carol", "bob", false, now);
        assert_eq!(
            t.allocate("carol", b"call-1", &mut rng, now),
            Err(AllocError::NotInCall)
        );
        let a = t.allocate("bob", b"call-1", &mut rng, now).unwrap();
        assert_eq!(a.peer, "alice");
        assert_ne!(a.token, a.peer_token);
        let b = t.allocate("alice", b"call-1", &mut rng, now).unwrap();
        assert_eq!(b.peer, "bob");
        assert_ne!(a.token, b.token);
    }

    #[test]
    fn binds_and_forwards_both_ways_only_between_bound_sides() {
        let (mut t, mut rng, now) = table();
        t.note_signal(b"c", "alice", "bob", false, now);
        let a = t.allocate("alice", b"c", &mut rng, now).unwrap();
        assert_eq!(t.route(addr(1), 61, now), Decision::Unbound);
        assert_eq!(t.bind(&a.token, addr(1), 23, now), BindStatus::Bound);
        assert_eq!(t.route(addr(1), 61, now), Decision::PeerUnbound);
        assert_eq!(t.bind(&[0; 16], addr(2), 23, now), BindStatus::UnknownToken);
        assert_eq!(t.bind(&a.peer_token, addr(2), 23, now), BindStatus::Bound);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(2)));
        assert_eq!(t.route(addr(2), 61, now), Decision::Forward(addr(1)));
        assert_eq!(t.route(addr(3), 61, now), Decision::Unbound);
        // A new NAT mapping: re-binding moves the side, the old address is out.
        assert_eq!(t.bind(&a.peer_token, addr(4), 23, now), BindStatus::Bound);
        assert_eq!(t.route(addr(2), 61, now), Decision::Unbound);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(4)));
    }

    #[test]
    fn an_address_belongs_to_one_side_at_a_time() {
        let (mut t, mut rng, now) = table();
        t.note_signal(b"c", "alice", "bob", false, now);
        let a = t.allocate("alice", b"c", &mut rng, now).unwrap();
        t.bind(&a.token, addr(1), 23, now);
        t.bind(&a.peer_token, addr(1), 23, now);
        // Side 0 lost its address to side 1.
        assert_eq!(t.route(addr(1), 61, now), Decision::PeerUnbound);
        t.bind(&a.token, addr(2), 23, now);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(2)));
    }

    #[test]
    fn both_parties_on_one_relay_share_one_allocation() {
        let (mut t, mut rng, now) = table();
        t.note_signal(b"inv1", "alice", "bob", false, now);
        let first = t.allocate("alice", b"inv1", &mut rng, now).unwrap();
        let second = t.allocate("bob", b"inv1", &mut rng, now).unwrap();
        assert_eq!(t.allocation_count(), 1);
        assert_eq!(
            (second.token, second.peer_token),
            (first.peer_token, first.token),
            "bob binds the side alice gave him"
        );
        assert_eq!(second.peer, "alice");
        let again = t.allocate("alice", b"inv1", &mut rng, now).unwrap();
        assert_eq!(again, first);
    }

    #[test]
    fn quotas_per_user_and_in_total() {
        let (mut t, mut rng, now) = table();
        t.note_signal(b"c1", "alice", "bob", false, now);
        t.note_signal(b"c2", "alice", "carol", false, now);
        t.note_signal(b"c3", "alice", "dave", false, now);
        t.note_signal(b"c4", "bob", "carol", false, now);
        t.allocate("alice", b"c1", &mut rng, now).unwrap();
        t.allocate("alice", b"c2", &mut rng, now).unwrap();
        assert_eq!(
            t.allocate("alice", b"c3", &mut rng, now),
            Err(AllocError::UserQuota)
        );
        t.allocate("bob", b"c4", &mut rng, now).unwrap();
        // Shared, not new: no quota needed.
        t.allocate("carol", b"c4", &mut rng, now).unwrap();
        assert_eq!(t.allocation_count(), 3);
        assert_eq!(
            t.allocate("dave", b"c3", &mut rng, now),
            Err(AllocError::Full)
        );
    }

    #[test]
    fn rate_limit_drops_the_excess_and_refills() {
        let (mut t, mut rng, now) = table();
        t.note_signal(b"c", "alice", "bob", false, now);
        let a = t.allocate("alice", b"c", &mut rng, now).unwrap();
        t.bind(&a.token, addr(1), 23, now);
        t.bind(&a.peer_token, addr(2), 23, now);
        // 10 datagrams/s, binds included: 8 left.
        for _ in 0..8 {
            assert_eq!(t.route(addr(1), 10, now), Decision::Forward(addr(2)));
        }
        assert_eq!(t.route(addr(1), 10, now), Decision::OverQuota);
        assert_eq!(t.bind(&a.token, addr(1), 23, now), BindStatus::OverQuota);
        let later = now + Duration::from_millis(500);
        assert_eq!(t.route(addr(2), 10, later), Decision::Forward(addr(1)));
        // 1000 bytes/s: a 2000-byte datagram never fits.
        assert_eq!(t.route(addr(2), 2000, later), Decision::OverQuota);
    }

    #[test]
    fn idle_allocations_expire_and_traffic_keeps_them() {
        let (mut t, mut rng, now) = table();
        t.note_signal(b"c", "alice", "bob", false, now);
        let a = t.allocate("alice", b"c", &mut rng, now).unwrap();
        t.bind(&a.token, addr(1), 23, now);
        t.bind(&a.peer_token, addr(2), 23, now);
        let t20 = now + Duration::from_secs(20);
        assert_eq!(t.route(addr(1), 61, t20), Decision::Forward(addr(2)));
        let t45 = now + Duration::from_secs(45);
        assert_eq!(t.route(addr(2), 61, t45), Decision::Forward(addr(1)));
        let t80 = now + Duration::from_secs(80);
        assert_eq!(t.route(addr(1), 61, t80), Decision::Unbound);
        assert_eq!(t.bind(&a.token, addr(1), 23, t80), BindStatus::UnknownToken);
        assert_eq!(t.allocation_count(), 0);
        // The call is still remembered (ttl 10 min): a new allocation works.
        t.allocate("alice", b"c", &mut rng, t80).unwrap();
        assert_eq!(t.expire(t80 + Duration::from_secs(30)), 1);
        assert_eq!(t.invite_count(), 1);
        t.expire(now + Duration::from_secs(700));
        assert_eq!(t.invite_count(), 0);
        assert_eq!(
            t.allocate("alice", b"c", &mut rng, now + Duration::from_secs(700)),
            Err(AllocError::NotInCall)
        );
    }

    #[test]
    fn a_hangup_by_the_parties_releases_the_call() {
        let (mut t, mut rng, now) = table();
        t.note_signal(b"c", "alice", "bob", false, now);
        let a = t.allocate("alice", b"c", &mut rng, now).unwrap();
        t.bind(&a.token, addr(1), 23, now);
        t.bind(&a.peer_token, addr(2), 23, now);
        // Someone else's hangup with the same id changes nothing.
        t.note_signal(b"c", "mallory", "alice", true, now);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(2)));
        t.note_signal(b"c", "bob", "alice", true, now);
        assert_eq!(t.route(addr(1), 61, now), Decision::Unbound);
        assert_eq!(t.allocation_count(), 0);
        assert_eq!(
            t.allocate("alice", b"c", &mut rng, now),
            Err(AllocError::NotInCall)
        );
    }

    #[test]
    fn a_side_binds_to_a_tcp_leg_and_forwards_across_transports() {
        let (mut t, mut rng, now) = table();
        t.note_signal(b"c", "alice", "bob", false, now);
        let a = t.allocate("alice", b"c", &mut rng, now).unwrap();
        assert_eq!(t.bind(&a.token, leg(7), 23, now), BindStatus::Bound);
        assert!(t.is_bound(leg(7), now));
        assert_eq!(t.route(leg(7), 61, now), Decision::PeerUnbound);
        assert_eq!(t.bind(&a.peer_token, addr(2), 23, now), BindStatus::Bound);
        // UDP -> TCP and TCP -> UDP.
        assert_eq!(t.route(addr(2), 61, now), Decision::Forward(leg(7)));
        assert_eq!(t.route(leg(7), 61, now), Decision::Forward(addr(2)));
        // Both sides on TCP legs.
        assert_eq!(t.bind(&a.peer_token, leg(8), 23, now), BindStatus::Bound);
        assert_eq!(t.route(leg(7), 61, now), Decision::Forward(leg(8)));
        assert_eq!(t.route(leg(8), 61, now), Decision::Forward(leg(7)));
        assert_eq!(t.route(addr(2), 61, now), Decision::Unbound);
        // A leg is not an address: the same number as a port binds nothing.
        assert_eq!(t.route(leg(2), 61, now), Decision::Unbound);
        assert!(!t.is_bound(leg(9), now));
    }

    #[test]
    fn a_side_rebinds_from_udp_to_a_tcp_leg_and_back() {
        let (mut t, mut rng, now) = table();
        t.note_signal(b"c", "alice", "bob", false, now);
        let a = t.allocate("alice", b"c", &mut rng, now).unwrap();
        t.bind(&a.token, addr(1), 23, now);
        t.bind(&a.peer_token, addr(2), 23, now);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(2)));
        // Bob's UDP gets blocked mid-call: he re-binds the same token over TCP.
        assert_eq!(t.bind(&a.peer_token, leg(5), 23, now), BindStatus::Bound);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(leg(5)));
        assert_eq!(
            t.route(addr(2), 61, now),
            Decision::Unbound,
            "old address out"
        );
        assert_eq!(t.route(leg(5), 61, now), Decision::Forward(addr(1)));
        // ... and back to UDP: the leg is out.
        assert_eq!(t.bind(&a.peer_token, addr(3), 23, now), BindStatus::Bound);
        assert!(!t.is_bound(leg(5), now));
        assert_eq!(t.route(leg(5), 61, now), Decision::Unbound);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(3)));
        assert!(!t.unbind(leg(5)), "nothing left to unbind");
    }

    #[test]
    fn an_ended_leg_is_unbound_and_receives_nothing() {
        let (mut t, mut rng, now) = table();
        t.note_signal(b"c", "alice", "bob", false, now);
        let a = t.allocate("alice", b"c", &mut rng, now).unwrap();
        t.bind(&a.token, addr(1), 23, now);
        t.bind(&a.peer_token, leg(5), 23, now);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(leg(5)));
        assert!(t.unbind(leg(5)));
        assert_eq!(t.route(addr(1), 61, now), Decision::PeerUnbound);
        assert_eq!(t.route(leg(5), 61, now), Decision::Unbound);
        // The allocation lives on: the side can bind again.
        assert_eq!(t.bind(&a.peer_token, leg(6), 23, now), BindStatus::Bound);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(leg(6)));
        // An expired allocation does not count as bound.
        assert!(!t.is_bound(leg(6), now + Duration::from_secs(31)));
    }

    #[test]
    fn remembered_calls_are_bounded() {
        let (mut t, _, now) = table();
        for i in 0..10u8 {
            t.note_signal(
                &[i],
                "alice",
                "bob",
                false,
                now + Duration::from_secs(u64::from(i)),
            );
        }
        assert_eq!(t.invite_count(), 4);
        assert!(t.invites.contains_key([9u8].as_slice()));
        assert!(!t.invites.contains_key([0u8].as_slice()));
    }
}
