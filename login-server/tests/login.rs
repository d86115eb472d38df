//! End-to-end tests of the login server over real QUIC on loopback with a
//! real SQLite file.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{client, start, test_config, user_key, with_timeout};
use natter_client::{ClientError, Home, home::LoginStatus};
use natter_proto::cert;
use natter_proto::frame;
use natter_proto::messages::{Envelope, Ping, envelope::Body};

#[tokio::test]
async fn register_login_verify_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let c = client(&server).await;
    assert_eq!(c.register("Alice", "correct horse").await.unwrap(), "alice");

    let key = user_key(0);
    let outcome = c
        .login("alice", "correct horse", &key, &[0x11; 32])
        .await
        .unwrap();
    // Verify independently against the file the server wrote.
    let pinned = natter_client::tls::read_login_key(&dir.path().join("login-key.pub")).unwrap();
    let now = natter_client::now_unix_secs();
    let verified = cert::verify(&outcome.certificate, &pinned, now).unwrap();
    assert_eq!(verified.name, "alice");
    assert_eq!(verified.public_key, key.to_public_key());
    // Default validity: 24 h.
    assert!(
        (verified.not_after - now - 24 * 3600).abs() <= 5,
        "{verified:?}"
    );
    assert!((outcome.server_time_ms / 1000 - now).abs() <= 5);
    // Mixed-case login works too.
    c.login("ALICE", "correct horse", &key, &[0x11; 32])
        .await
        .unwrap();
    c.close().await;
    let first_fingerprint = cert::fingerprint(server.public_key());
    server.shutdown().await;

    // Restart on the same directory: same key, accounts kept.
    let server = start(test_config(dir.path())).await;
    assert_eq!(cert::fingerprint(server.public_key()), first_fingerprint);
    let c = client(&server).await;
    let outcome = c
        .login("alice", "correct horse", &key, &[0x11; 32])
        .await
        .unwrap();
    cert::verify(
        &outcome.certificate,
        &pinned,
        natter_client::now_unix_secs(),
    )
    .unwrap();
    assert!(matches!(
        c.register("alice", "another password").await,
        Err(ClientError::NameTaken(_))
    ));
    let users = server.service().store().list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].display_name, "Alice");
    assert!(users[0].last_login.is_some());
    c.close().await;
    server.shutdown().await;
}

#[test]
fn client_and_server_agree_on_tls_constants() {
    assert_eq!(natter_login::ALPN, natter_client::tls::ALPN);
    assert_eq!(
        natter_login::datadir::TLS_SERVER_NAME,
        natter_client::tls::TLS_SERVER_NAME
    );
    assert_eq!(
        natter_login::datadir::TLS_ISSUER_CN,
        natter_client::tls::TLS_ISSUER_CN
    );
}

#[tokio::test]
async fn a_client_pinning_another_key_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let other = user_key(1).to_public_key();
    let result = natter_client::LoginClient::connect(server.local_addr(), other).await;
    let err = result.expect_err("handshake must fail with the wrong pinned key");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("--login-key"), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn fifty_parallel_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let c = client(&server).await;
        tasks.spawn(async move {
            let r = c.register(&format!("user{i:02}"), "password123").await;
            c.close().await;
            r
        });
    }
    let mut ok = 0;
    while let Some(r) = with_timeout(tasks.join_next()).await {
        r.unwrap().unwrap();
        ok += 1;
    }
    assert_eq!(ok, 50);
    assert_eq!(
        server.service().store().list_users().await.unwrap().len(),
        50
    );
    server.shutdown().await;
}

