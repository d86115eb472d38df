//! Three (or four) supernodes in one process, clients on different ones:
//! search, presence, chat (live and stored), losing a replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestClient, cluster, eventually};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{ChatMessage, Leave, PresenceStatus, PresenceSubscribe, SetPresence};
use natter_supernode::hrw;

fn chat(id: u8, to: &str, text: &str) -> Body {
    Body::ChatMessage(ChatMessage {
        message_id: vec![id; 16],
        from: String::new(),
        to: to.into(),
        sealed: common::sealed(text.as_bytes()),
        sent_at: 1_700_000_000_000 + i64::from(id),
        ..Default::default()
    })
}

fn presence(name: &str, status: PresenceStatus) -> impl FnMut(&Body) -> Option<()> {
    let name = name.to_owned();
    move |body| match body {
        Body::PresenceUpdate(u) if u.name == name && u.status == status as i32 => Some(()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_presence_and_chat_across_supernodes() {
    let sns = cluster(3, |_| {}).await;
    let mut alice = TestClient::join(sns[0].local_addr(), "alice").await;
    assert_eq!(
        alice.accepted.supernodes.len(),
        3,
        "host cache lists the live supernodes"
    );
    let observed = alice.accepted.observed_addr.clone().unwrap();
    assert_eq!(
        std::net::SocketAddr::try_from(&observed).unwrap(),
        alice.local_addr()
    );
    let mut bob = TestClient::join(sns[1].local_addr(), "bob").await;
    let mut carol = TestClient::join(sns[2].local_addr(), "carol").await;

    // Search finds users joined through other supernodes.
    let found = alice
        .search_until("Bob", |r| {
            r.found && r.status == PresenceStatus::Online as i32
        })
        .await;
    assert_eq!(found.name, "bob");
    assert_eq!(
        std::net::SocketAddr::try_from(found.supernode.as_ref().unwrap()).unwrap(),
        sns[1].local_addr()
    );
    alice.search_until("carol", |r| r.found).await;
    let missing = alice.search("nobody").await;
    assert!(!missing.found);

    // Subscribing pushes the current status at once.
    alice
        .ack(Body::PresenceSubscribe(PresenceSubscribe {
            names: vec!["bob".into(), "Carol".into()],
        }))
        .await;
    alice
        .expect_push("bob online", presence("bob", PresenceStatus::Online))
        .await;

    // Presence changes on another supernode reach the subscriber.
    bob.ack(Body::SetPresence(SetPresence {
        status: PresenceStatus::Away as i32,
    }))
    .await;
    alice
        .expect_push("bob away", presence("bob", PresenceStatus::Away))
        .await;
    let away = alice.search("bob").await;
    assert_eq!(away.status, PresenceStatus::Away as i32);

    // Chat across supernodes, with a receipt.
    alice.ack(chat(1, "bob", "hi bob")).await;
    let got = bob
        .expect_push("chat", |b| match b {
            Body::ChatMessage(m) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (
            got.from.as_str(),
            got.to.as_str(),
            common::unsealed(&got).as_str()
        ),
        ("alice", "bob", "hi bob")
    );
    let receipt = alice
        .expect_push("receipt", |b| match b {
            Body::ChatReceipt(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(receipt.message_id, vec![1; 16]);
    assert_eq!(
        (receipt.from.as_str(), receipt.to.as_str()),
        ("bob", "alice")
    );
    assert!(receipt.delivered_at > 0);

    // Carol leaves: her subscriber sees her offline.
    carol.ack(Body::Leave(Leave {})).await;
    TestClient::closed_code(&carol.conn).await;
    alice
        .expect_push("carol offline", presence("carol", PresenceStatus::Offline))
        .await;
    let gone = alice
        .search_until("carol", |r| r.status == PresenceStatus::Offline as i32)
        .await;
    assert!(gone.found, "records of offline users are kept");
    assert!(gone.supernode.is_none());

    // Chat to an offline user is stored and delivered when she joins again
    // (through another supernode), with a receipt to the sender.
    alice.ack(chat(2, "carol", "while you were out")).await;
    alice.ack(chat(3, "carol", "second")).await;
    let mut carol = TestClient::join(sns[1].local_addr(), "carol").await;
    let mut texts = Vec::new();
    for _ in 0..2 {
        texts.push(
            carol
                .expect_push("stored chat", |b| match b {
                    Body::ChatMessage(m) => Some((m.from.clone(), common::unsealed(m))),
                    _ => None,
                })
                .await,
        );
    }
    texts.sort();
    assert_eq!(
        texts,
        vec![
            ("alice".to_owned(), "second".to_owned()),
            ("alice".to_owned(), "while you were out".to_owned())
        ]
    );
    let mut receipted = Vec::new();
    for _ in 0..2 {
        receipted.push(
            alice
                .expect_push("receipts", |b| match b {
                    Body::ChatReceipt(r) if r.from == "carol" => Some(r.message_id.clone()),
                    _ => None,
                })
                .await,
        );
    }
    receipted.sort();
    assert_eq!(receipted, vec![vec![2; 16], vec![3; 16]]);
    // Delivered once: nothing left for an inbox fetch.
    carol
        .ack(Body::InboxFetch(natter_proto::messages::InboxFetch {}))
        .await;
    carol
        .expect_no_push(Duration::from_millis(300), |b| {
            matches!(b, Body::ChatMessage(_))
        })
        .await;
    // Chat to a name nobody ever used is refused.
    assert_eq!(
        common::error_code(&alice.request(chat(4, "nobody", "?")).await),
        Some(natter_proto::messages::ErrorCode::UserUnknown)
    );
    for sn in sns {
        sn.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_survive_the_loss_of_a_replica() {
    let sns = cluster(4, |c| c.replicas = 2).await;
    let ids: Vec<_> = sns.iter().map(|h| h.node_id()).collect();
    let replicas = hrw::replicas("carol", &ids, 2);
    let index = |id| ids.iter().position(|i| *i == id).unwrap();
    let others: Vec<usize> = (0..4).filter(|i| !replicas.contains(&ids[*i])).collect();
    let (home, asker) = (others[0], others[1]);

    // Carol joins a supernode that is not her replica, then leaves: her
    // (offline) record now lives only on the two replicas.
    let mut carol = TestClient::join(sns[home].local_addr(), "carol").await;
    let mut alice = TestClient::join(sns[asker].local_addr(), "alice").await;
    alice
        .search_until("carol", |r| r.status == PresenceStatus::Online as i32)
        .await;
    carol.ack(Body::Leave(Leave {})).await;
    alice
        .search_until("carol", |r| {
            r.found && r.status == PresenceStatus::Offline as i32
        })
        .await;

    // Kill the first replica in HRW order: the lookup falls back to the second.
    let mut sns: Vec<Option<_>> = sns.into_iter().map(Some).collect();
    let first = index(replicas[0]);
    sns[first].take().unwrap().shutdown().await;
    let after_kill = alice.search("carol").await;
    assert!(after_kill.found, "second replica answers: {after_kill:?}");
    assert_eq!(after_kill.status, PresenceStatus::Offline as i32);

    // After failure detection and re-homing the record is still found.
    let survivor = sns[asker].as_ref().unwrap();
    eventually("the dead replica leaves the live set", || {
        let n = survivor.live_members().len();
        async move { (n == 3).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alice.search("carol").await.found);
    // And an online user's record too.
    let mut bob = TestClient::join(sns[home].as_ref().unwrap().local_addr(), "bob").await;
    alice
        .search_until("bob", |r| {
            r.found && r.status == PresenceStatus::Online as i32
        })
        .await;
    bob.ack(Body::Leave(Leave {})).await;
    for sn in sns.into_iter().flatten() {
        sn.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_replaces_the_first() {
    let sns = cluster(2, |_| {}).await;
    let mut bob = TestClient::join(sns[1].local_addr(), "bob").await;

    // Same supernode: the old connection is closed, the user stays online.
    let first = TestClient::join(sns[0].local_addr(), "alice").await;
    bob.search_until("alice", |r| r.status == PresenceStatus::Online as i32)
        .await;
    let second = TestClient::join(sns[0].local_addr(), "alice").await;
    assert_eq!(
        TestClient::closed_code(&first.conn).await,
        Some(natter_supernode::close::REPLACED.into())
    );
    assert_eq!(sns[0].session_count(), 1);

    // Another supernode: the old home closes its session when it learns of
    // the new join, and the old session's end does not mark her offline.
    let third = TestClient::join(sns[1].local_addr(), "alice").await;
    assert_eq!(
        TestClient::closed_code(&second.conn).await,
        Some(natter_supernode::close::REPLACED.into())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let found = bob.search("alice").await;
    assert_eq!(found.status, PresenceStatus::Online as i32);
    assert_eq!(
        std::net::SocketAddr::try_from(found.supernode.as_ref().unwrap()).unwrap(),
        sns[1].local_addr()
    );
    eventually("the first supernode drops the old session", || {
        let n = sns[0].session_count();
        async move { (n == 0).then_some(()) }
    })
    .await;
    drop(third);
}
