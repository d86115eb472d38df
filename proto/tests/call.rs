//! Call setup between two in-memory sides, with a virtual clock: the
//! identity of both ends bound into the shares and the keys, and mid-call
//! signals taken only from the peer with the MAC of the call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{NOW, blinding_rng, identity, issuer};
use natter_proto::call::{CallEvent, CallSetup, EndReason, IgnoredSignals, Phase};
use natter_proto::cert::Identity;
use natter_proto::handshake::{CallKeys, HandshakeError, Role};
use natter_proto::messages::{
    CallHangup, CallHold, CallSignal, Candidate, CandidateUpdate, HangupReason, RejectReason,
    SocketAddr, call_signal,
};
use rand_core::{CryptoRng, RngCore};

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

/// `as_name` (holding `identity`) calls `callee`.
fn caller_as(identity: &Identity, as_name: &str, callee: &str) -> CallSetup {
    CallSetup::invite(
        identity,
        as_name,
        callee,
        INVITE,
        [1; 32],
        vec![candidate(1000)],
        issuer().public_key(),
        0,
        30_000,
        &mut blinding_rng(),
    )
}

fn caller() -> CallSetup {
    caller_as(&identity("alice", "alice"), "alice", "bob")
}

/// What a supernode does: stamps `from` with the sender's name.
fn routed(mut signal: CallSignal, from: &str) -> CallSignal {
    signal.from = from.to_owned();
    signal
}

fn events(setup: &mut CallSetup) -> Vec<CallEvent> {
    std::iter::from_fn(|| setup.poll_event()).collect()
}

fn incoming(invite: &CallSignal, local: &str) -> CallSetup {
    CallSetup::incoming(invite, local, issuer().public_key(), NOW, 0, 30_000).unwrap()
}

fn connected_keys(setup: &mut CallSetup) -> Box<CallKeys> {
    match events(setup).into_iter().find_map(|e| match e {
        CallEvent::Connected { keys, .. } => Some(keys),
        _ => None,
    }) {
        Some(keys) => keys,
        None => panic!("not connected"),
    }
}

/// Alice calls bob, bob answers: both connected, events drained.
fn connected_pair() -> (CallSetup, CallSetup, Box<CallKeys>, Box<CallKeys>) {
    let mut a = caller();
    let mut b = incoming(&routed(a.poll_signal().unwrap(), "alice"), "bob");
    events(&mut b);
    a.handle_signal(&routed(b.poll_signal().unwrap(), "bob"), NOW); // ringing
    b.accept(
        &identity("bob", "bob"),
        [2; 32],
        vec![candidate(2000)],
        NOW,
        &mut blinding_rng(),
    );
    a.handle_signal(&routed(b.poll_signal().unwrap(), "bob"), NOW);
    let ka = connected_keys(&mut a);
    let kb = connected_keys(&mut b);
    (a, b, ka, kb)
}

fn bad_peer(setup: &mut CallSetup) -> HandshakeError {
    match events(setup).pop() {
        Some(CallEvent::Ended(EndReason::BadPeer(e))) => e,
        other => panic!("expected BadPeer, got {other:?}"),
    }
}

#[test]
fn an_answered_call_connects_both_sides_with_matching_keys() {
    let mut a = caller();
    let invite = routed(a.poll_signal().unwrap(), "alice");
    assert!(invite.mac.is_empty(), "setup signals carry no MAC");
    let mut b = incoming(&invite, "bob");
    let ev = events(&mut b);
    assert!(matches!(&ev[..], [CallEvent::Incoming { caller }] if caller.name == "alice"));
    let ringing = routed(b.poll_signal().unwrap(), "bob");
    a.handle_signal(&ringing, NOW);
    assert_eq!(events(&mut a), vec![CallEvent::Ringing]);

    b.accept(
        &identity("bob", "bob"),
        [2; 32],
        vec![candidate(2000)],
        NOW,
        &mut blinding_rng(),
    );
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
    assert_eq!(ka.signal, kb.signal);
    assert_eq!(ka.transcript, kb.transcript);
    assert_eq!(ca, vec![candidate(2000)]);
    assert_eq!(cb, vec![candidate(1000)]);

    // Hang-up from the callee (MACed) ends both.
    b.hangup();
    let hangup = routed(b.poll_signal().unwrap(), "bob");
    assert_eq!(hangup.mac.len(), 32);
    a.handle_signal(&hangup, NOW);
    assert_eq!(
        events(&mut a),
        vec![CallEvent::Ended(EndReason::HungUp { by_peer: true })]
    );
    assert_eq!(a.phase(), Phase::Ended);
    assert_eq!(a.ignored(), IgnoredSignals::default());
}

