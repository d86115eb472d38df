//! Login-server throughput, single core:
//!
//! - `cert_issue`: certificate issuances per second (RSA-2048 PKCS#1 v1.5
//!   signing of a certificate body);
//! - `full_login`: complete logins per second through the service at the
//!   default argon2 cost (19 MiB, t=2, p=1): name check, argon2id verify,
//!   RSA signing, the issuance transaction in SQLite, the supernode query.
//!
//! Both report `thrpt` in elements (issuances / logins) per second. The
//! service runs on a current-thread runtime with one CPU worker, so the
//! figures are per core. Run: `cargo bench -p natter-login`.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natter_login::storage::Store;
use natter_login::{Config, LoginService};
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
    let issuer = Issuer::new(issuer_key);
    let subject = user_key.to_public_key();
    let mut group = c.benchmark_group("login-server");
    group.throughput(Throughput::Elements(1));
    let mut serial = 0u64;
    group.bench_function("cert_issue", |b| {
        b.iter(|| {
            serial += 1;
            black_box(issuer.issue("alice", &subject, serial, 1_700_000_000, 1_700_086_400))
        });
    });
    group.finish();
}

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
        }),
    );
    let mut group = c.benchmark_group("login-server");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("full_login_default_argon2", |b| {
        b.iter(|| {
            let reply = rt.block_on(service.handle(request.clone(), peer));
            assert!(matches!(reply.body, Some(Body::LoginReply(_))));
            black_box(reply)
        });
    });
    group.finish();
}

criterion_group!(benches, cert_issue, full_login);
criterion_main!(benches);
