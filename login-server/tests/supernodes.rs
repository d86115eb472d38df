//! Supernode certification end to end (issue 13 item 1): real login server
//! and real supernodes (`Supernode::spawn`) on loopback, an attacker
//! speaking the wire protocol to the login server. Only a supernode whose
//! key the operator approved (or that brought a one-time enrolment token)
//! gets a certificate and reaches a client's host cache.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{client, start, test_config, user_key, with_timeout};
use natter_login::LoginServer;
use natter_login::storage::KeyState;
use natter_proto::messages::{Envelope, ErrorCode, SupernodeAnnounce, envelope::Body};
use natter_proto::{binding, cert};
use natter_supernode::{Certification, Supernode};
use rsa::RsaPrivateKey;

/// A supernode that asks `server` for its certificate, re-announcing fast.
fn supernode_config(server: &LoginServer, token: Option<String>) -> natter_supernode::Config {
    let mut config =
        natter_supernode::Config::new("127.0.0.1:0".parse().unwrap(), server.public_key().clone());
    config.login = Some(server.local_addr());
    config.certification = Certification::LoginServer { enrol_token: token };
    config.announce_interval = Duration::from_millis(300);
    config.node_key = Some(user_key(1));
    config
}

/// Polls `f` every 100 ms for up to 15 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Logs `name` in with `user_key(0)`; the supernodes the reply lists.
async fn listed(server: &LoginServer) -> Vec<natter_proto::messages::HostCacheEntry> {
    let c = client(server).await;
    let _ = c.register("watcher", "password123").await;
    let outcome = c
        .login("watcher", "password123", &user_key(0), &[0x11; 32])
        .await
        .unwrap();
    c.close().await;
    outcome.supernodes
}

/// Sends one announce on a fresh connection, built from that connection's
/// exporter by `make`.
async fn announce(
    server: &LoginServer,
    make: impl FnOnce(&binding::Exporter) -> SupernodeAnnounce,
) -> Body {
    let endpoint = natter_net::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &natter_net::TransportSettings::OVERLAY,
    )
    .unwrap();
    let reply = natter_net::request_once_bound(
        &endpoint,
        server.local_addr(),
        "natter-login",
        |e| Envelope::new(1, Body::SupernodeAnnounce(make(e))),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    reply.body.unwrap()
}

fn signed_announce(
    key: &RsaPrivateKey,
    exporter: &binding::Exporter,
    port: u16,
) -> SupernodeAnnounce {
    let public = key.to_public_key();
    let node_id = cert::key_id(&public);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    SupernodeAnnounce {
        addr: Some(addr.into()),
        node_id: node_id.to_vec(),
        public_key: cert::public_key_der(&public),
        reflector: Some(SocketAddr::from(([127, 0, 0, 1], port + 1)).into()),
        signature: cert::sign(key, &binding::announce_message(exporter, &node_id)),
        ..Default::default()
    }
}

