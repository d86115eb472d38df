//! The media relay's state, without sockets or clock: which calls passed
//! through this supernode, the relay allocations made for them, which
//! endpoint ([`RelayPeer`]: a UDP address or a TLS-over-TCP relay leg) is
//! bound to which side of which allocation, and what to do with a datagram
//! from a given endpoint. Every function that needs the time takes it as an
//! argument; [`crate::udp`] drives this from the UDP sockets and
//! [`crate::tcp`] from the TCP relay legs.
//!
//! An allocation belongs to one call (`invite_id`) that this supernode routed
//! an invite for (caller to callee), and is granted to the caller once the
//! invite was routed and to the callee once its ringing or accept (callee to
//! caller) was: relay-first calls need the relay before the accept (see
//! [`RelayTable::allocate`]). It has two sides, one per user of the call: side 0 binds with the token
//! handed to the requester, side 1 with the token handed to the other user
//! only (in that user's own `RelayAllocated`, pushed by the supernode or
//! asked for by that user). Nobody learns the other side's token.
//!
//! A UDP address binds a side only with a **cookie** proving that it receives
//! at that address ([`natter_proto::relay::cookie`], stateless: an HMAC under
//! this table's secret); a TCP relay leg (the TLS connection proves its
//! address) needs none. So nothing is ever forwarded toward an address that
//! did not answer the relay. A datagram is forwarded only from an endpoint
//! bound to one side, only to the endpoint bound to the other side, and only
//! within the allocation's rate limit; the two sides may be on different
//! transports. An allocation without traffic (binds or forwarded datagrams)
//! for its lifetime is gone. Allocations are capped per user, per source
//! prefix of the requester (/24, /56) and in total; refusals are counted.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use natter_proto::relay::{BindStatus, COOKIE_BUCKET_SECS, COOKIE_LEN, Cookie, TOKEN_LEN};
use rand::RngCore;

use crate::stun_limit::Prefix;

/// The table's maps: a fast hash (foldhash) with a random seed per map, so
/// keys an attacker picks (source addresses, tokens) cannot be aimed at
/// one bucket.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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
    /// Most allocations alive at once requested from one source prefix
    /// (/24 for IPv4, /56 for IPv6) of the requesters' sessions.
    pub per_prefix: usize,
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
    /// Lifetime 30 s, 10 000 allocations, 4 per user, 64 per source prefix,
    /// calls remembered for 10 min (at most 20 000), 200 datagrams/s and
    /// 100 kB/s per allocation (a voice call needs 2 x 50 datagrams/s of
    /// about 61 bytes).
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(30),
            max_allocations: 10_000,
            per_user: 4,
            per_prefix: 64,
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
    /// No call with this id involving the requester passed through here,
    /// or the requester is its callee and did not answer it (ringing or
    /// accept) yet; the same answer in every case.
    #[error("no call with this invite id involving you was routed through this supernode")]
    NotInCall,
    /// The requester already has `per_user` live allocations.
    #[error("too many relay allocations for this user")]
    UserQuota,
    /// The requester's source prefix already has `per_prefix` live allocations.
    #[error("too many relay allocations from this network")]
    PrefixQuota,
    /// The supernode holds `max_allocations`.
    #[error("this relay is full")]
    Full,
}

/// A granted allocation, as the requester sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The requester's own side binds with this one.
    pub token: Token,
    /// The user the requester is in the call with.
    pub peer: String,
    /// A new allocation: the token of the other user's side, for the
    /// supernode to hand to that user (never to the requester).
    pub for_peer: Option<Token>,
}

/// What a routed call signal means for the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    /// An invite: the caller (`from`) and the callee (`to`) of a new call.
    Invite,
    /// The callee rings.
    Ringing,
    /// The callee accepted.
    Accept,
    /// A hangup, reject or busy: the call is over.
    End,
    /// A mid-call candidates signal: a call already connected, resumed
    /// through this supernode after a party moved here (its supernode or
    /// its relay died: relay migration). For a call unknown here it makes
    /// the call known as an invite would, its sender in the caller's place
    /// (it may allocate); from the other user it counts as an answer.
    Resume,
    /// Anything else between the two users (ringing, candidates).
    Other,
}

