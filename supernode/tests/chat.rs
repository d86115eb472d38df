//! Stored chat against real supernodes (`Supernode::spawn` on loopback,
//! clients speaking the wire protocol): messages of the largest size to an
//! offline user survive a replica move and arrive once each, and the byte
//! caps answer `MailboxFull`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::TestClient;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{ChatMessage, ErrorCode, InboxFetch, Leave};
use natter_supernode::core::MAX_CHAT_TEXT;
use natter_supernode::hrw;
use natter_supernode::store::ChatLimits;
use prost::Message;

fn chat(id: u8, to: &str, text: String) -> ChatMessage {
    ChatMessage {
        message_id: vec![id; 16],
        from: String::new(),
        to: to.to_owned(),
        sealed: common::sealed(text.as_bytes()),
        sent_at: 1,
        ..Default::default()
    }
}

async fn leave(mut client: TestClient) {
    client.ack(Body::Leave(Leave {})).await;
    TestClient::closed_code(&client.conn).await;
}

/// Issue 14: four 16 KiB messages to an offline user make a replica bundle
/// larger than a frame. Before, the replica that moved them (or handed
/// them to the user's supernode) had already taken them out of its store,
/// its link writer died on the oversize frame, and the chat was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_largest_messages_survive_a_replica_move_and_arrive_once() {
    let mut sns = common::cluster(4, |c| c.replicas = 2).await;
    let ids: Vec<_> = sns.iter().map(|h| h.node_id()).collect();
    let before = hrw::replicas("carol", &ids, 2);
    let victim = ids.iter().position(|id| *id == before[0]).unwrap();
    let remaining: Vec<_> = ids.iter().copied().filter(|id| *id != before[0]).collect();
    let after = hrw::replicas("carol", &remaining, 2);
    // Carol's (and alice's) supernode is none of her replicas, before or
    // after the move: everything she gets comes over links.
    let home = ids
        .iter()
        .position(|id| !before.contains(id) && !after.contains(id))
        .unwrap();
    let home_addr = sns[home].local_addr();

    leave(TestClient::join(home_addr, "carol").await).await;
    let mut alice = TestClient::join(home_addr, "alice").await;
    let mut sent = HashSet::new();
    for i in 0..4u8 {
        let text = char::from(b'a' + i).to_string().repeat(MAX_CHAT_TEXT);
        alice
            .ack(Body::ChatMessage(chat(i + 1, "carol", text)))
            .await;
        sent.insert(vec![i + 1; 16]);
    }
    // A replica goes away: the other one copies the chat to the new one.
    sns.remove(victim).shutdown().await;
    common::eventually("the others see it gone", || {
        let ok = sns.iter().all(|h| h.live_members().len() == 3);
        async move { ok.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let home = sns
        .iter()
        .position(|h| h.local_addr() == home_addr)
        .unwrap();

    // Carol comes back: all four, once each.
    let mut carol = TestClient::join(sns[home].local_addr(), "carol").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = carol
            .expect_push("stored chat", |b| match b {
                Body::ChatMessage(m) => Some(m.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            (m.from.as_str(), common::unsealed(&m).len()),
            ("alice", MAX_CHAT_TEXT)
        );
        got.push(m.message_id);
    }
    assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), sent);
    assert_eq!(got.len(), 4, "no duplicates");
    carol.ack(Body::InboxFetch(InboxFetch {})).await;
    carol
        .expect_no_push(Duration::from_millis(500), |b| {
            matches!(b, Body::ChatMessage(_))
        })
        .await;
    // The links survived: the overlay still sees everyone.
    assert!(sns.iter().all(|h| h.live_members().len() == 3));
    for sn in sns {
        sn.shutdown().await;
    }
}

/// A sender cannot fill a supernode's disk-less memory with chat for
/// offline users: past the recipient's cap the answer is `MailboxFull`,
/// and what was stored before is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_is_refused_with_mailbox_full_and_nothing_stored_is_lost() {
    let one = chat(1, "carol", "x".repeat(4000)).encoded_len() + "alice".len() + 2;
    let sns = common::cluster(1, |c| {
        c.chat_limits = ChatLimits {
            per_recipient: 3 * one,
            ..ChatLimits::default()
        };
    })
    .await;
    let addr = sns[0].local_addr();
    leave(TestClient::join(addr, "carol").await).await;
    let mut alice = TestClient::join(addr, "alice").await;
    for i in 1..=3 {
        alice
            .ack(Body::ChatMessage(chat(i, "carol", "x".repeat(4000))))
            .await;
    }
    let refused = alice
        .request(Body::ChatMessage(chat(4, "carol", "x".repeat(4000))))
        .await;
    assert_eq!(
        common::error_code(&refused),
        Some(ErrorCode::MailboxFull),
        "{refused:?}"
    );

    let mut carol = TestClient::join(addr, "carol").await;
    let mut got = HashSet::new();
    for _ in 0..3 {
        got.insert(
            carol
                .expect_push("stored chat", |b| match b {
                    Body::ChatMessage(m) => Some(m.message_id.clone()),
                    _ => None,
                })
                .await,
        );
    }
    assert_eq!(got, (1..=3).map(|i| vec![i; 16]).collect());
    // Delivered, so deleted: there is room again.
    leave(carol).await;
    alice
        .ack(Body::ChatMessage(chat(5, "carol", "x".repeat(4000))))
        .await;
    for sn in sns {
        sn.shutdown().await;
    }
}

