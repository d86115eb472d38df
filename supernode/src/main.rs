use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use natter_supernode::{Config, Supernode};
use rsa::RsaPublicKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};

/// natter-supernode: a Natter supernode (overlay, directory, presence,
/// call signaling and chat routing).
#[derive(Debug, clap::Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML file of settings, by their option names (`listen = "..."`,
    /// `peer = ["...", "..."]`); flags and environment variables override it.
    #[arg(long, env = "NATTER_SUPERNODE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the settings in effect (and where each came from) and exit.
    #[arg(long)]
    print_config: bool,
    /// UDP address to listen on (QUIC).
    #[arg(long)]
    listen: SocketAddr,
    /// Address to announce, when `--listen` is a wildcard address.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// The login server to announce this supernode to.
    #[arg(long)]
    login: SocketAddr,
    /// The login server's public key (PEM "PUBLIC KEY"), `login-key.pub`.
    #[arg(long)]
    login_key: PathBuf,
    /// Another supernode to connect to (repeatable).
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Directory keeping the node key (hence the node id) and TLS identity
    /// across restarts.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A one-time enrolment token from `natter-login supernodes token`: the
    /// first announce approves this node's key. Without one, the operator
    /// runs `natter-login supernodes approve FINGERPRINT` (the fingerprint
    /// is logged while the node waits).
    #[arg(long, env = "NATTER_SUPERNODE_ENROL", value_name = "TOKEN")]
    enrol: Option<String>,
    /// Single-box setups and benches: certify this node locally with the
    /// login server's signing key (`login-key.pem`, PKCS#8 PEM) instead of
    /// asking the login server. Whoever holds this key can certify anyone.
    #[arg(long, value_name = "PATH", conflicts_with = "enrol")]
    issuer_key: Option<PathBuf>,
    /// Directory replicas per user record.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    replicas: u16,
    /// Seconds before an unanswered call invite is hung up.
    #[arg(long, default_value_t = 30)]
    no_answer_timeout: u64,
    /// UDP address of the STUN reflector and media relay (the alternate
    /// STUN socket takes the next port). Default: the listen IP, port =
    /// QUIC port + 1, which is what other supernodes assume.
    #[arg(long)]
    udp: Option<SocketAddr>,
    /// Seconds a relay allocation lives without traffic.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    relay_lifetime: u64,
    /// Most relay allocations at once.
    #[arg(long, default_value_t = 10_000)]
    max_relays: usize,
    /// TCP address (IP:PORT) of the TLS-over-TCP listener, the fallback for
    /// clients whose UDP is blocked: it carries their sessions and relayed
    /// media. Usually 0.0.0.0:443; port 0 picks a free port. Advertised with
    /// its bound port and the IP of --advertise when given (a wildcard IP
    /// becomes the --listen IP). Off unless given.
    #[arg(long, value_name = "ADDR")]
    tcp_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics (`GET /metrics`) on this TCP address;
    /// `--metrics` alone: 127.0.0.1:9464. Off unless given. Anyone who can
    /// reach it sees the counters: keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    metrics: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli: Cli = natter_config::parse(&["enrol"]);
    let pem = std::fs::read_to_string(&cli.login_key)
        .with_context(|| format!("reading {}", cli.login_key.display()))?;
    let login_key = RsaPublicKey::from_public_key_pem(&pem).with_context(|| {
        format!(
            "{} is not a PEM \"PUBLIC KEY\" RSA key",
            cli.login_key.display()
        )
    })?;
    tracing::info!(
        login_key = %natter_proto::cert::fingerprint(&login_key),
        "pinned login server key"
    );
    let mut config = Config::new(cli.listen, login_key);
    config.advertise = cli.advertise;
    config.login = Some(cli.login);
    config.peers = cli.peers;
    config.data_dir = cli.data_dir;
    config.certification = match &cli.issuer_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
                .with_context(|| format!("{} is not a PKCS#8 PEM RSA key", path.display()))?;
            let issuer = natter_proto::cert::Issuer::new(key);
            anyhow::ensure!(
                issuer.public_key() == config.login_key,
                "{} is not the signing key of --login-key",
                path.display()
            );
            natter_supernode::Certification::Local {
                issuer: std::sync::Arc::new(issuer),
                validity: Duration::from_secs(24 * 3600),
            }
        }
        None => natter_supernode::Certification::LoginServer {
            enrol_token: cli.enrol,
        },
    };
    config.replicas = usize::from(cli.replicas);
    config.no_answer_timeout = Duration::from_secs(cli.no_answer_timeout);
    config.udp = cli.udp;
    config.relay.lifetime = Duration::from_secs(cli.relay_lifetime);
    config.relay.max_allocations = cli.max_relays;
    config.tcp_listen = cli.tcp_listen;
    config.metrics = cli.metrics;
    let handle = Supernode::spawn(config).context("starting the supernode")?;
    println!(
        "natter-supernode listening on {} node id {}",
        handle.addr(),
        hex::encode(handle.node_id())
    );
    if let Some(tcp) = handle.tcp_local_addr() {
        println!("natter-supernode listening on tcp {tcp} (TLS over TCP)");
    }
    if let Some(metrics) = handle.metrics_addr() {
        println!("natter-supernode metrics on http://{metrics}/metrics");
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}
