//! Conference calls, sans-IO: who hosts, the roster, and the handover when
//! the host goes.
//!
//! A conference of up to [`MAX_PARTIES`] participants is a star of ordinary
//! two-party calls ("legs", each with its own key agreement, SoM framing and
//! path) between the **host** and every other participant. The host decodes
//! every leg, mixes mix-minus and sends one stream per leg (the media side is
//! `natter_media::mix`). This module decides who hosts and which legs exist;
//! the conference messages ([`Message`]) travel as the `conference` kind of a
//! call signal on a leg, MACed like every mid-call signal (docs/PROTOCOL.md,
//! section 3.6).
//!
//! **The election** ([`elect`]), from every member's capability record
//! ([`Capabilities`]), best first by, in this order:
//!
//! 1. every other participant can reach it directly (a measured direct or
//!    relayed leg counts first, otherwise the two NAT classes predict it:
//!    [`NatClass::direct_with`]);
//! 2. its upstream carries the `n - 1` legs ([`LEG_UPSTREAM_KBPS`] each);
//! 3. the better NAT class;
//! 4. more upstream bandwidth;
//! 5. more spare CPU;
//! 6. the lower worst RTT to the others (an unmeasured path counts as worst);
//! 7. the name (the lowest normalised name wins), so the result is total.
//!
//! The host stays host until it leaves or is lost (no re-election when a
//! newcomer ranks better: no flapping). **Handover**: the host's `leave`, or
//! the shell's word that the leg to it is lost ([`Conference::handle_leg_lost`]),
//! makes each remaining participant drop the host from the roster it already
//! holds and elect again from it: no round trip, and everyone gets the same
//! answer because everyone ranks the same records (the ones in the host's
//! last roster, not their own fresher measurements). The new host dials the
//! others; one whose new host's leg is not up in [`LEG_TIMEOUT_MS`] counts
//! that host as lost too and elects the next. **Two left**: the conference
//! falls back to a plain two-party call ([`Event::Call`]): the leg between
//! them, no host, no mixing.
//!
//! **Formation**: the convener ([`Conference::convene`]) dials everyone it
//! invites, sends each an `invite` once the leg is up, collects their
//! capability records (until all are in or [`FORM_TIMEOUT_MS`] passed),
//! elects, and sends the roster and the result; if another participant wins,
//! the winner dials the others and the convener closes the legs it no longer
//! needs. A host adds a participant the same way ([`Conference::invite`]).
//!
//! **Drive loop** (like [`crate::call::CallSetup`]): feed
//! [`Conference::handle_signal`] (a conference message from the peer of a
//! connected leg, already authenticated by that call),
//! [`Conference::handle_leg_up`] / [`Conference::handle_leg_lost`] (the
//! shell's legs), [`Conference::handle_timeout`]; then drain
//! [`Conference::poll_signal`] (what to send on which leg) and
//! [`Conference::poll_event`] (which legs to dial and close, who hosts), in
//! that order: the messages queued before a [`Event::Close`] go out on the
//! leg before it is hung up.
//! Malformed messages ([`decode`]) and messages out of place are dropped
//! and counted ([`Dropped`]), never a panic; every queue is bounded.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::messages as pb;
use crate::name;

/// Most participants in one conference (the host included).
pub const MAX_PARTIES: usize = 5;
/// Length of a conference id (random, chosen by the convener).
pub const ID_LEN: usize = 16;
/// Upstream one leg needs from the host, in kb/s: a 66-byte voice datagram
/// plus 28 bytes of IPv4 and UDP headers, 50 a second (37.6 kb/s).
pub const LEG_UPSTREAM_KBPS: u32 = 38;
/// How long the convener (or a host adding someone) waits for invitees'
/// records before it elects with those that answered.
pub const FORM_TIMEOUT_MS: u64 = 30_000;
/// How long a participant waits for the leg of a newly elected host (or,
/// two left, of the peer that dials) before it counts that one as lost.
pub const LEG_TIMEOUT_MS: u64 = 5_000;
/// Most signals or events queued before the shell drains them.
const QUEUE_LIMIT: usize = 64;

/// How a participant's NAT behaves (from `natter netcheck`), best first: the
/// derived order is the election's NAT rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatClass {
    /// No NAT, no filter.
    Open,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Address-and-port-dependent mapping and filtering.
    Symmetric,
    /// Not measured (or a class this build does not know).
    Unknown,
    /// No UDP at all (TCP relay only).
    UdpBlocked,
}

impl NatClass {
    /// Whether a participant behind `self` and one behind `other` can be
    /// expected to get a direct (or hole-punched) UDP path, the same
    /// reasoning as the NAT lab's expected path: not with UDP blocked or an
    /// unknown class, not between two address-and-port-dependent mappings,
    /// not between a symmetric and a port-restricted NAT.
    pub fn direct_with(self, other: NatClass) -> bool {
        use NatClass::*;
        !matches!(
            (self, other),
            (UdpBlocked | Unknown, _)
                | (_, UdpBlocked | Unknown)
                | (Symmetric, Symmetric | PortRestricted)
                | (PortRestricted, Symmetric)
        )
    }

