//! The one session code path on QUIC: a stream is a session serving many
//! requests multiplexed by id, and a stream carrying one request (what a
//! client opening a stream per request sends) is just a short session.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use common::{client, start, test_config, with_timeout};
use natter_client::ClientError;
use natter_net::{FramedRecv, FramedSend};
use natter_proto::frame::{self, FrameDecoder};
use natter_proto::messages::{Envelope, Ping, envelope::Body};

fn ping(id: u64) -> Envelope {
    Envelope::new(id, Body::Ping(Ping { nonce: id * 1000 }))
}

fn pong_id(reply: &Envelope) -> u64 {
    match &reply.body {
        Some(Body::Pong(p)) => {
            assert_eq!(p.nonce, reply.request_id * 1000, "{reply:?}");
            reply.request_id
        }
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[tokio::test]
async fn one_quic_stream_carries_many_requests_answered_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Fewer in flight than requests: the rest wait their turn, none is lost.
    config.max_streams_per_connection = 2;
    let server = start(config).await;
    let c = client(&server).await;
    let conn = c.quic_connection().expect("a QUIC connection");
    let (send, recv) = conn.open_bi().await.unwrap();
    let (mut send, mut recv) = (FramedSend::new(send), FramedRecv::new(recv));
    let ids = [7, 3, 42, 9, 11, 5];
    for id in ids {
        send.send(&ping(id)).await.unwrap();
    }
    let mut answered = Vec::new();
    for _ in ids {
        let reply = with_timeout(recv.next()).await.unwrap().unwrap();
        answered.push(pong_id(&reply));
    }
    answered.sort_unstable();
    assert_eq!(answered, [3, 5, 7, 9, 11, 42]);
    // The stream stays open for more.
    send.send(&ping(100)).await.unwrap();
    let reply = with_timeout(recv.next()).await.unwrap().unwrap();
    assert_eq!(pong_id(&reply), 100);
    // Ending our side ends the session: the server finishes its side.
    send.get_mut().finish().unwrap();
    assert!(with_timeout(recv.next()).await.unwrap().is_none());
    // The connection is still up for other streams.
    c.request(Body::Ping(Ping { nonce: 1 }), "").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_opening_one_stream_per_request_is_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let c = client(&server).await;
    // Each raw exchange writes one frame on a new stream, finishes it, and
    // reads to the end: exactly one reply frame, then the end of the stream.
    let c = std::sync::Arc::new(c);
    let mut exchanges = tokio::task::JoinSet::new();
    for id in 1..=10u64 {
        let c = std::sync::Arc::clone(&c);
        exchanges.spawn(async move {
            let bytes = c.raw_exchange(&frame::to_frame(&ping(id)).unwrap()).await;
            (id, bytes.unwrap())
        });
    }
    let mut done = Vec::new();
    while let Some(result) = with_timeout(exchanges.join_next()).await {
        done.push(result.unwrap());
    }
    assert_eq!(done.len(), 10);
    for (id, bytes) in done {
        let mut decoder = FrameDecoder::default();
        decoder.handle_data(&bytes).unwrap();
        let reply = decoder.poll_frame().unwrap().unwrap();
        assert_eq!(pong_id(&reply), id);
        assert_eq!(decoder.buffered(), 0, "nothing after the one reply");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_quic_sessions_with_the_shutdown_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let c = client(&server).await;
    c.request(Body::Ping(Ping { nonce: 1 }), "").await.unwrap();
    with_timeout(server.shutdown()).await;
    let e = c
        .request(Body::Ping(Ping { nonce: 2 }), "")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::ConnectionClosed(reason) if reason.contains("shutting down")),
        "{e}"
    );
    let code = match c.quic_connection().unwrap().close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => close.error_code.into_inner(),
        other => panic!("expected an application close, got {other:?}"),
    };
    assert_eq!(code, u64::from(natter_login::session::CLOSE_SHUTDOWN));
}

#[tokio::test]
async fn a_quic_client_that_does_not_read_its_replies_is_closed_as_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.request_timeout = std::time::Duration::from_secs(1);
    let server = start(config).await;
    let c = client(&server).await;
    c.register("sam", "password123").await.unwrap();
    c.buddy_blob_put("sam", "password123", 0, vec![7; 40_000])
        .await
        .unwrap();

    // Another connection asks for the 40 kB blob 100 times on one stream
    // and reads nothing: its receive window fills and the replies stall.
    let slow = client(&server).await;
    let conn = slow.quic_connection().unwrap().clone();
    let (send, _recv) = conn.open_bi().await.unwrap();
    let mut send = FramedSend::new(send);
    for id in 1..=100 {
        let get = Body::BuddyBlobGet(natter_proto::messages::BuddyBlobGet {
            name: "sam".into(),
            password: "password123".into(),
        });
        send.send(&Envelope::new(id, get)).await.unwrap();
    }
    let closed = with_timeout(conn.closed()).await;
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code.into_inner(),
                u64::from(natter_login::session::CLOSE_SLOW_CLIENT)
            );
        }
        other => panic!("expected the slow-client close, got {other:?}"),
    }
    // Everyone else is served.
    c.request(Body::Ping(Ping { nonce: 9 }), "").await.unwrap();
    server.shutdown().await;
}
