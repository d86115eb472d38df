//! The `natter-login` binary: `serve` creates its files and logs where it
//! listens and its key fingerprint; `users list` / `users disable` work on
//! the data directory (or the database given by `--database`: this suite
//! also runs on PostgreSQL, `NATTER_TEST_DB=postgres`).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn natter_login(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_natter-login"))
        .args(args)
        .env_remove("NATTER_LOGIN_DATA_DIR")
        .env_remove("NATTER_LOGIN_DATABASE")
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
            .args(["--argon2-m-kib", "64", "--argon2-t", "1"])
            .args(common::database_args(&data)),
    );
    let db_args = common::database_args(&data);
    let db: Vec<&str> = db_args.iter().map(String::as_str).collect();
    let backend = common::test_backend();
    assert!(line.contains("listen=127.0.0.1:"), "{line}");
    assert!(line.contains("tcp=127.0.0.1:"), "{line}");
    assert!(
        line.contains(&format!("database={} ", backend.name())),
        "{line}"
    );
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
    let mut files = vec![("login-key.pem", 0o600), ("tls-key.pem", 0o600)];
    if backend == natter_login::storage::Backend::Sqlite {
        files.extend([("natter-login.db", 0o600), ("natter-login.db-wal", 0o600)]);
    }
    for (file, mode) in files {
        let m = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{file}");
    }
    // The SQLite file exactly when the database is SQLite.
    assert_eq!(
        data.join("natter-login.db").exists(),
        backend == natter_login::storage::Backend::Sqlite
    );
    // SIGTERM shuts it down cleanly (exit status 0; SQLite folds the WAL back).
    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!data.join("natter-login.db-wal").exists());

    // Admin on the data directory (and the database).
    rt.block_on(async {
        let store = common::test_store(&data).await;
        assert_eq!(store.backend(), backend);
        store.create_user("zoe", "Zoe", "x", 1).await.unwrap();
        store.close().await;
    });
    let out = natter_login(&[&["users", "list", "--data-dir", data_s], &db[..]].concat());
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("zoe\tZoe\tactive"), "{stdout}");

    let out = natter_login(&[&["users", "disable", "--data-dir", data_s, "ZOE"], &db[..]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = natter_login(&[&["users", "list", "--data-dir", data_s], &db[..]].concat());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("zoe\tZoe\tdisabled")
    );

    let out = natter_login(
        &[
            &["users", "disable", "--data-dir", data_s, "nobody"],
            &db[..],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end(), "natter-login: no user named \"nobody\"");

    // Neither a data directory nor a database: a usage error.
    let out = natter_login(&["users", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("--data-dir DIR (the SQLite file in it) or --database URL")
    );

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
    // On PostgreSQL the file names the database too (a secret: it may hold
    // a password).
    let database = common::test_database(&data)
        .map(|url| format!("database = \"{url}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata-dir = \"{}\"\nargon2_m_kib = 64\nargon2-t = 1\n{database}",
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
    if !database.is_empty() {
        assert!(
            text.contains("database = \"(secret)\"  # config file"),
            "{text}"
        );
        assert!(!text.contains("postgres://"), "{text}");
    }
    assert!(!data.exists(), "--print-config started the server");

    let (child, line) = serve(
        Command::new(env!("CARGO_BIN_EXE_natter-login"))
            .arg("serve")
            .env("NATTER_LOGIN_CONFIG", &config)
            .env_remove("NATTER_LOGIN_DATA_DIR")
            .env_remove("NATTER_LOGIN_DATABASE"),
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
