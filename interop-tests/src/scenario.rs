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
//! The servers listen on port 443 twice: QUIC (UDP) and TLS over TCP
//! (`--tcp-listen`), the only way in for a client behind a udp-blocked
//! firewall. A trial can also change router A in the middle of the call
//! ([`MidCall`]): kill the direct path, or block every UDP packet, or kill
//! (SIGKILL) supernode 1, A's (and, with `same_supernode`, B's) supernode
//! and relay.
//!
//! **A promoted relay** ([`MatrixOptions::promoted_relay`], issue 18): a
//! third client, on a network of its own (open, by default), stays online
//! with `natter online --promote-after 2` and is promoted to a supernode in
//! its own process (the login server approves it: `--auto-approve-users
//! 0`); A and B then join through it only, so the call's relay is its relay.
//! [`MidCall::StopPromoted`] sends its `natter online` SIGTERM mid-call: it
//! steps down and the call has to move to an operator supernode's relay.
//!
//! **The path of a call** ([`TrialResult::path_end`], the matrix's "final
//! path") is the *less direct* of the two sides' own final paths, in the
//! order direct < hole-punched < relayed < tcp-relay ([`call_path`]): a call
//! between a udp-blocked user (`tcp-relay`) and a user who reaches the relay
//! over UDP (`relayed`) is a `tcp-relay` call. Both sides' paths are kept in
//! [`TrialResult::a`] and [`TrialResult::b`].
//!
//! Before any trial, a router of every NAT type the run uses is built and
//! classified by the probe ([`crate::probe`]); a type that does not behave as
//! labelled fails the run loudly (its cells are not run, `self_check` is
//! false, and the run exits with an error). Trial routers are built from
//! exactly the same recipes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use natter_proto::path::PathKind;
use natter_proto::report::CallReport;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::docker::DockerOptions;
use crate::error::{LabError, Result};
use crate::exec;
use crate::lab::{self, Backend, Client, Lab, LabConfig, ProcId};
use crate::nat::{Impairment, NatType};
use crate::probe;

/// The path a call should take between a caller behind `a` and a callee
/// behind `b` (see the crate docs for the reasoning).
pub fn expected_path(a: NatType, b: NatType) -> &'static str {
    use NatType::*;
    let kind = match (a, b) {
        (UdpBlocked, _) | (_, UdpBlocked) => PathKind::TcpRelay,
        (Open, Open) => PathKind::Direct,
        (PortRestricted, Symmetric) | (Symmetric, PortRestricted) | (Symmetric, Symmetric) => {
            PathKind::Relayed
        }
        // A sequential symmetric NAT is predicted (the client's predicted
        // candidates): a port-restricted peer's probes open its NAT to the
        // port the symmetric side will pick. Two symmetric NATs, or a random
        // one, still need the relay: each side's mapping for the other
        // depends on a port the other has not picked yet.
        (SymmetricSeq, Symmetric | SymmetricSeq) | (Symmetric, SymmetricSeq) => PathKind::Relayed,
        _ => PathKind::HolePunched,
    };
    kind.name()
}

/// How direct a path (a name in the client's call report) is: its
/// [`PathKind::rank`] (direct 0, hole-punched 1, relayed 2, tcp-relay 3).
/// Anything else (`none`, a name this lab does not know) ranks 4, less
/// direct than everything, so that it shows up as unexpected instead of
/// hiding behind the other side's path.
pub fn path_rank(path: &str) -> u8 {
    PathKind::from_name(path).map_or(4, PathKind::rank)
}

/// The path of a call from its two sides' paths: the less direct of the two
/// ([`path_rank`]; A's on a tie). A side without a report does not count.
pub fn call_path(a: Option<&str>, b: Option<&str>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) if path_rank(b) > path_rank(a) => Some(b.to_owned()),
        (Some(a), _) => Some(a.to_owned()),
        (None, b) => b.map(str::to_owned),
    }
}

/// A change the lab makes while a call runs (see
/// [`MatrixOptions::break_direct_after_s`],
/// [`MatrixOptions::block_udp_after_s`] and
/// [`MatrixOptions::kill_supernode_after_s`]). Router rules go into router
/// A's own namespace, so they vanish with it when the trial ends, however
/// it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MidCall {
    /// Router A drops every UDP packet to or from B's addresses: the direct
    /// path dies, the relay (on the server subnet) still works.
    BreakDirect,
    /// Router A drops every UDP packet and lets out only new TCP connections
    /// to ports 80 and 443, like the udp-blocked profile.
    BlockUdp,
    /// Supernode 1 (A's, and B's with `same_supernode`: the call's relay)
    /// is killed with SIGKILL, for the rest of the run.
    KillSupernode,
    /// Router A drops the rules of [`MidCall::BlockUdp`]: UDP works again,
    /// and the call should come back to it from the TLS relay leg.
    UnblockUdp,
    /// The promoted client of [`MatrixOptions::promoted_relay`] (both
    /// sides' supernode and the call's relay) gets SIGTERM: its `natter
    /// online` steps down ("stepped down (quit)") and exits.
    StopPromoted,
}

