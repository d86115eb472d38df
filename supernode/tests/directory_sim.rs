//! Directory integrity in memory (issue 13, item 2): records carry the
//! user's signed join statement; replicas take a record only when it
//! verifies and is newer; no session closes without a newer statement;
//! `last_seen` in the future is refused and counted. The attacker is a
//! supernode of the overlay sending `DirectoryStore`s on its links.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod forge;
mod sim;

use std::time::Duration;

use forge::Expect;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    ChatMessage, DirectoryStore, Envelope, SearchReply, SearchRequest, UserRecord,
};
use natter_supernode::core::CoreStats;
use natter_supernode::hrw;
use sim::{Sim, SimConfig, sim_addr, sim_node_id};

const SECOND: Duration = Duration::from_secs(1);

fn meshed(n: usize) -> Sim {
    let mut sim = Sim::new(n, &SimConfig::default());
    assert!(sim.run_until(30 * SECOND, Sim::meshed), "no mesh");
    sim
}

fn join(sim: &mut Sim, name: &str, node: usize, clock_offset_ms: i64) -> usize {
    let c = sim.add_client(name, node);
    sim.clients[c].clock_offset_ms = clock_offset_ms;
    assert!(
        sim.run_until(5 * SECOND, |s| s.joined(c)),
        "{name} did not join node {node}"
    );
    c
}

fn search(sim: &mut Sim, c: usize, name: &str) -> SearchReply {
    let body = Body::SearchRequest(SearchRequest { name: name.into() });
    match sim.request(c, body, 10 * SECOND) {
        Some(Body::SearchReply(reply)) => reply,
        other => panic!("search for {name}: {other:?}"),
    }
}

fn home_of(reply: &SearchReply) -> Option<std::net::SocketAddr> {
    reply
        .supernode
        .as_ref()
        .map(|a| std::net::SocketAddr::try_from(a).unwrap())
}

fn store(record: UserRecord) -> Envelope {
    Envelope::new(
        0,
        Body::DirectoryStore(DirectoryStore {
            records: vec![record],
            pending_chat: Vec::new(),
        }),
    )
}

fn replicas(sim: &Sim, name: &str) -> Vec<usize> {
    let ids: Vec<_> = (0..sim.nodes.len()).map(sim_node_id).collect();
    hrw::replicas(name, &ids, 3)
        .into_iter()
        .map(|id| ids.iter().position(|i| *i == id).unwrap())
        .collect()
}

fn diff(after: CoreStats, before: CoreStats) -> (u64, u64, u64) {
    (
        after.records_refused - before.records_refused,
        after.records_from_future - before.records_from_future,
        after.records_stale - before.records_stale,
    )
}

#[test]
fn forged_records_from_a_supernode_are_refused_and_the_victim_keeps_her_home() {
    let mut sim = meshed(5);
    let reps = replicas(&sim, "alice");
    let outside: Vec<usize> = (0..5).filter(|i| !reps.contains(i)).collect();
    let (home, attacker) = (outside[0], outside[1]);
    let alice = join(&mut sim, "alice", home, 0);
    let bob = join(&mut sim, "bob", reps[0], 0);
    sim.run_for(SECOND);
    let current = sim.nodes[reps[0]]
        .node
        .held_record("alice")
        .cloned()
        .expect("the replica holds alice's record");
    assert_eq!(current.home_node_id, sim_node_id(home).to_vec());
    let bobs = replicas(&sim, "bob")
        .into_iter()
        .find_map(|r| sim.nodes[r].node.held_record("bob").cloned())
        .expect("bob's record");

    let forged = forge::forgeries(
        &current,
        common::user_key("alice"),
        &bobs,
        &sim_node_id(attacker),
        common::user_key("dave"),
        sim.now().unix_ms,
    );
    let held_before: Vec<Option<UserRecord>> = reps
        .iter()
        .map(|r| sim.nodes[*r].node.held_record("alice").cloned())
        .collect();
    let stats_before: Vec<CoreStats> = sim.nodes.iter().map(|n| n.node.stats()).collect();
    for f in &forged {
        for to in (0..5).filter(|n| *n != attacker) {
            assert!(sim.inject_from_peer(attacker, to, store(f.record.clone())));
        }
    }
    sim.run_for(2 * SECOND);

    // Every replica refused every forgery, for the expected reason.
    for (i, r) in reps.iter().enumerate() {
        assert_eq!(
            sim.nodes[*r].node.held_record("alice"),
            held_before[i].as_ref(),
            "replica {r} changed alice's record"
        );
        let (refused, future, stale) = diff(sim.nodes[*r].node.stats(), stats_before[*r]);
        let invalid =
            forge::count(&forged, Expect::Refused) + forge::count(&forged, Expect::Future);
        assert_eq!(refused, invalid, "replica {r}: refused");
        assert_eq!(future, forge::count(&forged, Expect::Future), "replica {r}");
        assert_eq!(stale, forge::count(&forged, Expect::Stale), "replica {r}");
    }
    // The home did not close her session on a peer's word.
    assert!(sim.joined(alice), "alice's session was closed");
    assert_eq!(sim.nodes[home].node.session_count(), 1);
    let (refused, _, _) = diff(sim.nodes[home].node.stats(), stats_before[home]);
    assert!(refused > 0);

    // Search finds her at her real home, and chat reaches her there.
    let found = search(&mut sim, bob, "alice");
    assert!(found.found);
    assert_eq!(
        found.status,
        natter_proto::messages::PresenceStatus::Online as i32
    );
    assert_eq!(home_of(&found), Some(sim_addr(home)));
    assert_eq!(
        found.certificate, current.certificate,
        "SearchReply carries her certificate"
    );
    let message = ChatMessage {
        message_id: vec![9; 16],
        to: "alice".into(),
        sealed: common::sealed(b"still yours"),
        sent_at: 1,
        ..Default::default()
    };
    assert!(matches!(
        sim.request(bob, Body::ChatMessage(message), 10 * SECOND),
        Some(Body::Ack(_))
    ));
    let got = sim.wait_push(alice, 5 * SECOND, |b| match b {
        Body::ChatMessage(m) => Some(common::unsealed(m)),
        _ => None,
    });
    assert_eq!(got.as_deref(), Some("still yours"));
}

