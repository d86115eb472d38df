//! Shared helpers: a real login server on loopback QUIC with a real
//! database file in a temporary directory.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
#![allow(dead_code)] // each test crate uses a subset

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use natter_client::LoginClient;
use natter_login::{Argon2Config, Config, LoginServer, ThrottleConfig};
use rsa::RsaPrivateKey;

/// A config with a cheap argon2 cost and a lenient throttle.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir);
    config.argon2 = Argon2Config::insecure_for_tests();
    config.throttle = ThrottleConfig {
        free_failures_per_name: 100,
        free_failures_per_addr: 1000,
        ..ThrottleConfig::default()
    };
    config
}

pub async fn start(config: Config) -> LoginServer {
    LoginServer::start(config).await.expect("server starts")
}

pub async fn client(server: &LoginServer) -> LoginClient {
    let key = natter_client::tls::read_login_key(server.public_key_path()).unwrap();
    LoginClient::connect(server.local_addr(), key)
        .await
        .unwrap()
}

/// RSA-2048 key generation is slow; tests share a few keys.
pub fn user_key(i: usize) -> RsaPrivateKey {
    static KEYS: OnceLock<Vec<RsaPrivateKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..2)
            .map(|_| RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap())
            .collect()
    })[i % 2]
        .clone()
}

pub async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test step timed out")
}