impl MidCall {
    /// Its name in results.
    pub fn name(self) -> &'static str {
        match self {
            MidCall::BreakDirect => "direct path broken",
            MidCall::BlockUdp => "udp blocked",
            MidCall::UnblockUdp => "udp unblocked",
            MidCall::KillSupernode => "supernode 1 killed",
            MidCall::StopPromoted => "promoted supernode stepped down (SIGTERM)",
        }
    }

    /// The nft script that router A loads (its own table, a forward chain
    /// that runs before the NAT's); `peer` are B's addresses (its router's
    /// public one and its host's). `None` for a change that is no router
    /// rule.
    pub fn nft_script(self, peer: &[Ipv4Addr]) -> Option<String> {
        let (table, rules) = match self {
            MidCall::KillSupernode | MidCall::StopPromoted => return None,
            MidCall::BreakDirect => {
                let peer = format!(
                    "{{ {} }}",
                    peer.iter()
                        .map(Ipv4Addr::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                (
                    "natter_break",
                    format!(
                        "ip daddr {peer} meta l4proto udp drop\n    ip saddr {peer} meta l4proto udp drop"
                    ),
                )
            }
            MidCall::UnblockUdp => return Some("delete table ip natter_block_udp\n".to_owned()),
            MidCall::BlockUdp => (
                "natter_block_udp",
                "meta l4proto udp drop\n    \
                 iifname \"lan0\" oifname \"wan0\" ct state new meta l4proto != tcp drop\n    \
                 iifname \"lan0\" oifname \"wan0\" ct state new tcp dport != { 80, 443 } drop"
                    .to_owned(),
            ),
        };
        Some(format!(
            "table ip {table} {{\n  chain brk {{\n    type filter hook forward priority -20; policy accept;\n    {rules}\n  }}\n}}\n"
        ))
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
    /// The client `natter` in `dir` (another build's, for version
    /// interop); fails when it is not there.
    pub fn client_in(dir: &Path) -> Result<PathBuf> {
        let p = dir.join("natter");
        if p.is_file() {
            Ok(p)
        } else {
            Err(LabError::Missing(format!(
                "no `natter` binary in {} (build the other version there)",
                dir.display()
            )))
        }
    }

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
    /// Impairment profile name (`clean`, `loss2`, `wifi`, `4g`, `bad`).
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
    /// After this many seconds of the call (counted from the start of
    /// `natter call`), router A drops every UDP packet to or from B's
    /// addresses (the direct path dies; the relay, on the server subnet,
    /// still works): [`MidCall::BreakDirect`].
    pub break_direct_after_s: Option<u32>,
    /// After this many seconds of the call (counted from the start of
    /// `natter call`), router A drops every UDP packet and lets out only TCP
    /// to ports 80 and 443, like the udp-blocked profile: A has to carry the
    /// rest of the call over TLS/TCP ([`MidCall::BlockUdp`]).
    pub block_udp_after_s: Option<u32>,
    /// After this many seconds of the call, router A lifts the block of
    /// [`Self::block_udp_after_s`] ([`MidCall::UnblockUdp`]): the call is
    /// expected back on UDP.
    pub unblock_udp_after_s: Option<u32>,
    /// After this many seconds of the call (counted from the start of
    /// `natter call`), supernode 1 is killed with SIGKILL
    /// ([`MidCall::KillSupernode`]): A's signaling and relay, and B's too
    /// with `same_supernode`. It stays dead for the rest of the run, so use
    /// it with one cell and one trial.
    pub kill_supernode_after_s: Option<u32>,
    /// A promoted relay (issue 18): in every trial a third client, behind
    /// a router of this type (open; a full-cone NAT that keeps ports would
    /// do), registers, stays online (`natter online --promote-after 2`) and
    /// is promoted to a supernode (the login server runs with
    /// `--auto-approve-users 0`); A and B join through it only (empty host
    /// caches, it as their bootstrap), so it serves A's search and the
    /// call's relay is its relay ([`TrialResult::promoted`]).
    pub promoted_relay: Option<NatType>,
    /// After this many seconds of the call (counted from the start of
    /// `natter call`), the promoted client's `natter online` gets SIGTERM
    /// ([`MidCall::StopPromoted`]): it steps down, and the call must move to
    /// an operator supernode's relay. Needs `promoted_relay`.
    pub stop_promoted_after_s: Option<u32>,
    /// B hangs up after this many seconds of its call (`natter answer
    /// --duration`); by default A hangs up after `call_secs`.
    pub callee_secs: Option<u32>,
    /// Version interop: the caller's `natter` from another build (e.g. the
    /// previous release); `None`: [`Binaries::client`]. The servers stay
    /// `bins`'.
    pub client_a: Option<PathBuf>,
    /// Likewise the callee's `natter`.
    pub client_b: Option<PathBuf>,
    /// Namespaces (default) or Docker containers.
    pub backend: Backend,
    /// The Docker backend's image and version-interop images (client
    /// index 1 = A, 2 = B); the run adds the mounts it needs.
    pub docker: DockerOptions,
}

impl MatrixOptions {
    /// One clean trial per cell, 5-second calls, A and B on different
    /// supernodes, 300 s NAT state, nothing changed mid-call.
    pub fn new(
        out: PathBuf,
        cells: Vec<(NatType, NatType)>,
        bins: Binaries,
        probe_exe: PathBuf,
    ) -> Self {
        MatrixOptions {
            out,
            trials: 1,
            profile: "clean".into(),
            cells,
            bins,
            probe_exe,
            call_secs: 5,
            same_supernode: false,
            map_timeout_s: 300,
            break_direct_after_s: None,
            block_udp_after_s: None,
            unblock_udp_after_s: None,
            kill_supernode_after_s: None,
            promoted_relay: None,
            stop_promoted_after_s: None,
            callee_secs: None,
            client_a: None,
            client_b: None,
            backend: Backend::Netns,
            docker: DockerOptions::default(),
        }
    }

    /// The host directories a docker run shares with its containers: the
    /// output, the servers' and the clients' binaries (except a client run
    /// from its own image).
    fn docker_mounts(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.out.clone()];
        let mut bins = vec![&self.bins.login, &self.bins.supernode, &self.bins.client];
        for (i, c) in [&self.client_a, &self.client_b].into_iter().enumerate() {
            let index = u8::try_from(i + 1).unwrap_or(u8::MAX);
            if let Some(c) = c
                && !self.docker.host_images.contains_key(&index)
            {
                bins.push(c);
            }
        }
        dirs.extend(
            bins.into_iter()
                .filter_map(|b| b.parent().map(Path::to_path_buf)),
        );
        dirs
    }

    /// The `natter` binary of side A (caller) and of side B (callee).
    pub fn clients(&self) -> [&Path; 2] {
        [&self.client_a, &self.client_b].map(|c| c.as_deref().unwrap_or(self.bins.client.as_path()))
    }

    /// The mid-call changes of this run, in the order they happen.
    pub fn mid_call(&self) -> Vec<(u32, MidCall)> {
        let mut v: Vec<(u32, MidCall)> = [
            self.break_direct_after_s.map(|s| (s, MidCall::BreakDirect)),
            self.block_udp_after_s.map(|s| (s, MidCall::BlockUdp)),
            self.unblock_udp_after_s.map(|s| (s, MidCall::UnblockUdp)),
            self.kill_supernode_after_s
                .map(|s| (s, MidCall::KillSupernode)),
            self.stop_promoted_after_s
                .map(|s| (s, MidCall::StopPromoted)),
        ]
        .into_iter()
        .flatten()
        .collect();
        v.sort();
        v
    }

    /// The final path a call of cell `a` x `b` should end on in this run:
    /// [`expected_path`], made less direct by the mid-call changes (a broken
    /// direct path leaves at best the relay, blocked UDP leaves tcp-relay).
    pub fn expected_path(&self, a: NatType, b: NatType) -> &'static str {
        let mut p = expected_path(a, b);
        let mut udp_blocked = false;
        for (_, change) in self.mid_call() {
            let floor = match change {
                MidCall::BreakDirect => PathKind::Relayed.name(),
                // Blocked UDP is a floor only if it stays blocked.
                MidCall::BlockUdp | MidCall::UnblockUdp => {
                    udp_blocked = change == MidCall::BlockUdp;
                    continue;
                }
                // Another supernode's relay serves as well.
                MidCall::KillSupernode | MidCall::StopPromoted => PathKind::Direct.name(),
            };
            if path_rank(floor) > path_rank(p) {
                p = floor;
            }
        }
        if udp_blocked {
            p = PathKind::TcpRelay.name();
        }
        p
    }

    /// Where [`TrialResult::audio_match_late`] starts in the speech (s): 4 s
    /// after the last mid-call change (time to notice and switch), if at
    /// least 2 s of the call are left after that.
    pub fn late_audio_from_s(&self) -> Option<u32> {
        let last = self.mid_call().last()?.0;
        let from = last + LATE_AUDIO_AFTER_S;
        (from + 2 <= self.call_secs).then_some(from)
    }
}

/// Seconds after the last mid-call change where the late audio score starts.
const LATE_AUDIO_AFTER_S: u32 = 4;

