//! Fixed keys shared by the fuzz targets: the published test vectors of
//! docs/PROTOCOL.md and the test keys of `proto/tests/vectors/`, so a seed
//! taken from a vector (a sealed SoM datagram, a certificate) is valid input.

use std::sync::LazyLock;

use natter_proto::cert::{Identity, Issuer};
use natter_proto::handshake::DirectionKeys;
use rsa::RsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;

/// Unix seconds inside the validity of [`identity`]'s certificate and of the
/// `cert.body` vector (1 800 000 000 ..= 1 800 086 400).
pub const NOW_S: i64 = 1_800_000_100;

/// The `som.key` / `som.iv` vector: the `som.datagram` vector opens with it.
pub fn som_keys() -> DirectionKeys {
    DirectionKeys {
        key: std::array::from_fn(|i| i as u8),
        iv: std::array::from_fn(|i| 0xa0 + i as u8),
    }
}

/// The other direction of a call in the session and call targets.
pub fn other_keys() -> DirectionKeys {
    DirectionKeys {
        key: std::array::from_fn(|i| 0x40 ^ i as u8),
        iv: std::array::from_fn(|i| 0x10 + i as u8),
    }
}

fn key(pem: &str) -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_pem(pem).expect("the published test key parses")
}

/// The test login server (`proto/tests/vectors/issuer.pem`).
pub static ISSUER: LazyLock<Issuer> =
    LazyLock::new(|| Issuer::new(key(include_str!("../../proto/tests/vectors/issuer.pem"))));

/// An identity with a certificate from [`ISSUER`], valid at [`NOW_S`].
pub fn identity(name: &str, pem: &str) -> Identity {
    let key = key(pem);
    // Blinding draws randomness but the signature bytes are the same as
    // unblinded (PKCS#1 v1.5 is deterministic), so the seeds stay valid.
    let certificate = ISSUER.issue(
        &mut rsa::rand_core::OsRng,
        &natter_proto::cert::Subject::User {
            name,
            key: &key.to_public_key(),
            chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
        },
        7,
        NOW_S - 100,
        NOW_S + 86_400,
    );
    Identity {
        key,
        certificate,
        chat_secret: [0x11; 32],
    }
}

/// Alice (`proto/tests/vectors/alice.pem`), the caller of the call target.
pub static ALICE: LazyLock<Identity> =
    LazyLock::new(|| identity("alice", include_str!("../../proto/tests/vectors/alice.pem")));

/// Bob (`proto/tests/vectors/bob.pem`), the callee of the call target.
pub static BOB: LazyLock<Identity> =
    LazyLock::new(|| identity("bob", include_str!("../../proto/tests/vectors/bob.pem")));
