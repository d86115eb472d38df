//! Certificates, the call key agreement and sealed datagrams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DAY, NOW, blinding_rng, identity, issuer, key};
use natter_proto::cert::{self, CertError};
use natter_proto::handshake::{
    CallNames, HandshakeError, KeyAgreement, KeySchedule, Role, transcript_hash,
};
use natter_proto::media::{OpenError, Opener, Sealer};
use natter_proto::messages::CertificateBody;
use natter_proto::replay::{ReplayError, WINDOW};
use natter_proto::som::Function;
use proptest::prelude::*;
use prost::Message;

const INVITE: [u8; 16] = [0x11; 16];

fn agree() -> (
    natter_proto::handshake::CallKeys,
    natter_proto::handshake::CallKeys,
) {
    let alice = identity("alice", "alice");
    let bob = identity("bob", "bob");
    let login_key = issuer().public_key();
    let caller = KeyAgreement::new(Role::Caller, INVITE, names(), [1; 32]);
    let callee = KeyAgreement::new(Role::Callee, INVITE, names(), [2; 32]);
    let invite_share = caller.share(&alice, &mut blinding_rng());
    let accept_share = callee.share(&bob, &mut blinding_rng());
    let at_callee = callee
        .complete(&bob.certificate, &invite_share, &login_key, NOW)
        .unwrap();
    let at_caller = caller
        .complete(&alice.certificate, &accept_share, &login_key, NOW)
        .unwrap();
    (at_caller, at_callee)
}

/// alice calls bob.
fn names() -> CallNames {
    CallNames::new("alice", "bob")
}

fn alice_share() -> natter_proto::messages::KeyShare {
    KeyAgreement::new(Role::Caller, INVITE, names(), [1; 32])
        .share(&identity("alice", "alice"), &mut blinding_rng())
}

/// bob's side of the call, completing with `share`.
fn at_bob(
    invite: [u8; 16],
    names: CallNames,
    share: &natter_proto::messages::KeyShare,
    now: i64,
) -> Result<natter_proto::handshake::CallKeys, HandshakeError> {
    KeyAgreement::new(Role::Callee, invite, names, [2; 32]).complete(
        &identity("bob", "bob").certificate,
        share,
        &issuer().public_key(),
        now,
    )
}

#[test]
fn certificates_verify_offline_against_the_pinned_key() {
    let alice = identity("alice", "alice");
    let verified = cert::verify(&alice.certificate, &issuer().public_key(), NOW).unwrap();
    assert_eq!(verified.name, "alice");
    assert_eq!(verified.public_key, key("alice").to_public_key());
    assert_eq!(verified.serial, 7);
}

#[test]
fn expired_early_forged_and_foreign_certificates_get_distinct_errors() {
    let alice = identity("alice", "alice");
    let login_key = issuer().public_key();
    assert!(matches!(
        cert::verify(&alice.certificate, &login_key, NOW + DAY),
        Err(CertError::Expired { .. })
    ));
    assert!(matches!(
        cert::verify(&alice.certificate, &login_key, NOW - 3600),
        Err(CertError::NotYetValid { .. })
    ));
    // Forged: change the name in the signed body.
    let mut forged = alice.certificate.clone();
    let mut body = CertificateBody::decode(forged.body.as_slice()).unwrap();
    body.name = "mallory".into();
    forged.body = body.encode_to_vec();
    assert_eq!(
        cert::verify(&forged, &login_key, NOW),
        Err(CertError::BadSignature)
    );
    // Foreign: a real certificate from another login server.
    let other = natter_proto::cert::Issuer::new(key("bob"));
    let foreign = other.issue(
        &mut common::blinding_rng(),
        &natter_proto::cert::Subject::User {
            name: "alice",
            key: &key("alice").to_public_key(),
            chat_key: common::TEST_CHAT_KEY,
        },
        1,
        NOW - 1,
        NOW + 60,
    );
    assert_eq!(
        cert::verify(&foreign, &login_key, NOW),
        Err(CertError::WrongIssuer)
    );
}

#[test]
fn both_sides_derive_the_same_keys() {
    let (caller, callee) = agree();
    assert_eq!(caller.call_id, callee.call_id);
    assert_eq!(caller.send, callee.recv);
    assert_eq!(caller.recv, callee.send);
    assert_ne!(caller.send, caller.recv, "directions must differ");
    assert_eq!(caller.peer.name, "bob");
    assert_eq!(callee.peer.name, "alice");
}

#[test]
fn a_share_signed_by_an_uncertified_key_is_refused() {
    // Mallory presents Alice's certificate but signs with her own key.
    let mut impostor = identity("alice", "alice");
    impostor.key = key("bob");
    let share = KeyAgreement::new(Role::Caller, INVITE, names(), [1; 32])
        .share(&impostor, &mut blinding_rng());
    assert_eq!(
        at_bob(INVITE, names(), &share, NOW),
        Err(HandshakeError::UncertifiedKey)
    );
}

