//! `accept_validated` on a real endpoint on loopback: an Initial that never
//! follows up (a spoofed source) gets one Retry, smaller than itself, and is
//! never handed to the server; a real client follows the Retry and connects,
//! again and again from the same endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_net::{TlsIdentity, TransportSettings};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A real client's first datagram (a padded Initial), never followed up.
fn client_initial(to: SocketAddr) -> Vec<u8> {
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let config = natter_net::insecure_client_config(&TransportSettings::OVERLAY).unwrap();
    let now = Instant::now();
    let (_, mut conn) = endpoint.connect(now, config, to, "natter").unwrap();
    let mut buf = Vec::new();
    let transmit = conn.poll_transmit(now, 1, &mut buf).unwrap();
    buf.truncate(transmit.size);
    buf
}

#[tokio::test]
async fn an_unvalidated_initial_gets_only_a_retry_and_real_clients_connect() {
    let identity = TlsIdentity::generate("natter-test").unwrap();
    let server =
        natter_net::server_endpoint(loopback(), &identity, &TransportSettings::OVERLAY).unwrap();
    let addr = server.local_addr().unwrap();
    let (yielded_tx, mut yielded) = tokio::sync::mpsc::channel(8);
    let accepting = server.clone();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(incoming) = natter_net::accept_validated(&accepting).await {
            yielded_tx.send(incoming.remote_address()).await.unwrap();
            if let Ok(conn) = incoming.await {
                kept.push(conn);
            }
        }
    });

    // The spoofed source: one Initial, one Retry back.
    let spoofed = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    let initial = client_initial(addr);
    assert_eq!(initial.len(), 1200);
    spoofed.send_to(&initial, addr).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), spoofed.recv_from(&mut buf))
        .await
        .expect("an answer to the Initial")
        .unwrap();
    assert_eq!(from, addr);
    // QUIC v1 long header, packet type 3: Retry (RFC 9000 section 17.2.5).
    assert_eq!(buf[0] & 0x80, 0x80, "long header");
    assert_eq!((buf[0] >> 4) & 0x03, 3, "a Retry, not the handshake");
    assert_eq!(buf[1..5], 1u32.to_be_bytes(), "QUIC version 1");
    assert!(n < initial.len(), "a Retry of {n} bytes");

    // Real clients connect (following the Retry, or with a NEW_TOKEN token
    // from the first connection); the spoofed attempt is never handed out.
    let client = natter_net::client_endpoint(loopback(), &TransportSettings::OVERLAY).unwrap();
    let client_addr = client.local_addr().unwrap();
    for _ in 0..2 {
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            client.connect(addr, "natter-test").unwrap(),
        )
        .await
        .expect("connects in time")
        .expect("connects");
        let seen = yielded.recv().await.unwrap();
        assert_eq!(
            seen.port(),
            client_addr.port(),
            "only the real client is handed out"
        );
        conn.close(0u32.into(), b"done");
    }
}
