//! `natter-login`: a thin command line over the `natter_login` library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use natter_login::storage::KeyState;
use natter_login::{Config, LoginServer, admin};

/// Natter login server: accounts, user certificates, supernode seed list.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML file of settings, by their option names (`listen = "..."`,
    /// `data-dir = "..."`); flags and environment variables override it.
    #[arg(long, global = true, env = "NATTER_LOGIN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the settings in effect (and where each came from) and exit.
    #[arg(long, global = true)]
    print_config: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve logins over QUIC (and TLS over TCP with --tcp-listen).
    Serve(ServeArgs),
    /// Administer accounts in a data directory.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Approve, revoke and list supernode keys; make enrolment tokens.
    Supernodes {
        #[command(subcommand)]
        command: SupernodesCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SupernodesCommand {
    /// List supernode keys: fingerprint, state, node id, address, last seen.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Approve the supernode key with this fingerprint (it is certified on
    /// its next announce).
    Approve {
        #[command(flatten)]
        db: DbArgs,
        fingerprint: String,
    },
    /// Revoke the supernode key with this fingerprint: no more
    /// certificates, and every supernode drops its links within a minute.
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        fingerprint: String,
    },
    /// Print a one-time enrolment token (`natter-supernode --enrol TOKEN`).
    Token {
        #[command(flatten)]
        db: DbArgs,
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

/// Where an admin command finds the database: the one `serve` uses.
#[derive(Debug, clap::Args)]
struct DbArgs {
    /// The data directory (its SQLite file, unless --database is given).
    #[arg(long, env = "NATTER_LOGIN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The database URL, as given to `serve --database`.
    #[arg(long, env = "NATTER_LOGIN_DATABASE", value_name = "URL")]
    database: Option<String>,
}

impl DbArgs {
    fn database(&self) -> admin::Database<'_> {
        match (&self.database, &self.data_dir) {
            (Some(url), _) => admin::Database::Url(url),
            (None, Some(dir)) => admin::Database::DataDir(dir),
            // Checked here, not by clap: a `data-dir` from the config file
            // satisfies it too. Exit status 2, like any usage error.
            (None, None) => Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "give --data-dir DIR (the SQLite file in it) or --database URL",
                )
                .exit(),
        }
    }
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// UDP address to listen on (QUIC).
    #[arg(long, default_value = "0.0.0.0:4433")]
    listen: SocketAddr,
    /// Also serve TLS over TCP on this address, for clients whose UDP is
    /// blocked (deployments use port 443, the same port as QUIC). Same
    /// certificate, protocol and limits as QUIC; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    tcp_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics (`GET /metrics`) on this TCP address;
    /// `--metrics` alone: 127.0.0.1:9465. Off unless given. Anyone who can
    /// reach it sees the counters: keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9465")]
    metrics: Option<SocketAddr>,
    /// Directory for the signing key, TLS identity and (unless --database
    /// is given) the SQLite database.
    #[arg(long, env = "NATTER_LOGIN_DATA_DIR")]
    data_dir: PathBuf,
    /// Keep accounts in this database instead of the SQLite file in the
    /// data directory: `postgres://USER:PASSWORD@HOST/DB`, or over a Unix
    /// socket `postgres:///DB?host=/run/postgresql`. Several login servers
    /// may share one PostgreSQL database (with the same signing key and TLS
    /// identity in their data directories): docs/OPERATIONS.md.
    #[arg(long, env = "NATTER_LOGIN_DATABASE", value_name = "URL")]
    database: Option<String>,
    /// Argon2id memory cost of new password hashes, in KiB.
    #[arg(long, default_value_t = 19_456)]
    argon2_m_kib: u32,
    /// Argon2id passes.
    #[arg(long, default_value_t = 2)]
    argon2_t: u32,
    /// Argon2id lanes.
    #[arg(long, default_value_t = 1)]
    argon2_p: u32,
    /// Validity of issued certificates, in seconds.
    #[arg(long, default_value_t = 24 * 60 * 60)]
    cert_validity_secs: u64,
    /// Supernodes announced within this many seconds are handed to clients.
    #[arg(long, default_value_t = 600)]
    supernode_ttl_secs: u64,
    /// Accept supernode announces for addresses other than the sender's.
    #[arg(long)]
    allow_foreign_announce: bool,
    /// Approve the supernode of a promoted client by itself when its user's
    /// account is at least this many seconds old and not disabled (the
    /// announce is signed by the user's certified key). Off unless given:
    /// promoted clients then wait for `supernodes approve`, as any
    /// supernode does.
    #[arg(long, value_name = "MIN_ACCOUNT_AGE_SECS")]
    auto_approve_users: Option<u64>,
    /// Concurrent connections (QUIC and TLS over TCP together).
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Registrations one source prefix (IPv4 /24, IPv6 /56) may make at once.
    #[arg(long, default_value_t = 10)]
    registrations_per_prefix: u32,
    /// One more registration per prefix is allowed every this many seconds.
    #[arg(long, default_value_t = 360)]
    registration_interval_secs: u64,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// List the accounts.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Disable an account: refused at login, and revoked on the overlay
    /// (its sessions end) within a minute.
    Disable {
        #[command(flatten)]
        db: DbArgs,
        name: String,
    },
    /// Re-enable a disabled account.
    Enable {
        #[command(flatten)]
        db: DbArgs,
        name: String,
    },
}

