//! The TLS-over-TCP listener (the firewall fallback) and the client's
//! choice of transport, over real sockets on loopback with a real SQLite
//! file.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    client, pinned_key, raw_tls, read_records, start, tcp_client, tcp_config, user_key,
    with_timeout,
};
use natter_client::login::{LoginTarget, Transport};
use natter_client::{ClientError, Home, LoginClient, home::LoginStatus};
use natter_proto::cert;
use natter_proto::messages::{Envelope, Ping, SupernodeAnnounce, envelope::Body};
use natter_proto::record::{self, Record};
use prost::Message;
use tokio::io::AsyncWriteExt;

/// A UDP socket that receives and never answers: QUIC to it gets nowhere,
/// as behind a firewall that drops UDP.
async fn silent_udp() -> (tokio::net::UdpSocket, SocketAddr) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A loopback TCP port with nothing listening.
fn closed_tcp_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn ping(id: u64) -> Envelope {
    Envelope::new(id, Body::Ping(Ping { nonce: id * 1000 }))
}

#[tokio::test]
async fn register_login_and_buddy_blob_over_tls_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(tcp_config(dir.path())).await;
    let tcp_addr = server.tcp_addr().unwrap();
    assert_eq!(tcp_addr.ip(), server.local_addr().ip());
    let c = tcp_client(&server).await;
    assert_eq!(c.transport(), Transport::Tls);
    assert_eq!(c.remote_addr(), tcp_addr);
    assert!(c.quic_connection().is_none());

    assert_eq!(c.register("Alice", "correct horse").await.unwrap(), "alice");
    let key = user_key(0);
    let outcome = c
        .login("alice", "correct horse", &key, &[0x11; 32])
        .await
        .unwrap();
    // The certificate verifies against the key the server wrote, exactly as
    // over QUIC.
    let pinned = natter_client::tls::read_login_key(&dir.path().join("login-key.pub")).unwrap();
    let verified = cert::verify(
        &outcome.certificate,
        &pinned,
        natter_client::now_unix_secs(),
    )
    .unwrap();
    assert_eq!(verified.name, "alice");
    assert_eq!(verified.public_key, key.to_public_key());
    let e = c
        .login("alice", "wrong password", &key, &[0x11; 32])
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::WrongPassword(_)), "{e}");

    // Buddy blob round trip; a QUIC client sees what the TCP client wrote.
    let buddies = vec!["bob".to_owned(), "carol".to_owned()];
    let v1 = natter_client::buddies::push(&c, "alice", "correct horse", 0, &buddies)
        .await
        .unwrap();
    assert_eq!(v1, 1);
    let (version, list) = natter_client::buddies::pull(&c, "alice", "correct horse")
        .await
        .unwrap();
    assert_eq!((version, list.clone()), (1, buddies.clone()));
    let quic = client(&server).await;
    assert_eq!(quic.transport(), Transport::Quic);
    let (_, list) = natter_client::buddies::pull(&quic, "alice", "correct horse")
        .await
        .unwrap();
    assert_eq!(list, buddies);
    quic.close().await;
    c.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn requests_in_flight_on_one_tcp_connection_get_their_own_replies() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tcp_config(dir.path());
    // Fewer slots than requests: the rest wait their turn, none is lost.
    config.max_streams_per_connection = 2;
    let server = start(config).await;
    let c = tcp_client(&server).await;
    c.register("dora", "password123").await.unwrap();

    // Pings, registrations and logins at once on one connection.
    let key = user_key(0);
    let replies = futures_join_all((0..24u64).map(|i| {
        let c = &c;
        let key = key.clone();
        async move {
            match i % 3 {
                0 => {
                    let reply = c.exchange(&ping(1000 + i)).await.unwrap();
                    assert_eq!(reply.request_id, 1000 + i);
                    match reply.body {
                        Some(Body::Pong(p)) => assert_eq!(p.nonce, (1000 + i) * 1000),
                        other => panic!("ping {i}: {other:?}"),
                    }
                    format!("pong {i}")
                }
                1 => c
                    .register(&format!("user{i:02}"), "password123")
                    .await
                    .unwrap(),
                _ => {
                    let outcome = c
                        .login("dora", "password123", &key, &[0x11; 32])
                        .await
                        .unwrap();
                    outcome.verified.name
                }
            }
        }
    }))
    .await;
    for (i, reply) in replies.iter().enumerate() {
        match i % 3 {
            0 => assert_eq!(reply, &format!("pong {i}")),
            1 => assert_eq!(reply, &format!("user{i:02}")),
            _ => assert_eq!(reply, "dora"),
        }
    }

    // On the wire: requests written back to back in one write, each answered
    // with its own id.
    let mut raw = raw_tls(&server).await;
    let mut bytes = Vec::new();
    for id in [7, 3, 42, 9] {
        record::encode_envelope(&ping(id), &mut bytes).unwrap();
    }
    raw.write_all(&bytes).await.unwrap();
    raw.flush().await.unwrap();
    let mut answered: Vec<u64> = read_records(&mut raw, 4)
        .await
        .into_iter()
        .map(|r| match r {
            Record::Envelope(e) => match e.body {
                Some(Body::Pong(p)) => {
                    assert_eq!(p.nonce, e.request_id * 1000);
                    e.request_id
                }
                other => panic!("unexpected reply {other:?}"),
            },
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    answered.sort_unstable();
    assert_eq!(answered, [3, 7, 9, 42]);
    c.close().await;
    server.shutdown().await;
}

/// Runs futures concurrently (on this task) and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    with_timeout(std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    }))
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test]
async fn malformed_records_close_only_that_tcp_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(tcp_config(dir.path())).await;
    let good_tcp = tcp_client(&server).await;
    let good_quic = client(&server).await;

    let envelope_record = |body: Vec<u8>| {
        let mut bytes = vec![record::KIND_ENVELOPE];
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend(body);
        bytes
    };
    let mut wrong_version = ping(1);
    wrong_version.version = 99;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown record kind", vec![0x09, 0, 0, 0, 1, 0]),
        (
            "oversized envelope record",
            vec![record::KIND_ENVELOPE, 0, 1, 0, 1],
        ),
        (
            "empty envelope record",
            vec![record::KIND_ENVELOPE, 0, 0, 0, 0],
        ),
        (
            "garbage protobuf",
            envelope_record(vec![0xff, 0xff, 0xff, 0xff]),
        ),
        (
            "unsupported version",
            envelope_record(wrong_version.encode_to_vec()),
        ),
        ("no body", envelope_record(vec![0x08, 0x01])),
        (
            "datagram record",
            record::to_bytes(&Record::Datagram(vec![1, 2, 3])).unwrap(),
        ),
        (
            "keepalive with a body",
            vec![record::KIND_KEEPALIVE, 0, 0, 0, 1, 0],
        ),
    ];
    for (what, bytes) in cases {
        let mut raw = raw_tls(&server).await;
        // A good request first: it is answered, then the bad record closes.
        let mut first = Vec::new();
        record::encode_envelope(&ping(5), &mut first).unwrap();
        raw.write_all(&first).await.unwrap();
        raw.flush().await.unwrap();
        let records = read_records(&mut raw, 1).await;
        assert!(
            matches!(&records[..], [Record::Envelope(e)] if e.request_id == 5),
            "{what}: {records:?}"
        );
        raw.write_all(&bytes).await.unwrap();
        raw.flush().await.unwrap();
        let records = read_records(&mut raw, usize::MAX).await;
        match records.last() {
            Some(Record::Close { code, reason }) => {
                assert_eq!(*code, natter_net::CLOSE_MALFORMED, "{what}: {reason}");
                assert_eq!(
                    *code,
                    natter_login::session::CLOSE_MALFORMED,
                    "same code as QUIC"
                );
                assert!(reason.contains("malformed"), "{what}: {reason}");
            }
            other => panic!("{what}: expected a CLOSE record, got {other:?}"),
        }
        // The other connections keep working.
        let reply = good_tcp
            .request(Body::Ping(Ping { nonce: 3 }), "")
            .await
            .unwrap();
        assert!(matches!(reply, Body::Pong(p) if p.nonce == 3), "{what}");
        let reply = good_quic
            .request(Body::Ping(Ping { nonce: 4 }), "")
            .await
            .unwrap();
        assert!(matches!(reply, Body::Pong(p) if p.nonce == 4), "{what}");
    }
    // New connections are served too.
    let fresh = tcp_client(&server).await;
    fresh.register("frank", "password123").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_wrong_pinned_key_fails_the_tls_handshake_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(tcp_config(dir.path())).await;
    let other = user_key(1).to_public_key();
    let tcp_addr = server.tcp_addr().unwrap();

    let err = LoginClient::connect_tcp(tcp_addr, other.clone())
        .await
        .expect_err("the handshake must fail with the wrong pinned key");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("TLS over TCP"), "{text}");
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("--login-key"), "{text}");

    // Both transports tried, both refused, both named.
    let target = LoginTarget::new(server.local_addr()).with_tcp(tcp_addr);
    let err = LoginClient::connect_to(&target, other).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("QUIC: "), "{text}");
    assert!(
        text.contains(&format!("TLS over TCP to {tcp_addr}: ")),
        "{text}"
    );
    assert!(text.contains("--login-key"), "{text}");

    // The right key still works.
    let c = tcp_client(&server).await;
    c.request(Body::Ping(Ping { nonce: 1 }), "").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn announce_with_tcp_is_returned_in_login_reply() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(tcp_config(dir.path())).await;
    let c = tcp_client(&server).await;
    c.register("kate", "password123").await.unwrap();
    for i in 0..2 {
        natter_login::admin::set_supernode_state(
            common::admin_db(dir.path()).get(),
            &natter_proto::cert::fingerprint(&user_key(i).to_public_key()),
            natter_login::storage::KeyState::Approved,
        )
        .await
        .unwrap();
    }
    let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap().into());
    // Signed by approved key `key` over `client`'s connection (PROTOCOL.md 8.1).
    let signed =
        |client: &natter_client::LoginClient, quic: &str, tcp: Option<&str>, key: usize| {
            use natter_proto::{binding, cert};
            let key = user_key(key);
            let public = key.to_public_key();
            let node_id = cert::key_id(&public);
            let exporter = client.exporter().unwrap();
            let mut reflector = quic.parse::<SocketAddr>().unwrap();
            reflector.set_port(reflector.port() + 1);
            Body::SupernodeAnnounce(SupernodeAnnounce {
                addr: addr(quic),
                node_id: node_id.to_vec(),
                tcp: tcp.and_then(addr),
                public_key: cert::public_key_der(&public),
                reflector: Some(reflector.into()),
                signature: cert::sign(&key, &binding::announce_message(&exporter, &node_id)),
                ..Default::default()
            })
        };
    let announce = |quic: &str, tcp: Option<&str>, key: usize| signed(&c, quic, tcp, key);

    // Over TCP the source address is the TCP peer's: the unspecified IP
    // becomes 127.0.0.1 in both addresses.
    let reply = c
        .request(announce("0.0.0.0:7000", Some("0.0.0.0:7443"), 0), "")
        .await
        .unwrap();
    let Body::SupernodeAnnounced(announced) = reply else {
        panic!("expected SupernodeAnnounced");
    };
    let certified = natter_proto::cert::verify_supernode(
        announced.certificate.as_ref().unwrap(),
        server.public_key(),
        natter_client::now_unix_secs(),
    )
    .unwrap();
    assert_eq!(certified.addrs.tcp.unwrap().to_string(), "127.0.0.1:7443");
    // One without a TCP listener, over QUIC.
    let quic = client(&server).await;
    quic.request(signed(&quic, "127.0.0.1:7001", None, 1), "")
        .await
        .unwrap();
    // A TCP address on another host, or port 0, is refused.
    for bad in ["192.0.2.1:443", "127.0.0.1:0"] {
        let e = c
            .request(announce("127.0.0.1:7002", Some(bad), 0), "")
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Server { code, .. } if code == "ERROR_CODE_MALFORMED"),
            "{bad}: {e}"
        );
    }

    let outcome = c
        .login("kate", "password123", &user_key(0), &[0x11; 32])
        .await
        .unwrap();
    let mut seen: Vec<(String, Option<String>)> = outcome
        .supernodes
        .iter()
        .map(|s| {
            (
                SocketAddr::try_from(s.addr.as_ref().unwrap())
                    .unwrap()
                    .to_string(),
                s.tcp
                    .as_ref()
                    .map(|t| SocketAddr::try_from(t).unwrap().to_string()),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "127.0.0.1:7000".to_owned(),
                Some("127.0.0.1:7443".to_owned())
            ),
            ("127.0.0.1:7001".to_owned(), None),
        ]
    );

    // A later announce without the listener clears it.
    c.request(announce("127.0.0.1:7000", None, 0), "")
        .await
        .unwrap();
    let outcome = c
        .login("kate", "password123", &user_key(0), &[0x11; 32])
        .await
        .unwrap();
    assert!(outcome.supernodes.iter().all(|s| s.tcp.is_none()));
    server.shutdown().await;
}

