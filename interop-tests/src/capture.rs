//! Labelled scenario captures from the NAT lab (issue 17, item 3):
//! `natter-interop-tests capture --scenario NAME --out DIR` runs one
//! scenario of the real binaries across the lab's NAT routers and writes
//!
//! * `a-lan.pcap`, `a-wan.pcap`, `b-lan.pcap`, `b-wan.pcap`: tcpdump on both
//!   sides of each client's router (lan: the host's own addresses; wan: what
//!   the internet sees, after the NAT), full packets;
//! * `keys.log`: the clients' `NATTER_KEYLOG` (call keys and TLS secrets);
//! * `labels.json`: every packet of every capture, by interface and frame
//!   number (as Wireshark counts), with its meaning ([`PacketLabel`]);
//! * `scenario.json`: what ran when (every process of both sides with its
//!   start and end), the call reports, the mid-call events;
//! * `active.json`: the active prober's answers (see [`crate::detect`]);
//! * `logs/`: every process's output.
//!
//! **Labels come from ground truth, not from a dissector**: a SoM datagram
//! is labelled by opening it with the logged call keys
//! ([`natter_decrypt::Decryptor`], the client's own opener): its function,
//! call direction and packet index, and for voice its frame number (silence
//! when the frame of audio the sender was given is silent); a QUIC or TCP
//! packet by its flow (5-tuple) and the process that opened that flow (the
//! lab starts the processes one after the other on each side and records
//! when), and within a call process by the call's own events (before the
//! call socket's first STUN request: the join; until its last media: call
//! signalling; after: the hang-up); STUN and relay binds by their fixed
//! formats (`natter_proto::stun`, `natter_proto::relay`) to a supernode's
//! UDP service; background traffic by the generators' endpoints
//! ([`crate::background`]).

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use natter_decrypt::{CallDirection, Decryptor, Transport, read_capture, segment};
use natter_proto::som::Function;
use serde::{Deserialize, Serialize};

use crate::background;
use crate::error::{LabError, Result};
use crate::lab::{self, Client, Lab, LabConfig, ProcId};
use crate::nat::NatType;
use crate::scenario::{self, Binaries, PASSWORD, fmt_err, io};

pub use crate::labels::{Iface, LABELS, Labels, OBSERVER_IP, PacketLabel, endpoints};

/// A scenario of the data set, in the order of `capture --all` (most
/// valuable first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// open x open: a direct call (login, join, STUN, relay bind, checks,
    /// voice both ways, hang-up).
    DirectCall,
    /// Login and join of two users, search, chat, presence (no call).
    Overlay,
    /// port-restricted x port-restricted: a hole-punched call.
    HolePunched,
    /// symmetric x symmetric: a call relayed by a supernode.
    Relayed,
    /// udp-blocked x open: the caller's login, join and voice over TLS/TCP 443.
    TcpFallback,
    /// open x open: speech, 3 s of silence, speech (Natter has no DTX: the
    /// silence is sent at 50 packets/s too).
    Silence,
    /// open x open: the caller's supernode is killed 3 s into a 6 s call.
    SupernodeLost,
    /// port-restricted x symmetric-seq: the callee's sequential symmetric
    /// NAT is predicted; the call is hole-punched to a predicted port.
    PortPrediction,
    /// open x open: the caller puts the call on hold 2 s into a 6 s call for
    /// 2 s (hold signal; silence at 50 packets/s on hold).
    Hold,
}

impl Scenario {
    /// Every scenario, most valuable first.
    pub const ALL: [Scenario; 9] = [
        Scenario::DirectCall,
        Scenario::Overlay,
        Scenario::HolePunched,
        Scenario::Relayed,
        Scenario::TcpFallback,
        Scenario::Silence,
        Scenario::SupernodeLost,
        Scenario::PortPrediction,
        Scenario::Hold,
    ];

    /// Behaviours the issue asks for that no scenario covers yet, and why
    /// (none left).
    pub const MISSING: [(&'static str, &'static str); 0] = [];

    /// Its name on the command line and in the data set.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::DirectCall => "direct-call",
            Scenario::Overlay => "overlay",
            Scenario::HolePunched => "hole-punched",
            Scenario::Relayed => "relayed",
            Scenario::TcpFallback => "tcp-fallback",
            Scenario::Silence => "silence",
            Scenario::SupernodeLost => "supernode-lost",
            Scenario::PortPrediction => "port-prediction",
            Scenario::Hold => "hold",
        }
    }

    /// One line on what it shows.
    pub fn description(self) -> &'static str {
        match self {
            Scenario::DirectCall => {
                "open x open: login, join, STUN, relay bind, connectivity checks, a direct 4 s call, hang-up"
            }
            Scenario::Overlay => {
                "port-restricted x port-restricted: login and join of two users, search, chat, presence (buddy online)"
            }
            Scenario::HolePunched => "port-restricted x port-restricted: a hole-punched 4 s call",
            Scenario::Relayed => "symmetric x symmetric: a 4 s call relayed by a supernode (UDP)",
            Scenario::TcpFallback => {
                "udp-blocked x open: the caller logs in, joins and talks over TLS/TCP 443 (tcp-relay)"
            }
            Scenario::Silence => {
                "open x open: 1.5 s speech, 3 s silence, 1.5 s speech (no DTX: silence at 50 packets/s)"
            }
            Scenario::SupernodeLost => {
                "open x open: the caller's supernode is killed 3 s into a 6 s call (direct media goes on)"
            }
            Scenario::PortPrediction => {
                "port-restricted x symmetric-seq: the callee's NAT allocates ports sequentially; its predicted candidates let the caller punch a hole to the port it picks (a 4 s hole-punched call)"
            }
            Scenario::Hold => {
                "open x open: the caller holds 2 s into a 6 s call for 2 s (hold signal; silence at 50 packets/s on hold), then resumes"
            }
        }
    }

    /// The caller's and the callee's NAT.
    pub fn nats(self) -> (NatType, NatType) {
        match self {
            Scenario::DirectCall | Scenario::Silence | Scenario::SupernodeLost | Scenario::Hold => {
                (NatType::Open, NatType::Open)
            }
            Scenario::PortPrediction => (NatType::PortRestricted, NatType::SymmetricSeq),
            Scenario::Overlay | Scenario::HolePunched => {
                (NatType::PortRestricted, NatType::PortRestricted)
            }
            Scenario::Relayed => (NatType::Symmetric, NatType::Symmetric),
            Scenario::TcpFallback => (NatType::UdpBlocked, NatType::Open),
        }
    }

    fn call_secs(self) -> Option<u32> {
        match self {
            Scenario::Overlay => None,
            Scenario::SupernodeLost | Scenario::Silence | Scenario::Hold => Some(6),
            _ => Some(4),
        }
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scenario `{s}`; scenarios: {}",
                    Scenario::ALL.map(Scenario::name).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How to capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The Natter binaries.
    pub bins: Binaries,
    /// The `natter-interop-tests` binary (background generators, prober).
    pub exe: PathBuf,
    /// Generate the background traffic ([`crate::background`]).
    pub background: bool,
    /// Run the active prober at the end ([`crate::detect`]).
    pub active_probe: bool,
}