/// How long A stays on the call after its speech ended (sending silence):
/// the speech's last frames are still on the way and in B's jitter buffer
/// when the speech ends (up to two impaired links and the buffer's 200 ms
/// under `bad`), and a hang-up at once cut them from what B heard. The
/// speech is cut at `call_secs` mid-word, so that cut scored up to 0.35
/// PESQ-WB lower (docs/results/voice-quality.md).
pub const CALL_TAIL_MS: u64 = 1_000;

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
    /// Path of the call at its start: the less direct of the two sides'
    /// start paths ([`call_path`]).
    pub path_start: Option<String>,
    /// Path of the call at its end: the less direct of the two sides' final
    /// paths ([`call_path`]); the matrix's "final path".
    pub path_end: Option<String>,
    /// A's path switches in order (stats `switches`).
    #[serde(default)]
    pub switches: Vec<String>,
    /// A's (the caller's) own paths, from its call report.
    #[serde(default)]
    pub a: SidePaths,
    /// B's (the callee's) own paths, from its call report.
    #[serde(default)]
    pub b: SidePaths,
    /// Time to first audio at B (ms), as B's call report says: from the
    /// moment the invite reached B to B's first played frame (else A's, from
    /// the start of A's call setup).
    pub first_audio_ms: Option<f64>,
    /// Packets lost (B's view).
    pub packets_lost: Option<f64>,
    /// Media packets B received.
    pub media_packets_received: Option<f64>,
    /// Jitter at B (ms).
    pub jitter_ms: Option<f64>,
    /// Frames that came after their playout time at B, percent.
    #[serde(default)]
    pub late_loss_pct: Option<f64>,
    /// Delay B's jitter buffer added to the frames it played, p50 and p95 (ms).
    #[serde(default)]
    pub jb_added_p50_ms: Option<u32>,
    /// See `jb_added_p50_ms`.
    #[serde(default)]
    pub jb_added_p95_ms: Option<u32>,
    /// B's estimated MOS (E-model, its call report).
    #[serde(default)]
    pub mos_estimate: Option<f64>,
    /// Mean UDP payload A sent (bytes, A's call report).
    #[serde(default)]
    pub mean_udp_payload: Option<f64>,
    /// Envelope correlation of what B heard with the speech sent.
    pub audio_match: Option<f64>,
    /// Waveform correlation.
    pub audio_waveform: Option<f64>,
    /// Delay of B's audio (ms).
    pub audio_lag_ms: Option<f64>,
    /// Envelope correlation of the end of the call only, from
    /// [`MatrixOptions::late_audio_from_s`] of the speech on: did the audio
    /// come back after a mid-call change? (None without one.)
    #[serde(default)]
    pub audio_match_late: Option<f64>,
    /// How long A's call lasted (s, A's report `duration_s`).
    #[serde(default)]
    pub call_duration_s: Option<f64>,
    /// How long B's call lasted (s, B's report `duration_s`).
    #[serde(default)]
    pub b_duration_s: Option<f64>,
    /// B learned that A hung up (B's report `ended_by_peer`); false when B
    /// ended the call itself (e.g. after media stopped arriving).
    #[serde(default)]
    pub b_ended_by_peer: Option<bool>,
    /// The longest time B went without a media datagram (ms, B's report
    /// `max_media_gap_ms`): the audio gap of a path or relay change.
    #[serde(default)]
    pub b_max_media_gap_ms: Option<u64>,
    /// Relay migrations asked and supernodes rejoined during the call, A's
    /// and B's (their reports).
    #[serde(default)]
    pub relay_migrations: [u32; 2],
    /// See `relay_migrations`.
    #[serde(default)]
    pub rejoins: [u32; 2],
    /// A learned that B hung up (A's report `ended_by_peer`).
    #[serde(default)]
    pub a_ended_by_peer: Option<bool>,
    /// The transport of each side's supernode session at the end of the
    /// call (`quic` or `tcp`, their reports' `signaling`).
    #[serde(default)]
    pub signaling: [Option<String>; 2],
    /// The mid-call changes made, with when (s after `natter call` started).
    #[serde(default)]
    pub events: Vec<String>,
    /// The promoted relay of the trial ([`MatrixOptions::promoted_relay`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<PromotedRelay>,
    /// Set when a side refused the other's protocol version (version
    /// interop): the line that says so. Such a trial is an incompatibility
    /// between the builds, not a NAT traversal failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incompatible: Option<String>,
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

/// The promoted client of a trial ([`MatrixOptions::promoted_relay`]):
/// what it did, from its `natter online` output and the other clients'.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromotedRelay {
    /// Its router's NAT type.
    pub nat: Option<NatType>,
    /// Its supernode's QUIC address ("supernode: promoted, serving at ADDR").
    pub addr: Option<String>,
    /// The operator supernode its own client session joined ("online as
    /// NAME via ADDR").
    pub joined_via: Option<String>,
    /// From its "online as" line to its "serving at" line (ms): the
    /// `--promote-after` threshold, the netcheck, the sponsored announce and
    /// the certificate.
    pub promoted_after_ms: Option<u64>,
    /// Its address was in A's host cache after A's login (the login server
    /// lists it once certified).
    pub in_host_cache: bool,
    /// What A's `natter search` for the promoted client's user printed,
    /// joined through the promoted node only (that user is online through
    /// an operator supernode).
    pub search: Option<String>,
    /// The lines its `natter online` printed after the SIGTERM of
    /// [`MidCall::StopPromoted`] that speak of its supernode.
    #[serde(default)]
    pub stepped_down: Vec<String>,
    /// It exited 0 after the SIGTERM (`None`: not stopped, or still running
    /// after the grace time and killed).
    pub exit_ok: Option<bool>,
}

/// One side's paths, from its call report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidePaths {
    /// First path (`path_start`/`initial_path`, else `path`).
    pub start: Option<String>,
    /// Final path (`path_end`/`final_path`, else `path`).
    pub end: Option<String>,
    /// Every switch, in order (`switches[].path`).
    #[serde(default)]
    pub switches: Vec<String>,
    /// Where the switches to a relayed path went, in order: the relays
    /// (`switches[].addr`) media used.
    #[serde(default)]
    pub relays: Vec<String>,
}

impl SidePaths {
    /// From a call report (`path_start`, else `path`; `path_end`, else `path`).
    pub fn of(r: &CallReport) -> Self {
        let name = |p: Option<PathKind>| p.map(|p| p.name().to_owned());
        SidePaths {
            start: name(r.path_start.or(r.path)),
            end: name(r.path_end.or(r.path)),
            switches: r
                .switches
                .iter()
                .map(|s| s.path.name().to_owned())
                .collect(),
            relays: r
                .switches
                .iter()
                .filter(|s| s.path == PathKind::Relayed)
                .map(|s| s.addr.to_string())
                .collect(),
        }
    }

