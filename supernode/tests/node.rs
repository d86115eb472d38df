//! The supernode process around the protocol: announcing to the login
//! server, the data directory, slow clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestClient, WAIT, cluster, config};
use natter_net::{FramedRecv, FramedSend, TlsIdentity, TransportSettings};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Ack, ChatMessage, Envelope};
use natter_supernode::{Supernode, close};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announces_itself_to_the_login_server() {
    // A stand-in login server: self-signed TLS, ALPN natter/1, one frame in,
    // one frame out.
    let identity = TlsIdentity::generate("natter-login").unwrap();
    let login = natter_net::server_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &TransportSettings::OVERLAY,
    )
    .unwrap();
    let mut config = config(Vec::new(), 3);
    config.login = Some(login.local_addr().unwrap());
    // A wildcard TCP listener is advertised with the node's IP.
    config.tcp_listen = Some("0.0.0.0:0".parse().unwrap());
    let sn = Supernode::spawn(config).unwrap();
    let tcp = sn.tcp_addr().unwrap();
    let bound = sn.tcp_local_addr().unwrap();
    assert!(bound.ip().is_unspecified());
    assert_eq!((tcp.ip(), tcp.port()), (sn.addr().ip(), bound.port()));

    let received = tokio::time::timeout(WAIT, async {
        let conn = login.accept().await.unwrap().await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let request = FramedRecv::new(recv).next().await.unwrap().unwrap();
        let mut send = FramedSend::new(send);
        send.send(&Envelope::new(request.request_id, Body::Ack(Ack {})))
            .await
            .unwrap();
        send.finish(Duration::from_secs(1)).await.unwrap();
        request
    })
    .await
    .expect("no announcement");
    match received.body {
        Some(Body::SupernodeAnnounce(announce)) => {
            assert_eq!(announce.node_id, sn.node_id().to_vec());
            let addr = std::net::SocketAddr::try_from(announce.addr.as_ref().unwrap()).unwrap();
            assert_eq!(addr, sn.local_addr());
            let announced = std::net::SocketAddr::try_from(announce.tcp.as_ref().unwrap()).unwrap();
            assert_eq!(announced, tcp);
        }
        other => panic!("expected SupernodeAnnounce, got {other:?}"),
    }
    sn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_keeps_the_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(Vec::new(), 3);
    c.data_dir = Some(dir.path().to_owned());
    let first = Supernode::spawn(c.clone()).unwrap();
    let id = first.node_id();
    first.shutdown().await;
    let second = Supernode::spawn(c).unwrap();
    assert_eq!(second.node_id(), id);
    assert!(dir.path().join(natter_net::tls::KEY_FILE).exists());
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    let sns = cluster(1, |c| c.session_queue = 4).await;
    let addr = sns[0].local_addr();
    let alice = TestClient::join(addr, "alice").await;
    let mut bob = TestClient::join(addr, "bob").await;
    // Alice never reads. Bob's big messages fill her QUIC window, then her
    // push queue; the supernode drops her rather than block.
    for i in 0..40u8 {
        bob.ack(Body::ChatMessage(ChatMessage {
            message_id: vec![i; 16],
            from: String::new(),
            to: "alice".into(),
            sealed: common::sealed("x".repeat(16 * 1024).as_bytes()),
            sent_at: 0,
            ..Default::default()
        }))
        .await;
    }
    assert_eq!(
        TestClient::closed_code(&alice.conn).await,
        Some(close::SLOW.into())
    );
    // Bob was served throughout.
    assert_eq!(sns[0].session_count(), 1);
}
