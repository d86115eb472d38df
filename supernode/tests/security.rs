//! Admission and abuse: bad certificates, wrong keys, requests before
//! joining, forged senders, malformed frames, flooding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    JoinOutcome, TestClient, cluster, connect, error_code, identity, issuer, now_secs, try_join,
    user_key,
};
use natter_net::ControlConn;
use natter_proto::cert::Issuer;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    CallBusy, CallSignal, ChatMessage, Envelope, ErrorCode, Ping, SearchRequest, call_signal,
};
use natter_supernode::close;

fn refused(outcome: JoinOutcome) -> (ErrorCode, String, ControlConn) {
    match outcome {
        JoinOutcome::Refused(e, conn) => (ErrorCode::try_from(e.code).unwrap(), e.detail, conn),
        JoinOutcome::Joined(c) => panic!("{} was admitted", c.name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_and_proofs_are_refused() {
    let sns = cluster(1, |_| {}).await;
    let addr = sns[0].local_addr();
    let now = now_secs();
    let alice_key = user_key("alice");

    // Issued by another "login server" (alice's own key).
    let rogue = Issuer::new(user_key("dave").clone());
    let forged = rogue.issue(
        &mut rand::rngs::OsRng,
        &natter_proto::cert::Subject::User {
            name: "alice",
            key: &alice_key.to_public_key(),
            chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
        },
        9,
        now - 60,
        now + 3600,
    );
    let (code, detail, conn) = refused(try_join(addr, "alice", forged, alice_key).await.unwrap());
    assert_eq!(code, ErrorCode::CertificateRejected);
    assert!(detail.contains("another login server"), "{detail}");
    assert_eq!(
        TestClient::closed_code(&conn).await,
        Some(close::REFUSED.into())
    );

    // A genuine certificate whose body was altered (the name changed).
    let mut altered = identity("alice").certificate;
    let at = altered.body.windows(5).position(|w| w == b"alice").unwrap();
    altered.body[at..at + 5].copy_from_slice(b"bobby");
    let (code, detail, _) = refused(try_join(addr, "bobby", altered, alice_key).await.unwrap());
    assert_eq!(code, ErrorCode::CertificateRejected);
    assert!(detail.contains("forged"), "{detail}");

    // Expired.
    let expired = issuer().issue(
        &mut rand::rngs::OsRng,
        &natter_proto::cert::Subject::User {
            name: "alice",
            key: &alice_key.to_public_key(),
            chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
        },
        2,
        now - 7200,
        now - 3600,
    );
    let (code, detail, _) = refused(try_join(addr, "alice", expired, alice_key).await.unwrap());
    assert_eq!(code, ErrorCode::CertificateRejected);
    assert!(detail.contains("expired"), "{detail}");

    // A valid certificate, but the challenge is signed with another key.
    let bob = identity("bob");
    let (code, _, conn) = refused(
        try_join(addr, "bob", bob.certificate, alice_key)
            .await
            .unwrap(),
    );
    assert_eq!(code, ErrorCode::ChallengeFailed);
    assert_eq!(
        TestClient::closed_code(&conn).await,
        Some(close::REFUSED.into())
    );
    assert_eq!(sns[0].session_count(), 0);

    // Requests before joining.
    let (_endpoint, conn, mut send, mut recv) = connect(addr).await.unwrap();
    let conn = ControlConn::Quic(conn);
    send.send(&Envelope::new(
        5,
        Body::SearchRequest(SearchRequest { name: "bob".into() }),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(common::WAIT, recv.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.request_id, 5);
    assert_eq!(
        error_code(reply.body.as_ref().unwrap()),
        Some(ErrorCode::NotJoined)
    );
    assert_eq!(
        TestClient::closed_code(&conn).await,
        Some(close::REFUSED.into())
    );

    // And the genuine user still gets in.
    let alice = TestClient::join(addr, "alice").await;
    assert_eq!(sns[0].session_count(), 1);
    drop(alice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_can_send_as_another_user() {
    let sns = cluster(2, |_| {}).await;
    let mut alice = TestClient::join(sns[0].local_addr(), "alice").await;
    let mut bob = TestClient::join(sns[1].local_addr(), "bob").await;
    alice.search_until("bob", |r| r.found).await;

    alice
        .ack(Body::ChatMessage(ChatMessage {
            message_id: vec![7; 16],
            from: "carol".into(),
            to: "bob".into(),
            sealed: common::sealed(b"it's carol, honest"),
            sent_at: 1,
            ..Default::default()
        }))
        .await;
    let from = bob
        .expect_push("chat", |b| match b {
            Body::ChatMessage(m) => Some(m.from.clone()),
            _ => None,
        })
        .await;
    assert_eq!(from, "alice");

    alice
        .ack(Body::CallSignal(CallSignal {
            invite_id: vec![1; 16],
            from: "carol".into(),
            to: "bob".into(),
            kind: Some(call_signal::Kind::Busy(CallBusy {})),
            ..Default::default()
        }))
        .await;
    let from = bob
        .expect_push("signal", |b| match b {
            Body::CallSignal(s) => Some(s.from.clone()),
            _ => None,
        })
        .await;
    assert_eq!(from, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_only_that_connection() {
    let sns = cluster(1, |_| {}).await;
    let addr = sns[0].local_addr();
    let mut alice = TestClient::join(addr, "alice").await;
    let mut bob = TestClient::join(addr, "bob").await;

    // An oversized length prefix.
    alice
        .quic_send()
        .write_all(&[0xff, 0xff, 0xff, 0xff, 0])
        .await
        .unwrap();
    assert_eq!(
        TestClient::closed_code(&alice.conn).await,
        Some(close::MALFORMED.into())
    );

    // Garbage that is not a protobuf envelope, from a fresh connection.
    let (_endpoint, conn, mut send, _recv) = connect(addr).await.unwrap();
    let conn = ControlConn::Quic(conn);
    send.get_mut()
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(
        TestClient::closed_code(&conn).await,
        Some(close::MALFORMED.into())
    );

    // Bob is unaffected.
    match bob.request(Body::Ping(Ping { nonce: 42 })).await {
        Body::Pong(p) => assert_eq!(p.nonce, 42),
        other => panic!("expected Pong, got {other:?}"),
    }
    assert_eq!(sns[0].session_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_is_rate_limited_then_disconnected() {
    let sns = cluster(1, |_| {}).await;
    let mut alice = TestClient::join(sns[0].local_addr(), "alice").await;
    // The burst (about 100 requests) is served in full.
    for i in 0..100u64 {
        alice
            .send
            .send(&Envelope::new(i + 10, Body::Ping(Ping { nonce: i })))
            .await
            .unwrap();
    }
    let mut pongs = 0;
    while pongs < 100 {
        match tokio::time::timeout(Duration::from_secs(3), alice.recv.next()).await {
            Ok(Ok(Some(envelope))) => match envelope.body {
                Some(Body::Pong(_)) => pongs += 1,
                other => panic!("within the burst, expected Pong, got {other:?}"),
            },
            other => panic!("burst not served: {pongs} pongs, then {other:?}"),
        }
    }
    // Past it, the flood is refused and the session closed. The supernode
    // may close while the flood is still being written (a write then fails:
    // that ends the flood) and before the refusals it queued were sent, so
    // only an upper bound on what is served holds.
    for i in 100..400u64 {
        let ping = Envelope::new(i + 10, Body::Ping(Ping { nonce: i }));
        if alice.send.send(&ping).await.is_err() {
            break;
        }
    }
    let mut served = 0;
    let mut limited = 0;
    while let Ok(Ok(Some(envelope))) =
        tokio::time::timeout(Duration::from_secs(3), alice.recv.next()).await
    {
        match envelope.body {
            Some(Body::Pong(_)) => served += 1,
            Some(Body::Error(e)) if e.code == ErrorCode::RateLimited as i32 => {
                assert!(e.retry_after_ms > 0);
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(
        served <= 10,
        "the flood past the burst was served: {served} pongs"
    );
    assert_eq!(
        TestClient::closed_code(&alice.conn).await,
        Some(close::RATE_LIMITED.into()),
        "closed after {limited} refusals"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sns[0].session_count() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "session kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
