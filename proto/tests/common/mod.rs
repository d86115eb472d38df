//! Fixtures shared by the integration tests: the published test keys.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_proto::cert::{Identity, Issuer};
use rsa::RsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;

pub const NOW: i64 = 1_800_000_000;
pub const DAY: i64 = 86_400;
/// The chat key every test certificate carries (the X25519 public key of
/// the secret `[0x11; 32]`, see `vectors.rs`).
pub const TEST_CHAT_KEY: [u8; 32] = [
    0x7b, 0x4e, 0x90, 0x9b, 0xbe, 0x7f, 0xfe, 0x44, 0xc4, 0x65, 0xa2, 0x20, 0x03, 0x7d, 0x60, 0x8e,
    0xe3, 0x58, 0x97, 0xd3, 0x1e, 0xf9, 0x72, 0xf0, 0x7f, 0x74, 0x89, 0x2c, 0xb0, 0xf7, 0x3f, 0x13,
];

pub fn key(name: &str) -> RsaPrivateKey {
    let path = format!("{}/tests/vectors/{name}.pem", env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    RsaPrivateKey::from_pkcs8_pem(&pem).expect("test key parses")
}

/// A seeded generator for the issuer's blinding (signatures do not depend on it).
pub fn blinding_rng() -> rand_chacha::ChaCha20Rng {
    rand_core::SeedableRng::seed_from_u64(0x6e61_7474)
}

pub fn issuer() -> Issuer {
    Issuer::new(key("issuer"))
}

/// An identity for `name` with a fresh one-day certificate from the test issuer.
pub fn identity(name: &str, key_name: &str) -> Identity {
    let key = key(key_name);
    let certificate = issuer().issue(
        &mut blinding_rng(),
        &natter_proto::cert::Subject::User {
            name,
            key: &key.to_public_key(),
            chat_key: TEST_CHAT_KEY,
        },
        7,
        NOW - 60,
        NOW + DAY,
    );
    Identity {
        key,
        certificate,
        chat_secret: [0x11; 32],
    }
}

/// Both ends of one call's media transport, caller first, started at 0 ms
/// with the same test keys and default settings: side `i` starts its
/// packet index at `100 + i` and seeds its random bits with `7 + i`.
pub fn call_sessions(
    udp_blocked: [bool; 2],
    behind_nat: bool,
) -> [natter_proto::session::CallSession; 2] {
    use natter_proto::handshake::KeySchedule;
    use natter_proto::session::{CallSession, SessionConfig, SessionSetup};
    let keys = KeySchedule::derive(&[1; 16], &[2; 32], &[3; 32]);
    let setup = |i: usize| SessionSetup {
        udp_blocked: udp_blocked[i],
        behind_nat,
        start_index: 100 + i as u16,
        seed: 7 + i as u64,
    };
    let config = SessionConfig::default();
    [
        CallSession::new(&keys.c2s, &keys.s2c, setup(0), config, 0),
        CallSession::new(&keys.s2c, &keys.c2s, setup(1), config, 0),
    ]
}