/// One process a scenario ran, with when (Unix seconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcRun {
    /// `a` (caller) or `b` (callee).
    pub side: String,
    /// The client command (`register`, `login`, `answer`, `call`, `search`,
    /// `chat`, `online`).
    pub kind: String,
    /// Started (just before the process was spawned).
    pub start: f64,
    /// Ended (when the lab saw it exit or stopped it).
    pub end: f64,
}

/// `scenario.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScenarioRecord {
    pub scenario: String,
    pub description: String,
    pub caller_nat: String,
    pub callee_nat: String,
    pub processes: Vec<ProcRun>,
    /// Mid-call events (`supernode 1 killed`), with Unix time.
    pub events: Vec<(f64, String)>,
    /// The callee's and caller's call reports (`--stats-json`).
    pub call_reports: BTreeMap<String, serde_json::Value>,
    /// The call's path ([`scenario::call_path`]).
    pub path: Option<String>,
    /// Whether the scenario did what it should (call connected, or the
    /// overlay steps succeeded); the problems otherwise.
    pub ok: bool,
    pub problems: Vec<String>,
    pub background: bool,
    /// Packets each capture's kernel buffer dropped (tcpdump's own count,
    /// by interface): a capture with drops misses packets the labels cannot
    /// name. Empty when none dropped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capture_drops: BTreeMap<String, u64>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The supernodes' service addresses: QUIC / TLS on 443, UDP service
/// (reflector, relay) on 444, both addresses of each.
fn is_supernode_ip(ip: IpAddr) -> bool {
    lab::SN1
        .iter()
        .chain(lab::SN2.iter())
        .any(|a| IpAddr::V4(*a) == ip)
}

fn is_server(a: SocketAddr) -> bool {
    a.ip() == IpAddr::V4(lab::LOGIN) || is_supernode_ip(a.ip())
}

/// A call process's TCP connection opened this long (s) after its first
/// is a relay leg.
const RELAY_LEG_AFTER_S: f64 = 0.020;

/// The UDP service port of the lab's supernodes (reflector and relay).
const SN_UDP_PORT: u16 = 444;
/// The reflector's alternate port (RFC 5780 OTHER-ADDRESS): a call socket
/// behind a NAT asks it for a second mapping (does the NAT map per
/// destination, predictably?).
const SN_UDP_ALT_PORT: u16 = 445;

/// A flow seen from one interface: (transport, client-side end, server end).
type FlowKey = (Transport, SocketAddr, SocketAddr);

/// What the labeller knows about a scenario.
pub struct LabelCtx {
    procs: Vec<ProcRun>,
    directions: Vec<CallDirection>,
    /// Per direction (`c2s`, `s2c`): which voice frames carry silent audio.
    silent: BTreeMap<String, Vec<bool>>,
    /// Per direction: the frames its sender sent on hold (first, first
    /// after), from the sender's call report (`held_frames`).
    held: BTreeMap<String, Vec<[u64; 2]>>,
}

impl std::fmt::Debug for LabelCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelCtx")
            .field("procs", &self.procs.len())
            .field("directions", &self.directions.len())
            .finish_non_exhaustive()
    }
}

/// Samples of a 20 ms frame at 48 kHz.
const FRAME_SAMPLES: usize = 960;
/// A frame whose samples all stay below this is silent (-54 dBFS).
const SILENT_PEAK: i16 = 64;

/// Which 20 ms frames of `samples` are silent (frame `i` is samples
/// `960 i .. 960 (i + 1)`, as the sender cuts them).
pub fn silent_frames(samples: &[i16]) -> Vec<bool> {
    samples
        .chunks(FRAME_SAMPLES)
        .map(|c| {
            c.iter()
                .all(|s| s.unsigned_abs() < SILENT_PEAK.unsigned_abs())
        })
        .collect()
}

impl LabelCtx {
    /// From the processes that ran, the key log's text and the audio each
    /// direction was given (`None`: no audio, all silence).
    pub fn new(
        procs: Vec<ProcRun>,
        key_log: &str,
        c2s_audio: Option<&[i16]>,
        s2c_audio: Option<&[i16]>,
    ) -> Result<Self> {
        let directions = natter_decrypt::parse_key_log(key_log)
            .map_err(|e| LabError::Other(format!("key log: {e}")))?;
        let mut silent = BTreeMap::new();
        for (dir, audio) in [("c2s", c2s_audio), ("s2c", s2c_audio)] {
            silent.insert(dir.to_owned(), audio.map(silent_frames).unwrap_or_default());
        }
        Ok(LabelCtx {
            procs,
            directions,
            silent,
            held: BTreeMap::new(),
        })
    }

