//! Running a promoted client's supernode: the I/O around
//! [`crate::promote::Promotion`].
//!
//! `natter online` (unless `--no-promote`) runs [`run`] beside the user's
//! own session. It feeds the state machine the clock, the netcheck
//! ([`crate::netcheck::run`] against the host cache's reflectors), the load
//! average (`/proc/loadavg` per core) and whether the supernode has its
//! certificate yet, and carries out its actions:
//!
//! * `Promote`: [`natter_supernode::Supernode::spawn`], the one way any
//!   supernode starts, in this process, with its node key in
//!   `HOME/supernode/` and [`natter_supernode::Certification::Sponsored`]:
//!   each announce to the login server carries the user's certificate and
//!   signature, and the login server's policy decides (docs/PROTOCOL.md,
//!   8.1). Its peers are the supernodes of the host cache.
//! * `StepDown`: [`natter_supernode::Handle::shutdown`]: it stops
//!   announcing and closes every connection, so its peers re-home the
//!   directory records it held at once and its relayed calls migrate
//!   (`natter_proto::migration`).
//!
//! Every state change is written to `HOME/supernode.status` ([`Status`]),
//! which `natter status` reads, and told to the caller ([`PromotedEvent`])
//! for the live status line.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use natter_proto::cert::Identity;
use natter_supernode::{Certification, Handle, Sponsor, Supernode};
use rsa::RsaPublicKey;

use crate::netcheck;
use crate::promote::{Action, PromotePolicy, Promotion, Reachability, State, StepDownReason};

/// The status file in the home directory.
pub const STATUS_FILE: &str = "supernode.status";
/// The promoted supernode's data directory (node key, TLS identity) in the
/// home directory: the same node id, hence the same approved key, on every
/// promotion.
pub const DATA_DIR: &str = "supernode";

/// How often the load (and the time) is looked at.
const TICK: Duration = Duration::from_secs(1);
/// How often a starting node's certificate is looked for.
const CERTIFICATE_TICK: Duration = Duration::from_millis(100);

/// What promotion needs from `natter online`.
#[derive(Debug, Clone)]
pub struct PromoteOptions {
    pub policy: PromotePolicy,
    /// UDP port of the supernode's QUIC listener (its reflector and relay
    /// take the next two); 0: any free port.
    pub port: u16,
    /// TCP port of its TLS-over-TCP listener; 0: any free port.
    pub tcp_port: u16,
    /// The login server (QUIC), which certifies the supernode.
    pub login: SocketAddr,
    pub login_key: RsaPublicKey,
    /// The home directory.
    pub home: PathBuf,
}

/// What the online process is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromotedEvent {
    /// The check found this client not eligible (yet); checked again later.
    NotEligible(String),
    /// The supernode runs and asks the login server for its certificate.
    Starting { addr: SocketAddr },
    /// Certified and serving.
    Serving { addr: SocketAddr, node_id: [u8; 16] },
    /// Stopped serving.
    SteppedDown(StepDownReason),
}

/// `HOME/supernode.status`, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// `waiting`, `checking`, `starting`, `serving`, `stepped-down`.
    pub state: String,
    /// Why (not eligible, stepped down), or empty.
    pub detail: String,
    /// The supernode's QUIC address while it runs.
    pub addr: Option<SocketAddr>,
    /// Its node id (hex) while it runs.
    pub node_id: Option<String>,
    /// When this state began (unix seconds).
    pub since: i64,
    /// The online process that wrote it.
    pub pid: u32,
}

