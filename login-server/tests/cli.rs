//! The `natter-login` binary: `serve` creates its files and logs where it
//! listens and its key fingerprint; `users list` / `users disable` work on
//! the data directory.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn natter_login(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_natter-login"))
        .args(args)
        .env_remove("NATTER_LOGIN_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Kills the server if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `natter-login serve` as `command` says and returns it with its
/// "natter-login serving" log line (within 60 s); its stderr keeps draining.
fn serve(command: &mut Command) -> (KillOnDrop, String) {
    let child = command
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    std::thread::spawn(move || {
        // Reads to the end, also once nobody listens: the server never
        // meets a closed pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("server logged nothing");
        if line.contains("natter-login serving") {
            break line;
        }
    };
    (child, line)
}

#[test]
fn serve_creates_files_and_logs_fingerprint_then_admin_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();

    let (mut child, line) = serve(
        Command::new(env!("CARGO_BIN_EXE_natter-login"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_s])
            .args(["--tcp-listen", "127.0.0.1:0"])
            .args(["--argon2-m-kib", "64", "--argon2-t", "1"]),
    );
    assert!(line.contains("listen=127.0.0.1:"), "{line}");
    assert!(line.contains("tcp=127.0.0.1:"), "{line}");
    assert!(line.contains("TLS over TCP"), "{line}");
    let tcp_addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("tcp="))
        .unwrap()
        .parse()
        .unwrap();
    let pem = std::fs::read_to_string(data.join("login-key.pub")).unwrap();
    let key = natter_client::tls::parse_login_key(&pem).unwrap();
    let fingerprint = natter_proto::cert::fingerprint(&key);
    assert!(line.contains(&fingerprint), "{line} lacks {fingerprint}");
    // The TLS-over-TCP listener serves, pinned to the same key.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = natter_client::LoginClient::connect_tcp(tcp_addr, key.clone())
            .await
            .unwrap();
        assert_eq!(c.register("yann", "password123").await.unwrap(), "yann");
        c.close().await;
    });
    for (file, mode) in [
        ("login-key.pem", 0o600),
        ("tls-key.pem", 0o600),
        ("natter-login.db", 0o600),
        ("natter-login.db-wal", 0o600),
    ] {
        let m = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{file}");
    }
    assert!(data.join("natter-login.db").exists());
    // SIGTERM shuts it down cleanly (exit status 0; SQLite folds the WAL back).
    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!data.join("natter-login.db-wal").exists());

    // Admin on the data directory.
    rt.block_on(async {
        let store = natter_login::storage::Store::open(&data.join("natter-login.db"))
            .await
            .unwrap();
        store.create_user("zoe", "Zoe", "x", 1).await.unwrap();
        store.close().await;
    });
    let out = natter_login(&["users", "list", "--data-dir", data_s]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("zoe\tZoe\tactive"), "{stdout}");

    let out = natter_login(&["users", "disable", "--data-dir", data_s, "ZOE"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = natter_login(&["users", "list", "--data-dir", data_s]);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("zoe\tZoe\tdisabled")
    );

    let out = natter_login(&["users", "disable", "--data-dir", data_s, "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end(), "natter-login: no user named \"nobody\"");

    let empty = dir.path().join("empty");
    let out = natter_login(&["users", "list", "--data-dir", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("no database")
    );
}

/// `--config FILE` (or `NATTER_LOGIN_CONFIG`) sets `serve`'s options and the
/// admin commands' `--data-dir`; flags win over it; `--print-config` shows
/// where each setting came from; a misspelt setting is refused by name.
#[test]
fn serve_and_admin_commands_read_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("login.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata-dir = \"{}\"\nargon2_m_kib = 64\nargon2-t = 1\n",
            data.display()
        ),
    )
    .unwrap();
    let config_s = config.to_str().unwrap();

    let out = natter_login(&[
        "serve",
        "--config",
        config_s,
        "--argon2-t",
        "2",
        "--print-config",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("argon2-m-kib = 64  # config file"), "{text}");
    assert!(text.contains("argon2-t = 2  # flag"), "{text}");
    assert!(text.contains("max-connections = 4096  # default"), "{text}");
    assert!(!data.exists(), "--print-config started the server");

    let (child, line) = serve(
        Command::new(env!("CARGO_BIN_EXE_natter-login"))
            .arg("serve")
            .env("NATTER_LOGIN_CONFIG", &config)
            .env_remove("NATTER_LOGIN_DATA_DIR"),
    );
    assert!(line.contains("listen=127.0.0.1:"), "{line}");
    assert!(
        data.join("login-key.pem").exists(),
        "the file's data-dir was not used"
    );
    drop(child);

    let out = natter_login(&["users", "list", "--config", config_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(&config, "data-dri = \"/tmp\"\n").unwrap();
    let out = natter_login(&["users", "list", "--config", config_s]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("unknown setting `data-dri`"), "{stderr}");
    assert!(stderr.contains(config_s), "{stderr}");
}

/// deploy/natter-login.toml is a valid config file for `serve`.
#[test]
fn the_example_config_file_in_deploy_is_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/natter-login.toml");
    let out = natter_login(&["--config", file, "serve", "--print-config"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("tcp-listen = \"0.0.0.0:443\"  # config file"),
        "{text}"
    );
}