    /// The frames the sender of `direction` (`c2s`: the caller) sent on
    /// hold, from its call report: they are labelled `hold`.
    pub fn with_held_frames(mut self, direction: &str, spans: Vec<[u64; 2]>) -> Self {
        self.held.insert(direction.to_owned(), spans);
        self
    }

    fn is_held(&self, direction: &str, frame_number: u16) -> bool {
        self.held.get(direction).is_some_and(|spans| {
            spans
                .iter()
                .any(|[from, to]| (*from..*to).contains(&u64::from(frame_number)))
        })
    }

    fn is_silent(&self, direction: &str, frame_number: u16) -> bool {
        self.silent
            .get(direction)
            .and_then(|v| v.get(usize::from(frame_number)))
            .copied()
            // past the end of the audio (or no audio at all): silence
            .unwrap_or(true)
    }

    /// The process of `side` that opened a flow first seen at `t`: the one
    /// started last before it.
    fn owner(&self, side: &str, t: f64) -> Option<&ProcRun> {
        self.procs
            .iter()
            .filter(|p| p.side == side && p.start <= t)
            .max_by(|a, b| a.start.total_cmp(&b.start))
    }

    /// Labels every packet of one interface's capture.
    pub fn label_capture(&self, pcap: &Path, iface: &str, side: &str) -> Result<Vec<PacketLabel>> {
        let mut dec = Decryptor::new(self.directions.clone());
        let mut out: Vec<PacketLabel> = Vec::new();
        // control packets to label once the call's times are known: (index
        // in `out`, flow)
        let mut control: Vec<(usize, FlowKey)> = Vec::new();
        let mut flow_first: BTreeMap<FlowKey, f64> = BTreeMap::new();
        read_capture(pcap, |p| {
            let time = p.time.as_secs_f64();
            let mut l = PacketLabel {
                iface: iface.to_owned(),
                frame: p.frame,
                time,
                label: "other".into(),
                ..PacketLabel::default()
            };
            let Some(seg) = p.link.and_then(|link| segment(link, &p.data)) else {
                out.push(l);
                return;
            };
            l.transport = Some(seg.transport.as_str().into());
            l.src = Some(seg.src.to_string());
            l.dst = Some(seg.dst.to_string());
            l.len = seg.payload.len();
            let (server, client) = if is_server(seg.dst) || background::kind_of(seg.dst).is_some() {
                (Some(seg.dst), seg.src)
            } else if is_server(seg.src) || background::kind_of(seg.src).is_some() {
                (Some(seg.src), seg.dst)
            } else {
                (None, seg.src)
            };
            if let Some(kind) = server.and_then(background::kind_of) {
                l.label = kind.into();
                out.push(l);
                return;
            }
            let udp_service = server.filter(|s| {
                is_supernode_ip(s.ip()) && matches!(s.port(), SN_UDP_PORT | SN_UDP_ALT_PORT)
            });
            match (seg.transport, server) {
                (Transport::Udp, Some(_)) if udp_service.is_some() => {
                    l.natter = true;
                    if natter_proto::stun::looks_like_stun(seg.payload) {
                        l.label = "stun-probe".into();
                    } else if natter_proto::relay::decode_bind(seg.payload).is_ok()
                        || natter_proto::relay::decode_bind_reply(seg.payload).is_ok()
                    {
                        l.label = "relay-bind".into();
                    } else if natter_proto::alive::decode(seg.payload).is_ok() {
                        l.label = "beacon".into();
                    } else if let Some(d) = dec.open(seg.payload) {
                        self.som_label(&mut l, &d, true);
                    } else {
                        l.label = "unknown".into();
                    }
                }
                (_, Some(s)) => {
                    l.natter = true;
                    let key = (seg.transport, client, s);
                    flow_first.entry(key).or_insert(time);
                    control.push((out.len(), key));
                }
                (Transport::Udp, None) => {
                    if let Some(d) = dec.open(seg.payload) {
                        l.natter = true;
                        self.som_label(&mut l, &d, false);
                    } else if natter_proto::stun::looks_like_stun(seg.payload) {
                        l.natter = true;
                        l.label = "stun-probe".into();
                    } else {
                        l.label = "unknown".into();
                    }
                }
                (Transport::Tcp, None) => {}
            }
            out.push(l);
        })
        .map_err(|e| LabError::Other(e.to_string()))?;
        // The call's own events on this interface: the call socket's first
        // STUN, its last media.
        let first_stun = out
            .iter()
            .filter(|l| l.label == "stun-probe")
            .map(|l| l.time)
            .next();
        let last_media = out
            .iter()
            .filter(|l| l.function.is_some())
            .map(|l| l.time)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        for (i, key) in control {
            let t = out[i].time;
            let first = flow_first.get(&key).copied().unwrap_or(t);
            let owner = self.owner(side, first);
            let phase = match owner.map(|p| p.kind.as_str()) {
                Some("register" | "login") if key.2.ip() == IpAddr::V4(lab::LOGIN) => "login",
                Some("register" | "login") => "host-cache-refresh",
                Some("search") => "search",
                Some("chat" | "inbox") => "chat",
                Some("online") => "presence",
                Some("call" | "answer") => {
                    if first_stun.is_none_or(|s| t < s) {
                        "join"
                    } else if last_media.is_none_or(|m| t <= m) {
                        "call-signal"
                    } else {
                        "hang-up"
                    }
                }
                _ if key.2.ip() == IpAddr::V4(lab::LOGIN) => "login",
                _ => "join",
            };
            // A call process dials its control connection first (in
            // parallel to several supernodes); TCP connections it opens
            // later (20 ms or more after its first) are TLS relay legs
            // (media).
            let relay_leg = key.0 == Transport::Tcp
                && matches!(owner.map(|p| p.kind.as_str()), Some("call" | "answer"))
                && is_supernode_ip(key.2.ip())
                && flow_first.iter().any(|(k, f)| {
                    k.0 == Transport::Tcp
                        && is_supernode_ip(k.2.ip())
                        && *f < first - RELAY_LEG_AFTER_S
                        && owner.is_some_and(|o| *f >= o.start)
                });
            let phase = if relay_leg { "voice" } else { phase };
            let l = &mut out[i];
            l.process = owner.map(|p| format!("{}:{}", p.side, p.kind));
            if key.0 == Transport::Tcp {
                l.label = "tcp-fallback".into();
                l.phase = Some(phase.into());
            } else {
                l.label = phase.into();
            }
        }
        Ok(out)
    }

