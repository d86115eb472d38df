//! The issuer's RSA private-key operation is blinded (RUSTSEC-2023-0071):
//! randomness is drawn for every signature, and the signature bytes are
//! exactly those of unblinded PKCS#1 v1.5 signing (so every vector holds).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DAY, NOW, key};
use natter_proto::cert::{self, Issuer};
use rand_core::{CryptoRng, RngCore, SeedableRng};

/// Counts and records every byte drawn from a seeded generator.
struct CountingRng {
    inner: rand_chacha::ChaCha20Rng,
    drawn: Vec<u8>,
}

impl CountingRng {
    fn new(seed: u64) -> Self {
        Self {
            inner: rand_chacha::ChaCha20Rng::seed_from_u64(seed),
            drawn: Vec::new(),
        }
    }
}

impl RngCore for CountingRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest);
        self.drawn.extend_from_slice(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for CountingRng {}

#[test]
fn blinded_and_unblinded_signatures_are_the_same_bytes_for_the_vector_keys() {
    let issuer_key = key("issuer");
    let issuer = Issuer::new(issuer_key.clone());
    for (i, subject) in ["alice", "bob"].into_iter().enumerate() {
        let mut rng = CountingRng::new(u64::try_from(i).unwrap());
        let certificate = issuer.issue(
            &mut rng,
            &natter_proto::cert::Subject::User {
                name: subject,
                key: &key(subject).to_public_key(),
                chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
            },
            1,
            NOW,
            NOW + DAY,
        );
        assert!(!rng.drawn.is_empty(), "issuing drew no randomness");
        assert_eq!(
            certificate.signature,
            cert::sign(&issuer_key, &certificate.body),
            "blinded signature differs from the unblinded one for {subject}"
        );
        cert::verify(&certificate, &issuer.public_key(), NOW).unwrap();
    }
    // The free-standing function too, on other messages and keys.
    for name in ["alice", "bob", "issuer"] {
        let k = key(name);
        for message in [&b""[..], b"NATTER-JOIN-V1", &[0xa5; 300]] {
            assert_eq!(
                cert::sign_blinded(&k, &mut CountingRng::new(7), message),
                cert::sign(&k, message)
            );
        }
    }
}

#[test]
fn every_issued_signature_draws_fresh_randomness() {
    let issuer = Issuer::new(key("issuer"));
    let subject = key("alice").to_public_key();
    let mut rng = CountingRng::new(42);
    let mut per_signature = Vec::new();
    let mut signatures = Vec::new();
    for serial in 0..4u64 {
        let before = rng.drawn.len();
        let c = issuer.issue(&mut rng, &alice(&subject), serial, NOW, NOW + DAY);
        let drawn = rng.drawn[before..].to_vec();
        // A blinding factor is at least as long as the 2048-bit modulus.
        assert!(
            drawn.len() >= 256,
            "signature {serial} drew only {} bytes",
            drawn.len()
        );
        per_signature.push(drawn);
        signatures.push(c.signature);
    }
    // Each signature drew its own bytes: none reused from an earlier one.
    for i in 0..per_signature.len() {
        for j in 0..i {
            assert_ne!(per_signature[i], per_signature[j]);
        }
    }
    // Same body (same serial) signed twice with different blinding: same bytes.
    let again = issuer.issue(&mut rng, &alice(&subject), 0, NOW, NOW + DAY);
    assert_eq!(again.signature, signatures[0]);
}

fn alice(key: &rsa::RsaPublicKey) -> natter_proto::cert::Subject<'_> {
    natter_proto::cert::Subject::User {
        name: "alice",
        key,
        chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
    }
}
