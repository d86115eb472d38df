//! Login-server throughput, single core:
//!
//! - `cert_issue`: certificate issuances per second (RSA-2048 PKCS#1 v1.5
//!   signing of a certificate body, blinded);
//! - `cert_sign_unblinded_baseline`: the same signature without blinding, for
//!   comparison under the same load;
//! - `full_login`: complete logins per second through the service at the
//!   default argon2 cost (19 MiB, t=2, p=1): name check, argon2id verify,
//!   RSA signing, the issuance transaction in SQLite, the supernode query.
//!
//! - `loopback_login`: complete logins per second by a real
//!   `natter_client::LoginClient` against a real `LoginServer` on loopback
//!   QUIC (TLS, framing, sessions on top of `full_login`), at the default
//!   argon2 cost and at the test cost (where RSA signing and the transport
//!   dominate instead of argon2).
//!
//! All report `thrpt` in elements (issuances / logins) per second. The
//! in-process service runs on a current-thread runtime with one CPU worker,
//! so those figures are per core; the loopback server uses its default
//! worker count. Run: `cargo bench -p natter-login --bench login`.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natter_login::storage::Store;
use natter_login::{Argon2Config, Config, LoginServer, LoginService};
use natter_proto::cert::{self, Issuer};
use natter_proto::messages::{Envelope, LoginRequest, RegisterRequest, envelope::Body};
use rsa::RsaPrivateKey;

fn keys() -> (RsaPrivateKey, RsaPrivateKey) {
    let mut rng = rand::rngs::OsRng;
    (
        RsaPrivateKey::new(&mut rng, 2048).expect("issuer key"),
        RsaPrivateKey::new(&mut rng, 2048).expect("user key"),
    )
}

fn cert_issue(c: &mut Criterion) {
    let (issuer_key, user_key) = keys();
    let issuer = Issuer::new(issuer_key.clone());
    let subject = user_key.to_public_key();
    let mut group = c.benchmark_group("login-server");
    group.throughput(Throughput::Elements(1));
    let mut serial = 0u64;
    let mut rng = rand::rngs::OsRng;
    group.bench_function("cert_issue", |b| {
        b.iter(|| {
            serial += 1;
            black_box(issuer.issue(
                &mut rng,
                &natter_proto::cert::Subject::User {
                    name: "alice",
                    key: &subject,
                    chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
                },
                serial,
                1_700_000_000,
                1_700_086_400,
            ))
        });
    });
    // The same body signed without blinding (what `cert_issue` did before
    // RUSTSEC-2023-0071 was addressed), measured alongside under the same load.
    let body = issuer
        .issue(
            &mut rng,
            &cert::Subject::User {
                name: "alice",
                key: &subject,
                chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
            },
            1,
            1_700_000_000,
            1_700_086_400,
        )
        .body;
    group.bench_function("cert_sign_unblinded_baseline", |b| {
        b.iter(|| black_box(cert::sign(&issuer_key, &body)));
    });
    group.finish();
}

/// The connection exporter the bench's login proof is bound to (the
/// service is called directly, without a TLS connection).
const EXPORTER: natter_proto::binding::Exporter = [0x5a; natter_proto::binding::EXPORTER_LEN];

fn full_login(c: &mut Criterion) {
    let (issuer_key, user_key) = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let peer: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
    let mut config = Config::new(peer, dir.path());
    config.cpu_workers = 1;
    let service = rt.block_on(async {
        let store = Store::open(&dir.path().join("bench.db"))
            .await
            .expect("store");
        let service = LoginService::new(store, Issuer::new(issuer_key), &config).expect("service");
        let reply = service
            .handle(
                Envelope::new(
                    1,
                    Body::RegisterRequest(RegisterRequest {
                        name: "alice".into(),
                        password: "correct horse battery".into(),
                    }),
                ),
                peer,
                &EXPORTER,
            )
            .await;
        assert!(
            matches!(reply.body, Some(Body::RegisterReply(_))),
            "{reply:?}"
        );
        service
    });
    let request = Envelope::new(
        2,
        Body::LoginRequest(LoginRequest {
            name: "alice".into(),
            password: "correct horse battery".into(),
            public_key: cert::public_key_der(&user_key.to_public_key()),
            chat_key: cert::chat_public(&[0x11; 32]).to_vec(),
            proof: cert::sign(
                &user_key,
                &natter_proto::binding::login_message(
                    &EXPORTER,
                    "alice",
                    &cert::public_key_der(&user_key.to_public_key()),
                    &cert::chat_public(&[0x11; 32]),
                ),
            ),
        }),
    );
    let mut group = c.benchmark_group("login-server");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("full_login_default_argon2", |b| {
        b.iter(|| {
            let reply = rt.block_on(service.handle(request.clone(), peer, &EXPORTER));
            assert!(matches!(reply.body, Some(Body::LoginReply(_))));
            black_box(reply)
        });
    });
    group.finish();
}

fn loopback_login(c: &mut Criterion) {
    let (_, user_key) = keys();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("login-server");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for (label, argon2) in [
        ("loopback_login_default_argon2", Argon2Config::default()),
        (
            "loopback_login_test_argon2",
            Argon2Config::insecure_for_tests(),
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new("127.0.0.1:0".parse().expect("addr"), dir.path());
        config.argon2 = argon2;
        let (server, client) = rt.block_on(async {
            let server = LoginServer::start(config).await.expect("server starts");
            let pinned =
                natter_client::tls::read_login_key(server.public_key_path()).expect("login key");
            let client = natter_client::LoginClient::connect(server.local_addr(), pinned)
                .await
                .expect("client connects");
            client
                .register("alice", "correct horse battery")
                .await
                .expect("register");
            (server, client)
        });
        group.bench_function(label, |b| {
            b.iter(|| {
                let outcome = rt
                    .block_on(client.login(
                        "alice",
                        "correct horse battery",
                        &user_key,
                        &[0x11; 32],
                    ))
                    .expect("login");
                black_box(outcome)
            });
        });
        rt.block_on(async {
            client.close().await;
            server.shutdown().await;
        });
    }
    group.finish();
}

criterion_group!(benches, cert_issue, full_login, loopback_login);
criterion_main!(benches);