#[tokio::test]
async fn twenty_racing_registrations_of_one_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(client(&server).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            // Differently cased spellings of one name.
            let name = if i % 2 == 0 { "Racer" } else { "racer" };
            let r = c.register(name, &format!("password-{i}")).await;
            c.close().await;
            r
        });
    }
    let (mut won, mut taken) = (0, 0);
    while let Some(r) = with_timeout(tasks.join_next()).await {
        match r.unwrap() {
            Ok(name) => {
                assert_eq!(name, "racer");
                won += 1;
            }
            Err(ClientError::NameTaken(_)) => taken += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((won, taken), (1, 19));
    assert_eq!(
        server.service().store().list_users().await.unwrap().len(),
        1
    );
    server.shutdown().await;
}

#[tokio::test]
async fn every_bad_input_gets_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let c = client(&server).await;
    let key = user_key(0);
    c.register("bob", "password123").await.unwrap();

    let e = c.register("BOB", "password456").await.unwrap_err();
    assert!(matches!(e, ClientError::NameTaken(_)), "{e}");
    assert_eq!(e.to_string(), "the name \"BOB\" is already taken");

    for bad in ["ab", "1bob", "bob smith", "b/ob", "émile", &"x".repeat(33)] {
        let e = c.register(bad, "password123").await.unwrap_err();
        assert!(matches!(e, ClientError::BadName(_)), "{bad:?}: {e}");
        let e = c
            .login(bad, "password123", &key, &[0x11; 32])
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::BadName(_)), "{bad:?}: {e}");
    }
    let e = c.register("carol", "short").await.unwrap_err();
    assert!(matches!(e, ClientError::ShortPassword(_)), "{e}");

    let e = c
        .login("nobody", "password123", &key, &[0x11; 32])
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::UnknownUser(_)), "{e}");
    let e = c
        .login("bob", "wrong password", &key, &[0x11; 32])
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::WrongPassword(_)), "{e}");
    assert_eq!(e.to_string(), "wrong password for \"bob\"");

    // A public key that is not RSA-2048+ PKCS#1.
    let e = c
        .request(
            Body::LoginRequest(natter_proto::messages::LoginRequest {
                name: "bob".into(),
                password: "password123".into(),
                public_key: vec![1, 2, 3],
                ..Default::default()
            }),
            "bob",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Server { code, .. } if code == "ERROR_CODE_MALFORMED"),
        "{e}"
    );

    // A message the login server does not serve.
    let e = c
        .request(Body::Pong(natter_proto::messages::Pong { nonce: 1 }), "")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Server { code, .. } if code == "ERROR_CODE_MALFORMED"),
        "{e}"
    );

    // Disabled account: right password, refused.
    natter_login::admin::set_disabled(common::admin_db(dir.path()).get(), "Bob", true)
        .await
        .unwrap();
    let e = c
        .login("bob", "password123", &key, &[0x11; 32])
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::AccountDisabled(_)), "{e}");
    natter_login::admin::set_disabled(common::admin_db(dir.path()).get(), "bob", false)
        .await
        .unwrap();
    c.login("bob", "password123", &key, &[0x11; 32])
        .await
        .unwrap();

    // The connection survived all of it.
    let pong = c.request(Body::Ping(Ping { nonce: 7 }), "").await.unwrap();
    assert!(matches!(pong, Body::Pong(p) if p.nonce == 7));
    c.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_passwords_are_throttled_with_growing_delays() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.throttle.free_failures_per_name = 2;
    config.throttle.base_delay = Duration::from_millis(400);
    let server = start(config).await;
    let c = client(&server).await;
    let key = user_key(0);
    c.register("dave", "password123").await.unwrap();
    c.register("erin", "password123").await.unwrap();

    for _ in 0..2 {
        let e = c
            .login("dave", "bad password", &key, &[0x11; 32])
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::WrongPassword(_)), "{e}");
    }
    // Third failure starts a 400 ms block.
    let e = c
        .login("dave", "bad password", &key, &[0x11; 32])
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::WrongPassword(_)), "{e}");
    let e = c
        .login("dave", "password123", &key, &[0x11; 32])
        .await
        .unwrap_err();
    let ClientError::Throttled {
        retry_after_ms: first,
    } = e
    else {
        panic!("expected throttling, got {e}");
    };
    assert!((1..=400).contains(&first), "{first}");
    assert!(e.to_string().starts_with("too many failed attempts"));
    // Another name from the same address is not blocked by the per-name record.
    c.login("erin", "password123", &key, &[0x11; 32])
        .await
        .unwrap();

    // After the block, the next failure doubles the delay.
    tokio::time::sleep(Duration::from_millis(u64::from(first) + 50)).await;
    let e = c
        .login("dave", "bad password", &key, &[0x11; 32])
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::WrongPassword(_)), "{e}");
    let e = c
        .login("dave", "password123", &key, &[0x11; 32])
        .await
        .unwrap_err();
    let ClientError::Throttled {
        retry_after_ms: second,
    } = e
    else {
        panic!("expected throttling, got {e}");
    };
    assert!(second > 400 && second <= 800, "{second}");

    // Once it lifts, the right password works and clears the record.
    tokio::time::sleep(Duration::from_millis(u64::from(second) + 50)).await;
    c.login("dave", "password123", &key, &[0x11; 32])
        .await
        .unwrap();
    let e = c
        .login("dave", "bad password", &key, &[0x11; 32])
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::WrongPassword(_)), "{e}");
    c.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn guessing_across_names_is_throttled_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.throttle.free_failures_per_addr = 3;
    config.throttle.base_delay = Duration::from_secs(30);
    let server = start(config).await;
    let c = client(&server).await;
    let key = user_key(0);
    for i in 0..3 {
        let e = c
            .login(&format!("ghost{i}"), "password123", &key, &[0x11; 32])
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::UnknownUser(_)), "{e}");
    }
    let e = c
        .login("ghost3", "password123", &key, &[0x11; 32])
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::UnknownUser(_)), "{e}");
    let e = c
        .login("ghost4", "password123", &key, &[0x11; 32])
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Throttled { retry_after_ms } if retry_after_ms > 25_000),
        "{e}"
    );
    c.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_or_oversized_frames_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let good = client(&server).await;
    good.register("frank", "password123").await.unwrap();

    let mut valid = frame::to_frame(&Envelope::new(1, Body::Ping(Ping { nonce: 1 }))).unwrap();
    let mut wrong_version = Envelope::new(1, Body::Ping(Ping { nonce: 1 }));
    wrong_version.version = 99;
    let trailing = {
        valid.extend_from_slice(&[0, 0]);
        std::mem::take(&mut valid)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "oversized length prefix",
            ((frame::MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec(),
        ),
        ("garbage protobuf", vec![0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]),
        ("truncated frame", vec![0, 0, 0, 50, 1, 2, 3]),
        (
            "unsupported version",
            frame::to_frame(&wrong_version).unwrap(),
        ),
        ("no body", vec![0, 0, 0, 2, 0x08, 0x01]),
        ("trailing bytes", trailing),
    ];
    for (what, bytes) in cases {
        let bad = client(&server).await;
        let e = with_timeout(bad.raw_exchange(&bytes)).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::ConnectionClosed(reason) if reason.contains("malformed")),
            "{what}: {e}"
        );
        // That connection is gone for good.
        let e = bad
            .request(Body::Ping(Ping { nonce: 2 }), "")
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::ConnectionClosed(_)), "{what}: {e}");
        // The other connection keeps working.
        let reply = good
            .request(Body::Ping(Ping { nonce: 3 }), "")
            .await
            .unwrap();
        assert!(matches!(reply, Body::Pong(p) if p.nonce == 3), "{what}");
    }
    // A full frame of maximum size is still served (then refused as a request).
    let huge = Envelope::new(
        9,
        Body::BuddyBlobGet(natter_proto::messages::BuddyBlobGet {
            name: "frank".into(),
            password: "p".repeat(frame::MAX_FRAME_LEN - 64),
        }),
    );
    let e = good
        .request(huge.body.clone().unwrap(), "frank")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Server { code, .. } if code == "ERROR_CODE_MALFORMED"),
        "{e}"
    );
    // New connections are served too.
    let fresh = client(&server).await;
    fresh
        .login("frank", "password123", &user_key(0), &[0x11; 32])
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn buddy_blob_sync_between_machines_and_stale_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let machine_a = client(&server).await;
    let machine_b = client(&server).await;
    machine_a.register("grace", "password123").await.unwrap();

    let (version, list) = natter_client::buddies::pull(&machine_b, "grace", "password123")
        .await
        .unwrap();
    assert_eq!((version, list.len()), (0, 0));

    let buddies = vec!["heidi".to_owned(), "ivan".to_owned()];
    let v1 = natter_client::buddies::push(&machine_a, "grace", "password123", 0, &buddies)
        .await
        .unwrap();
    assert_eq!(v1, 1);
    // The server stores only ciphertext.
    let raw = machine_b
        .buddy_blob_get("grace", "password123")
        .await
        .unwrap();
    assert_eq!(raw.version, 1);
    assert!(!raw.ciphertext.windows(5).any(|w| w == b"heidi"));

    let (version, list) = natter_client::buddies::pull(&machine_b, "grace", "password123")
        .await
        .unwrap();
    assert_eq!((version, list), (1, buddies.clone()));

    // B updates from version 1; A's write based on version 0 is stale.
    let more = vec!["heidi".to_owned(), "ivan".to_owned(), "judy".to_owned()];
    assert_eq!(
        natter_client::buddies::push(&machine_b, "grace", "password123", 1, &more)
            .await
            .unwrap(),
        2
    );
    let e = natter_client::buddies::push(&machine_a, "grace", "password123", 0, &buddies)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::StaleVersion(d) if d.contains('2')),
        "{e}"
    );
    let e = machine_a
        .buddy_blob_put("grace", "password123", 1, b"x".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::StaleVersion(_)), "{e}");
    let (_, list) = natter_client::buddies::pull(&machine_a, "grace", "password123")
        .await
        .unwrap();
    assert_eq!(list, more);

    // The blob needs the password.
    let e = machine_a
        .buddy_blob_get("grace", "not the password")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::WrongPassword(_)), "{e}");
    server.shutdown().await;
}