/// Version 2 chat is sealed end to end: a supernode refuses a message that
/// carries plaintext (or no sealed body, or an oversize one) with
/// `Malformed`, and neither stores nor forwards it; the search reply
/// carries the recipient's certificate, whose chat key senders seal to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_chat_is_refused_and_never_stored_or_forwarded() {
    let sns = common::cluster(2, |_| {}).await;
    let mut bob = TestClient::join(sns[1].local_addr(), "bob").await;
    leave(TestClient::join(sns[0].local_addr(), "carol").await).await;
    let mut alice = TestClient::join(sns[0].local_addr(), "alice").await;
    let found = alice.search_until("bob", |r| r.found).await;
    let certificate = found
        .certificate
        .expect("the search reply has bob's certificate");
    let verified = natter_proto::cert::verify(
        &certificate,
        &common::issuer().public_key(),
        common::now_secs(),
    )
    .unwrap();
    assert_eq!(verified.name, "bob");
    assert_eq!(certificate, common::identity("bob").certificate);

    let plaintext = |id: u8, to: &str| ChatMessage {
        message_id: vec![id; 16],
        to: to.to_owned(),
        text: "the launch code is 0000".into(),
        sent_at: 1,
        ..Default::default()
    };
    let oversize = ChatMessage {
        sealed: common::sealed(&vec![b'x'; natter_proto::chat::MAX_SEALED_LEN]),
        ..chat(3, "bob", String::new())
    };
    let unsealed = ChatMessage {
        sealed: Vec::new(),
        ..chat(4, "carol", String::new())
    };
    for m in [
        plaintext(1, "bob"),
        plaintext(2, "carol"),
        oversize,
        unsealed,
    ] {
        let reply = alice.request(Body::ChatMessage(m)).await;
        assert_eq!(
            common::error_code(&reply),
            Some(ErrorCode::Malformed),
            "{reply:?}"
        );
    }
    bob.expect_no_push(Duration::from_millis(500), |b| {
        matches!(b, Body::ChatMessage(_))
    })
    .await;
    // Carol (offline) had nothing stored for her.
    let mut carol = TestClient::join(sns[0].local_addr(), "carol").await;
    carol.ack(Body::InboxFetch(InboxFetch {})).await;
    carol
        .expect_no_push(Duration::from_millis(500), |b| {
            matches!(b, Body::ChatMessage(_))
        })
        .await;
    for sn in sns {
        sn.shutdown().await;
    }
}
