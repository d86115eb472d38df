//! Fixtures shared by the integration tests: the published test keys.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_proto::cert::{Identity, Issuer};
use rsa::RsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;

pub const NOW: i64 = 1_800_000_000;
pub const DAY: i64 = 86_400;

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
        name,
        &key.to_public_key(),
        7,
        NOW - 60,
        NOW + DAY,
    );
    Identity { key, certificate }
}
