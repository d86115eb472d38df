//! Supernode promotion's certification policy (issue 18, item 1): a
//! promoted client's supernode announces with its user's sponsorship
//! (`SupernodeAnnounce.sponsor`, `sponsor_signature` over
//! "NATTER-PROMOTE-V1"), and `--auto-approve-users MIN_ACCOUNT_AGE_SECS`
//! approves it when the user is in good standing. Real login server on
//! loopback; the announces are the wire messages, and the last test runs a
//! real `Supernode::spawn` with `Certification::Sponsored`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{client, start, test_config, user_key, with_timeout};
use natter_login::LoginServer;
use natter_login::storage::KeyState;
use natter_proto::messages::{Envelope, ErrorCode, SupernodeAnnounce, envelope::Body};
use natter_proto::{binding, cert};
use natter_supernode::{Certification, Sponsor, Supernode};
use rsa::RsaPrivateKey;

const PASSWORD: &str = "password123";

/// Registers `name` and logs in with `user_key(0)`: its identity, and when
/// the account was created (just before the registration returned).
async fn user(server: &LoginServer, name: &str) -> (cert::Identity, Instant) {
    let c = client(server).await;
    c.register(name, PASSWORD).await.unwrap();
    let created = Instant::now();
    let outcome = c
        .login(name, PASSWORD, &user_key(0), &[0x11; 32])
        .await
        .unwrap();
    c.close().await;
    let identity = cert::Identity {
        key: user_key(0),
        certificate: outcome.certificate,
        chat_secret: [0x11; 32],
    };
    (identity, created)
}