#[test]
fn a_later_statement_wins_an_earlier_one_replaces_nothing() {
    let mut sim = meshed(4);
    let reps = replicas(&sim, "alice");
    // Her first device's clock is a minute ahead: its statement is the
    // newest even against a join a second later by a device on time.
    let first = join(&mut sim, "alice", 0, 60_000);
    sim.run_for(SECOND);
    let before: Vec<CoreStats> = sim.nodes.iter().map(|n| n.node.stats()).collect();
    let second = join(&mut sim, "alice", 1, 0);
    sim.run_for(2 * SECOND);
    assert!(sim.joined(first), "closed without a newer statement");
    assert!(sim.joined(second));
    for r in &reps {
        let held = sim.nodes[*r].node.held_record("alice").unwrap();
        assert_eq!(held.home_node_id, sim_node_id(0).to_vec(), "replica {r}");
    }
    // The replicas (other than node 1 itself) and the old home refused
    // the earlier statement as stale.
    let stale: u64 = (0..4)
        .map(|i| diff(sim.nodes[i].node.stats(), before[i]).2)
        .sum();
    assert!(stale > 0, "no stale record counted");
    let bob = join(&mut sim, "bob", 3, 0);
    assert_eq!(home_of(&search(&mut sim, bob, "alice")), Some(sim_addr(0)));

    // A third device, two minutes ahead: the newest statement, so the
    // first home closes its session and the replicas take the new home.
    let third = join(&mut sim, "alice", 2, 120_000);
    assert!(sim.run_until(5 * SECOND, |s| s.clients[first].closed.is_some()));
    assert_eq!(
        sim.clients[first].closed,
        Some(natter_supernode::close::REPLACED)
    );
    assert!(sim.joined(third));
    sim.run_for(SECOND);
    for r in &reps {
        let held = sim.nodes[*r].node.held_record("alice").unwrap();
        assert_eq!(held.home_node_id, sim_node_id(2).to_vec(), "replica {r}");
    }
    assert_eq!(home_of(&search(&mut sim, bob, "alice")), Some(sim_addr(2)));
}

#[test]
fn a_last_seen_in_the_future_is_refused_and_counted_even_from_the_home() {
    let mut sim = meshed(4);
    let reps = replicas(&sim, "carol");
    let home = (0..4).find(|i| !reps.contains(i)).unwrap();
    join(&mut sim, "carol", home, 0);
    sim.run_for(SECOND);
    let r = reps[0];
    let current = sim.nodes[r].node.held_record("carol").cloned().unwrap();
    let before = sim.nodes[r].node.stats();

    let mut ahead = current.clone();
    ahead.last_seen = sim.now().unix_ms + forge::YEAR_MS;
    assert!(sim.inject_from_peer(home, r, store(ahead)));
    sim.run_for(SECOND);
    assert_eq!(sim.nodes[r].node.held_record("carol"), Some(&current));
    assert_eq!(diff(sim.nodes[r].node.stats(), before), (1, 1, 0));

    // The same record seen now, from the home: a presence change it takes.
    let mut now = current.clone();
    now.last_seen = sim.now().unix_ms;
    now.status = natter_proto::messages::PresenceStatus::Away as i32;
    assert!(sim.inject_from_peer(home, r, store(now.clone())));
    sim.run_for(SECOND);
    assert_eq!(sim.nodes[r].node.held_record("carol"), Some(&now));
    assert_eq!(diff(sim.nodes[r].node.stats(), before), (1, 1, 0));
}

/// A node that has just started (here restarted with an empty state; a
/// promoted client's node is the same) and has no link yet would be the
/// only replica it knows of and answer "not found" for a user online
/// elsewhere. It parks the lookup until its first link is up instead.
#[test]
fn a_search_at_a_node_without_links_yet_waits_for_its_first_link() {
    let mut sim = meshed(3);
    let _alice = join(&mut sim, "alice", 0, 0);
    sim.run_for(SECOND);
    sim.crash(2);
    sim.run_for(5 * SECOND);
    // Node 2 comes back cut off from its peers: bob joins it and searches.
    sim.partition(2, 0);
    sim.partition(2, 1);
    sim.restart(2);
    let bob = join(&mut sim, "bob", 2, 0);
    let before = sim.nodes[2].node.stats().lookups_parked;
    let rid = sim.send(
        bob,
        Body::SearchRequest(SearchRequest {
            name: "alice".into(),
        }),
    );
    sim.run_for(SECOND / 2);
    assert!(
        sim.take_reply(bob, rid).is_none(),
        "answered before node 2 had any link"
    );
    assert_eq!(sim.nodes[2].node.stats().lookups_parked, before + 1);
    sim.heal(2, 0);
    sim.heal(2, 1);
    sim.run_until(5 * SECOND, |sim| {
        sim.clients[bob].inbox.iter().any(|e| e.request_id == rid)
    });
    let found = match sim.take_reply(bob, rid) {
        Some(Body::SearchReply(reply)) => reply,
        other => panic!("search: {other:?}"),
    };
    assert!(found.found, "{found:?}");
    assert_eq!(
        found.status,
        natter_proto::messages::PresenceStatus::Online as i32
    );
    assert_eq!(home_of(&found), Some(sim_addr(0)));
}
