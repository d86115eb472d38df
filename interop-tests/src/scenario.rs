//! The scenario runner: real `natter-login`, `natter-supernode` and `natter`
//! binaries inside the lab, one call per trial, and the NAT-type matrix.
//!
//! A trial: the login server and two supernodes run on public addresses for
//! the whole run; client A sits behind a fresh router of type X, client B
//! behind a fresh router of type Y (fresh namespaces = fresh conntrack and
//! NAT state every trial). A and B register and log in, B answers, A calls B
//! sending a speech WAV for a few seconds. Each router's wan side is captured
//! with tcpdump; the captures are kept only for failed trials.
//!
//! Before any trial, a router of every NAT type the run uses is built and
//! classified by the probe ([`crate::probe`]); a type that does not behave as
//! labelled fails the run loudly (its cells are not run, `self_check` is
//! false, and the run exits with an error). Trial routers are built from
//! exactly the same recipes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{LabError, Result};
use crate::exec;
use crate::lab::{self, Client, Lab, LabConfig, ProcId};
use crate::nat::{Impairment, NatType};
use crate::probe;

/// The path a call should take between a caller behind `a` and a callee
/// behind `b` (see the crate docs for the reasoning).
pub fn expected_path(a: NatType, b: NatType) -> &'static str {
    use NatType::*;
    match (a, b) {
        (UdpBlocked, _) | (_, UdpBlocked) => "tcp-relay",
        (Open, Open) => "direct",
        (PortRestricted, Symmetric) | (Symmetric, PortRestricted) | (Symmetric, Symmetric) => {
            "relayed"
        }
        _ => "hole-punched",
    }
}

/// Parses `A:B,A:B,...` (NAT type names or short forms).
pub fn parse_cells(s: &str) -> std::result::Result<Vec<(NatType, NatType)>, String> {
    s.split(',')
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            let (a, b) = c
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("cell `{c}` is not A:B"))?;
            Ok((a.parse()?, b.parse()?))
        })
        .collect()
}

/// Every cell of the 6x6 matrix, caller-major.
pub fn all_cells() -> Vec<(NatType, NatType)> {
    NatType::ALL
        .iter()
        .flat_map(|a| NatType::ALL.iter().map(move |b| (*a, *b)))
        .collect()
}

/// The Natter binaries a run uses.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `natter-login`.
    pub login: PathBuf,
    /// `natter-supernode`.
    pub supernode: PathBuf,
    /// `natter` (the client).
    pub client: PathBuf,
}

impl Binaries {
    /// The binaries in `dir` (e.g. target/release); fails naming the missing
    /// ones and how to build them.
    pub fn in_dir(dir: &Path) -> Result<Binaries> {
        let b = Binaries {
            login: dir.join("natter-login"),
            supernode: dir.join("natter-supernode"),
            client: dir.join("natter"),
        };
        let missing: Vec<String> = [&b.login, &b.supernode, &b.client]
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if missing.is_empty() {
            Ok(b)
        } else {
            Err(LabError::Missing(format!(
                "Natter binaries not found: {} (build them with `cargo build --release -p natter-login -p natter-supernode -p natter-client`, or point --bin-dir at them)",
                missing.join(", ")
            )))
        }
    }
}

/// How to run a matrix.
#[derive(Debug, Clone)]
pub struct MatrixOptions {
    /// Output directory (results.json, matrix.md, progress.md, pcaps/, work/).
    pub out: PathBuf,
    /// Trials per cell.
    pub trials: u32,
    /// Impairment profile name (`clean`, `loss2`).
    pub profile: String,
    /// Cells to run (caller, callee).
    pub cells: Vec<(NatType, NatType)>,
    /// The Natter binaries.
    pub bins: Binaries,
    /// The `natter-interop-tests` binary (probe subcommands).
    pub probe_exe: PathBuf,
    /// Seconds of speech A sends.
    pub call_secs: u32,
    /// Both clients bootstrap from supernode 1 (default: A from 1, B from 2).
    pub same_supernode: bool,
    /// Router map timeouts, seconds.
    pub map_timeout_s: u32,
    /// After this many seconds of the call, router A drops every UDP packet
    /// to or from B's addresses (the direct path dies; the relay, on the
    /// server subnet, still works).
    pub break_direct_after_s: Option<u32>,
}