    fn from_wire(value: i32) -> Self {
        match pb::NatClass::try_from(value) {
            Ok(pb::NatClass::Open) => NatClass::Open,
            Ok(pb::NatClass::FullCone) => NatClass::FullCone,
            Ok(pb::NatClass::AddressRestricted) => NatClass::AddressRestricted,
            Ok(pb::NatClass::PortRestricted) => NatClass::PortRestricted,
            Ok(pb::NatClass::Symmetric) => NatClass::Symmetric,
            Ok(pb::NatClass::UdpBlocked) => NatClass::UdpBlocked,
            Ok(pb::NatClass::Unknown) | Err(_) => NatClass::Unknown,
        }
    }

    fn to_wire(self) -> i32 {
        (match self {
            NatClass::Open => pb::NatClass::Open,
            NatClass::FullCone => pb::NatClass::FullCone,
            NatClass::AddressRestricted => pb::NatClass::AddressRestricted,
            NatClass::PortRestricted => pb::NatClass::PortRestricted,
            NatClass::Symmetric => pb::NatClass::Symmetric,
            NatClass::Unknown => pb::NatClass::Unknown,
            NatClass::UdpBlocked => pb::NatClass::UdpBlocked,
        }) as i32
    }
}

/// Whether a participant's leg to another went direct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reach {
    /// No leg measured.
    #[default]
    Unknown,
    /// Direct or hole-punched.
    Direct,
    /// Needed a relay.
    Relayed,
}

/// What one participant measured on its path to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathFacts {
    /// Round-trip time, if measured.
    pub rtt_ms: Option<u32>,
    /// Whether the leg went direct, if there was one.
    pub reach: Reach,
}

/// One participant's capability record: what the election ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub nat: NatClass,
    /// Upstream bandwidth, kb/s.
    pub upstream_kbps: u32,
    /// Spare CPU, in thousandths of one core.
    pub cpu_permille: u32,
    /// Measured paths to other participants, by (normalised) name.
    pub paths: BTreeMap<String, PathFacts>,
}

impl Capabilities {
    /// A record without measured paths.
    pub fn new(nat: NatClass, upstream_kbps: u32, cpu_permille: u32) -> Self {
        Self {
            nat,
            upstream_kbps,
            cpu_permille,
            paths: BTreeMap::new(),
        }
    }
}

/// The members of a conference and their records, by normalised name.
pub type Roster = BTreeMap<String, Capabilities>;

/// What one path looks like from either end's record (`a`'s first).
fn path_facts(roster: &Roster, a: &str, b: &str) -> PathFacts {
    let of = |x: &str, y: &str| roster.get(x).and_then(|c| c.paths.get(y)).copied();
    let ab = of(a, b).unwrap_or_default();
    let ba = of(b, a).unwrap_or_default();
    PathFacts {
        rtt_ms: ab.rtt_ms.or(ba.rtt_ms),
        reach: if ab.reach == Reach::Unknown {
            ba.reach
        } else {
            ab.reach
        },
    }
}

/// Whether `from` can reach `to` directly: measured if either measured their
/// leg, predicted from their NAT classes otherwise.
pub fn reaches_directly(roster: &Roster, from: &str, to: &str) -> bool {
    match path_facts(roster, from, to).reach {
        Reach::Direct => true,
        Reach::Relayed => false,
        Reach::Unknown => match (roster.get(from), roster.get(to)) {
            (Some(f), Some(t)) => f.nat.direct_with(t.nat),
            _ => false,
        },
    }
}

/// A candidate's standing in an election, field by field in the rule's
/// order (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Every other member reaches it directly.
    pub reached_by_all: bool,
    /// Its upstream carries `n - 1` legs.
    pub upstream_sufficient: bool,
    pub nat: NatClass,
    pub upstream_kbps: u32,
    pub cpu_permille: u32,
    /// Its worst RTT to another member (`u32::MAX` if one is unmeasured).
    pub worst_rtt_ms: u32,
}

/// `name`'s standing among the members of `roster` (`None` if not a member).
pub fn standing(roster: &Roster, name: &str) -> Option<Standing> {
    let caps = roster.get(name)?;
    let others = roster.keys().filter(|n| n.as_str() != name);
    let legs = (roster.len() as u32).saturating_sub(1);
    Some(Standing {
        reached_by_all: others.clone().all(|o| reaches_directly(roster, o, name)),
        upstream_sufficient: caps.upstream_kbps >= legs.saturating_mul(LEG_UPSTREAM_KBPS),
        nat: caps.nat,
        upstream_kbps: caps.upstream_kbps,
        cpu_permille: caps.cpu_permille,
        worst_rtt_ms: others
            .map(|o| path_facts(roster, name, o).rtt_ms.unwrap_or(u32::MAX))
            .max()
            .unwrap_or(0),
    })
}

