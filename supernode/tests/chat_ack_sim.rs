//! Chat acknowledgements in memory, on the virtual clock (see `sim`): for a
//! client whose hello says `acks_chat`, pushed chat counts as delivered
//! only once the client sent `ChatDelivered` for it. What it never
//! acknowledges stays on (or goes to) the replicas, past the
//! acknowledgement deadline too, and at most `MAX_UNACKED` pushes wait for
//! one session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sim;

use std::collections::HashSet;
use std::time::Duration;

use natter_proto::messages::envelope::Body;
use natter_proto::messages::{ChatDelivered, ChatMessage, Leave};
use natter_supernode::core::MAX_UNACKED;
use sim::{Sim, SimConfig};

const SECOND: Duration = Duration::from_secs(1);
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

fn meshed(n: usize) -> Sim {
    let config = SimConfig {
        chat_ack_timeout: ACK_TIMEOUT,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(n, &config);
    assert!(sim.run_until(30 * SECOND, Sim::meshed), "did not mesh");
    sim
}

fn joined(sim: &mut Sim, c: usize) -> usize {
    assert!(
        sim.run_until(5 * SECOND, |s| s.joined(c)),
        "{} did not join",
        sim.clients[c].name
    );
    c
}

fn message(sim: &mut Sim, to: &str) -> ChatMessage {
    ChatMessage {
        message_id: sim.random_id(),
        from: String::new(),
        to: to.to_owned(),
        sealed: common::sealed(b"hello"),
        sent_at: 1,
        ..Default::default()
    }
}

fn send(sim: &mut Sim, c: usize, m: ChatMessage) {
    let reply = sim.request(c, Body::ChatMessage(m), 5 * SECOND);
    assert!(matches!(reply, Some(Body::Ack(_))), "{reply:?}");
}

/// The ids of every chat message client `c` was pushed so far.
fn pushed(sim: &mut Sim, c: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Some(id) = sim.take_push(c, |b| match b {
        Body::ChatMessage(m) => Some(m.message_id.clone()),
        _ => None,
    }) {
        got.push(id);
    }
    got
}

fn ack(sim: &mut Sim, c: usize, ids: Vec<Vec<u8>>) {
    let reply = sim.request(
        c,
        Body::ChatDelivered(ChatDelivered { message_ids: ids }),
        5 * SECOND,
    );
    assert!(matches!(reply, Some(Body::Ack(_))), "{reply:?}");
}

fn held(sim: &Sim, name: &str) -> Vec<usize> {
    sim.nodes.iter().map(|n| n.node.held_chat(name)).collect()
}

/// A client that acknowledges chat gets its stored chat pushed and never
/// acknowledges it: past the deadline the gather ends and every replica
/// still holds the messages; the next join delivers them again, and only
/// the acknowledgement has them deleted. (Before, the push alone deleted
/// them: a client whose connection died before it stored them lost them.)
#[test]
fn stored_chat_not_acknowledged_by_the_deadline_stays_on_the_replicas() {
    let mut sim = meshed(4);
    let carol = sim.add_acking_client("carol", 0);
    joined(&mut sim, carol);
    let left = sim.request(carol, Body::Leave(Leave {}), 5 * SECOND);
    assert!(matches!(left, Some(Body::Ack(_))));
    sim.run_for(SECOND);
    let alice = sim.add_client("alice", 1);
    joined(&mut sim, alice);
    let sent: HashSet<Vec<u8>> = (0..2)
        .map(|_| {
            let m = message(&mut sim, "carol");
            let id = m.message_id.clone();
            send(&mut sim, alice, m);
            id
        })
        .collect();
    let stored = held(&sim, "carol");
    assert_eq!(stored.iter().filter(|n| **n == 2).count(), 3, "{stored:?}");

    sim.connect(carol, 2);
    joined(&mut sim, carol);
    assert_eq!(
        sim.clients[carol].accepted.as_ref().map(|a| a.acks_chat),
        Some(true)
    );
    sim.run_for(SECOND);
    let first: HashSet<_> = pushed(&mut sim, carol).into_iter().collect();
    assert_eq!(first, sent, "the stored chat is pushed");
    // No acknowledgement: the deadline passes, nothing is deleted, no
    // receipt goes to the sender, and the gather does not push again.
    sim.run_for(ACK_TIMEOUT + 5 * SECOND);
    assert_eq!(held(&sim, "carol"), stored, "deleted without an ack");
    assert!(pushed(&mut sim, carol).is_empty());
    assert!(
        sim.take_push(alice, |b| matches!(b, Body::ChatReceipt(_)).then_some(()))
            .is_none(),
        "receipted without an ack"
    );
    assert!(sim.nodes[2].node.stats().chat_unacked >= 1);

    // The next join delivers them again; acknowledged, they go.
    sim.disconnect(carol);
    sim.run_for(SECOND);
    sim.connect(carol, 3);
    joined(&mut sim, carol);
    sim.run_for(SECOND);
    let again: Vec<_> = pushed(&mut sim, carol);
    assert_eq!(again.iter().cloned().collect::<HashSet<_>>(), sent);
    ack(&mut sim, carol, again);
    assert!(
        sim.run_until(5 * SECOND, |s| held(s, "carol").iter().all(|n| *n == 0)),
        "acknowledged chat still held: {:?}",
        held(&sim, "carol")
    );
    let receipts = (0..2)
        .filter_map(|_| {
            sim.wait_push(alice, 5 * SECOND, |b| match b {
                Body::ChatReceipt(r) => Some(r.message_id.clone()),
                _ => None,
            })
        })
        .collect::<HashSet<_>>();
    assert_eq!(receipts, sent, "receipted once acknowledged");
}

/// Live chat to an online client that acknowledges chat: at most
/// `MAX_UNACKED` pushes wait for its acknowledgement; the sender's further
/// messages are stored on the replicas instead, and so are the pushed
/// ones that are not acknowledged by the deadline. Nothing is lost: at the
/// next join every message arrives. (Before, every message was pushed, and
/// counted as delivered once queued.)
#[test]
fn live_chat_waits_for_acknowledgements_within_a_bound_and_is_stored_when_none_comes() {
    let mut sim = meshed(4);
    let carol = sim.add_acking_client("carol", 0);
    joined(&mut sim, carol);
    let alice = sim.add_client("alice", 1);
    joined(&mut sim, alice);
    sim.run_for(SECOND);
    let total = MAX_UNACKED + 6;
    let mut sent = HashSet::new();
    for _ in 0..total {
        let m = message(&mut sim, "carol");
        sent.insert(m.message_id.clone());
        send(&mut sim, alice, m);
        // Within the sender's rate limit.
        sim.run_for(Duration::from_millis(30));
    }
    sim.run_for(SECOND);
    let live: HashSet<_> = pushed(&mut sim, carol).into_iter().collect();
    assert_eq!(live.len(), MAX_UNACKED, "pushes beyond the bound");
    let stored = held(&sim, "carol");
    assert!(
        stored.iter().all(|n| *n == 0 || *n == total - MAX_UNACKED),
        "the messages over the bound are stored: {stored:?}"
    );
    assert_eq!(stored.iter().filter(|n| **n > 0).count(), 3, "{stored:?}");

    // Never acknowledged: past the deadline the pushed ones are stored too.
    sim.run_for(ACK_TIMEOUT + 5 * SECOND);
    let stored = held(&sim, "carol");
    assert_eq!(
        stored.iter().filter(|n| **n == total).count(),
        3,
        "{stored:?}"
    );

    // Carol comes back and acknowledges what she gets: all of it.
    sim.disconnect(carol);
    sim.run_for(SECOND);
    sim.connect(carol, 2);
    joined(&mut sim, carol);
    let mut got = HashSet::new();
    for _ in 0..40 {
        sim.run_for(SECOND);
        let ids = pushed(&mut sim, carol);
        if ids.is_empty() && got.len() == total {
            break;
        }
        got.extend(ids.iter().cloned());
        if !ids.is_empty() {
            ack(&mut sim, carol, ids);
        }
    }
    assert_eq!(got, sent, "every message arrives");
    assert!(
        sim.run_until(5 * SECOND, |s| held(s, "carol").iter().all(|n| *n == 0)),
        "{:?}",
        held(&sim, "carol")
    );
}

/// A client that acknowledges chat and leaves with pushes outstanding:
/// the live messages it did not acknowledge are stored at once, not lost.
#[test]
fn a_session_that_ends_unacknowledged_has_its_live_chat_stored() {
    let mut sim = meshed(3);
    let carol = sim.add_acking_client("carol", 0);
    joined(&mut sim, carol);
    let alice = sim.add_client("alice", 1);
    joined(&mut sim, alice);
    sim.run_for(SECOND);
    let m = message(&mut sim, "carol");
    let id = m.message_id.clone();
    send(&mut sim, alice, m);
    sim.run_for(SECOND);
    assert_eq!(pushed(&mut sim, carol), vec![id.clone()]);
    assert!(held(&sim, "carol").iter().all(|n| *n == 0));
    sim.disconnect(carol);
    sim.run_for(2 * SECOND);
    let stored = held(&sim, "carol");
    assert_eq!(stored.iter().filter(|n| **n == 1).count(), 3, "{stored:?}");
    sim.connect(carol, 2);
    joined(&mut sim, carol);
    sim.run_for(SECOND);
    assert_eq!(pushed(&mut sim, carol), vec![id]);
}
