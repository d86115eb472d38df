//! Shared helpers: a real login server on loopback QUIC with a real
//! database: a SQLite file in a temporary directory or, with
//! `NATTER_TEST_DB=postgres`, a database of its own in a throwaway
//! PostgreSQL cluster ([`pg`]). `scripts/test` runs this suite both ways.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
#![allow(dead_code)] // each test crate uses a subset

pub mod pg;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use natter_client::LoginClient;
use natter_login::storage::{Backend, Store};
use natter_login::{Argon2Config, Config, LoginServer, ThrottleConfig};
use rsa::RsaPrivateKey;

/// The database the tests run on: `NATTER_TEST_DB=postgres` (or
/// `sqlite`, the default).
pub fn test_backend() -> Backend {
    match std::env::var("NATTER_TEST_DB").as_deref() {
        Err(_) | Ok("" | "sqlite") => Backend::Sqlite,
        Ok("postgres") => Backend::Postgres,
        Ok(other) => panic!("NATTER_TEST_DB={other:?}: use sqlite or postgres"),
    }
}

/// The `database` setting for a server whose data directory is `dir`:
/// `None` (the SQLite file in `dir`) or, on PostgreSQL, the URL of a new
/// database in the shared cluster; the same one again for the same `dir`,
/// so a server restarted on its data directory finds its accounts.
pub fn test_database(dir: &Path) -> Option<String> {
    if test_backend() == Backend::Sqlite {
        return None;
    }
    static BY_DIR: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let mut map = BY_DIR.get_or_init(Mutex::default).lock().unwrap();
    Some(
        map.entry(dir.to_owned())
            .or_insert_with(|| pg::PgCluster::shared().create_database())
            .clone(),
    )
}

/// The URL of the database a server on `dir` uses: [`test_database`], or
/// the SQLite file in `dir`.
pub fn test_url(dir: &Path) -> String {
    test_database(dir).unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            dir.join(natter_login::datadir::DB_FILE).display()
        )
    })
}

/// Opens the store a server on `dir` uses (see [`test_database`]).
pub async fn test_store(dir: &Path) -> Store {
    Store::connect(&test_url(dir)).await.unwrap()
}

/// Where the admin functions find the database of a server on `dir`.
#[derive(Debug)]
pub struct AdminDb {
    dir: PathBuf,
    url: Option<String>,
}

impl AdminDb {
    pub fn get(&self) -> natter_login::admin::Database<'_> {
        match &self.url {
            Some(url) => natter_login::admin::Database::Url(url),
            None => natter_login::admin::Database::DataDir(&self.dir),
        }
    }
}

/// [`AdminDb`] of a server on `dir` (see [`test_database`]).
pub fn admin_db(dir: &Path) -> AdminDb {
    AdminDb {
        dir: dir.to_owned(),
        url: test_database(dir),
    }
}

/// The command-line options that give `natter-login` the test database
/// for data directory `dir` (none on SQLite).
pub fn database_args(dir: &Path) -> Vec<String> {
    test_database(dir)
        .map(|url| vec!["--database".to_owned(), url])
        .unwrap_or_default()
}

/// A config with a cheap argon2 cost, a lenient throttle and room for every
/// registration a test sends at once, on the test database.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir);
    config.database = test_database(dir);
    config.argon2 = Argon2Config::insecure_for_tests();
    config.register_queue = 1000;
    config.throttle = ThrottleConfig {
        free_failures_per_name: 100,
        free_failures_per_addr: 1000,
        registrations_per_prefix: 1000,
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

/// `test_config` with a TLS-over-TCP listener on a free loopback port too.
pub fn tcp_config(dir: &Path) -> Config {
    let mut config = test_config(dir);
    config.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
    config
}

/// The pinned key, read from the server's `login-key.pub`.
pub fn pinned_key(server: &LoginServer) -> rsa::RsaPublicKey {
    natter_client::tls::read_login_key(server.public_key_path()).unwrap()
}

/// A `LoginClient` over TLS on TCP only.
pub async fn tcp_client(server: &LoginServer) -> LoginClient {
    let addr = server.tcp_addr().expect("the server has a TCP listener");
    LoginClient::connect_tcp(addr, pinned_key(server))
        .await
        .unwrap()
}

/// A raw TLS stream to the server's TCP listener, verified like the client
/// does, for writing arbitrary bytes.
pub async fn raw_tls(
    server: &LoginServer,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    raw_tls_from(server, std::net::Ipv4Addr::LOCALHOST).await
}

/// [`raw_tls`] from the loopback source address `source` (any 127.x.y.z:
/// 127.0.1.x and 127.0.2.x are different /24 prefixes to the server).
pub async fn raw_tls_from(
    server: &LoginServer,
    source: std::net::Ipv4Addr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = natter_client::tls::tcp_client_config(&pinned_key(server)).unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let tcp = socket.connect(server.tcp_addr().unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(natter_client::tls::TLS_SERVER_NAME)
        .unwrap()
        .to_owned();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Reads records (KEEPALIVEs skipped) until the server ends the stream or
/// sends CLOSE, or `limit` records came.
pub async fn read_records(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    limit: usize,
) -> Vec<natter_proto::record::Record> {
    use natter_proto::record::{Record, RecordDecoder};
    use tokio::io::AsyncReadExt;
    let mut decoder = RecordDecoder::default();
    let mut records = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(record) = decoder.poll_record() {
            match record.expect("the server sends well-formed records") {
                Record::Keepalive => {}
                close @ Record::Close { .. } => {
                    records.push(close);
                    return records;
                }
                other => records.push(other),
            }
            if records.len() >= limit {
                return records;
            }
        }
        let n = match with_timeout(stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return records,
            Ok(n) => n,
        };
        decoder.handle_data(&buf[..n]).unwrap();
    }
}