#[tokio::test]
async fn supernode_announces_seed_login_replies() {
    use natter_proto::binding;
    use natter_proto::messages::SupernodeAnnounce;
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let c = client(&server).await;
    c.register("kate", "password123").await.unwrap();
    for i in 0..2 {
        natter_login::admin::set_supernode_state(
            common::admin_db(dir.path()).get(),
            &cert::fingerprint(&user_key(i).to_public_key()),
            natter_login::storage::KeyState::Approved,
        )
        .await
        .unwrap();
    }
    let exporter =
        natter_net::exporter::quic_exporter(c.quic_connection().expect("QUIC client")).unwrap();

    // Signed by `key` over this connection's exporter (PROTOCOL.md 8.1).
    let announce = |ip: &str, port: u16, key: usize| {
        let key = user_key(key);
        let public = key.to_public_key();
        let node_id = cert::key_id(&public);
        let addr = std::net::SocketAddr::new(ip.parse().unwrap(), port);
        Body::SupernodeAnnounce(SupernodeAnnounce {
            addr: Some(addr.into()),
            node_id: node_id.to_vec(),
            tcp: None,
            public_key: cert::public_key_der(&public),
            reflector: Some(std::net::SocketAddr::new(addr.ip(), port + 1).into()),
            signature: cert::sign(&key, &binding::announce_message(&exporter, &node_id)),
            ..Default::default()
        })
    };
    let reply = c.request(announce("0.0.0.0", 7000, 0), "").await.unwrap();
    let Body::SupernodeAnnounced(announced) = reply else {
        panic!("expected SupernodeAnnounced");
    };
    let certified = cert::verify_supernode(
        announced.certificate.as_ref().unwrap(),
        server.public_key(),
        natter_client::now_unix_secs(),
    )
    .unwrap();
    // The unspecified IP became the source address.
    assert_eq!(certified.addrs.quic, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(
        certified.node_id,
        cert::key_id(&user_key(0).to_public_key())
    );
    let revocations =
        cert::verify_revocations(announced.revocations.as_ref().unwrap(), server.public_key())
            .unwrap();
    assert!(revocations.disabled_users.is_empty() && revocations.revoked_supernodes.is_empty());
    c.request(announce("127.0.0.1", 7001, 1), "").await.unwrap();
    // Another host's address is refused.
    let e = c
        .request(announce("192.0.2.1", 7002, 0), "")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Server { code, .. } if code == "ERROR_CODE_MALFORMED"),
        "{e}"
    );
    // A node id that is not the key's id.
    let Body::SupernodeAnnounce(mut wrong) = announce("127.0.0.1", 7003, 1) else {
        unreachable!()
    };
    wrong.node_id = vec![];
    let e = c
        .request(Body::SupernodeAnnounce(wrong), "")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Server { code, .. } if code == "ERROR_CODE_MALFORMED"),
        "{e}"
    );

    let outcome = c
        .login("kate", "password123", &user_key(0), &[0x11; 32])
        .await
        .unwrap();
    let mut addrs: Vec<String> = outcome
        .supernodes
        .iter()
        .map(|s| {
            std::net::SocketAddr::try_from(s.addr.as_ref().unwrap())
                .unwrap()
                .to_string()
        })
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["127.0.0.1:7000", "127.0.0.1:7001"]);
    assert!(outcome.supernodes.iter().all(|s| s.node_id.len() == 16
        && s.last_seen > 0
        && s.certificate.is_some()
        && s.reflector.is_some()));
    server.shutdown().await;
}

