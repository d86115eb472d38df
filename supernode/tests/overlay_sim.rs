//! The overlay in memory: supernode cores and clients on a virtual clock
//! and network (see `sim`). Join with real certificates and proofs, search
//! across replicas, presence, chat with offline delivery, replica loss and
//! re-homing, call routing and the no-answer timeout, partitions, and a
//! 200-node search run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sim;

use std::time::{Duration, Instant};

use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    CallAccept, CallInvite, CallSignal, ChatMessage, ErrorCode, HangupReason, InboxFetch, Leave,
    PresenceStatus, PresenceSubscribe, RelayAllocate, SearchReply, SearchRequest, SetPresence,
    call_signal,
};
use natter_supernode::hrw;
use sim::{Sim, SimConfig, sim_addr, sim_node_id};

const SECOND: Duration = Duration::from_secs(1);

fn meshed(n: usize, config: &SimConfig) -> Sim {
    let mut sim = Sim::new(n, config);
    assert!(
        sim.run_until(30 * SECOND, Sim::meshed),
        "{n} nodes did not mesh"
    );
    sim
}

fn join(sim: &mut Sim, name: &str, node: usize) -> usize {
    let c = sim.add_client(name, node);
    assert!(
        sim.run_until(5 * SECOND, |s| s.joined(c)),
        "{name} did not join node {node}"
    );
    c
}

fn search(sim: &mut Sim, c: usize, name: &str) -> SearchReply {
    let body = Body::SearchRequest(SearchRequest {
        name: name.to_owned(),
    });
    match sim.request(c, body, 10 * SECOND) {
        Some(Body::SearchReply(reply)) => reply,
        other => panic!("search for {name}: {other:?}"),
    }
}

fn chat(sim: &mut Sim, from: usize, to: &str, text: &str) -> Option<Body> {
    let message = ChatMessage {
        message_id: sim.random_id(),
        from: String::new(),
        to: to.to_owned(),
        sealed: common::sealed(text.as_bytes()),
        sent_at: 1,
        ..Default::default()
    };
    sim.request(from, Body::ChatMessage(message), 10 * SECOND)
}

fn signal(
    sim: &mut Sim,
    from: usize,
    to: &str,
    invite_id: &[u8],
    kind: call_signal::Kind,
) -> Option<Body> {
    let signal = CallSignal {
        invite_id: invite_id.to_vec(),
        from: String::new(),
        to: to.to_owned(),
        kind: Some(kind),
        ..Default::default()
    };
    sim.request(from, Body::CallSignal(signal), 10 * SECOND)
}

fn is_ack(body: &Option<Body>) -> bool {
    matches!(body, Some(Body::Ack(_)))
}

/// The first node in `0..n` that is not among `name`'s replicas.
fn not_a_replica(name: &str, n: usize, k: usize) -> usize {
    let ids: Vec<_> = (0..n).map(sim_node_id).collect();
    let replicas = hrw::replicas(name, &ids, k);
    (0..n)
        .find(|i| !replicas.contains(&sim_node_id(*i)))
        .unwrap()
}

fn replica_indices(name: &str, live: &[usize], k: usize) -> Vec<usize> {
    let ids: Vec<_> = live.iter().map(|i| sim_node_id(*i)).collect();
    hrw::replicas(name, &ids, k)
        .into_iter()
        .map(|id| (0..1000).find(|i| sim_node_id(*i) == id).unwrap())
        .collect()
}

