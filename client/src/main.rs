//! `natter`: a thin command line over the `natter_client` library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use natter_client::home::{BUDDIES_FILE, LoginStatus};
use natter_client::{ClientError, Home, LoginClient, buddies, now_unix_secs, tls};

/// Natter client.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Directory for this user's key pair, certificate and buddy list.
    #[arg(long, env = "NATTER_HOME")]
    home: Option<PathBuf>,
    /// Login server address (host:port).
    #[arg(long, env = "NATTER_LOGIN")]
    login: Option<String>,
    /// The login server's public key (`login-key.pub`), pinned.
    #[arg(long, env = "NATTER_LOGIN_KEY")]
    login_key: Option<PathBuf>,
    /// Read the password from this file (first line) instead of
    /// NATTER_PASSWORD or a prompt.
    #[arg(long)]
    password_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account.
    Register { name: String },
    /// Obtain a certificate (reused from --home while it is valid).
    Login {
        name: String,
        /// Ask the login server for a new certificate even if the stored one is good.
        #[arg(long)]
        force: bool,
    },
    /// Show the stored identity.
    Status,
    /// Sync the encrypted buddy list (`buddies.txt` in --home) with the login server.
    Buddies {
        #[command(subcommand)]
        command: BuddiesCommand,
        /// Account name (default: the logged-in one).
        #[arg(long, global = true)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BuddiesCommand {
    /// Upload buddies.txt (fails if another machine uploaded since the last pull).
    Push,
    /// Download into buddies.txt.
    Pull,
}

const VERSION_FILE: &str = "buddies.version";

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        let line = e.to_string().replace('\n', " ");
        eprintln!("natter: {line}");
        std::process::exit(1);
    }
}

fn home(cli: &Cli) -> Result<Home, ClientError> {
    let dir = match &cli.home {
        Some(dir) => dir.clone(),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".natter"))
            .ok_or_else(|| usage("--home DIR is required (HOME is not set)"))?,
    };
    Home::open(dir)
}

fn usage(msg: &str) -> ClientError {
    ClientError::Usage(msg.to_owned())
}

fn login_key(cli: &Cli) -> Result<rsa::RsaPublicKey, ClientError> {
    let path = cli
        .login_key
        .as_ref()
        .ok_or_else(|| usage("--login-key FILE is required (the login server's login-key.pub)"))?;
    tls::read_login_key(path)
}

async fn login_addr(cli: &Cli) -> Result<SocketAddr, ClientError> {
    let addr = cli
        .login
        .as_deref()
        .ok_or_else(|| usage("--login HOST:PORT is required"))?;
    let unreachable = |detail: String| ClientError::Connect {
        addr: addr.to_owned(),
        detail,
    };
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| unreachable("no address found".into()))
}

fn password(cli: &Cli, name: &str, confirm: bool) -> Result<String, ClientError> {
    if let Some(path) = &cli.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::File {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        return Ok(text.lines().next().unwrap_or_default().to_owned());
    }
    if let Ok(password) = std::env::var("NATTER_PASSWORD") {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "no password: use --password-file FILE or the NATTER_PASSWORD variable",
        ));
    }
    let read = |prompt: &str| {
        rpassword::prompt_password(prompt).map_err(|e| usage(&format!("reading the password: {e}")))
    };
    let first = read(&format!("Password for {name}: "))?;
    if confirm && read("Repeat the password: ")? != first {
        return Err(usage("the passwords do not match"));
    }
    Ok(first)
}