impl ServeArgs {
    fn into_config(self) -> Config {
        let mut config = Config::new(self.listen, self.data_dir);
        config.tcp_listen = self.tcp_listen;
        config.metrics = self.metrics;
        config.database = self.database;
        config.argon2.m_kib = self.argon2_m_kib;
        config.argon2.t = self.argon2_t;
        config.argon2.p = self.argon2_p;
        config.cert_validity = Duration::from_secs(self.cert_validity_secs);
        config.supernode_ttl = Duration::from_secs(self.supernode_ttl_secs);
        config.announce_requires_source_ip = !self.allow_foreign_announce;
        config.max_connections = self.max_connections;
        config.auto_approve_users = self.auto_approve_users.map(Duration::from_secs);
        config.throttle.registrations_per_prefix = self.registrations_per_prefix;
        config.throttle.registration_interval =
            Duration::from_secs(self.registration_interval_secs.max(1));
        config
    }
}

#[tokio::main]
async fn main() {
    let cli: Cli = natter_config::parse(&["database"]);
    if let Err(e) = run(cli).await {
        eprintln!("natter-login: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            let mut server = LoginServer::start(args.into_config()).await?;
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                () = server.wait() => {}
                r = tokio::signal::ctrl_c() => {
                    r?;
                    tracing::info!("interrupted; shutting down");
                    server.shutdown().await;
                }
                _ = terminate.recv() => {
                    tracing::info!("terminated; shutting down");
                    server.shutdown().await;
                }
            }
        }
        Command::Users { command } => match command {
            UsersCommand::List { db } => {
                for user in admin::list_users(db.database()).await? {
                    println!("{}", admin::format_user(&user));
                }
            }
            UsersCommand::Disable { db, name } => {
                let name = admin::set_disabled(db.database(), &name, true).await?;
                println!("disabled {name}");
            }
            UsersCommand::Enable { db, name } => {
                let name = admin::set_disabled(db.database(), &name, false).await?;
                println!("enabled {name}");
            }
        },
        Command::Supernodes { command } => match command {
            SupernodesCommand::List { db } => {
                for key in admin::list_supernodes(db.database()).await? {
                    println!("{}", admin::format_supernode(&key));
                }
            }
            SupernodesCommand::Approve { db, fingerprint } => {
                let key =
                    admin::set_supernode_state(db.database(), &fingerprint, KeyState::Approved)
                        .await?;
                println!("approved {}", key.fingerprint);
            }
            SupernodesCommand::Revoke { db, fingerprint } => {
                let key =
                    admin::set_supernode_state(db.database(), &fingerprint, KeyState::Revoked)
                        .await?;
                println!("revoked {}", key.fingerprint);
            }
            SupernodesCommand::Token { db, ttl } => {
                println!(
                    "{}",
                    admin::new_enrol_token(db.database(), Duration::from_secs(ttl)).await?
                );
            }
        },
    }
    Ok(())
}
