//! Call setup between two in-memory sides, with a virtual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{NOW, identity, issuer};
use natter_proto::call::{CallEvent, CallSetup, EndReason, Phase};
use natter_proto::handshake::HandshakeError;
use natter_proto::messages::{CallSignal, Candidate, SocketAddr, call_signal};

const INVITE: [u8; 16] = [0x42; 16];

fn candidate(port: u16) -> Candidate {
    Candidate {
        addr: Some(SocketAddr::from(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            port,
        )))),
        ..Default::default()
    }
}

fn caller() -> CallSetup {
    CallSetup::invite(
        &identity("alice", "alice"),
        "alice",
        "bob",
        INVITE,
        [1; 32],
        vec![candidate(1000)],
        issuer().public_key(),
        0,
        30_000,
    )
}

/// What a supernode does: stamps `from` with the sender's name.
fn routed(mut signal: CallSignal, from: &str) -> CallSignal {
    signal.from = from.to_owned();
    signal
}

fn events(setup: &mut CallSetup) -> Vec<CallEvent> {
    std::iter::from_fn(|| setup.poll_event()).collect()
}

#[test]
fn an_answered_call_connects_both_sides_with_matching_keys() {
    let mut a = caller();
    let invite = routed(a.poll_signal().unwrap(), "alice");
    let mut b = CallSetup::incoming(&invite, "bob", issuer().public_key(), NOW, 0, 30_000).unwrap();
    let ev = events(&mut b);
    assert!(matches!(&ev[..], [CallEvent::Incoming { caller }] if caller.name == "alice"));
    let ringing = routed(b.poll_signal().unwrap(), "bob");
    a.handle_signal(&ringing, NOW);
    assert_eq!(events(&mut a), vec![CallEvent::Ringing]);

    b.accept(&identity("bob", "bob"), [2; 32], vec![candidate(2000)], NOW);
    let accept = routed(b.poll_signal().unwrap(), "bob");
    a.handle_signal(&accept, NOW);
    let (ka, ca) = match events(&mut a).pop().unwrap() {
        CallEvent::Connected {
            keys,
            remote_candidates,
        } => (keys, remote_candidates),
        other => panic!("{other:?}"),
    };
    let (kb, cb) = match events(&mut b).pop().unwrap() {
        CallEvent::Connected {
            keys,
            remote_candidates,
        } => (keys, remote_candidates),
        other => panic!("{other:?}"),
    };
    assert_eq!(ka.send, kb.recv);
    assert_eq!(ka.recv, kb.send);
    assert_eq!(ka.call_id, kb.call_id);
    assert_eq!(ca, vec![candidate(2000)]);
    assert_eq!(cb, vec![candidate(1000)]);

    // Hang-up from the callee ends both.
    b.hangup();
    a.handle_signal(&routed(b.poll_signal().unwrap(), "bob"), NOW);
    assert_eq!(
        events(&mut a),
        vec![CallEvent::Ended(EndReason::HungUp { by_peer: true })]
    );
    assert_eq!(a.phase(), Phase::Ended);
}

#[test]
fn reject_busy_and_no_answer_are_distinct_outcomes() {
    for (busy, expected) in [(false, EndReason::Rejected), (true, EndReason::Busy)] {
        let mut a = caller();
        let invite = routed(a.poll_signal().unwrap(), "alice");
        let mut b =
            CallSetup::incoming(&invite, "bob", issuer().public_key(), NOW, 0, 30_000).unwrap();
        b.poll_signal(); // ringing
        b.reject(busy);
        a.handle_signal(&routed(b.poll_signal().unwrap(), "bob"), NOW);
        assert_eq!(events(&mut a), vec![CallEvent::Ended(expected)]);
    }
    let mut a = caller();
    a.poll_signal();
    assert_eq!(a.poll_timeout(), Some(30_000));
    a.handle_timeout(29_999);
    assert!(events(&mut a).is_empty());
    a.handle_timeout(30_000);
    assert_eq!(events(&mut a), vec![CallEvent::Ended(EndReason::NoAnswer)]);
    let hangup = a.poll_signal().unwrap();
    assert!(matches!(hangup.kind, Some(call_signal::Kind::Hangup(_))));
}

#[test]
fn an_invite_whose_certificate_names_someone_else_is_refused() {
    let mut a = caller();
    // The supernode says the invite came from "mallory", but the
    // certificate inside is alice's.
    let invite = routed(a.poll_signal().unwrap(), "mallory");
    let mut b = CallSetup::incoming(&invite, "bob", issuer().public_key(), NOW, 0, 30_000).unwrap();
    assert!(matches!(
        events(&mut b).as_slice(),
        [CallEvent::Ended(EndReason::BadPeer(
            HandshakeError::Certificate(_)
        ))]
    ));
    assert!(matches!(
        b.poll_signal().unwrap().kind,
        Some(call_signal::Kind::Reject(_))
    ));
}

#[test]
fn an_accept_from_an_impostor_never_connects() {
    let mut a = caller();
    let invite = routed(a.poll_signal().unwrap(), "alice");
    // Carol answers in bob's place with her own valid certificate.
    let mut c = CallSetup::incoming(&invite, "bob", issuer().public_key(), NOW, 0, 30_000).unwrap();
    c.poll_signal();
    c.accept(&identity("carol", "bob"), [3; 32], vec![], NOW);
    let accept = routed(c.poll_signal().unwrap(), "bob");
    a.handle_signal(&accept, NOW);
    assert!(matches!(
        events(&mut a).as_slice(),
        [CallEvent::Ended(EndReason::BadPeer(_))]
    ));
    assert_eq!(a.phase(), Phase::Ended);
}

#[test]
fn signals_for_other_calls_are_ignored() {
    let mut a = caller();
    a.poll_signal();
    let mut stray = CallSignal {
        invite_id: vec![0; 16],
        from: "bob".into(),
        to: "alice".into(),
        kind: Some(call_signal::Kind::Busy(Default::default())),
        ..Default::default()
    };
    a.handle_signal(&stray, NOW);
    assert_eq!(a.phase(), Phase::Inviting);
    stray.invite_id = INVITE.to_vec();
    a.handle_signal(&stray, NOW);
    assert_eq!(a.phase(), Phase::Ended);
}
