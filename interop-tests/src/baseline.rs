//! The ICE baseline (issue 20): a standard ICE agent ([`crate::ice`],
//! `webrtc-ice`) in the same lab, cell by cell next to Natter
//! (`natter-interop-tests matrix --baseline ice`).
//!
//! The run is the Natter matrix ([`scenario::run_matrix`], unchanged) and
//! then a second pass over the same cells in a lab of its own with the same
//! topology and router recipes: login server and two supernodes (supernode
//! 1's UDP reflector, QUIC port + 1, is the agents' STUN server), plus a
//! TURN server (coturn's `turnserver`, UDP, a static long-term-credential
//! user) on the server subnet at [`TURN_IP`]. Per trial, fresh routers of
//! the cell's two NAT types (the run's impairment profile on both links),
//! the controlled agent behind B, the controlling one behind A, the
//! rendezvous files in the trial's directory; the session's pair is the
//! least direct candidate of the two agents' selected pairs, each candidate
//! judged by its address against what its owner gathered
//! ([`ice::session_pair`]), not by the label the other agent gave it.
//!
//! **What the baseline should do in a cell** is derived from the same
//! expected path as Natter's ([`scenario::expected_path`], see the crate
//! docs), by [`expected_class`]: a direct cell (open x open) is a host
//! pair; a hole-punched cell a reflexive pair (srflx or prflx: which of the
//! two depends on whose check crossed the NATs first); a relayed cell
//! (port-restricted x symmetric, symmetric x symmetric) a relay pair; a
//! cell with a udp-blocked side fails, because `webrtc-ice` gathers relay
//! candidates over UDP only (TURN over TCP/TLS is not implemented in it)
//! and the firewall lets out only TCP to ports 80 and 443, where Natter
//! falls back to TLS over TCP.
//!
//! Output: `results.json` holds Natter's [`MatrixReport`] fields unchanged
//! (so `render` still reads it) and `ice_baseline`, one [`IceCell`] per
//! cell; `matrix.md` starts with the side-by-side table ([`markdown`]) and
//! then has Natter's own tables. A cell where the baseline does better than
//! Natter (connected where Natter did not, or over a more direct path) says
//! so and why ([`IceCell::better`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use natter_proto::path::PathKind;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::ice::{self, AgentReport, IceClass, PairKind, Role};
use crate::lab::{self, Client, Lab, LabConfig};
use crate::nat::{Impairment, NatType};
use crate::scenario::{self, CellResult, MatrixOptions, MatrixReport, Percentiles};

/// The TURN server's address (server subnet).
pub const TURN_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 50);
/// Its UDP port.
pub const TURN_PORT: u16 = 3478;
/// Its static user (long-term credentials).
pub const TURN_USER: &str = "natter-lab";
/// That user's password.
pub const TURN_PASSWORD: &str = "natter-lab-turn-1";
/// Its realm.
pub const TURN_REALM: &str = "lab.natter.invalid";
/// A supernode's UDP service (STUN reflector, relay): its QUIC port + 1
/// (docs/ARCHITECTURE.md); the lab's supernodes listen on 443.
const SN_STUN_PORT: u16 = 443 + 1;

/// The agents' STUN server: supernode 1's reflector.
pub fn stun_url() -> String {
    format!("stun:{}:{SN_STUN_PORT}", lab::SN1[0])
}

/// The agents' TURN server.
pub fn turn_server() -> ice::TurnServer {
    ice::TurnServer {
        url: format!("turn:{TURN_IP}:{TURN_PORT}?transport=udp"),
        user: TURN_USER.to_owned(),
        password: TURN_PASSWORD.to_owned(),
    }
}

/// What the baseline should end on between a controlling agent behind `a`
/// and a controlled one behind `b`, from Natter's expected path of the cell
/// (see the module docs).
pub fn expected_class(a: NatType, b: NatType) -> IceClass {
    match PathKind::from_name(scenario::expected_path(a, b)) {
        Some(PathKind::Direct) => IceClass::Host,
        Some(PathKind::HolePunched) => IceClass::Reflexive,
        Some(PathKind::Relayed) => IceClass::Relay,
        Some(PathKind::TcpRelay) | None => IceClass::Failed,
    }
}