#[test]
fn join_search_presence_and_offline_chat_across_the_overlay() {
    let mut sim = meshed(6, &SimConfig::default());
    let alice = join(&mut sim, "alice", not_a_replica("alice", 6, 3));
    let bob_node = (sim.clients[alice].node + 3) % 6;
    let bob = join(&mut sim, "bob", bob_node);
    // JoinAccepted lists the whole overlay.
    assert_eq!(
        sim.clients[bob].accepted.as_ref().unwrap().supernodes.len(),
        6
    );

    // Search across replicas: alice is found online at her supernode.
    let found = search(&mut sim, bob, "Alice");
    assert!(found.found);
    assert_eq!(found.name, "alice");
    assert_eq!(found.status, PresenceStatus::Online as i32);
    let home = sim_addr(sim.clients[alice].node);
    assert_eq!(
        found
            .supernode
            .map(|a| std::net::SocketAddr::try_from(&a).unwrap()),
        Some(home)
    );
    let missing = search(&mut sim, bob, "nobody");
    assert!(!missing.found);

    // Presence: bob subscribes and hears alice go away.
    let subscribe = Body::PresenceSubscribe(PresenceSubscribe {
        names: vec!["alice".into()],
    });
    assert!(is_ack(&sim.request(bob, subscribe, 5 * SECOND)));
    assert_eq!(
        sim.wait_push(bob, 5 * SECOND, Sim::presence_of("alice")),
        Some(PresenceStatus::Online)
    );
    let away = Body::SetPresence(SetPresence {
        status: PresenceStatus::Away as i32,
    });
    assert!(is_ack(&sim.request(alice, away, 5 * SECOND)));
    assert_eq!(
        sim.wait_push(bob, 5 * SECOND, Sim::presence_of("alice")),
        Some(PresenceStatus::Away)
    );

    // Chat to a user that never joined: unknown.
    match chat(&mut sim, alice, "carol", "hello?") {
        Some(Body::Error(e)) => assert_eq!(e.code, ErrorCode::UserUnknown as i32),
        other => panic!("chat to an unknown user: {other:?}"),
    }
    // Carol joins and leaves; chat to her is stored on her replicas.
    let carol = join(&mut sim, "carol", 1);
    assert!(is_ack(&sim.request(
        carol,
        Body::Leave(Leave {}),
        5 * SECOND
    )));
    sim.run_for(SECOND);
    assert_eq!(
        search(&mut sim, alice, "carol").status,
        PresenceStatus::Offline as i32
    );
    assert!(is_ack(&chat(
        &mut sim,
        alice,
        "carol",
        "while you were out"
    )));
    sim.run_for(SECOND);
    let held: usize = sim.nodes.iter().map(|n| n.node.held_chat("carol")).sum();
    assert_eq!(held, 3, "stored on carol's three replicas");

    // She comes back elsewhere: the chat is delivered once, and receipted.
    sim.connect(carol, 4);
    assert!(sim.run_until(5 * SECOND, |s| s.joined(carol)));
    let text = sim.wait_push(carol, 5 * SECOND, |b| match b {
        Body::ChatMessage(m) => Some(common::unsealed(m)),
        _ => None,
    });
    assert_eq!(text.as_deref(), Some("while you were out"));
    let receipt = sim.wait_push(alice, 5 * SECOND, |b| match b {
        Body::ChatReceipt(r) => Some(r.from.clone()),
        _ => None,
    });
    assert_eq!(receipt.as_deref(), Some("carol"));
    sim.run_for(SECOND);
    let held: usize = sim.nodes.iter().map(|n| n.node.held_chat("carol")).sum();
    assert_eq!(held, 0, "taken from every replica");
    assert!(
        sim.take_push(carol, |b| matches!(b, Body::ChatMessage(_)).then_some(()))
            .is_none()
    );
    // An inbox fetch finds nothing more.
    assert!(is_ack(&sim.request(
        carol,
        Body::InboxFetch(InboxFetch {}),
        5 * SECOND
    )));
    assert!(
        sim.take_push(carol, |b| matches!(b, Body::ChatMessage(_)).then_some(()))
            .is_none()
    );
}

