//! The store on a real database: the SQLite file, or PostgreSQL with
//! `NATTER_TEST_DB=postgres` (a throwaway cluster, `common::pg`). The same
//! tests, the same code path (`natter_login::storage`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{test_backend, test_store, test_url};
use natter_login::storage::{Backend, MIGRATIONS, SCHEMA, SCHEMA_VERSION, Store, StoreError};

/// Read-then-write transactions (supernode announces) racing plain
/// writes (registrations) all succeed: none fails with "database is
/// locked" (SQLite) or a deadlock (PostgreSQL), and the per-address cap
/// (a count before the insert) holds under the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_then_write_transactions_never_fail() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(test_store(dir.path()).await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..5 {
                let ip = format!("10.0.{i}.1");
                store
                    .upsert_supernode(
                        &format!("n{i}"),
                        &ip,
                        &format!("{ip}:{round}"),
                        None,
                        round,
                        16,
                    )
                    .await?;
                store
                    .create_user(&format!("u{i}x{round}"), "U", "h", round)
                    .await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.list_users().await.unwrap().len(), 200);

    // 16 different supernodes announce from each of 10 addresses at once,
    // with a cap of 5 per address: exactly 5 get in from each (the count
    // and the insert are one write transaction; without one writer at a
    // time, two could both count 4 and both insert).
    let mut tasks = Vec::new();
    for i in 0..160 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let ip = format!("10.9.9.{}", i / 16);
            let result = store
                .upsert_supernode(&format!("m{i}"), &ip, &format!("{ip}:1"), None, 1000, 5)
                .await;
            (i / 16, result)
        }));
    }
    let mut admitted = [0; 10];
    for task in tasks {
        match task.await.unwrap() {
            (ip, Ok(())) => admitted[ip] += 1,
            (_, Err(StoreError::TooManySupernodes)) => {}
            (_, Err(e)) => panic!("{e}"),
        }
    }
    assert_eq!(admitted, [5; 10]);
    store.close().await;
}

/// Two servers opening one new database at once (two login servers
/// starting on one PostgreSQL database): both get the schema, made once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_creating_one_database_at_once_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let url = test_url(dir.path());
    let (a, b) = tokio::join!(Store::connect(&url), Store::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.schema_version().await.unwrap(), SCHEMA_VERSION);
    a.create_user("alice", "Alice", "h", 1).await.unwrap();
    assert!(b.user_exists("alice").await.unwrap());
    a.close().await;
    b.close().await;
}

