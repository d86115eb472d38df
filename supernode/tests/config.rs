//! The `natter-supernode` binary configured by a TOML file (`--config` or
//! `NATTER_SUPERNODE_CONFIG`): it starts from the file alone, flags override
//! the file, `--print-config` shows each setting's source and hides the
//! enrolment token, and a bad file stops it before it binds or writes
//! anything, naming the file and the setting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rsa::RsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};

const BIN: &str = env!("CARGO_BIN_EXE_natter-supernode");

fn issuer_pem() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/vectors/issuer.pem")
}

/// A login key file (the test issuer's public key) and a config file that
/// gives everything the supernode needs; the login address is a loopback
/// port the returned socket holds and never reads.
fn setup(dir: &Path, extra: &str) -> (PathBuf, std::net::UdpSocket) {
    let issuer =
        RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(issuer_pem()).unwrap()).unwrap();
    let login_key = dir.join("login-key.pub");
    std::fs::write(
        &login_key,
        issuer
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = dir.join("supernode.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nlogin = \"{}\"\nlogin_key = \"{}\"\n\
             issuer-key = \"{}\"\ndata-dir = \"{}\"\nreplicas = 2\n{extra}",
            sink.local_addr().unwrap(),
            login_key.display(),
            issuer_pem().display(),
            dir.join("data").display(),
        ),
    )
    .unwrap();
    (config, sink)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_supernode_runs_from_its_config_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _sink) = setup(dir.path(), "");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env_remove("NATTER_SUPERNODE_ENROL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "natter-supernode listening on 127.0.0.1:PORT node id HEX"
    assert!(
        line.starts_with("natter-supernode listening on 127.0.0.1:"),
        "{line:?}"
    );
    // The data directory named only in the file holds the node's key.
    assert!(
        std::fs::read_dir(dir.path().join("data")).unwrap().count() > 0,
        "the file's data-dir was not used"
    );
}

#[test]
fn print_config_shows_sources_flags_win_and_the_token_is_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _sink) = setup(dir.path(), "peer = [\"127.0.0.1:7\", \"127.0.0.1:8\"]\n");
    let out = Command::new(BIN)
        .args(["--replicas", "4", "--print-config"])
        .env("NATTER_SUPERNODE_CONFIG", &config)
        .env("NATTER_SUPERNODE_ENROL", "s3cret-token")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("replicas = 4  # flag"), "{text}");
    assert!(
        text.contains("listen = \"127.0.0.1:0\"  # config file"),
        "{text}"
    );
    assert!(
        text.contains("peer = [\"127.0.0.1:7\", \"127.0.0.1:8\"]  # config file"),
        "{text}"
    );
    assert!(text.contains("max-relays = 10000  # default"), "{text}");
    assert!(
        text.contains("enrol = \"(secret)\"  # environment"),
        "{text}"
    );
    assert!(!text.contains("s3cret-token"), "{text}");
    // Nothing was started: no data directory.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn a_bad_config_file_stops_the_supernode_with_the_file_and_setting_named() {
    for (extra, needle) in [
        ("max-relay = 5\n", "unknown setting `max-relay`"),
        ("relay-lifetime = 0\n", "setting `relay-lifetime`"),
        ("udp = 5\n", "setting `udp`"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (config, _sink) = setup(dir.path(), extra);
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {stderr}");
        assert!(stderr.contains(needle), "{extra}: {stderr}");
        assert!(stderr.contains(config.to_str().unwrap()), "{stderr}");
        assert!(out.stdout.is_empty());
        assert!(!dir.path().join("data").exists(), "{extra}: it started");
    }
}

/// deploy/natter-supernode.toml is a valid config file (it only prints here:
/// nothing is started).
#[test]
fn the_example_config_file_in_deploy_is_valid() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/natter-supernode.toml");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .arg("--print-config")
        .env_remove("NATTER_SUPERNODE_ENROL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("peer = [\"192.0.2.11:4433\", \"192.0.2.12:4433\"]  # config file"),
        "{text}"
    );
}