/// How direct an ICE outcome is on Natter's scale ([`scenario::path_rank`]:
/// direct 0, hole-punched 1, relayed 2, tcp-relay 3, nothing 4).
pub fn class_rank(c: IceClass) -> u8 {
    match c {
        IceClass::Host => 0,
        IceClass::Reflexive => 1,
        IceClass::Relay => 2,
        IceClass::Failed => 4,
    }
}

/// How long an agent may take to select a pair.
#[derive(Debug, Clone, Copy)]
pub struct IceOptions {
    /// From the agent's start.
    pub timeout: Duration,
    /// How long an agent stays up after connecting.
    pub linger: Duration,
}

impl Default for IceOptions {
    /// 15 s: every UDP cell connects within about 3 s in the clean lab (a
    /// relay pair is nominated after `webrtc-ice`'s 2 s relay wait); the
    /// rest only bounds a cell that cannot connect.
    fn default() -> Self {
        IceOptions {
            timeout: Duration::from_secs(15),
            linger: Duration::from_millis(1500),
        }
    }
}

/// One ICE session in a cell.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IceTrial {
    /// Trial number in its cell (1-based).
    pub trial: u32,
    /// Both agents selected a pair.
    pub connected: bool,
    /// The session's pair: the less direct of the two agents' views.
    pub pair: Option<PairKind>,
    /// The class of that pair (`failed` when not connected).
    pub class: Option<IceClass>,
    /// The controlling agent's (A's) time from its start to its selected pair (ms).
    pub connected_ms: Option<f64>,
    /// A's time from the start of its checks to its selected pair (ms).
    pub checks_ms: Option<f64>,
    /// As expected ([`expected_class`]).
    pub passed: bool,
    /// The controlling agent's report.
    pub a: Option<AgentReport>,
    /// The controlled agent's report.
    pub b: Option<AgentReport>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// Where this trial's files are.
    pub dir: String,
    /// Wall time of the trial (s).
    pub secs: f64,
}

/// One cell of the baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IceCell {
    /// The controlling agent's NAT.
    pub a: NatType,
    /// The controlled agent's NAT.
    pub b: NatType,
    /// What the cell should end on ([`expected_class`]).
    pub expected: IceClass,
    /// Sessions run.
    pub trials: u32,
    /// Sessions where both agents selected a pair.
    pub connected: u32,
    /// Sessions as expected.
    pub passed: u32,
    /// The session's pair -> sessions (connected sessions only).
    pub pairs: BTreeMap<String, u32>,
    /// A's time to its selected pair over connected sessions (ms).
    pub connected_ms: Percentiles,
    /// Where the baseline does better than Natter in this cell, and why
    /// (filled when the cell is compared, [`compare`]).
    #[serde(default)]
    pub better: Option<String>,
    /// Every session.
    pub trial_results: Vec<IceTrial>,
}

impl IceCell {
    fn new(a: NatType, b: NatType) -> Self {
        IceCell {
            a,
            b,
            expected: expected_class(a, b),
            trials: 0,
            connected: 0,
            passed: 0,
            pairs: BTreeMap::new(),
            connected_ms: Percentiles::default(),
            better: None,
            trial_results: Vec::new(),
        }
    }

    fn push(&mut self, t: IceTrial) {
        self.trials += 1;
        self.passed += u32::from(t.passed);
        if t.connected {
            self.connected += 1;
            let p = t.pair.map_or("unknown", PairKind::name).to_owned();
            *self.pairs.entry(p).or_default() += 1;
        }
        self.trial_results.push(t);
        let ms: Vec<f64> = self
            .trial_results
            .iter()
            .filter(|t| t.connected)
            .filter_map(|t| t.connected_ms)
            .collect();
        self.connected_ms = Percentiles::of(&ms);
    }

    /// The least direct class over the sessions (`failed` if one failed):
    /// what the cell guarantees.
    pub fn worst_class(&self) -> IceClass {
        self.trial_results
            .iter()
            .map(|t| t.class.unwrap_or(IceClass::Failed))
            .max()
            .unwrap_or(IceClass::Failed)
    }
}

