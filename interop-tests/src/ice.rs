//! The ICE baseline's agent (issue 20): one standard ICE agent (the
//! `webrtc-ice` crate, RFC 8445 over UDP/IPv4) that runs inside a lab host's
//! namespace as the hidden `ice-agent` subcommand, and the pair types of
//! what it selected.
//!
//! An agent gathers host, server-reflexive (STUN: a supernode's reflector)
//! and relay candidates (TURN: coturn on the server subnet, see
//! [`crate::baseline`]), and trickles its credentials and candidates to the
//! peer through the **rendezvous**: two append-only text files in a
//! directory both agents see ([`SIGNAL_FILE`] per role), one line per item
//! (`ufrag U`, `pwd P`, `candidate <SDP attribute value>`, `gathered`). The
//! files stand in for a signalling server and are not part of what is
//! measured: a line written is seen by the peer within one poll (10 ms).
//! Once it has the peer's ufrag and pwd and the peer's `gathered` line (or
//! 3 s after the credentials, [`GATHER_WAIT`], for a peer whose gathering
//! hangs), the controlling agent `dial`s, the controlled one `accept`s:
//! starting the checks with the peer's candidates known keeps a check that
//! outruns its candidate's line from turning a host or srflx candidate into
//! a peer-reflexive one (which `webrtc-ice` nominates only after its 1 s
//! prflx wait). Candidates that come later are still added (trickle). the agent reports when a pair was selected
//! (ICE "connected"), which pair, and its timeline ([`AgentReport`], JSON).
//!
//! What `webrtc-ice` 0.17 does not do, and so the baseline does not either:
//! TURN over TCP or TLS (its relay gathering handles `turn:` over UDP only,
//! the TCP cases are a TODO in its source), ICE-TCP candidates and IPv6 in
//! this lab. A host behind the udp-blocked firewall therefore has no way
//! out for the baseline.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use webrtc_ice::agent::Agent;
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::candidate::{Candidate, CandidateType};
use webrtc_ice::mdns::MulticastDnsMode;
use webrtc_ice::network_type::NetworkType;
use webrtc_ice::state::ConnectionState;
use webrtc_ice::url::Url;

use crate::error::{LabError, Result};

/// The two roles of an ICE session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Nominates the pair (the caller, A).
    Controlling,
    /// Follows the nomination (the callee, B).
    Controlled,
}

impl Role {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Role::Controlling => "controlling",
            Role::Controlled => "controlled",
        }
    }

    /// The other role.
    pub fn peer(self) -> Role {
        match self {
            Role::Controlling => Role::Controlled,
            Role::Controlled => Role::Controlling,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "controlling" => Ok(Role::Controlling),
            "controlled" => Ok(Role::Controlled),
            _ => Err(format!("unknown role `{s}` (controlling, controlled)")),
        }
    }
}

/// The rendezvous file a role writes (in the rendezvous directory).
pub fn signal_file(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("{}.{SIGNAL_FILE}", role.name()))
}

/// Suffix of the rendezvous files (`controlling.signal`, `controlled.signal`).
pub const SIGNAL_FILE: &str = "signal";

/// How often an agent looks at its peer's rendezvous file.
const POLL: Duration = Duration::from_millis(10);

/// How long an agent that has its peer's credentials waits for the peer's
/// `gathered` before it starts its checks anyway (see [`run_agent`]).
const GATHER_WAIT: Duration = Duration::from_secs(3);

/// Bound of the queue between the agent's callbacks and its main loop.
const EVENT_QUEUE: usize = 256;

/// A TURN server and its long-term credentials.
#[derive(Debug, Clone)]
pub struct TurnServer {
    /// `turn:HOST:PORT?transport=udp`.
    pub url: String,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// What one agent is told.
#[derive(Debug, Clone)]
pub struct AgentArgs {
    /// Controlling (dials) or controlled (accepts).
    pub role: Role,
    /// The rendezvous directory.
    pub dir: PathBuf,
    /// `stun:HOST:PORT`, for server-reflexive candidates.
    pub stun: Option<String>,
    /// For relay candidates.
    pub turn: Option<TurnServer>,
    /// Give up when no pair is selected within this time from the start.
    pub timeout: Duration,
    /// Stay up this long after connecting (the peer may still be checking).
    pub linger: Duration,
}

/// One candidate: its type and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateInfo {
    /// `host`, `srflx`, `prflx` or `relay`.
    pub kind: String,
    /// ip:port.
    pub addr: String,
}