/// Allocation requests refused, by reason, and binds answered with a cookie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    pub not_in_call: u64,
    pub user_quota: u64,
    pub prefix_quota: u64,
    pub full: u64,
    /// UDP binds without a valid cookie for their source (answered with one).
    pub cookie: u64,
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
    /// A ringing or an accept from the callee to the caller was routed.
    answered: bool,
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
    /// The user of each side: the requester (side 0), the other user (side 1).
    users: [String; 2],
    /// The requester's source prefix (for the per-prefix quota).
    prefix: Option<Prefix>,
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
    /// The cookie key, and the start of cookie time bucket 0.
    secret: [u8; 32],
    epoch: Instant,
    refusals: Refusals,
}

impl RelayTable {
    /// An empty table whose bind cookies are keyed with `secret` (random,
    /// from the shell) and counted in time buckets from `now`.
    pub fn new(limits: RelayLimits, secret: [u8; 32], now: Instant) -> Self {
        Self {
            limits,
            invites: HashMap::default(),
            allocations: HashMap::default(),
            tokens: HashMap::default(),
            bound: HashMap::default(),
            next_id: 1,
            secret,
            epoch: now,
            refusals: Refusals::default(),
        }
    }

    /// Refused allocations and cookie answers since start.
    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    fn bucket(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / COOKIE_BUCKET_SECS
    }

    /// The cookie a UDP bind from `source` with `token` must echo now (the
    /// one of the previous time bucket is still taken).
    pub fn cookie(&self, token: &Token, source: SocketAddr, now: Instant) -> Cookie {
        natter_proto::relay::cookie(&self.secret, self.bucket(now), token, source)
    }

    fn cookie_valid(
        &self,
        token: &Token,
        source: SocketAddr,
        cookie: &Cookie,
        now: Instant,
    ) -> bool {
        let bucket = self.bucket(now);
        let ok = |b: u64| natter_proto::relay::cookie(&self.secret, b, token, source) == *cookie;
        ok(bucket) || (bucket > 0 && ok(bucket - 1))
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

    /// Records that a call signal of `kind` for `invite_id` from `from` to
    /// `to` was routed through this supernode. Only an invite or a resume
    /// (a mid-call candidates signal, [`SignalKind::Resume`]) makes a call
    /// known (the caller is its `from`); a ringing, an accept or a resume
    /// counts only from its callee to its caller; any signal between the
    /// two users refreshes it;
    /// an `End` between them forgets it and releases its allocations. A
    /// signal with the same id between other users changes nothing.
    pub fn note_signal(
        &mut self,
        invite_id: &[u8],
        from: &str,
        to: &str,
        kind: SignalKind,
        now: Instant,
    ) {
        if let Some(invite) = self.invites.get_mut(invite_id) {
            if !invite.is_pair(from, to) {
                return;
            }
            match kind {
                SignalKind::End => {
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
                    return;
                }
                SignalKind::Ringing | SignalKind::Accept | SignalKind::Resume
                    if from == invite.callee =>
                {
                    invite.answered = true;
                }
                _ => {}
            }
            invite.seen_at = now;
            return;
        }
        if !matches!(kind, SignalKind::Invite | SignalKind::Resume) || from == to {
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
                answered: false,
                seen_at: now,
            },
        );
    }