/// The members ranked by the election rule, best first.
pub fn ranking(roster: &Roster) -> Vec<&str> {
    use std::cmp::Reverse;
    let mut ranked: Vec<(&str, Standing)> = roster
        .keys()
        .filter_map(|n| Some((n.as_str(), standing(roster, n)?)))
        .collect();
    ranked.sort_by_key(|(name, s)| {
        (
            Reverse(s.reached_by_all),
            Reverse(s.upstream_sufficient),
            s.nat,
            Reverse(s.upstream_kbps),
            Reverse(s.cpu_permille),
            s.worst_rtt_ms,
            *name,
        )
    });
    ranked.into_iter().map(|(n, _)| n).collect()
}

/// The host the rule elects among the members of `roster`.
pub fn elect(roster: &Roster) -> Option<&str> {
    ranking(roster).first().copied()
}

/// A conference message, checked ([`decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// You are invited into a conference of these names, the sender first.
    Invite { participants: Vec<String> },
    /// The sender's capability record.
    Capabilities { name: String, caps: Capabilities },
    /// The members and their records (from the host).
    Roster(Roster),
    /// Who hosts, in which election round (from the host).
    HostElected { epoch: u32, host: String },
    /// The sender leaves.
    Leave,
}

/// Why a conference message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a protobuf ConferenceSignal")]
    Protobuf,
    #[error("the conference id is not {ID_LEN} bytes")]
    Id,
    #[error("no kind this build knows")]
    NoKind,
    #[error("a name breaks the name rule")]
    Name,
    #[error("more than {MAX_PARTIES} participants or paths, or too few")]
    Count,
    #[error("a name appears twice")]
    Duplicate,
}

fn checked_name(raw: &str) -> Result<String, Malformed> {
    name::normalise(raw).map_err(|_| Malformed::Name)
}

fn decode_caps(c: &pb::ConferenceCapabilities) -> Result<(String, Capabilities), Malformed> {
    let name = checked_name(&c.name)?;
    if c.paths.len() > MAX_PARTIES {
        return Err(Malformed::Count);
    }
    let mut paths = BTreeMap::new();
    for p in &c.paths {
        let peer = checked_name(&p.peer)?;
        let facts = PathFacts {
            rtt_ms: (p.rtt_ms != 0).then_some(p.rtt_ms),
            reach: match p.reach {
                1 => Reach::Direct,
                2 => Reach::Relayed,
                _ => Reach::Unknown,
            },
        };
        // A record about the sender itself says nothing: skipped.
        if peer != name && paths.insert(peer, facts).is_some() {
            return Err(Malformed::Duplicate);
        }
    }
    Ok((
        name,
        Capabilities {
            nat: NatClass::from_wire(c.nat),
            upstream_kbps: c.upstream_kbps,
            cpu_permille: c.cpu_permille,
            paths,
        },
    ))
}

fn encode_caps(name: &str, caps: &Capabilities) -> pb::ConferenceCapabilities {
    pb::ConferenceCapabilities {
        name: name.to_owned(),
        nat: caps.nat.to_wire(),
        upstream_kbps: caps.upstream_kbps,
        cpu_permille: caps.cpu_permille,
        paths: caps
            .paths
            .iter()
            .map(|(peer, f)| pb::ConferencePath {
                peer: peer.clone(),
                rtt_ms: f.rtt_ms.unwrap_or(0),
                reach: match f.reach {
                    Reach::Unknown => 0,
                    Reach::Direct => 1,
                    Reach::Relayed => 2,
                },
            })
            .collect(),
    }
}

/// Checks a conference signal: the id, the names (the name rule, no
/// duplicates), the counts ([`MAX_PARTIES`]). Total: any message in, a
/// [`Message`] or a [`Malformed`] out.
pub fn decode(signal: &pb::ConferenceSignal) -> Result<([u8; ID_LEN], Message), Malformed> {
    use pb::conference_signal::Kind;
    let id: [u8; ID_LEN] = signal
        .conference_id
        .as_slice()
        .try_into()
        .map_err(|_| Malformed::Id)?;
    let message = match signal.kind.as_ref().ok_or(Malformed::NoKind)? {
        Kind::Invite(invite) => {
            if !(2..=MAX_PARTIES).contains(&invite.participants.len()) {
                return Err(Malformed::Count);
            }
            let mut participants = Vec::with_capacity(invite.participants.len());
            for p in &invite.participants {
                let n = checked_name(p)?;
                if participants.contains(&n) {
                    return Err(Malformed::Duplicate);
                }
                participants.push(n);
            }
            Message::Invite { participants }
        }
        Kind::Capabilities(c) => {
            let (name, caps) = decode_caps(c)?;
            Message::Capabilities { name, caps }
        }
        Kind::Roster(r) => {
            if !(1..=MAX_PARTIES).contains(&r.members.len()) {
                return Err(Malformed::Count);
            }
            let mut roster = Roster::new();
            for m in &r.members {
                let (name, caps) = decode_caps(m)?;
                if roster.insert(name, caps).is_some() {
                    return Err(Malformed::Duplicate);
                }
            }
            Message::Roster(roster)
        }
        Kind::HostElected(h) => Message::HostElected {
            epoch: h.epoch,
            host: checked_name(&h.host)?,
        },
        Kind::Leave(_) => Message::Leave,
    };
    Ok((id, message))
}