#[test]
fn losing_three_replicas_rehomes_records_and_stored_chat() {
    let n = 9;
    let mut sim = meshed(n, &SimConfig::default());
    let everyone: Vec<usize> = (0..n).collect();
    let erin_replicas = replica_indices("erin", &everyone, 3);
    let survivors: Vec<usize> = (0..n).filter(|i| !erin_replicas.contains(i)).collect();
    // Dave is online at a node that is none of his replicas, before or
    // after erin's replicas are gone.
    let dave_home = *survivors
        .iter()
        .find(|i| {
            !replica_indices("dave", &survivors, 3).contains(i)
                && !replica_indices("dave", &everyone, 3).contains(i)
        })
        .unwrap();
    let dave = join(&mut sim, "dave", dave_home);
    // Erin joined and left: her record is offline, chat for her is stored.
    let erin_first = (0..n)
        .find(|i| !erin_replicas.contains(i) && *i != dave_home)
        .unwrap();
    let erin = join(&mut sim, "erin", erin_first);
    assert!(is_ack(&sim.request(
        erin,
        Body::Leave(Leave {}),
        5 * SECOND
    )));
    sim.run_for(SECOND);
    assert!(is_ack(&chat(
        &mut sim,
        dave,
        "erin",
        "kept through three crashes"
    )));
    sim.run_for(SECOND);

    // Erin's three replicas crash one after the other; each time the
    // survivors hand her record and chat to the next node in HRW order.
    let mut live = everyone.clone();
    for victim in erin_replicas.clone() {
        assert_ne!(victim, dave_home);
        sim.crash(victim);
        live.retain(|i| *i != victim);
        assert!(
            sim.run_until(15 * SECOND, Sim::meshed),
            "failure not detected"
        );
        sim.run_for(SECOND);
        let now_replicas = replica_indices("erin", &live, 3);
        for r in &now_replicas {
            assert_eq!(
                sim.nodes[*r].node.held_chat("erin"),
                1,
                "node {r} holds erin's chat"
            );
            assert!(sim.nodes[*r].node.held_record("erin").is_some());
        }
    }
    assert!(erin_replicas.iter().all(|r| !sim.nodes[*r].up));

    // Dave's replicas crash at once: his home re-publishes his record.
    let dave_replicas = replica_indices("dave", &live, 3);
    assert!(!dave_replicas.contains(&dave_home));
    for victim in &dave_replicas {
        sim.crash(*victim);
        live.retain(|i| i != victim);
    }
    assert!(sim.run_until(15 * SECOND, Sim::meshed));
    sim.run_for(SECOND);
    let asker_node = live.iter().copied().find(|i| *i != dave_home).unwrap();
    let asker = join(&mut sim, "frank", asker_node);
    let found = search(&mut sim, asker, "dave");
    assert!(
        found.found && found.status == PresenceStatus::Online as i32,
        "{found:?}; dave at {dave_home}, replicas {dave_replicas:?}, live {live:?}, holders {:?}",
        (0..n)
            .filter(|i| sim.nodes[*i].up && sim.nodes[*i].node.held_record("dave").is_some())
            .collect::<Vec<_>>()
    );

    // Erin comes back and gets the chat stored before the crashes.
    let back = live
        .iter()
        .copied()
        .find(|i| *i != dave_home && *i != asker_node)
        .unwrap();
    sim.connect(erin, back);
    assert!(sim.run_until(5 * SECOND, |s| s.joined(erin)));
    let text = sim.wait_push(erin, 5 * SECOND, |b| match b {
        Body::ChatMessage(m) => Some(common::unsealed(m)),
        _ => None,
    });
    assert_eq!(text.as_deref(), Some("kept through three crashes"));
}

