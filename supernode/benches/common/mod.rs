//! What the supernode's benches share: settings from the environment and
//! the bench users' identities (the test vectors' issuer and one key pair
//! every bench user shares, so that no RSA key is generated per user).
//! Included by `relay.rs` and `load/main.rs` with `#[path]`.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use natter_proto::cert::{Identity, Issuer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{RsaPrivateKey, RsaPublicKey};

/// The environment variable `name` parsed, or `default` when it is unset;
/// a value that does not parse stops the bench naming it.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} does not parse")),
        Err(_) => default,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn read_key(path: &str) -> RsaPrivateKey {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    RsaPrivateKey::from_pkcs8_pem(&pem).unwrap()
}

/// The issuer and the one key pair every bench user shares.
#[derive(Debug)]
pub struct Keys {
    pub issuer: Issuer,
    user_key: RsaPrivateKey,
    user_public: RsaPublicKey,
}

impl Keys {
    pub fn load() -> Self {
        let user_key = read_key("../proto/tests/vectors/alice.pem");
        Self {
            issuer: Issuer::new(read_key("../proto/tests/vectors/issuer.pem")),
            user_public: user_key.to_public_key(),
            user_key,
        }
    }

    /// A certificate for `name` (valid for an hour) on the shared key.
    pub fn identity(&self, name: &str, serial: u64) -> Identity {
        let now = unix_now();
        let certificate = self.issuer.issue(
            &mut StdRng::seed_from_u64(serial),
            &natter_proto::cert::Subject::User {
                name,
                key: &self.user_public,
                chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
            },
            serial,
            now - 300,
            now + 3600,
        );
        Identity {
            key: self.user_key.clone(),
            certificate,
            chat_secret: [0x11; 32],
        }
    }
}