#[tokio::test]
async fn identity_is_kept_reused_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.cert_validity = Duration::from_secs(2 * 3600);
    let server = start(config).await;
    let login_key = server.public_key().clone();
    let addr = server.local_addr();
    client(&server)
        .await
        .register("liam", "password123")
        .await
        .unwrap();

    let home_dir = tempfile::tempdir().unwrap();
    let home = Home::open(home_dir.path().join("h")).unwrap();
    assert!(matches!(
        home.load(&login_key, 0),
        Err(ClientError::NotLoggedIn)
    ));
    let status = home
        .login(addr, &login_key, "liam", "password123", false)
        .await
        .unwrap();
    let LoginStatus::Fresh { session, .. } = status else {
        panic!("first login must contact the server");
    };
    use std::os::unix::fs::PermissionsExt;
    for f in [
        natter_client::home::KEY_FILE,
        natter_client::home::CERT_FILE,
    ] {
        let mode = std::fs::metadata(home.file(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }

    // Without the server, the stored identity is reused.
    server.shutdown().await;
    let status = home
        .login(addr, &login_key, "liam", "password123", false)
        .await
        .unwrap();
    let LoginStatus::Reused(reused) = status else {
        panic!("a valid identity must be reused");
    };
    assert_eq!(reused.identity.certificate, session.identity.certificate);
    assert_eq!(reused.identity.key, session.identity.key);

    // Near expiry it must be renewed; after expiry it is refused clearly.
    let not_after = session.verified.not_after;
    assert!(!session.needs_renewal(not_after - 3601));
    assert!(session.needs_renewal(not_after - 600));
    let e = home.load(&login_key, not_after).unwrap_err();
    assert!(
        matches!(&e, ClientError::SessionExpired { name, .. } if name == "liam"),
        "{e}"
    );
    assert!(e.to_string().starts_with("session expired"), "{e}");
}

/// Proof of possession (issue 13 item 4): an attacker who knows Bob's
/// password (or is Bob) asks for a certificate binding a key they do not
/// hold. Every variant is refused with CERTIFICATE_REJECTED before the
/// password is looked at, and no certificate is issued; the honest login
/// on the same connection still works.
#[tokio::test]
async fn login_for_someone_elses_key_is_refused() {
    use natter_proto::binding;
    use natter_proto::messages::LoginRequest;

    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let c = client(&server).await;
    c.register("bob", "password123").await.unwrap();
    let victim = user_key(0);
    let attacker = user_key(1);
    let chat_key = cert::chat_public(&[0x11; 32]);
    let victim_der = cert::public_key_der(&victim.to_public_key());
    let exporter =
        natter_net::exporter::quic_exporter(c.quic_connection().expect("QUIC client")).unwrap();
    let request = |proof: Vec<u8>| {
        Body::LoginRequest(LoginRequest {
            name: "bob".into(),
            password: "password123".into(),
            public_key: victim_der.clone(),
            chat_key: chat_key.to_vec(),
            proof,
        })
    };
    let refused = |e: &ClientError| {
        matches!(e, ClientError::Server { code, detail }
            if code == "ERROR_CODE_CERTIFICATE_REJECTED" && detail.contains("proof of possession"))
    };

    // 1. No proof at all.
    let e = c.request(request(Vec::new()), "bob").await.unwrap_err();
    assert!(refused(&e), "{e}");
    // 2. Signed with the attacker's own key over the right message.
    let message = binding::login_message(&exporter, "bob", &victim_der, &chat_key);
    let e = c
        .request(request(cert::sign(&attacker, &message)), "bob")
        .await
        .unwrap_err();
    assert!(refused(&e), "{e}");
    // 3. A genuine proof by the victim's key, captured from another
    //    connection (another exporter), replayed here.
    let other = client(&server).await;
    let other_exporter =
        natter_net::exporter::quic_exporter(other.quic_connection().unwrap()).unwrap();
    assert_ne!(other_exporter, exporter);
    let captured = cert::sign(
        &victim,
        &binding::login_message(&other_exporter, "bob", &victim_der, &chat_key),
    );
    let e = c.request(request(captured), "bob").await.unwrap_err();
    assert!(refused(&e), "{e}");
    // 4. A victim proof for another chat key (the attacker's) is refused.
    let e = c
        .request(
            Body::LoginRequest(LoginRequest {
                chat_key: cert::chat_public(&[0x22; 32]).to_vec(),
                ..match request(cert::sign(&victim, &message)) {
                    Body::LoginRequest(r) => r,
                    _ => unreachable!(),
                }
            }),
            "bob",
        )
        .await
        .unwrap_err();
    assert!(refused(&e), "{e}");
    // No certificate was issued for any of them.
    let users = server.service().store().list_users().await.unwrap();
    assert!(
        users[0].last_login.is_none(),
        "a refused login issued a certificate"
    );

    // The holder of the key logs in on the same connection.
    let outcome = c
        .login("bob", "password123", &victim, &[0x11; 32])
        .await
        .unwrap();
    assert_eq!(outcome.verified.public_key, victim.to_public_key());
    other.close().await;
    c.close().await;
    server.shutdown().await;
}
