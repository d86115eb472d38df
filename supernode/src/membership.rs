//! The supernode membership table (sans-IO: every call takes `now`).
//!
//! Liveness is decided by *direct* contact only: a member is alive while this
//! node hears its gossip on their link, and dead once the link is lost or it
//! has been silent for `failure_timeout`. Gossip from others only spreads
//! which members exist: an unknown member reported alive becomes *suspect*
//! (known, not yet heard directly) until a link to it is up, and is marked
//! dead if that does not happen within `suspect_timeout`. A dead member is
//! retried when others still report it alive after `retry_after`, and
//! forgotten after `forget_after`.
//!
//! Gossip is believed only where it is certified: an entry is learned only
//! when its `certificate` is a SUPERNODE certificate naming its node id and
//! its `addr` (the check itself is the caller's, see [`Membership::learn`]),
//! and the table is bounded: [`MAX_GOSSIP_ENTRIES`] read per message,
//! [`MAX_MEMBERS`] members in all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_proto::cert::SupernodeAddrs;
use natter_proto::messages::{self, Certificate, MemberState};

use crate::NodeId;

/// Most entries of one gossip message that are read; the rest are dropped
/// (counted). An honest view carrying certificates (about 600 bytes an
/// entry) fits about 100 entries in a frame, so this only bounds the work a
/// hostile frame of small entries can cause.
pub const MAX_GOSSIP_ENTRIES: usize = 256;

/// Most members a view holds (this node not counted): past it, gossip
/// teaches no new member (counted) until some are forgotten. Members linked
/// directly are always taken (links are authenticated and bounded by the
/// connection limits).
pub const MAX_MEMBERS: usize = 1024;

/// What one gossip message taught (see [`Membership::learn`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    /// Members worth connecting to.
    pub fresh: Vec<(NodeId, SocketAddr)>,
    /// Entries dropped for their certificate: missing, not verifying, for
    /// another node, revoked, or not naming the entry's `addr`.
    pub refused: u64,
    /// Entries dropped for a cap: past [`MAX_GOSSIP_ENTRIES`] in the
    /// message, or a new member while the table holds [`MAX_MEMBERS`].
    pub over_cap: u64,
}

/// The state of one member in this node's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Heard from directly within the failure timeout.
    Alive,
    /// Known through gossip, not (yet) heard from directly.
    Suspect,
    /// Link lost or silent; kept for a while, then forgotten.
    Dead,
}

impl State {
    fn to_wire(self) -> MemberState {
        match self {
            State::Alive => MemberState::Alive,
            State::Suspect => MemberState::Suspect,
            State::Dead => MemberState::Dead,
        }
    }
}

/// One other supernode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// Its TLS-over-TCP listener, when it reported one.
    pub tcp: Option<SocketAddr>,
    pub incarnation: u64,
    pub state: State,
    /// When it was last heard from directly.
    pub last_heard: Option<Instant>,
    /// When it entered its current state.
    pub since: Instant,
}

/// Timeouts of the failure detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub failure: Duration,
    pub suspect: Duration,
    pub retry_after: Duration,
    pub forget_after: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            failure: Duration::from_secs(3),
            suspect: Duration::from_secs(5),
            retry_after: Duration::from_secs(5),
            forget_after: Duration::from_secs(60),
        }
    }
}

/// This node's view of the overlay.
#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeId,
    my_addr: SocketAddr,
    my_tcp: Option<SocketAddr>,
    my_incarnation: u64,
    timeouts: Timeouts,
    members: HashMap<NodeId, Member>,
}