fn describe_validity(not_after: i64) -> String {
    let left = (not_after - now_unix_secs()).max(0);
    format!(
        "certificate valid until unix time {not_after} ({}h{:02}m left)",
        left / 3600,
        left % 3600 / 60
    )
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    match &cli.command {
        Command::Register { name } => {
            let key = login_key(&cli)?;
            let addr = login_addr(&cli).await?;
            let password = password(&cli, name, true)?;
            let client = LoginClient::connect(addr, key).await?;
            let result = client.register(name, &password).await;
            client.close().await;
            println!("registered {}", result?);
        }
        Command::Login { name, force } => {
            let home = home(&cli)?;
            let key = login_key(&cli)?;
            // A valid stored identity needs neither the server nor the password.
            let now = now_unix_secs();
            if !force
                && let Ok(session) = home.load(&key, now)
                && session.name() == name.to_ascii_lowercase()
                && !session.needs_renewal(now)
            {
                println!(
                    "already logged in as {}; {}",
                    session.name(),
                    describe_validity(session.verified.not_after)
                );
                return Ok(());
            }
            let addr = login_addr(&cli).await?;
            let password = password(&cli, name, false)?;
            match home.login(addr, &key, name, &password, *force).await? {
                LoginStatus::Reused(session) => println!(
                    "already logged in as {}; {}",
                    session.name(),
                    describe_validity(session.verified.not_after)
                ),
                LoginStatus::Fresh {
                    session,
                    supernodes,
                } => {
                    save_supernodes(&home, &supernodes)?;
                    println!(
                        "logged in as {}; {}; {} supernode(s) known",
                        session.name(),
                        describe_validity(session.verified.not_after),
                        supernodes.len()
                    );
                }
            }
        }
        Command::Status => {
            let home = home(&cli)?;
            let session = home.load(&login_key(&cli)?, now_unix_secs())?;
            println!(
                "logged in as {}; {}",
                session.name(),
                describe_validity(session.verified.not_after)
            );
        }
        Command::Buddies { command, name } => {
            let home = home(&cli)?;
            let key = login_key(&cli)?;
            let name = match name {
                Some(name) => name.clone(),
                None => home.stored_name().ok_or(ClientError::NotLoggedIn)?,
            };
            let addr = login_addr(&cli).await?;
            let password = password(&cli, &name, false)?;
            let client = LoginClient::connect(addr, key).await?;
            let result = buddies_sync(&home, &client, command, &name, &password).await;
            client.close().await;
            result?;
        }
    }
    Ok(())
}

async fn buddies_sync(
    home: &Home,
    client: &LoginClient,
    command: &BuddiesCommand,
    name: &str,
    password: &str,
) -> Result<(), ClientError> {
    let list_path = home.file(BUDDIES_FILE);
    let version_path = home.file(VERSION_FILE);
    match command {
        BuddiesCommand::Pull => {
            let (version, list) = buddies::pull(client, name, password).await?;
            write_text(&list_path, &list.join("\n"))?;
            write_text(&version_path, &version.to_string())?;
            println!("pulled {} buddies (version {version})", list.len());
        }
        BuddiesCommand::Push => {
            let list: Vec<String> = read_text(&list_path)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            let base = match read_text(&version_path) {
                Ok(v) => v.trim().parse().unwrap_or(0),
                Err(_) => 0,
            };
            let version = buddies::push(client, name, password, base, &list).await?;
            write_text(&version_path, &version.to_string())?;
            println!("pushed {} buddies (version {version})", list.len());
        }
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|e| ClientError::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

fn write_text(path: &Path, text: &str) -> Result<(), ClientError> {
    natter_client::home::write_private(path, format!("{text}\n").as_bytes())
}

fn save_supernodes(
    home: &Home,
    supernodes: &[natter_proto::messages::HostCacheEntry],
) -> Result<(), ClientError> {
    let lines: Vec<String> = supernodes
        .iter()
        .filter_map(|s| {
            let addr = SocketAddr::try_from(s.addr.as_ref()?).ok()?;
            let id: String = s.node_id.iter().map(|b| format!("{b:02x}")).collect();
            Some(format!("{addr} {id} {}", s.last_seen))
        })
        .collect();
    write_text(&home.file("supernodes.txt"), &lines.join("\n"))
}