    fn som_label(&self, l: &mut PacketLabel, d: &natter_decrypt::Decrypted, via_relay: bool) {
        let dir = d.direction.as_str();
        l.function = Some(format!("{:?}", d.function));
        l.direction = Some(dir.into());
        l.index = Some(d.index);
        l.label = match d.function {
            Function::Data => match d.media_frame() {
                Some((n, _)) => {
                    l.frame_number = Some(n);
                    if self.is_held(dir, n) {
                        "hold"
                    } else if self.is_silent(dir, n) {
                        "silence"
                    } else {
                        "voice"
                    }
                }
                None => "unknown",
            },
            Function::Probe | Function::ProbeReply if via_relay => "relay-check",
            Function::Probe | Function::ProbeReply => "hole-punch",
            Function::Ping => "keepalive",
            Function::Connect => "connect",
        }
        .into();
    }
}

/// A running capture (tcpdump) of one interface.
struct Cap {
    id: ProcId,
    iface: Iface,
}

fn start_captures(lab: &mut Lab, dir: &Path, ca: &Client, cb: &Client) -> Result<Vec<Cap>> {
    let mut caps = Vec::new();
    for (side, c) in [("a", ca), ("b", cb)] {
        for (dev, what) in [
            ("lan0", "the router's lan side: the host's own addresses"),
            (
                "wan0",
                "the router's wan side: what the internet sees, after the NAT",
            ),
        ] {
            let name = format!("{side}-{}", &dev[..3]);
            let file = format!("{name}.pcap");
            let ps = dir.join(&file).display().to_string();
            let id = lab.spawn(
                &c.router_ns,
                &format!("tcpdump-{name}"),
                "tcpdump",
                // a 16 MiB kernel buffer: a busy machine must not drop;
                // immediate mode: libpcap otherwise takes packets from the
                // kernel a block at a time, and the block still filling
                // when tcpdump is stopped was lost without a drop counted
                // (the capture test saw the last 160-240 ms of one
                // interface missing)
                &[
                    "-i",
                    dev,
                    "-n",
                    "-U",
                    "--immediate-mode",
                    "-B",
                    "16384",
                    "-s",
                    "0",
                    "-w",
                    &ps,
                ],
                &[],
            )?;
            caps.push(Cap {
                id,
                iface: Iface {
                    name,
                    file,
                    side: side.into(),
                    description: format!(
                        "{} ({}, router {}): {what}",
                        if side == "a" { "caller A" } else { "callee B" },
                        c.nat,
                        dev
                    ),
                },
            });
        }
    }
    for c in &caps {
        lab.wait_for_log(c.id, "listening on", Duration::from_secs(10))?;
    }
    Ok(caps)
}

/// tcpdump's "N packets dropped by kernel" on exit (0 when absent).
fn kernel_drops(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.strip_suffix(" packets dropped by kernel"))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

/// Everything one scenario run needs.
struct Run<'a> {
    lab: &'a mut Lab,
    opts: &'a CaptureOptions,
    servers: scenario::Servers,
    dir: PathBuf,
    keys: String,
    procs: Vec<ProcRun>,
    events: Vec<(f64, String)>,
    problems: Vec<String>,
    serial: u32,
}

