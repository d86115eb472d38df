//! The request/reply multiplexer over real control connections on loopback
//! (TLS over TCP and QUIC): replies matched by id whatever their order,
//! pushes to a bounded queue, timeouts, and every pending request failing
//! when the connection closes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use natter_net::tcp::{self, TlsListener};
use natter_net::{
    ControlConn, EnvelopeRecv, EnvelopeSend, FramedRecv, FramedSend, Mux, MuxConfig, MuxError,
    Pushes, TlsIdentity, TransportSettings,
};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Envelope, Ping, Pong};

const NAME: &str = "natter-test";
const LONG: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn ping(nonce: u64) -> Body {
    Body::Ping(Ping { nonce })
}

fn pong_for(request: &Envelope) -> Envelope {
    let nonce = match &request.body {
        Some(Body::Ping(p)) => p.nonce,
        other => panic!("expected a ping, got {other:?}"),
    };
    Envelope::new(request.request_id, Body::Pong(Pong { nonce }))
}

fn push(nonce: u64) -> Envelope {
    Envelope::new(0, Body::Pong(Pong { nonce }))
}

/// A TLS-over-TCP pair: the server's halves, and a multiplexer on the
/// client's.
async fn tls_pair(config: MuxConfig) -> ((EnvelopeSend, EnvelopeRecv), Mux, Pushes) {
    let identity = TlsIdentity::generate(NAME).unwrap();
    let listener = TlsListener::bind(loopback(), &identity, TransportSettings::OVERLAY)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let accepted = listener.accept().await.unwrap();
        let (reader, handle) = accepted.handshake(LONG).await.unwrap().split();
        (EnvelopeSend::Tls(handle), EnvelopeRecv::Tls(reader))
    });
    let client = tcp::connect(
        addr,
        NAME,
        tcp::insecure_client_tls_config().unwrap(),
        TransportSettings::OVERLAY,
        LONG,
    )
    .await
    .unwrap();
    let (reader, handle) = client.split();
    let (mux, pushes) = Mux::start(
        ControlConn::Tls(handle.clone()),
        EnvelopeSend::Tls(handle),
        EnvelopeRecv::Tls(reader),
        config,
    );
    (server.await.unwrap(), mux, pushes)
}

#[tokio::test]
async fn replies_find_their_requests_in_any_order_and_pushes_their_queue() {
    let ((mut send, mut recv), mux, mut pushes) = tls_pair(MuxConfig::default()).await;
    let server = tokio::spawn(async move {
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(recv.next().await.unwrap().unwrap());
        }
        // Answer in reverse order, with a push in the middle.
        send.send(&pong_for(&requests[2])).await.unwrap();
        send.send(&push(77)).await.unwrap();
        send.send(&pong_for(&requests[1])).await.unwrap();
        send.send(&pong_for(&requests[0])).await.unwrap();
        (send, recv, requests)
    });
    let (a, b, c) = tokio::join!(
        mux.request(ping(1), LONG),
        mux.request(ping(2), LONG),
        mux.request(ping(3), LONG)
    );
    for (reply, nonce) in [(a, 1), (b, 2), (c, 3)] {
        let reply = reply.unwrap();
        assert!(
            matches!(reply.body, Some(Body::Pong(p)) if p.nonce == nonce),
            "{reply:?}"
        );
    }
    let (_send, _recv, requests) = server.await.unwrap();
    // Fresh ids from the first one configured.
    let mut ids: Vec<u64> = requests.iter().map(|r| r.request_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3]);
    let pushed = pushes.next().await.unwrap();
    assert!(matches!(pushed.body, Some(Body::Pong(p)) if p.nonce == 77));
    assert_eq!(mux.pending(), 0);
    assert_eq!(mux.dropped_pushes(), 0);
}

#[tokio::test]
async fn closing_the_connection_fails_every_pending_request_with_the_reason() {
    let ((send, mut recv), mux, mut pushes) = tls_pair(MuxConfig::default()).await;
    let server = tokio::spawn(async move {
        recv.next().await.unwrap().unwrap();
        recv.next().await.unwrap().unwrap();
        let EnvelopeSend::Tls(handle) = send else {
            unreachable!()
        };
        handle.close(7, "going away");
        recv
    });
    let (a, b) = tokio::join!(mux.request(ping(1), LONG), mux.request(ping(2), LONG));
    for result in [a, b] {
        assert!(
            matches!(&result, Err(MuxError::Closed { reason }) if reason == "going away"),
            "{result:?}"
        );
    }
    let _recv = server.await.unwrap();
    assert!(mux.is_closed());
    // Later requests fail at once, and the push queue has ended.
    let later = tokio::time::timeout(Duration::from_secs(1), mux.request(ping(3), LONG))
        .await
        .expect("fails at once");
    assert!(matches!(later, Err(MuxError::Closed { .. })), "{later:?}");
    assert!(pushes.next().await.is_none());
}

