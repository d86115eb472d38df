//! Chat acknowledgements end to end (a login server and supernodes on
//! loopback, users running the `natter` binary): a message whose push
//! reached a client that never stored it (the client died first) is not
//! lost: the next `natter inbox` gets it, and stores it once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, assert_ok};
use natter_client::supernode::SupernodeSession;
use natter_net::TransportSettings;
use natter_proto::messages::envelope::Body;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_pushed_message_the_client_never_stored_comes_again_and_is_stored_once() {
    let cluster = Cluster::start(2, None);
    for user in ["alice", "dave"] {
        cluster.add_user(user);
    }
    let sn0 = cluster.supernodes[0].to_string();
    // dave has been online once (so the directory knows him), then left.
    assert_ok(&cluster.run("dave", &["--bootstrap", &sn0, "inbox"], LIMIT));
    std::thread::sleep(Duration::from_secs(2));
    let text = "meet at the north gate at nine";
    let out = assert_ok(&cluster.run("alice", &["--bootstrap", &sn0, "chat", "dave", text], LIMIT));
    assert!(out.contains("stored for dave"), "{out}");

    // dave's client joins, is pushed the message, and dies before it
    // wrote its inbox: no acknowledgement.
    let dave = cluster.session("dave");
    let login_key = natter_client::tls::read_login_key(&cluster.login_key).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let endpoint = natter_net::client_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &TransportSettings::OVERLAY,
        )
        .unwrap();
        let sn = SupernodeSession::join(
            &endpoint,
            cluster.supernodes[0],
            &dave.identity,
            &login_key,
            LIMIT,
        )
        .await
        .unwrap();
        assert!(sn.acks_chat(), "the supernode waits for acknowledgements");
        let pushed = tokio::time::timeout(LIMIT, async {
            loop {
                match sn.next_push().await {
                    Some(Body::ChatMessage(m)) => return m,
                    Some(_) => {}
                    None => panic!("session ended before the push"),
                }
            }
        })
        .await
        .expect("the stored message is pushed");
        assert_eq!(pushed.from, "alice");
        sn.close();
    });

    // The next `natter inbox` gets it, and the one after that does not
    // store it again.
    for _ in 0..2 {
        let out = assert_ok(&cluster.run("dave", &["--bootstrap", &sn0, "inbox"], LIMIT));
        assert_eq!(out.matches(text).count(), 1, "{out}");
    }
    let inbox = std::fs::read_to_string(cluster.home("dave").join("inbox.txt")).unwrap();
    assert_eq!(inbox.matches(text).count(), 1, "{inbox}");
}
