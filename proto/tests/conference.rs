//! Conferences in memory on a virtual clock: the election picks the expected
//! host for given capability sets; participants form the star of legs
//! around it; when the host leaves or is lost the rest elect the next one
//! from the roster they hold (no message in between) and re-form the legs;
//! two left fall back to a plain call; malformed and out-of-place messages
//! are dropped and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use natter_proto::conference::{
    self, Capabilities, Conference, Event, FORM_TIMEOUT_MS, ID_LEN, LEG_TIMEOUT_MS, MAX_PARTIES,
    Malformed, Message, NatClass, PathFacts, Phase, Reach, Roster,
};
use natter_proto::messages::{ConferenceSignal, conference_signal};

const ID: [u8; ID_LEN] = [0xC0; ID_LEN];

fn caps(nat: NatClass, upstream_kbps: u32, cpu_permille: u32) -> Capabilities {
    Capabilities::new(nat, upstream_kbps, cpu_permille)
}

fn roster(members: &[(&str, Capabilities)]) -> Roster {
    members
        .iter()
        .map(|(n, c)| ((*n).to_owned(), c.clone()))
        .collect()
}

fn with_rtt(mut c: Capabilities, peer: &str, rtt_ms: u32) -> Capabilities {
    c.paths.entry(peer.to_owned()).or_default().rtt_ms = Some(rtt_ms);
    c
}

fn with_reach(mut c: Capabilities, peer: &str, reach: Reach) -> Capabilities {
    c.paths.entry(peer.to_owned()).or_default().reach = reach;
    c
}

#[test]
fn election_picks_the_expected_host() {
    use NatClass::*;
    let plenty = 1_000;
    let cases: Vec<(&str, Roster, &str)> = vec![
        (
            "the one every other reaches directly (open vs port-restricted vs symmetric)",
            roster(&[
                ("alice", caps(Symmetric, 5_000, 900)),
                ("bob", caps(PortRestricted, 5_000, 900)),
                ("carol", caps(Open, 100, 100)),
            ]),
            "carol",
        ),
        (
            "reachability before upstream: full-cone with little upstream beats a symmetric with much",
            roster(&[
                ("alice", caps(Symmetric, 50_000, 900)),
                ("bob", caps(PortRestricted, 1_000, 900)),
                ("carol", caps(FullCone, 80, 100)),
            ]),
            "carol",
        ),
        (
            "upstream sufficient for n-1 legs before NAT class",
            roster(&[
                ("alice", caps(Open, 70, 900)),
                ("bob", caps(PortRestricted, 76, 100)),
                ("carol", caps(PortRestricted, 60, 100)),
            ]),
            "bob",
        ),
        (
            "sufficiency scales with the party: 5 need 4 x 38 kb/s",
            roster(&[
                ("alice", caps(Open, 150, 900)),
                ("bob", caps(FullCone, 152, 100)),
                ("carol", caps(FullCone, 1_000, 100)),
                ("dave", caps(FullCone, 100, 100)),
                ("erin", caps(FullCone, 100, 100)),
            ]),
            // carol and bob are sufficient, alice not: the better NAT class
            // between them is equal, then more upstream.
            "carol",
        ),
        (
            "better NAT class",
            roster(&[
                ("alice", caps(AddressRestricted, plenty, 900)),
                ("bob", caps(FullCone, plenty, 100)),
                ("carol", caps(PortRestricted, plenty, 900)),
            ]),
            "bob",
        ),
        (
            "more upstream",
            roster(&[
                ("alice", caps(FullCone, 900, 900)),
                ("bob", caps(FullCone, 2_000, 100)),
                ("carol", caps(FullCone, 1_500, 900)),
            ]),
            "bob",
        ),
        (
            "more CPU headroom",
            roster(&[
                ("alice", caps(FullCone, plenty, 300)),
                ("bob", caps(FullCone, plenty, 200)),
                ("carol", caps(FullCone, plenty, 700)),
            ]),
            "carol",
        ),
        (
            "lower worst RTT",
            roster(&[
                (
                    "alice",
                    with_rtt(
                        with_rtt(caps(FullCone, plenty, 500), "bob", 40),
                        "carol",
                        200,
                    ),
                ),
                ("bob", with_rtt(caps(FullCone, plenty, 500), "carol", 60)),
                ("carol", caps(FullCone, plenty, 500)),
            ]),
            // alice worst 200, bob worst max(40, 60) = 60, carol 200.
            "bob",
        ),
        (
            "name last",
            roster(&[
                ("carol", caps(FullCone, plenty, 500)),
                ("bob", caps(FullCone, plenty, 500)),
                ("dave", caps(FullCone, plenty, 500)),
            ]),
            "bob",
        ),
        (
            "a measured relayed leg overrides the NAT prediction",
            roster(&[
                ("alice", caps(FullCone, plenty, 100)),
                (
                    "bob",
                    with_reach(caps(FullCone, plenty, 100), "carol", Reach::Relayed),
                ),
                ("carol", caps(Open, plenty, 900)),
            ]),
            "alice",
        ),
        (
            "a measured direct leg overrides it too",
            roster(&[
                ("alice", caps(Symmetric, plenty, 900)),
                (
                    "bob",
                    with_reach(caps(PortRestricted, plenty, 100), "alice", Reach::Direct),
                ),
                ("carol", caps(Open, plenty, 100)),
            ]),
            // alice is reached by carol (open) and, measured, by bob; carol too:
            // both reached by all and sufficient; carol's NAT is better.
            "carol",
        ),
    ];
    for (why, members, expected) in cases {
        assert_eq!(conference::elect(&members), Some(expected), "{why}");
        // The whole ranking is a permutation of the members.
        let ranked = conference::ranking(&members);
        assert_eq!(ranked.len(), members.len(), "{why}");
    }
    assert_eq!(conference::elect(&Roster::new()), None);
}