/// A database made by the version-1 server (no `tcp_addr` column)
/// upgrades in place, keeps its rows, and reopening it again is a no-op.
#[tokio::test]
async fn a_version_1_database_is_migrated_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = test_url(dir.path());
    let backend = Backend::of_url(&url).unwrap();
    assert_eq!(backend, test_backend());
    {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        for statement in SCHEMA {
            sqlx::query(sqlx::AssertSqlSafe(backend.ddl(statement)))
                .execute(&pool)
                .await
                .unwrap();
        }
        sqlx::query("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO supernodes (node_id, ip, addr, last_seen)
             VALUES ('aa', '10.0.0.1', '10.0.0.1:5000', 100)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO users (name_norm, display_name, password_hash, created_at)
             VALUES ('old', 'Old', 'h', 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(
        usize::try_from(SCHEMA_VERSION).unwrap(),
        MIGRATIONS.len() + 1
    );
    let recent = store.recent_supernodes(0, 10).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(
        (recent[0].addr.as_str(), recent[0].tcp.as_deref()),
        ("10.0.0.1:5000", None)
    );
    assert!(store.user_exists("old").await.unwrap());
    // The identity column keeps numbering after the migrated row.
    store.create_user("new", "New", "h", 2).await.unwrap();
    store
        .upsert_supernode(
            "aa",
            "10.0.0.1",
            "10.0.0.1:5000",
            Some("10.0.0.1:443"),
            200,
            16,
        )
        .await
        .unwrap();
    // Version 3's columns and tables work.
    store
        .set_supernode_certificate("aa", "10.0.0.1:5000", &[1, 2, 3])
        .await
        .unwrap();
    store.add_enrol_token("h1", 10_000).await.unwrap();
    assert!(store.consume_enrol_token("h1", 5_000).await.unwrap());
    assert!(!store.consume_enrol_token("h1", 5_000).await.unwrap());
    store.close().await;

    // Opening again neither re-runs the migration nor loses data.
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let recent = store.recent_supernodes(0, 10).await.unwrap();
    assert_eq!(recent[0].tcp.as_deref(), Some("10.0.0.1:443"));
    assert_eq!(recent[0].certificate.as_deref(), Some(&[1u8, 2, 3][..]));
    // An announce without a TCP listener clears it.
    store
        .upsert_supernode("aa", "10.0.0.1", "10.0.0.1:5000", None, 300, 16)
        .await
        .unwrap();
    assert_eq!(store.recent_supernodes(0, 10).await.unwrap()[0].tcp, None);
    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["new", "old"]);
    store.close().await;
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = test_url(dir.path());
    let store = Store::connect(&url).await.unwrap();
    store.close().await;
    {
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::query("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    assert!(matches!(
        Store::connect(&url).await,
        Err(StoreError::SchemaTooNew(99))
    ));
}

#[tokio::test]
async fn an_unknown_url_scheme_is_refused() {
    assert!(matches!(
        Store::connect("mysql://localhost/natter").await,
        Err(StoreError::UnsupportedUrl(s)) if s == "mysql"
    ));
}

#[tokio::test]
async fn accounts_blobs_and_supernodes() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path()).await;
    assert_eq!(store.backend(), test_backend());
    store.create_user("alice", "Alice", "h", 1).await.unwrap();
    assert!(matches!(
        store.create_user("alice", "ALICE", "h2", 2).await,
        Err(StoreError::NameTaken)
    ));
    assert!(store.user_exists("alice").await.unwrap());
    assert!(!store.user_exists("bob").await.unwrap());

    assert_eq!(store.buddy_blob("alice").await.unwrap().version, 0);
    assert_eq!(store.put_buddy_blob("alice", 0, b"one").await.unwrap(), 1);
    assert!(matches!(
        store.put_buddy_blob("alice", 0, b"stale").await,
        Err(StoreError::StaleVersion { current: 1 })
    ));
    assert_eq!(store.put_buddy_blob("alice", 1, b"two").await.unwrap(), 2);
    let blob = store.buddy_blob("alice").await.unwrap();
    assert_eq!((blob.version, blob.ciphertext.as_slice()), (2, &b"two"[..]));
    // Bytes survive the round trip whatever they are (BLOB / BYTEA).
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(store.put_buddy_blob("alice", 2, &all).await.unwrap(), 3);
    assert_eq!(store.buddy_blob("alice").await.unwrap().ciphertext, all);

    store.set_disabled("alice", true).await.unwrap();
    assert!(store.user("alice").await.unwrap().unwrap().disabled);
    assert_eq!(store.disabled_users().await.unwrap(), ["alice"]);
    assert!(matches!(
        store.set_disabled("nobody", true).await,
        Err(StoreError::UnknownUser)
    ));
    store
        .record_issuance("alice", u64::MAX >> 1, "fp", 7, 8)
        .await
        .unwrap();
    assert_eq!(
        store.user("alice").await.unwrap().unwrap().last_login,
        Some(7)
    );

    store
        .upsert_supernode("aa", "10.0.0.1", "10.0.0.1:1", None, 100, 1)
        .await
        .unwrap();
    store
        .upsert_supernode("aa", "10.0.0.1", "10.0.0.1:2", Some("10.0.0.1:443"), 200, 1)
        .await
        .unwrap();
    assert!(matches!(
        store
            .upsert_supernode("bb", "10.0.0.1", "10.0.0.1:3", None, 200, 1)
            .await,
        Err(StoreError::TooManySupernodes)
    ));
    store
        .upsert_supernode("cc", "10.0.0.2", "10.0.0.2:1", None, 50, 1)
        .await
        .unwrap();
    let recent = store.recent_supernodes(100, 10).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].addr, "10.0.0.1:2");
    assert_eq!(recent[0].tcp.as_deref(), Some("10.0.0.1:443"));
    assert_eq!(store.prune_supernodes(100).await.unwrap(), 1);
    store.close().await;

    // Reopening keeps everything.
    let store = test_store(dir.path()).await;
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    store.close().await;
}