/// [`decode`] from the bytes of an encoded `ConferenceSignal`.
pub fn decode_bytes(bytes: &[u8]) -> Result<([u8; ID_LEN], Message), Malformed> {
    let signal =
        <pb::ConferenceSignal as prost::Message>::decode(bytes).map_err(|_| Malformed::Protobuf)?;
    decode(&signal)
}

/// The wire form of `message` for conference `id`.
pub fn encode(id: &[u8; ID_LEN], message: &Message) -> pb::ConferenceSignal {
    use pb::conference_signal::Kind;
    let kind = match message {
        Message::Invite { participants } => Kind::Invite(pb::ConferenceInvite {
            participants: participants.clone(),
        }),
        Message::Capabilities { name, caps } => Kind::Capabilities(encode_caps(name, caps)),
        Message::Roster(roster) => Kind::Roster(pb::ConferenceRoster {
            members: roster.iter().map(|(n, c)| encode_caps(n, c)).collect(),
        }),
        Message::HostElected { epoch, host } => Kind::HostElected(pb::ConferenceHostElected {
            epoch: *epoch,
            host: host.clone(),
        }),
        Message::Leave => Kind::Leave(pb::ConferenceLeave {}),
    };
    pb::ConferenceSignal {
        conference_id: id.to_vec(),
        kind: Some(kind),
    }
}

/// Where a participant's conference stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Invitations out (convener) or awaiting the roster (invitee).
    Forming,
    /// Three or more members, one of them hosting.
    Hosted,
    /// Two members: a plain two-party call on the leg between them.
    Call,
    /// Over for this participant.
    Ended,
}

/// Something the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Place a leg (an ordinary call) to `peer`.
    Dial { peer: String },
    /// Hang up the leg to `peer` (not needed any more).
    Close { peer: String },
    /// `host` hosts (this participant, or the one to send voice to and
    /// hear the mix from); `handover` after the first election.
    Host {
        host: String,
        epoch: u32,
        handover: bool,
    },
    /// `name` joined the conference.
    Joined { name: String },
    /// `name` left (`lost`: its leg died, or it never answered).
    Left { name: String, lost: bool },
    /// Two left: the leg to `peer` is a plain two-party call (no mixing).
    Call { peer: String },
    /// The conference is over for this participant.
    Ended,
}

/// Conference messages dropped, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// [`decode`] refused it.
    pub malformed: u64,
    /// Well formed but out of place: another conference, a sender that may
    /// not send it (not the host, not a member, a record naming someone
    /// else), or this participant's conference is over.
    pub unexpected: u64,
    /// A host announcement of an older election round.
    pub stale: u64,
}

impl Dropped {
    /// All messages dropped.
    pub fn total(&self) -> u64 {
        self.malformed + self.unexpected + self.stale
    }
}

/// Why a conference could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConferenceError {
    #[error("a conference has 3 to {MAX_PARTIES} participants, this would have {0}")]
    Count(usize),
    #[error("bad name `{0}`")]
    Name(String),
    #[error("`{0}` named twice (or is this participant)")]
    Duplicate(String),
    #[error("not an invitation: {0}")]
    NotInvite(String),
}

/// One participant's view of one conference.
#[derive(Debug)]
pub struct Conference {
    id: [u8; ID_LEN],
    local: String,
    /// Who invited this participant (itself for the convener).
    inviter: String,
    phase: Phase,
    members: Roster,
    host: Option<String>,
    epoch: u32,
    handovers: u32,
    /// Invited, not yet joined (convener, or a host adding someone).
    pending: BTreeSet<String>,
    /// Legs the shell reported up.
    legs: BTreeSet<String>,
    /// Legs this side asked the shell to dial and that are not up yet.
    dialing: BTreeSet<String>,
    /// Pending invitees are dropped, or an invitee without a roster ends.
    form_deadline: Option<u64>,
    /// (Not dialling) the leg to `awaiting` must be up by then.
    leg_deadline: Option<(String, u64)>,
    dropped: Dropped,
    out: VecDeque<(String, pb::ConferenceSignal)>,
    events: VecDeque<Event>,
}