#[test]
fn call_signals_are_routed_and_unanswered_invites_hang_up() {
    let config = SimConfig {
        no_answer_timeout: Duration::from_secs(5),
        ..SimConfig::default()
    };
    let mut sim = meshed(5, &config);
    let alice = join(&mut sim, "alice", 1);
    let bob = join(&mut sim, "bob", 4);
    sim.run_for(SECOND);

    // Answered: the invite reaches bob, the accept reaches alice, no hangup.
    let answered = sim.random_id();
    let invite = call_signal::Kind::Invite(CallInvite::default());
    assert!(is_ack(&signal(
        &mut sim,
        alice,
        "bob",
        &answered,
        invite.clone()
    )));
    let got = sim.wait_push(bob, 5 * SECOND, |b| match b {
        Body::CallSignal(s) if matches!(s.kind, Some(call_signal::Kind::Invite(_))) => {
            Some((s.from.clone(), s.invite_id.clone()))
        }
        _ => None,
    });
    assert_eq!(got, Some(("alice".to_owned(), answered.clone())));
    let accept = call_signal::Kind::Accept(CallAccept::default());
    assert!(is_ack(&signal(&mut sim, bob, "alice", &answered, accept)));
    assert!(
        sim.wait_push(alice, 5 * SECOND, |b| match b {
            Body::CallSignal(s) if matches!(s.kind, Some(call_signal::Kind::Accept(_))) => Some(()),
            _ => None,
        })
        .is_some()
    );
    // The call went through alice's supernode: she may allocate a relay there.
    let allocate = Body::RelayAllocate(RelayAllocate {
        invite_id: answered.clone(),
    });
    match sim.request(alice, allocate, 5 * SECOND) {
        Some(Body::RelayAllocated(a)) => {
            assert_eq!(a.invite_id, answered);
            assert_eq!(a.token.len(), natter_proto::relay::TOKEN_LEN);
        }
        other => panic!("relay allocate: {other:?}"),
    }
    // Not for a call that never passed through.
    let stranger = Body::RelayAllocate(RelayAllocate {
        invite_id: sim.random_id(),
    });
    match sim.request(alice, stranger, 5 * SECOND) {
        Some(Body::Error(e)) => assert_eq!(e.code, ErrorCode::NotJoined as i32),
        other => panic!("relay allocate for another call: {other:?}"),
    }

    // Unanswered: both sides get a NoAnswer hangup after the timeout, and
    // not before.
    let unanswered = sim.random_id();
    assert!(is_ack(&signal(&mut sim, alice, "bob", &unanswered, invite)));
    let hangup = |id: Vec<u8>| {
        move |b: &Body| match b {
            Body::CallSignal(s) if s.invite_id == id => match &s.kind {
                Some(call_signal::Kind::Hangup(h)) => Some(h.reason),
                _ => None,
            },
            _ => None,
        }
    };
    sim.run_for(4 * SECOND);
    assert!(
        sim.take_push(alice, hangup(unanswered.clone())).is_none(),
        "too early"
    );
    assert_eq!(
        sim.wait_push(alice, 3 * SECOND, hangup(unanswered.clone())),
        Some(HangupReason::NoAnswer as i32)
    );
    assert_eq!(
        sim.wait_push(bob, 3 * SECOND, hangup(unanswered.clone())),
        Some(HangupReason::NoAnswer as i32)
    );
    // The answered call got none.
    assert!(sim.take_push(alice, hangup(answered.clone())).is_none());
    assert!(sim.take_push(bob, hangup(answered)).is_none());
}

#[test]
fn a_partition_is_detected_and_healed_and_slow_links_still_answer() {
    let mut sim = meshed(4, &SimConfig::default());
    let alice = join(&mut sim, "alice", 0);
    let bob = join(&mut sim, "bob", 1);
    sim.partition(0, 1);
    let split = sim.run_until(15 * SECOND, |s| {
        !s.nodes[0].node.live_members().contains(&sim_node_id(1))
            && !s.nodes[1].node.live_members().contains(&sim_node_id(0))
    });
    assert!(split, "the partition was not detected");
    assert_eq!(
        sim.nodes[2].node.live_members().len(),
        4,
        "others still see both"
    );
    sim.heal(0, 1);
    assert!(sim.run_until(30 * SECOND, Sim::meshed), "did not heal");
    // A slow link (retransmissions) delays answers but loses nothing.
    sim.net.slow.insert((0, 1), Duration::from_millis(300));
    let found = search(&mut sim, alice, "bob");
    assert!(found.found && found.status == PresenceStatus::Online as i32);
    let found = search(&mut sim, bob, "alice");
    assert!(found.found);
}