#[tokio::test]
async fn requests_and_pushes_are_bounded() {
    let config = MuxConfig {
        first_id: 10,
        max_pending: 1,
        push_queue: 2,
    };
    let ((mut send, mut recv), mux, mut pushes) = tls_pair(config).await;
    let server = tokio::spawn(async move {
        let request = recv.next().await.unwrap().unwrap();
        // Five pushes before the reply: the queue holds two.
        for nonce in 0..5 {
            send.send(&push(nonce)).await.unwrap();
        }
        send.send(&pong_for(&request)).await.unwrap();
        (send, recv, request)
    });
    let (first, second) = tokio::join!(mux.request(ping(1), LONG), async {
        tokio::task::yield_now().await;
        mux.request(ping(2), LONG).await
    });
    assert!(
        matches!(first, Ok(ref r) if r.request_id == 10),
        "{first:?}"
    );
    assert!(matches!(second, Err(MuxError::Busy)), "{second:?}");
    let (_send, _recv, request) = server.await.unwrap();
    assert_eq!(request.request_id, 10);
    // The reply came after the five pushes: all of them were handled.
    assert_eq!(mux.dropped_pushes(), 3);
    for nonce in 0..2 {
        let p = pushes.next().await.unwrap();
        assert!(
            matches!(p.body, Some(Body::Pong(ref q)) if q.nonce == nonce),
            "{p:?}"
        );
    }
}

#[tokio::test]
async fn a_late_reply_is_dropped_and_counted_and_ids_are_checked() {
    let ((mut send, mut recv), mux, _pushes) = tls_pair(MuxConfig::default()).await;
    let timeout = Duration::from_millis(200);
    let slow = mux.request(ping(1), timeout).await;
    assert!(
        matches!(slow, Err(MuxError::Timeout(t)) if t == timeout),
        "{slow:?}"
    );
    assert_eq!(mux.pending(), 0, "a timed-out request is forgotten");
    let late = recv.next().await.unwrap().unwrap();
    send.send(&pong_for(&late)).await.unwrap();
    // A caller-chosen id is used as is; 0 (a push) is refused.
    let server = tokio::spawn(async move {
        let request = recv.next().await.unwrap().unwrap();
        send.send(&pong_for(&request)).await.unwrap();
        (send, recv, request)
    });
    let reply = mux
        .exchange(Envelope::new(500, ping(5)), LONG)
        .await
        .unwrap();
    assert_eq!(reply.request_id, 500);
    let (_send, _recv, request) = server.await.unwrap();
    assert_eq!(request.request_id, 500);
    // The late reply arrived before the one to request 500.
    assert_eq!(mux.unmatched_replies(), 1);
    let zero = mux.exchange(Envelope::new(0, ping(6)), LONG).await;
    assert!(matches!(zero, Err(MuxError::DuplicateId(0))), "{zero:?}");
}

#[tokio::test]
async fn the_same_multiplexer_runs_on_a_quic_stream() {
    let identity = TlsIdentity::generate(NAME).unwrap();
    let server =
        natter_net::server_endpoint(loopback(), &identity, &TransportSettings::OVERLAY).unwrap();
    let addr = server.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let (mut send, mut recv) = (FramedSend::new(send), FramedRecv::new(recv));
        let mut requests = Vec::new();
        for _ in 0..2 {
            requests.push(recv.next().await.unwrap().unwrap());
        }
        send.send(&push(9)).await.unwrap();
        for request in requests.iter().rev() {
            send.send(&pong_for(request)).await.unwrap();
        }
        // The client closing the connection ends the stream.
        let end = recv.next().await;
        assert!(end.is_err() || matches!(end, Ok(None)), "{end:?}");
        conn.close_reason()
    });
    let client = natter_net::client_endpoint(loopback(), &TransportSettings::OVERLAY).unwrap();
    let conn = client.connect(addr, NAME).unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let (mux, mut pushes) = Mux::start(
        ControlConn::Quic(conn),
        EnvelopeSend::Quic(FramedSend::new(send)),
        EnvelopeRecv::Quic(FramedRecv::new(recv)),
        MuxConfig::default(),
    );
    let (a, b) = tokio::join!(mux.request(ping(1), LONG), mux.request(ping(2), LONG));
    assert!(matches!(a.unwrap().body, Some(Body::Pong(p)) if p.nonce == 1));
    assert!(matches!(b.unwrap().body, Some(Body::Pong(p)) if p.nonce == 2));
    assert!(matches!(pushes.next().await.unwrap().body, Some(Body::Pong(p)) if p.nonce == 9));
    mux.close(0, b"done");
    let reason = serving.await.unwrap();
    assert!(reason.is_some(), "the server saw the close");
}