/// Percentiles of a sample (nearest rank); `None` when empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
}

impl Percentiles {
    /// Of `values`.
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            Some(v[i])
        };
        Percentiles {
            p50: rank(0.5),
            p95: rank(0.95),
        }
    }
}

/// The minimum of a score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MinScore {
    /// Lowest value (None if there was none).
    pub min: Option<f64>,
}

/// One call trial.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrialResult {
    /// Trial number in its cell (1-based).
    pub trial: u32,
    /// A call was set up and B received media.
    pub connected: bool,
    /// Path at the start of the call (stats `path_start`/`initial_path`, else `path`).
    pub path_start: Option<String>,
    /// Path at the end (stats `path_end`/`final_path`, else `path`).
    pub path_end: Option<String>,
    /// A's path switches in order (stats `switches`).
    #[serde(default)]
    pub switches: Vec<String>,
    /// Time to first audio at B (ms).
    pub first_audio_ms: Option<f64>,
    /// Packets lost (B's view).
    pub packets_lost: Option<f64>,
    /// Media packets B received.
    pub media_packets_received: Option<f64>,
    /// Jitter at B (ms).
    pub jitter_ms: Option<f64>,
    /// Envelope correlation of what B heard with the speech sent.
    pub audio_match: Option<f64>,
    /// Waveform correlation.
    pub audio_waveform: Option<f64>,
    /// Delay of B's audio (ms).
    pub audio_lag_ms: Option<f64>,
    /// As expected: connected over the expected path.
    pub passed: bool,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// Kept captures (failed trials only).
    pub pcaps: Vec<String>,
    /// Where this trial's files are.
    pub dir: String,
    /// Wall time of the trial (s).
    pub secs: f64,
}

/// One matrix cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    /// Caller's NAT.
    pub a: NatType,
    /// Callee's NAT.
    pub b: NatType,
    /// Expected path (direct, hole-punched, relayed, tcp-relay).
    pub expected: String,
    /// Trials run.
    pub trials: u32,
    /// Trials that connected.
    pub connected: u32,
    /// Final path -> trials (connected trials only).
    pub final_path: BTreeMap<String, u32>,
    /// Time to first audio over connected trials.
    pub first_audio_ms: Percentiles,
    /// Lowest audio match (envelope correlation) over connected trials.
    pub audio_match: MinScore,
    /// Both routers' NAT types passed the self-check.
    pub self_check: bool,
    /// Every trial.
    pub trial_results: Vec<TrialResult>,
}

impl CellResult {
    fn new(a: NatType, b: NatType, self_check: bool) -> Self {
        CellResult {
            a,
            b,
            expected: expected_path(a, b).to_owned(),
            trials: 0,
            connected: 0,
            final_path: BTreeMap::new(),
            first_audio_ms: Percentiles::default(),
            audio_match: MinScore::default(),
            self_check,
            trial_results: Vec::new(),
        }
    }

    fn push(&mut self, t: TrialResult) {
        self.trials += 1;
        if t.connected {
            self.connected += 1;
            let p = t.path_end.clone().unwrap_or_else(|| "unknown".into());
            *self.final_path.entry(p).or_default() += 1;
        }
        self.trial_results.push(t);
        let ok: Vec<&TrialResult> = self.trial_results.iter().filter(|t| t.connected).collect();
        let fa: Vec<f64> = ok.iter().filter_map(|t| t.first_audio_ms).collect();
        self.first_audio_ms = Percentiles::of(&fa);
        self.audio_match.min = ok
            .iter()
            .map(|t| t.audio_match.unwrap_or(0.0))
            .min_by(f64::total_cmp);
    }

    /// Trials that connected over the expected path.
    pub fn passed(&self) -> u32 {
        self.trial_results.iter().filter(|t| t.passed).count() as u32
    }
}

/// What `results.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatrixReport {
    /// Impairment profile.
    pub profile: String,
    /// The self-check verdict table.
    pub self_check_table: String,
    /// Every cell.
    pub cells: Vec<CellResult>,
}