fn code(body: &Body) -> Option<ErrorCode> {
    match body {
        Body::Error(e) => Some(ErrorCode::try_from(e.code).unwrap()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unapproved_supernode_serves_nobody_until_the_operator_approves_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let sn = Supernode::spawn(supernode_config(&server, None)).unwrap();
    let fingerprint = cert::fingerprint(&user_key(1).to_public_key());

    // Pending: listed for the operator, refused to clients, not in any list.
    let pending = eventually("the key is pending", || async {
        natter_login::admin::list_supernodes(common::admin_db(dir.path()).get())
            .await
            .ok()?
            .into_iter()
            .find(|k| k.fingerprint == fingerprint)
    })
    .await;
    assert_eq!(pending.state, KeyState::Pending);
    assert_eq!(pending.node_id, Some(hex::encode(sn.node_id())));
    assert!(listed(&server).await.is_empty());
    let identity = client_identity(&server).await;
    let endpoint = natter_net::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &natter_net::TransportSettings::OVERLAY,
    )
    .unwrap();
    let e = natter_client::supernode::SupernodeSession::join(
        &endpoint,
        sn.addr(),
        &identity,
        server.public_key(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, natter_client::supernode::SessionError::Refused { detail, .. } if detail.contains("not certified")),
        "{e}"
    );

    // Approved: certified on its next announce, listed with a certificate
    // that verifies and names its addresses, and clients join.
    natter_login::admin::set_supernode_state(
        common::admin_db(dir.path()).get(),
        &fingerprint,
        KeyState::Approved,
    )
    .await
    .unwrap();
    let entries = eventually("the supernode is listed", || async {
        let l = listed(&server).await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    let certified = cert::verify_supernode(
        entries[0].certificate.as_ref().unwrap(),
        server.public_key(),
        natter_client::now_unix_secs(),
    )
    .unwrap();
    assert_eq!(certified.node_id, sn.node_id());
    assert_eq!(certified.addrs.quic, sn.addr());
    assert_eq!(certified.addrs.reflector, sn.reflector());
    assert_eq!(
        natter_client::overlay::certified_nodes(
            &entries,
            server.public_key(),
            natter_client::now_unix_secs()
        ),
        vec![(sn.addr(), None)]
    );
    let session = eventually("a client joins", || async {
        natter_client::supernode::SupernodeSession::join(
            &endpoint,
            sn.addr(),
            &identity,
            server.public_key(),
            Duration::from_secs(5),
        )
        .await
        .ok()
    })
    .await;
    assert!(session.is_alive());

    // Revoked: refused at the next announce, off the host cache at once.
    natter_login::admin::set_supernode_state(
        common::admin_db(dir.path()).get(),
        &fingerprint,
        KeyState::Revoked,
    )
    .await
    .unwrap();
    assert!(listed(&server).await.is_empty());
    let body = announce(&server, |e| {
        signed_announce(&user_key(1), e, sn.addr().port())
    })
    .await;
    assert_eq!(code(&body), Some(ErrorCode::Revoked), "{body:?}");
    sn.shutdown().await;
    server.shutdown().await;
}

/// A user identity certified by `server`, for joining supernodes.
async fn client_identity(server: &LoginServer) -> cert::Identity {
    let c = client(server).await;
    let _ = c.register("joiner", "password123").await;
    let outcome = c
        .login("joiner", "password123", &user_key(0), &[0x11; 32])
        .await
        .unwrap();
    c.close().await;
    cert::Identity {
        key: user_key(0),
        certificate: outcome.certificate,
        chat_secret: [0x11; 32],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_token_enrols_one_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let token = natter_login::admin::new_enrol_token(
        common::admin_db(dir.path()).get(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let sn = Supernode::spawn(supernode_config(&server, Some(token.clone()))).unwrap();
    let entries = eventually("the enrolled supernode is listed", || async {
        let l = listed(&server).await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(entries[0].node_id, sn.node_id().to_vec());
    // The same token does not enrol a second key.
    let body = announce(&server, |e| signed_announce(&user_key(0), e, 40000)).await;
    assert_eq!(code(&body), Some(ErrorCode::NotApproved), "{body:?}");
    assert_eq!(listed(&server).await.len(), 1);
    sn.shutdown().await;
    server.shutdown().await;
}

/// Announces from hosts that cannot prove an approved key never reach a
/// client: not the login reply, not the client's `hostcache.txt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announces_from_uncertified_hosts_never_reach_a_host_cache() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    // The honest supernode's key (user_key(1)) is approved.
    let honest = user_key(1);
    natter_login::admin::set_supernode_state(
        common::admin_db(dir.path()).get(),
        &cert::fingerprint(&honest.to_public_key()),
        KeyState::Approved,
    )
    .await
    .unwrap();
    let attacker = user_key(0);

    // 1. Unapproved key, correctly signed: pending, refused.
    let body = announce(&server, |e| signed_announce(&attacker, e, 41000)).await;
    assert_eq!(code(&body), Some(ErrorCode::NotApproved), "{body:?}");
    // 2. The approved key's identity, signed with the attacker's key.
    let body = announce(&server, |e| {
        let mut a = signed_announce(&honest, e, 41010);
        a.signature = cert::sign(
            &attacker,
            &binding::announce_message(e, &cert::key_id(&honest.to_public_key())),
        );
        a
    })
    .await;
    assert_eq!(
        code(&body),
        Some(ErrorCode::CertificateRejected),
        "{body:?}"
    );
    // 3. A genuine announce by the approved key, replayed on another
    //    connection (its signature is bound to the first connection).
    let mut captured = None;
    let first = announce(&server, |e| {
        let a = signed_announce(&honest, e, 41020);
        captured = Some(a.clone());
        a
    })
    .await;
    assert!(matches!(first, Body::SupernodeAnnounced(_)), "{first:?}");
    let mut replayed = captured.unwrap();
    replayed.addr = Some(SocketAddr::from(([127, 0, 0, 1], 41030)).into());
    let body = announce(&server, move |_| replayed).await;
    assert_eq!(
        code(&body),
        Some(ErrorCode::CertificateRejected),
        "{body:?}"
    );
    // 4. No signature at all.
    let body = announce(&server, |e| SupernodeAnnounce {
        signature: Vec::new(),
        ..signed_announce(&honest, e, 41040)
    })
    .await;
    assert_eq!(
        code(&body),
        Some(ErrorCode::CertificateRejected),
        "{body:?}"
    );

    // Only the honest announce is listed, and only it reaches the client's
    // host cache file.
    let entries = listed(&server).await;
    let ports: Vec<u16> = natter_client::overlay::certified_nodes(
        &entries,
        server.public_key(),
        natter_client::now_unix_secs(),
    )
    .iter()
    .map(|(a, _)| a.port())
    .collect();
    assert_eq!(ports, vec![41020]);
    let home = natter_client::Home::open(dir.path().join("home")).unwrap();
    // The list as the login server sent it, plus an entry an attacker
    // might inject in transit: its own address with the honest certificate.
    let mut tampered = entries.clone();
    let mut forged = entries[0].clone();
    forged.addr = Some(SocketAddr::from(([127, 0, 0, 1], 41050)).into());
    tampered.push(forged);
    home.seed_host_cache(&tampered, server.public_key())
        .unwrap();
    let text = std::fs::read_to_string(home.host_cache_path()).unwrap();
    assert!(text.contains(":41020"), "{text}");
    for port in [41000, 41010, 41030, 41040, 41050] {
        assert!(!text.contains(&format!(":{port}")), "{port} in {text}");
    }
    with_timeout(server.shutdown()).await;
}

/// Revocation within a minute (issue 13 item 6): supernodes re-announce
/// every 300 ms here (15 s by default) and each answer carries the signed
/// revocation list. A disabled user's session is closed and its rejoin
/// refused; a revoked supernode's link is closed and it is refused by its
/// peer and by the login server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_and_a_revoked_supernode_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(test_config(dir.path())).await;
    let db = common::admin_db(dir.path());
    let token = |ttl| natter_login::admin::new_enrol_token(db.get(), Duration::from_secs(ttl));
    let a = Supernode::spawn(supernode_config(&server, Some(token(60).await.unwrap()))).unwrap();
    let mut b_config = supernode_config(&server, Some(token(60).await.unwrap()));
    b_config.node_key = None; // its own fresh key
    b_config.peers = vec![a.addr()];
    let b = Supernode::spawn(b_config).unwrap();
    eventually("the two certified supernodes mesh", || async {
        (a.live_members().len() == 2 && b.live_members().len() == 2).then_some(())
    })
    .await;

    let identity = client_identity(&server).await;
    let endpoint = natter_net::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &natter_net::TransportSettings::OVERLAY,
    )
    .unwrap();
    let join = || {
        natter_client::supernode::SupernodeSession::join(
            &endpoint,
            a.addr(),
            &identity,
            server.public_key(),
            Duration::from_secs(5),
        )
    };
    let session = join().await.unwrap();
    assert!(session.is_alive());

    // The operator disables the user: the session ends, rejoining fails.
    natter_login::admin::set_disabled(common::admin_db(dir.path()).get(), "joiner", true)
        .await
        .unwrap();
    eventually("the disabled user's session is closed", || async {
        (!session.is_alive()).then_some(())
    })
    .await;
    let e = join().await.unwrap_err();
    assert!(
        matches!(&e, natter_client::supernode::SessionError::Refused { detail, .. } if detail.contains("revoked")),
        "{e}"
    );

    // The operator revokes supernode B: A drops it and does not take it back.
    let b_fingerprint = natter_login::admin::list_supernodes(common::admin_db(dir.path()).get())
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.node_id == Some(hex::encode(b.node_id())))
        .unwrap()
        .fingerprint;
    natter_login::admin::set_supernode_state(
        common::admin_db(dir.path()).get(),
        &b_fingerprint,
        KeyState::Revoked,
    )
    .await
    .unwrap();
    eventually("A no longer counts B as live", || async {
        (a.live_members() == vec![a.node_id()]).then_some(())
    })
    .await;
    // B keeps dialling A (it is A's --peer) and is refused every time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.live_members(), vec![a.node_id()]);
    assert!(
        listed(&server)
            .await
            .iter()
            .all(|e| e.node_id != b.node_id().to_vec())
    );
    b.shutdown().await;
    a.shutdown().await;
    server.shutdown().await;
}