impl Run<'_> {
    fn client_args<'b>(&'b self, home: &'b str, rest: &[&'b str]) -> Vec<&'b str> {
        let mut v: Vec<&str> = vec![
            "--home",
            home,
            "--login",
            self.servers.login_addr.as_str(),
            "--login-key",
        ];
        v.push(self.key_path());
        v.extend_from_slice(rest);
        v
    }

    fn key_path(&self) -> &str {
        self.servers.login_key.to_str().unwrap_or_default()
    }

    fn env(&self) -> [(&str, &str); 2] {
        [("NATTER_PASSWORD", PASSWORD), ("NATTER_KEYLOG", &self.keys)]
    }

    /// Runs a client command to its end (at most 60 s), recording it.
    fn exec(&mut self, side: &str, c: &Client, kind: &str, home: &str, rest: &[&str]) -> bool {
        let start = now();
        let args = self.client_args(home, rest);
        let out = self.lab.exec_unchecked(
            &c.host_ns,
            &self.opts.bins.client,
            &args,
            &self.env(),
            Duration::from_secs(60),
        );
        self.procs.push(ProcRun {
            side: side.into(),
            kind: kind.into(),
            start,
            end: now(),
        });
        self.serial += 1;
        let log = self
            .dir
            .join("logs")
            .join(format!("{}-{side}-{kind}.log", self.serial));
        match out {
            Ok(o) => {
                let _ = fs::write(&log, format!("{}\n{}", o.stdout, o.stderr));
                if o.status.success() {
                    true
                } else {
                    self.problems.push(format!(
                        "`natter {kind}` on side {side} exited {}: {}",
                        o.status,
                        o.stderr.trim()
                    ));
                    false
                }
            }
            Err(e) => {
                self.problems
                    .push(format!("`natter {kind}` on side {side}: {}", fmt_err(&e)));
                false
            }
        }
    }

    /// Starts a client command in the background, recording its start.
    fn spawn(
        &mut self,
        side: &str,
        c: &Client,
        kind: &str,
        home: &str,
        rest: &[&str],
    ) -> Result<(ProcId, usize)> {
        let start = now();
        self.serial += 1;
        let name = format!("{}-{side}-{kind}", self.serial);
        let args: Vec<String> = self
            .client_args(home, rest)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(String, String)> = self
            .env()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let client = self.opts.bins.client.clone();
        let id = self.lab.spawn(&c.host_ns, &name, &client, &args, &env)?;
        self.procs.push(ProcRun {
            side: side.into(),
            kind: kind.into(),
            start,
            end: start,
        });
        Ok((id, self.procs.len() - 1))
    }

    /// Waits for a spawned command (or stops it with SIGINT when
    /// `interrupt`), recording its end.
    fn finish(&mut self, id: ProcId, rec: usize, timeout: Duration, interrupt: bool) -> bool {
        let ok = if interrupt {
            self.lab.stop(id, "INT", Duration::from_secs(5)).is_some()
        } else {
            match self.lab.wait(id, timeout) {
                Ok(s) if s.success() => true,
                Ok(s) => {
                    self.problems.push(format!(
                        "`natter {}` exited {s}: {}",
                        self.procs[rec].kind,
                        tail(&self.lab.log_of(id), 400)
                    ));
                    false
                }
                Err(e) => {
                    self.problems.push(fmt_err(&e));
                    false
                }
            }
        };
        self.procs[rec].end = now();
        ok
    }

    fn wait_log(&mut self, id: ProcId, needle: &str) -> bool {
        match self.lab.wait_for_log(id, needle, Duration::from_secs(30)) {
            Ok(()) => true,
            Err(e) => {
                self.problems.push(fmt_err(&e));
                false
            }
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let s = s.trim();
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// The speech a scenario's caller sends (48 kHz mono), written to `path`.
fn scenario_audio(scenario: Scenario, dir: &Path) -> Result<Vec<i16>> {
    let raw = dir.join("espeak.wav");
    scenario::make_speech(&raw)?;
    let speech = natter_media::wav::read_mono_48k(&raw)
        .map_err(|e| LabError::Other(format!("read speech: {e}")))?;
    let _ = fs::remove_file(&raw);
    let secs = scenario.call_secs().unwrap_or(4) as usize;
    let mut audio = match scenario {
        Scenario::Silence => {
            let part = 72_000.min(speech.len());
            let mut a = speech[..part].to_vec();
            a.resize(part + 3 * 48_000, 0);
            a.extend_from_slice(&speech[..part]);
            a
        }
        _ => {
            let mut a = speech.clone();
            while a.len() < secs * 48_000 {
                a.extend_from_slice(&speech);
            }
            a
        }
    };
    audio.truncate(secs * 48_000);
    natter_media::wav::write_mono_48k(&dir.join("speech.wav"), &audio)
        .map_err(|e| LabError::Other(format!("write speech: {e}")))?;
    Ok(audio)
}

/// What one scenario produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioSummary {
    pub scenario: String,
    pub dir: String,
    pub ok: bool,
    pub path: Option<String>,
    pub packets: usize,
    pub labels: BTreeMap<String, usize>,
    pub problems: Vec<String>,
}

/// Runs one scenario in a lab of its own and writes its data into `dir`
/// (created; see the module docs). Fails only when the lab itself breaks;
/// a scenario that did not do what it should is written all the same, with
/// `ok: false` and its problems.
pub fn run_scenario(
    opts: &CaptureOptions,
    scenario: Scenario,
    dir: &Path,
) -> Result<ScenarioSummary> {
    lab::check_prereqs(&["tcpdump", "espeak-ng", "ss", "openssl", "curl"])?;
    io("create output dir", fs::create_dir_all(dir.join("logs")))?;
    let keys = dir.join("keys.log");
    let _ = fs::remove_file(&keys);
    let audio = scenario_audio(scenario, dir)?;
    let mut cfg = LabConfig::new(&opts.exe);
    cfg.work_dir = dir.join("logs");
    cfg.reflectors = false;
    let mut lab = Lab::new(cfg)?;
    let servers = scenario::start_servers(&mut lab, &opts.bins, &dir.join("work"), None)?;
    let (na, nb) = scenario.nats();
    let ca = lab.add_client(1, na)?;
    let cb = lab.add_client(2, nb)?;
    let ob = lab.add_server("ob", &[OBSERVER_IP])?;
    let bg = if opts.background {
        Some(start_background_server(&mut lab, opts, dir)?)
    } else {
        None
    };
    let caps = start_captures(&mut lab, dir, &ca, &cb)?;
    let mut run = Run {
        lab: &mut lab,
        opts,
        servers,
        dir: dir.to_owned(),
        keys: keys.display().to_string(),
        procs: Vec::new(),
        events: Vec::new(),
        problems: Vec::new(),
        serial: 0,
    };
    let mut record = ScenarioRecord {
        scenario: scenario.name().into(),
        description: scenario.description().into(),
        caller_nat: na.to_string(),
        callee_nat: nb.to_string(),
        background: bg.is_some(),
        ..ScenarioRecord::default()
    };
    let steps = run_steps(&mut run, scenario, &ca, &cb, &mut record);
    if let Err(e) = steps {
        run.problems.push(fmt_err(&e));
    }
    let Run {
        procs,
        events,
        mut problems,
        ..
    } = run;
    // let the last packets reach the files, then stop tcpdump (SIGINT flushes)
    thread::sleep(Duration::from_millis(700));
    for c in &caps {
        lab.stop(c.id, "INT", Duration::from_secs(3));
        let dropped = kernel_drops(&lab.log_of(c.id));
        if dropped > 0 {
            record.capture_drops.insert(c.iface.name.clone(), dropped);
        }
    }
    record.processes = procs.clone();
    record.events = events;
    let ifaces: Vec<Iface> = caps.into_iter().map(|c| c.iface).collect();
    if opts.active_probe
        && let Err(e) = crate::detect::run_active_probe(&mut lab, &ob, &opts.exe, dir, &ifaces)
    {
        problems.push(format!("active probe: {}", fmt_err(&e)));
    }
    drop(lab);
    // the served file and the certificate are not part of the data set
    let _ = fs::remove_dir_all(dir.join("work").join("www"));
    // labels
    let key_log = fs::read_to_string(&keys).unwrap_or_default();
    let c2s_audio = (scenario != Scenario::Overlay).then_some(audio.as_slice());
    let mut ctx = LabelCtx::new(procs, &key_log, c2s_audio, None)?;
    for (side, dir) in [("a", "c2s"), ("b", "s2c")] {
        if let Some(r) = record.call_reports.get(side).and_then(|v| {
            serde_json::from_value::<natter_proto::report::CallReport>(v.clone()).ok()
        }) && !r.held_frames.is_empty()
        {
            ctx = ctx.with_held_frames(dir, r.held_frames);
        }
    }
    let mut packets = Vec::new();
    for i in &ifaces {
        packets.extend(ctx.label_capture(&dir.join(&i.file), &i.name, &i.side)?);
    }
    let labels = Labels {
        scenario: scenario.name().into(),
        interfaces: ifaces,
        packets,
    };
    record.problems = problems;
    record.ok = record.problems.is_empty();
    write_json(&dir.join("labels.json"), &labels)?;
    write_json(&dir.join("scenario.json"), &record)?;
    Ok(ScenarioSummary {
        scenario: scenario.name().into(),
        dir: dir.display().to_string(),
        ok: record.ok,
        path: record.path.clone(),
        packets: labels.packets.len(),
        labels: labels.counts(),
        problems: record.problems,
    })
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| LabError::Other(format!("serialize {}: {e}", path.display())))?;
    io(format!("write {}", path.display()), fs::write(path, text))
}