/// How a test builds the sponsorship of one announce.
enum Sponsorship<'a> {
    /// The user signs this connection's exporter and the node id.
    Honest(&'a cert::Identity),
    /// The user's certificate, signed by another key.
    WrongKey(&'a cert::Identity, &'a RsaPrivateKey),
    /// The user's signature made for another connection's exporter.
    OtherConnection(&'a cert::Identity),
}

/// One announce of supernode key `node_key` on a fresh connection.
async fn announce(
    server: &LoginServer,
    node_key: &RsaPrivateKey,
    sponsor: Sponsorship<'_>,
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
        |exporter| {
            let public = node_key.to_public_key();
            let node_id = cert::key_id(&public);
            let (certificate, signer, signed_exporter) = match sponsor {
                Sponsorship::Honest(id) => (&id.certificate, &id.key, *exporter),
                Sponsorship::WrongKey(id, key) => (&id.certificate, key, *exporter),
                Sponsorship::OtherConnection(id) => (&id.certificate, &id.key, [0x42; 32]),
            };
            Envelope::new(
                1,
                Body::SupernodeAnnounce(SupernodeAnnounce {
                    addr: Some(SocketAddr::from(([127, 0, 0, 1], 42000)).into()),
                    node_id: node_id.to_vec(),
                    public_key: cert::public_key_der(&public),
                    reflector: Some(SocketAddr::from(([127, 0, 0, 1], 42001)).into()),
                    signature: cert::sign(node_key, &binding::announce_message(exporter, &node_id)),
                    sponsor: Some(certificate.clone()),
                    sponsor_signature: cert::sign(
                        signer,
                        &binding::promote_message(&signed_exporter, &node_id),
                    ),
                    ..Default::default()
                }),
            )
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    reply.body.unwrap()
}

fn code(body: &Body) -> Option<ErrorCode> {
    match body {
        Body::Error(e) => Some(ErrorCode::try_from(e.code).unwrap()),
        _ => None,
    }
}

async fn key_state(dir: &std::path::Path, key: &RsaPrivateKey) -> Option<KeyState> {
    let fingerprint = cert::fingerprint(&key.to_public_key());
    natter_login::admin::list_supernodes(common::admin_db(dir).get())
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.fingerprint == fingerprint)
        .map(|k| k.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_a_sponsored_supernode_waits_for_the_operator() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let server = start(test_config(dir.path())).await;
        let (alice, _) = user(&server, "alice").await;
        let body = announce(&server, &user_key(1), Sponsorship::Honest(&alice)).await;
        assert_eq!(code(&body), Some(ErrorCode::NotApproved), "{body:?}");
        // Waiting like any other supernode key: the operator decides.
        assert_eq!(
            key_state(dir.path(), &user_key(1)).await,
            Some(KeyState::Pending)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_account_waits_and_an_old_one_is_approved() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        let min_age = Duration::from_secs(3);
        config.auto_approve_users = Some(min_age);
        let server = start(config).await;
        let (alice, created) = user(&server, "alice").await;

        // Younger than 3 s: pending, no certificate.
        let body = announce(&server, &user_key(1), Sponsorship::Honest(&alice)).await;
        assert!(created.elapsed() < min_age, "the machine was too slow");
        assert_eq!(code(&body), Some(ErrorCode::NotApproved), "{body:?}");
        assert_eq!(
            key_state(dir.path(), &user_key(1)).await,
            Some(KeyState::Pending)
        );

        // Old enough: approved and certified for the announced addresses.
        tokio::time::sleep(min_age.saturating_sub(created.elapsed()) + Duration::from_millis(300))
            .await;
        let body = announce(&server, &user_key(1), Sponsorship::Honest(&alice)).await;
        let Body::SupernodeAnnounced(announced) = body else {
            panic!("expected a certificate, got {body:?}");
        };
        let certified = cert::verify_supernode(
            announced.certificate.as_ref().unwrap(),
            server.public_key(),
            natter_client::now_unix_secs(),
        )
        .unwrap();
        assert_eq!(certified.public_key, user_key(1).to_public_key());
        assert_eq!(certified.addrs.quic, "127.0.0.1:42000".parse().unwrap());
        assert_eq!(
            key_state(dir.path(), &user_key(1)).await,
            Some(KeyState::Approved)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_or_a_forged_sponsorship_gets_no_certificate() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.auto_approve_users = Some(Duration::ZERO);
        let server = start(config).await;
        let (alice, _) = user(&server, "alice").await;

        // Signed by a key the certificate does not name.
        let body = announce(
            &server,
            &user_key(1),
            Sponsorship::WrongKey(&alice, &user_key(1)),
        )
        .await;
        assert_eq!(
            code(&body),
            Some(ErrorCode::CertificateRejected),
            "{body:?}"
        );
        // A sponsorship made for another connection does not carry over.
        let body = announce(&server, &user_key(1), Sponsorship::OtherConnection(&alice)).await;
        assert_eq!(
            code(&body),
            Some(ErrorCode::CertificateRejected),
            "{body:?}"
        );
        // Refused sponsorships record nothing.
        assert_eq!(key_state(dir.path(), &user_key(1)).await, None);

        // A disabled account is not in good standing, however old.
        natter_login::admin::set_disabled(common::admin_db(dir.path()).get(), "alice", true)
            .await
            .unwrap();
        let body = announce(&server, &user_key(1), Sponsorship::Honest(&alice)).await;
        assert_eq!(code(&body), Some(ErrorCode::NotApproved), "{body:?}");
        // Enabled again: approved at once (no minimum age here).
        natter_login::admin::set_disabled(common::admin_db(dir.path()).get(), "alice", false)
            .await
            .unwrap();
        let body = announce(&server, &user_key(1), Sponsorship::Honest(&alice)).await;
        assert!(
            matches!(body, Body::SupernodeAnnounced(_)),
            "expected a certificate, got {body:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sponsored_supernode_is_certified_by_the_policy() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.auto_approve_users = Some(Duration::ZERO);
        let server = start(config).await;
        let (alice, _) = user(&server, "alice").await;
        let mut sn_config = natter_supernode::Config::new(
            "127.0.0.1:0".parse().unwrap(),
            server.public_key().clone(),
        );
        sn_config.login = Some(server.local_addr());
        sn_config.node_key = Some(user_key(1));
        sn_config.certification = Certification::Sponsored(std::sync::Arc::new(Sponsor {
            certificate: alice.certificate.clone(),
            key: alice.key.clone(),
        }));
        let sn = Supernode::spawn(sn_config).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let certificate = loop {
            if let Some(c) = sn.certificate() {
                break c;
            }
            assert!(Instant::now() < deadline, "no certificate within 15 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let certified = cert::verify_supernode(
            &certificate,
            server.public_key(),
            natter_client::now_unix_secs(),
        )
        .unwrap();
        assert_eq!(certified.node_id, sn.node_id());
        assert_eq!(certified.addrs.quic, sn.addr());
        sn.shutdown().await;
    })
    .await;
}
