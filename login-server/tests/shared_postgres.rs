//! Two login servers on one PostgreSQL database serve the same users: the
//! way past one machine (docs/OPERATIONS.md). They share the signing key and
//! TLS identity (copied data directory files) and nothing else; every
//! account, certificate record and supernode lives in the database.
//!
//! Always on PostgreSQL (a throwaway cluster, `common::pg`), whatever
//! `NATTER_TEST_DB` says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::pg::PgCluster;
use common::{user_key, with_timeout};
use natter_client::{ClientError, LoginClient};
use natter_login::LoginServer;
use natter_login::datadir::{PUBLIC_KEY_FILE, SIGNING_KEY_FILE, TLS_CERT_FILE, TLS_KEY_FILE};
use natter_login::storage::Backend;
use natter_proto::cert;

/// A server on data directory `dir` and database `url`.
async fn server(dir: &Path, url: &str) -> LoginServer {
    let mut config = common::test_config(dir);
    config.database = Some(url.to_owned());
    common::start(config).await
}

/// Two servers on one new database, the second with the first's keys.
async fn two_servers(a: &Path, b: &Path) -> (LoginServer, LoginServer) {
    let url = PgCluster::shared().create_database();
    let first = server(a, &url).await;
    assert_eq!(first.service().store().backend(), Backend::Postgres);
    std::fs::create_dir_all(b).unwrap();
    for file in [
        SIGNING_KEY_FILE,
        PUBLIC_KEY_FILE,
        TLS_KEY_FILE,
        TLS_CERT_FILE,
    ] {
        std::fs::copy(a.join(file), b.join(file)).unwrap();
    }
    let second = server(b, &url).await;
    assert_eq!(
        cert::fingerprint(first.public_key()),
        cert::fingerprint(second.public_key())
    );
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_on_one_log_in_on_the_other() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = two_servers(da.path(), db.path()).await;
    // Clients pin the key from A's directory and talk to each server.
    let pinned = common::pinned_key(&a);
    let ca = common::client(&a).await;
    let cb = LoginClient::connect(b.local_addr(), pinned.clone())
        .await
        .unwrap();

    assert_eq!(
        with_timeout(ca.register("Alice", "correct horse"))
            .await
            .unwrap(),
        "alice"
    );
    assert_eq!(
        with_timeout(cb.register("bob", "battery staple"))
            .await
            .unwrap(),
        "bob"
    );
    // Taken on either server once taken on one.
    assert!(matches!(
        cb.register("alice", "another one").await,
        Err(ClientError::NameTaken(_))
    ));

    // Alice registered on A logs in on B, Bob the other way round; the
    // certificates verify against the one pinned key.
    let now = natter_client::now_unix_secs();
    let key = user_key(0);
    let alice = with_timeout(cb.login("alice", "correct horse", &key, &[0x11; 32]))
        .await
        .unwrap();
    let verified = cert::verify(&alice.certificate, &pinned, now).unwrap();
    assert_eq!(verified.name, "alice");
    assert_eq!(verified.public_key, key.to_public_key());
    let key_b = user_key(1);
    let bob = with_timeout(ca.login("bob", "battery staple", &key_b, &[0x22; 32]))
        .await
        .unwrap();
    assert_eq!(
        cert::verify(&bob.certificate, &pinned, now).unwrap().name,
        "bob"
    );
    // A wrong password is wrong on both.
    assert!(
        cb.login("bob", "not the password", &key_b, &[0x22; 32])
            .await
            .is_err()
    );

    // Both servers see both accounts and the logins each recorded.
    for server in [&a, &b] {
        let users = server.service().store().list_users().await.unwrap();
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert!(users.iter().all(|u| u.last_login.is_some()), "{users:?}");
    }

    // An account disabled through one server's database is refused by the
    // other.
    a.service()
        .store()
        .set_disabled("alice", true)
        .await
        .unwrap();
    assert!(
        cb.login("alice", "correct horse", &key, &[0x11; 32])
            .await
            .is_err()
    );
    ca.close().await;
    cb.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The same names registered on both servers at the same time: each name
/// has exactly one winner (the unique index decides), the loser is told
/// the name is taken, and one account exists per name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registration_of_one_name_on_both_has_one_winner() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = two_servers(da.path(), db.path()).await;
    let pinned = common::pinned_key(&a);
    let ca = Arc::new(common::client(&a).await);
    let cb = Arc::new(
        LoginClient::connect(b.local_addr(), pinned.clone())
            .await
            .unwrap(),
    );
    const NAMES: usize = 12;
    let mut tasks = Vec::new();
    for i in 0..NAMES {
        for (side, c) in [("a", ca.clone()), ("b", cb.clone())] {
            tasks.push(tokio::spawn(async move {
                let name = format!("racer{i}");
                let password = format!("password of {side}");
                (i, side, c.register(&name, &password).await)
            }));
        }
    }
    let mut winners = vec![Vec::new(); NAMES];
    for task in tasks {
        let (i, side, result) = with_timeout(task).await.unwrap();
        match result {
            Ok(name) => {
                assert_eq!(name, format!("racer{i}"));
                winners[i].push(side);
            }
            Err(ClientError::NameTaken(_)) => {}
            Err(e) => panic!("racer{i} on {side}: {e}"),
        }
    }
    for (i, w) in winners.iter().enumerate() {
        assert_eq!(w.len(), 1, "racer{i} won on {w:?}");
    }
    let users = a.service().store().list_users().await.unwrap();
    assert_eq!(users.len(), NAMES);
    // Each winner's password is the one its server stored: the winner logs
    // in on the other server.
    let key = user_key(0);
    for (i, w) in winners.iter().enumerate() {
        let (side, other) = if w[0] == "a" { ("a", &cb) } else { ("b", &ca) };
        let outcome = with_timeout(other.login(
            &format!("racer{i}"),
            &format!("password of {side}"),
            &key,
            &[0x33; 32],
        ))
        .await
        .unwrap();
        cert::verify(
            &outcome.certificate,
            &pinned,
            natter_client::now_unix_secs(),
        )
        .unwrap();
    }
    Arc::into_inner(ca).unwrap().close().await;
    Arc::into_inner(cb).unwrap().close().await;
    a.shutdown().await;
    b.shutdown().await;
}