impl Status {
    /// Reads `HOME/supernode.status`; `None` when absent or unreadable.
    pub fn read(home: &std::path::Path) -> Option<Self> {
        let bytes = std::fs::read(home.join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether the process that wrote it still runs.
    pub fn writer_alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    /// One line for `natter status` at `now` (unix seconds).
    pub fn line(&self, now: i64) -> String {
        let since = crate::text::ago(self.since, now);
        let alive = self.writer_alive();
        match self.state.as_str() {
            "serving" if alive => format!(
                "supernode: serving at {} (node id {}), promoted {since}",
                self.addr.map_or_else(|| "?".into(), |a| a.to_string()),
                self.node_id.as_deref().unwrap_or("?"),
            ),
            "stepped-down" => format!("supernode: stepped down {since} ({})", self.detail),
            "ended" => format!("supernode: none ({}, {since})", self.detail),
            _ if !alive => format!(
                "supernode: none (the online process {} that was {} is gone)",
                self.pid, self.state
            ),
            "starting" => format!(
                "supernode: starting at {}, waiting for its certificate since {since}",
                self.addr.map_or_else(|| "?".into(), |a| a.to_string()),
            ),
            "waiting" if !self.detail.is_empty() => {
                format!("supernode: not promoted ({})", self.detail)
            }
            other => format!("supernode: not promoted ({other})"),
        }
    }
}

/// The 1-minute load average per core (`/proc/loadavg`); 0 when unknown.
pub fn load_per_core() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    // Core counts are small: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let cores = cores as f64;
    load / cores
}

/// The last netcheck: reachability and the public IP.
struct Checked {
    reachability: Reachability,
    public_ip: Option<IpAddr>,
    local_ip: IpAddr,
}

async fn check(reflectors: &[SocketAddr]) -> Checked {
    let Some(first) = reflectors.first() else {
        return Checked {
            reachability: Reachability::No("no reflector known (empty host cache)".into()),
            public_ip: None,
            local_ip: IpAddr::from([0, 0, 0, 0]),
        };
    };
    let local_ip = crate::gather::local_ip_towards(*first);
    match netcheck::run(SocketAddr::new(local_ip, 0), reflectors).await {
        Ok(report) => Checked {
            reachability: Reachability::of(&report),
            public_ip: report.mapped.first().map(|(_, mapped)| mapped.ip()),
            local_ip,
        },
        Err(e) => Checked {
            reachability: Reachability::No(format!("netcheck: {e}")),
            public_ip: None,
            local_ip,
        },
    }
}

/// Starts the supernode on the checked addresses.
fn start(
    options: &PromoteOptions,
    identity: &Identity,
    checked: &Checked,
    peers: &[SocketAddr],
) -> Result<Handle, StartError> {
    let listen = SocketAddr::new(checked.local_ip, options.port);
    let mut config = natter_supernode::Config::new(listen, options.login_key.clone());
    if checked.reachability == Reachability::FullCone {
        // The NAT keeps ports (a condition of `FullCone`): the public
        // address is the mapped IP with the port bound here, which must be
        // known before binding.
        let (Some(ip), true) = (checked.public_ip, options.port != 0) else {
            return Err(StartError::FullConeNeedsPort);
        };
        config.advertise = Some(SocketAddr::new(ip, options.port));
    }
    config.login = Some(options.login);
    config.peers = peers.to_vec();
    config.data_dir = Some(options.home.join(DATA_DIR));
    config.tcp_listen = Some(SocketAddr::new(checked.local_ip, options.tcp_port));
    config.certification = Certification::Sponsored(std::sync::Arc::new(Sponsor {
        certificate: identity.certificate.clone(),
        key: identity.key.clone(),
    }));
    Ok(Supernode::spawn(config)?)
}

/// Why the promoted supernode did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spawn(#[from] natter_supernode::SpawnError),
    #[error("behind a full-cone NAT the supernode needs a fixed --promote-port")]
    FullConeNeedsPort,
}

fn write_status(options: &PromoteOptions, status: &Status) {
    // Best effort: the status file only informs `natter status`.
    if let Ok(bytes) = serde_json::to_vec_pretty(status) {
        let _ = natter_fsutil::write_private(&options.home.join(STATUS_FILE), &bytes);
    }
}

fn status_of(state: &State, node: Option<&Handle>) -> Status {
    let (name, detail) = match state {
        State::Waiting { last_refusal } => ("waiting", last_refusal.clone().unwrap_or_default()),
        State::Checking => ("checking", String::new()),
        State::Starting { .. } => ("starting", String::new()),
        State::Serving { .. } => ("serving", String::new()),
        State::SteppedDown(reason) => ("stepped-down", reason.to_string()),
    };
    Status {
        state: name.into(),
        detail,
        addr: node.map(Handle::addr),
        node_id: node.map(|n| hex::encode(n.node_id())),
        since: crate::now_unix_secs(),
        pid: std::process::id(),
    }
}