/// The background server host: the generators' server side and
/// `openssl s_server` with a 512 KiB file.
fn start_background_server(lab: &mut Lab, opts: &CaptureOptions, dir: &Path) -> Result<String> {
    let ns = lab.add_server("bg", &[background::BG_IP])?;
    let www = dir.join("work").join("www");
    io("create www dir", fs::create_dir_all(&www))?;
    let mut blob = vec![0u8; 512 << 10];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut blob);
    io("write blob", fs::write(www.join("blob.bin"), blob))?;
    let mut c = std::process::Command::new("openssl");
    c.args([
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
    ])
    .args(["-subj", "/CN=background.example"])
    .arg("-keyout")
    .arg(www.join("key.pem"))
    .arg("-out")
    .arg(www.join("cert.pem"));
    crate::exec::run(c, None, Duration::from_secs(60))?;
    let ip = background::BG_IP.to_string();
    let exe = opts.exe.clone();
    let srv = lab.spawn(
        &ns,
        "bg-server",
        &exe,
        &["bg-traffic", "serve", "--ip", &ip, "--secs", "600"],
        &[],
    )?;
    lab.wait_for_log(srv, "background server up", Duration::from_secs(10))?;
    let script = format!(
        "cd '{}' && exec openssl s_server -quiet -accept {ip}:{} -cert cert.pem -key key.pem -WWW",
        www.display(),
        background::TLS_PORT
    );
    lab.spawn(&ns, "bg-tls", "bash", &["-c", &script], &[])?;
    thread::sleep(Duration::from_millis(500));
    Ok(ns)
}

/// Starts the background clients on the host of `ca` (they run `secs`).
fn start_background_clients(run: &mut Run<'_>, ca: &Client, secs: u32) -> Result<Vec<ProcId>> {
    let ip = background::BG_IP.to_string();
    let secs_s = secs.to_string();
    let exe = run.opts.exe.clone();
    let gen_id = run.lab.spawn(
        &ca.host_ns,
        "bg-send",
        &exe,
        &["bg-traffic", "send", "--ip", &ip, "--secs", &secs_s],
        &[],
    )?;
    let url = format!("https://{ip}:{}/blob.bin", background::TLS_PORT);
    let curl = run.lab.spawn(
        &ca.host_ns,
        "bg-curl",
        "curl",
        &["-sSk", "--max-time", "30", "-o", "/dev/null", &url],
        &[],
    )?;
    Ok(vec![gen_id, curl])
}