#[test]
fn two_hundred_nodes_every_client_finds_another() {
    let started = Instant::now();
    let n = 200;
    let mut sim = meshed(n, &SimConfig::default());
    let meshed_at = started.elapsed();
    let meshed_virtual = sim.t;
    let names: Vec<String> = (0..n).map(|i| format!("user{i:03}")).collect();
    let clients: Vec<usize> = names
        .iter()
        .enumerate()
        .map(|(i, name)| sim.add_client(name, i))
        .collect();
    assert!(sim.run_until(10 * SECOND, |s| clients.iter().all(|c| s.joined(*c))));
    sim.run_for(SECOND / 2);
    let rids: Vec<(usize, u64, usize)> = clients
        .iter()
        .map(|c| {
            let target = (c + n / 2 + 1) % n;
            let body = Body::SearchRequest(SearchRequest {
                name: names[target].clone(),
            });
            (*c, sim.send(*c, body), target)
        })
        .collect();
    assert!(sim.run_until(10 * SECOND, |s| {
        rids.iter()
            .all(|(c, rid, _)| s.clients[*c].inbox.iter().any(|e| e.request_id == *rid))
    }));
    for (c, rid, target) in rids {
        match sim.take_reply(c, rid) {
            Some(Body::SearchReply(r)) => {
                assert!(r.found, "{} not found by {}", names[target], names[c]);
                assert_eq!(r.status, PresenceStatus::Online as i32);
                let home = r
                    .supernode
                    .map(|a| std::net::SocketAddr::try_from(&a).unwrap());
                assert_eq!(home, Some(sim_addr(target)));
            }
            other => panic!("search reply: {other:?}"),
        }
    }
    let wall = started.elapsed();
    println!(
        "200-node search run: {n} supernodes, {n} clients, {n} searches; meshed in {:.1} s virtual ({:.2} s wall), total {:.2} s wall, {} events, virtual time {:.1} s",
        meshed_virtual.as_secs_f64(),
        meshed_at.as_secs_f64(),
        wall.as_secs_f64(),
        sim.steps,
        sim.t.as_secs_f64()
    );
    assert!(wall < Duration::from_secs(120), "took {wall:?}");
}

#[test]
fn a_session_serves_its_requests_in_order_one_at_a_time() {
    let mut sim = meshed(5, &SimConfig::default());
    let alice = join(&mut sim, "alice", not_a_replica("bob", 5, 3));
    let bob = join(&mut sim, "bob", 4);
    sim.run_for(SECOND);
    // The search waits on other supernodes; the ping behind it is answered
    // after it, as a reader serving one request at a time would.
    let search = sim.send(
        alice,
        Body::SearchRequest(SearchRequest { name: "bob".into() }),
    );
    let ping = sim.send(alice, Body::Ping(natter_proto::messages::Ping { nonce: 7 }));
    assert!(sim.run_until(5 * SECOND, |s| {
        s.clients[alice].inbox.iter().any(|e| e.request_id == ping)
    }));
    let order: Vec<u64> = sim.clients[alice]
        .inbox
        .iter()
        .map(|e| e.request_id)
        .filter(|r| *r == search || *r == ping)
        .collect();
    assert_eq!(order, vec![search, ping]);
    assert!(matches!(sim.take_reply(alice, search), Some(Body::SearchReply(r)) if r.found));
    assert!(matches!(sim.take_reply(alice, ping), Some(Body::Pong(p)) if p.nonce == 7));
    assert!(sim.joined(bob));
}

#[test]
fn joining_elsewhere_replaces_the_old_session() {
    let mut sim = meshed(4, &SimConfig::default());
    let first = join(&mut sim, "alice", 0);
    sim.run_for(SECOND);
    let second = join(&mut sim, "alice", 2);
    assert!(sim.run_until(5 * SECOND, |s| s.clients[first].closed.is_some()));
    assert_eq!(
        sim.clients[first].closed,
        Some(natter_supernode::close::REPLACED)
    );
    assert!(sim.joined(second));
    assert_eq!(sim.nodes[0].node.session_count(), 0);
    assert_eq!(sim.nodes[2].node.session_count(), 1);
    let bob = join(&mut sim, "bob", 1);
    let found = search(&mut sim, bob, "alice");
    let home = found
        .supernode
        .map(|a| std::net::SocketAddr::try_from(&a).unwrap());
    assert_eq!(home, Some(sim_addr(2)));
}

