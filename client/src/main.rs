//! `natter`: a thin command line over the `natter_client` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use natter_client::buddy_list;
use natter_client::call::{self, CallControl, CallOptions, CallReport};
use natter_client::call_link::CallLink;
use natter_client::chat::{self, Delivery};
use natter_client::conference::{AnsweredCall, ConferenceOptions, ConferenceOutcome};
use natter_client::hold::ScheduledHold;
use natter_client::home::LoginStatus;
use natter_client::online::{self, OnlineEvent};
use natter_client::promote::PromotePolicy;
use natter_client::promoted::{PromoteOptions, PromotedEvent};
use natter_client::search::{self, presence_name};
use natter_client::text::{ago, date_time, for_terminal};
use natter_client::{ClientError, Home, LoginClient, Session, inbox, now_unix_secs, tls};

/// Natter client.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML file of settings, by their option names (`login = "..."`,
    /// `bootstrap = ["..."]`); flags and environment variables override it.
    #[arg(long, env = "NATTER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the settings in effect (and where each came from) and exit.
    #[arg(long)]
    print_config: bool,
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
    /// The account to log in as by itself when the stored certificate is
    /// missing or near expiry (default: the name on the stored certificate).
    #[arg(long, env = "NATTER_USER", value_name = "NAME")]
    user: Option<String>,
    /// Without a command: the terminal UI when standard input is a
    /// terminal.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The terminal UI: contacts with presence, search, chat, calls
    /// (what `natter` alone does on a terminal).
    Ui {
        #[command(flatten)]
        audio: AudioArgs,
    },
    /// Create an account and log in.
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
    /// Stay joined: print presence changes and messages until interrupted
    /// (Ctrl-C or SIGTERM). A client online long enough on a reachable host
    /// with CPU to spare becomes a supernode in this process, unless
    /// --no-promote (docs/ARCHITECTURE.md, "Supernode promotion").
    Online {
        #[command(flatten)]
        promote: PromoteArgs,
    },
    /// Call a user; with two to four names, convene a conference of up to
    /// five (the host is elected from everyone's capabilities; it mixes).
    Call {
        #[arg(required = true, num_args = 1..=4, value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        audio: AudioArgs,
        #[command(flatten)]
        conference: ConferenceArgs,
        /// Hang up after this many seconds (default: the length of --audio-in, or 10).
        #[arg(long)]
        duration: Option<f64>,
        /// Put the call on hold this many seconds after the media started
        /// (as `h` on standard input does: the peer is told; silence still
        /// goes out at 50 packets/s).
        #[arg(long, value_name = "SECS")]
        hold_at: Option<f64>,
        /// How long that hold lasts, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 2.0, requires = "hold_at")]
        hold_for: f64,
    },
    /// Answer incoming calls automatically. During a call (also `call`),
    /// a line on standard input controls it: `m` mutes / unmutes, `h`
    /// holds / resumes (still 50 packets/s), `q` hangs up.
    Answer {
        #[command(flatten)]
        audio: AudioArgs,
        #[command(flatten)]
        conference: ConferenceArgs,
        /// Decline the calls instead (the caller is told).
        #[arg(long)]
        decline: bool,
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
    /// Show a call report (the --stats-json file of `call` or `answer`);
    /// --svg draws the call's timeline.
    Report {
        /// The call report (JSON).
        file: PathBuf,
        /// Write the timeline (RTT, jitter, loss, FEC recoveries, path
        /// switches, one point a second) as an SVG image here.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
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

#[derive(Debug, Default, clap::Args)]
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

/// What a conference's capability record declares (`call` with several
/// names, `answer` joining a conference).
#[derive(Debug, Default, clap::Args)]
struct ConferenceArgs {
    /// Upstream bandwidth in kb/s, for a conference's host election (not
    /// measured; 0: unknown). A host needs 38 kb/s per other participant.
    #[arg(long, value_name = "KBPS", default_value_t = 0)]
    upstream_kbps: u32,
}

/// Supernode promotion of `natter online`.
#[derive(Debug, clap::Args)]
struct PromoteArgs {
    /// Never become a supernode (in a config file: `no-promote = true`).
    #[arg(long, env = "NATTER_NO_PROMOTE")]
    no_promote: bool,
    /// Seconds online before this client may become a supernode.
    #[arg(long, value_name = "SECS", default_value_t = natter_client::promote::DEFAULT_AFTER.as_secs())]
    promote_after: u64,
    /// Highest 1-minute load average per core to become, and stay, a
    /// supernode (busy for 30 s: it steps down).
    #[arg(long, value_name = "LOAD", default_value_t = natter_client::promote::DEFAULT_MAX_LOAD)]
    promote_max_load: f64,
    /// UDP port of the supernode's QUIC listener (its STUN reflector and
    /// relay take the next two ports); 0: any free port. Behind a full-cone
    /// NAT a fixed port is needed.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    promote_port: u16,
    /// TCP port of the supernode's TLS-over-TCP listener (the fallback for
    /// users whose UDP is blocked); 0: any free port.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    promote_tcp_port: u16,
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

/// How long one request to the supernode may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() {
    let cli: Cli = natter_config::parse(&[]);
    natter_client::keylog::init_from_env();
    if let Err(e) = natter_client::wire_test::init_from_env() {
        eprintln!("natter: {e}");
        std::process::exit(2);
    }
    if let Err(e) = run(cli).await {
        let line = e.to_string().replace('\n', " ");
        eprintln!("natter: {line}");
        std::process::exit(1);
    }
}

fn usage(msg: &str) -> ClientError {
    ClientError::Usage(msg.to_owned())
}

impl Cli {
    fn home(&self) -> Result<Home, ClientError> {
        Home::open_or_default(self.home.clone())
    }

    fn login_key(&self) -> Result<rsa::RsaPublicKey, ClientError> {
        let path = self.login_key.as_ref().ok_or_else(|| {
            usage("--login-key FILE is required (the login server's login-key.pub)")
        })?;
        tls::read_login_key(path)
    }

    async fn login_target(&self) -> Result<natter_client::LoginTarget, ClientError> {
        let login = self
            .login
            .as_deref()
            .ok_or_else(|| usage("--login HOST:PORT is required"))?;
        natter_client::resolve::login_target(login, self.login_tcp.as_deref()).await
    }

    fn password(&self, name: &str, confirm: bool) -> Result<String, ClientError> {
        natter_client::password::read(self.password_file.as_deref(), name, confirm)
    }

    /// The stored identity; when its certificate is missing, expired or
    /// near expiry and a password source is there (`--password-file`,
    /// NATTER_PASSWORD, a terminal to ask on), logs in first (as `natter
    /// login` does) as `--user` or the stored certificate's name.
    async fn session(&self, home: &Home, key: &rsa::RsaPublicKey) -> Result<Session, ClientError> {
        let now = now_unix_secs();
        let loaded = home.load(key, now);
        let renew = match &loaded {
            Ok(session) => session.needs_renewal(now),
            Err(ClientError::NotLoggedIn | ClientError::SessionExpired { .. }) => true,
            Err(_) => false,
        };
        let name = self.user.clone().or_else(|| home.stored_name());
        let (true, Some(name), Some(_)) = (renew, name, &self.login) else {
            return loaded;
        };
        if !natter_client::password::available(self.password_file.as_deref()) {
            return loaded;
        }
        let renewed = async {
            let target = self.login_target().await?;
            let password = self.password(&name, false)?;
            let status = home.login(target, key, &name, &password, false).await?;
            if let LoginStatus::Fresh { supernodes, .. } = &status {
                home.seed_host_cache(supernodes, key)?;
                eprintln!(
                    "logged in as {} ({})",
                    status.session().name(),
                    describe_validity(status.session().verified.not_after)
                );
            }
            Ok::<_, ClientError>(status.session().clone())
        };
        match (renewed.await, loaded) {
            (Ok(session), _) => Ok(session),
            // Still valid (only near expiry): go on with it.
            (Err(e), Ok(session)) => {
                eprintln!("warning: renewing the certificate failed: {e}");
                Ok(session)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }
}

fn describe_validity(not_after: i64) -> String {
    let left = (not_after - now_unix_secs()).max(0);
    format!(
        "certificate valid until {} ({}h{:02}m left)",
        date_time(not_after),
        left / 3600,
        left % 3600 / 60
    )
}

fn print_login(home: &Home, key: &rsa::RsaPublicKey, status: &LoginStatus) -> Result<()> {
    match status {
        LoginStatus::Reused(session) => print_reused(session),
        LoginStatus::Fresh {
            session,
            supernodes,
            transport,
        } => {
            home.seed_host_cache(supernodes, key)?;
            println!(
                "logged in as {}; {}; {} supernode(s) known; login server reached over {}",
                session.name(),
                describe_validity(session.verified.not_after),
                supernodes.len(),
                transport.name()
            );
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let Some(command) = &cli.command else {
        if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            return ui(&cli, &AudioArgs::default()).await;
        }
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingSubcommand,
                "a command is needed (the terminal UI runs only on a terminal; see --help)",
            )
            .exit();
    };
    match command {
        Command::Ui { audio } => ui(&cli, audio).await?,
        Command::Register { name } => {
            let home = cli.home()?;
            let key = cli.login_key()?;
            let target = cli.login_target().await?;
            let password = cli.password(name, true)?;
            let client = LoginClient::connect_to(&target, key.clone()).await?;
            let result = client.register(name, &password).await;
            client.close().await;
            let name = result?;
            println!("registered {name}");
            // And logged in: the certificate is stored as `natter login` does.
            let status = home.login(target, &key, &name, &password, true).await?;
            print_login(&home, &key, &status)?;
        }
        Command::Login { name, force } => {
            let home = cli.home()?;
            let key = cli.login_key()?;
            // A valid stored identity needs neither the server nor the password.
            if !force && let Some(session) = home.reusable(&key, name, now_unix_secs()) {
                print_reused(&session);
                return Ok(());
            }
            let target = cli.login_target().await?;
            let password = cli.password(name, false)?;
            let status = home.login(target, &key, name, &password, *force).await?;
            print_login(&home, &key, &status)?;
        }
        Command::Status => {
            let home = cli.home()?;
            let session = cli.session(&home, &cli.login_key()?).await?;
            println!(
                "logged in as {}; {}",
                session.name(),
                describe_validity(session.verified.not_after)
            );
            if let Some(status) = natter_client::promoted::Status::read(home.dir()) {
                println!("{}", status.line(now_unix_secs()));
            }
        }
        Command::Buddies {
            command:
                command @ (BuddiesCommand::Add { .. }
                | BuddiesCommand::Remove { .. }
                | BuddiesCommand::List),
            ..
        } => {
            let mut list = cli.home()?.buddy_list();
            match command {
                BuddiesCommand::Add { buddy } => {
                    list.add(buddy)?;
                    list.save()?;
                }
                BuddiesCommand::Remove { buddy } => {
                    list.remove(buddy)?;
                    list.save()?;
                }
                _ => {}
            }
            for buddy in list.names() {
                println!("{buddy}");
            }
        }
        Command::Search { .. }
        | Command::Chat { .. }
        | Command::Inbox
        | Command::Online { .. }
        | Command::Call { .. }
        | Command::Answer { .. } => overlay_command(&cli).await?,
        Command::Netcheck { stun, json } => {
            let mut reflectors = stun.clone();
            if reflectors.is_empty() {
                reflectors = cli.home()?.host_cache()?.stun_reflectors(4, &cli.bootstrap);
            }
            let Some(first) = reflectors.first() else {
                return Err(usage(
                    "no reflector: give --stun ADDR, or join once so the host cache knows supernodes",
                )
                .into());
            };
            let bind = SocketAddr::new(natter_client::gather::local_ip_towards(*first), 0);
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
        Command::Report { file, svg } => {
            let file_error = |p: &PathBuf, detail: String| ClientError::File {
                path: p.display().to_string(),
                detail,
            };
            let text =
                std::fs::read_to_string(file).map_err(|e| file_error(file, e.to_string()))?;
            let report = CallReport::from_json(&text)
                .map_err(|e| file_error(file, format!("not a call report: {e}")))?;
            for line in report.to_text().lines() {
                println!("{}", for_terminal(line));
            }
            if let Some(out) = svg {
                std::fs::write(out, natter_plot::call_timeline(&report))
                    .map_err(|e| file_error(out, e.to_string()))?;
                println!(
                    "timeline of {} samples written to {}",
                    report.samples.len(),
                    out.display()
                );
            }
        }
        Command::Buddies { command, name } => {
            let home = cli.home()?;
            let key = cli.login_key()?;
            let name = match name {
                Some(name) => name.clone(),
                None => home.stored_name().ok_or(ClientError::NotLoggedIn)?,
            };
            let target = cli.login_target().await?;
            let password = cli.password(&name, false)?;
            let client = LoginClient::connect_to(&target, key).await?;
            let (list, version) = (
                home.file(buddy_list::LIST_FILE),
                home.file(buddy_list::VERSION_FILE),
            );
            let result = match command {
                BuddiesCommand::Pull => {
                    buddy_list::pull(&client, &name, &password, &list, &version)
                        .await
                        .map(|s| println!("pulled {} buddies (version {})", s.count, s.version))
                }
                BuddiesCommand::Push => {
                    buddy_list::push(&client, &name, &password, &list, &version)
                        .await
                        .map(|s| println!("pushed {} buddies (version {})", s.count, s.version))
                }
                BuddiesCommand::Add { .. }
                | BuddiesCommand::Remove { .. }
                | BuddiesCommand::List => Ok(()),
            };
            client.close().await;
            result?;
        }
    }
    Ok(())
}

fn print_reused(session: &natter_client::Session) {
    println!(
        "already logged in as {}; {}",
        session.name(),
        describe_validity(session.verified.not_after)
    );
}

/// Commands that join the overlay through a supernode.
async fn overlay_command(cli: &Cli) -> Result<()> {
    let Some(command) = &cli.command else {
        return Ok(());
    };
    if let Command::Call { audio, .. } | Command::Answer { audio, .. } = command {
        call::check_devices(&call_options(audio, None))?;
    }
    let home = cli.home()?;
    let key = cli.login_key()?;
    let session = cli.session(&home, &key).await?;
    let mut overlay = home.join_overlay(&session, cli.bootstrap.clone()).await?;
    let me = session.name().to_owned();
    let sn = overlay.session();
    match command {
        Command::Search { name } => match search::search(&sn, name, REQUEST_TIMEOUT).await? {
            None => println!("{name}: not found"),
            Some(found) => {
                let via = found
                    .supernode
                    .map_or(String::new(), |a| format!(" via supernode {a}"));
                println!(
                    "{}: {}, {}{via}, last seen {}",
                    for_terminal(&found.name),
                    presence_name(found.status),
                    if found.reachable() {
                        "reachable"
                    } else {
                        "not reachable"
                    },
                    ago(found.last_seen_secs, now_unix_secs())
                );
            }
        },
        Command::Chat { name, text } => {
            let delivery = chat::send_text(
                &sn,
                &session.identity,
                &me,
                &key,
                name,
                text,
                REQUEST_TIMEOUT,
            )
            .await?;
            match delivery {
                Delivery::Delivered => println!("delivered to {name}"),
                Delivery::Stored => {
                    println!("stored for {name} (offline); delivered when they next join");
                }
            }
            sn.leave().await;
        }
        Command::Inbox => {
            let inbox = home.inbox();
            let keys = inbox::Keys {
                identity: &session.identity,
                login_key: &key,
            };
            let fetched = inbox::fetch(&sn, &inbox, &keys, REQUEST_TIMEOUT).await?;
            for refused in &fetched.refused {
                println!("{}", refused.warning());
            }
            let text = inbox.read();
            if text.is_empty() {
                println!("no messages");
            } else {
                // Lines stored by older releases may hold raw controls.
                let now = now_unix_secs();
                for line in text.lines() {
                    println!("{}", for_terminal(&inbox::human_line(line, now)));
                }
            }
            sn.leave().await;
        }
        Command::Online { promote } => {
            let buddies = home.buddy_list();
            println!("online as {me} via {}", sn.addr());
            let (quit_tx, quit_rx) = tokio::sync::watch::channel(false);
            let promotion = match promote_options(cli, promote, &home, &key).await {
                Some(options) => {
                    let reflectors = overlay.cache().stun_reflectors(4, &cli.bootstrap);
                    let peers = overlay.cache().candidates(8);
                    let mut quit = quit_rx.clone();
                    Some(tokio::spawn(natter_client::promoted::run(
                        options,
                        session.identity.clone(),
                        reflectors,
                        peers,
                        async move {
                            let _ = quit.wait_for(|q| *q).await;
                        },
                        print_promoted,
                    )))
                }
                None => None,
            };
            let stop = async {
                let mut terminate =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    Some(()) = async { terminate.as_mut()?.recv().await } => {}
                }
            };
            let stayed = online::stay_online(
                &mut overlay,
                buddies.names(),
                &home.inbox(),
                &inbox::Keys {
                    identity: &session.identity,
                    login_key: &key,
                },
                REQUEST_TIMEOUT,
                stop,
                print_event,
            )
            .await;
            // A promoted node steps down before the process ends.
            let _ = quit_tx.send(true);
            if let Some(task) = promotion {
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
            stayed?;
        }
        Command::Call {
            names,
            audio,
            conference,
            duration,
            ..
        } if names.len() >= 2 => {
            let mut options = call_options(audio, duration.map(Duration::from_secs_f64));
            options.control = Some(stdin_control());
            let conference = conference_options(cli, conference)?;
            let mut signals = call::Signals::Link(CallLink::new(&mut overlay));
            let outcome = natter_client::conference::convene(
                &sn,
                &mut signals,
                &session.identity,
                &me,
                &key,
                names,
                &options,
                &conference,
            )
            .await;
            drop(signals);
            overlay.session().leave().await;
            finish_conference(&outcome?, audio)?;
        }
        Command::Call {
            names,
            audio,
            duration,
            hold_at,
            hold_for,
            ..
        } => {
            let name = &names[0];
            let mut options = call_options(audio, duration.map(Duration::from_secs_f64));
            options.control = Some(stdin_control());
            options.hold = hold_at.map(|at| ScheduledHold {
                at: Duration::from_secs_f64(at.max(0.0)),
                length: Duration::from_secs_f64(hold_for.max(0.0)),
            });
            // The call owns the overlay: a supernode lost during the call
            // is rejoined and the call's signaling goes on.
            let mut signals = call::Signals::Link(CallLink::new(&mut overlay));
            let report = call::place_call_via(
                &sn,
                &mut signals,
                &session.identity,
                &me,
                &key,
                name,
                &options,
            )
            .await;
            drop(signals);
            overlay.session().leave().await;
            finish_report(&report?, audio)?;
        }
        Command::Answer {
            audio,
            conference,
            calls,
            duration,
            decline,
        } => {
            let conference = conference_options(cli, conference)?;
            let mut options = call_options(audio, duration.map(Duration::from_secs_f64));
            options.control = Some(stdin_control());
            online::set_online(&sn, REQUEST_TIMEOUT)
                .await
                .map_err(ClientError::from)?;
            println!("waiting for calls as {me} via {}", sn.addr());
            let incoming = call::Incoming {
                session: &sn,
                identity: &session.identity,
                local_name: &me,
                login_key: &key,
                options: &options,
            };
            let mut signals = call::Signals::Link(CallLink::new(&mut overlay));
            let answered = natter_client::conference::answer_calls_via(
                incoming,
                &mut signals,
                *calls,
                !*decline,
                &conference,
            )
            .await;
            drop(signals);
            overlay.session().leave().await;
            for answered in answered? {
                match answered {
                    AnsweredCall::Call(report) => finish_report(&report, audio)?,
                    AnsweredCall::Conference(outcome) => finish_conference(&outcome, audio)?,
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn print_event(event: OnlineEvent) {
    match event {
        OnlineEvent::Presence { name, status } => {
            println!("presence {} {}", for_terminal(&name), presence_name(status));
        }
        OnlineEvent::Message(m) => println!(
            "message from {}: {}",
            for_terminal(&m.from),
            for_terminal(&m.text)
        ),
        OnlineEvent::Refused(refused) => println!("{}", refused.warning()),
        OnlineEvent::Delivered { to, .. } => println!("delivered to {}", for_terminal(&to)),
        OnlineEvent::Rejoined { lost, via } => {
            println!("supernode {lost} lost; rejoined via {via}");
        }
    }
}

/// The live status line of promotion (`natter online`).
fn print_promoted(event: PromotedEvent) {
    match event {
        PromotedEvent::NotEligible(why) => println!("supernode: not promoted ({why})"),
        PromotedEvent::Starting { addr } => {
            println!("supernode: starting at {addr}, asking the login server for a certificate");
        }
        PromotedEvent::Serving { addr, node_id } => println!(
            "supernode: promoted, serving at {addr} (node id {})",
            hex::encode(node_id)
        ),
        PromotedEvent::SteppedDown(reason) => println!("supernode: stepped down ({reason})"),
    }
}

/// Promotion's settings, or `None` when this client must not be promoted
/// (`--no-promote`, or no login server to certify it).
async fn promote_options(
    cli: &Cli,
    args: &PromoteArgs,
    home: &natter_client::Home,
    key: &rsa::RsaPublicKey,
) -> Option<PromoteOptions> {
    if args.no_promote {
        return None;
    }
    let login = match cli.login_target().await {
        Ok(target) => target.quic?,
        Err(_) => {
            println!("supernode: not promoted (no --login server to certify it)");
            return None;
        }
    };
    let policy = PromotePolicy {
        after: Duration::from_secs(args.promote_after),
        max_load: args.promote_max_load,
        ..PromotePolicy::default()
    };
    Some(PromoteOptions {
        policy,
        port: args.promote_port,
        tcp_port: args.promote_tcp_port,
        login,
        login_key: key.clone(),
        home: home.dir().to_path_buf(),
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
        control: None,
        hold: None,
        leg: None,
    }
}

/// The controls of a CLI call: lines typed on standard input (`m`, `h`,
/// `q`), read by a thread of its own (it does not hold the program open).
fn stdin_control() -> Arc<CallControl> {
    let control = Arc::new(CallControl::default());
    let reader = control.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            match reader.command(&line) {
                Some(done) => eprintln!("{done}"),
                None if line.trim().is_empty() => {}
                None => eprintln!(
                    "m: mute / unmute, h: hold / resume, q: hang up, add NAME: add to a conference"
                ),
            }
        }
    });
    control
}

/// `natter ui`: the terminal UI, logged in and joined.
async fn ui(cli: &Cli, audio: &AudioArgs) -> Result<()> {
    natter_client::ui::app::check_terminal()?;
    let home = cli.home()?;
    let key = cli.login_key()?;
    let session = cli.session(&home, &key).await?;
    natter_client::ui::app::run(natter_client::ui::app::UiConfig {
        home,
        session,
        bootstrap: cli.bootstrap.clone(),
        call: CallOptions {
            live_status: false,
            ..call_options(audio, None)
        },
        stats_json: audio.stats_json.clone(),
        request_timeout: REQUEST_TIMEOUT,
    })
    .await?;
    Ok(())
}

/// A conference's own settings: the STUN reflectors for its NAT class
/// (those `natter netcheck` uses) and the declared upstream.
fn conference_options(cli: &Cli, args: &ConferenceArgs) -> Result<ConferenceOptions> {
    let reflectors = cli
        .home()?
        .host_cache()
        .map(|cache| cache.stun_reflectors(4, &cli.bootstrap))
        .unwrap_or_default();
    Ok(ConferenceOptions {
        reflectors,
        upstream_kbps: args.upstream_kbps,
    })
}

fn finish_conference(outcome: &ConferenceOutcome, audio: &AudioArgs) -> Result<()> {
    for line in outcome.to_text().lines() {
        println!("{}", for_terminal(line));
    }
    if let Some(path) = &audio.stats_json {
        natter_fsutil::write_private(path, format!("{}\n", outcome.to_json()).as_bytes())?;
    }
    Ok(())
}

fn finish_report(report: &CallReport, audio: &AudioArgs) -> Result<()> {
    // The report names the peer.
    for line in report.to_text().lines() {
        println!("{}", for_terminal(line));
    }
    if let Some(path) = &audio.stats_json {
        natter_fsutil::write_private(path, format!("{}\n", report.to_json()).as_bytes())?;
    }
    Ok(())
}