/// Where the baseline does better than Natter in a cell, and why; `None`
/// where it does not. Better = every ICE session connected while a Natter
/// trial did not; or ICE's least direct pair is more direct than Natter's
/// least direct final path; or ICE's median time to its pair is below
/// Natter's median time to first audio (different measures, see the
/// reason given and the table's notes).
pub fn compare(natter: &CellResult, ice: &IceCell) -> Option<String> {
    if ice.trials == 0 || natter.trials == 0 {
        return None;
    }
    let ice_class = ice.worst_class();
    if ice.connected == ice.trials && natter.connected < natter.trials {
        return Some(format!(
            "ICE connected in {}/{} sessions ({}), Natter in {}/{} trials: see the trials' errors for why Natter failed",
            ice.connected, ice.trials, ice_class, natter.connected, natter.trials
        ));
    }
    let natter_worst = natter
        .trial_results
        .iter()
        .filter(|t| t.connected)
        .map(|t| t.path_end.clone().unwrap_or_default())
        .max_by_key(|p| scenario::path_rank(p))?;
    if class_rank(ice_class) < scenario::path_rank(&natter_worst) {
        let why = match (ice_class, PathKind::from_name(&natter_worst)) {
            (IceClass::Reflexive, Some(PathKind::Relayed)) => {
                "ICE checks every local candidate against every remote one and learns peer-reflexive addresses from the checks it receives, so a mapping Natter's punching did not try became a pair"
            }
            (IceClass::Host, _) => {
                "both agents could reach each other's host address; Natter's path rule called the path hole-punched or worse"
            }
            _ => "the two sides' NATs let ICE's checks through on a path Natter did not use",
        };
        return Some(format!(
            "ICE ended on {ice_class} ({}) where Natter ended on {natter_worst}: {why}",
            ice.pairs.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if let (Some(t_ice), Some(t_natter)) = (ice.connected_ms.p50, natter.first_audio_ms.p50)
        && ice.connected == ice.trials
        && t_ice < t_natter
    {
        return Some(format!(
            "sooner: ICE had its pair {t_ice:.0} ms after the agents started, Natter's first audio came {t_natter:.0} ms after the invite reached B. \
             Why: the agents start with the peer's credentials and candidates at hand (the rendezvous files are not measured; Natter's figure includes the answer's \
             trip through the supernodes, the key agreement and the jitter buffer's first frame), and webrtc-ice nominates at once a pair whose remote is a \
             signalled host candidate (no wait for host pairs; 1 s for prflx, 2 s for relay pairs), which is what the controlling agent sees when its peer is \
             open. Not faster media: a voice frame needs the call set up first"
        ));
    }
    None
}

/// Fills every cell's [`IceCell::better`] from the two results (after a
/// run, or when `render` redraws an older results.json).
pub fn compare_all(r: &mut BaselineReport) {
    for (n, c) in r.natter.cells.iter().zip(r.ice_baseline.iter_mut()) {
        c.better = compare(n, c);
    }
}

/// `matrix.md` of a run with the baseline: the side-by-side table, then
/// Natter's own tables.
pub fn full_markdown(r: &BaselineReport) -> String {
    format!("{}\n{}", markdown(r), scenario::matrix_markdown(&r.natter))
}

/// What `results.json` holds for a run with the baseline: Natter's report
/// (its fields at the top level, as without the baseline) and the
/// baseline's cells.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineReport {
    /// Natter's matrix.
    #[serde(flatten)]
    pub natter: MatrixReport,
    /// The ICE baseline, one entry per cell of `natter.cells`, same order.
    pub ice_baseline: Vec<IceCell>,
}

/// Starts coturn's `turnserver` on [`TURN_IP`] (its own server namespace):
/// UDP only, long-term credentials with the static [`TURN_USER`]; its
/// database and pid file in `work`. Waits until it listens.
pub fn start_turn(lab: &mut Lab, work: &Path) -> Result<()> {
    lab::check_prereqs(&["turnserver", "ss"])?;
    let ns = lab.add_server("turn", &[TURN_IP])?;
    scenario::io("create turn dir", fs::create_dir_all(work))?;
    let ip = TURN_IP.to_string();
    let port = TURN_PORT.to_string();
    let user = format!("{TURN_USER}:{TURN_PASSWORD}");
    let db = work.join("turndb").display().to_string();
    let pid = work.join("turnserver.pid").display().to_string();
    let id = lab.spawn(
        &ns,
        "turnserver",
        "turnserver",
        &[
            "-n", // no configuration file: everything is here
            "--listening-ip",
            &ip,
            "--relay-ip",
            &ip,
            "--listening-port",
            &port,
            "--min-port",
            "49152",
            "--max-port",
            "65535",
            "--lt-cred-mech",
            "--user",
            &user,
            "--realm",
            TURN_REALM,
            "--fingerprint",
            "--no-tls",
            "--no-dtls",
            "--no-tcp",
            "--no-cli",
            "--db",
            &db,
            "--pidfile",
            &pid,
            "--log-file",
            "stdout",
            "--simple-log",
        ],
        &[],
    )?;
    let addr = format!("{ip}:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab.exec(&ns, "ss", &["-Hlun"], &[], Duration::from_secs(5))?;
        if out
            .stdout
            .lines()
            .any(|l| l.split_whitespace().nth(3) == Some(addr.as_str()))
        {
            return Ok(());
        }
        if let Some(st) = lab.try_wait(id) {
            return Err(LabError::Other(format!(
                "turnserver exited ({st}); log:\n{}",
                lab.log_of(id)
            )));
        }
        if Instant::now() > deadline {
            return Err(LabError::Other(format!(
                "turnserver does not listen on UDP {addr} after 10 s; log:\n{}",
                lab.log_of(id)
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs one ICE session of cell `a` x `b` in `lab` (whose servers and TURN
/// server run): fresh routers, both agents, their reports. Fails only when
/// the lab itself breaks; the session's failures are in the result.
#[allow(clippy::too_many_arguments)]
pub fn run_trial(
    lab: &mut Lab,
    probe_exe: &Path,
    imp: &Impairment,
    ice: &IceOptions,
    out: &Path,
    a: NatType,
    b: NatType,
    trial: u32,
) -> Result<IceTrial> {
    let t0 = Instant::now();
    let dir = out.join("work").join(format!("ice_{a}_x_{b}_{trial}"));
    // a fresh rendezvous: old signal files would be read as the peer's
    if dir.exists() {
        scenario::io("clear trial dir", fs::remove_dir_all(&dir))?;
    }
    scenario::io("create trial dir", fs::create_dir_all(&dir))?;
    let ca = lab.add_client(1, a)?;
    let cb = match lab.add_client(2, b) {
        Ok(c) => c,
        Err(e) => {
            let _ = lab.remove_client(&ca);
            return Err(e);
        }
    };
    let mut res = IceTrial {
        trial,
        dir: dir.display().to_string(),
        ..IceTrial::default()
    };
    if let Err(e) = session(lab, probe_exe, imp, ice, &ca, &cb, &dir, &mut res) {
        res.error = Some(scenario::fmt_err(&e));
    }
    let class = if res.connected {
        res.pair.map_or(IceClass::Failed, PairKind::class)
    } else {
        IceClass::Failed
    };
    res.class = Some(class);
    res.passed = class == expected_class(a, b);
    let r1 = lab.remove_client(&ca);
    let r2 = lab.remove_client(&cb);
    r1?;
    r2?;
    res.secs = t0.elapsed().as_secs_f64();
    Ok(res)
}

#[allow(clippy::too_many_arguments)]
fn session(
    lab: &mut Lab,
    probe_exe: &Path,
    imp: &Impairment,
    ice: &IceOptions,
    ca: &Client,
    cb: &Client,
    dir: &Path,
    res: &mut IceTrial,
) -> Result<()> {
    lab.set_impairment(ca, imp)?;
    lab.set_impairment(cb, imp)?;
    let dir_s = dir.display().to_string();
    let stun = stun_url();
    let turn = turn_server();
    let timeout_ms = ice.timeout.as_millis().to_string();
    let linger_ms = ice.linger.as_millis().to_string();
    let report = |side: &str| dir.join(format!("{side}-ice.json"));
    let mut ids = Vec::new();
    // the controlled side first, as a callee waits for its caller
    for (side, c, role) in [("b", cb, Role::Controlled), ("a", ca, Role::Controlling)] {
        let rep = report(side).display().to_string();
        let id = lab.spawn(
            &c.host_ns,
            &format!(
                "ice-{}-{side}",
                dir.file_name().and_then(|n| n.to_str()).unwrap_or("trial")
            ),
            probe_exe,
            &[
                "ice-agent",
                "--role",
                role.name(),
                "--dir",
                &dir_s,
                "--stun",
                &stun,
                "--turn",
                &turn.url,
                "--turn-user",
                &turn.user,
                "--turn-password",
                &turn.password,
                "--timeout-ms",
                &timeout_ms,
                "--linger-ms",
                &linger_ms,
                "--report",
                &rep,
            ],
            &[],
        )?;
        ids.push((side, id));
    }
    let mut problems = Vec::new();
    for (side, id) in ids {
        match lab.wait(id, ice.timeout + ice.linger + Duration::from_secs(10)) {
            Ok(st) if st.success() => {}
            Ok(st) => problems.push(format!(
                "agent {side} exited {st}: {}",
                lab.log_of(id).trim()
            )),
            Err(e) => problems.push(scenario::fmt_err(&e)),
        }
    }
    let (ra, rb) = (
        ice::read_report(&report("a")),
        ice::read_report(&report("b")),
    );
    for (side, r) in [("a", &ra), ("b", &rb)] {
        match r {
            None => problems.push(format!("no report from agent {side}")),
            Some(r) => {
                if let Some(e) = &r.error {
                    problems.push(format!("agent {side}: {e}"));
                }
            }
        }
    }
    res.connected =
        ra.as_ref().is_some_and(|r| r.connected) && rb.as_ref().is_some_and(|r| r.connected);
    res.pair = match (&ra, &rb) {
        (Some(a), Some(b)) => ice::session_pair(a, b),
        _ => None,
    };
    res.connected_ms = ra.as_ref().and_then(|r| r.connected_ms);
    res.checks_ms = ra.as_ref().and_then(|r| r.checks_ms);
    res.a = ra;
    res.b = rb;
    if !problems.is_empty() {
        res.error = Some(problems.join("; "));
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.0}"))
}

fn trial_pairs(c: &IceCell) -> String {
    let views: Vec<String> = c
        .trial_results
        .iter()
        .filter(|t| t.connected)
        .map(|t| {
            let view = |r: &Option<AgentReport>| {
                r.as_ref()
                    .and_then(|r| {
                        Some(format!(
                            "{}/{}",
                            r.local.as_ref()?.kind,
                            r.remote.as_ref()?.kind
                        ))
                    })
                    .unwrap_or_else(|| "-".into())
            };
            format!("{}, {}", view(&t.a), view(&t.b))
        })
        .collect();
    if views.is_empty() {
        "-".into()
    } else {
        views.join("; ")
    }
}

/// The side-by-side table (the head of `matrix.md` for a run with the baseline).
pub fn markdown(r: &BaselineReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# NAT matrix with the ICE baseline (profile `{}`)\n",
        r.natter.profile
    );
    let ice_trials: u32 = r.ice_baseline.iter().map(|c| c.trials).sum();
    let ice_conn: u32 = r.ice_baseline.iter().map(|c| c.connected).sum();
    let ice_pass: u32 = r.ice_baseline.iter().map(|c| c.passed).sum();
    let nat_trials: u32 = r.natter.cells.iter().map(|c| c.trials).sum();
    let nat_conn: u32 = r.natter.cells.iter().map(|c| c.connected).sum();
    let nat_pass: u32 = r.natter.cells.iter().map(CellResult::passed).sum();
    let better: Vec<&IceCell> = r
        .ice_baseline
        .iter()
        .filter(|c| c.better.is_some())
        .collect();
    let _ = writeln!(
        s,
        "Natter: {nat_conn}/{nat_trials} trials connected, {nat_pass} over the expected path. \
         ICE baseline (webrtc-ice {WEBRTC_ICE_VERSION}, STUN: supernode 1's reflector, TURN: coturn over UDP): \
         {ice_conn}/{ice_trials} sessions connected, {ice_pass} as expected. \
         Cells where the baseline does better than Natter: {}.\n",
        if better.is_empty() {
            "none".to_owned()
        } else {
            better
                .iter()
                .map(|c| format!("{} x {}", c.a, c.b))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        s,
        "| A | B | Natter path | Natter first audio p50 ms | ICE expected | ICE connected | ICE pair | ICE pair views (A, B: local/remote) | ICE time to pair p50 ms | ICE checks ms | baseline better? |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (n, c) in r.natter.cells.iter().zip(&r.ice_baseline) {
        let paths = if n.final_path.is_empty() {
            "-".to_owned()
        } else {
            n.final_path
                .iter()
                .map(|(p, k)| format!("{p}×{k}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let pairs = if c.pairs.is_empty() {
            "-".to_owned()
        } else {
            c.pairs
                .iter()
                .map(|(p, k)| format!("{p}×{k}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let checks: Vec<String> = c
            .trial_results
            .iter()
            .filter_map(|t| t.checks_ms)
            .map(|v| format!("{v:.0}"))
            .collect();
        let mark = if c.passed == c.trials { "" } else { " !" };
        let _ = writeln!(
            s,
            "| {} | {} | {}/{} {paths} | {} | {} | {}/{}{mark} | {pairs} | {} | {} | {} | {} |",
            c.a,
            c.b,
            n.connected,
            n.trials,
            opt(n.first_audio_ms.p50),
            c.expected,
            c.connected,
            c.trials,
            trial_pairs(c),
            opt(c.connected_ms.p50),
            if checks.is_empty() {
                "-".into()
            } else {
                checks.join(", ")
            },
            c.better.as_deref().unwrap_or("no")
        );
    }
    let _ = writeln!(
        s,
        "\n`!`: not as expected. ICE expected: from the cell's expected Natter path (direct: host pair, \
         hole-punched: a srflx or prflx pair, relayed: relay pair, tcp-relay: failed, since webrtc-ice \
         has no TURN over TCP/TLS and the udp-blocked firewall lets out only TCP to 80/443). ICE pair: \
         the least direct candidate of the two agents' selected pairs (host < srflx < prflx < relay), each \
         judged by its address against what its owner gathered (a srflx on the host's own address is host; \
         an address no candidate announced is prflx); the views are the agents' own labels, local/remote. \
         ICE time to pair: the controlling agent's start (both agents start together, candidates trickled \
         through the rendezvous files) to its selected pair, including webrtc-ice's nomination waits \
         (srflx 0.5 s, prflx 1 s, relay 2 s after checking starts); ICE checks: from the start of the \
         checks (the peer's credentials and its `gathered` line read) to the selected pair. Natter first audio: at B, from the invite reaching B to B's \
         first played frame (media starts over the relay or overlay at once and moves to a direct path \
         when one is confirmed), so the two times answer different questions: when can the call be \
         heard, and when has ICE settled on its one pair.\n"
    );
    let errs: Vec<String> = r
        .ice_baseline
        .iter()
        .flat_map(|c| {
            c.trial_results.iter().filter_map(move |t| {
                t.error.as_ref().map(|e| {
                    let e = e.replace('\n', " ");
                    let e: String = e.chars().take(400).collect();
                    format!("- {} x {} #{}: {e}", c.a, c.b, t.trial)
                })
            })
        })
        .collect();
    if !errs.is_empty() {
        let _ = writeln!(
            s,
            "## ICE sessions that did not connect, or reported errors\n"
        );
        for e in errs {
            let _ = writeln!(s, "{e}");
        }
        s.push('\n');
    }
    s
}

/// The `webrtc-ice` version the agent is built with (for the results).
pub const WEBRTC_ICE_VERSION: &str = "0.17";

fn write_outputs(out: &Path, r: &BaselineReport, progress: &str) -> Result<()> {
    let json = serde_json::to_string_pretty(r)
        .map_err(|e| LabError::Other(format!("serialize results: {e}")))?;
    scenario::io(
        "write results.json",
        fs::write(out.join("results.json"), json),
    )?;
    scenario::io(
        "write matrix.md",
        fs::write(out.join("matrix.md"), full_markdown(r)),
    )?;
    scenario::io(
        "write progress.md",
        fs::write(out.join("progress.md"), progress),
    )?;
    Ok(())
}

/// `matrix --baseline ice`: Natter's matrix ([`scenario::run_matrix`]),
/// then the baseline over the same cells; writes the combined
/// `results.json` and `matrix.md` into `opts.out` (updated after every ICE
/// session).
pub fn run(opts: &MatrixOptions, ice: &IceOptions) -> Result<BaselineReport> {
    // fail before the Natter pass when the baseline cannot run
    lab::check_prereqs(&["turnserver", "ss"])?;
    let imp = Impairment::profile(&opts.profile).map_err(LabError::Other)?;
    let natter = scenario::run_matrix(opts)?;
    let mut cfg = LabConfig::new(&opts.probe_exe);
    cfg.work_dir = opts.out.join("work").join("ice-logs");
    cfg.map_timeout_s = opts.map_timeout_s;
    // the Natter pass self-checked every router recipe this pass builds
    cfg.reflectors = false;
    let mut lab = Lab::new(cfg)?;
    let work: PathBuf = opts.out.join("work").join("ice-servers");
    let _servers = scenario::start_servers(&mut lab, &opts.bins, &work, None)?;
    start_turn(&mut lab, &work.join("turn"))?;
    let mut report = BaselineReport {
        natter,
        ice_baseline: Vec::new(),
    };
    let started = Instant::now();
    let total = report.natter.cells.len();
    for i in 0..total {
        let (a, b, ok) = {
            let c = &report.natter.cells[i];
            (c.a, c.b, c.self_check)
        };
        let mut cell = IceCell::new(a, b);
        if ok {
            for trial in 1..=opts.trials {
                let t = run_trial(&mut lab, &opts.probe_exe, &imp, ice, &opts.out, a, b, trial)?;
                eprintln!(
                    "[ice {}/{total} trial {trial}/{}] {a} x {b}: {} pair={} (A {}, B {}) expected={} time_to_pair={}ms checks={}ms ({:.1}s){}",
                    i + 1,
                    opts.trials,
                    if t.connected {
                        "connected"
                    } else {
                        "NOT connected"
                    },
                    t.pair.map_or("-", PairKind::name),
                    t.a.as_ref()
                        .and_then(|r| r.pair_kind())
                        .map_or("-", PairKind::name),
                    t.b.as_ref()
                        .and_then(|r| r.pair_kind())
                        .map_or("-", PairKind::name),
                    cell.expected,
                    opt(t.connected_ms),
                    opt(t.checks_ms),
                    t.secs,
                    t.error
                        .as_ref()
                        .map(|e| format!(
                            "\n    {}",
                            e.chars().take(300).collect::<String>().replace('\n', " ")
                        ))
                        .unwrap_or_default()
                );
                cell.push(t);
            }
        }
        cell.better = compare(&report.natter.cells[i], &cell);
        report.ice_baseline.push(cell);
        let progress = format!(
            "# progress (ICE baseline)\n\n{} of {total} cells, {:.0} s\n",
            i + 1,
            started.elapsed().as_secs_f64()
        );
        write_outputs(&opts.out, &report, &progress)?;
    }
    let progress = format!(
        "# done\n\nNatter matrix and ICE baseline, {total} cells; the baseline took {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    write_outputs(&opts.out, &report, &progress)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_follow_the_natter_expected_path() {
        use NatType::*;
        assert_eq!(expected_class(Open, Open), IceClass::Host);
        assert_eq!(expected_class(Open, Symmetric), IceClass::Reflexive);
        assert_eq!(
            expected_class(FullCone, PortRestricted),
            IceClass::Reflexive
        );
        assert_eq!(expected_class(PortRestricted, Symmetric), IceClass::Relay);
        assert_eq!(expected_class(Symmetric, Symmetric), IceClass::Relay);
        assert_eq!(expected_class(UdpBlocked, Open), IceClass::Failed);
        assert_eq!(expected_class(Open, UdpBlocked), IceClass::Failed);
        // every cell: the class ranks like Natter's expected path
        for (a, b) in scenario::all_cells() {
            let natter = scenario::path_rank(scenario::expected_path(a, b));
            let ice = class_rank(expected_class(a, b));
            assert!(ice == natter || (natter == 3 && ice == 4), "{a} x {b}");
        }
    }
}
