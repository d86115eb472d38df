//! Abuse of the login server by an attacker speaking the wire protocol
//! (TLS over TCP records) to a real `LoginServer` on loopback, from chosen
//! loopback source addresses: 127.0.1.x and 127.0.2.x are different /24
//! source prefixes to the server.
//!
//! Each test fails on a server that counts guesses only after they end, locks
//! a name out from every network, or lets registrations run unthrottled on
//! the shared argon2 pool.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{pinned_key, raw_tls_from, read_records, start, user_key, with_timeout};
use natter_login::{Argon2Config, Config, LoginServer};
use natter_proto::messages::{Envelope, ErrorCode, LoginRequest, RegisterRequest, envelope::Body};
use natter_proto::record::{self, Record};
use natter_proto::{binding, cert};
use tokio::io::AsyncWriteExt;

/// The real server with TLS over TCP, the default argon2 cost (so a hash
/// takes long enough for requests to be in flight together), two workers.
fn config(dir: &Path) -> Config {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir);
    config.database = common::test_database(dir);
    config.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
    config.argon2 = Argon2Config::default();
    config.cpu_workers = 2;
    config
}

/// One request from `source` on its own connection; the reply's body.
async fn ask(server: &LoginServer, source: Ipv4Addr, body: Body) -> Body {
    let mut tls = raw_tls_from(server, source).await;
    send(&mut tls, body).await;
    reply(&mut tls).await
}

/// Sends `body`; a login is first signed with `user_key(0)` over this
/// connection's exporter (the proof of possession an honest client sends).
async fn send(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, mut body: Body) {
    if let Body::LoginRequest(r) = &mut body {
        let mut exporter = [0u8; binding::EXPORTER_LEN];
        tls.get_ref()
            .1
            .export_keying_material(&mut exporter, binding::EXPORTER_LABEL, None)
            .unwrap();
        r.proof = cert::sign(
            &user_key(0),
            &binding::login_message(&exporter, &r.name, &r.public_key, &r.chat_key),
        );
    }
    let mut bytes = Vec::new();
    record::encode_envelope(&Envelope::new(1, body), &mut bytes).unwrap();
    tls.write_all(&bytes).await.unwrap();
}