const PASSWORD: &str = "natter-lab-password-1";
const SPEECH: &str = "Hello, this is the Natter network lab. One, two, three, four, five. The quick brown fox jumps.";

/// The running servers of a run.
#[derive(Debug)]
struct Servers {
    login_key: PathBuf,
    login_addr: String,
    sn: [String; 2],
}

fn fmt_err(e: &LabError) -> String {
    let s = e.to_string();
    if s.chars().count() > 2000 {
        format!("{}...", s.chars().take(2000).collect::<String>())
    } else {
        s
    }
}

fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| LabError::io(what, e))
}

/// Makes the speech WAV with espeak-ng (about five seconds).
pub fn make_speech(path: &Path) -> Result<()> {
    let mut c = std::process::Command::new("espeak-ng");
    c.args(["-s", "230", "-w"]).arg(path).arg(SPEECH);
    exec::run(c, None, Duration::from_secs(60))?;
    Ok(())
}

fn start_servers(lab: &mut Lab, bins: &Binaries, work: &Path) -> Result<Servers> {
    let lg = lab.add_server("lg", &[lab::LOGIN])?;
    let n1 = lab.add_server("n1", &lab::SN1)?;
    let n2 = lab.add_server("n2", &lab::SN2)?;
    let login_addr = format!("{}:443", lab::LOGIN);
    let login_dir = work.join("login-data");
    io("create login dir", fs::create_dir_all(&login_dir))?;
    let login_dir_s = login_dir.display().to_string();
    let id = lab.spawn(
        &lg,
        "login",
        &bins.login,
        &[
            "serve",
            "--listen",
            &login_addr,
            "--data-dir",
            &login_dir_s,
            "--argon2-m-kib",
            "1024",
            "--argon2-t",
            "1",
        ],
        &[],
    )?;
    let login_key = login_dir.join("login-key.pub");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !login_key.is_file() {
        if let Some(st) = lab.try_wait(id) {
            return Err(LabError::Other(format!(
                "natter-login exited ({st}); log:\n{}",
                lab.log_of(id)
            )));
        }
        if Instant::now() > deadline {
            return Err(LabError::Other(format!(
                "natter-login did not write {} within 30 s; log:\n{}",
                login_key.display(),
                lab.log_of(id)
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let key_s = login_key.display().to_string();
    let sn = [
        format!("{}:443", lab::SN1[0]),
        format!("{}:443", lab::SN2[0]),
    ];
    let mut ids = Vec::new();
    for (i, ns) in [&n1, &n2].into_iter().enumerate() {
        let dir = work.join(format!("sn{}-data", i + 1));
        io("create supernode dir", fs::create_dir_all(&dir))?;
        let dir_s = dir.display().to_string();
        let id = lab.spawn(
            ns,
            &format!("supernode{}", i + 1),
            &bins.supernode,
            &[
                "--listen",
                &sn[i],
                "--login",
                &login_addr,
                "--login-key",
                &key_s,
                "--peer",
                &sn[1 - i],
                "--data-dir",
                &dir_s,
            ],
            &[],
        )?;
        ids.push((i + 1, id));
    }
    thread::sleep(Duration::from_millis(1500));
    for (i, id) in ids {
        if let Some(st) = lab.try_wait(id) {
            return Err(LabError::Other(format!(
                "natter-supernode {i} exited ({st}); log:\n{}",
                lab.log_of(id)
            )));
        }
    }
    Ok(Servers {
        login_key,
        login_addr,
        sn,
    })
}

fn stat_f64(v: &Value, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_f64))
}

fn stat_str(v: &Value, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(p).ok()?).ok()
}

struct TrialCtx<'a> {
    servers: &'a Servers,
    opts: &'a MatrixOptions,
    speech: &'a Path,
    speech_samples: &'a [i16],
    imp: Impairment,
}

/// Runs one trial; never fails as a whole (errors go into the result),
/// except when the lab itself breaks.
fn run_trial(
    lab: &mut Lab,
    ctx: &TrialCtx<'_>,
    a: NatType,
    b: NatType,
    trial: u32,
    serial: u32,
) -> Result<TrialResult> {
    let t0 = Instant::now();
    let dir = ctx.opts.out.join("work").join(format!("{a}_x_{b}_{trial}"));
    io("create trial dir", fs::create_dir_all(&dir))?;
    let ca = lab.add_client(1, a)?;
    let cb = match lab.add_client(2, b) {
        Ok(c) => c,
        Err(e) => {
            let _ = lab.remove_client(&ca);
            return Err(e);
        }
    };
    let mut res = TrialResult {
        trial,
        dir: dir.display().to_string(),
        ..TrialResult::default()
    };
    let outcome = trial_body(lab, ctx, &ca, &cb, &dir, serial, &mut res);
    if let Err(e) = &outcome {
        res.error = Some(fmt_err(e));
    }
    let expected = expected_path(a, b);
    res.passed = res.connected && res.path_end.as_deref() == Some(expected);
    // captures: stop tcpdump (SIGINT flushes), keep only for failed trials
    if let Ok(caps) = &outcome {
        for (id, _) in caps {
            lab.stop(*id, "INT", Duration::from_secs(3));
        }
    }
    let pcap_dir = ctx.opts.out.join("pcaps");
    for side in ["a", "b"] {
        let p = dir.join(format!("{side}-wan.pcap"));
        if !p.exists() {
            continue;
        }
        if res.passed {
            let _ = fs::remove_file(&p);
        } else {
            let _ = fs::create_dir_all(&pcap_dir);
            let dst = pcap_dir.join(format!("{a}_x_{b}_{trial}_{side}-wan.pcap"));
            if fs::rename(&p, &dst).is_ok() {
                res.pcaps.push(dst.display().to_string());
            }
        }
    }
    let r1 = lab.remove_client(&ca);
    let r2 = lab.remove_client(&cb);
    r1?;
    r2?;
    res.secs = t0.elapsed().as_secs_f64();
    Ok(res)
}

fn trial_body(
    lab: &mut Lab,
    ctx: &TrialCtx<'_>,
    ca: &Client,
    cb: &Client,
    dir: &Path,
    serial: u32,
    res: &mut TrialResult,
) -> Result<Vec<(ProcId, PathBuf)>> {
    let tag = format!("t{serial}");
    lab.set_impairment(ca, &ctx.imp)?;
    lab.set_impairment(cb, &ctx.imp)?;
    // captures on both wan sides
    let mut caps = Vec::new();
    for (side, c) in [("a", ca), ("b", cb)] {
        let p = dir.join(format!("{side}-wan.pcap"));
        let ps = p.display().to_string();
        let id = lab.spawn(
            &c.router_ns,
            &format!("{tag}-tcpdump-{side}"),
            "tcpdump",
            &["-i", "wan0", "-n", "-U", "-s", "256", "-w", &ps],
            &[],
        )?;
        caps.push((id, p));
    }
    for (id, _) in &caps {
        lab.wait_for_log(*id, "listening on", Duration::from_secs(10))?;
    }
    let bins = &ctx.opts.bins;
    let s = ctx.servers;
    let key = s.login_key.display().to_string();
    let env = [("NATTER_PASSWORD", PASSWORD)];
    let name_a = format!("lab{serial}a");
    let name_b = format!("lab{serial}b");
    let home_a = dir.join("home-a").display().to_string();
    let home_b = dir.join("home-b").display().to_string();
    // register + login, both sides
    for (c, home, name) in [(ca, &home_a, &name_a), (cb, &home_b, &name_b)] {
        for step in ["register", "login"] {
            let out = lab.exec_unchecked(
                &c.host_ns,
                &bins.client,
                &[
                    "--home",
                    home,
                    "--login",
                    &s.login_addr,
                    "--login-key",
                    &key,
                    step,
                    name,
                ],
                &env,
                Duration::from_secs(60),
            )?;
            let log = dir.join(format!("{name}-{step}.log"));
            let _ = fs::write(&log, format!("{}\n{}", out.stdout, out.stderr));
            if !out.status.success() {
                return Err(LabError::Other(format!(
                    "`natter {step} {name}` behind {} failed ({}): {}",
                    c.nat,
                    out.status,
                    out.stderr.trim()
                )));
            }
        }
    }
    // B answers, A calls
    let sn_b = if ctx.opts.same_supernode {
        &s.sn[0]
    } else {
        &s.sn[1]
    };
    let b_out = dir.join("b-heard.wav");
    let b_stats = dir.join("b-stats.json");
    let a_out = dir.join("a-heard.wav");
    let a_stats = dir.join("a-stats.json");
    let (b_out_s, b_stats_s) = (b_out.display().to_string(), b_stats.display().to_string());
    let (a_out_s, a_stats_s) = (a_out.display().to_string(), a_stats.display().to_string());
    let answer = lab.spawn(
        &cb.host_ns,
        &format!("{tag}-b-answer"),
        &bins.client,
        &[
            "--home",
            &home_b,
            "--login-key",
            &key,
            "--bootstrap",
            sn_b,
            "answer",
            "--audio-out",
            &b_out_s,
            "--calls",
            "1",
            "--stats-json",
            &b_stats_s,
        ],
        &env,
    )?;
    thread::sleep(Duration::from_secs(2)); // let B join its supernode
    if let Some(st) = lab.try_wait(answer) {
        return Err(LabError::Other(format!(
            "`natter answer` exited early ({st}): {}",
            lab.log_of(answer)
        )));
    }
    let speech = ctx.speech.display().to_string();
    let dur = ctx.opts.call_secs.to_string();
    let call = lab.spawn(
        &ca.host_ns,
        &format!("{tag}-a-call"),
        &bins.client,
        &[
            "--home",
            &home_a,
            "--login-key",
            &key,
            "--bootstrap",
            &s.sn[0],
            "call",
            &name_b,
            "--audio-in",
            &speech,
            "--audio-out",
            &a_out_s,
            "--duration",
            &dur,
            "--stats-json",
            &a_stats_s,
        ],
        &env,
    )?;
    if let Some(after) = ctx.opts.break_direct_after_s {
        thread::sleep(Duration::from_secs(u64::from(after)));
        let peer = format!("{{ {}, {} }}", cb.wan_ip, cb.host_ip);
        lab.nft(
            &ca.router_ns,
            &format!(
                "table ip natter_break {{\n  chain brk {{\n    type filter hook forward priority -20; policy accept;\n    \
                 ip daddr {peer} meta l4proto udp drop\n    ip saddr {peer} meta l4proto udp drop\n  }}\n}}\n"
            ),
        )?;
    }
    let call_status = lab.wait(
        call,
        Duration::from_secs(u64::from(ctx.opts.call_secs) + 45),
    );
    let answer_status = lab.wait(answer, Duration::from_secs(20));
    let sa = read_json(&a_stats);
    let sb = read_json(&b_stats);
    let path_of = |keys: &[&str]| {
        sa.as_ref()
            .and_then(|v| stat_str(v, keys))
            .or_else(|| sb.as_ref().and_then(|v| stat_str(v, keys)))
    };
    res.path_start = path_of(&["path_start", "initial_path", "path"]);
    res.path_end = path_of(&["path_end", "final_path", "path"]);
    res.switches = sa
        .as_ref()
        .and_then(|v| v.get("switches")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| Some(s.get("path")?.as_str()?.to_owned()))
        .collect();
    let from_b = |keys: &[&str]| sb.as_ref().and_then(|v| stat_f64(v, keys));
    res.first_audio_ms = from_b(&["first_audio_ms"])
        .or_else(|| sa.as_ref().and_then(|v| stat_f64(v, &["first_audio_ms"])));
    res.packets_lost = from_b(&["packets_lost"]);
    res.media_packets_received = from_b(&["media_packets_received"]);
    res.jitter_ms = from_b(&["jitter_ms"]);
    if let Ok(heard) = natter_media::wav::read_mono_48k(&b_out) {
        let sc = natter_media::score::compare(ctx.speech_samples, &heard, 3000);
        res.audio_match = Some(sc.envelope);
        res.audio_waveform = Some(sc.waveform);
        res.audio_lag_ms = Some(sc.lag_ms);
    }
    let call_ok = matches!(&call_status, Ok(s) if s.success());
    res.connected = call_ok && res.media_packets_received.unwrap_or(0.0) > 0.0;
    let mut problems = Vec::new();
    match &call_status {
        Ok(s) if s.success() => {}
        Ok(s) => problems.push(format!(
            "`natter call` exited {s}: {}",
            tail(&lab.log_of(call), 600)
        )),
        Err(e) => problems.push(fmt_err(e)),
    }
    match &answer_status {
        Ok(s) if s.success() => {}
        Ok(s) => problems.push(format!(
            "`natter answer` exited {s}: {}",
            tail(&lab.log_of(answer), 600)
        )),
        Err(e) => problems.push(fmt_err(e)),
    }
    if sb.is_none() {
        problems.push("no stats JSON from B".into());
    }
    if !problems.is_empty() {
        res.error = Some(problems.join("; "));
    }
    Ok(caps)
}

fn tail(s: &str, n: usize) -> String {
    let s = s.trim();
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// The matrix as Markdown.
pub fn matrix_markdown(r: &MatrixReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# NAT matrix (profile `{}`)\n", r.profile);
    let _ = writeln!(
        s,
        "Cell: connected/trials, final path(s); `!` = not as expected (expected path in brackets). Rows: caller A, columns: callee B.\n"
    );
    let types: Vec<NatType> = NatType::ALL
        .iter()
        .copied()
        .filter(|t| r.cells.iter().any(|c| c.a == *t || c.b == *t))
        .collect();
    let _ = write!(s, "| A \\ B |");
    for t in &types {
        let _ = write!(s, " {t} |");
    }
    let _ = write!(s, "\n|---|");
    for _ in &types {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    for a in &types {
        let _ = write!(s, "| **{a}** |");
        for b in &types {
            match r.cells.iter().find(|c| c.a == *a && c.b == *b) {
                None => s.push_str(" |"),
                Some(c) => {
                    let paths = if c.final_path.is_empty() {
                        "-".to_owned()
                    } else {
                        c.final_path
                            .iter()
                            .map(|(p, n)| format!("{p}×{n}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    let mark = if !c.self_check {
                        " SELF-CHECK FAILED"
                    } else if c.passed() == c.trials && c.trials > 0 {
                        ""
                    } else {
                        " !"
                    };
                    let _ = write!(
                        s,
                        " {}/{} {paths} [{}]{mark} |",
                        c.connected, c.trials, c.expected
                    );
                }
            }
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\n| A | B | expected | connected | final path | first audio p50/p95 ms | audio match min | self-check |\n|---|---|---|---|---|---|---|---|"
    );
    for c in &r.cells {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}/{} | {:?} | {} / {} | {} | {} |",
            c.a,
            c.b,
            c.expected,
            c.connected,
            c.trials,
            c.final_path,
            opt(c.first_audio_ms.p50, 0),
            opt(c.first_audio_ms.p95, 0),
            opt(c.audio_match.min, 2),
            if c.self_check { "ok" } else { "FAILED" }
        );
    }
    let errs: Vec<String> = r
        .cells
        .iter()
        .flat_map(|c| {
            c.trial_results.iter().filter_map(move |t| {
                t.error
                    .as_ref()
                    .map(|e| format!("- {} x {} #{}: {}", c.a, c.b, t.trial, e.replace('\n', " ")))
            })
        })
        .collect();
    if !errs.is_empty() {
        let _ = writeln!(s, "\n## Errors\n");
        for e in errs {
            let _ = writeln!(s, "{e}");
        }
    }
    let _ = writeln!(s, "\n## Self-check\n\n```\n{}```", r.self_check_table);
    s
}

fn write_outputs(out: &Path, r: &MatrixReport, progress: &str) -> Result<()> {
    let json = serde_json::to_string_pretty(r)
        .map_err(|e| LabError::Other(format!("serialize results: {e}")))?;
    io(
        "write results.json",
        fs::write(out.join("results.json"), json),
    )?;
    io(
        "write matrix.md",
        fs::write(out.join("matrix.md"), matrix_markdown(r)),
    )?;
    io(
        "write progress.md",
        fs::write(out.join("progress.md"), progress),
    )?;
    Ok(())
}

/// Runs the matrix; writes `results.json`, `matrix.md` and `progress.md`
/// (updated after every trial) into `opts.out`. Fails if the lab cannot be
/// built or a NAT type fails its self-check (after writing the results).
pub fn run_matrix(opts: &MatrixOptions) -> Result<MatrixReport> {
    lab::check_prereqs(&["tcpdump", "espeak-ng"])?;
    let imp = Impairment::profile(&opts.profile).map_err(LabError::Other)?;
    io(
        "create output dir",
        fs::create_dir_all(opts.out.join("work")),
    )?;
    let speech = opts.out.join("speech.wav");
    make_speech(&speech)?;
    let speech_samples = natter_media::wav::read_mono_48k(&speech)
        .map_err(|e| LabError::Other(format!("read speech: {e}")))?;
    eprintln!(
        "speech: {} ({:.1} s)",
        speech.display(),
        speech_samples.len() as f64 / 48_000.0
    );
    let mut cfg = LabConfig::new(&opts.probe_exe);
    cfg.work_dir = opts.out.join("work").join("logs");
    cfg.map_timeout_s = opts.map_timeout_s;
    let mut lab = Lab::new(cfg)?;

    // self-check every NAT type used, before any trial
    let types: Vec<NatType> = opts
        .cells
        .iter()
        .flat_map(|(a, b)| [*a, *b])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let verdicts = probe::selfcheck_types(&mut lab, &types, Duration::from_secs(1))?;
    let table = probe::verdict_table(&verdicts);
    eprint!("self-check:\n{table}");
    let good: BTreeSet<NatType> = verdicts
        .iter()
        .filter(|v| v.ok)
        .map(|v| v.declared)
        .collect();
    let selfcheck_result = probe::require_all_ok(&verdicts);
    if let Err(e) = &selfcheck_result {
        eprintln!("!!! {e}\n!!! cells with these NAT types are NOT run");
    }

    let servers = start_servers(&mut lab, &opts.bins, &opts.out.join("work"))?;
    let ctx = TrialCtx {
        servers: &servers,
        opts,
        speech: &speech,
        speech_samples: &speech_samples,
        imp,
    };
    let mut report = MatrixReport {
        profile: opts.profile.clone(),
        self_check_table: table,
        cells: Vec::new(),
    };
    let total_cells = opts.cells.len();
    let mut serial = 0;
    let (mut n_conn, mut n_pass, mut n_run) = (0u32, 0u32, 0u32);
    let started = Instant::now();
    for (ci, (a, b)) in opts.cells.iter().copied().enumerate() {
        let ok = good.contains(&a) && good.contains(&b);
        report.cells.push(CellResult::new(a, b, ok));
        if !ok {
            continue;
        }
        for trial in 1..=opts.trials {
            serial += 1;
            let t = run_trial(&mut lab, &ctx, a, b, trial, serial)?;
            n_run += 1;
            n_conn += u32::from(t.connected);
            n_pass += u32::from(t.passed);
            let line = format!(
                "[cell {}/{total_cells} trial {trial}/{}] {a} x {b}: {} path={} expected={} first_audio={}ms match={} loss={} jitter={}ms ({:.1}s){}",
                ci + 1,
                opts.trials,
                if t.connected {
                    "connected"
                } else {
                    "NOT connected"
                },
                t.path_end.as_deref().unwrap_or("-"),
                expected_path(a, b),
                opt(t.first_audio_ms, 0),
                opt(t.audio_match, 2),
                opt(t.packets_lost, 0),
                opt(t.jitter_ms, 1),
                t.secs,
                t.error
                    .as_ref()
                    .map(|e| format!("\n    error: {}", tail(e, 300).replace('\n', " ")))
                    .unwrap_or_default()
            );
            eprintln!("{line}");
            if let Some(c) = report.cells.last_mut() {
                c.push(t);
            }
            let progress = format!(
                "# progress\n\n{n_run} trials run ({} cells of {total_cells} started), {n_conn} connected, {n_pass} as expected, {:.0} s elapsed\n\nlast: {line}\n",
                ci + 1,
                started.elapsed().as_secs_f64()
            );
            write_outputs(&opts.out, &report, &progress)?;
        }
    }
    let progress = format!(
        "# done\n\n{n_run} trials, {n_conn} connected, {n_pass} as expected, {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    write_outputs(&opts.out, &report, &progress)?;
    eprintln!("{}", progress.replace("# done\n\n", "done: "));
    selfcheck_result?;
    Ok(report)
}
