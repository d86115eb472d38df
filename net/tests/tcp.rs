//! TLS over TCP on loopback: records both ways, close codes, keepalive and
//! the idle timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use natter_net::tcp::{self, TlsListener};
use natter_net::{NetError, TlsIdentity, TransportSettings};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Envelope, Ping};
use natter_proto::record::Record;

const FAST: TransportSettings = TransportSettings {
    keep_alive: Duration::from_millis(200),
    idle_timeout: Duration::from_millis(600),
    max_bidi_streams: 8,
};

async fn listen(settings: TransportSettings) -> (TlsListener, SocketAddr) {
    let identity = TlsIdentity::generate("natter-test").unwrap();
    let listener = TlsListener::bind("127.0.0.1:0".parse().unwrap(), &identity, settings)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn dial(addr: SocketAddr, settings: TransportSettings) -> natter_net::RecordConn {
    tcp::connect(
        addr,
        "natter-test",
        tcp::insecure_client_tls_config().unwrap(),
        settings,
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn records_flow_both_ways_and_the_close_code_arrives() {
    let (listener, addr) = listen(TransportSettings::OVERLAY).await;
    let server = tokio::spawn(async move {
        let accepted = listener.accept().await.unwrap();
        let (mut reader, handle) = accepted
            .handshake(Duration::from_secs(5))
            .await
            .unwrap()
            .split();
        let first = reader.next().await.unwrap().unwrap();
        let Record::Envelope(e) = first else {
            panic!("expected an envelope, got {first:?}")
        };
        handle.send_envelope(&e).await.unwrap();
        let second = reader.next().await.unwrap().unwrap();
        assert_eq!(second, Record::Datagram(vec![7; 61]));
        handle.send_datagram(&[9; 61]).await.unwrap();
        handle.close(3, "joined again");
    });
    let (mut reader, handle) = dial(addr, TransportSettings::OVERLAY).await.split();
    let ping = Envelope::new(42, Body::Ping(Ping { nonce: 5 }));
    handle.send_envelope(&ping).await.unwrap();
    assert_eq!(reader.next().await.unwrap(), Some(Record::Envelope(ping)));
    handle.send_datagram(&[7; 61]).await.unwrap();
    assert_eq!(
        reader.next().await.unwrap(),
        Some(Record::Datagram(vec![9; 61]))
    );
    assert_eq!(reader.next().await.unwrap(), None, "CLOSE ends the reader");
    assert_eq!(handle.close_reason(), Some((3, "joined again".into())));
    assert!(handle.send_datagram(&[1]).await.is_err());
    server.await.unwrap();
}

#[tokio::test]
async fn keepalives_hold_an_idle_connection_and_silence_kills_it() {
    let (listener, addr) = listen(FAST).await;
    let server = tokio::spawn(async move {
        let accepted = listener.accept().await.unwrap();
        let conn = accepted.handshake(Duration::from_secs(5)).await.unwrap();
        let (mut reader, _handle) = conn.split();
        // Nothing but keepalives for three idle timeouts: still alive.
        let waited = tokio::time::timeout(Duration::from_millis(1800), reader.next()).await;
        assert!(
            waited.is_err(),
            "an idle but kept-alive connection stays up"
        );
        reader
    });
    let conn = dial(addr, FAST).await;
    let server_reader = server.await.unwrap();
    drop(conn);
    // A peer that stays connected but sends nothing (its keepalive interval
    // is longer than our idle timeout) is declared dead.
    let (listener, addr) = listen(FAST).await;
    let server = tokio::spawn(async move {
        let accepted = listener.accept().await.unwrap();
        let (mut reader, _handle) = accepted
            .handshake(Duration::from_secs(5))
            .await
            .unwrap()
            .split();
        tokio::time::timeout(Duration::from_secs(3), reader.next()).await
    });
    let silent = TransportSettings {
        keep_alive: Duration::from_secs(30),
        ..FAST
    };
    let _conn = dial(addr, silent).await;
    let end = server
        .await
        .unwrap()
        .expect("noticed within the idle timeout");
    assert!(matches!(end, Err(NetError::Timeout)), "{end:?}");
    let _ = server_reader.handle();
}

#[tokio::test]
async fn a_local_close_ends_a_pending_read() {
    let (listener, addr) = listen(TransportSettings::OVERLAY).await;
    let _server = tokio::spawn(async move {
        let accepted = listener.accept().await.unwrap();
        let conn = accepted.handshake(Duration::from_secs(5)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(conn);
    });
    let (mut reader, handle) = dial(addr, TransportSettings::OVERLAY).await.split();
    let read = tokio::spawn(async move { reader.next().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.close(0, "bye");
    let result = tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .expect("the read ends at once")
        .unwrap();
    assert!(matches!(result, Err(NetError::Closed(_))), "{result:?}");
}