#[test]
fn nat_prediction_matches_the_lab_theory() {
    use NatClass::*;
    assert!(Open.direct_with(Symmetric));
    assert!(PortRestricted.direct_with(PortRestricted));
    assert!(AddressRestricted.direct_with(Symmetric));
    assert!(!Symmetric.direct_with(PortRestricted));
    assert!(!PortRestricted.direct_with(Symmetric));
    assert!(!Symmetric.direct_with(Symmetric));
    assert!(!UdpBlocked.direct_with(Open));
    assert!(!Open.direct_with(Unknown));
}

/// A network of participants: legs are up between pairs the model connects,
/// messages on a leg arrive in order, time is virtual.
struct Net {
    caps: BTreeMap<String, Capabilities>,
    parts: BTreeMap<String, Conference>,
    dead: BTreeSet<String>,
    /// Names that do not answer a leg (it rings until the dialler gives up).
    silent: BTreeSet<String>,
    /// Older builds: they answer the leg but ignore conference messages.
    old: BTreeSet<String>,
    legs: BTreeSet<(String, String)>,
    now: u64,
    /// Every event, by participant, in order.
    log: Vec<(String, Event)>,
    /// Conference messages delivered.
    delivered: usize,
}

/// What travels on a leg, in order.
enum Wire {
    Signal(ConferenceSignal),
    /// The leg is hung up.
    Hangup,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl Net {
    fn new(members: &[(&str, Capabilities)]) -> Self {
        Net {
            caps: roster(members),
            parts: BTreeMap::new(),
            dead: BTreeSet::new(),
            silent: BTreeSet::new(),
            old: BTreeSet::new(),
            legs: BTreeSet::new(),
            now: 0,
            log: Vec::new(),
            delivered: 0,
        }
    }

    fn convene(&mut self, convener: &str, invitees: &[&str]) {
        let invitees: Vec<String> = invitees.iter().map(|s| (*s).to_owned()).collect();
        let c = Conference::convene(
            convener,
            ID,
            self.caps[convener].clone(),
            &invitees,
            self.now,
        )
        .unwrap();
        self.parts.insert(convener.to_owned(), c);
        self.drive();
    }

    fn alive(&self, name: &str) -> bool {
        !self.dead.contains(name)
    }

    /// Runs every queue to quiescence.
    fn drive(&mut self) {
        let mut wire: VecDeque<(String, String, Wire)> = VecDeque::new();
        for _ in 0..10_000 {
            let mut progressed = false;
            let names: Vec<String> = self.parts.keys().cloned().collect();
            for name in &names {
                if !self.alive(name) {
                    continue;
                }
                let c = self.parts.get_mut(name).unwrap();
                while let Some((to, signal)) = c.poll_signal() {
                    progressed = true;
                    if self.legs.contains(&pair(name, &to)) {
                        wire.push_back((name.clone(), to, Wire::Signal(signal)));
                    }
                }
                let mut events = Vec::new();
                while let Some(e) = self.parts.get_mut(name).unwrap().poll_event() {
                    events.push(e);
                }
                for e in events {
                    progressed = true;
                    self.log.push((name.clone(), e.clone()));
                    if let Event::Close { peer } = &e {
                        // The hangup travels behind the messages sent before it.
                        wire.push_back((name.clone(), peer.clone(), Wire::Hangup));
                    }
                    self.act(name, e);
                }
            }
            while let Some((from, to, item)) = wire.pop_front() {
                progressed = true;
                if !self.alive(&to) || !self.legs.contains(&pair(&from, &to)) {
                    continue;
                }
                let signal = match item {
                    Wire::Signal(signal) => signal,
                    Wire::Hangup => {
                        self.legs.remove(&pair(&from, &to));
                        if let Some(p) = self.parts.get_mut(&to) {
                            p.handle_leg_lost(&from, self.now);
                        }
                        continue;
                    }
                };
                self.delivered += 1;
                if self.old.contains(&to) {
                    // An older build: a signal without a kind it knows.
                    continue;
                }
                match self.parts.get_mut(&to) {
                    Some(c) if c.phase() != Phase::Ended => {
                        c.handle_signal(&from, &signal, self.now)
                    }
                    _ => {
                        if let Ok(c) = Conference::invited(
                            &to,
                            self.caps[&to].clone(),
                            &from,
                            &signal,
                            self.now,
                        ) {
                            self.parts.insert(to.clone(), c);
                        }
                    }
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("the conference did not settle");
    }

    /// What the shell does with an event (a `Close` travels on the wire,
    /// see `drive`).
    fn act(&mut self, name: &str, event: Event) {
        let Event::Dial { peer } = event else {
            return;
        };
        if self.alive(&peer) && !self.silent.contains(&peer) {
            self.legs.insert(pair(name, &peer));
            self.parts
                .get_mut(name)
                .unwrap()
                .handle_leg_up(&peer, self.now);
            if let Some(p) = self.parts.get_mut(&peer)
                && p.phase() != Phase::Ended
            {
                p.handle_leg_up(name, self.now);
            }
        } else if self.dead.contains(&peer) {
            self.parts
                .get_mut(name)
                .unwrap()
                .handle_leg_lost(&peer, self.now);
        }
    }

    /// `name`'s process dies: every leg to it is lost.
    fn kill(&mut self, name: &str) {
        self.dead.insert(name.to_owned());
        let legs: Vec<(String, String)> = self
            .legs
            .iter()
            .filter(|(a, b)| a == name || b == name)
            .cloned()
            .collect();
        for (a, b) in legs {
            self.legs.remove(&(a.clone(), b.clone()));
            let other = if a == name { b } else { a };
            if let Some(c) = self.parts.get_mut(&other) {
                c.handle_leg_lost(name, self.now);
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + 100).min(end);
            let now = self.now;
            for (name, c) in self.parts.iter_mut() {
                if !self.dead.contains(name) {
                    c.handle_timeout(now);
                }
            }
            self.drive();
        }
    }

    fn part(&self, name: &str) -> &Conference {
        &self.parts[name]
    }

    fn living(&self) -> Vec<&Conference> {
        self.parts
            .iter()
            .filter(|(n, c)| self.alive(n) && c.phase() != Phase::Ended)
            .map(|(_, c)| c)
            .collect()
    }

    /// The legs as a set of pairs.
    fn star(&self, host: &str, others: &[&str]) -> BTreeSet<(String, String)> {
        others.iter().map(|o| pair(host, o)).collect()
    }

    fn events_of(&self, name: &str) -> Vec<&Event> {
        self.log
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, e)| e)
            .collect()
    }
}

fn lab_three() -> Net {
    Net::new(&[
        ("alice", caps(NatClass::Symmetric, 2_000, 800)),
        ("bob", caps(NatClass::Open, 1_000, 300)),
        ("carol", caps(NatClass::PortRestricted, 2_000, 900)),
    ])
}

#[test]
fn three_parties_elect_the_open_one_and_form_a_star_around_it() {
    let mut net = lab_three();
    net.convene("alice", &["bob", "carol"]);
    for c in net.living() {
        assert_eq!(c.phase(), Phase::Hosted, "{}", c.local());
        assert_eq!(c.host(), Some("bob"), "{}", c.local());
        assert_eq!(c.epoch(), 1);
        assert_eq!(c.handovers(), 0);
        // Everyone holds every member's record, the same ones.
        assert_eq!(c.roster(), net.part("bob").roster());
        assert_eq!(c.roster().len(), 3);
        assert_eq!(c.dropped().total(), 0, "{}", c.local());
    }
    assert!(net.part("bob").is_host());
    assert_eq!(net.part("bob").mix_legs(), vec!["alice", "carol"]);
    assert!(net.part("alice").mix_legs().is_empty());
    // The convener's leg to carol was closed; bob dialled carol.
    assert_eq!(net.legs, net.star("bob", &["alice", "carol"]));
    assert!(net.events_of("bob").contains(&&Event::Dial {
        peer: "carol".into()
    }));
    assert!(net.events_of("alice").contains(&&Event::Close {
        peer: "carol".into()
    }));
    assert!(net.events_of("carol").contains(&&Event::Host {
        host: "bob".into(),
        epoch: 1,
        handover: false
    }));
}

fn five() -> Net {
    Net::new(&[
        ("alice", caps(NatClass::PortRestricted, 5_000, 900)),
        ("bob", caps(NatClass::FullCone, 5_000, 500)),
        ("carol", caps(NatClass::FullCone, 4_000, 500)),
        ("dave", caps(NatClass::AddressRestricted, 9_000, 900)),
        ("erin", caps(NatClass::Symmetric, 9_000, 900)),
    ])
}

#[test]
fn host_loss_hands_over_from_the_roster_held_without_a_round_trip() {
    let mut net = five();
    net.convene("alice", &["bob", "carol", "dave", "erin"]);
    assert!(net.living().iter().all(|c| c.host() == Some("bob")));
    assert_eq!(
        net.legs,
        net.star("bob", &["alice", "carol", "dave", "erin"])
    );

    // bob dies. Each survivor learns it from its own leg and elects at once,
    // before any conference message moves.
    let delivered = net.delivered;
    net.kill("bob");
    for name in ["alice", "carol", "dave", "erin"] {
        let c = &net.parts[name];
        assert_eq!(c.host(), Some("carol"), "{name}");
        assert_eq!(c.epoch(), 2, "{name}");
        assert_eq!(c.handovers(), 1, "{name}");
        assert!(!c.roster().contains_key("bob"));
    }
    assert_eq!(net.delivered, delivered);
    net.drive();
    assert_eq!(net.legs, net.star("carol", &["alice", "dave", "erin"]));
    assert_eq!(net.part("carol").mix_legs(), vec!["alice", "dave", "erin"]);
    for c in net.living() {
        assert_eq!(c.handovers(), 1, "{}", c.local());
        assert_eq!(c.dropped().total(), 0, "{}", c.local());
    }
    assert!(net.events_of("dave").contains(&&Event::Left {
        name: "bob".into(),
        lost: true
    }));
}

#[test]
fn host_leaving_hands_over_too() {
    let mut net = five();
    net.convene("alice", &["bob", "carol", "dave", "erin"]);
    net.parts.get_mut("bob").unwrap().leave();
    net.drive();
    assert_eq!(net.part("bob").phase(), Phase::Ended);
    for name in ["alice", "carol", "dave", "erin"] {
        assert_eq!(net.parts[name].host(), Some("carol"), "{name}");
        assert!(net.events_of(name).contains(&&Event::Left {
            name: "bob".into(),
            lost: false
        }));
    }
    assert_eq!(net.legs, net.star("carol", &["alice", "dave", "erin"]));
    // Then carol goes too: three left, the next by the rule (dave: full
    // upstream, address-restricted beats port-restricted and symmetric... but
    // erin behind a symmetric NAT cannot be reached by alice's
    // port-restricted one, so dave must be reached by all: he is).
    net.kill("carol");
    net.drive();
    for name in ["alice", "dave", "erin"] {
        assert_eq!(net.parts[name].host(), Some("dave"), "{name}");
        assert_eq!(net.parts[name].handovers(), 2, "{name}");
    }
    assert_eq!(net.legs, net.star("dave", &["alice", "erin"]));
}

#[test]
fn two_left_fall_back_to_a_direct_call() {
    // The host is lost: the two that remain have no leg between them; the
    // one the rule prefers dials the other.
    let mut net = lab_three();
    net.convene("alice", &["bob", "carol"]);
    net.kill("bob");
    net.drive();
    for name in ["alice", "carol"] {
        let c = &net.parts[name];
        assert_eq!(c.phase(), Phase::Call, "{name}");
        assert_eq!(c.host(), None);
        assert!(c.mix_legs().is_empty());
    }
    assert!(net.events_of("alice").contains(&&Event::Call {
        peer: "carol".into()
    }));
    assert!(net.events_of("carol").contains(&&Event::Call {
        peer: "alice".into()
    }));
    assert_eq!(net.legs, BTreeSet::from([pair("alice", "carol")]));

    // A participant (not the host) leaves: the host and the other keep
    // their leg as a plain call.
    let mut net = lab_three();
    net.convene("alice", &["bob", "carol"]);
    net.parts.get_mut("carol").unwrap().leave();
    net.drive();
    for name in ["alice", "bob"] {
        assert_eq!(net.parts[name].phase(), Phase::Call, "{name}");
    }
    assert_eq!(net.legs, BTreeSet::from([pair("alice", "bob")]));

    // And the last one leaving ends it.
    net.parts.get_mut("alice").unwrap().leave();
    net.drive();
    assert_eq!(net.part("bob").phase(), Phase::Ended);
    assert!(net.legs.is_empty());
}

#[test]
fn a_new_host_that_never_dials_is_counted_lost_and_the_next_elected() {
    let mut net = five();
    net.convene("alice", &["bob", "carol", "dave", "erin"]);
    // bob and carol (the next by the rule) die together: the others learn of
    // bob from their legs, of carol only when her leg never comes.
    net.dead.insert("carol".into());
    net.kill("bob");
    net.drive();
    for name in ["alice", "dave", "erin"] {
        assert_eq!(net.parts[name].host(), Some("carol"), "{name}");
        assert_eq!(net.parts[name].poll_timeout(), Some(LEG_TIMEOUT_MS));
    }
    net.advance(LEG_TIMEOUT_MS);
    for name in ["alice", "dave", "erin"] {
        assert_eq!(net.parts[name].host(), Some("dave"), "{name}");
        assert_eq!(net.parts[name].epoch(), 3);
    }
    assert_eq!(net.legs, net.star("dave", &["alice", "erin"]));
}

#[test]
fn an_invitee_that_never_answers_is_left_out_at_the_formation_timeout() {
    let mut net = five();
    net.silent.insert("dave".into());
    net.convene("alice", &["bob", "carol", "dave"]);
    assert_eq!(net.part("alice").phase(), Phase::Forming);
    net.advance(FORM_TIMEOUT_MS);
    for name in ["alice", "bob", "carol"] {
        assert_eq!(net.parts[name].host(), Some("bob"), "{name}");
        assert!(!net.parts[name].roster().contains_key("dave"));
    }
    assert!(net.events_of("alice").contains(&&Event::Close {
        peer: "dave".into()
    }));
    assert!(!net.parts.contains_key("dave"));
}

#[test]
fn an_older_peer_stays_in_a_two_party_call() {
    // bob runs an older build: he answers alice's call but never her
    // invitation; carol does not answer at all.
    let mut net = five();
    net.old.insert("bob".into());
    net.silent.insert("carol".into());
    net.convene("alice", &["bob", "carol"]);
    net.advance(FORM_TIMEOUT_MS);
    let alice = net.part("alice");
    assert_eq!(alice.phase(), Phase::Call);
    assert!(
        net.events_of("alice")
            .contains(&&Event::Call { peer: "bob".into() })
    );
    assert_eq!(net.legs, BTreeSet::from([pair("alice", "bob")]));

    // With someone else joined, the older peer is left out (hung up).
    let mut net = five();
    net.old.insert("bob".into());
    net.convene("alice", &["bob", "carol"]);
    net.advance(FORM_TIMEOUT_MS);
    assert_eq!(net.part("alice").phase(), Phase::Call);
    assert!(net.events_of("alice").contains(&&Event::Call {
        peer: "carol".into()
    }));
    assert_eq!(net.legs, BTreeSet::from([pair("alice", "carol")]));
}

#[test]
fn the_host_adds_a_participant_to_a_running_conference() {
    let mut net = five();
    net.convene("alice", &["carol", "erin"]);
    assert!(net.living().iter().all(|c| c.host() == Some("carol")));
    // carol invites bob, who would rank better: the host stays host.
    net.parts
        .get_mut("carol")
        .unwrap()
        .invite("bob", net.now)
        .unwrap();
    net.drive();
    for name in ["alice", "bob", "carol", "erin"] {
        let c = &net.parts[name];
        assert_eq!(c.host(), Some("carol"), "{name}");
        assert_eq!(c.roster().len(), 4, "{name}");
        assert_eq!(c.phase(), Phase::Hosted);
    }
    assert_eq!(net.legs, net.star("carol", &["alice", "bob", "erin"]));
    // Not beyond five.
    let host = net.parts.get_mut("carol").unwrap();
    host.invite("dave", 0).unwrap();
    assert!(host.invite("frank", 0).is_err());
    assert!(host.invite("alice", 0).is_err());
    // Only the host invites.
    assert!(
        net.parts
            .get_mut("alice")
            .unwrap()
            .invite("dave", 0)
            .is_err()
    );
}

#[test]
fn convening_checks_the_party() {
    let own = caps(NatClass::Open, 1_000, 500);
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert!(Conference::convene("alice", ID, own.clone(), &names(&["bob"]), 0).is_err());
    assert!(
        Conference::convene(
            "alice",
            ID,
            own.clone(),
            &names(&["bob", "carol", "dave", "erin", "frank"]),
            0
        )
        .is_err()
    );
    assert!(Conference::convene("alice", ID, own.clone(), &names(&["bob", "Bob"]), 0).is_err());
    assert!(Conference::convene("alice", ID, own.clone(), &names(&["bob", "alice"]), 0).is_err());
    assert!(Conference::convene("alice", ID, own.clone(), &names(&["bob", "1x"]), 0).is_err());
    assert!(Conference::convene("alice", ID, own, &names(&["bob", "carol"]), 0).is_ok());
}

fn signal(kind: conference_signal::Kind) -> ConferenceSignal {
    ConferenceSignal {
        conference_id: ID.to_vec(),
        kind: Some(kind),
    }
}

#[test]
fn malformed_and_unexpected_messages_are_dropped_and_counted() {
    use natter_proto::messages as pb;
    let mut net = lab_three();
    net.convene("alice", &["bob", "carol"]);
    let before_roster = net.part("carol").roster().clone();
    let now = net.now;
    let carol = net.parts.get_mut("carol").unwrap();

    // Malformed: a short id, no kind, bad names, too many, duplicates.
    let mut short = signal(conference_signal::Kind::Leave(pb::ConferenceLeave {}));
    short.conference_id = vec![1, 2, 3];
    carol.handle_signal("bob", &short, now);
    carol.handle_signal(
        "bob",
        &ConferenceSignal {
            conference_id: ID.to_vec(),
            kind: None,
        },
        now,
    );
    carol.handle_signal(
        "bob",
        &signal(conference_signal::Kind::HostElected(
            pb::ConferenceHostElected {
                epoch: 9,
                host: "no spaces".into(),
            },
        )),
        now,
    );
    let six: Vec<String> = ["a1x", "b1x", "c1x", "d1x", "e1x", "f1x"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    carol.handle_signal(
        "bob",
        &signal(conference_signal::Kind::Invite(pb::ConferenceInvite {
            participants: six,
        })),
        now,
    );
    let member = |name: &str| pb::ConferenceCapabilities {
        name: name.into(),
        ..Default::default()
    };
    carol.handle_signal(
        "bob",
        &signal(conference_signal::Kind::Roster(pb::ConferenceRoster {
            members: vec![member("alice"), member("ALICE"), member("carol")],
        })),
        now,
    );
    assert_eq!(carol.dropped().malformed, 5);

    // Unexpected: another conference; a host announcement from a member
    // that is not the host; a roster from a non-host; a record naming
    // someone else; a leave from a stranger; an invitation mid-conference.
    let mut other = signal(conference_signal::Kind::Leave(pb::ConferenceLeave {}));
    other.conference_id = vec![0xEE; ID_LEN];
    carol.handle_signal("bob", &other, now);
    carol.handle_signal(
        "alice",
        &signal(conference_signal::Kind::HostElected(
            pb::ConferenceHostElected {
                epoch: 7,
                host: "alice".into(),
            },
        )),
        now,
    );
    carol.handle_signal(
        "alice",
        &signal(conference_signal::Kind::Roster(pb::ConferenceRoster {
            members: vec![member("alice"), member("carol")],
        })),
        now,
    );
    carol.handle_signal(
        "bob",
        &signal(conference_signal::Kind::Capabilities(member("alice"))),
        now,
    );
    carol.handle_signal(
        "mallory",
        &signal(conference_signal::Kind::Leave(pb::ConferenceLeave {})),
        now,
    );
    carol.handle_signal(
        "bob",
        &signal(conference_signal::Kind::Invite(pb::ConferenceInvite {
            participants: vec!["bob".into(), "carol".into()],
        })),
        now,
    );
    assert_eq!(carol.dropped().unexpected, 6);

    // Stale: the host's announcement of an older round.
    carol.handle_signal(
        "bob",
        &signal(conference_signal::Kind::HostElected(
            pb::ConferenceHostElected {
                epoch: 0,
                host: "bob".into(),
            },
        )),
        now,
    );
    assert_eq!(carol.dropped().stale, 1);
    assert_eq!(carol.dropped().total(), 12);

    // Nothing changed.
    assert_eq!(carol.host(), Some("bob"));
    assert_eq!(carol.epoch(), 1);
    assert_eq!(carol.phase(), Phase::Hosted);
    assert_eq!(carol.roster(), &before_roster);

    // Garbage bytes never decode into a message, and never panic.
    assert_eq!(
        conference::decode_bytes(&[0xff; 7]),
        Err(Malformed::Protobuf)
    );
    // Invitations that are not for us are refused.
    let not_listed = signal(conference_signal::Kind::Invite(pb::ConferenceInvite {
        participants: vec!["bob".into(), "carol".into()],
    }));
    assert!(
        Conference::invited("dave", caps(NatClass::Open, 1, 1), "bob", &not_listed, 0).is_err()
    );
    // Not from the first-listed (the inviter).
    assert!(
        Conference::invited("carol", caps(NatClass::Open, 1, 1), "alice", &not_listed, 0).is_err()
    );
}

#[test]
fn messages_round_trip_through_the_wire_form() {
    let mut alice = caps(NatClass::PortRestricted, 1_234, 567);
    alice.paths.insert(
        "bob".into(),
        PathFacts {
            rtt_ms: Some(42),
            reach: Reach::Direct,
        },
    );
    alice.paths.insert(
        "carol".into(),
        PathFacts {
            rtt_ms: None,
            reach: Reach::Relayed,
        },
    );
    let members = roster(&[
        ("alice", alice.clone()),
        ("bob", caps(NatClass::Unknown, 0, 0)),
        ("carol", caps(NatClass::UdpBlocked, 1, 2)),
    ]);
    let messages = [
        Message::Invite {
            participants: vec!["alice".into(), "bob".into(), "carol".into()],
        },
        Message::Capabilities {
            name: "alice".into(),
            caps: alice,
        },
        Message::Roster(members),
        Message::HostElected {
            epoch: 3,
            host: "bob".into(),
        },
        Message::Leave,
    ];
    for m in messages {
        let signal = conference::encode(&ID, &m);
        assert_eq!(conference::decode(&signal), Ok((ID, m.clone())));
        let bytes = prost::Message::encode_to_vec(&signal);
        assert_eq!(conference::decode_bytes(&bytes), Ok((ID, m)));
    }
    // A roster of MAX_PARTIES fits; one more does not.
    let big: Roster = (0..=MAX_PARTIES)
        .map(|i| (format!("user{i}"), caps(NatClass::Open, 1, 1)))
        .collect();
    let signal = conference::encode(&ID, &Message::Roster(big));
    assert_eq!(conference::decode(&signal), Err(Malformed::Count));
}