#[tokio::test]
async fn the_client_falls_back_to_tcp_when_quic_gets_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(tcp_config(dir.path())).await;
    common::client(&server)
        .await
        .register("nina", "password123")
        .await
        .unwrap();
    let (_silent, udp) = silent_udp().await;
    let target = LoginTarget::new(udp).with_tcp(server.tcp_addr().unwrap());

    let started = Instant::now();
    let c = with_timeout(LoginClient::connect_to(&target, pinned_key(&server)))
        .await
        .unwrap();
    assert_eq!(c.transport(), Transport::Tls);
    assert_eq!(c.remote_addr(), server.tcp_addr().unwrap());
    // After the head start, not after the QUIC timeout (15 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    c.login("nina", "password123", &user_key(0), &[0x11; 32])
        .await
        .unwrap();
    c.close().await;

    // The same through the home directory, which reports the transport.
    let home_dir = tempfile::tempdir().unwrap();
    let home = Home::open(home_dir.path().join("h")).unwrap();
    let status =
        with_timeout(home.login(target, server.public_key(), "nina", "password123", false))
            .await
            .unwrap();
    let LoginStatus::Fresh { transport, .. } = status else {
        panic!("first login must contact the server");
    };
    assert_eq!(transport, Transport::Tls);

    // QUIC aimed at the TCP listener's port (nothing there on UDP), TCP
    // defaulting to the same address: the deployment shape with UDP blocked.
    let c = with_timeout(LoginClient::connect(
        server.tcp_addr().unwrap(),
        pinned_key(&server),
    ))
    .await
    .unwrap();
    assert_eq!(c.transport(), Transport::Tls);
    c.request(Body::Ping(Ping { nonce: 1 }), "").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn the_client_uses_quic_when_both_are_available() {
    let dir = tempfile::tempdir().unwrap();
    // QUIC and TLS over TCP on one port number, as deployments run both on
    // 443. (A free UDP port whose TCP twin is free too; retried on a race.)
    let mut tries = 0;
    let server = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap();
        let free = std::net::TcpListener::bind(port).is_ok();
        drop(udp);
        if free {
            let mut config = tcp_config(dir.path());
            config.listen = port;
            config.tcp_listen = Some(port);
            match natter_login::LoginServer::start(config).await {
                Ok(server) => break server,
                Err(e) if tries < 10 => eprintln!("port {port}: {e}; retrying"),
                Err(e) => panic!("{e}"),
            }
        }
        tries += 1;
        assert!(tries < 20, "no free UDP+TCP port pair");
    };
    assert_eq!(server.tcp_addr(), Some(server.local_addr()));

    let c = LoginClient::connect(server.local_addr(), pinned_key(&server))
        .await
        .unwrap();
    assert_eq!(c.transport(), Transport::Quic);
    assert!(c.quic_connection().is_some());
    c.register("olga", "password123").await.unwrap();
    c.close().await;

    let home_dir = tempfile::tempdir().unwrap();
    let home = Home::open(home_dir.path().join("h")).unwrap();
    let status = home
        .login(
            server.local_addr(),
            server.public_key(),
            "olga",
            "password123",
            false,
        )
        .await
        .unwrap();
    let LoginStatus::Fresh { transport, .. } = status else {
        panic!("first login must contact the server");
    };
    assert_eq!(transport, Transport::Quic);
    server.shutdown().await;
}