impl CandidateInfo {
    fn of(c: &(dyn Candidate + Send + Sync)) -> Self {
        CandidateInfo {
            kind: c.candidate_type().to_string(),
            addr: format!("{}:{}", c.address(), c.port()),
        }
    }
}

/// What an agent writes when it ends (`--report`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentReport {
    /// `controlling` or `controlled`.
    pub role: String,
    /// A candidate pair was selected (`dial`/`accept` returned).
    pub connected: bool,
    /// The selected pair's local candidate.
    pub local: Option<CandidateInfo>,
    /// The selected pair's remote candidate (as this agent knows it:
    /// `prflx` when it learned the address from a check).
    pub remote: Option<CandidateInfo>,
    /// Agent start to the selected pair (ms).
    pub connected_ms: Option<f64>,
    /// Start of the connectivity checks (the peer's credentials known) to
    /// the selected pair (ms).
    pub checks_ms: Option<f64>,
    /// Agent start to the end of its candidate gathering (ms).
    pub gathered_ms: Option<f64>,
    /// Every local candidate gathered.
    pub local_candidates: Vec<CandidateInfo>,
    /// Remote candidates received through the rendezvous.
    pub remote_candidates: u32,
    /// Rendezvous lines dropped: candidates that did not parse or that the
    /// agent refused.
    #[serde(default)]
    pub malformed_lines: u32,
    /// Connection state changes, with when (ms from the start).
    pub states: Vec<String>,
    /// Why it did not connect, or what else went wrong.
    pub error: Option<String>,
}

impl AgentReport {
    /// The selected pair's kind from this agent's view ([`PairKind::of`]).
    pub fn pair_kind(&self) -> Option<PairKind> {
        let (l, r) = (self.local.as_ref()?, self.remote.as_ref()?);
        Some(PairKind::of(&l.kind, &r.kind))
    }
}

fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(ip, _)| ip)
}

/// What candidate `c` (an address in a selected pair) of the agent that
/// reported `owner` really is, by address rather than by the label the
/// observing agent gave it: one of `owner`'s own candidates has that
/// address: its kind, except that a srflx candidate on one of `owner`'s
/// host addresses is a host candidate in effect (no NAT translated it: an
/// open host's STUN answer is its own address); else an address on one of
/// `owner`'s host IPs is host; a relay stays relay; anything else is a
/// mapping no candidate announced: prflx. (Which label an agent gives an
/// address depends on whether a check or the candidate's line reached it
/// first.)
pub fn effective_kind(c: &CandidateInfo, owner: &AgentReport) -> PairKind {
    let host_ip = |ip: &str| {
        owner
            .local_candidates
            .iter()
            .any(|h| h.kind == "host" && ip_of(&h.addr) == ip)
    };
    let ip = ip_of(&c.addr);
    match owner.local_candidates.iter().find(|o| o.addr == c.addr) {
        Some(o) if o.kind == "srflx" && host_ip(ip) => PairKind::Host,
        Some(o) => PairKind::from_label(&o.kind),
        None if host_ip(ip) => PairKind::Host,
        None if c.kind == "relay" => PairKind::Relay,
        None => PairKind::Prflx,
    }
}

/// The pair of a session between agents that reported `a` and `b`: the
/// least direct of the candidates in the two agents' selected pairs, each
/// by [`effective_kind`] with its owner (a view's local candidate is its
/// agent's, its remote one the peer's). `None` when neither selected one.
pub fn session_pair(a: &AgentReport, b: &AgentReport) -> Option<PairKind> {
    let view = |me: &AgentReport, peer: &AgentReport| {
        Some(effective_kind(me.local.as_ref()?, me).max(effective_kind(me.remote.as_ref()?, peer)))
    };
    view(a, b).max(view(b, a))
}

/// The type of a selected candidate pair, less direct in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairKind {
    /// Both candidates are host candidates: no NAT on the way.
    Host,
    /// A server-reflexive candidate (from STUN) is on it.
    Srflx,
    /// A peer-reflexive candidate (an address first seen in a check) is on
    /// it: the NAT mapped the path to the peer differently from the path
    /// to the STUN server (symmetric), or the check came before the
    /// candidate.
    Prflx,
    /// A TURN relay is on it.
    Relay,
}

