//! `--metrics`: a supernode's Prometheus page follows what it does (a STUN
//! answer, a joined user), sits where it was told (loopback here), answers
//! nothing but `GET /metrics`, and a port in use fails the start.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestClient, cluster, eventually};
use natter_proto::stun;
use natter_supernode::Supernode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("no answer")
        .unwrap();
    out
}

async fn scrape(addr: SocketAddr) -> String {
    let page = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    page
}

/// The value of a sample without labels.
fn value(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not on the page:\n{page}"))
}

#[tokio::test]
async fn the_page_follows_stun_answers_and_sessions() {
    let nodes = cluster(1, |c| c.metrics = Some("127.0.0.1:0".parse().unwrap())).await;
    let sn = &nodes[0];
    let addr = sn.metrics_addr().expect("metrics on");
    assert!(addr.ip().is_loopback());
    let page = scrape(addr).await;
    assert_eq!(value(&page, "natter_supernode_sessions"), 0);
    assert_eq!(value(&page, "natter_supernode_stun_answered_total"), 0);
    assert!(page.contains("# TYPE natter_supernode_relay_forwarded_packets_total counter"));
    // The node task's queue: its size, and what waits in it (nothing, idle).
    assert!(page.contains("# TYPE natter_supernode_event_queue_depth gauge"));
    assert_eq!(value(&page, "natter_supernode_event_queue_capacity"), 4096);
    assert_eq!(value(&page, "natter_supernode_event_queue_depth"), 0);

    // One STUN Binding request, answered.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut request = Vec::new();
    request.extend_from_slice(&stun::BINDING_REQUEST.to_be_bytes());
    request.extend_from_slice(&0u16.to_be_bytes());
    request.extend_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
    request.extend_from_slice(&[7; 12]);
    udp.send_to(&request, sn.reflector()).await.unwrap();
    let mut buf = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut buf))
        .await
        .expect("no STUN answer")
        .unwrap();
    let page = scrape(addr).await;
    assert_eq!(value(&page, "natter_supernode_stun_answered_total"), 1);

    // A user joins: the sessions gauge says so.
    let _alice = TestClient::join(sn.local_addr(), "alice").await;
    eventually("the page shows the session", || async move {
        (value(&scrape(addr).await, "natter_supernode_sessions") == 1).then_some(())
    })
    .await;

    let other = http(addr, "GET /admin HTTP/1.1\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

#[tokio::test]
async fn a_metrics_port_in_use_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = common::config(Vec::new(), 3);
    config.metrics = Some(taken.local_addr().unwrap());
    let e = Supernode::spawn(config).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("--metrics"), "{e}");
}
