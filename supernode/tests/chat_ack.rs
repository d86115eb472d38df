//! Chat acknowledgements against real supernodes (`Supernode::spawn` on
//! loopback, clients speaking the wire protocol): a client whose hello says
//! `acks_chat` gets stored chat again until it sent `ChatDelivered` for it;
//! an older client (no `acks_chat`) gets it once, as before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestClient;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{ChatDelivered, ChatMessage, InboxFetch, Leave};

fn chat(id: u8, to: &str) -> ChatMessage {
    ChatMessage {
        message_id: vec![id; 16],
        from: String::new(),
        to: to.to_owned(),
        sealed: common::sealed(format!("message {id}").as_bytes()),
        sent_at: 1,
        ..Default::default()
    }
}

async fn leave(mut client: TestClient) {
    client.ack(Body::Leave(Leave {})).await;
    TestClient::closed_code(&client.conn).await;
}

async fn pushed_chat(client: &mut TestClient) -> ChatMessage {
    client
        .expect_push("stored chat", |b| match b {
            Body::ChatMessage(m) => Some(m.clone()),
            _ => None,
        })
        .await
}

/// Alice writes to carol while carol is offline; returns the supernodes
/// and where carol joins.
async fn stored_for_carol(id: u8) -> (Vec<natter_supernode::Handle>, std::net::SocketAddr) {
    let sns = common::cluster(3, |_| {}).await;
    let addr = sns[0].local_addr();
    leave(TestClient::join(addr, "carol").await).await;
    let mut alice = TestClient::join(sns[1].local_addr(), "alice").await;
    alice.ack(Body::ChatMessage(chat(id, "carol"))).await;
    leave(alice).await;
    (sns, addr)
}

/// (a) and (b): the stored message reaches carol's connection, which dies
/// before acknowledging it (the client crashed before writing its inbox):
/// her next join gets the same message again. Acknowledged, it is gone:
/// the join after that gets nothing. (Before, the first push deleted it
/// from every replica and the second join got nothing: the message was
/// lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_chat_comes_again_until_acknowledged_and_not_after() {
    let (sns, addr) = stored_for_carol(7).await;

    let carol = TestClient::join_acking(addr, "carol").await;
    assert!(carol.accepted.acks_chat, "the supernode waits for acks");
    let mut carol = carol;
    let first = pushed_chat(&mut carol).await;
    assert_eq!(
        (first.from.as_str(), first.message_id.clone()),
        ("alice", vec![7; 16])
    );
    // The connection dies without an acknowledgement.
    carol.conn.close(0, b"crash");
    drop(carol);

    let mut carol = TestClient::join_acking(addr, "carol").await;
    let again = pushed_chat(&mut carol).await;
    assert_eq!(again.message_id, vec![7; 16], "delivered again, not lost");
    assert_eq!(common::unsealed(&again), "message 7");
    carol
        .ack(Body::ChatDelivered(ChatDelivered {
            message_ids: vec![again.message_id.clone()],
        }))
        .await;
    leave(carol).await;

    let carol = TestClient::join_acking(addr, "carol").await;
    no_chat_comes(carol).await;
    for sn in sns {
        sn.shutdown().await;
    }
}

/// (c): a client that does not acknowledge chat (an older client: no
/// `acks_chat` in its hello) is told the supernode does not wait, gets its
/// stored chat once, and not again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_client_gets_stored_chat_once_as_before() {
    let (sns, addr) = stored_for_carol(9).await;

    let mut carol = TestClient::join(addr, "carol").await;
    assert!(!carol.accepted.acks_chat);
    let first = pushed_chat(&mut carol).await;
    assert_eq!(first.message_id, vec![9; 16]);
    carol.ack(Body::InboxFetch(InboxFetch {})).await;
    leave(carol).await;

    let carol = TestClient::join(addr, "carol").await;
    no_chat_comes(carol).await;
    for sn in sns {
        sn.shutdown().await;
    }
}

/// Live chat to an online client that acknowledges chat: its connection
/// dies before the acknowledgement, and the message is stored for its next
/// join instead of being lost. (Before, the push counted as delivered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_chat_not_acknowledged_is_stored_for_the_next_join() {
    let sns = common::cluster(3, |_| {}).await;
    let addr = sns[0].local_addr();
    let mut carol = TestClient::join_acking(addr, "carol").await;
    let mut alice = TestClient::join(sns[1].local_addr(), "alice").await;
    alice
        .search_until("carol", |r| r.found && r.supernode.is_some())
        .await;
    alice.ack(Body::ChatMessage(chat(5, "carol"))).await;
    let live = pushed_chat(&mut carol).await;
    assert_eq!(live.message_id, vec![5; 16]);
    carol.conn.close(0, b"crash");
    drop(carol);
    // It is stored on carol's replicas (a moment after her connection
    // ended): a later join of hers gets it.
    let again = common::eventually("carol gets it again", || async {
        let mut carol = TestClient::join_acking(addr, "carol").await;
        let mut got = None;
        carol
            .expect_no_push(Duration::from_millis(500), |b| {
                if let Body::ChatMessage(m) = b {
                    got = Some(m.message_id.clone());
                }
                false
            })
            .await;
        carol.conn.close(0, b"again");
        got
    })
    .await;
    assert_eq!(again, vec![5; 16]);
    leave(alice).await;
    for sn in sns {
        sn.shutdown().await;
    }
}

/// Asks for the inbox and asserts that no chat is pushed, then leaves.
async fn no_chat_comes(mut client: TestClient) {
    client.ack(Body::InboxFetch(InboxFetch {})).await;
    client
        .expect_no_push(Duration::from_millis(500), |b| {
            matches!(b, Body::ChatMessage(_))
        })
        .await;
    leave(client).await;
}