impl PairKind {
    /// Its name in results.
    pub fn name(self) -> &'static str {
        match self {
            PairKind::Host => "host",
            PairKind::Srflx => "srflx",
            PairKind::Prflx => "prflx",
            PairKind::Relay => "relay",
        }
    }

    /// A candidate type as `webrtc-ice` names it (`host`, `srflx`,
    /// `prflx`, `relay`; anything else counts as host).
    pub fn from_label(t: &str) -> PairKind {
        match t {
            "relay" => PairKind::Relay,
            "prflx" => PairKind::Prflx,
            "srflx" => PairKind::Srflx,
            _ => PairKind::Host,
        }
    }

    /// The kind of a pair from its local and remote candidate types, as one
    /// agent labelled them: the less direct of the two.
    pub fn of(local: &str, remote: &str) -> PairKind {
        Self::from_label(local).max(Self::from_label(remote))
    }

    /// The coarse class the baseline's expectations are stated in.
    pub fn class(self) -> IceClass {
        match self {
            PairKind::Host => IceClass::Host,
            PairKind::Srflx | PairKind::Prflx => IceClass::Reflexive,
            PairKind::Relay => IceClass::Relay,
        }
    }
}

impl fmt::Display for PairKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an ICE session ends on, coarsely: which of srflx and prflx a
/// hole-punched pair shows depends on which check got through first, so
/// expectations name only the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IceClass {
    /// A host pair.
    Host,
    /// A srflx or prflx pair (a hole punched through the NATs).
    Reflexive,
    /// A relay pair.
    Relay,
    /// No pair selected.
    Failed,
}

impl IceClass {
    /// Its name in results.
    pub fn name(self) -> &'static str {
        match self {
            IceClass::Host => "host",
            IceClass::Reflexive => "reflexive",
            IceClass::Relay => "relay",
            IceClass::Failed => "failed",
        }
    }
}

impl fmt::Display for IceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Appends lines to the own rendezvous file.
struct SignalWriter {
    file: fs::File,
    path: PathBuf,
}

impl SignalWriter {
    fn create(path: PathBuf) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| LabError::io(format!("create {}", path.display()), e))?;
        Ok(SignalWriter { file, path })
    }

    /// One line in one write, so that a reader sees it whole or not at all.
    fn line(&mut self, s: &str) -> Result<()> {
        self.file
            .write_all(format!("{s}\n").as_bytes())
            .map_err(|e| LabError::io(format!("write {}", self.path.display()), e))
    }
}

/// Reads the complete lines the peer added to its rendezvous file.
struct SignalReader {
    path: PathBuf,
    consumed: usize,
}

impl SignalReader {
    fn new_lines(&mut self) -> Vec<String> {
        let Ok(text) = fs::read(&self.path) else {
            return Vec::new(); // not there yet
        };
        let Some(new) = text.get(self.consumed..) else {
            return Vec::new();
        };
        let Some(end) = new.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        self.consumed += end + 1;
        String::from_utf8_lossy(&new[..end])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

enum Event {
    Candidate(Option<Arc<dyn Candidate + Send + Sync>>),
    State(ConnectionState),
    Selected(CandidateInfo, CandidateInfo),
    Connected(std::result::Result<(), String>),
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn ice_err(what: &str) -> impl Fn(webrtc_ice::Error) -> LabError + '_ {
    move |e| LabError::Other(format!("{what}: {e}"))
}

/// Runs one agent to its end (connected and lingered, or timed out) and
/// returns its report; errors of the agent itself are in the report.
pub fn run_agent(args: &AgentArgs) -> Result<AgentReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| LabError::io("tokio runtime", e))?;
    let t0 = Instant::now();
    let mut rep = AgentReport {
        role: args.role.name().to_owned(),
        ..AgentReport::default()
    };
    if let Err(e) = rt.block_on(drive(args, t0, &mut rep)) {
        rep.error = Some(e.to_string());
    }
    // the agent's tasks end with the runtime
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(rep)
}