#[test]
fn an_unanswered_challenge_times_out_and_a_flood_is_closed() {
    let mut sim = meshed(2, &SimConfig::default());
    // Silent after the challenge: refused when the handshake time is up.
    let silent = sim.add_client("carol", 0);
    sim.clients[silent].answers_challenge = false;
    sim.run_for(9 * SECOND);
    assert_eq!(sim.clients[silent].closed, None, "not before 10 s");
    sim.run_for(2 * SECOND);
    assert_eq!(
        sim.clients[silent].closed,
        Some(natter_supernode::close::REFUSED)
    );
    assert!(!sim.joined(silent));

    // A client sending far above the rate is limited, then closed.
    let flood = join(&mut sim, "dave", 1);
    for nonce in 0..400 {
        sim.send(flood, Body::Ping(natter_proto::messages::Ping { nonce }));
    }
    sim.run_for(SECOND);
    let limited = sim.clients[flood]
        .inbox
        .iter()
        .filter(|e| {
            matches!(&e.body, Some(Body::Error(err)) if err.code == ErrorCode::RateLimited as i32)
        })
        .count();
    let pongs = sim.clients[flood]
        .inbox
        .iter()
        .filter(|e| matches!(e.body, Some(Body::Pong(_))))
        .count();
    assert_eq!(pongs, 100, "the burst is served");
    assert!(limited > 0);
    assert_eq!(
        sim.clients[flood].closed,
        Some(natter_supernode::close::RATE_LIMITED)
    );
    assert_eq!(sim.nodes[1].node.session_count(), 0);
}

