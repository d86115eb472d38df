//! The one dial racing QUIC and TLS over TCP, against real listeners on
//! loopback: which transport wins, when TCP starts, and the error naming
//! both attempts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_net::dial::{Attempt, QuicDialError, QuicTarget, TcpTarget};
use natter_net::tcp::{ConnectError, TlsListener};
use natter_net::{Connected, DialError, DialPlan, TlsIdentity, Transport, TransportSettings};

const NAME: &str = "natter-test";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A QUIC server endpoint that accepts (and keeps) connections.
fn quic_server(identity: &TlsIdentity) -> quinn::Endpoint {
    let endpoint =
        natter_net::server_endpoint(loopback(), identity, &TransportSettings::OVERLAY).unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(incoming) = accepting.accept().await {
            if let Ok(conn) = incoming.await {
                kept.push(conn);
            }
        }
    });
    endpoint
}

async fn tls_server(identity: &TlsIdentity) -> TlsListener {
    TlsListener::bind(loopback(), identity, TransportSettings::OVERLAY)
        .await
        .unwrap()
}

/// A UDP socket that receives and never answers: QUIC to it gets nowhere,
/// as behind a firewall that drops UDP.
fn silent_udp() -> (std::net::UdpSocket, SocketAddr) {
    let socket = std::net::UdpSocket::bind(loopback()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A loopback TCP port with nothing listening.
fn closed_tcp_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind(loopback()).unwrap();
    listener.local_addr().unwrap()
}

fn plan(quic: SocketAddr, tcp: SocketAddr, head_start: Duration, timeout: Duration) -> DialPlan {
    let endpoint = natter_net::client_endpoint(loopback(), &TransportSettings::OVERLAY).unwrap();
    DialPlan {
        server_name: NAME.to_owned(),
        quic: Some(QuicTarget {
            endpoint,
            addr: quic,
            config: None,
        }),
        tcp: Some(TcpTarget {
            addr: tcp,
            config: natter_net::tls::insecure_client_tls_config().unwrap(),
            settings: TransportSettings::OVERLAY,
        }),
        head_start,
        timeout,
    }
}

#[tokio::test]
async fn quic_wins_when_both_work_and_tcp_is_not_even_tried() {
    let identity = TlsIdentity::generate(NAME).unwrap();
    let quic = quic_server(&identity);
    let tls = tls_server(&identity).await;
    let quic_addr = quic.local_addr().unwrap();
    let tcp_addr = tls.local_addr().unwrap();

    let started = Instant::now();
    let connected = natter_net::dial(plan(
        quic_addr,
        tcp_addr,
        Duration::from_secs(5),
        Duration::from_secs(20),
    ))
    .await
    .unwrap();
    eprintln!("both up: QUIC won after {:?}", started.elapsed());
    assert_eq!(connected.transport(), Transport::Quic);
    assert_eq!(connected.remote_address(), quic_addr);
    assert!(matches!(connected, Connected::Quic(_)));
    // QUIC connected within the head start: no TCP connection was made.
    let tcp = tokio::time::timeout(Duration::from_millis(300), tls.accept()).await;
    assert!(tcp.is_err(), "the TCP listener saw a connection");
}

#[tokio::test]
async fn tcp_wins_after_the_head_start_when_udp_gets_no_answer() {
    let identity = TlsIdentity::generate(NAME).unwrap();
    let tls = tls_server(&identity).await;
    let tcp_addr = tls.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let accepted = tls.accept().await.unwrap();
        accepted.handshake(Duration::from_secs(5)).await.unwrap()
    });
    let (_silent, udp) = silent_udp();

    let head_start = Duration::from_millis(300);
    let started = Instant::now();
    let connected = natter_net::dial(plan(udp, tcp_addr, head_start, Duration::from_secs(20)))
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("UDP silent, head start {head_start:?}: TLS over TCP won after {took:?}");
    assert_eq!(connected.transport(), Transport::Tls);
    assert_eq!(connected.remote_address(), tcp_addr);
    // TCP waited for the head start, and did not wait for QUIC to give up
    // (the dial's 20 s).
    assert!(took >= head_start, "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let server_side = server.await.unwrap();
    assert_eq!(
        server_side.handle().remote_address(),
        match &connected {
            Connected::Tls(c) => c.handle().local_address(),
            Connected::Quic(_) => unreachable!(),
        }
    );
}

#[tokio::test]
async fn a_failed_quic_attempt_starts_tcp_at_once() {
    let identity = TlsIdentity::generate(NAME).unwrap();
    let tls = tls_server(&identity).await;
    let tcp_addr = tls.local_addr().unwrap();
    let _server = tokio::spawn(async move {
        let accepted = tls.accept().await.unwrap();
        let conn = accepted.handshake(Duration::from_secs(5)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(conn);
    });
    // Port 0 is refused by quinn at once. With a head start longer than the
    // dial's timeout, TCP can only win if QUIC's failure starts it.
    let refused: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let connected = natter_net::dial(plan(
        refused,
        tcp_addr,
        Duration::from_secs(3600),
        Duration::from_secs(20),
    ))
    .await
    .unwrap();
    assert_eq!(connected.transport(), Transport::Tls);
}

#[tokio::test]
async fn when_both_fail_the_error_names_both_attempts() {
    let (_silent, udp) = silent_udp();
    let tcp = closed_tcp_port();
    let err = natter_net::dial(plan(
        udp,
        tcp,
        Duration::from_millis(100),
        Duration::from_secs(1),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(&err.quic, Some(Attempt { addr, error: QuicDialError::Timeout }) if *addr == udp),
        "{err:?}"
    );
    assert!(
        matches!(&err.tcp, Some(Attempt { addr, error: ConnectError::Tcp(e) }) if *addr == tcp
            && e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.starts_with("QUIC: timed out; "), "{text}");
    assert!(
        text.contains(&format!("TLS over TCP to {tcp}: tcp connect: ")),
        "{text}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn the_error_names_the_tcp_address_only_when_it_differs() {
    let addr: SocketAddr = "192.0.2.1:443".parse().unwrap();
    let same = DialError {
        quic: Some(Attempt {
            addr,
            error: QuicDialError::Timeout,
        }),
        tcp: Some(Attempt {
            addr,
            error: ConnectError::Timeout,
        }),
    };
    assert_eq!(same.to_string(), "QUIC: timed out; TLS over TCP: timed out");
    let tcp_only = DialError {
        quic: None,
        tcp: Some(Attempt {
            addr,
            error: ConnectError::Timeout,
        }),
    };
    assert_eq!(tcp_only.to_string(), "TLS over TCP: timed out");
    let nothing = DialError {
        quic: None,
        tcp: None,
    };
    assert_eq!(nothing.to_string(), "no transport to try");
}
