//! What the supernode's benches share: settings from the environment and
//! the bench users' identities (the test vectors' issuer and one key pair
//! every bench user shares, so that no RSA key is generated per user).
//! Included by `relay/main.rs` and `load/main.rs` with `#[path]`. Also the
//! one way a bench starts a server process and learns its address.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natter_proto::cert::{Identity, Issuer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{RsaPrivateKey, RsaPublicKey};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

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

/// A server under test as a child process (a supernode, the bare
/// forwarder); killed when dropped.
pub struct ServerProcess {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub pid: String,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Kills the server and waits (up to 5 s) until it is gone.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Starts `command` and reads the server's address from the first line it
/// prints (`natter-supernode listening on ADDR node id HEX`, or any line
/// `... on ADDR`). `what` names it in a failure.
pub async fn spawn_server(mut command: Command, what: &str) -> ServerProcess {
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let pid = child.id().expect("child pid").to_string();
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
        .await
        .unwrap_or_else(|_| panic!("{what} did not start within 10 s"))
        .unwrap_or_else(|e| panic!("reading the stdout of {what}: {e}"));
    let addr = line
        .split_whitespace()
        .skip_while(|w| *w != "on")
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from {what}: {line:?}"));
    ServerProcess {
        child,
        _stdout: stdout,
        pid,
        addr,
    }
}
