//! The `natter` command line against a real login server (QUIC on
//! loopback, SQLite file): exit codes and one-line errors.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use natter_login::{Argon2Config, Config, LoginServer, ThrottleConfig};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

struct Env {
    server: LoginServer,
    _data: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

async fn env_with(tune: impl FnOnce(&mut Config)) -> Env {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), data.path());
    config.argon2 = Argon2Config::insecure_for_tests();
    config.throttle = ThrottleConfig {
        free_failures_per_name: 100,
        free_failures_per_addr: 1000,
        ..ThrottleConfig::default()
    };
    tune(&mut config);
    let server = LoginServer::start(config).await.unwrap();
    Env {
        server,
        _data: data,
        tmp: tempfile::tempdir().unwrap(),
    }
}

impl Env {
    fn home(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn password_file(&self, password: &str) -> PathBuf {
        let path = self.tmp.path().join(format!("pw-{}", password.len()));
        std::fs::write(&path, format!("{password}\n")).unwrap();
        path
    }

    /// Runs `natter --home HOME --login ADDR --login-key KEY [--password-file F] ARGS`.
    async fn natter(&self, home: &str, password: Option<&str>, args: &[&str]) -> Out {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_natter"));
        cmd.arg("--home")
            .arg(self.home(home))
            .arg("--login")
            .arg(self.server.local_addr().to_string())
            .arg("--login-key")
            .arg(self.server.public_key_path());
        if let Some(password) = password {
            cmd.arg("--password-file").arg(self.password_file(password));
        }
        run(cmd.args(args)).await
    }
}

async fn run(cmd: &mut tokio::process::Command) -> Out {
    let out = cmd
        .env_remove("NATTER_PASSWORD")
        .env_remove("NATTER_HOME")
        .env_remove("NATTER_LOGIN")
        .env_remove("NATTER_LOGIN_KEY")
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("natter timed out")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts a failure with exactly one stderr line containing `needle`.
#[track_caller]
fn assert_fails(out: &Out, needle: &str) {
    assert_eq!(out.code, 1, "stdout: {} stderr: {}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr must be one line: {:?}", out.stderr);
    assert!(lines[0].starts_with("natter: "), "{}", lines[0]);
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[track_caller]
fn assert_ok(out: &Out, needle: &str) {
    assert_eq!(out.code, 0, "stdout: {} stderr: {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(needle),
        "{:?} lacks {needle:?}",
        out.stdout
    );
}

#[tokio::test]
async fn register_login_status_and_every_error() {
    let env = env_with(|_| {}).await;
    let pw = Some("password123");

    assert_ok(
        &env.natter("a", pw, &["register", "Alice"]).await,
        "registered alice",
    );
    assert_fails(
        &env.natter("a", pw, &["register", "alice"]).await,
        "is already taken",
    );
    assert_fails(
        &env.natter("a", pw, &["register", "9lives"]).await,
        "invalid name",
    );
    assert_fails(
        &env.natter("a", Some("short"), &["register", "bob"]).await,
        "password too short",
    );
    // `register` logged in: the certificate is stored.
    assert!(env.home("a").join("identity.key").exists());
    assert!(env.home("a").join("identity.cert").exists());
    assert_ok(
        &env.natter("a", None, &["status"]).await,
        "logged in as alice",
    );
    // Another machine ("b") without a certificate.
    assert_fails(
        &env.natter("b", pw, &["login", "nobody"]).await,
        "no account named \"nobody\"",
    );
    assert_fails(
        &env.natter("b", Some("not it at all"), &["login", "alice"])
            .await,
        "wrong password",
    );
    assert_fails(&env.natter("b", None, &["status"]).await, "not logged in");
    // Non-interactive and no password given.
    assert_fails(
        &env.natter("b", None, &["login", "alice"]).await,
        "no password",
    );

    assert_ok(
        &env.natter("b", pw, &["login", "alice"]).await,
        "logged in as alice",
    );
    assert!(env.home("b").join("identity.key").exists());
    assert!(env.home("b").join("identity.cert").exists());
    // Reused without the server or a password.
    let again = env.natter("a", None, &["login", "alice"]).await;
    assert_ok(&again, "already logged in as alice");
    assert_ok(
        &env.natter("a", None, &["status"]).await,
        "logged in as alice",
    );

    // Disabled account.
    natter_login::admin::set_disabled(&env_data_dir(&env), "alice", true)
        .await
        .unwrap();
    assert_fails(
        &env.natter("c", pw, &["login", "alice"]).await,
        "is disabled",
    );
}

fn env_data_dir(env: &Env) -> PathBuf {
    env.server
        .public_key_path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap()
}

#[tokio::test]
async fn password_from_the_environment() {
    let env = env_with(|_| {}).await;
    assert_ok(
        &env.natter("a", Some("password123"), &["register", "eve"])
            .await,
        "registered eve",
    );
    // Another home: `register` logged "a" in already.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_natter"));
    cmd.arg("--home")
        .arg(env.home("b"))
        .arg("--login")
        .arg(env.server.local_addr().to_string())
        .arg("--login-key")
        .arg(env.server.public_key_path())
        .args(["login", "eve"])
        .env("NATTER_PASSWORD", "password123")
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged in as eve"));
}

#[tokio::test]
async fn expired_session_is_a_clear_error() {
    let env = env_with(|c| {
        c.cert_validity = Duration::from_secs(1);
        c.cert_backdate = Duration::ZERO;
    })
    .await;
    let pw = Some("password123");
    assert_ok(
        &env.natter("a", pw, &["register", "mallory"]).await,
        "registered",
    );
    assert_ok(
        &env.natter("a", pw, &["login", "mallory"]).await,
        "logged in as mallory",
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_fails(&env.natter("a", None, &["status"]).await, "session expired");
    // Logging in again renews it.
    assert_ok(
        &env.natter("a", pw, &["login", "mallory"]).await,
        "logged in as mallory",
    );
}

#[tokio::test]
async fn throttled_and_unreachable_and_wrong_key() {
    let env = env_with(|c| {
        c.throttle.free_failures_per_name = 1;
        c.throttle.base_delay = Duration::from_secs(30);
    })
    .await;
    assert_ok(
        &env.natter("a", Some("password123"), &["register", "oscar"])
            .await,
        "registered",
    );
    // From another home ("a" is logged in by `register`).
    assert_fails(
        &env.natter("b", Some("bad password"), &["login", "oscar"])
            .await,
        "wrong password",
    );
    assert_fails(
        &env.natter("b", Some("bad password"), &["login", "oscar"])
            .await,
        "wrong password",
    );
    // The wait counts down from 30 s while this `natter` starts and makes
    // its key, so under load it may already say 29 s (or less).
    let out = env
        .natter("b", Some("password123"), &["login", "oscar"])
        .await;
    assert_fails(&out, "too many failed attempts; try again in ");
    let wait: u32 = out
        .stderr
        .trim_end()
        .trim_end_matches(" s")
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait in {:?}", out.stderr));
    assert!((20..=30).contains(&wait), "{:?}", out.stderr);

    // A login key that is not the server's: the handshake fails.
    let other = env.tmp.path().join("other.pub");
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    std::fs::write(
        &other,
        rsa::pkcs8::EncodePublicKey::to_public_key_pem(
            &key.to_public_key(),
            rsa::pkcs8::LineEnding::LF,
        )
        .unwrap(),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_natter"));
    cmd.arg("--home")
        .arg(env.home("a"))
        .arg("--login")
        .arg(env.server.local_addr().to_string())
        .arg("--login-key")
        .arg(&other)
        .arg("--password-file")
        .arg(env.password_file("password123"))
        .args(["login", "oscar"]);
    assert_fails(&run(&mut cmd).await, "cannot reach the login server");
    assert_fails(
        &run(tokio::process::Command::new(env!("CARGO_BIN_EXE_natter"))
            .arg("--home")
            .arg(env.home("a"))
            .arg("--login-key")
            .arg("/nonexistent/login-key.pub")
            .args(["status"]))
        .await,
        "/nonexistent/login-key.pub",
    );
}

#[tokio::test]
async fn buddies_push_pull_across_machines() {
    let env = env_with(|_| {}).await;
    let pw = Some("password123");
    assert_ok(
        &env.natter("a", pw, &["register", "peggy"]).await,
        "registered",
    );
    assert_ok(&env.natter("a", pw, &["login", "peggy"]).await, "logged in");
    std::fs::write(env.home("a").join("buddies.txt"), "victor\nwalter\n").unwrap();
    assert_ok(
        &env.natter("a", pw, &["buddies", "push"]).await,
        "pushed 2 buddies (version 1)",
    );

    // Machine B: never logged in, names the account explicitly.
    assert_ok(
        &env.natter("b", pw, &["buddies", "pull", "--name", "peggy"])
            .await,
        "pulled 2 buddies (version 1)",
    );
    let text = std::fs::read_to_string(env.home("b").join("buddies.txt")).unwrap();
    assert_eq!(text, "victor\nwalter\n");

    // B adds a buddy and pushes; A's next push is stale.
    std::fs::write(env.home("b").join("buddies.txt"), "victor\nwalter\ntrent\n").unwrap();
    assert_ok(
        &env.natter("b", pw, &["buddies", "push", "--name", "peggy"])
            .await,
        "version 2",
    );
    assert_fails(
        &env.natter("a", pw, &["buddies", "push"]).await,
        "stale buddy list",
    );
    assert_ok(
        &env.natter("a", pw, &["buddies", "pull"]).await,
        "pulled 3 buddies (version 2)",
    );
}

/// `natter --config FILE` (or `NATTER_CONFIG`): the file's settings reach the
/// commands (a login through the login server named only in the file), flags
/// win over it, `--print-config` shows the sources, a misspelt setting is
/// refused by name (exit status 2).
#[tokio::test]
async fn the_config_file_sets_the_client_options() {
    let env = env_with(|_| {}).await;
    let config = env.tmp.path().join("natter.toml");
    std::fs::write(
        &config,
        format!(
            "home = \"{}\"\nlogin = \"{}\"\nlogin-key = \"{}\"\npassword-file = \"{}\"\n\
             bootstrap = [\"127.0.0.1:9\"]\n",
            env.home("c").display(),
            env.server.local_addr(),
            env.server.public_key_path().display(),
            env.password_file("password123").display(),
        ),
    )
    .unwrap();
    let natter = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_natter"));
        cmd.env("NATTER_CONFIG", &config).args(args);
        cmd
    };
    assert_ok(
        &run(&mut natter(&["register", "carol"])).await,
        "registered carol",
    );
    assert_ok(
        &run(&mut natter(&["login", "carol"])).await,
        "logged in as carol",
    );
    assert!(env.home("c").exists(), "the file's home was not used");

    let out = run(&mut natter(&[
        "--bootstrap",
        "127.0.0.1:8",
        "--print-config",
        "status",
    ]))
    .await;
    assert_ok(&out, "bootstrap = [\"127.0.0.1:8\"]  # flag");
    assert!(out.stdout.contains("login = \""), "{}", out.stdout);
    assert!(out.stdout.contains("# config file"), "{}", out.stdout);

    std::fs::write(&config, "logn = \"127.0.0.1:1\"\n").unwrap();
    let out = run(&mut natter(&["status"])).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown setting `logn`"),
        "{}",
        out.stderr
    );
}

/// deploy/natter.toml is a valid config file for the client.
#[tokio::test]
async fn the_example_config_file_in_deploy_is_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/natter.toml");
    let out = run(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_natter")).args([
            "--config",
            file,
            "--print-config",
            "status",
        ]),
    )
    .await;
    assert_ok(&out, "bootstrap = [\"192.0.2.10:4433\"]  # config file");
}
