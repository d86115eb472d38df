//! `natter`: a thin command line over the `natter_client` library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use std::time::Duration;

use natter_client::call::{self, CallOptions};
use natter_client::home::{BUDDIES_FILE, LoginStatus};
use natter_client::hostcache::{self, HostCache};
use natter_client::overlay::{Overlay, OverlayConfig};
use natter_client::supernode::SessionError;
use natter_client::{ClientError, Home, LoginClient, buddies, now_unix_ms, now_unix_secs, tls};
use natter_proto::messages::{
    ChatMessage, PresenceStatus, PresenceSubscribe, SearchRequest, SetPresence, envelope,
};

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
    /// The login server's TLS-over-TCP address (host:port), tried when QUIC
    /// does not connect within 300 ms or fails (UDP blocked). Default: the
    /// --login address.
    #[arg(long, env = "NATTER_LOGIN_TCP", value_name = "HOST:PORT")]
    login_tcp: Option<String>,
    /// The login server's public key (`login-key.pub`), pinned.
    #[arg(long, env = "NATTER_LOGIN_KEY")]
    login_key: Option<PathBuf>,
    /// Read the password from this file (first line) instead of
    /// NATTER_PASSWORD or a prompt.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Supernode to join when the host cache is empty (repeatable).
    #[arg(long, value_name = "ADDR")]
    bootstrap: Vec<SocketAddr>,
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
    /// Find a user: presence and whether reachable.
    Search { name: String },
    /// Send a text message (stored for offline users).
    Chat { name: String, text: String },
    /// Fetch and show received messages.
    Inbox,
    /// Stay joined: print presence changes and messages until interrupted.
    Online,
    /// Call a user.
    Call {
        name: String,
        #[command(flatten)]
        audio: AudioArgs,
        /// Hang up after this many seconds (default: the length of --audio-in, or 10).
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Answer incoming calls automatically.
    Answer {
        #[command(flatten)]
        audio: AudioArgs,
        /// Hang up each call after this many seconds (default: when the caller does).
        #[arg(long)]
        duration: Option<f64>,
        /// Exit after this many calls.
        #[arg(long, default_value_t = 1)]
        calls: usize,
    },
    /// List the sound cards (audio devices).
    Devices,
    /// Classify this host's NAT with STUN reflectors (the supernodes of the
    /// host cache, or the --stun servers given).
    Netcheck {
        /// A STUN server to use (repeatable); any RFC 8489 server works.
        #[arg(long, value_name = "ADDR")]
        stun: Vec<SocketAddr>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare a sent and a received WAV (how well the call carried the audio).
    Compare { sent: PathBuf, received: PathBuf },
    /// The buddy list (`buddies.txt` in --home): edit it, or sync it
    /// (encrypted) with the login server.
    Buddies {
        #[command(subcommand)]
        command: BuddiesCommand,
        /// Account name (default: the logged-in one).
        #[arg(long, global = true)]
        name: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct AudioArgs {
    /// WAV file to send (any rate, resampled to 48 kHz); silence when absent.
    #[arg(long)]
    audio_in: Option<PathBuf>,
    /// WAV file to write what is heard into (48 kHz mono).
    #[arg(long)]
    audio_out: Option<PathBuf>,
    /// Write the call report as JSON here.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// Sound-card input instead of --audio-in (`default`, or a name from `natter devices`).
    #[arg(long, value_name = "NAME", conflicts_with = "audio_in")]
    input_device: Option<String>,
    /// Sound-card output instead of --audio-out (`default`, or a name from `natter devices`).
    #[arg(long, value_name = "NAME", conflicts_with = "audio_out")]
    output_device: Option<String>,
}

#[derive(Debug, Subcommand)]
enum BuddiesCommand {
    /// Add a name to the list.
    Add { buddy: String },
    /// Remove a name from the list.
    Remove { buddy: String },
    /// Print the list.
    List,
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

/// The login server: QUIC at --login, TLS over TCP at --login-tcp (default:
/// the same address).
async fn login_target(cli: &Cli) -> Result<natter_client::LoginTarget, ClientError> {
    let addr = cli
        .login
        .as_deref()
        .ok_or_else(|| usage("--login HOST:PORT is required"))?;
    let target = natter_client::LoginTarget::new(resolve(addr).await?);
    Ok(match &cli.login_tcp {
        Some(tcp) => target.with_tcp(resolve(tcp).await?),
        None => target,
    })
}

async fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
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
            let target = login_target(&cli).await?;
            let password = password(&cli, name, true)?;
            let client = LoginClient::connect_to(&target, key).await?;
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
                && natter_proto::name::same(session.name(), &name)
                && !session.needs_renewal(now)
            {
                println!(
                    "already logged in as {}; {}",
                    session.name(),
                    describe_validity(session.verified.not_after)
                );
                return Ok(());
            }
            let target = login_target(&cli).await?;
            let password = password(&cli, name, false)?;
            match home.login(target, &key, name, &password, *force).await? {
                LoginStatus::Reused(session) => println!(
                    "already logged in as {}; {}",
                    session.name(),
                    describe_validity(session.verified.not_after)
                ),
                LoginStatus::Fresh {
                    session,
                    supernodes,
                    transport,
                } => {
                    save_supernodes(&home, &supernodes)?;
                    println!(
                        "logged in as {}; {}; {} supernode(s) known; login server reached over {}",
                        session.name(),
                        describe_validity(session.verified.not_after),
                        supernodes.len(),
                        transport.name()
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
        Command::Buddies {
            command:
                command @ (BuddiesCommand::Add { .. }
                | BuddiesCommand::Remove { .. }
                | BuddiesCommand::List),
            ..
        } => {
            let home = home(&cli)?;
            let path = home.file(BUDDIES_FILE);
            let mut list = read_buddies(&path);
            match command {
                BuddiesCommand::Add { buddy } => {
                    let buddy = natter_proto::name::normalise(buddy.trim())
                        .map_err(|e| usage(&format!("{:?} is not a user name: {e}", buddy.trim())))?;
                    if !list.contains(&buddy) {
                        list.push(buddy);
                    }
                }
                BuddiesCommand::Remove { buddy } => {
                    let buddy = natter_proto::name::normalise(buddy.trim())
                        .unwrap_or_else(|_| buddy.trim().to_owned());
                    let before = list.len();
                    list.retain(|b| *b != buddy);
                    if list.len() == before {
                        return Err(usage(&format!("{buddy} is not in the buddy list")));
                    }
                }
                _ => {}
            }
            if !matches!(command, BuddiesCommand::List) {
                write_text(&path, &list.join("\n"))?;
            }
            for buddy in &list {
                println!("{buddy}");
            }
        }
        Command::Search { .. }
        | Command::Chat { .. }
        | Command::Inbox
        | Command::Online
        | Command::Call { .. }
        | Command::Answer { .. } => overlay_command(&cli).await?,
        Command::Netcheck { stun, json } => {
            let mut reflectors = stun.clone();
            if reflectors.is_empty() {
                // Supernodes serve STUN on their QUIC port + 1.
                let cache = HostCache::load(&home(&cli)?.file(hostcache::FILE_NAME))
                    .map_err(|e| usage(&e.to_string()))?;
                reflectors = cache
                    .candidates(4)
                    .into_iter()
                    .chain(cli.bootstrap.iter().copied())
                    .map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
                    .collect();
            }
            if reflectors.is_empty() {
                return Err(usage(
                    "no reflector: give --stun ADDR, or join once so the host cache knows supernodes",
                ));
            }
            let bind = SocketAddr::new(natter_client::gather::local_ip_towards(reflectors[0]), 0);
            let report = natter_client::netcheck::run(bind, &reflectors)
                .await
                .map_err(|e| usage(&format!("netcheck: {e}")))?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| usage(&e.to_string()))?
                );
            } else {
                println!("{}", report.to_text());
            }
        }
        Command::Devices => {
            let devices = natter_media::devices::list().map_err(|e| usage(&e.to_string()))?;
            if devices.is_empty() {
                println!("no audio devices; use --audio-in/--audio-out WAV files");
            }
            for device in devices {
                println!("{device}");
            }
        }
        Command::Compare { sent, received } => {
            let read = |p: &PathBuf| {
                natter_media::wav::read_mono_48k(p).map_err(|e| ClientError::File {
                    path: p.display().to_string(),
                    detail: e.to_string(),
                })
            };
            let score = natter_media::score::compare(&read(sent)?, &read(received)?, 2000);
            println!(
                "audio match: waveform correlation {:.3}, envelope correlation {:.3}, delay {:.1} ms",
                score.waveform, score.envelope, score.lag_ms
            );
        }
        Command::Buddies { command, name } => {
            let home = home(&cli)?;
            let key = login_key(&cli)?;
            let name = match name {
                Some(name) => name.clone(),
                None => home.stored_name().ok_or(ClientError::NotLoggedIn)?,
            };
            let target = login_target(&cli).await?;
            let password = password(&cli, &name, false)?;
            let client = LoginClient::connect_to(&target, key).await?;
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
        BuddiesCommand::Add { .. } | BuddiesCommand::Remove { .. } | BuddiesCommand::List => {}
    }
    Ok(())
}

fn read_buddies(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Commands that join the overlay through a supernode.
async fn overlay_command(cli: &Cli) -> Result<(), ClientError> {
    if let Command::Call { audio, .. } | Command::Answer { audio, .. } = &cli.command {
        call::check_devices(&call_options(audio, None))?;
    }
    let home = home(cli)?;
    let key = login_key(cli)?;
    let session = home.load(&key, now_unix_secs())?;
    let endpoint = natter_net::client_endpoint(
        SocketAddr::from(([0, 0, 0, 0], 0)),
        &natter_net::TransportSettings::OVERLAY,
    )
    .map_err(|e| usage(&format!("cannot open a QUIC endpoint: {e}")))?;
    let config = OverlayConfig::new(home.file(hostcache::FILE_NAME), cli.bootstrap.clone());
    let mut overlay = Overlay::join(config, endpoint, session.identity.clone()).await?;
    let me = session.name().to_owned();
    let sn = overlay.session();
    match &cli.command {
        Command::Search { name } => {
            let reply = sn
                .request(
                    envelope::Body::SearchRequest(SearchRequest { name: name.clone() }),
                    REQUEST_TIMEOUT,
                )
                .await?;
            let envelope::Body::SearchReply(r) = reply else {
                return Err(usage("unexpected reply to search"));
            };
            if !r.found {
                println!("{name}: not found");
            } else {
                let status = PresenceStatus::try_from(r.status).unwrap_or(PresenceStatus::Offline);
                let reachable = status != PresenceStatus::Offline;
                let via = r
                    .supernode
                    .as_ref()
                    .and_then(|a| SocketAddr::try_from(a).ok())
                    .map_or(String::new(), |a| format!(" via supernode {a}"));
                println!(
                    "{}: {}, {}{via}, last seen {}",
                    r.name,
                    status_name(status),
                    if reachable {
                        "reachable"
                    } else {
                        "not reachable"
                    },
                    r.last_seen / 1000
                );
            }
        }
        Command::Chat { name, text } => {
            let mut id = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut id);
            let message = ChatMessage {
                message_id: id.to_vec(),
                from: me.clone(),
                to: name.clone(),
                text: text.clone(),
                sent_at: now_unix_ms(),
            };
            sn.request(envelope::Body::ChatMessage(message), REQUEST_TIMEOUT)
                .await?;
            // A receipt comes back at once when the recipient is online.
            let receipt = tokio::time::timeout(RECEIPT_WAIT, async {
                while let Some(push) = sn.next_push().await {
                    if let envelope::Body::ChatReceipt(r) = push
                        && r.message_id == id
                    {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            if receipt {
                println!("delivered to {name}");
            } else {
                println!("stored for {name} (offline); delivered when they next join");
            }
            sn.leave().await;
        }
        Command::Inbox => {
            sn.request(
                envelope::Body::InboxFetch(Default::default()),
                REQUEST_TIMEOUT,
            )
            .await?;
            let inbox = home.file(INBOX_FILE);
            // Stored chat is pushed before the Ack, so it is all queued now;
            // wait briefly for any that was pushed at join.
            while let Ok(Some(push)) =
                tokio::time::timeout(Duration::from_millis(300), sn.next_push()).await
            {
                if let envelope::Body::ChatMessage(m) = push {
                    append_inbox(&inbox, &m)?;
                }
            }
            let text = std::fs::read_to_string(&inbox).unwrap_or_default();
            if text.is_empty() {
                println!("no messages");
            } else {
                print!("{text}");
            }
            sn.leave().await;
        }
        Command::Online => {
            let buddies = read_buddies(&home.file(BUDDIES_FILE));
            println!("online as {me} via {}", sn.addr());
            let inbox = home.file(INBOX_FILE);
            loop {
                let sn = overlay.session();
                // (Re-)register presence and subscriptions with this supernode;
                // if it dies meanwhile, move on to an alternate.
                let registered = async {
                    sn.request(
                        envelope::Body::SetPresence(SetPresence {
                            status: PresenceStatus::Online as i32,
                        }),
                        REQUEST_TIMEOUT,
                    )
                    .await?;
                    sn.request(
                        envelope::Body::PresenceSubscribe(PresenceSubscribe {
                            names: buddies.clone(),
                        }),
                        REQUEST_TIMEOUT,
                    )
                    .await
                }
                .await;
                match registered {
                    Ok(_) => {}
                    Err(SessionError::Closed(_) | SessionError::Timeout(_)) => {
                        let lost = sn.addr();
                        overlay.rejoin().await?;
                        println!(
                            "supernode {lost} lost; rejoined via {}",
                            overlay.session().addr()
                        );
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                loop {
                    tokio::select! {
                        push = sn.next_push() => match push {
                            Some(envelope::Body::PresenceUpdate(u)) => {
                                let status = PresenceStatus::try_from(u.status).unwrap_or(PresenceStatus::Offline);
                                println!("presence {} {}", u.name, status_name(status));
                            }
                            Some(envelope::Body::ChatMessage(m)) => {
                                println!("message from {}: {}", m.from, m.text);
                                append_inbox(&inbox, &m)?;
                            }
                            Some(envelope::Body::ChatReceipt(r)) => {
                                println!("delivered to {}", r.from);
                            }
                            Some(envelope::Body::SupernodeList(list)) => overlay.learn(&list.entries)?,
                            Some(_) => {}
                            None => break,
                        },
                        _ = tokio::signal::ctrl_c() => {
                            sn.leave().await;
                            return Ok(());
                        }
                    }
                }
                let lost = sn.addr();
                overlay.rejoin().await?;
                println!(
                    "supernode {lost} lost; rejoined via {}",
                    overlay.session().addr()
                );
            }
        }
        Command::Call {
            name,
            audio,
            duration,
        } => {
            let options = call_options(audio, duration.map(Duration::from_secs_f64));
            let report = call::place_call(&sn, &session.identity, &me, &key, name, &options).await;
            sn.leave().await;
            let report = report?;
            finish_report(&report, audio)?;
        }
        Command::Answer {
            audio,
            calls,
            duration,
        } => {
            let options = call_options(audio, duration.map(Duration::from_secs_f64));
            sn.request(
                envelope::Body::SetPresence(SetPresence {
                    status: PresenceStatus::Online as i32,
                }),
                REQUEST_TIMEOUT,
            )
            .await?;
            println!("waiting for calls as {me} via {}", sn.addr());
            let reports =
                call::answer_calls(&sn, &session.identity, &me, &key, *calls, &options).await;
            sn.leave().await;
            for report in reports? {
                finish_report(&report, audio)?;
            }
        }
        _ => {}
    }
    Ok(())
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const RECEIPT_WAIT: Duration = Duration::from_secs(2);
const INBOX_FILE: &str = "inbox.txt";

fn status_name(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Offline => "offline",
    }
}

fn append_inbox(path: &Path, m: &ChatMessage) -> Result<(), ClientError> {
    use std::io::Write;
    let line = format!(
        "{} {}: {}\n",
        m.sent_at / 1000,
        m.from,
        m.text.replace('\n', " ")
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| ClientError::File {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
}

fn call_options(audio: &AudioArgs, duration: Option<Duration>) -> CallOptions {
    CallOptions {
        audio_in: audio.audio_in.clone(),
        audio_out: audio.audio_out.clone(),
        input_device: audio.input_device.clone(),
        output_device: audio.output_device.clone(),
        duration,
        live_status: true,
    }
}

fn finish_report(report: &call::CallReport, audio: &AudioArgs) -> Result<(), ClientError> {
    println!("{}", report.to_text());
    if let Some(path) = &audio.stats_json {
        write_text(path, &report.to_json())?;
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
    // The login server's list seeds the host cache.
    let path = home.file(hostcache::FILE_NAME);
    let mut cache = HostCache::load(&path).map_err(|e| usage(&e.to_string()))?;
    cache.learn_with_tcp(natter_client::overlay::nodes(supernodes), now_unix_ms());
    cache.save(&path).map_err(|e| usage(&e.to_string()))
}