#[test]
fn a_share_is_bound_to_its_call_role_and_names() {
    let alice = identity("alice", "alice");
    let login_key = issuer().public_key();
    let share = alice_share();
    // Replayed into another call.
    assert_eq!(
        at_bob([0x22; 16], names(), &share, NOW),
        Err(HandshakeError::UncertifiedKey)
    );
    // Reflected back at the caller as if it came from a callee (alice
    // calling alice would need the callee's certificate to name her).
    let caller = KeyAgreement::new(
        Role::Caller,
        INVITE,
        CallNames::new("bob", "alice"),
        [3; 32],
    );
    assert_eq!(
        caller.complete(&identity("bob", "bob").certificate, &share, &login_key, NOW),
        Err(HandshakeError::UncertifiedKey)
    );
    // Made for a call to mallory, presented to bob.
    let for_mallory = KeyAgreement::new(
        Role::Caller,
        INVITE,
        CallNames::new("alice", "mallory"),
        [1; 32],
    )
    .share(&alice, &mut blinding_rng());
    assert_eq!(
        at_bob(INVITE, names(), &for_mallory, NOW),
        Err(HandshakeError::UncertifiedKey)
    );
    // The names are compared normalised.
    assert!(at_bob(INVITE, CallNames::new("Alice", "BOB"), &share, NOW).is_ok());
}

#[test]
fn a_swapped_certificate_on_the_same_key_does_not_verify() {
    // mallory holds a certificate for her name on alice's key and swaps it
    // into alice's share: the share names caller "alice", so a callee told
    // the call comes from mallory refuses it, and one told it comes from
    // alice refuses the certificate's name.
    let mut swapped = alice_share();
    swapped.certificate = Some(identity("mallory", "alice").certificate);
    assert_eq!(
        at_bob(INVITE, CallNames::new("mallory", "bob"), &swapped, NOW),
        Err(HandshakeError::UncertifiedKey)
    );
    assert_eq!(
        at_bob(INVITE, names(), &swapped, NOW),
        Err(HandshakeError::WrongName {
            role: Role::Caller,
            expected: "alice".into(),
            got: "mallory".into(),
        })
    );
    // Control: alice's own certificate verifies.
    assert_eq!(
        at_bob(INVITE, names(), &alice_share(), NOW)
            .unwrap()
            .peer
            .name,
        "alice"
    );
}

#[test]
fn the_transcript_and_keys_change_with_any_name_or_certificate() {
    let alice = identity("alice", "alice").certificate;
    let bob = identity("bob", "bob").certificate;
    let mallory = identity("mallory", "alice").certificate;
    let (p1, p2) = ([1u8; 32], [2u8; 32]);
    let base = transcript_hash(&p1, &p2, &alice, &bob, &names());
    let variants = [
        transcript_hash(&p1, &p2, &mallory, &bob, &names()),
        transcript_hash(&p1, &p2, &alice, &mallory, &names()),
        transcript_hash(&p1, &p2, &bob, &alice, &names()),
        transcript_hash(&p1, &p2, &alice, &bob, &CallNames::new("mallory", "bob")),
        transcript_hash(&p1, &p2, &alice, &bob, &CallNames::new("alice", "carol")),
        transcript_hash(&p1, &p2, &alice, &bob, &CallNames::new("bob", "alice")),
        // Length prefixes: moving a character across the boundary differs.
        transcript_hash(&p1, &p2, &alice, &bob, &CallNames::new("alice.b", "ob")),
        transcript_hash(&p2, &p1, &alice, &bob, &names()),
    ];
    for (i, v) in variants.iter().enumerate() {
        assert_ne!(&base, v, "variant {i}");
    }
    let keys = KeySchedule::derive(&INVITE, &[9; 32], &base);
    for v in &variants {
        let other = KeySchedule::derive(&INVITE, &[9; 32], v);
        assert_ne!(keys.c2s, other.c2s);
        assert_ne!(keys.signal, other.signal);
    }
    // Both ends of a real agreement hash the same transcript.
    let (caller, callee) = agree();
    assert_eq!(caller.transcript, callee.transcript);
    assert_eq!(caller.signal, callee.signal);
}

#[test]
fn shares_with_bad_certificates_or_points_are_refused() {
    let login_key = issuer().public_key();
    let _ = login_key;
    let alice = identity("alice", "alice");
    let share = alice_share();
    assert!(matches!(
        at_bob(INVITE, names(), &share, NOW + 2 * DAY),
        Err(HandshakeError::Certificate(CertError::Expired { .. }))
    ));
    let mut no_cert = share.clone();
    no_cert.certificate = None;
    assert_eq!(
        at_bob(INVITE, names(), &no_cert, NOW),
        Err(HandshakeError::MissingCertificate)
    );
    let mut short = share.clone();
    short.public.truncate(31);
    assert_eq!(
        at_bob(INVITE, names(), &short, NOW),
        Err(HandshakeError::ShareLength(31))
    );
    // A correctly signed low-order point (all zeros) is still refused.
    let signed =
        natter_proto::handshake::share_signed_message(Role::Caller, &INVITE, &[0; 32], &names());
    let mut zero = share.clone();
    zero.public = vec![0; 32];
    zero.signature = alice.sign(&signed);
    assert_eq!(
        at_bob(INVITE, names(), &zero, NOW),
        Err(HandshakeError::LowOrderShare)
    );
}

