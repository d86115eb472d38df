//! Call signaling routed through the overlay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestClient, cluster, error_code};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    CallAccept, CallHangup, CallInvite, CallRinging, CallSignal, ErrorCode, HangupReason, Leave,
    PresenceStatus, call_signal::Kind,
};

fn signal(invite: u8, to: &str, kind: Kind) -> Body {
    Body::CallSignal(CallSignal {
        invite_id: vec![invite; 16],
        from: String::new(),
        to: to.into(),
        kind: Some(kind),
        ..Default::default()
    })
}

fn invite() -> Kind {
    Kind::Invite(CallInvite::default())
}

fn received(invite: u8) -> impl FnMut(&Body) -> Option<CallSignal> {
    move |b| match b {
        Body::CallSignal(s) if s.invite_id == vec![invite; 16] => Some(s.clone()),
        _ => None,
    }
}

fn is_hangup(b: &Body) -> bool {
    matches!(
        b,
        Body::CallSignal(CallSignal {
            kind: Some(Kind::Hangup(_)),
            ..
        })
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_routed_across_supernodes() {
    let sns = cluster(3, |c| c.no_answer_timeout = Duration::from_secs(1)).await;
    let mut alice = TestClient::join(sns[0].local_addr(), "alice").await;
    let mut bob = TestClient::join(sns[2].local_addr(), "bob").await;
    alice.search_until("bob", |r| r.found).await;
    bob.search_until("alice", |r| r.found).await;

    // Invite, ringing and accept, each routed by `to`.
    alice.ack(signal(1, "bob", invite())).await;
    let got = bob.expect_push("invite", received(1)).await;
    assert_eq!((got.from.as_str(), got.to.as_str()), ("alice", "bob"));
    assert!(matches!(got.kind, Some(Kind::Invite(_))));
    bob.ack(signal(1, "alice", Kind::Ringing(CallRinging {})))
        .await;
    let ringing = alice.expect_push("ringing", received(1)).await;
    assert!(matches!(ringing.kind, Some(Kind::Ringing(_))));
    bob.ack(signal(1, "alice", Kind::Accept(CallAccept::default())))
        .await;
    let accepted = alice.expect_push("accept", received(1)).await;
    assert_eq!(accepted.from, "bob");
    assert!(matches!(accepted.kind, Some(Kind::Accept(_))));
    // Answered: the 1 s no-answer timer does not fire.
    alice
        .expect_no_push(Duration::from_millis(1500), is_hangup)
        .await;
    bob.expect_no_push(Duration::from_millis(10), is_hangup)
        .await;

    // An invite nobody answers is hung up on both sides.
    alice.ack(signal(2, "bob", invite())).await;
    bob.expect_push("second invite", received(2)).await;
    let to_caller = alice.expect_push("no-answer hangup", received(2)).await;
    let to_callee = bob.expect_push("no-answer hangup", received(2)).await;
    for (s, from, to) in [(&to_caller, "bob", "alice"), (&to_callee, "alice", "bob")] {
        assert_eq!((s.from.as_str(), s.to.as_str()), (from, to));
        assert_eq!(
            s.kind,
            Some(Kind::Hangup(CallHangup {
                reason: HangupReason::NoAnswer as i32
            }))
        );
    }

    // Unknown and offline callees get distinct errors.
    let mut carol = TestClient::join(sns[1].local_addr(), "carol").await;
    carol.ack(Body::Leave(Leave {})).await;
    alice
        .search_until("carol", |r| {
            r.found && r.status == PresenceStatus::Offline as i32
        })
        .await;
    let offline = alice.request(signal(3, "carol", invite())).await;
    assert_eq!(error_code(&offline), Some(ErrorCode::UserOffline));
    let unknown = alice.request(signal(4, "nobody", invite())).await;
    assert_eq!(error_code(&unknown), Some(ErrorCode::UserUnknown));
    // Refused invites start no timer.
    alice
        .expect_no_push(Duration::from_millis(1300), is_hangup)
        .await;
    for sn in sns {
        sn.shutdown().await;
    }
}