async fn drive(args: &AgentArgs, t0: Instant, rep: &mut AgentReport) -> Result<()> {
    let mut urls = Vec::new();
    if let Some(s) = &args.stun {
        urls.push(Url::parse_url(s).map_err(ice_err("STUN URL"))?);
    }
    if let Some(t) = &args.turn {
        let mut u = Url::parse_url(&t.url).map_err(ice_err("TURN URL"))?;
        u.username = t.user.clone();
        u.password = t.password.clone();
        urls.push(u);
    }
    let cfg = AgentConfig {
        urls,
        network_types: vec![NetworkType::Udp4],
        candidate_types: vec![
            CandidateType::Host,
            CandidateType::ServerReflexive,
            CandidateType::Relay,
        ],
        multicast_dns_mode: MulticastDnsMode::Disabled,
        is_controlling: args.role == Role::Controlling,
        ..AgentConfig::default()
    };
    let agent = Arc::new(Agent::new(cfg).await.map_err(ice_err("new agent"))?);
    let (tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
    let t = tx.clone();
    agent.on_candidate(Box::new(move |c| {
        let t = t.clone();
        Box::pin(async move {
            let _ = t.send(Event::Candidate(c)).await;
        })
    }));
    let t = tx.clone();
    agent.on_connection_state_change(Box::new(move |s| {
        let t = t.clone();
        Box::pin(async move {
            let _ = t.send(Event::State(s)).await;
        })
    }));
    let t = tx.clone();
    agent.on_selected_candidate_pair_change(Box::new(move |l, r| {
        let t = t.clone();
        let (l, r) = (CandidateInfo::of(l.as_ref()), CandidateInfo::of(r.as_ref()));
        Box::pin(async move {
            let _ = t.send(Event::Selected(l, r)).await;
        })
    }));

    let mut out = SignalWriter::create(signal_file(&args.dir, args.role))?;
    let (ufrag, pwd) = agent.get_local_user_credentials().await;
    out.line(&format!("ufrag {ufrag}"))?;
    out.line(&format!("pwd {pwd}"))?;
    agent
        .gather_candidates()
        .map_err(ice_err("gather candidates"))?;

    let mut peer = SignalReader {
        path: signal_file(&args.dir, args.role.peer()),
        consumed: 0,
    };
    let (mut remote_ufrag, mut remote_pwd) = (None::<String>, None::<String>);
    // dropping the sender would cancel dial/accept: it lives to the end
    let (_cancel_tx, cancel_rx) = mpsc::channel::<()>(1);
    let mut cancel_rx = Some(cancel_rx);
    let mut checks_started: Option<Instant> = None;
    let (mut creds_at, mut peer_gathered) = (None::<Instant>, false);
    let deadline = tokio::time::Instant::from_std(t0 + args.timeout);
    let mut poll = tokio::time::interval(POLL);
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        let until = linger_until.unwrap_or(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {
                if linger_until.is_none() {
                    rep.error = Some(format!(
                        "no candidate pair selected within {:?}", args.timeout
                    ));
                }
                break;
            }
            ev = events.recv() => match ev {
                Some(Event::Candidate(Some(c))) => {
                    out.line(&format!("candidate {}", c.marshal()))?;
                    rep.local_candidates.push(CandidateInfo::of(c.as_ref()));
                }
                Some(Event::Candidate(None)) => {
                    out.line("gathered")?;
                    rep.gathered_ms = Some(ms(t0.elapsed()));
                }
                Some(Event::State(s)) => {
                    rep.states.push(format!("{s} at {} ms", ms(t0.elapsed())));
                }
                Some(Event::Selected(l, r)) => {
                    rep.local = Some(l);
                    rep.remote = Some(r);
                }
                Some(Event::Connected(Ok(()))) => {
                    rep.connected = true;
                    rep.connected_ms = Some(ms(t0.elapsed()));
                    rep.checks_ms = checks_started.map(|s| ms(s.elapsed()));
                    linger_until = Some(tokio::time::Instant::now() + args.linger);
                }
                Some(Event::Connected(Err(e))) => {
                    rep.error = Some(format!("{}: {e}", if args.role == Role::Controlling { "dial" } else { "accept" }));
                    break;
                }
                None => break,
            },
            _ = poll.tick() => {
                for line in peer.new_lines() {
                    let (key, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                    match key {
                        "ufrag" => remote_ufrag = Some(value.to_owned()),
                        "pwd" => remote_pwd = Some(value.to_owned()),
                        "candidate" => match unmarshal_candidate(value) {
                            Ok(c) => {
                                let c: Arc<dyn Candidate + Send + Sync> = Arc::new(c);
                                match agent.add_remote_candidate(&c) {
                                    Ok(()) => rep.remote_candidates += 1,
                                    Err(_) => rep.malformed_lines += 1,
                                }
                            }
                            Err(_) => rep.malformed_lines += 1,
                        },
                        "gathered" => peer_gathered = true,
                        _ => {} // a line a newer agent writes
                    }
                }
                if creds_at.is_none() && remote_ufrag.is_some() && remote_pwd.is_some() {
                    creds_at = Some(Instant::now());
                }
                let ready = creds_at.is_some_and(|at| peer_gathered || at.elapsed() >= GATHER_WAIT);
                if ready
                    && let (Some(u), Some(p)) = (&remote_ufrag, &remote_pwd)
                    && let Some(cancel) = cancel_rx.take()
                {
                    checks_started = Some(Instant::now());
                    let (agent, t) = (Arc::clone(&agent), tx.clone());
                    let (u, p, role) = (u.clone(), p.clone(), args.role);
                    tokio::spawn(async move {
                        let r = match role {
                            Role::Controlling => agent.dial(cancel, u, p).await.map(|_| ()),
                            Role::Controlled => agent.accept(cancel, u, p).await.map(|_| ()),
                        };
                        let _ = t.send(Event::Connected(r.map_err(|e| e.to_string()))).await;
                    });
                }
            }
        }
    }
    let _ = agent.close().await;
    Ok(())
}

/// Reads an agent's report.
pub fn read_report(path: &Path) -> Option<AgentReport> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_kind_is_the_less_direct_candidate() {
        assert_eq!(PairKind::of("host", "host"), PairKind::Host);
        assert_eq!(PairKind::of("host", "prflx"), PairKind::Prflx);
        assert_eq!(PairKind::of("srflx", "host"), PairKind::Srflx);
        assert_eq!(PairKind::of("relay", "srflx"), PairKind::Relay);
        assert_eq!(PairKind::Prflx.class(), IceClass::Reflexive);
    }

    fn cand(kind: &str, addr: &str) -> CandidateInfo {
        CandidateInfo {
            kind: kind.to_owned(),
            addr: addr.to_owned(),
        }
    }

    fn agent(
        local: Vec<CandidateInfo>,
        pair: Option<(CandidateInfo, CandidateInfo)>,
    ) -> AgentReport {
        let (l, r) = pair.unzip();
        AgentReport {
            connected: l.is_some(),
            local: l,
            remote: r,
            local_candidates: local,
            ..AgentReport::default()
        }
    }

    #[test]
    fn session_pair_goes_by_address_not_by_label() {
        // open x open: A learned B's host address from a check (prflx), and
        // B's srflx is its own address: both are host
        let a = agent(
            vec![
                cand("host", "192.0.2.1:1000"),
                cand("srflx", "192.0.2.1:1001"),
            ],
            Some((
                cand("host", "192.0.2.1:1000"),
                cand("prflx", "192.0.2.2:2001"),
            )),
        );
        let b = agent(
            vec![
                cand("host", "192.0.2.2:2000"),
                cand("srflx", "192.0.2.2:2001"),
            ],
            Some((
                cand("srflx", "192.0.2.2:2001"),
                cand("host", "192.0.2.1:1000"),
            )),
        );
        assert_eq!(session_pair(&a, &b), Some(PairKind::Host));
        // a NATed B: its host view hides the mapping its peer sees
        let b = agent(
            vec![
                cand("host", "10.2.0.2:2000"),
                cand("srflx", "203.0.113.2:2000"),
            ],
            Some((
                cand("host", "10.2.0.2:2000"),
                cand("host", "192.0.2.1:1000"),
            )),
        );
        let a2 = agent(
            a.local_candidates.clone(),
            Some((
                cand("host", "192.0.2.1:1000"),
                cand("prflx", "203.0.113.2:2000"),
            )),
        );
        assert_eq!(session_pair(&a2, &b), Some(PairKind::Srflx));
        // a mapping B never announced (symmetric NAT): prflx
        let a3 = agent(
            a.local_candidates.clone(),
            Some((
                cand("host", "192.0.2.1:1000"),
                cand("prflx", "203.0.113.2:40000"),
            )),
        );
        assert_eq!(session_pair(&a3, &b), Some(PairKind::Prflx));
        // a relay on either side
        let b_relay = agent(
            vec![
                cand("host", "10.2.0.2:2000"),
                cand("relay", "198.51.100.50:50000"),
            ],
            Some((
                cand("relay", "198.51.100.50:50000"),
                cand("srflx", "203.0.113.1:1000"),
            )),
        );
        assert_eq!(
            session_pair(&agent(vec![], None), &b_relay),
            Some(PairKind::Relay)
        );
        assert_eq!(
            session_pair(&agent(vec![], None), &agent(vec![], None)),
            None
        );
    }

    #[test]
    fn reader_takes_complete_lines_only() {
        let dir = std::env::temp_dir().join(format!("natter-ice-signal-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = signal_file(&dir, Role::Controlled);
        let mut r = SignalReader {
            path: path.clone(),
            consumed: 0,
        };
        assert!(r.new_lines().is_empty(), "no file yet");
        fs::write(&path, "ufrag abc\npwd de").unwrap();
        assert_eq!(r.new_lines(), vec!["ufrag abc".to_owned()]);
        fs::write(&path, "ufrag abc\npwd def\ncandidate x\n").unwrap();
        assert_eq!(
            r.new_lines(),
            vec!["pwd def".to_owned(), "candidate x".to_owned()]
        );
        assert!(r.new_lines().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