/// Issue 14 item 1: members learned from gossip are dialled at most
/// `MAX_DIALS_PER_TICK` a tick (the rest on later ticks), each only with a
/// certificate naming it and its address; each certificate is verified
/// once however often it is gossiped, and bogus ones cost at most
/// `MAX_VERIFIES_PER_TICK` verifications a tick.
#[test]
fn learned_members_are_dialled_at_most_eight_a_tick() {
    use natter_proto::cert;
    use natter_proto::messages::{Envelope, GossipMembership, Member, MemberState};
    use natter_supernode::core::{
        LinkOrigin, MAX_DIALS_PER_TICK, MAX_VERIFIES_PER_TICK, Node, Now, Output,
    };
    use std::net::SocketAddr;

    const MEMBERS: usize = MAX_DIALS_PER_TICK + 3;
    let sim = Sim::new(1, &SimConfig::default());
    let mut config = sim.nodes[0].node.config().clone();
    config.node_id = [0; 16]; // the lowest id: this node dials everyone
    config.peers.clear();
    let t0 = sim.now();
    let mut node = Node::new(config, [7; 32], t0);
    let at = |secs: u64| Now {
        mono: t0.mono + Duration::from_secs(secs),
        unix_ms: t0.unix_ms + secs as i64 * 1000,
    };
    node.handle_timeout(t0); // the first tick
    while node.poll_output().is_some() {}

    let now = common::now_secs();
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let quic = SocketAddr::from(([10, 9, 0, i as u8], 4000));
        let certificate = common::issuer().issue(
            &mut rand::rngs::OsRng,
            &cert::Subject::Supernode {
                key: &key.to_public_key(),
                addrs: cert::SupernodeAddrs {
                    quic,
                    reflector: SocketAddr::from(([10, 9, 0, i as u8], 4001)),
                    tcp: None,
                },
            },
            1,
            now - 60,
            now + 3600,
        );
        members.push(Member {
            node_id: cert::key_id(&key.to_public_key()).to_vec(),
            addr: Some(quic.into()),
            incarnation: 1,
            state: MemberState::Alive as i32,
            tcp: None,
            certificate: Some(certificate),
        });
    }
    // One of them listed at an address its certificate does not name.
    let mut aimed = members[0].clone();
    aimed.addr = Some(SocketAddr::from(([192, 0, 2, 1], 53)).into());
    let peer = [1; 16];
    let peer_addr = SocketAddr::from(([10, 9, 1, 1], 4000));
    let gossip = |members: Vec<Member>| GossipMembership {
        sender_id: peer.to_vec(),
        members,
    };
    let dials = |node: &mut Node| {
        let mut out = Vec::new();
        while let Some(o) = node.poll_output() {
            if let Output::Dial { addr, .. } = o {
                out.push(addr);
            }
        }
        out
    };

    // The aimed entry first: refused, nothing dialled.
    node.handle_link_up(
        1,
        peer_addr,
        peer,
        None,
        &gossip(vec![aimed]),
        LinkOrigin::Accepted,
        at(0),
    );
    assert!(dials(&mut node).is_empty());
    assert_eq!(node.stats().gossip_refused, 1);

    // All of them: eight dialled at once, the rest deferred.
    let all = Envelope::new(0, Body::GossipMembership(gossip(members.clone())));
    node.handle_link(1, all.clone(), at(0));
    let first = dials(&mut node);
    assert_eq!(first.len(), MAX_DIALS_PER_TICK);
    assert_eq!(node.stats().dials_deferred, 3);
    // Gossiped again before the tick: no new dial, no new verification.
    let verified = node.stats().gossip_certificates_verified;
    node.handle_link(1, all.clone(), at(0));
    assert!(dials(&mut node).is_empty());
    assert_eq!(node.stats().gossip_certificates_verified, verified);
    assert!(verified <= MEMBERS as u64 + 1, "{verified}");
    // The next tick dials the other three (still suspects).
    node.handle_timeout(at(1));
    let second = dials(&mut node);
    assert_eq!(second.len(), 3, "{second:?}");
    let mut dialled: Vec<SocketAddr> = first.into_iter().chain(second).collect();
    dialled.sort();
    let mut expected: Vec<SocketAddr> = members
        .iter()
        .map(|m| SocketAddr::try_from(m.addr.as_ref().unwrap()).unwrap())
        .collect();
    expected.sort();
    assert_eq!(
        dialled, expected,
        "each certified address once, nothing else"
    );
    assert_eq!(node.stats().gossip_refused, 1);

    // Entries with bogus certificates: at most MAX_VERIFIES_PER_TICK
    // verifications a tick, however many are gossiped, and no dial.
    let bogus: Vec<Member> = (0..200u32)
        .map(|i| {
            let mut id = [0x77; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            Member {
                node_id: id.to_vec(),
                addr: Some(SocketAddr::from(([10, 9, 2, 1], 4000)).into()),
                incarnation: 1,
                state: MemberState::Alive as i32,
                tcp: None,
                certificate: Some(natter_proto::messages::Certificate {
                    body: members[0].certificate.as_ref().unwrap().body.clone(),
                    signature: vec![i as u8; 256],
                }),
            }
        })
        .collect();
    let bogus = Envelope::new(0, Body::GossipMembership(gossip(bogus)));
    for t in [2, 3] {
        node.handle_timeout(at(t));
        while node.poll_output().is_some() {}
        let before = node.stats();
        node.handle_link(1, bogus.clone(), at(t));
        node.handle_link(1, bogus.clone(), at(t));
        assert!(dials(&mut node).is_empty());
        let after = node.stats();
        assert_eq!(
            after.gossip_certificates_verified - before.gossip_certificates_verified,
            MAX_VERIFIES_PER_TICK as u64
        );
        assert_eq!(
            after.gossip_verify_deferred - before.gossip_verify_deferred,
            400 - MAX_VERIFIES_PER_TICK as u64
        );
        assert_eq!(after.gossip_refused - before.gossip_refused, 400);
    }
}