impl Membership {
    /// A view containing only this node (QUIC address `my_addr`, TCP
    /// listener `my_tcp` if it has one).
    pub fn new(
        me: NodeId,
        my_addr: SocketAddr,
        my_tcp: Option<SocketAddr>,
        my_incarnation: u64,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            me,
            my_addr,
            my_tcp,
            my_incarnation,
            timeouts,
            members: HashMap::new(),
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// A member's entry.
    pub fn get(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    /// Direct contact with `id` (its gossip arrived on our link, reporting
    /// its own addresses). Returns whether the live set changed.
    pub fn heard_from(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        tcp: Option<SocketAddr>,
        incarnation: u64,
        now: Instant,
    ) -> bool {
        if id == self.me {
            return false;
        }
        let member = self.members.entry(id).or_insert(Member {
            id,
            addr,
            tcp,
            incarnation,
            state: State::Suspect,
            last_heard: None,
            since: now,
        });
        member.addr = addr;
        member.tcp = tcp;
        member.incarnation = member.incarnation.max(incarnation);
        member.last_heard = Some(now);
        if member.state == State::Alive {
            return false;
        }
        member.state = State::Alive;
        member.since = now;
        true
    }

    /// Merges a gossiped view: at most [`MAX_GOSSIP_ENTRIES`] entries of
    /// it are read, and a member not yet known is learned only while the
    /// table holds fewer than [`MAX_MEMBERS`]. An entry is taken only when
    /// `certify` accepts its certificate for its node id (returning the
    /// addresses the certificate names) and those name the entry's `addr`;
    /// the TCP listener learned is the certified one. `certify` is asked
    /// only for entries that would change something (a member not known,
    /// a dead one due for a retry, a suspect with a higher incarnation),
    /// never for members heard from directly. Returns the members worth
    /// connecting to: newly learned ones, and dead ones others still report
    /// alive (with a higher incarnation, or after `retry_after`), with what
    /// was dropped.
    pub fn learn(
        &mut self,
        gossip: &[messages::Member],
        now: Instant,
        mut certify: impl FnMut(NodeId, &Certificate) -> Option<SupernodeAddrs>,
    ) -> Learned {
        let mut learned = Learned {
            over_cap: gossip.len().saturating_sub(MAX_GOSSIP_ENTRIES) as u64,
            ..Learned::default()
        };
        for entry in gossip.iter().take(MAX_GOSSIP_ENTRIES) {
            if entry.state != MemberState::Alive as i32 {
                continue;
            }
            let Some(id) = crate::node_id(&entry.node_id) else {
                learned.refused += 1;
                continue;
            };
            if id == self.me {
                continue;
            }
            let known = self.members.get(&id);
            let due = match known {
                None => {
                    if self.members.len() >= MAX_MEMBERS {
                        learned.over_cap += 1;
                        continue;
                    }
                    true
                }
                // Nothing to learn about a member heard from directly.
                Some(m) if m.state == State::Alive => false,
                Some(m) if m.state == State::Dead => {
                    entry.incarnation > m.incarnation
                        || now.saturating_duration_since(m.since) >= self.timeouts.retry_after
                }
                Some(m) => entry.incarnation > m.incarnation,
            };
            if !due {
                continue;
            }
            let addr = entry
                .addr
                .as_ref()
                .and_then(|a| SocketAddr::try_from(a).ok());
            let certified = match (addr, &entry.certificate) {
                (Some(addr), Some(certificate)) => {
                    certify(id, certificate).filter(|c| c.quic == addr)
                }
                _ => None,
            };
            let Some(certified) = certified else {
                learned.refused += 1;
                continue;
            };
            let (addr, tcp) = (certified.quic, certified.tcp);
            match self.members.get_mut(&id) {
                None => {
                    self.members.insert(
                        id,
                        Member {
                            id,
                            addr,
                            tcp,
                            incarnation: entry.incarnation,
                            state: State::Suspect,
                            last_heard: None,
                            since: now,
                        },
                    );
                    learned.fresh.push((id, addr));
                }
                Some(member) => {
                    let was_dead = member.state == State::Dead;
                    if was_dead {
                        member.state = State::Suspect;
                        member.since = now;
                    }
                    member.addr = addr;
                    member.tcp = tcp;
                    member.incarnation = member.incarnation.max(entry.incarnation);
                    if was_dead {
                        learned.fresh.push((id, addr));
                    }
                }
            }
        }
        learned
    }

    /// Members in the table (this node not included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the table holds no other member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The link to `id` is gone. Returns whether the live set changed.
    pub fn link_lost(&mut self, id: &NodeId, now: Instant) -> bool {
        match self.members.get_mut(id) {
            Some(member) if member.state != State::Dead => {
                let was_alive = member.state == State::Alive;
                member.state = State::Dead;
                member.since = now;
                was_alive
            }
            _ => false,
        }
    }

    /// Applies the timeouts. Returns the members that just died (alive ones
    /// only matter for the live set; suspects are included too).
    pub fn tick(&mut self, now: Instant) -> Vec<NodeId> {
        let mut died = Vec::new();
        let t = self.timeouts;
        self.members.retain(|id, member| {
            let in_state = now.saturating_duration_since(member.since);
            match member.state {
                State::Alive => {
                    let silent = member
                        .last_heard
                        .map_or(in_state, |h| now.saturating_duration_since(h));
                    if silent >= t.failure {
                        member.state = State::Dead;
                        member.since = now;
                        died.push(*id);
                    }
                    true
                }
                State::Suspect => {
                    if in_state >= t.suspect {
                        member.state = State::Dead;
                        member.since = now;
                        died.push(*id);
                    }
                    true
                }
                State::Dead => in_state < t.forget_after,
            }
        });
        died.sort_unstable();
        died
    }

    /// Whether `id` is in the live set (this node always is).
    pub fn is_live(&self, id: &NodeId) -> bool {
        *id == self.me
            || self
                .members
                .get(id)
                .is_some_and(|m| m.state == State::Alive)
    }

    /// The live set, this node included, ordered by node id.
    pub fn live(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut live: Vec<(NodeId, SocketAddr)> = self
            .members
            .values()
            .filter(|m| m.state == State::Alive)
            .map(|m| (m.id, m.addr))
            .chain(std::iter::once((self.me, self.my_addr)))
            .collect();
        live.sort_unstable();
        live
    }

    /// The TLS-over-TCP listener of `id` (this node's own included), when
    /// known.
    pub fn tcp_of(&self, id: &NodeId) -> Option<SocketAddr> {
        if *id == self.me {
            self.my_tcp
        } else {
            self.members.get(id).and_then(|m| m.tcp)
        }
    }

    /// Ids of the live set, ordered.
    pub fn live_ids(&self) -> Vec<NodeId> {
        self.live().into_iter().map(|(id, _)| id).collect()
    }

    /// Suspect members: known, not linked.
    pub fn suspects(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut out: Vec<(NodeId, SocketAddr)> = self
            .members
            .values()
            .filter(|m| m.state == State::Suspect)
            .map(|m| (m.id, m.addr))
            .collect();
        out.sort_unstable();
        out
    }

    /// The view to gossip: this node (alive) and every member with its state.
    pub fn view(&self) -> Vec<messages::Member> {
        let mut view = vec![messages::Member {
            node_id: self.me.to_vec(),
            addr: Some(self.my_addr.into()),
            incarnation: self.my_incarnation,
            state: MemberState::Alive as i32,
            tcp: self.my_tcp.map(Into::into),
            ..Default::default()
        }];
        let mut others: Vec<&Member> = self.members.values().collect();
        others.sort_unstable_by_key(|m| m.id);
        view.extend(others.into_iter().map(|m| messages::Member {
            node_id: m.id.to_vec(),
            addr: Some(m.addr.into()),
            incarnation: m.incarnation,
            state: m.state.to_wire() as i32,
            tcp: m.tcp.map(Into::into),
            ..Default::default()
        }));
        view
    }
}

/// The TCP listener a gossip entry reports, if any (and valid).
pub fn tcp_of(entry: &messages::Member) -> Option<SocketAddr> {
    entry
        .tcp
        .as_ref()
        .and_then(|a| SocketAddr::try_from(a).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A stand-in certificate: `certify` below accepts it for `id` and
    /// says it names `port` (the real check is the node core's).
    fn fake_certificate(id: NodeId, port: u16) -> Certificate {
        let mut body = id.to_vec();
        body.extend_from_slice(&port.to_be_bytes());
        Certificate {
            body,
            signature: b"ok".to_vec(),
        }
    }

    fn certify(id: NodeId, certificate: &Certificate) -> Option<SupernodeAddrs> {
        let (named, port) = certificate.body.split_at_checked(16)?;
        let port = u16::from_be_bytes(port.try_into().ok()?);
        (named == id && certificate.signature == b"ok").then(|| SupernodeAddrs {
            quic: addr(port),
            reflector: addr(1),
            tcp: None,
        })
    }

    fn fresh(
        m: &mut Membership,
        view: &[messages::Member],
        now: Instant,
    ) -> Vec<(NodeId, SocketAddr)> {
        m.learn(view, now, certify).fresh
    }

    fn gossip(id: NodeId, port: u16, incarnation: u64, state: MemberState) -> messages::Member {
        messages::Member {
            node_id: id.to_vec(),
            addr: Some(addr(port).into()),
            incarnation,
            state: state as i32,
            tcp: None,
            certificate: Some(fake_certificate(id, port)),
        }
    }

    fn id(i: u16) -> NodeId {
        let mut id = [0xaa; 16];
        id[..2].copy_from_slice(&i.to_be_bytes());
        id
    }

    #[test]
    fn direct_contact_makes_alive_silence_makes_dead_then_forgotten() {
        let t0 = Instant::now();
        let mut m = Membership::new([1; 16], addr(1), None, 1, Timeouts::default());
        assert_eq!(m.live_ids(), vec![[1; 16]]);
        assert!(m.heard_from([2; 16], addr(2), None, 7, t0));
        assert!(!m.heard_from([2; 16], addr(2), None, 7, t0 + Duration::from_secs(1)));
        assert_eq!(m.live_ids(), vec![[1; 16], [2; 16]]);
        assert!(
            m.tick(t0 + Duration::from_millis(3500)).is_empty(),
            "heard at 1 s"
        );
        assert_eq!(m.tick(t0 + Duration::from_secs(4)), vec![[2; 16]]);
        assert!(!m.is_live(&[2; 16]));
        assert_eq!(m.view()[1].state, MemberState::Dead as i32);
        m.tick(t0 + Duration::from_secs(70));
        assert!(m.get(&[2; 16]).is_none(), "forgotten");
    }

    #[test]
    fn link_loss_is_immediate() {
        let t0 = Instant::now();
        let mut m = Membership::new([1; 16], addr(1), None, 1, Timeouts::default());
        m.heard_from([2; 16], addr(2), None, 1, t0);
        assert!(m.link_lost(&[2; 16], t0));
        assert!(!m.link_lost(&[2; 16], t0), "already dead");
        assert_eq!(m.live_ids(), vec![[1; 16]]);
        // Direct contact revives it.
        assert!(m.heard_from([2; 16], addr(2), None, 1, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn gossip_teaches_suspects_not_live_members() {
        let t0 = Instant::now();
        let mut m = Membership::new([1; 16], addr(1), None, 1, Timeouts::default());
        let view = vec![
            gossip([1; 16], 1, 1, MemberState::Alive),
            gossip([3; 16], 3, 5, MemberState::Alive),
            gossip([4; 16], 4, 5, MemberState::Dead),
        ];
        assert_eq!(fresh(&mut m, &view, t0), vec![([3; 16], addr(3))]);
        assert!(fresh(&mut m, &view, t0).is_empty(), "already known");
        assert!(!m.is_live(&[3; 16]));
        assert_eq!(m.suspects(), vec![([3; 16], addr(3))]);
        // Never reached: dead after the suspect timeout.
        assert_eq!(m.tick(t0 + Duration::from_secs(6)), vec![[3; 16]]);
        // Still reported alive: retried only after `retry_after`.
        assert!(fresh(&mut m, &view, t0 + Duration::from_secs(7)).is_empty());
        assert_eq!(fresh(&mut m, &view, t0 + Duration::from_secs(12)).len(), 1);
        // A restart (higher incarnation) is retried at once.
        m.tick(t0 + Duration::from_secs(18));
        let restarted = vec![gossip([3; 16], 3, 6, MemberState::Alive)];
        assert_eq!(
            fresh(&mut m, &restarted, t0 + Duration::from_secs(18)).len(),
            1
        );
    }

    #[test]
    fn certified_tcp_listeners_are_learned_and_gossiped() {
        let t0 = Instant::now();
        let mine = Some(addr(443));
        let mut m = Membership::new([1; 16], addr(1), mine, 1, Timeouts::default());
        assert_eq!(m.tcp_of(&[1; 16]), mine);
        let certify_tcp = |id: NodeId, c: &Certificate| {
            certify(id, c).map(|a| SupernodeAddrs {
                tcp: (id == [3; 16]).then_some(addr(8443)),
                ..a
            })
        };
        // The entry's own word on its TCP listener does not count.
        let mut three = gossip([3; 16], 3, 5, MemberState::Alive);
        three.tcp = Some(addr(666).into());
        let mut four = gossip([4; 16], 4, 5, MemberState::Alive);
        four.tcp = Some(addr(666).into());
        m.learn(&[three, four], t0, certify_tcp);
        assert_eq!(m.tcp_of(&[3; 16]), Some(addr(8443)));
        assert_eq!(m.tcp_of(&[4; 16]), None, "none certified");
        // What a member says about itself on its link wins.
        m.heard_from([3; 16], addr(3), Some(addr(9443)), 5, t0);
        assert_eq!(m.tcp_of(&[3; 16]), Some(addr(9443)));
        let view = m.view();
        let tcp = |id: u8| view.iter().find(|e| e.node_id == [id; 16]).and_then(tcp_of);
        assert_eq!(tcp(1), mine);
        assert_eq!(tcp(3), Some(addr(9443)));
        assert_eq!(tcp(4), None);
    }

    #[test]
    fn only_entries_whose_certificate_names_them_and_their_address_are_learned() {
        let t0 = Instant::now();
        let mut m = Membership::new([1; 16], addr(1), None, 1, Timeouts::default());
        let good = gossip([2; 16], 2, 1, MemberState::Alive);
        let no_certificate = messages::Member {
            certificate: None,
            ..gossip([3; 16], 3, 1, MemberState::Alive)
        };
        let forged = messages::Member {
            certificate: Some(Certificate {
                signature: b"forged".to_vec(),
                ..fake_certificate([4; 16], 4)
            }),
            ..gossip([4; 16], 4, 1, MemberState::Alive)
        };
        // A genuine certificate of member 2 listed for member 5.
        let borrowed = messages::Member {
            certificate: Some(fake_certificate([2; 16], 5)),
            ..gossip([5; 16], 5, 1, MemberState::Alive)
        };
        // Member 6's genuine certificate, with an address it does not name
        // (a victim's).
        let aimed = messages::Member {
            addr: Some(addr(53).into()),
            ..gossip([6; 16], 6, 1, MemberState::Alive)
        };
        let no_addr = messages::Member {
            addr: None,
            ..gossip([7; 16], 7, 1, MemberState::Alive)
        };
        let learned = m.learn(
            &[good, no_certificate, forged, borrowed, aimed, no_addr],
            t0,
            certify,
        );
        assert_eq!(learned.fresh, vec![([2; 16], addr(2))]);
        assert_eq!((learned.refused, learned.over_cap), (5, 0));
        assert_eq!(m.len(), 1);
        assert!(m.get(&[6; 16]).is_none(), "the aimed entry taught nothing");
    }

    #[test]
    fn certificates_are_checked_only_when_an_entry_would_change_something() {
        let t0 = Instant::now();
        let mut m = Membership::new([1; 16], addr(1), None, 1, Timeouts::default());
        m.heard_from([2; 16], addr(2), None, 1, t0);
        let view: Vec<_> = [2u8, 3, 4]
            .iter()
            .map(|i| gossip([*i; 16], u16::from(*i), 1, MemberState::Alive))
            .collect();
        let mut checks = 0;
        let mut counting = |id: NodeId, c: &Certificate| {
            checks += 1;
            certify(id, c)
        };
        assert_eq!(m.learn(&view, t0, &mut counting).fresh.len(), 2);
        // The same view every tick: nothing new, nothing checked.
        for s in 1..4 {
            assert!(
                m.learn(&view, t0 + Duration::from_millis(s * 100), &mut counting)
                    .fresh
                    .is_empty()
            );
        }
        assert_eq!(checks, 2, "members 3 and 4 once; 2 is heard directly");
    }

    #[test]
    fn a_message_is_read_up_to_its_cap_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut m = Membership::new([1; 16], addr(1), None, 1, Timeouts::default());
        let view: Vec<_> = (0..2000u16)
            .map(|i| gossip(id(i), 10_000 + i, 1, MemberState::Alive))
            .collect();
        let learned = m.learn(&view, t0, certify);
        assert_eq!(learned.fresh.len(), MAX_GOSSIP_ENTRIES);
        assert_eq!(learned.over_cap, (2000 - MAX_GOSSIP_ENTRIES) as u64);
        // Message after message: the table stops at MAX_MEMBERS.
        let mut total = learned.fresh.len();
        for chunk in view.chunks(MAX_GOSSIP_ENTRIES).skip(1) {
            total += m.learn(chunk, t0, certify).fresh.len();
        }
        assert_eq!(total, MAX_MEMBERS);
        assert_eq!(m.len(), MAX_MEMBERS);
        let past = gossip(id(5000), 9, 1, MemberState::Alive);
        let learned = m.learn(&[past], t0, certify);
        assert!(learned.fresh.is_empty());
        assert_eq!(learned.over_cap, 1);
        // Linked members are still taken.
        assert!(m.heard_from([2; 16], addr(2), None, 1, t0));
        // Once forgotten, room for new ones again.
        m.tick(t0 + Duration::from_secs(6));
        m.tick(t0 + Duration::from_secs(70));
        assert_eq!(m.len(), 0, "the unreached suspects are forgotten");
        assert_eq!(
            m.learn(&view[..10], t0 + Duration::from_secs(70), certify)
                .fresh
                .len(),
            10
        );
    }
}