impl Conference {
    fn blank(id: [u8; ID_LEN], local: String, own: Capabilities, inviter: String) -> Self {
        let mut members = Roster::new();
        members.insert(local.clone(), own);
        Self {
            id,
            local,
            inviter,
            phase: Phase::Forming,
            members,
            host: None,
            epoch: 0,
            handovers: 0,
            pending: BTreeSet::new(),
            legs: BTreeSet::new(),
            dialing: BTreeSet::new(),
            form_deadline: None,
            leg_deadline: None,
            dropped: Dropped::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Starts a conference as its convener: `local` (with its record `own`)
    /// invites `invitees` (2 to `MAX_PARTIES - 1` names). Queues a
    /// [`Event::Dial`] for each.
    pub fn convene(
        local: &str,
        id: [u8; ID_LEN],
        own: Capabilities,
        invitees: &[String],
        now_ms: u64,
    ) -> Result<Self, ConferenceError> {
        let local = name::normalise(local).map_err(|_| ConferenceError::Name(local.to_owned()))?;
        if !(2..MAX_PARTIES).contains(&invitees.len()) {
            return Err(ConferenceError::Count(invitees.len() + 1));
        }
        let mut conference = Self::blank(id, local.clone(), own, local.clone());
        for raw in invitees {
            let n = name::normalise(raw).map_err(|_| ConferenceError::Name(raw.clone()))?;
            if n == local || !conference.pending.insert(n.clone()) {
                return Err(ConferenceError::Duplicate(n));
            }
        }
        conference.form_deadline = Some(now_ms.saturating_add(FORM_TIMEOUT_MS));
        for peer in conference.pending.clone() {
            conference.dial(peer);
        }
        Ok(conference)
    }

    /// Joins a conference on its invitation: `signal` arrived from `from`
    /// (the authenticated peer of a connected leg). Sends this
    /// participant's record back.
    pub fn invited(
        local: &str,
        own: Capabilities,
        from: &str,
        signal: &pb::ConferenceSignal,
        now_ms: u64,
    ) -> Result<Self, ConferenceError> {
        let refuse = |why: &str| ConferenceError::NotInvite(why.to_owned());
        let local = name::normalise(local).map_err(|_| refuse("bad local name"))?;
        let from = name::normalise(from).map_err(|_| refuse("bad sender name"))?;
        let (id, message) = decode(signal).map_err(|e| refuse(&e.to_string()))?;
        let Message::Invite { participants } = message else {
            return Err(refuse("another kind"));
        };
        if participants.first() != Some(&from) || !participants.contains(&local) {
            return Err(refuse(
                "the sender first and this participant must be listed",
            ));
        }
        let mut conference = Self::blank(id, local.clone(), own.clone(), from.clone());
        conference.legs.insert(from.clone());
        // The inviter's own deadline, and time for its roster to come.
        conference.form_deadline = Some(now_ms.saturating_add(FORM_TIMEOUT_MS + LEG_TIMEOUT_MS));
        conference.send(
            &from,
            &Message::Capabilities {
                name: local,
                caps: own,
            },
        );
        Ok(conference)
    }

    /// The conference id.
    pub fn id(&self) -> [u8; ID_LEN] {
        self.id
    }

    /// This participant's (normalised) name.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// Where it stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The members and their records (as the host last sent them).
    pub fn roster(&self) -> &Roster {
        &self.members
    }

    /// Who hosts, while there is a host.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Whether this participant hosts (mixes).
    pub fn is_host(&self) -> bool {
        self.phase == Phase::Hosted && self.host.as_deref() == Some(self.local.as_str())
    }

    /// The election round (1 for the first election).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Hosts elected after the first one.
    pub fn handovers(&self) -> u32 {
        self.handovers
    }

    /// Messages dropped so far, by why.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// The legs this participant mixes for (as host): every other member
    /// whose leg is up. Empty unless hosting.
    pub fn mix_legs(&self) -> Vec<&str> {
        if !self.is_host() {
            return Vec::new();
        }
        self.legs
            .iter()
            .filter(|l| self.members.contains_key(*l))
            .map(String::as_str)
            .collect()
    }

    /// (Host, or one side of a two-party fallback) invites `peer` into the
    /// conference: dials it, and sends the invitation once its leg is up.
    pub fn invite(&mut self, peer: &str, now_ms: u64) -> Result<(), ConferenceError> {
        let peer = name::normalise(peer).map_err(|_| ConferenceError::Name(peer.to_owned()))?;
        let may = self.is_host() || self.phase == Phase::Call;
        if !may {
            return Err(ConferenceError::NotInvite("only the host invites".into()));
        }
        if self.members.contains_key(&peer) || self.pending.contains(&peer) {
            return Err(ConferenceError::Duplicate(peer));
        }
        if self.members.len() + self.pending.len() >= MAX_PARTIES {
            return Err(ConferenceError::Count(MAX_PARTIES + 1));
        }
        self.inviter = self.local.clone();
        self.pending.insert(peer.clone());
        self.form_deadline = Some(now_ms.saturating_add(FORM_TIMEOUT_MS));
        if self.legs.contains(&peer) {
            self.send_invite(&peer);
        } else {
            self.dial(peer);
        }
        Ok(())
    }

    /// This participant leaves: tells the peers it has legs to and ends.
    pub fn leave(&mut self) {
        if self.phase == Phase::Ended {
            return;
        }
        for peer in self.legs.clone() {
            self.send(&peer, &Message::Leave);
        }
        self.end();
    }

    /// Updates this participant's own record (fresh measurements). A host
    /// sends the new roster; anyone else sends the record to the host. It
    /// counts at the next election only once it is in the host's roster.
    pub fn update_capabilities(&mut self, caps: Capabilities) {
        if self.phase == Phase::Ended {
            return;
        }
        self.members.insert(self.local.clone(), caps.clone());
        if self.is_host() {
            self.broadcast_roster(false);
        } else if let Some(host) = self.host.clone().filter(|_| self.phase == Phase::Hosted) {
            let name = self.local.clone();
            self.send(&host, &Message::Capabilities { name, caps });
        }
    }

    /// The shell's leg (call) to `peer` is connected.
    pub fn handle_leg_up(&mut self, peer: &str, _now_ms: u64) {
        let Ok(peer) = name::normalise(peer) else {
            return;
        };
        if self.phase == Phase::Ended {
            return;
        }
        self.dialing.remove(&peer);
        self.legs.insert(peer.clone());
        if self.leg_deadline.as_ref().is_some_and(|(p, _)| *p == peer) {
            self.leg_deadline = None;
        }
        if self.pending.contains(&peer) && self.inviter == self.local {
            self.send_invite(&peer);
        } else if self.is_host() && self.members.contains_key(&peer) {
            // A leg formed after an election: tell the peer what it needs.
            self.send(&peer, &Message::Roster(self.members.clone()));
            self.send_host(&peer);
        }
    }

    /// The shell's leg to `peer` failed, was refused, or its media timed
    /// out: `peer` is lost to this conference (a host loss hands over).
    pub fn handle_leg_lost(&mut self, peer: &str, now_ms: u64) {
        let Ok(peer) = name::normalise(peer) else {
            return;
        };
        // Only a leg this side had or was dialling: the peer hanging up a
        // leg this side already closed (after an election) loses nobody.
        let known = self.legs.remove(&peer) | self.dialing.remove(&peer);
        if known {
            self.remove(&peer, true, now_ms);
        }
    }

    /// A conference message from `from`, the authenticated peer of a leg.
    pub fn handle_signal(&mut self, from: &str, signal: &pb::ConferenceSignal, now_ms: u64) {
        let (id, message) = match decode(signal) {
            Ok(m) => m,
            Err(_) => {
                self.dropped.malformed += 1;
                return;
            }
        };
        let Ok(from) = name::normalise(from) else {
            self.dropped.unexpected += 1;
            return;
        };
        if id != self.id || self.phase == Phase::Ended {
            self.dropped.unexpected += 1;
            return;
        }
        let from_authority = match self.phase {
            Phase::Forming => from == self.inviter && self.inviter != self.local,
            Phase::Hosted => self.host.as_deref() == Some(from.as_str()),
            Phase::Call => self.members.contains_key(&from),
            Phase::Ended => false,
        };
        match message {
            Message::Capabilities { name, caps } if name == from => {
                let collecting = self.inviter == self.local && self.pending.contains(&from);
                let refresh = self.is_host() && self.members.contains_key(&from);
                if collecting {
                    self.pending.remove(&from);
                    self.members.insert(from.clone(), caps);
                    self.event(Event::Joined { name: from });
                    if self.pending.is_empty() {
                        self.settle(now_ms);
                    }
                } else if refresh {
                    self.members.insert(from, caps);
                    self.broadcast_roster(false);
                } else {
                    self.dropped.unexpected += 1;
                }
            }
            Message::Roster(roster)
                if from_authority
                    && roster.contains_key(&self.local)
                    && roster.contains_key(&from) =>
            {
                self.follow_roster(roster, now_ms);
            }
            Message::HostElected { epoch, host } => {
                // From the host in office, the inviter while forming, or
                // (while this side waits for a new host's leg) a newly
                // elected host announcing itself on its new leg: a side that
                // held an older roster may have elected another.
                let announces_itself =
                    host == from && self.members.contains_key(&from) && self.leg_deadline.is_some();
                let may = from_authority || announces_itself;
                if !may || !self.members.contains_key(&host) {
                    self.dropped.unexpected += 1;
                } else if epoch < self.epoch {
                    self.dropped.stale += 1;
                } else if self.members.len() < 3 {
                    self.dropped.unexpected += 1;
                } else {
                    self.form_deadline = None;
                    self.adopt_host(host, epoch, now_ms);
                }
            }
            Message::Leave if self.members.contains_key(&from) || self.pending.contains(&from) => {
                self.legs.remove(&from);
                self.remove(&from, false, now_ms);
            }
            _ => self.dropped.unexpected += 1,
        }
    }

    /// Advances time: invitees that did not answer in time are dropped and
    /// the convener elects; an invitee without a roster ends; a new host
    /// whose leg is not up counts as lost.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.form_deadline.is_some_and(|d| now_ms >= d) {
            self.form_deadline = None;
            if self.inviter == self.local {
                // Nobody joined, but one leg is up and silent (an older
                // build, which ignores conference messages): that call
                // goes on as a plain two-party call.
                let silent: Vec<String> = self
                    .pending
                    .iter()
                    .filter(|p| self.legs.contains(*p))
                    .cloned()
                    .collect();
                if self.members.len() == 1
                    && let [peer] = silent.as_slice()
                {
                    self.pending.remove(peer);
                    self.members
                        .insert(peer.clone(), Capabilities::new(NatClass::Unknown, 0, 0));
                }
                for peer in std::mem::take(&mut self.pending) {
                    // Stop ringing it (or hang up a leg that never answered).
                    if self.dialing.remove(&peer) | self.legs.remove(&peer) {
                        self.event(Event::Close { peer: peer.clone() });
                    }
                    self.event(Event::Left {
                        name: peer,
                        lost: true,
                    });
                }
                self.settle(now_ms);
            } else if self.phase == Phase::Forming {
                self.end();
                return;
            }
        }
        if let Some((peer, due)) = self.leg_deadline.clone()
            && now_ms >= due
        {
            self.leg_deadline = None;
            self.remove(&peer, true, now_ms);
        }
    }