fn pair() -> (Sealer, Opener) {
    let (caller, callee) = agree();
    (Sealer::new(&caller.send, 65_530), Opener::new(&callee.recv))
}

#[test]
fn sealed_frames_open_across_the_rollover() {
    let (mut sealer, mut opener) = pair();
    let mut out = Vec::new();
    for i in 0..40u32 {
        let mut datagram = Vec::new();
        let payload = i.to_be_bytes();
        let index = sealer
            .seal(Function::Data, i as u8, &payload, &mut datagram)
            .unwrap();
        assert_eq!(
            datagram.len(),
            payload.len() + natter_proto::media::OVERHEAD
        );
        let opened = opener.open(&datagram, &mut out).unwrap();
        assert_eq!(opened.index, index);
        assert_eq!(opened.index, 65_530 + u64::from(i));
        assert_eq!(opened.header.function, Function::Data);
        assert_eq!(out, payload);
    }
}

#[test]
fn the_first_datagram_to_arrive_may_come_after_the_rollover() {
    let (mut sealer, mut opener) = pair(); // starts at 65 530
    let mut datagram = Vec::new();
    for _ in 0..10 {
        datagram.clear();
        sealer
            .seal(Function::Data, 0, b"lost", &mut datagram)
            .unwrap();
    }
    datagram.clear();
    sealer
        .seal(Function::Data, 0, b"first heard", &mut datagram)
        .unwrap();
    let mut out = Vec::new();
    let opened = opener.open(&datagram, &mut out).unwrap();
    assert_eq!(opened.index, 65_540);
    assert_eq!(out, b"first heard");
}

#[test]
fn tampering_replay_and_stale_indices_are_rejected_distinctly() {
    let (mut sealer, mut opener) = pair();
    let mut out = Vec::new();
    let mut first = Vec::new();
    sealer
        .seal(Function::Data, 0, b"hello", &mut first)
        .unwrap();

    // Tampered body, tampered header (function byte is authenticated too).
    for at in [first.len() - 1, 4, 2] {
        let mut bad = first.clone();
        bad[at] ^= 0x40;
        assert!(matches!(
            opener.open(&bad, &mut out),
            Err(OpenError::Auth | OpenError::Som(_))
        ));
    }
    opener.open(&first, &mut out).unwrap();
    assert_eq!(
        opener.open(&first, &mut out),
        Err(OpenError::Replay(ReplayError::Replayed { index: 65_530 }))
    );
    // Move the window more than WINDOW ahead; the first index is now too old.
    let mut last = Vec::new();
    for _ in 0..WINDOW + 1 {
        last.clear();
        sealer.seal(Function::Ping, 0, b"", &mut last).unwrap();
    }
    opener.open(&last, &mut out).unwrap();
    assert!(matches!(
        opener.open(&first, &mut out),
        Err(OpenError::Replay(ReplayError::TooOld { .. }))
    ));
}

#[test]
fn a_wrong_key_fails_authentication_and_does_not_move_the_window() {
    let (caller, callee) = agree();
    let mut sealer = Sealer::new(&caller.send, 100);
    // The caller's own receive keys are the wrong direction.
    let mut wrong = Opener::new(&caller.recv);
    let mut right = Opener::new(&callee.recv);
    let mut datagram = Vec::new();
    sealer
        .seal(Function::Data, 3, b"voice", &mut datagram)
        .unwrap();
    let mut out = Vec::new();
    assert_eq!(wrong.open(&datagram, &mut out), Err(OpenError::Auth));
    assert!(out.is_empty());
    assert_eq!(wrong.window().highest(), None);
    assert_eq!(right.open(&datagram, &mut out).unwrap().index, 100);
    assert_eq!(out, b"voice");
}

/// `open_at` (for capture tools) opens a datagram only at the index it was
/// sealed at, as often as asked, and never touches the replay window.
#[test]
fn open_at_opens_only_at_the_sealed_index_and_leaves_the_window_alone() {
    let (mut sealer, opener) = pair();
    let mut datagram = Vec::new();
    let index = sealer
        .seal(Function::Probe, 2, b"12345678", &mut datagram)
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..2 {
        let header = opener.open_at(&datagram, index, &mut out).unwrap();
        assert_eq!(header.function, Function::Probe);
        assert_eq!(out, b"12345678");
    }
    for wrong in [index + 1, index + (1 << 16), index - 1] {
        assert_eq!(
            opener.open_at(&datagram, wrong, &mut out),
            Err(OpenError::Auth)
        );
        assert!(out.is_empty());
    }
    assert_eq!(opener.window().highest(), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_datagrams_never_panic_and_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (_, mut opener) = pair();
        let mut out = Vec::new();
        prop_assert!(opener.open(&bytes, &mut out).is_err());
    }

    #[test]
    fn arbitrary_certificates_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400), sig in proptest::collection::vec(any::<u8>(), 0..300)) {
        let certificate = natter_proto::messages::Certificate { body, signature: sig };
        prop_assert!(cert::verify(&certificate, &issuer().public_key(), NOW).is_err());
    }
}