    /// Allocates a relay for `user` (whose session comes from `source`) in
    /// the call `invite_id`, with fresh random tokens from `rng`: for its
    /// caller once the invite was routed here, for its callee once the
    /// callee's ringing or accept was. (A call starts on the relay, before
    /// any connectivity check: both sides must hold their tokens when the
    /// accept arrives, so waiting for the accept would lose the call's first
    /// frames.) The first request of a call creates the allocation and
    /// returns the other user's token in `for_peer`; a request of either
    /// user later returns that user's own side.
    pub fn allocate(
        &mut self,
        user: &str,
        source: Option<IpAddr>,
        invite_id: &[u8],
        rng: &mut impl RngCore,
        now: Instant,
    ) -> Result<Allocated, AllocError> {
        let result = self.try_allocate(user, source, invite_id, rng, now);
        if let Err(e) = result {
            let r = &mut self.refusals;
            match e {
                AllocError::NotInCall => r.not_in_call += 1,
                AllocError::UserQuota => r.user_quota += 1,
                AllocError::PrefixQuota => r.prefix_quota += 1,
                AllocError::Full => r.full += 1,
            }
        }
        result
    }

    fn try_allocate(
        &mut self,
        user: &str,
        source: Option<IpAddr>,
        invite_id: &[u8],
        rng: &mut impl RngCore,
        now: Instant,
    ) -> Result<Allocated, AllocError> {
        self.expire(now);
        let peer = self
            .invites
            .get(invite_id)
            .filter(|i| user == i.caller || i.answered)
            .and_then(|i| i.other(user))
            .ok_or(AllocError::NotInCall)?
            .to_owned();
        // One allocation per call on this relay: when both parties joined
        // through this supernode, the second request gets the same
        // allocation, its own side. Two allocations would bind each party's
        // one address to two allocations, and an address belongs to one
        // side at a time.
        let existing = self
            .allocations
            .iter()
            .find(|(id, a)| a.invite_id == invite_id && !self.expired(**id, now));
        if let Some((_, a)) = existing {
            let side = usize::from(a.users[0] != user);
            return Ok(Allocated {
                token: a.tokens[side],
                peer,
                for_peer: None,
            });
        }
        let mine = self
            .allocations
            .values()
            .filter(|a| a.users[0] == user)
            .count();
        if mine >= self.limits.per_user {
            return Err(AllocError::UserQuota);
        }
        let prefix = source.map(Prefix::of);
        if prefix.is_some()
            && self
                .allocations
                .values()
                .filter(|a| a.prefix == prefix)
                .count()
                >= self.limits.per_prefix
        {
            return Err(AllocError::PrefixQuota);
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
                users: [user.to_owned(), peer.clone()],
                prefix,
                tokens: [token, peer_token],
                bound: [None, None],
                last_activity: now,
                packets: Bucket::new(self.limits.packets_per_sec, now),
                bytes: Bucket::new(self.limits.bytes_per_sec, now),
            },
        );
        Ok(Allocated {
            token,
            peer,
            for_peer: Some(peer_token),
        })
    }

    /// A bind datagram with `token` and `cookie` from `from`. From a UDP
    /// address it needs the cookie of that address (else nothing changes
    /// and the answer is [`BindStatus::Cookie`]); a TCP leg needs none.
    /// Binds `from` to that side (replacing its previous endpoint, whatever
    /// its transport, and taking `from` away from any other side it was
    /// bound to). Returns the status and the cookie to put in the reply
    /// (the one for `from` now; zeros for a TCP leg).
    pub fn bind(
        &mut self,
        token: &Token,
        cookie: &Cookie,
        from: RelayPeer,
        len: usize,
        now: Instant,
    ) -> (BindStatus, Cookie) {
        let reply_cookie = match from {
            RelayPeer::Udp(addr) => {
                let fresh = self.cookie(token, addr, now);
                if !self.cookie_valid(token, addr, cookie, now) {
                    self.refusals.cookie += 1;
                    return (BindStatus::Cookie, fresh);
                }
                fresh
            }
            RelayPeer::Tcp(_) => [0; COOKIE_LEN],
        };
        (self.bind_confirmed(token, from, len, now), reply_cookie)
    }

    fn bind_confirmed(
        &mut self,
        token: &Token,
        from: RelayPeer,
        len: usize,
        now: Instant,
    ) -> BindStatus {
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
    ///
    /// This is the relay's per-datagram path: two hash lookups (the source,
    /// then its allocation), no allocation of memory.
    pub fn route(&mut self, from: RelayPeer, len: usize, now: Instant) -> Decision {
        let Some(&(id, side)) = self.bound.get(&from) else {
            return Decision::Unbound;
        };
        let lifetime = self.limits.lifetime;
        let Some(allocation) = self.allocations.get_mut(&id) else {
            self.bound.remove(&from);
            return Decision::Unbound;
        };
        if now.saturating_duration_since(allocation.last_activity) >= lifetime {
            self.remove(id);
            return Decision::Unbound;
        }
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
                requester = %allocation.users[0],
                peer = %allocation.users[1],
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

    /// The invite from `caller` to `callee` and the ringing back, routed.
    fn routed(t: &mut RelayTable, id: &[u8], caller: &str, callee: &str, now: Instant) {
        t.note_signal(id, caller, callee, SignalKind::Invite, now);
        t.note_signal(id, callee, caller, SignalKind::Ringing, now);
    }

    /// The other side's token of a new allocation.
    fn peer(a: &Allocated) -> Token {
        a.for_peer.expect("a new allocation")
    }

    /// A bind from `from` as a client makes it: a UDP address first gets
    /// its cookie, then binds echoing it.
    fn bind(
        t: &mut RelayTable,
        token: &Token,
        from: RelayPeer,
        len: usize,
        now: Instant,
    ) -> BindStatus {
        let (status, cookie) = t.bind(token, &[0; COOKIE_LEN], from, len, now);
        match from {
            RelayPeer::Udp(_) => {
                assert_eq!(status, BindStatus::Cookie);
                t.bind(token, &cookie, from, len, now).0
            }
            RelayPeer::Tcp(_) => status,
        }
    }

    fn table() -> (RelayTable, rand::rngs::StdRng, Instant) {
        let now = Instant::now();
        let limits = RelayLimits {
            lifetime: Duration::from_secs(30),
            max_allocations: 3,
            per_user: 2,
            per_prefix: 3,
            invite_ttl: Duration::from_secs(600),
            max_invites: 4,
            packets_per_sec: 10,
            bytes_per_sec: 1000,
        };
        (
            RelayTable::new(limits, [9; 32], now),
            rand::rngs::StdRng::seed_from_u64(7),
            now,
        )
    }

    #[test]
    fn a_call_resumed_here_gets_an_allocation_as_an_invited_one_does() {
        let (mut t, mut rng, now) = table();
        // Alice's supernode died mid-call; she rejoined here and sent bob a
        // mid-call candidates signal: she may allocate, bob gets the other
        // side pushed.
        t.note_signal(b"call-1", "alice", "bob", SignalKind::Resume, now);
        let a = t.allocate("alice", None, b"call-1", &mut rng, now).unwrap();
        assert_eq!(a.peer, "bob");
        // Bob asks himself only once he sent something back in this call.
        assert_eq!(
            t.allocate("bob", None, b"call-1", &mut rng, now),
            Err(AllocError::NotInCall)
        );
        t.note_signal(b"call-1", "bob", "alice", SignalKind::Resume, now);
        let b = t.allocate("bob", None, b"call-1", &mut rng, now).unwrap();
        assert_eq!(b.token, peer(&a), "the same allocation, bob's side");
        // A stranger's signal with the same id changes nothing; a hangup
        // between the two releases it.
        t.note_signal(b"call-1", "carol", "bob", SignalKind::Resume, now);
        assert_eq!(
            t.allocate("carol", None, b"call-1", &mut rng, now),
            Err(AllocError::NotInCall)
        );
        t.note_signal(b"call-1", "bob", "alice", SignalKind::End, now);
        assert_eq!(t.allocation_count(), 0);
    }

    #[test]
    fn only_the_caller_of_a_routed_invite_and_its_answering_callee_get_an_allocation() {
        let (mut t, mut rng, now) = table();
        assert_eq!(
            t.allocate("alice", None, b"call-1", &mut rng, now),
            Err(AllocError::NotInCall)
        );
        // A ringing or an accept alone (the old way in) makes no call known.
        t.note_signal(b"call-1", "bob", "alice", SignalKind::Ringing, now);
        t.note_signal(b"call-1", "bob", "alice", SignalKind::Accept, now);
        assert_eq!(
            t.allocate("bob", None, b"call-1", &mut rng, now),
            Err(AllocError::NotInCall)
        );
        t.note_signal(b"call-1", "alice", "bob", SignalKind::Invite, now);
        assert_eq!(
            t.allocate("bob", None, b"call-1", &mut rng, now),
            Err(AllocError::NotInCall),
            "invited, not answered: not the callee yet"
        );
        // A ringing from the caller, or from a stranger, does not count.
        t.note_signal(b"call-1", "alice", "bob", SignalKind::Ringing, now);
        t.note_signal(b"call-1", "carol", "alice", SignalKind::Accept, now);
        assert_eq!(
            t.allocate("bob", None, b"call-1", &mut rng, now),
            Err(AllocError::NotInCall)
        );
        t.note_signal(b"call-1", "bob", "alice", SignalKind::Ringing, now);
        // A third user, or a stranger reusing the id, gets nothing.
        assert_eq!(
            t.allocate("carol", None, b"call-1", &mut rng, now),
            Err(AllocError::NotInCall)
        );
        let a = t.allocate("bob", None, b"call-1", &mut rng, now).unwrap();
        assert_eq!(a.peer, "alice");
        assert_ne!(a.token, peer(&a));
        // Alice gets her own side (the token bob never saw), nothing else.
        let b = t.allocate("alice", None, b"call-1", &mut rng, now).unwrap();
        assert_eq!(b.peer, "bob");
        assert_eq!(b.token, peer(&a));
        assert_eq!(b.for_peer, None);
        assert_eq!(t.refusals().not_in_call, 5);
        // The caller may allocate as soon as its invite is routed.
        t.note_signal(b"call-2", "alice", "bob", SignalKind::Invite, now);
        assert!(t.allocate("alice", None, b"call-2", &mut rng, now).is_ok());
    }

    #[test]
    fn a_udp_bind_needs_the_cookie_of_its_own_address() {
        let (mut t, mut rng, now) = table();
        routed(&mut t, b"c", "alice", "bob", now);
        let a = t.allocate("alice", None, b"c", &mut rng, now).unwrap();
        let (status, cookie) = t.bind(&a.token, &[0; COOKIE_LEN], addr(1), 40, now);
        assert_eq!(status, BindStatus::Cookie);
        // The cookie of address 1 does not bind address 2 (a spoofer who
        // got a cookie at its own address).
        assert_eq!(
            t.bind(&a.token, &cookie, addr(2), 40, now).0,
            BindStatus::Cookie
        );
        assert_eq!(t.route(addr(2), 61, now), Decision::Unbound);
        // Nor another token's side.
        assert_eq!(
            t.bind(&peer(&a), &cookie, addr(1), 40, now).0,
            BindStatus::Cookie
        );
        assert_eq!(
            t.bind(&a.token, &cookie, addr(1), 40, now).0,
            BindStatus::Bound
        );
        // Valid in its bucket and the next, not after.
        let secs = |s: u64| now + Duration::from_secs(s);
        for at in [25, COOKIE_BUCKET_SECS + 20] {
            assert_eq!(
                t.bind(&a.token, &cookie, addr(1), 40, secs(at)).0,
                BindStatus::Bound
            );
        }
        let (status, fresh) = t.bind(
            &a.token,
            &cookie,
            addr(1),
            40,
            secs(2 * COOKIE_BUCKET_SECS + 5),
        );
        assert_eq!(status, BindStatus::Cookie);
        assert_ne!(fresh, cookie);
        // A TCP leg needs none.
        assert_eq!(
            t.bind(&peer(&a), &[0; COOKIE_LEN], leg(3), 40, now).0,
            BindStatus::Bound
        );
        assert!(t.refusals().cookie >= 4);
    }

    #[test]
    fn allocations_are_capped_per_source_prefix() {
        let (mut t, mut rng, now) = table();
        let net = |last: u8| Some(IpAddr::from([198, 51, 100, last]));
        for (i, user) in ["u1", "u2", "u3", "u4"].iter().enumerate() {
            routed(&mut t, &[i as u8], user, "bob", now);
        }
        t.limits.per_prefix = 2;
        t.allocate("u1", net(1), &[0], &mut rng, now).unwrap();
        t.allocate("u2", net(2), &[1], &mut rng, now).unwrap();
        assert_eq!(
            t.allocate("u3", net(3), &[2], &mut rng, now),
            Err(AllocError::PrefixQuota)
        );
        t.allocate(
            "u4",
            Some(IpAddr::from([203, 0, 113, 1])),
            &[3],
            &mut rng,
            now,
        )
        .unwrap();
        assert_eq!(t.refusals().prefix_quota, 1);
    }

    #[test]
    fn binds_and_forwards_both_ways_only_between_bound_sides() {
        let (mut t, mut rng, now) = table();
        routed(&mut t, b"c", "alice", "bob", now);
        let a = t.allocate("alice", None, b"c", &mut rng, now).unwrap();
        assert_eq!(t.route(addr(1), 61, now), Decision::Unbound);
        assert_eq!(bind(&mut t, &a.token, addr(1), 23, now), BindStatus::Bound);
        assert_eq!(t.route(addr(1), 61, now), Decision::PeerUnbound);
        assert_eq!(
            bind(&mut t, &[0; 16], addr(2), 23, now),
            BindStatus::UnknownToken
        );
        assert_eq!(bind(&mut t, &peer(&a), addr(2), 23, now), BindStatus::Bound);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(2)));
        assert_eq!(t.route(addr(2), 61, now), Decision::Forward(addr(1)));
        assert_eq!(t.route(addr(3), 61, now), Decision::Unbound);
        // A new NAT mapping: re-binding moves the side, the old address is out.
        assert_eq!(bind(&mut t, &peer(&a), addr(4), 23, now), BindStatus::Bound);
        assert_eq!(t.route(addr(2), 61, now), Decision::Unbound);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(4)));
    }

    #[test]
    fn an_address_belongs_to_one_side_at_a_time() {
        let (mut t, mut rng, now) = table();
        routed(&mut t, b"c", "alice", "bob", now);
        let a = t.allocate("alice", None, b"c", &mut rng, now).unwrap();
        bind(&mut t, &a.token, addr(1), 23, now);
        bind(&mut t, &peer(&a), addr(1), 23, now);
        // Side 0 lost its address to side 1.
        assert_eq!(t.route(addr(1), 61, now), Decision::PeerUnbound);
        bind(&mut t, &a.token, addr(2), 23, now);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(2)));
    }

    #[test]
    fn both_parties_on_one_relay_share_one_allocation() {
        let (mut t, mut rng, now) = table();
        routed(&mut t, b"inv1", "alice", "bob", now);
        let first = t.allocate("alice", None, b"inv1", &mut rng, now).unwrap();
        let second = t.allocate("bob", None, b"inv1", &mut rng, now).unwrap();
        assert_eq!(t.allocation_count(), 1);
        assert_eq!(second.token, peer(&first), "bob gets the side made for him");
        assert_eq!(second.for_peer, None, "and not alice's token");
        assert_eq!(second.peer, "alice");
        let again = t.allocate("alice", None, b"inv1", &mut rng, now).unwrap();
        assert_eq!(again.token, first.token);
        assert_eq!(again.for_peer, None);
    }

    #[test]
    fn quotas_per_user_and_in_total() {
        let (mut t, mut rng, now) = table();
        routed(&mut t, b"c1", "alice", "bob", now);
        routed(&mut t, b"c2", "alice", "carol", now);
        routed(&mut t, b"c3", "alice", "dave", now);
        routed(&mut t, b"c4", "bob", "carol", now);
        t.allocate("alice", None, b"c1", &mut rng, now).unwrap();
        t.allocate("alice", None, b"c2", &mut rng, now).unwrap();
        assert_eq!(
            t.allocate("alice", None, b"c3", &mut rng, now),
            Err(AllocError::UserQuota)
        );
        t.allocate("bob", None, b"c4", &mut rng, now).unwrap();
        // Shared, not new: no quota needed.
        t.allocate("carol", None, b"c4", &mut rng, now).unwrap();
        assert_eq!(t.allocation_count(), 3);
        assert_eq!(
            t.allocate("dave", None, b"c3", &mut rng, now),
            Err(AllocError::Full)
        );
    }

    #[test]
    fn rate_limit_drops_the_excess_and_refills() {
        let (mut t, mut rng, now) = table();
        routed(&mut t, b"c", "alice", "bob", now);
        let a = t.allocate("alice", None, b"c", &mut rng, now).unwrap();
        bind(&mut t, &a.token, addr(1), 23, now);
        bind(&mut t, &peer(&a), addr(2), 23, now);
        // 10 datagrams/s, binds included: 8 left.
        for _ in 0..8 {
            assert_eq!(t.route(addr(1), 10, now), Decision::Forward(addr(2)));
        }
        assert_eq!(t.route(addr(1), 10, now), Decision::OverQuota);
        assert_eq!(
            bind(&mut t, &a.token, addr(1), 23, now),
            BindStatus::OverQuota
        );
        let later = now + Duration::from_millis(500);
        assert_eq!(t.route(addr(2), 10, later), Decision::Forward(addr(1)));
        // 1000 bytes/s: a 2000-byte datagram never fits.
        assert_eq!(t.route(addr(2), 2000, later), Decision::OverQuota);
    }

    #[test]
    fn idle_allocations_expire_and_traffic_keeps_them() {
        let (mut t, mut rng, now) = table();
        routed(&mut t, b"c", "alice", "bob", now);
        let a = t.allocate("alice", None, b"c", &mut rng, now).unwrap();
        bind(&mut t, &a.token, addr(1), 23, now);
        bind(&mut t, &peer(&a), addr(2), 23, now);
        let t20 = now + Duration::from_secs(20);
        assert_eq!(t.route(addr(1), 61, t20), Decision::Forward(addr(2)));
        let t45 = now + Duration::from_secs(45);
        assert_eq!(t.route(addr(2), 61, t45), Decision::Forward(addr(1)));
        let t80 = now + Duration::from_secs(80);
        assert_eq!(t.route(addr(1), 61, t80), Decision::Unbound);
        assert_eq!(
            bind(&mut t, &a.token, addr(1), 23, t80),
            BindStatus::UnknownToken
        );
        assert_eq!(t.allocation_count(), 0);
        // The call is still remembered (ttl 10 min): a new allocation works.
        t.allocate("alice", None, b"c", &mut rng, t80).unwrap();
        assert_eq!(t.expire(t80 + Duration::from_secs(30)), 1);
        assert_eq!(t.invite_count(), 1);
        t.expire(now + Duration::from_secs(700));
        assert_eq!(t.invite_count(), 0);
        assert_eq!(
            t.allocate(
                "alice",
                None,
                b"c",
                &mut rng,
                now + Duration::from_secs(700)
            ),
            Err(AllocError::NotInCall)
        );
    }

    #[test]
    fn a_hangup_by_the_parties_releases_the_call() {
        let (mut t, mut rng, now) = table();
        routed(&mut t, b"c", "alice", "bob", now);
        let a = t.allocate("alice", None, b"c", &mut rng, now).unwrap();
        bind(&mut t, &a.token, addr(1), 23, now);
        bind(&mut t, &peer(&a), addr(2), 23, now);
        // Someone else's hangup with the same id changes nothing.
        t.note_signal(b"c", "mallory", "alice", SignalKind::End, now);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(2)));
        t.note_signal(b"c", "bob", "alice", SignalKind::End, now);
        assert_eq!(t.route(addr(1), 61, now), Decision::Unbound);
        assert_eq!(t.allocation_count(), 0);
        assert_eq!(
            t.allocate("alice", None, b"c", &mut rng, now),
            Err(AllocError::NotInCall)
        );
    }

    #[test]
    fn a_side_binds_to_a_tcp_leg_and_forwards_across_transports() {
        let (mut t, mut rng, now) = table();
        routed(&mut t, b"c", "alice", "bob", now);
        let a = t.allocate("alice", None, b"c", &mut rng, now).unwrap();
        assert_eq!(bind(&mut t, &a.token, leg(7), 23, now), BindStatus::Bound);
        assert!(t.is_bound(leg(7), now));
        assert_eq!(t.route(leg(7), 61, now), Decision::PeerUnbound);
        assert_eq!(bind(&mut t, &peer(&a), addr(2), 23, now), BindStatus::Bound);
        // UDP -> TCP and TCP -> UDP.
        assert_eq!(t.route(addr(2), 61, now), Decision::Forward(leg(7)));
        assert_eq!(t.route(leg(7), 61, now), Decision::Forward(addr(2)));
        // Both sides on TCP legs.
        assert_eq!(bind(&mut t, &peer(&a), leg(8), 23, now), BindStatus::Bound);
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
        routed(&mut t, b"c", "alice", "bob", now);
        let a = t.allocate("alice", None, b"c", &mut rng, now).unwrap();
        bind(&mut t, &a.token, addr(1), 23, now);
        bind(&mut t, &peer(&a), addr(2), 23, now);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(2)));
        // Bob's UDP gets blocked mid-call: he re-binds the same token over TCP.
        assert_eq!(bind(&mut t, &peer(&a), leg(5), 23, now), BindStatus::Bound);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(leg(5)));
        assert_eq!(
            t.route(addr(2), 61, now),
            Decision::Unbound,
            "old address out"
        );
        assert_eq!(t.route(leg(5), 61, now), Decision::Forward(addr(1)));
        // ... and back to UDP: the leg is out.
        assert_eq!(bind(&mut t, &peer(&a), addr(3), 23, now), BindStatus::Bound);
        assert!(!t.is_bound(leg(5), now));
        assert_eq!(t.route(leg(5), 61, now), Decision::Unbound);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(addr(3)));
        assert!(!t.unbind(leg(5)), "nothing left to unbind");
    }

    #[test]
    fn an_ended_leg_is_unbound_and_receives_nothing() {
        let (mut t, mut rng, now) = table();
        routed(&mut t, b"c", "alice", "bob", now);
        let a = t.allocate("alice", None, b"c", &mut rng, now).unwrap();
        bind(&mut t, &a.token, addr(1), 23, now);
        bind(&mut t, &peer(&a), leg(5), 23, now);
        assert_eq!(t.route(addr(1), 61, now), Decision::Forward(leg(5)));
        assert!(t.unbind(leg(5)));
        assert_eq!(t.route(addr(1), 61, now), Decision::PeerUnbound);
        assert_eq!(t.route(leg(5), 61, now), Decision::Unbound);
        // The allocation lives on: the side can bind again.
        assert_eq!(bind(&mut t, &peer(&a), leg(6), 23, now), BindStatus::Bound);
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
                SignalKind::Invite,
                now + Duration::from_secs(u64::from(i)),
            );
        }
        assert_eq!(t.invite_count(), 4);
        assert!(t.invites.contains_key([9u8].as_slice()));
        assert!(!t.invites.contains_key([0u8].as_slice()));
    }
}