    /// From a call report as JSON; an unreadable one has no paths.
    pub fn of_report(v: &Value) -> Self {
        serde_json::from_value::<CallReport>(v.clone())
            .map(|r| Self::of(&r))
            .unwrap_or_default()
    }
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
    /// Final path of the call ([`call_path`]) -> trials (connected trials only).
    pub final_path: BTreeMap<String, u32>,
    /// Both sides' own final paths, `A-path/B-path` -> trials (connected trials only).
    #[serde(default)]
    pub side_paths: BTreeMap<String, u32>,
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
    fn new(a: NatType, b: NatType, expected: &str, self_check: bool) -> Self {
        CellResult {
            a,
            b,
            expected: expected.to_owned(),
            trials: 0,
            connected: 0,
            final_path: BTreeMap::new(),
            side_paths: BTreeMap::new(),
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
            let side = |s: &SidePaths| s.end.clone().unwrap_or_else(|| "-".into());
            let both = format!("{}/{}", side(&t.a), side(&t.b));
            *self.side_paths.entry(both).or_default() += 1;
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

    /// Trials that failed because the two builds speak different protocol
    /// versions ([`TrialResult::incompatible`]).
    pub fn incompatible(&self) -> u32 {
        self.trial_results
            .iter()
            .filter(|t| t.incompatible.is_some())
            .count() as u32
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
    /// The caller's and the callee's `natter` binaries when they are not
    /// the servers' build (version interop), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<[String; 2]>,
    /// The lab backend the run used (`netns` or `docker`; absent in
    /// results of runs before there was a choice: `netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Every cell.
    pub cells: Vec<CellResult>,
}

pub(crate) const PASSWORD: &str = "natter-lab-password-1";
const SPEECH: &str = "Hello, this is the Natter network lab. One, two, three, four, five. The quick brown fox jumps.";

/// The running servers of a run.
#[derive(Debug)]
pub(crate) struct Servers {
    pub(crate) login_key: PathBuf,
    pub(crate) login_addr: String,
    pub(crate) sn: [String; 2],
    /// The two supernodes' processes.
    pub(crate) sn_procs: [ProcId; 2],
}

pub(crate) fn fmt_err(e: &LabError) -> String {
    let s = e.to_string();
    if s.chars().count() > 2000 {
        format!("{}...", s.chars().take(2000).collect::<String>())
    } else {
        s
    }
}

pub(crate) fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| LabError::io(what, e))
}

/// Makes the speech WAV with espeak-ng (about five seconds).
pub fn make_speech(path: &Path) -> Result<()> {
    let mut c = std::process::Command::new("espeak-ng");
    c.args(["-s", "230", "-w"]).arg(path).arg(SPEECH);
    exec::run(c, None, Duration::from_secs(60))?;
    Ok(())
}

/// Starts the login server and the two supernodes. `auto_approve_users`:
/// the login server certifies the supernodes of promoted clients whose
/// accounts are at least that many seconds old (`--auto-approve-users`;
/// `None`: only the operator's enrolled supernodes).
pub(crate) fn start_servers(
    lab: &mut Lab,
    bins: &Binaries,
    work: &Path,
    auto_approve_users: Option<u64>,
) -> Result<Servers> {
    let lg = lab.add_server("lg", &[lab::LOGIN])?;
    let n1 = lab.add_server("n1", &lab::SN1)?;
    let n2 = lab.add_server("n2", &lab::SN2)?;
    let login_addr = format!("{}:443", lab::LOGIN);
    let login_dir = work.join("login-data");
    io("create login dir", fs::create_dir_all(&login_dir))?;
    let login_dir_s = login_dir.display().to_string();
    let auto_approve = auto_approve_users.map(|secs| secs.to_string());
    let auto_approve_args = auto_approve
        .as_deref()
        .map(|secs| ["--auto-approve-users", secs]);
    let mut login_args = vec![
        "serve",
        "--listen",
        &login_addr,
        "--tcp-listen",
        &login_addr,
        "--data-dir",
        &login_dir_s,
        "--argon2-m-kib",
        "1024",
        "--argon2-t",
        "1",
        // Every cell registers its two users from behind one of six
        // NAT routers, so a whole matrix registers dozens of accounts
        // per source prefix: more than the per-prefix registration
        // budget a public login server gives.
        "--registrations-per-prefix",
        "100000",
    ];
    login_args.extend(auto_approve_args.iter().flatten());
    let login_id = lab.spawn(&lg, "login", &bins.login, &login_args, &[])?;
    let login_key = login_dir.join("login-key.pub");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !login_key.is_file() {
        if let Some(st) = lab.try_wait(login_id) {
            return Err(LabError::Other(format!(
                "natter-login exited ({st}); log:\n{}",
                lab.log_of(login_id)
            )));
        }
        if Instant::now() > deadline {
            return Err(LabError::Other(format!(
                "natter-login did not write {} within 30 s; log:\n{}",
                login_key.display(),
                lab.log_of(login_id)
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let key_s = login_key.display().to_string();
    // The lab's operator enrols each supernode with a one-time token
    // (`natter-login supernodes token`, offline on the data directory):
    // only certified supernodes serve clients and join the overlay.
    let db = login_dir.join("natter-login.db");
    while !db.is_file() {
        if Instant::now() > deadline {
            return Err(LabError::Other(format!(
                "natter-login did not create {} within 30 s",
                db.display()
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let out = io(
            "natter-login supernodes token",
            std::process::Command::new(&bins.login)
                .args(["supernodes", "token", "--data-dir", &login_dir_s])
                .output(),
        )?;
        if !out.status.success() {
            return Err(LabError::Other(format!(
                "natter-login supernodes token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        tokens.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
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
                "--tcp-listen",
                &sn[i],
                "--login",
                &login_addr,
                "--login-key",
                &key_s,
                "--peer",
                &sn[1 - i],
                "--data-dir",
                &dir_s,
                "--enrol",
                &tokens[i],
            ],
            &[],
        )?;
        ids.push((i + 1, id, ns.clone()));
    }
    thread::sleep(Duration::from_millis(1500));
    for (i, id, _) in &ids {
        if let Some(st) = lab.try_wait(*id) {
            return Err(LabError::Other(format!(
                "natter-supernode {i} exited ({st}); log:\n{}",
                lab.log_of(*id)
            )));
        }
    }
    // QUIC needs nothing more; TLS over TCP must really listen (the only way
    // in from behind a udp-blocked firewall)
    wait_tcp_listening(lab, &lg, &login_addr, login_id, "natter-login")?;
    for (i, id, ns) in &ids {
        wait_tcp_listening(lab, ns, &sn[*i - 1], *id, &format!("natter-supernode {i}"))?;
    }
    Ok(Servers {
        login_key,
        login_addr,
        sn,
        sn_procs: [ids[0].1, ids[1].1],
    })
}

/// Waits until process `id` (called `what`) listens on TCP `addr` inside
/// `ns` (`ss -ltn`); fails with its log after 10 s.
fn wait_tcp_listening(lab: &mut Lab, ns: &str, addr: &str, id: ProcId, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab.exec(ns, "ss", &["-Hltn"], &[], Duration::from_secs(5))?;
        let any = addr
            .rsplit_once(':')
            .map(|(_, port)| format!("0.0.0.0:{port}"));
        if out.stdout.lines().any(|l| {
            let local = l.split_whitespace().nth(3);
            local == Some(addr) || local == any.as_deref()
        }) {
            return Ok(());
        }
        if let Some(st) = lab.try_wait(id) {
            return Err(LabError::Other(format!(
                "{what} exited ({st}); log:\n{}",
                lab.log_of(id)
            )));
        }
        if Instant::now() > deadline {
            return Err(LabError::Other(format!(
                "{what} does not listen on TCP {addr} (--tcp-listen) after 10 s; listening: {:?}; log:\n{}",
                out.stdout.trim(),
                lab.log_of(id)
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A call report the client wrote (`--stats-json`).
pub(crate) fn read_report(p: &Path) -> Option<CallReport> {
    CallReport::from_json(&fs::read_to_string(p).ok()?).ok()
}

struct TrialCtx<'a> {
    servers: &'a Servers,
    opts: &'a MatrixOptions,
    speech: &'a Path,
    speech_samples: &'a [i16],
    imp: Impairment,
}

/// What a client or server says when it refuses an envelope of another
/// protocol version (`FrameError::UnsupportedVersion`, passed on in a
/// connection's close reason).
pub const VERSION_REFUSED: &str = "unsupported protocol version";

/// The first line saying a side refused the other's protocol version, in
/// a trial's error, its client logs (`*.log` in `dir`: register, login) or
/// the call's and the answer's logs.
pub fn incompatibility(error: Option<&str>, dir: &Path, logs: &[PathBuf]) -> Option<String> {
    let mut texts: Vec<String> = error.map(str::to_owned).into_iter().collect();
    if let Ok(entries) = fs::read_dir(dir) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        files.sort();
        texts.extend(files.iter().filter_map(|p| fs::read_to_string(p).ok()));
    }
    texts.extend(logs.iter().filter_map(|p| fs::read_to_string(p).ok()));
    texts.iter().find_map(|t| {
        t.lines()
            .find(|l| l.contains(VERSION_REFUSED))
            .map(|l| tail(l.trim(), 300))
    })
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
    let cp = match ctx.opts.promoted_relay.map(|nat| lab.add_client(3, nat)) {
        Some(Ok(c)) => Some(c),
        None => None,
        Some(Err(e)) => {
            let _ = lab.remove_client(&ca);
            let _ = lab.remove_client(&cb);
            return Err(e);
        }
    };
    let mut res = TrialResult {
        trial,
        dir: dir.display().to_string(),
        ..TrialResult::default()
    };
    let outcome = trial_body(lab, ctx, &ca, &cb, cp.as_ref(), &dir, serial, &mut res);
    if let Err(e) = &outcome {
        res.error = Some(fmt_err(e));
    }
    let expected = ctx.opts.expected_path(a, b);
    res.passed = res.connected && res.path_end.as_deref() == Some(expected);
    let tag = format!("t{serial}");
    let logs = [
        lab.log_path(&format!("{tag}-a-call")),
        lab.log_path(&format!("{tag}-b-answer")),
    ];
    res.incompatible = incompatibility(res.error.as_deref(), &dir, &logs);
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
    let r3 = cp.map_or(Ok(()), |c| lab.remove_client(&c));
    r1?;
    r2?;
    r3?;
    res.secs = t0.elapsed().as_secs_f64();
    Ok(res)
}

#[allow(clippy::too_many_arguments)]
fn trial_body(
    lab: &mut Lab,
    ctx: &TrialCtx<'_>,
    ca: &Client,
    cb: &Client,
    cp: Option<&Client>,
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
            &[
                "-i",
                "wan0",
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "256",
                "-w",
                &ps,
            ],
            &[],
        )?;
        caps.push((id, p));
    }
    for (id, _) in &caps {
        lab.wait_for_log(*id, "listening on", Duration::from_secs(10))?;
    }
    let [client_a, client_b] = ctx.opts.clients();
    let s = ctx.servers;
    let key = s.login_key.display().to_string();
    let env = [("NATTER_PASSWORD", PASSWORD)];
    let name_a = format!("lab{serial}a");
    let name_b = format!("lab{serial}b");
    let home_a = dir.join("home-a").display().to_string();
    let home_b = dir.join("home-b").display().to_string();
    // the promoted relay first: promoted before A and B log in
    let promoted = match cp {
        Some(cp) => Some(promote_relay(lab, ctx, cp, dir, serial, res)?),
        None => None,
    };
    // register + login, both sides
    for (c, client, home, name) in [
        (ca, client_a, &home_a, &name_a),
        (cb, client_b, &home_b, &name_b),
    ] {
        register_and_login(lab, s, c, client, home, name, dir)?;
    }
    let without_host_cache = |home: &str| {
        let _ = fs::remove_file(Path::new(home).join("hostcache.txt"));
    };
    if let (Some((_, addr)), Some(p)) = (&promoted, res.promoted.as_mut()) {
        // The login server lists the certified promoted node: A's login
        // put it into A's host cache.
        let cache = fs::read_to_string(Path::new(&home_a).join("hostcache.txt"));
        p.in_host_cache = cache.is_ok_and(|c| {
            c.lines()
                .any(|l| l.split_whitespace().next() == Some(addr.as_str()))
        });
        // A searches for the promoted client's user (online through an
        // operator supernode), joined through the promoted node only.
        without_host_cache(&home_a);
        let name_p = promoted_name(serial);
        let out = lab.exec_unchecked(
            &ca.host_ns,
            client_a,
            &[
                "--home",
                &home_a,
                "--login-key",
                &key,
                "--bootstrap",
                addr,
                "search",
                &name_p,
            ],
            &env,
            Duration::from_secs(30),
        )?;
        let _ = fs::write(
            dir.join(format!("{name_a}-search.log")),
            format!("{}\n{}", out.stdout, out.stderr),
        );
        p.search = Some(if out.status.success() {
            out.stdout.trim().to_owned()
        } else {
            format!("failed ({}): {}", out.status, out.stderr.trim())
        });
    }
    // B answers, A calls
    let (sn_a, sn_b) = match &promoted {
        Some((_, addr)) => (addr, addr),
        None if ctx.opts.same_supernode => (&s.sn[0], &s.sn[0]),
        None => (&s.sn[0], &s.sn[1]),
    };
    // Where each side joins matters for these runs (the supernode to kill
    // must be the one they joined): an empty host cache makes the join
    // take the bootstrap address (the login seeded the cache with every
    // supernode; the join fills it again, for the alternates).
    if ctx.opts.same_supernode || ctx.opts.kill_supernode_after_s.is_some() || promoted.is_some() {
        for home in [&home_a, &home_b] {
            without_host_cache(home);
        }
    }
    let b_duration = ctx.opts.callee_secs.map(|s| s.to_string());
    let mut b_args = vec![
        "--home",
        home_b.as_str(),
        "--login-key",
        key.as_str(),
        "--bootstrap",
        sn_b.as_str(),
        "answer",
    ];
    if let Some(d) = &b_duration {
        b_args.extend(["--duration", d.as_str()]);
    }
    let b_out = dir.join("b-heard.wav");
    let b_stats = dir.join("b-stats.json");
    let a_out = dir.join("a-heard.wav");
    let a_stats = dir.join("a-stats.json");
    let (b_out_s, b_stats_s) = (b_out.display().to_string(), b_stats.display().to_string());
    let (a_out_s, a_stats_s) = (a_out.display().to_string(), a_stats.display().to_string());
    b_args.extend([
        "--audio-out",
        b_out_s.as_str(),
        "--calls",
        "1",
        "--stats-json",
        b_stats_s.as_str(),
    ]);
    let answer = lab.spawn(
        &cb.host_ns,
        &format!("{tag}-b-answer"),
        client_b,
        &b_args,
        &env,
    )?;
    // let B join its supernode (behind a udp-blocked firewall that includes
    // finding out that UDP does not work) and its presence spread
    let b_started = Instant::now();
    if let Err(e) = lab.wait_for_log(answer, "waiting for calls", Duration::from_secs(30)) {
        return Err(LabError::Other(format!(
            "`natter answer` did not get ready: {}",
            fmt_err(&e)
        )));
    }
    thread::sleep(Duration::from_secs(2).saturating_sub(b_started.elapsed()));
    let speech = ctx.speech.display().to_string();
    let dur = format!(
        "{:.3}",
        f64::from(ctx.opts.call_secs) + CALL_TAIL_MS as f64 / 1000.0
    );
    let call = lab.spawn(
        &ca.host_ns,
        &format!("{tag}-a-call"),
        client_a,
        &[
            "--home",
            &home_a,
            "--login-key",
            &key,
            "--bootstrap",
            sn_a,
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
    // mid-call changes to router A (its namespace goes away with the trial)
    let call_started = Instant::now();
    for (after, change) in ctx.opts.mid_call() {
        let at = Duration::from_secs(u64::from(after));
        thread::sleep(at.saturating_sub(call_started.elapsed()));
        if lab.try_wait(call).is_some() {
            break; // the call is over already
        }
        let at = call_started.elapsed();
        match (change, change.nft_script(&[cb.wan_ip, cb.host_ip])) {
            (_, Some(script)) => lab.nft(&ca.router_ns, &script)?,
            (MidCall::StopPromoted, None) => {
                if let Some((online, _)) = &promoted {
                    stop_promoted(lab, *online, res);
                }
            }
            (_, None) => {
                lab.stop(s.sn_procs[0], "KILL", Duration::from_secs(2));
            }
        }
        res.events
            .push(format!("{} at {:.1} s", change.name(), at.as_secs_f64()));
    }
    let call_status = lab.wait(
        call,
        Duration::from_secs(u64::from(ctx.opts.call_secs) + 45),
    );
    let answer_status = lab.wait(answer, Duration::from_secs(20));
    let sa = read_report(&a_stats);
    let sb = read_report(&b_stats);
    res.a = sa.as_ref().map(SidePaths::of).unwrap_or_default();
    res.b = sb.as_ref().map(SidePaths::of).unwrap_or_default();
    res.path_start = call_path(res.a.start.as_deref(), res.b.start.as_deref());
    res.path_end = call_path(res.a.end.as_deref(), res.b.end.as_deref());
    res.switches = res.a.switches.clone();
    res.call_duration_s = sa.as_ref().map(|r| r.duration_s);
    res.b_duration_s = sb.as_ref().map(|r| r.duration_s);
    res.b_ended_by_peer = sb.as_ref().map(|r| r.ended_by_peer);
    res.a_ended_by_peer = sa.as_ref().map(|r| r.ended_by_peer);
    res.b_max_media_gap_ms = sb.as_ref().map(|r| r.max_media_gap_ms);
    for (i, r) in [&sa, &sb].into_iter().enumerate() {
        if let Some(r) = r {
            res.relay_migrations[i] = r.relay_migrations;
            res.rejoins[i] = r.rejoins;
            res.signaling[i] = Some(r.signaling.clone());
        }
    }
    let first_audio = |r: &CallReport| r.first_audio_ms.map(|v| v as f64);
    res.first_audio_ms = sb
        .as_ref()
        .and_then(first_audio)
        .or_else(|| sa.as_ref().and_then(first_audio));
    res.packets_lost = sb.as_ref().map(|r| r.packets_lost as f64);
    res.media_packets_received = sb.as_ref().map(|r| r.media_packets_received as f64);
    res.jitter_ms = sb.as_ref().map(|r| r.jitter_ms);
    res.late_loss_pct = sb.as_ref().map(|r| r.late_loss_pct);
    res.jb_added_p50_ms = sb.as_ref().and_then(|r| r.jb_added_delay_p50_ms);
    res.jb_added_p95_ms = sb.as_ref().and_then(|r| r.jb_added_delay_p95_ms);
    res.mos_estimate = sb.as_ref().map(|r| r.mos_estimate);
    res.mean_udp_payload = sa.as_ref().map(|r| r.mean_udp_payload);
    if let Ok(heard) = natter_media::wav::read_mono_48k(&b_out) {
        let sc = natter_media::score::compare(ctx.speech_samples, &heard, 3000);
        res.audio_match = Some(sc.envelope);
        res.audio_waveform = Some(sc.waveform);
        res.audio_lag_ms = Some(sc.lag_ms);
        if let Some(from_s) = ctx.opts.late_audio_from_s() {
            res.audio_match_late = Some(late_audio_match(ctx.speech_samples, &heard, from_s));
        }
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

/// `natter register NAME` and `natter login NAME` on client `c`'s host
/// (their output in `dir/NAME-STEP.log`).
pub(crate) fn register_and_login(
    lab: &Lab,
    s: &Servers,
    c: &Client,
    client: &Path,
    home: &str,
    name: &str,
    dir: &Path,
) -> Result<()> {
    let key = s.login_key.display().to_string();
    for step in ["register", "login"] {
        let out = lab.exec_unchecked(
            &c.host_ns,
            client,
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
            &[("NATTER_PASSWORD", PASSWORD)],
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
    Ok(())
}

/// The user name of trial `serial`'s promoted client.
fn promoted_name(serial: u32) -> String {
    format!("lab{serial}p")
}

/// What `natter online` prints once its supernode is certified.
const SERVING: &str = "supernode: promoted, serving at ";
/// Longest wait for the promotion (`--promote-after 2`, then the netcheck
/// and the certificate).
const PROMOTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a promoted client has to step down and exit after SIGTERM.
const STEP_DOWN_GRACE: Duration = Duration::from_secs(10);

/// The promoted relay of a trial: client `cp` registers and logs in, stays
/// online through supernode 1 with `--promote-after 2` and is promoted; its
/// `natter online` process and its supernode's address. Fills
/// [`TrialResult::promoted`].
fn promote_relay(
    lab: &mut Lab,
    ctx: &TrialCtx<'_>,
    cp: &Client,
    dir: &Path,
    serial: u32,
    res: &mut TrialResult,
) -> Result<(ProcId, String)> {
    let s = ctx.servers;
    let client = &ctx.opts.bins.client;
    let name = promoted_name(serial);
    let home = dir.join("home-p").display().to_string();
    register_and_login(lab, s, cp, client, &home, &name, dir)?;
    let key = s.login_key.display().to_string();
    let online = lab.spawn(
        &cp.host_ns,
        &format!("t{serial}-p-online"),
        client,
        &[
            "--home",
            &home,
            "--login",
            &s.login_addr,
            "--login-key",
            &key,
            "--bootstrap",
            &s.sn[0],
            "online",
            "--promote-after",
            "2",
            // this shared machine's load says nothing about the lab
            "--promote-max-load",
            "1000",
            "--promote-port",
            "443",
            "--promote-tcp-port",
            "443",
        ],
        &[("NATTER_PASSWORD", PASSWORD)],
    )?;
    let mut p = PromotedRelay {
        nat: Some(cp.nat),
        ..PromotedRelay::default()
    };
    lab.wait_for_log(online, "online as", Duration::from_secs(30))?;
    let online_at = Instant::now();
    p.joined_via = line_with(&lab.log_of(online), "online as ")
        .and_then(|l| l.rsplit(' ').next().map(str::to_owned));
    res.promoted = Some(p.clone());
    lab.wait_for_log(online, SERVING, PROMOTION_TIMEOUT)?;
    p.promoted_after_ms = Some(u64::try_from(online_at.elapsed().as_millis()).unwrap_or(u64::MAX));
    let addr = line_with(&lab.log_of(online), SERVING)
        .and_then(|l| {
            l.split(SERVING)
                .nth(1)?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .ok_or_else(|| LabError::Other(format!("no address in the `{SERVING}` line")))?;
    p.addr = Some(addr.clone());
    res.promoted = Some(p);
    Ok((online, addr))
}

/// [`MidCall::StopPromoted`]: SIGTERM to the promoted client's `natter
/// online`; waits for it to step down and exit.
fn stop_promoted(lab: &mut Lab, online: ProcId, res: &mut TrialResult) {
    let status = lab.stop(online, "TERM", STEP_DOWN_GRACE);
    if let Some(p) = res.promoted.as_mut() {
        p.exit_ok = status.map(|s| s.success());
        p.stepped_down = lab
            .log_of(online)
            .lines()
            .filter(|l| l.contains("supernode: stepped down"))
            .map(str::to_owned)
            .collect();
    }
}

/// The first line of `log` containing `needle`.
fn line_with<'a>(log: &'a str, needle: &str) -> Option<&'a str> {
    log.lines().find(|l| l.contains(needle))
}

/// Envelope correlation of what B heard with the speech A sent, from
/// `from_s` seconds of the speech on. B's recording is continuous once it
/// started (lost frames are concealed, not skipped), so sample `i` of the
/// speech is near sample `i + lag` of the recording, with a lag that can be
/// negative when A's first frames never arrived: the recording is cut 1 s
/// earlier than the speech.
pub fn late_audio_match(sent: &[i16], heard: &[i16], from_s: u32) -> f64 {
    const RATE: usize = 48_000;
    let from = from_s as usize * RATE;
    if from >= sent.len() {
        return 0.0;
    }
    let heard_from = from.saturating_sub(RATE).min(heard.len());
    natter_media::score::compare(&sent[from..], &heard[heard_from..], 3000).envelope
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
    if let Some(b) = &r.backend {
        let _ = writeln!(s, "Lab backend: `{b}`.\n");
    }
    if let Some([a, b]) = &r.clients {
        let _ = writeln!(
            s,
            "Version interop: the caller runs `{a}`, the callee `{b}`; the servers are this build.\n"
        );
    }
    let _ = writeln!(
        s,
        "Cell: connected/trials, final path(s) of the call (A/B: each side's own, where they differ); `!` = not as expected (expected path in brackets); INCOMPATIBLE = a side refused the other's protocol version (the builds do not talk; not a NAT failure). Rows: caller A, columns: callee B.\n"
    );
    let types: Vec<NatType> = NatType::ALL
        .iter()
        .chain(NatType::EXTRA.iter())
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
                    // each side's own path where the two differ
                    let differ: Vec<String> = c
                        .side_paths
                        .iter()
                        .filter(|(p, _)| p.split('/').collect::<BTreeSet<_>>().len() > 1)
                        .map(|(p, n)| format!("{p}×{n}"))
                        .collect();
                    let paths = if differ.is_empty() {
                        paths
                    } else {
                        format!("{paths} (A/B {})", differ.join(" "))
                    };
                    let mark = if !c.self_check {
                        " SELF-CHECK FAILED"
                    } else if c.incompatible() > 0 {
                        " INCOMPATIBLE"
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
        "\nFinal path of a call: the less direct of the two sides' own final paths (direct < hole-punched < relayed < tcp-relay); \
         \"A / B paths\" lists each side's own. First audio: at B, from the invite reaching B (B's call report).\n"
    );
    let _ = writeln!(
        s,
        "| A | B | expected | connected | final path | A / B paths | first audio p50/p95 ms | audio match min | self-check |\n|---|---|---|---|---|---|---|---|---|"
    );
    for c in &r.cells {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}/{}{} | {:?} | {} | {} / {} | {} | {} |",
            c.a,
            c.b,
            c.expected,
            c.connected,
            c.trials,
            match c.incompatible() {
                0 => String::new(),
                n => format!(" ({n} INCOMPATIBLE)"),
            },
            c.final_path,
            if c.side_paths.is_empty() {
                "-".to_owned()
            } else {
                c.side_paths
                    .iter()
                    .map(|(p, n)| format!("{p}×{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            opt(c.first_audio_ms.p50, 0),
            opt(c.first_audio_ms.p95, 0),
            opt(c.audio_match.min, 2),
            if c.self_check { "ok" } else { "FAILED" }
        );
    }
    if let Some(summary) = udp_blocked_summary(r) {
        let _ = writeln!(s, "\n## udp-blocked rows and columns\n\n{summary}");
    }
    let events: Vec<String> = r
        .cells
        .iter()
        .flat_map(|c| {
            c.trial_results
                .iter()
                .filter(|t| !t.events.is_empty())
                .map(move |t| {
                    format!(
                        "- {} x {} #{}: {}; A {} -> {} (switches {}), B {} -> {}; late audio match {}; call A {} s, B {} s (B told of the hang-up: {})",
                        c.a,
                        c.b,
                        t.trial,
                        t.events.join(", "),
                        t.a.start.as_deref().unwrap_or("-"),
                        t.a.end.as_deref().unwrap_or("-"),
                        t.a.switches.join(" > "),
                        t.b.start.as_deref().unwrap_or("-"),
                        t.b.end.as_deref().unwrap_or("-"),
                        opt(t.audio_match_late, 2),
                        opt(t.call_duration_s, 1),
                        opt(t.b_duration_s, 1),
                        t.b_ended_by_peer.map_or("-", |e| if e { "yes" } else { "no" })
                    )
                })
        })
        .collect();
    if !events.is_empty() {
        let _ = writeln!(s, "\n## Mid-call changes\n");
        for e in events {
            let _ = writeln!(s, "{e}");
        }
    }
    let promoted: Vec<String> = r
        .cells
        .iter()
        .flat_map(|c| {
            c.trial_results.iter().filter_map(move |t| {
                let p = t.promoted.as_ref()?;
                Some(format!(
                    "- {} x {} #{}: {} client promoted, serving at {} {} ms after joining via {}; in A's host cache: {}; A's search through it: {}; relays A {}, B {}; step-down: {} (exit ok: {})",
                    c.a,
                    c.b,
                    t.trial,
                    p.nat.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    p.addr.as_deref().unwrap_or("-"),
                    p.promoted_after_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
                    p.joined_via.as_deref().unwrap_or("-"),
                    if p.in_host_cache { "yes" } else { "no" },
                    p.search.as_deref().unwrap_or("-"),
                    t.a.relays.join(" > "),
                    t.b.relays.join(" > "),
                    if p.stepped_down.is_empty() {
                        "-".to_owned()
                    } else {
                        p.stepped_down.join(", ")
                    },
                    p.exit_ok.map_or("-", |ok| if ok { "yes" } else { "no" })
                ))
            })
        })
        .collect();
    if !promoted.is_empty() {
        let _ = writeln!(s, "\n## Promoted relay\n");
        for p in promoted {
            let _ = writeln!(s, "{p}");
        }
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

/// The cells with a udp-blocked side at a glance (None if the run has
/// none): trials connected, over the expected path, first audio p50/p95 over
/// all their connected trials and the worst cell's p50, against the
/// fallback's target (every trial connects, first audio p50 < 1.5 s).
pub fn udp_blocked_summary(r: &MatrixReport) -> Option<String> {
    let cells: Vec<&CellResult> = r
        .cells
        .iter()
        .filter(|c| c.a == NatType::UdpBlocked || c.b == NatType::UdpBlocked)
        .collect();
    if cells.is_empty() {
        return None;
    }
    let trials: u32 = cells.iter().map(|c| c.trials).sum();
    let connected: u32 = cells.iter().map(|c| c.connected).sum();
    let passed: u32 = cells.iter().map(|c| c.passed()).sum();
    let fa: Vec<f64> = cells
        .iter()
        .flat_map(|c| c.trial_results.iter())
        .filter(|t| t.connected)
        .filter_map(|t| t.first_audio_ms)
        .collect();
    let all = Percentiles::of(&fa);
    let worst = cells
        .iter()
        .filter_map(|c| Some((c, c.first_audio_ms.p50?)))
        .max_by(|x, y| x.1.total_cmp(&y.1));
    let met = trials > 0 && connected == trials && all.p50.is_some_and(|p| p < 1500.0);
    Some(format!(
        "{} cells: {connected}/{trials} trials connected, {passed} over the expected path; \
         first audio p50 {} ms, p95 {} ms{}; target (100 % connected, first audio p50 < 1500 ms): {}",
        cells.len(),
        opt(all.p50, 0),
        opt(all.p95, 0),
        worst
            .map(|(c, p)| format!(" (worst cell p50: {} x {} {p:.0} ms)", c.a, c.b))
            .unwrap_or_default(),
        if met { "met" } else { "NOT met" }
    ))
}

/// The colour of a cell of the matrix grid: every trial over the expected
/// path: that path's colour (`natter_plot::path_colour`, the same as in
/// call timelines); some trial not (failed, or another path): red; a NAT
/// router that failed its self-check: grey (the cell says nothing).
pub fn cell_colour(c: &CellResult) -> &'static str {
    if !c.self_check {
        SELF_CHECK_FAILED_COLOUR
    } else if c.trials == 0 || c.passed() < c.trials {
        NOT_AS_EXPECTED_COLOUR
    } else {
        PathKind::from_name(&c.expected).map_or(NOT_AS_EXPECTED_COLOUR, natter_plot::path_colour)
    }
}

/// The grid's colour for a cell with a trial not as expected.
pub const NOT_AS_EXPECTED_COLOUR: &str = "#d73027";
/// The grid's colour for a cell whose routers failed the self-check.
pub const SELF_CHECK_FAILED_COLOUR: &str = "#bdbdbd";

/// The matrix as a coloured SVG grid (`matrix.svg` next to `matrix.md`):
/// rows are the caller's NAT, columns the callee's; each cell says
/// connected/trials, the final path and the median time to first audio,
/// and carries them in `data-*` attributes.
pub fn matrix_svg(r: &MatrixReport) -> String {
    let types: Vec<NatType> = NatType::ALL
        .iter()
        .chain(NatType::EXTRA.iter())
        .copied()
        .filter(|t| r.cells.iter().any(|c| c.a == *t || c.b == *t))
        .collect();
    let names: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    let index = |t: NatType| types.iter().position(|x| *x == t).unwrap_or(0);
    let cells = r
        .cells
        .iter()
        .map(|c| {
            let paths = if c.final_path.is_empty() {
                "-".to_owned()
            } else {
                c.final_path
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            let audio = c
                .first_audio_ms
                .p50
                .map_or_else(|| "no audio".to_owned(), |v| format!("audio {v:.0} ms"));
            let mark = if !c.self_check {
                " (self-check failed)"
            } else if c.passed() == c.trials && c.trials > 0 {
                ""
            } else {
                " (not as expected)"
            };
            natter_plot::GridCell {
                row: index(c.a),
                col: index(c.b),
                fill: cell_colour(c).to_owned(),
                lines: vec![
                    format!("{}/{}", c.connected, c.trials),
                    paths.clone(),
                    audio.clone(),
                ],
                title: format!(
                    "{} calls {}: {}/{} connected, {} over the expected path ({}); final path {paths}; first audio p50 {}{mark}",
                    c.a,
                    c.b,
                    c.connected,
                    c.trials,
                    c.passed(),
                    c.expected,
                    c.first_audio_ms
                        .p50
                        .map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms")),
                ),
                data: vec![
                    ("expected".into(), c.expected.clone()),
                    ("trials".into(), c.trials.to_string()),
                    ("connected".into(), c.connected.to_string()),
                    ("passed".into(), c.passed().to_string()),
                    ("final-path".into(), paths),
                ],
            }
        })
        .collect();
    let mut legend: Vec<(String, String)> = [
        PathKind::Direct,
        PathKind::HolePunched,
        PathKind::Relayed,
        PathKind::TcpRelay,
    ]
    .iter()
    .map(|k| (k.name().to_owned(), natter_plot::path_colour(*k).to_owned()))
    .collect();
    legend.push(("not as expected".into(), NOT_AS_EXPECTED_COLOUR.into()));
    legend.push(("self-check failed".into(), SELF_CHECK_FAILED_COLOUR.into()));
    let trials: u32 = r.cells.iter().map(|c| c.trials).sum();
    let passed: u32 = r.cells.iter().map(CellResult::passed).sum();
    natter_plot::grid(&natter_plot::Grid {
        title: format!("NAT matrix (profile {})", r.profile),
        subtitle: format!(
            "{} cells, {passed}/{trials} trials over the expected path. Cell: connected/trials, final path, median time to first audio.",
            r.cells.len()
        ),
        row_axis: "caller A".into(),
        col_axis: "callee B".into(),
        rows: names.clone(),
        cols: names,
        cells,
        legend,
    })
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
        "write matrix.svg",
        fs::write(out.join("matrix.svg"), matrix_svg(r)),
    )?;
    io(
        "write progress.md",
        fs::write(out.join("progress.md"), progress),
    )?;
    Ok(())
}

/// Runs the matrix; writes `results.json`, `matrix.md`, `matrix.svg` and `progress.md`
/// (updated after every trial) into `opts.out`. Fails if the lab cannot be
/// built or a NAT type fails its self-check (after writing the results).
pub fn run_matrix(opts: &MatrixOptions) -> Result<MatrixReport> {
    lab::check_prereqs(&["tcpdump", "espeak-ng", "ss"])?;
    let imp = Impairment::profile(&opts.profile).map_err(LabError::Other)?;
    io(
        "create output dir",
        fs::create_dir_all(opts.out.join("work")),
    )?;
    let speech = opts.out.join("speech.wav");
    make_speech(&speech)?;
    let mut speech_samples = natter_media::wav::read_mono_48k(&speech)
        .map_err(|e| LabError::Other(format!("read speech: {e}")))?;
    // Calls longer than the sample (plus a second) get it repeated, so that
    // A speaks all the time, also after a mid-call change; cut to the call's
    // length, so that it is exactly what A sends.
    let call_len = opts.call_secs as usize * 48_000;
    if call_len > speech_samples.len() + 48_000 {
        let once = speech_samples.clone();
        while speech_samples.len() < call_len {
            speech_samples.extend(std::iter::repeat_n(0, 24_000));
            speech_samples.extend_from_slice(&once);
        }
        speech_samples.truncate(call_len);
        natter_media::wav::write_mono_48k(&speech, &speech_samples)
            .map_err(|e| LabError::Other(format!("write speech: {e}")))?;
    }
    eprintln!(
        "speech: {} ({:.1} s)",
        speech.display(),
        speech_samples.len() as f64 / 48_000.0
    );
    let mut cfg = LabConfig::new(&opts.probe_exe);
    cfg.work_dir = opts.out.join("work").join("logs");
    cfg.map_timeout_s = opts.map_timeout_s;
    cfg.backend = opts.backend;
    if opts.backend == Backend::Docker {
        if !opts.out.is_absolute() {
            return Err(LabError::Other(format!(
                "the docker backend needs an absolute output directory, not {}",
                opts.out.display()
            )));
        }
        cfg.docker = opts.docker.clone();
        cfg.docker.mounts.extend(opts.docker_mounts());
    }
    let mut lab = Lab::new(cfg)?;

    // self-check every NAT type used (the promoted relay's too), before
    // any trial
    let types: Vec<NatType> = opts
        .cells
        .iter()
        .flat_map(|(a, b)| [*a, *b])
        .chain(opts.promoted_relay)
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

    // A promoted client's supernode is certified by the login server's
    // policy for users (any account age: the lab's accounts are new).
    let auto_approve = opts.promoted_relay.map(|_| 0);
    let servers = start_servers(&mut lab, &opts.bins, &opts.out.join("work"), auto_approve)?;
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
        clients: (opts.client_a.is_some() || opts.client_b.is_some()).then(|| {
            let [a, b] = opts.clients().map(|c| c.display().to_string());
            [(1, a), (2, b)].map(|(i, c)| match opts.docker.host_images.get(&i) {
                Some(image) if opts.backend == Backend::Docker => format!("{c} of image {image}"),
                _ => c,
            })
        }),
        backend: Some(opts.backend.name().to_owned()),
        cells: Vec::new(),
    };
    let total_cells = opts.cells.len();
    let mut serial = 0;
    let (mut n_conn, mut n_pass, mut n_run) = (0u32, 0u32, 0u32);
    let started = Instant::now();
    for (ci, (a, b)) in opts.cells.iter().copied().enumerate() {
        let ok = [Some(a), Some(b), opts.promoted_relay]
            .iter()
            .flatten()
            .all(|t| good.contains(t));
        report
            .cells
            .push(CellResult::new(a, b, opts.expected_path(a, b), ok));
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
                "[cell {}/{total_cells} trial {trial}/{}] {a} x {b}: {} path={} (A {}, B {}) expected={} first_audio={}ms match={}{} loss={} jitter={}ms ({:.1}s){}",
                ci + 1,
                opts.trials,
                if t.connected {
                    "connected"
                } else if t.incompatible.is_some() {
                    "INCOMPATIBLE (protocol version)"
                } else {
                    "NOT connected"
                },
                t.path_end.as_deref().unwrap_or("-"),
                t.a.end.as_deref().unwrap_or("-"),
                t.b.end.as_deref().unwrap_or("-"),
                opts.expected_path(a, b),
                opt(t.first_audio_ms, 0),
                opt(t.audio_match, 2),
                t.audio_match_late
                    .map(|m| format!(" late_match={m:.2}"))
                    .unwrap_or_default(),
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
