//! The one session code path on QUIC: a stream is a session serving many
//! requests multiplexed by id, and a stream carrying one request (what the
//! client sends: one stream per request) is just a short session.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{client, start, test_config, with_timeout};
use natter_client::login::Transport;
use natter_client::{ClientError, LoginClient};
use natter_net::{FramedRecv, FramedSend, TransportSettings};
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

/// Sends `count` pings at once from `c` and checks each gets its pong.
async fn concurrent_pings(c: &Arc<LoginClient>, count: u64) {
    let mut requests = tokio::task::JoinSet::new();
    for nonce in 1..=count {
        let c = Arc::clone(c);
        requests.spawn(async move { (nonce, c.request(Body::Ping(Ping { nonce }), "").await) });
    }
    let mut answered = 0;
    while let Some(done) = with_timeout(requests.join_next()).await {
        let (nonce, reply) = done.unwrap();
        match reply {
            Ok(Body::Pong(p)) => assert_eq!(p.nonce, nonce),
            other => panic!("ping {nonce}: {other:?}"),
        }
        answered += 1;
    }
    assert_eq!(answered, count);
}

#[tokio::test]
async fn the_client_sends_one_request_per_quic_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Fewer streams at once than concurrent requests: the client waits for
    // the server to allow more streams, none fails.
    config.max_streams_per_connection = 3;
    let server = start(config).await;
    let c = Arc::new(client(&server).await);
    assert_eq!(c.transport(), Transport::Quic);
    c.register("uma", "password123").await.unwrap();
    c.buddy_blob_put("uma", "password123", 0, vec![1; 100])
        .await
        .unwrap();
    let blob = c.buddy_blob_get("uma", "password123").await.unwrap();
    assert_eq!(blob.version, 1);
    concurrent_pings(&c, 12).await;
    // 15 requests took 15 streams (ids are allocated in order), so the next
    // stream the connection opens is its 16th: no stream was kept open for
    // later requests.
    let conn = c.quic_connection().unwrap();
    let (send, _recv) = conn.open_bi().await.unwrap();
    assert_eq!(send.id().index(), 15);
    server.shutdown().await;
}

/// What one stream carried, as a server that takes one request per stream
/// (older login servers) sees it.
#[derive(Debug)]
enum Seen {
    /// Exactly one frame, then the end of the stream.
    OneRequest(u64),
    /// Anything else (no end, several frames, junk).
    Other(String),
}

/// A login server as older releases were: per stream, read to the end,
/// which must be exactly one frame; answer it, finish. A client keeping a
/// stream open would get no answer.
async fn one_request_per_stream_server(
    endpoint: quinn::Endpoint,
    streams: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(conn) = incoming.await else { continue };
        let (streams, seen) = (Arc::clone(&streams), Arc::clone(&seen));
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                streams.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let bytes = match recv.read_to_end(2 * frame::MAX_FRAME_LEN).await {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            seen.lock().unwrap().push(Seen::Other(e.to_string()));
                            return;
                        }
                    };
                    let mut decoder = FrameDecoder::default();
                    decoder.handle_data(&bytes).unwrap();
                    let request = match decoder.poll_frame() {
                        Some(Ok(request)) if decoder.buffered() == 0 => request,
                        other => {
                            let what = format!("{other:?}, {} bytes after", decoder.buffered());
                            seen.lock().unwrap().push(Seen::Other(what));
                            return;
                        }
                    };
                    seen.lock()
                        .unwrap()
                        .push(Seen::OneRequest(request.request_id));
                    let nonce = match request.body {
                        Some(Body::Ping(p)) => p.nonce,
                        _ => 0,
                    };
                    let reply = Envelope::new(
                        request.request_id,
                        Body::Pong(natter_proto::messages::Pong { nonce }),
                    );
                    send.write_all(&frame::to_frame(&reply).unwrap())
                        .await
                        .unwrap();
                    send.finish().unwrap();
                    let _ = send.stopped().await;
                });
            }
        });
    }
}

#[tokio::test]
async fn the_client_is_served_by_a_server_taking_one_request_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    let data = natter_login::datadir::DataDir::open(dir.path()).unwrap();
    let (signing_key, _) = data.signing_key().unwrap();
    let tls = data.tls_identity(&signing_key).unwrap();
    let settings = TransportSettings {
        keep_alive: std::time::Duration::from_secs(30),
        idle_timeout: std::time::Duration::from_secs(30),
        max_bidi_streams: 4,
    };
    let endpoint = quinn::Endpoint::server(
        natter_net::server_config(&tls, &settings).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    tokio::spawn(one_request_per_stream_server(
        endpoint.clone(),
        Arc::clone(&streams),
        Arc::clone(&seen),
    ));

    let c = LoginClient::connect_quic(addr, signing_key.to_public_key())
        .await
        .unwrap();
    let c = Arc::new(c);
    let reply = with_timeout(c.request(Body::Ping(Ping { nonce: 77 }), ""))
        .await
        .unwrap();
    assert!(matches!(reply, Body::Pong(p) if p.nonce == 77), "{reply:?}");
    concurrent_pings(&c, 10).await;

    assert_eq!(streams.load(Ordering::SeqCst), 11, "one stream per request");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut ids: Vec<u64> = seen
        .iter()
        .map(|s| match s {
            Seen::OneRequest(id) => *id,
            Seen::Other(what) => panic!("a stream carried {what}"),
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=11).collect::<Vec<u64>>(),
        "fresh ids, one per stream"
    );
    endpoint.close(quinn::VarInt::from_u32(0), b"done");
}