fn run_steps(
    run: &mut Run<'_>,
    scenario: Scenario,
    ca: &Client,
    cb: &Client,
    record: &mut ScenarioRecord,
) -> Result<()> {
    let home_a = run.dir.join("work").join("home-a").display().to_string();
    let home_b = run.dir.join("work").join("home-b").display().to_string();
    let (name_a, name_b) = ("alice", "bob");
    for (side, c, home, name) in [("a", ca, &home_a, name_a), ("b", cb, &home_b, name_b)] {
        for step in ["register", "login"] {
            if !run.exec(side, c, step, home, &[step, name]) {
                return Ok(());
            }
        }
    }
    let sn = run.servers.sn.clone();
    let background = run.opts.background;
    // the background runs on a side whose router lets UDP out
    let bgc = if ca.nat == NatType::UdpBlocked {
        cb
    } else {
        ca
    };
    let mut bg_procs = Vec::new();
    match scenario.call_secs() {
        None => {
            // overlay: B online, A searches, chats, watches B's presence
            let (b_online, b_rec) = run.spawn(
                "b",
                cb,
                "online",
                &home_b,
                &["--bootstrap", &sn[1], "online"],
            )?;
            if !run.wait_log(b_online, "online as") {
                return Ok(());
            }
            thread::sleep(Duration::from_secs(1));
            if background {
                bg_procs = start_background_clients(run, bgc, 4)?;
            }
            let boot = ["--bootstrap", sn[0].as_str()];
            run.exec(
                "a",
                ca,
                "search",
                &home_a,
                &[boot[0], boot[1], "search", name_b],
            );
            run.exec(
                "a",
                ca,
                "chat",
                &home_a,
                &[boot[0], boot[1], "chat", name_b, "hello from the lab"],
            );
            // buddies add is a local file edit (no traffic)
            let args = run.client_args(&home_a, &["buddies", "add", name_b]);
            let _ = run.lab.exec_unchecked(
                &ca.host_ns,
                &run.opts.bins.client,
                &args,
                &run.env(),
                Duration::from_secs(10),
            );
            let (a_online, a_rec) =
                run.spawn("a", ca, "online", &home_a, &[boot[0], boot[1], "online"])?;
            if run.wait_log(a_online, &format!("presence {name_b}")) {
                thread::sleep(Duration::from_secs(1));
            }
            run.finish(a_online, a_rec, Duration::ZERO, true);
            let got = run.lab.log_of(b_online).contains("hello from the lab");
            run.finish(b_online, b_rec, Duration::ZERO, true);
            if !got {
                run.problems
                    .push("B's `natter online` did not show A's chat message".into());
            }
        }
        Some(secs) => {
            let dir = run.dir.clone();
            let b_stats = dir.join("b-stats.json");
            let a_stats = dir.join("a-stats.json");
            let speech = dir.join("speech.wav").display().to_string();
            let (b_stats_s, a_stats_s) =
                (b_stats.display().to_string(), a_stats.display().to_string());
            let (answer, b_rec) = run.spawn(
                "b",
                cb,
                "answer",
                &home_b,
                &[
                    "--bootstrap",
                    &sn[1],
                    "answer",
                    "--calls",
                    "1",
                    "--stats-json",
                    &b_stats_s,
                ],
            )?;
            if !run.wait_log(answer, "waiting for calls") {
                return Ok(());
            }
            thread::sleep(Duration::from_secs(1));
            if background {
                bg_procs = start_background_clients(run, bgc, secs)?;
            }
            let dur = secs.to_string();
            let mut call_args = vec![
                "--bootstrap",
                sn[0].as_str(),
                "call",
                name_b,
                "--audio-in",
                &speech,
                "--duration",
                &dur,
                "--stats-json",
                &a_stats_s,
            ];
            if scenario == Scenario::Hold {
                call_args.extend(["--hold-at", "2", "--hold-for", "2"]);
            }
            let (call, a_rec) = run.spawn("a", ca, "call", &home_a, &call_args)?;
            if scenario == Scenario::SupernodeLost {
                thread::sleep(Duration::from_secs(3));
                let id = run.servers.sn_procs[0];
                run.lab.stop(id, "KILL", Duration::from_secs(2));
                run.events
                    .push((now(), "supernode 1 (the caller's) killed".into()));
            }
            run.finish(
                call,
                a_rec,
                Duration::from_secs(u64::from(secs) + 45),
                false,
            );
            run.finish(answer, b_rec, Duration::from_secs(20), false);
            let ra = scenario::read_report(&a_stats);
            let rb = scenario::read_report(&b_stats);
            for (side, p) in [("a", &a_stats), ("b", &b_stats)] {
                if let Some(v) = fs::read_to_string(p)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                {
                    record.call_reports.insert(side.into(), v);
                }
            }
            let name = |r: &Option<natter_proto::report::CallReport>| {
                r.as_ref()
                    .and_then(|r| r.path_end.or(r.path))
                    .map(|p| p.name())
            };
            record.path = scenario::call_path(name(&ra), name(&rb));
            if rb.as_ref().is_none_or(|r| r.media_packets_received == 0) {
                run.problems.push("B received no media".into());
            }
            run.problems
                .extend(scenario_problems(scenario, ra.as_ref(), rb.as_ref()));
        }
    }
    for id in bg_procs {
        if let Err(e) = run.lab.wait(id, Duration::from_secs(40)) {
            run.problems.push(format!("background: {}", fmt_err(&e)));
        }
    }
    Ok(())
}

/// What a scenario's call reports must show beyond a connected call: the
/// port-prediction call hole-punched to one of the callee's predicted
/// candidates; the hold seen by the callee and sent on hold by the caller.
pub fn scenario_problems(
    scenario: Scenario,
    a: Option<&natter_proto::report::CallReport>,
    b: Option<&natter_proto::report::CallReport>,
) -> Vec<String> {
    let mut problems = Vec::new();
    match scenario {
        Scenario::PortPrediction => {
            let predicted = b
                .map(|b| b.predicted_candidates.clone())
                .unwrap_or_default();
            if predicted.is_empty() {
                problems.push("B (symmetric-seq) sent no predicted candidates".into());
            }
            let remote = a.and_then(|a| a.remote_addr);
            let punched =
                a.and_then(|a| a.path_end) == Some(natter_proto::path::PathKind::HolePunched);
            if !punched || !remote.is_some_and(|r| predicted.contains(&r)) {
                problems.push(format!(
                    "A's call did not end hole-punched to a predicted candidate of B ({:?} to {remote:?}, predicted {predicted:?})",
                    a.and_then(|a| a.path_end)
                ));
            }
        }
        Scenario::Hold => {
            if a.is_none_or(|a| a.held_frames.len() != 1) {
                problems.push("A's report shows no hold".into());
            }
            if b.is_none_or(|b| b.peer_holds != 1) {
                problems.push("B's report shows no hold by its peer".into());
            }
        }
        _ => {}
    }
    problems
}