    /// When [`Self::handle_timeout`] next needs to run.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.phase == Phase::Ended {
            return None;
        }
        [
            self.form_deadline,
            self.leg_deadline.as_ref().map(|(_, d)| *d),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next message to send: on the leg to the named peer, as the
    /// `conference` kind of a call signal.
    pub fn poll_signal(&mut self) -> Option<(String, pb::ConferenceSignal)> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ------------------------------------------------------------ inside

    fn send(&mut self, to: &str, message: &Message) {
        if self.out.len() >= QUEUE_LIMIT {
            self.out.pop_front();
        }
        self.out
            .push_back((to.to_owned(), encode(&self.id, message)));
    }

    fn event(&mut self, event: Event) {
        if self.events.len() >= QUEUE_LIMIT {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn dial(&mut self, peer: String) {
        if self.legs.contains(&peer) || !self.dialing.insert(peer.clone()) {
            return;
        }
        self.event(Event::Dial { peer });
    }

    fn send_invite(&mut self, peer: &str) {
        let mut participants = vec![self.local.clone()];
        participants.extend(
            self.members
                .keys()
                .chain(self.pending.iter())
                .filter(|n| **n != self.local)
                .cloned(),
        );
        self.send(peer, &Message::Invite { participants });
    }

    fn send_host(&mut self, peer: &str) {
        if let Some(host) = self.host.clone() {
            let epoch = self.epoch;
            self.send(peer, &Message::HostElected { epoch, host });
        }
    }

    /// Sends the roster (and, `with_host`, the host) to every member whose
    /// leg is up.
    fn broadcast_roster(&mut self, with_host: bool) {
        let peers: Vec<String> = self
            .legs
            .iter()
            .filter(|l| self.members.contains_key(*l))
            .cloned()
            .collect();
        for peer in peers {
            self.send(&peer, &Message::Roster(self.members.clone()));
            if with_host && self.phase == Phase::Hosted {
                self.send_host(&peer);
            }
        }
    }

    fn end(&mut self) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        self.host = None;
        self.pending.clear();
        self.dialing.clear();
        self.form_deadline = None;
        self.leg_deadline = None;
        for peer in std::mem::take(&mut self.legs) {
            self.event(Event::Close { peer });
        }
        self.event(Event::Ended);
    }

    /// `name` is gone (left, or lost).
    fn remove(&mut self, name: &str, lost: bool, now_ms: u64) {
        if self.phase == Phase::Ended || name == self.local {
            return;
        }
        let was_pending = self.pending.remove(name);
        let was_member = self.members.remove(name).is_some();
        if !was_pending && !was_member {
            return;
        }
        self.event(Event::Left {
            name: name.to_owned(),
            lost,
        });
        match self.phase {
            Phase::Forming if self.inviter == self.local => {
                if self.pending.is_empty() {
                    self.settle(now_ms);
                }
            }
            // The inviter went before the roster came: nothing to elect from.
            Phase::Forming if name == self.inviter => self.end(),
            Phase::Forming => {}
            Phase::Hosted if self.host.as_deref() == Some(name) => self.handover(now_ms),
            Phase::Hosted if self.is_host() => self.settle(now_ms),
            Phase::Hosted => {}
            Phase::Call => self.end(),
            Phase::Ended => {}
        }
    }

    /// (The authority: convener, or host) decide from the members now held
    /// and tell everyone: end, two-party call, or a host (kept if still a
    /// member, elected otherwise).
    fn settle(&mut self, now_ms: u64) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.pending.is_empty() {
            self.form_deadline = None;
        }
        match self.members.len() {
            0 | 1 if self.pending.is_empty() => self.end(),
            0 | 1 => {}
            2 => {
                self.broadcast_roster(false);
                self.become_call(now_ms);
            }
            _ => {
                let keep = self
                    .host
                    .clone()
                    .filter(|h| self.members.contains_key(h) && self.phase == Phase::Hosted);
                if keep.is_none() {
                    let host = elect(&self.members).map(str::to_owned);
                    if let Some(host) = host {
                        self.set_host(host, self.epoch + 1);
                    }
                }
                self.broadcast_roster(true);
                self.sync_legs(now_ms);
            }
        }
    }

    /// A roster from the host (or the inviter while forming).
    fn follow_roster(&mut self, roster: Roster, now_ms: u64) {
        for name in roster.keys() {
            if !self.members.contains_key(name) && *name != self.local {
                self.event(Event::Joined { name: name.clone() });
            }
        }
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|n| !roster.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.event(Event::Left { name, lost: false });
        }
        self.members = roster;
        if self.members.len() == 2 {
            self.form_deadline = None;
            self.become_call(now_ms);
        }
    }

    /// A host announcement from the host, the inviter or the new host.
    fn adopt_host(&mut self, host: String, epoch: u32, now_ms: u64) {
        if self.host.as_deref() != Some(host.as_str()) || self.phase != Phase::Hosted {
            self.set_host(host, epoch);
        } else {
            self.epoch = epoch;
        }
        self.sync_legs(now_ms);
    }

    fn set_host(&mut self, host: String, epoch: u32) {
        let handover = self.epoch > 0;
        if handover {
            self.handovers += 1;
        }
        self.epoch = epoch;
        self.phase = Phase::Hosted;
        self.host = Some(host.clone());
        self.event(Event::Host {
            host,
            epoch,
            handover,
        });
    }

    /// The host is gone: elect from the roster held, no round trip.
    fn handover(&mut self, now_ms: u64) {
        self.host = None;
        if self.members.len() <= 2 {
            self.become_call(now_ms);
            return;
        }
        if let Some(host) = elect(&self.members).map(str::to_owned) {
            self.set_host(host, self.epoch + 1);
        }
        self.sync_legs(now_ms);
    }

    /// Two members: the leg between them is the call. If there is none
    /// (the host between them went), the one the rule elects dials.
    fn become_call(&mut self, now_ms: u64) {
        let Some(peer) = self.members.keys().find(|n| **n != self.local).cloned() else {
            self.end();
            return;
        };
        if self.phase != Phase::Call {
            self.phase = Phase::Call;
            self.host = None;
            self.event(Event::Call { peer: peer.clone() });
        }
        self.sync_legs(now_ms);
    }

    /// Dials the legs this participant should have and has not, closes the
    /// ones it should not have, and waits (bounded) for the ones the other
    /// side dials.
    fn sync_legs(&mut self, now_ms: u64) {
        let (wanted, dials): (BTreeSet<String>, bool) = match self.phase {
            Phase::Hosted if self.is_host() => (
                self.members
                    .keys()
                    .filter(|n| **n != self.local)
                    .cloned()
                    .collect(),
                true,
            ),
            Phase::Hosted => (self.host.iter().cloned().collect(), false),
            Phase::Call => {
                let dials = elect(&self.members) == Some(self.local.as_str());
                (
                    self.members
                        .keys()
                        .filter(|n| **n != self.local)
                        .cloned()
                        .collect(),
                    dials,
                )
            }
            Phase::Forming | Phase::Ended => return,
        };
        for peer in self.legs.clone() {
            if !wanted.contains(&peer) && !self.pending.contains(&peer) {
                self.legs.remove(&peer);
                self.event(Event::Close { peer });
            }
        }
        // A wait for a leg that is up, or no longer wanted, is over.
        if self
            .leg_deadline
            .as_ref()
            .is_some_and(|(p, _)| !wanted.contains(p) || self.legs.contains(p))
        {
            self.leg_deadline = None;
        }
        for peer in wanted {
            if self.legs.contains(&peer) {
                continue;
            }
            if dials {
                self.dial(peer);
            } else if self.leg_deadline.as_ref().is_none_or(|(p, _)| *p != peer) {
                self.leg_deadline = Some((peer, now_ms.saturating_add(LEG_TIMEOUT_MS)));
            }
        }
    }
}