async fn reply(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Body {
    match read_records(tls, 1).await.as_slice() {
        [Record::Envelope(e)] if e.request_id == 1 => e.body.clone().unwrap(),
        other => panic!("expected one reply, got {other:?}"),
    }
}

fn register(name: &str) -> Body {
    Body::RegisterRequest(RegisterRequest {
        name: name.into(),
        password: "correct horse battery".into(),
    })
}

fn login(name: &str, password: &str) -> Body {
    Body::LoginRequest(LoginRequest {
        name: name.into(),
        password: password.into(),
        public_key: cert::public_key_der(&user_key(0).to_public_key()),
        chat_key: cert::chat_public(&[0x11; 32]).to_vec(),
        ..Default::default()
    })
}

/// The error code of a reply, or `None` for a success.
fn code(body: &Body) -> Option<ErrorCode> {
    match body {
        Body::Error(e) => Some(ErrorCode::try_from(e.code).unwrap()),
        _ => None,
    }
}

fn is_throttled(body: &Body) -> bool {
    matches!(body, Body::Error(e) if e.code == ErrorCode::Throttled as i32 && e.retry_after_ms > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_guesses_are_all_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.throttle.free_failures_per_name = 2;
    config.throttle.base_delay = Duration::from_secs(30);
    let server = start(config).await;
    let home = Ipv4Addr::new(127, 0, 2, 1);
    assert!(code(&ask(&server, home, register("dave")).await).is_none());

    // Twelve guesses from one /24, each on its own connection, sent at once.
    const GUESSES: usize = 12;
    let mut conns = Vec::new();
    for i in 0..GUESSES {
        let host = u8::try_from(i + 1).unwrap();
        conns.push(raw_tls_from(&server, Ipv4Addr::new(127, 0, 1, host)).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(GUESSES));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut tls) in conns.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            send(&mut tls, login("dave", &format!("guess number {i}"))).await;
            reply(&mut tls).await
        });
    }
    let (mut wrong, mut throttled) = (0, 0);
    while let Some(r) = with_timeout(tasks.join_next()).await {
        let body = r.unwrap();
        match code(&body) {
            Some(ErrorCode::WrongPassword) => wrong += 1,
            Some(ErrorCode::Throttled) if is_throttled(&body) => throttled += 1,
            other => panic!("unexpected reply {other:?}: {body:?}"),
        }
    }
    // Exactly as many were checked as sequential guesses could have been:
    // two free failures and the third that starts the block.
    assert_eq!((wrong, throttled), (3, GUESSES - 3));
    // The next guess from that prefix is blocked.
    assert!(is_throttled(
        &ask(
            &server,
            Ipv4Addr::new(127, 0, 1, 99),
            login("dave", "one more")
        )
        .await
    ));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attacker_elsewhere_does_not_lock_the_user_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.argon2 = Argon2Config::insecure_for_tests();
    config.throttle.free_failures_per_name = 2;
    config.throttle.base_delay = Duration::from_secs(15 * 60);
    let server = start(config).await;
    let home = Ipv4Addr::new(127, 0, 2, 7);
    let attacker = Ipv4Addr::new(127, 0, 1, 66);
    assert!(code(&ask(&server, home, register("erin")).await).is_none());

    for i in 0..3 {
        let body = ask(&server, attacker, login("erin", &format!("guess {i}"))).await;
        assert_eq!(code(&body), Some(ErrorCode::WrongPassword), "{body:?}");
    }
    // The attacker's prefix is locked out for 15 minutes, with the right
    // password too...
    let body = ask(&server, attacker, login("erin", "correct horse battery")).await;
    assert!(is_throttled(&body), "{body:?}");
    let Body::Error(e) = &body else {
        unreachable!()
    };
    assert!(e.retry_after_ms > 14 * 60 * 1000, "{e:?}");
    // ... while erin, from her own network, logs in and gets a certificate.
    let body = ask(&server, home, login("erin", "correct horse battery")).await;
    let Body::LoginReply(reply) = body else {
        panic!("erin was refused: {body:?}");
    };
    let verified = cert::verify(
        &reply.certificate.unwrap(),
        &pinned_key(&server),
        natter_client::now_unix_secs(),
    )
    .unwrap();
    assert_eq!(verified.name, "erin");
    // Her success does not lift the attacker's block.
    let body = ask(
        &server,
        Ipv4Addr::new(127, 0, 1, 67),
        login("erin", "guess 4"),
    )
    .await;
    assert!(is_throttled(&body), "{body:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registration_flood_from_one_prefix_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.argon2 = Argon2Config::insecure_for_tests();
    let burst = usize::try_from(config.throttle.registrations_per_prefix).unwrap();
    let server = Arc::new(start(config).await);
    const FLOOD: usize = 25;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let server = Arc::clone(&server);
        tasks.spawn(async move {
            let host = u8::try_from(i + 1).unwrap();
            ask(
                &server,
                Ipv4Addr::new(127, 0, 1, host),
                register(&format!("bot{i:02}")),
            )
            .await
        });
    }
    let (mut registered, mut throttled) = (0, 0);
    while let Some(r) = with_timeout(tasks.join_next()).await {
        let body = r.unwrap();
        match &body {
            Body::RegisterReply(_) => registered += 1,
            b if is_throttled(b) => throttled += 1,
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert_eq!((registered, throttled), (burst, FLOOD - burst));
    // Another network still registers.
    let body = ask(&server, Ipv4Addr::new(127, 0, 2, 1), register("alice")).await;
    assert!(matches!(body, Body::RegisterReply(_)), "{body:?}");
    assert_eq!(
        server.service().store().list_users().await.unwrap().len(),
        burst + 1
    );
    Arc::into_inner(server).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_are_served_while_registrations_flood_the_hash_pool() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(start(config(dir.path())).await);
    let home = Ipv4Addr::new(127, 0, 2, 1);
    assert!(code(&ask(&server, home, register("frank")).await).is_none());

    // Two registrations from each of 24 /24s: within every prefix's budget,
    // so only the bound on registration hashing protects the login.
    const PREFIXES: u8 = 24;
    let answered = Arc::new(AtomicUsize::new(0));
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let first_tx = Arc::new(std::sync::Mutex::new(Some(first_tx)));
    // Every connection is up before any registration is sent, so the flood
    // arrives at once.
    let mut conns = Vec::new();
    for p in 0..PREFIXES {
        for h in 1..=2u8 {
            let source = Ipv4Addr::new(127, 0, 10 + p, h);
            conns.push((
                format!("flood{p:02}x{h}"),
                raw_tls_from(&server, source).await,
            ));
        }
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(conns.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for (name, mut tls) in conns {
        let (answered, first_tx, barrier) = (
            Arc::clone(&answered),
            Arc::clone(&first_tx),
            Arc::clone(&barrier),
        );
        tasks.spawn(async move {
            barrier.wait().await;
            send(&mut tls, register(&name)).await;
            let body = reply(&mut tls).await;
            if matches!(body, Body::RegisterReply(_)) {
                answered.fetch_add(1, Ordering::SeqCst);
                if let Some(tx) = first_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
            body
        });
    }
    // Once the flood is being hashed, frank logs in from his own network.
    with_timeout(first_rx).await.unwrap();
    let body = with_timeout(ask(&server, home, login("frank", "correct horse battery"))).await;
    assert!(matches!(body, Body::LoginReply(_)), "{body:?}");
    let done_at_login = answered.load(Ordering::SeqCst);

    let (mut registered, mut busy) = (0, 0);
    while let Some(r) = with_timeout(tasks.join_next()).await {
        let body = r.unwrap();
        match &body {
            Body::RegisterReply(_) => registered += 1,
            b if is_throttled(b) => busy += 1,
            other => panic!("unexpected reply {other:?}"),
        }
    }
    let flood = usize::from(PREFIXES) * 2;
    assert_eq!(registered + busy, flood);
    // The login did not wait for the flood's hashes: registrations were
    // still being hashed after it was answered.
    assert!(
        registered >= done_at_login + 3,
        "login answered after {done_at_login} of {registered} registrations"
    );
    // The flood's queue is bounded: the excess was refused at once.
    assert!(busy > 0, "no registration was refused");
    Arc::into_inner(server).unwrap().shutdown().await;
}