/// `index.json` of `capture --all`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    pub scenarios: Vec<ScenarioSummary>,
    /// Behaviours not covered yet, and why.
    pub missing: Vec<(String, String)>,
    /// Every label and its meaning.
    pub labels: Vec<(String, String)>,
}

impl Index {
    /// The data set's README: its scenarios, their files, the labels, what
    /// is missing (docs/TRAFFIC.md has the rest).
    pub fn readme(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::from(
            "# Natter labelled captures\n\nMade by `natter-interop-tests capture --all` in Natter's NAT lab \
             (network namespaces, nftables NATs, the real binaries). How to read them, with tshark \
             and the dissector: docs/TRAFFIC.md in the Natter repository.\n\n\
             Each directory: `a-lan.pcap`, `a-wan.pcap`, `b-lan.pcap`, `b-wan.pcap` (both sides of \
             the caller's (A) and callee's (B) routers), `keys.log` (NATTER_KEYLOG), `labels.json` \
             (every packet by interface and frame number), `scenario.json` (processes, call \
             reports), `active.json` (active prober), `speech.wav`, `logs/`.\n\n\
             | scenario | what | path | packets | ok |\n|---|---|---|---|---|\n",
        );
        for sc in &self.scenarios {
            let what = sc
                .scenario
                .parse::<Scenario>()
                .map_or("", Scenario::description);
            let _ = writeln!(
                s,
                "| `{}` | {what} | {} | {} | {} |",
                sc.scenario,
                sc.path.as_deref().unwrap_or("-"),
                sc.packets,
                if sc.ok { "yes" } else { "no" }
            );
        }
        s.push_str("\n| label | meaning |\n|---|---|\n");
        for (l, m) in &self.labels {
            let _ = writeln!(s, "| `{l}` | {m} |");
        }
        if !self.missing.is_empty() {
            s.push_str("\nNot covered yet:\n\n");
            for (what, why) in &self.missing {
                let _ = writeln!(s, "- {what}: {why}");
            }
        }
        s
    }
}

/// Runs `scenarios` (one lab each) into `out/NAME/` and writes
/// `out/index.json` (after every scenario).
pub fn run_all(opts: &CaptureOptions, scenarios: &[Scenario], out: &Path) -> Result<Index> {
    let mut index = Index {
        scenarios: Vec::new(),
        missing: Scenario::MISSING
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect(),
        labels: LABELS
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect(),
    };
    for s in scenarios {
        let started = Instant::now();
        let summary = run_scenario(opts, *s, &out.join(s.name()))?;
        eprintln!(
            "{}: {} packets, path {}, {}{} ({:.0} s)",
            s,
            summary.packets,
            summary.path.as_deref().unwrap_or("-"),
            if summary.ok { "ok" } else { "NOT ok" },
            if summary.problems.is_empty() {
                String::new()
            } else {
                format!(": {}", summary.problems.join("; "))
            },
            started.elapsed().as_secs_f64()
        );
        index.scenarios.push(summary);
        write_json(&out.join("index.json"), &index)?;
        io(
            "write README.md",
            fs::write(out.join("README.md"), index.readme()),
        )?;
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tcpdump_kernel_drops_are_read_from_its_exit_lines() {
        let log = "listening on lan0, link-type EN10MB\n412 packets captured\n415 packets received by filter\n3 packets dropped by kernel\n";
        assert_eq!(kernel_drops(log), 3);
        assert_eq!(kernel_drops("0 packets dropped by kernel\n"), 0);
        assert_eq!(kernel_drops("tcpdump: killed\n"), 0);
    }

    #[test]
    fn scenario_names_round_trip_and_an_unknown_one_lists_them() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>().unwrap(), s);
        }
        let e = "nope".parse::<Scenario>().unwrap_err();
        assert!(e.contains("direct-call"), "{e}");
    }

    #[test]
    fn the_data_sets_readme_lists_scenarios_labels_and_what_is_missing() {
        let index = Index {
            scenarios: vec![ScenarioSummary {
                scenario: "relayed".into(),
                dir: "/x/relayed".into(),
                ok: true,
                path: Some("relayed".into()),
                packets: 42,
                labels: BTreeMap::new(),
                problems: Vec::new(),
            }],
            missing: vec![("hold".into(), "no hold".into())],
            labels: vec![("voice".into(), "a voice frame".into())],
        };
        let r = index.readme();
        assert!(r.contains("| `relayed` | symmetric x symmetric"), "{r}");
        assert!(r.contains("| relayed | 42 | yes |"), "{r}");
        assert!(r.contains("| `voice` | a voice frame |"), "{r}");
        assert!(r.contains("- hold: no hold"), "{r}");
    }

    #[test]
    fn silent_frames_follow_the_audio() {
        let mut a = vec![0i16; 960 * 2];
        a.extend(std::iter::repeat_n(3000i16, 960));
        a.extend(std::iter::repeat_n(10i16, 960));
        assert_eq!(silent_frames(&a), vec![true, true, false, true]);
    }

    #[test]
    fn flows_belong_to_the_process_started_last_before_them() {
        let p = |side: &str, kind: &str, start: f64| ProcRun {
            side: side.into(),
            kind: kind.into(),
            start,
            end: start + 1.0,
        };
        let ctx = LabelCtx {
            procs: vec![
                p("a", "login", 1.0),
                p("b", "online", 2.0),
                p("a", "search", 3.0),
            ],
            directions: Vec::new(),
            silent: BTreeMap::new(),
            held: BTreeMap::new(),
        };
        assert_eq!(ctx.owner("a", 2.5).unwrap().kind, "login");
        assert_eq!(ctx.owner("a", 3.5).unwrap().kind, "search");
        assert_eq!(ctx.owner("b", 9.0).unwrap().kind, "online");
        assert!(ctx.owner("a", 0.5).is_none());
    }
}