#[tokio::test]
async fn when_both_transports_fail_the_error_names_both() {
    let (_silent, udp) = silent_udp().await;
    let tcp = closed_tcp_port();
    let key = user_key(0).to_public_key();
    let target = LoginTarget {
        timeout: Duration::from_secs(2),
        ..LoginTarget::new(udp).with_tcp(tcp)
    };
    let err = with_timeout(LoginClient::connect_to(&target, key))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("cannot reach the login server at"),
        "{text}"
    );
    assert!(text.contains("QUIC: timed out"), "{text}");
    assert!(text.contains(&format!("TLS over TCP to {tcp}: ")), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
}

#[tokio::test]
async fn idle_tcp_connections_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tcp_config(dir.path());
    config.idle_timeout = Duration::from_millis(500);
    let server = start(config).await;
    let c = tcp_client(&server).await;
    c.request(Body::Ping(Ping { nonce: 1 }), "").await.unwrap();
    // The client sends nothing (like a QUIC login connection, no keepalives).
    let closed = with_timeout(async {
        loop {
            if let Some(reason) = c.tcp_close_reason() {
                return reason;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(closed, (0, "idle timeout".to_owned()));
    let e = c
        .request(Body::Ping(Ping { nonce: 2 }), "")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::ConnectionClosed(r) if r.contains("idle")),
        "{e}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn tcp_connections_count_against_the_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tcp_config(dir.path());
    config.max_connections = 2;
    let server = start(config).await;
    let quic = client(&server).await;
    let tcp = tcp_client(&server).await;
    tcp.request(Body::Ping(Ping { nonce: 1 }), "")
        .await
        .unwrap();
    quic.request(Body::Ping(Ping { nonce: 1 }), "")
        .await
        .unwrap();
    // A third connection, over TCP, is refused.
    let refused = LoginClient::connect_tcp(server.tcp_addr().unwrap(), pinned_key(&server)).await;
    assert!(
        matches!(refused, Err(ClientError::Connect { .. })),
        "{refused:?}"
    );
    // Once one closes, its slot is free again.
    tcp.close().await;
    let again = with_timeout(async {
        loop {
            if let Ok(c) =
                LoginClient::connect_tcp(server.tcp_addr().unwrap(), pinned_key(&server)).await
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    again
        .request(Body::Ping(Ping { nonce: 2 }), "")
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_tcp_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(tcp_config(dir.path())).await;
    let tcp_addr = server.tcp_addr().unwrap();
    let c = tcp_client(&server).await;
    c.request(Body::Ping(Ping { nonce: 1 }), "").await.unwrap();
    with_timeout(server.shutdown()).await;
    let closed = with_timeout(async {
        loop {
            if let Some(reason) = c.tcp_close_reason() {
                return reason;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(closed, (2, "server shutting down".to_owned()));
    assert!(c.request(Body::Ping(Ping { nonce: 2 }), "").await.is_err());
    // Nothing accepts any more.
    assert!(
        LoginClient::connect_tcp(tcp_addr, user_key(0).to_public_key())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_its_replies_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tcp_config(dir.path());
    config.request_timeout = Duration::from_secs(1);
    let server = start(config).await;
    let c = tcp_client(&server).await;
    c.register("sam", "password123").await.unwrap();
    c.buddy_blob_put("sam", "password123", 0, vec![7; 40_000])
        .await
        .unwrap();

    // A raw TLS connection with a tiny receive buffer that asks for the
    // 40 kB blob 200 times and reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.tcp_addr().unwrap()).await.unwrap();
    let config = natter_client::tls::tcp_client_config(&pinned_key(&server)).unwrap();
    let name = rustls::pki_types::ServerName::try_from(natter_client::tls::TLS_SERVER_NAME)
        .unwrap()
        .to_owned();
    let mut raw = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let asked = 200;
    for id in 1..=asked {
        let get = Body::BuddyBlobGet(natter_proto::messages::BuddyBlobGet {
            name: "sam".into(),
            password: "password123".into(),
        });
        record::encode_envelope(&Envelope::new(id, get), &mut bytes).unwrap();
    }
    raw.write_all(&bytes).await.unwrap();
    raw.flush().await.unwrap();
    // Longer than the request deadline: the server gives up on us.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Reading now drains what was sent, then the end of the stream (a
    // connection left open would fail this step's timeout instead). The
    // CLOSE record is best effort: the full buffers may have kept it out.
    let records = read_records(&mut raw, usize::MAX).await;
    let replies = records
        .iter()
        .filter(|r| matches!(r, Record::Envelope(_)))
        .count();
    assert!(
        (replies as u64) < asked,
        "all {replies} replies arrived: the connection was never stuck"
    );
    if let Some(Record::Close { code, reason }) = records.last() {
        assert_eq!(*code, natter_login::session::CLOSE_SLOW_CLIENT, "{reason}");
    }
    // Everyone else is served.
    c.request(Body::Ping(Ping { nonce: 9 }), "").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tcp_config(dir.path());
    config.max_connections_per_ip = 2;
    let server = start(config).await;
    // 127.0.0.1 holds two connections, one per transport.
    let quic = client(&server).await;
    let tcp = tcp_client(&server).await;
    for c in [&quic, &tcp] {
        c.request(Body::Ping(Ping { nonce: 1 }), "").await.unwrap();
    }
    // A third from the same address is refused, over either transport.
    let refused = LoginClient::connect_tcp(server.tcp_addr().unwrap(), pinned_key(&server)).await;
    assert!(
        matches!(refused, Err(ClientError::Connect { .. })),
        "{refused:?}"
    );
    let refused = LoginClient::connect(server.local_addr(), pinned_key(&server)).await;
    assert!(refused.is_err(), "a third QUIC connection from one address");
    // Another address is still served.
    let mut other = common::raw_tls_from(&server, std::net::Ipv4Addr::new(127, 0, 0, 2)).await;
    let mut bytes = Vec::new();
    record::encode_envelope(&ping(11), &mut bytes).unwrap();
    other.write_all(&bytes).await.unwrap();
    other.flush().await.unwrap();
    let records = read_records(&mut other, 1).await;
    assert!(
        matches!(&records[..], [Record::Envelope(e)] if e.request_id == 11
            && matches!(e.body, Some(Body::Pong(_)))),
        "{records:?}"
    );
    server.shutdown().await;
}