#[test]
fn reject_busy_and_no_answer_are_distinct_outcomes() {
    for (busy, expected) in [(false, EndReason::Rejected), (true, EndReason::Busy)] {
        let mut a = caller();
        let mut b = incoming(&routed(a.poll_signal().unwrap(), "alice"), "bob");
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
fn a_caller_can_cancel_before_the_answer_without_a_mac() {
    let mut a = caller();
    let mut b = incoming(&routed(a.poll_signal().unwrap(), "alice"), "bob");
    events(&mut b);
    a.hangup();
    let cancel = routed(a.poll_signal().unwrap(), "alice");
    assert!(cancel.mac.is_empty(), "no keys yet, no MAC");
    b.handle_signal(&cancel, NOW);
    assert_eq!(b.phase(), Phase::Ended);
}

/// The swapped-certificate attack of issue 13: mallory holds a certificate
/// for "mallory" on alice's public key (login proof of possession stops
/// that, but calls do not rely on it) and, on the signaling path, puts it
/// into alice's invite to bob so that bob would think he talks to mallory.
#[test]
fn an_invite_with_a_swapped_certificate_is_refused_by_the_callee() {
    let mallory_on_alices_key = identity("mallory", "alice");
    let carol = identity("carol", "bob"); // a valid certificate of another user
    for (swapped, from, want_wrong_name) in [
        // The share names caller "alice"; mallory's certificate does not.
        (&mallory_on_alices_key, "mallory", false),
        // The supernode stamps "alice", the certificate says "mallory".
        (&mallory_on_alices_key, "alice", true),
        (&carol, "carol", false),
        (&carol, "alice", true),
    ] {
        let mut invite = routed(caller().poll_signal().unwrap(), from);
        let Some(call_signal::Kind::Invite(body)) = &mut invite.kind else {
            panic!("not an invite");
        };
        body.share.as_mut().unwrap().certificate = Some(swapped.certificate.clone());
        let mut b = incoming(&invite, "bob");
        let err = bad_peer(&mut b);
        if want_wrong_name {
            assert!(
                matches!(
                    err,
                    HandshakeError::WrongName {
                        role: Role::Caller,
                        ..
                    }
                ),
                "{err:?}"
            );
        } else {
            assert_eq!(err, HandshakeError::UncertifiedKey);
        }
        let reject = b.poll_signal().unwrap();
        assert!(matches!(
            reject.kind,
            Some(call_signal::Kind::Reject(r)) if r.reason == RejectReason::BadKeyShare as i32
        ));
        assert_eq!(b.phase(), Phase::Ended);
    }
    // Control: the same certificate with a share that really names
    // "mallory" (what alice's key would have to sign) is accepted, so the
    // refusals above come from the names in the share.
    let mut m = caller_as(&mallory_on_alices_key, "mallory", "bob");
    let mut b = incoming(&routed(m.poll_signal().unwrap(), "mallory"), "bob");
    assert!(matches!(
        &events(&mut b)[..],
        [CallEvent::Incoming { caller }] if caller.name == "mallory"
    ));
}

#[test]
fn an_invite_meant_for_someone_else_is_refused() {
    // alice calls mallory; mallory passes the invite on to bob.
    let mut a = caller_as(&identity("alice", "alice"), "alice", "mallory");
    let invite = routed(a.poll_signal().unwrap(), "alice");
    let mut b = incoming(&invite, "bob");
    assert_eq!(bad_peer(&mut b), HandshakeError::UncertifiedKey);
}

#[test]
fn an_accept_with_a_swapped_certificate_is_refused_by_the_caller() {
    for (answering, stamped) in [
        // bob's share with a "mallory" certificate on bob's key.
        (identity("mallory", "bob"), "bob"),
        (identity("mallory", "bob"), "mallory"),
        // Another user's valid certificate.
        (identity("carol", "bob"), "bob"),
    ] {
        let mut a = caller();
        let mut b = incoming(&routed(a.poll_signal().unwrap(), "alice"), "bob");
        b.poll_signal();
        b.accept(
            &identity("bob", "bob"),
            [2; 32],
            vec![],
            NOW,
            &mut blinding_rng(),
        );
        let mut accept = routed(b.poll_signal().unwrap(), stamped);
        let Some(call_signal::Kind::Accept(body)) = &mut accept.kind else {
            panic!("not an accept");
        };
        body.share.as_mut().unwrap().certificate = Some(answering.certificate.clone());
        a.handle_signal(&accept, NOW);
        if stamped == "bob" {
            assert!(matches!(
                bad_peer(&mut a),
                HandshakeError::WrongName {
                    role: Role::Callee,
                    ..
                }
            ));
            let hangup = a.poll_signal().unwrap();
            assert!(matches!(
                hangup.kind,
                Some(call_signal::Kind::Hangup(h)) if h.reason == HangupReason::Error as i32
            ));
            assert_eq!(a.phase(), Phase::Ended);
        } else {
            // Not even from the dialled user: dropped, still ringing.
            assert_eq!(a.ignored().wrong_sender, 1);
            assert_ne!(a.phase(), Phase::Ended);
        }
    }
}

#[test]
fn an_accept_from_an_impostor_never_connects() {
    let mut a = caller();
    let invite = routed(a.poll_signal().unwrap(), "alice");
    // Carol answers in bob's place with her own valid certificate.
    let mut c = incoming(&invite, "bob");
    c.poll_signal();
    c.accept(
        &identity("carol", "bob"),
        [3; 32],
        vec![],
        NOW,
        &mut blinding_rng(),
    );
    let accept = routed(c.poll_signal().unwrap(), "bob");
    a.handle_signal(&accept, NOW);
    assert!(matches!(
        events(&mut a).as_slice(),
        [CallEvent::Ended(EndReason::BadPeer(_))]
    ));
    assert_eq!(a.phase(), Phase::Ended);
}

fn hangup_from(from: &str, to: &str) -> CallSignal {
    CallSignal {
        invite_id: INVITE.to_vec(),
        from: from.into(),
        to: to.into(),
        kind: Some(call_signal::Kind::Hangup(CallHangup {
            reason: HangupReason::Normal as i32,
        })),
        mac: Vec::new(),
    }
}

#[test]
fn forged_mid_call_signals_are_ignored_and_counted_and_the_call_goes_on() {
    let (mut a, mut b, ka, _) = connected_pair();
    // A genuine hangup from bob, to have a real MAC to misuse.
    let mut genuine = {
        let (_, mut b2, _, _) = connected_pair();
        b2.hangup();
        routed(b2.poll_signal().unwrap(), "bob")
    };
    assert!(ka.signal.verify(&genuine));

    // From another user (the supernode stamps the attacker's name), even
    // with bob's MAC copied over.
    let mut from_mallory = genuine.clone();
    from_mallory.from = "mallory".into();
    a.handle_signal(&from_mallory, NOW);
    a.handle_signal(&hangup_from("mallory", "alice"), NOW);
    // From bob's name: no MAC, garbage MAC, another call's MAC, tampered body.
    a.handle_signal(&hangup_from("bob", "alice"), NOW);
    let mut garbage = hangup_from("bob", "alice");
    garbage.mac = vec![0xaa; 32];
    a.handle_signal(&garbage, NOW);
    let other_call = natter_proto::handshake::SignalKey([7; 32]);
    let mut wrong_key = hangup_from("bob", "alice");
    other_call.seal(&mut wrong_key);
    a.handle_signal(&wrong_key, NOW);
    let mut tampered = genuine.clone();
    tampered.kind = Some(call_signal::Kind::Hangup(CallHangup {
        reason: HangupReason::MediaTimeout as i32,
    }));
    a.handle_signal(&tampered, NOW);
    // A reflected signal: alice's own hangup sent back with from = bob.
    let mut reflected = {
        let (mut a2, _, _, _) = connected_pair();
        a2.hangup();
        a2.poll_signal().unwrap()
    };
    reflected.from = "bob".into();
    a.handle_signal(&reflected, NOW);
    // Candidate updates: unMACed, and a forged "reject" after the answer.
    let unmacked_candidates = CallSignal {
        kind: Some(call_signal::Kind::Candidates(CandidateUpdate {
            candidates: vec![candidate(6666)],
            end_of_candidates: true,
        })),
        ..hangup_from("bob", "alice")
    };
    a.handle_signal(&unmacked_candidates, NOW);
    let reject = CallSignal {
        kind: Some(call_signal::Kind::Reject(Default::default())),
        ..hangup_from("bob", "alice")
    };
    a.handle_signal(&reject, NOW);

    assert_eq!(a.phase(), Phase::Connected, "the call goes on");
    assert!(events(&mut a).is_empty(), "nothing reached the shell");
    assert_eq!(
        a.ignored(),
        IgnoredSignals {
            wrong_sender: 2,
            bad_mac: 6,
            out_of_place: 1,
        }
    );
    assert_eq!(a.ignored().total(), 9);

    // Genuine signals still work: a candidate update, then the hangup.
    b.trickle(vec![candidate(2001)], true);
    let update = routed(b.poll_signal().unwrap(), "bob");
    assert_eq!(update.mac.len(), 32);
    a.handle_signal(&update, NOW);
    assert_eq!(
        events(&mut a),
        vec![CallEvent::Candidates(vec![candidate(2001)])]
    );
    b.hangup();
    genuine = routed(b.poll_signal().unwrap(), "bob");
    a.handle_signal(&genuine, NOW);
    assert_eq!(
        events(&mut a),
        vec![CallEvent::Ended(EndReason::HungUp { by_peer: true })]
    );
    assert_eq!(a.ignored().total(), 9);
}

#[test]
fn the_callee_also_drops_forged_hangups_after_the_answer() {
    let (mut a, mut b, _, _) = connected_pair();
    b.handle_signal(&hangup_from("alice", "bob"), NOW);
    b.handle_signal(&hangup_from("mallory", "bob"), NOW);
    assert_eq!(b.phase(), Phase::Connected);
    assert_eq!(b.ignored().bad_mac, 1);
    assert_eq!(b.ignored().wrong_sender, 1);
    a.hangup();
    b.handle_signal(&routed(a.poll_signal().unwrap(), "alice"), NOW);
    assert_eq!(b.phase(), Phase::Ended);
}

#[test]
fn candidates_trickled_before_the_answer_are_held_and_sent_maced() {
    let mut a = caller();
    let invite = routed(a.poll_signal().unwrap(), "alice");
    a.trickle(vec![candidate(1001)], true);
    assert!(a.poll_signal().is_none(), "held until the keys exist");
    let mut b = incoming(&invite, "bob");
    b.poll_signal();
    b.accept(
        &identity("bob", "bob"),
        [2; 32],
        vec![],
        NOW,
        &mut blinding_rng(),
    );
    let accept = routed(b.poll_signal().unwrap(), "bob");
    // bob's first MACed update overtakes his accept: kept, then checked.
    b.trickle(vec![candidate(2002)], false);
    let early = routed(b.poll_signal().unwrap(), "bob");
    a.handle_signal(&early, NOW);
    assert!(events(&mut a).is_empty());
    a.handle_signal(&accept, NOW);
    let ev = events(&mut a);
    assert!(matches!(ev[0], CallEvent::Connected { .. }), "{ev:?}");
    assert_eq!(ev[1], CallEvent::Candidates(vec![candidate(2002)]));
    let held = routed(a.poll_signal().unwrap(), "alice");
    assert_eq!(held.mac.len(), 32);
    events(&mut b);
    b.handle_signal(&held, NOW);
    assert_eq!(
        events(&mut b),
        vec![CallEvent::Candidates(vec![candidate(1001)])]
    );
    assert_eq!(a.ignored().total() + b.ignored().total(), 0);
}

#[test]
fn hold_and_resume_reach_the_peer_maced_and_a_forged_hold_does_not() {
    let (mut a, mut b, _, _) = connected_pair();
    assert!(!b.peer_held());
    a.hold(true);
    let hold = routed(a.poll_signal().unwrap(), "alice");
    assert!(matches!(
        hold.kind,
        Some(call_signal::Kind::Hold(CallHold { on: true }))
    ));
    assert_eq!(hold.mac.len(), 32, "a mid-call signal: MACed");
    b.handle_signal(&hold, NOW);
    assert_eq!(events(&mut b), vec![CallEvent::PeerHold(true)]);
    assert!(b.peer_held());
    // the same state again changes nothing
    b.handle_signal(&hold, NOW);
    assert!(events(&mut b).is_empty());
    // a forged resume (no MAC, or the peer's MAC on another body) is dropped
    let forged = CallSignal {
        kind: Some(call_signal::Kind::Hold(CallHold { on: false })),
        ..hangup_from("alice", "bob")
    };
    b.handle_signal(&forged, NOW);
    let mut tampered = hold.clone();
    tampered.kind = Some(call_signal::Kind::Hold(CallHold { on: false }));
    b.handle_signal(&tampered, NOW);
    assert!(b.peer_held(), "still held");
    assert_eq!(b.ignored().bad_mac, 2);
    a.hold(false);
    b.handle_signal(&routed(a.poll_signal().unwrap(), "alice"), NOW);
    assert_eq!(events(&mut b), vec![CallEvent::PeerHold(false)]);
    assert!(!b.peer_held());
    assert_eq!(b.phase(), Phase::Connected);
    // An older peer decodes a hold with a `kind` it does not know as no
    // kind at all (protobuf skips unknown fields): it ignores the signal
    // and the call goes on.
    a.hold(true);
    let mut unknown = routed(a.poll_signal().unwrap(), "alice");
    unknown.kind = None;
    b.handle_signal(&unknown, NOW);
    assert!(events(&mut b).is_empty());
    assert_eq!(b.phase(), Phase::Connected);
    assert!(!b.peer_held());
}

#[test]
fn conference_messages_ride_the_call_maced_and_forged_ones_are_dropped() {
    use natter_proto::conference::{self, Message};
    let invite = conference::encode(
        &[0xc0; 16],
        &Message::Invite {
            participants: vec!["alice".into(), "bob".into(), "carol".into()],
        },
    );
    // Not before the call is connected.
    let mut early = caller();
    early.poll_signal(); // the invite
    early.send_conference(invite.clone());
    assert!(early.poll_signal().is_none());

    let (mut a, mut b, _, _) = connected_pair();
    a.send_conference(invite.clone());
    let sent = routed(a.poll_signal().unwrap(), "alice");
    assert_eq!(sent.mac.len(), 32, "a mid-call signal: MACed");
    b.handle_signal(&sent, NOW);
    assert_eq!(events(&mut b), vec![CallEvent::Conference(invite.clone())]);
    // Without the MAC, with another body, or from someone else: dropped.
    let mut unmaced = sent.clone();
    unmaced.mac.clear();
    b.handle_signal(&unmaced, NOW);
    let mut tampered = sent.clone();
    if let Some(call_signal::Kind::Conference(c)) = &mut tampered.kind {
        c.conference_id = vec![0xee; 16];
    }
    b.handle_signal(&tampered, NOW);
    b.handle_signal(&routed(sent.clone(), "mallory"), NOW);
    assert!(events(&mut b).is_empty());
    assert_eq!(b.ignored().bad_mac, 2);
    assert_eq!(b.ignored().wrong_sender, 1);
    assert_eq!(b.phase(), Phase::Connected);
}

#[test]
fn hold_before_the_call_connected_sends_nothing() {
    let mut a = caller();
    a.poll_signal(); // the invite
    a.hold(true);
    assert!(a.poll_signal().is_none());
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

#[test]
fn a_busy_from_someone_else_does_not_end_the_setup() {
    let mut a = caller();
    a.poll_signal();
    let busy = CallSignal {
        invite_id: INVITE.to_vec(),
        from: "mallory".into(),
        to: "alice".into(),
        kind: Some(call_signal::Kind::Busy(Default::default())),
        ..Default::default()
    };
    a.handle_signal(&busy, NOW);
    assert_eq!(a.phase(), Phase::Inviting);
    assert_eq!(a.ignored().wrong_sender, 1);
}

/// Counts the bytes drawn from a seeded generator.
struct CountingRng {
    inner: rand_chacha::ChaCha20Rng,
    drawn: usize,
}

impl RngCore for CountingRng {
    fn next_u32(&mut self) -> u32 {
        self.drawn += 4;
        self.inner.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.drawn += 8;
        self.inner.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.drawn += dest.len();
        self.inner.fill_bytes(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for CountingRng {}

#[test]
fn the_callee_signs_its_share_blinded_with_fresh_randomness_per_call() {
    let mut drawn = Vec::new();
    for _ in 0..2 {
        let mut a = caller();
        let mut b = incoming(&routed(a.poll_signal().unwrap(), "alice"), "bob");
        b.poll_signal();
        let mut rng = CountingRng {
            inner: blinding_rng(),
            drawn: 0,
        };
        b.accept(&identity("bob", "bob"), [2; 32], vec![], NOW, &mut rng);
        assert!(matches!(b.phase(), Phase::Connected));
        drawn.push(rng.drawn);
    }
    // RSA-2048 blinding draws at least a modulus-sized random value.
    assert!(drawn.iter().all(|&n| n >= 256), "{drawn:?}");
}