/// Runs promotion for a client online as `identity` until `quit`
/// completes (then a promoted node steps down before this returns) or the
/// node stepped down for another reason. `reflectors` are the STUN
/// reflectors the netcheck asks, `peers` the supernodes a promoted node
/// dials; `on_event` hears every change.
pub async fn run(
    options: PromoteOptions,
    identity: Identity,
    reflectors: Vec<SocketAddr>,
    peers: Vec<SocketAddr>,
    quit: impl Future<Output = ()>,
    mut on_event: impl FnMut(PromotedEvent),
) {
    let start_time = Instant::now();
    let clock = || u64::try_from(start_time.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut promotion = Promotion::new(options.policy, clock());
    let mut node: Option<Handle> = None;
    let mut quit = std::pin::pin!(quit);
    let mut last_state = promotion.state().clone();
    write_status(&options, &status_of(&last_state, None));
    loop {
        while let Some(action) = promotion.poll_action() {
            match action {
                Action::Check => {
                    write_status(&options, &status_of(promotion.state(), None));
                    let checked = check(&reflectors).await;
                    let load = load_per_core();
                    promotion.handle_check(clock(), &checked.reachability, load);
                    if let State::Waiting {
                        last_refusal: Some(why),
                    } = promotion.state()
                    {
                        on_event(PromotedEvent::NotEligible(why.clone()));
                    }
                    if matches!(promotion.state(), State::Starting { .. }) {
                        // `Promote` is next in the queue: start with this check.
                        let _ = promotion.poll_action();
                        match start(&options, &identity, &checked, &peers) {
                            Ok(handle) => {
                                // The status file first: whoever hears of a
                                // change finds it there.
                                last_state = promotion.state().clone();
                                write_status(&options, &status_of(&last_state, Some(&handle)));
                                on_event(PromotedEvent::Starting {
                                    addr: handle.addr(),
                                });
                                node = Some(handle);
                            }
                            Err(e) => promotion.handle_failed(e.to_string()),
                        }
                    }
                }
                // Started right after its check, above.
                Action::Promote => {}
                Action::StepDown(reason) => {
                    if let Some(handle) = node.take() {
                        handle.shutdown().await;
                    }
                    last_state = promotion.state().clone();
                    write_status(&options, &status_of(&last_state, None));
                    on_event(PromotedEvent::SteppedDown(reason));
                }
            }
        }
        let state = promotion.state().clone();
        if state != last_state {
            write_status(&options, &status_of(&state, node.as_ref()));
            last_state = state.clone();
        }
        if let State::SteppedDown(reason) = &state {
            if let StepDownReason::Failed(why) = reason {
                on_event(PromotedEvent::SteppedDown(StepDownReason::Failed(
                    why.clone(),
                )));
            }
            return;
        }
        // Waiting for the certificate, look often: it is the moment the
        // node starts serving.
        let tick = match promotion.state() {
            State::Starting { .. } => CERTIFICATE_TICK,
            _ => TICK,
        };
        let wake = promotion
            .poll_timeout()
            .map_or(tick, |at| Duration::from_millis(at.saturating_sub(clock())))
            .min(tick);
        tokio::select! {
            () = tokio::time::sleep(wake) => {
                let now = clock();
                promotion.handle_timeout(now);
                if let Some(handle) = &node {
                    if matches!(promotion.state(), State::Starting { .. })
                        && handle.certificate().is_some()
                    {
                        promotion.handle_certified(now);
                        last_state = promotion.state().clone();
                        write_status(&options, &status_of(&last_state, Some(handle)));
                        on_event(PromotedEvent::Serving {
                            addr: handle.addr(),
                            node_id: handle.node_id(),
                        });
                    }
                    promotion.handle_load(now, load_per_core());
                }
            }
            () = &mut quit => {
                promotion.handle_quit();
                if node.is_none() {
                    // Never promoted in this run: nothing to step down from.
                    let mut ended = status_of(promotion.state(), None);
                    ended.state = "ended".into();
                    ended.detail = "not promoted; the online process ended".into();
                    write_status(&options, &ended);
                    return;
                }
            }
        }
    }
}
