//! Relay bench (issue 15): relayed packets per second per core of the
//! supernode's media relay, measured the way `../shared/bench/relay/`
//! measures coturn, so the two can be compared as a ratio in one run.
//!
//! * The `natter-supernode` binary (built by cargo for this bench) runs as a
//!   child process pinned to the server core (`taskset -c 1`); this process
//!   pins itself to the load core (`taskset -c 0`, by re-executing itself).
//! * N calls are set up through the real control protocol: two users join
//!   over QUIC, the caller invites, the callee rings, both send
//!   `RelayAllocate` (each gets its own side's token). The signaling
//!   sessions are closed once the allocations exist (allocations live on
//!   their traffic; `--relay-lifetime 3600` keeps the idle ones of larger
//!   steps alive meanwhile), so only the relay's work is measured. Requests
//!   come from one loopback /24 per 60 calls (the relay allows 64
//!   allocations per source prefix).
//! * Each side of each call is its own UDP address (127.1.x.y, one port: the
//!   load generator owns one wildcard socket and picks the source IP per
//!   datagram). Every side binds as a client does: a bind without cookie,
//!   the reply's cookie echoed in a second bind.
//! * Media: every side sends a 61-byte SoM `Data` datagram every 20 ms
//!   (50 packets/s each way, 100 relayed packets/s per call, one receive and
//!   one send in the relay each, like one coturn "relayed packet"), evenly
//!   spread in time. The payload carries the side, a sequence number and the
//!   send time: the receiver counts loss and the added latency (one way,
//!   loopback, load generator included).
//! * For each N of `NATTER_RELAY_CALLS` (upward, stopping after the first
//!   step at or over 0.5 % loss): warm-up, then a measured window: relayed
//!   packets/s received, loss of the datagrams sent in the window, the
//!   server's CPU from `/proc/<pid>/task/*/schedstat` (exact run time of all
//!   its threads) and of `ksoftirqd/<server core>`, the server core's busy
//!   share (from the idle column of /proc/stat), and latency p50/p99.
//!
//! Run: `cargo bench -p natter-supernode --bench relay` (the side-by-side
//! script is `supernode/benches/relay-vs-coturn.sh`). Environment (defaults
//! in brackets):
//!
//! - `NATTER_RELAY_CALLS` [500,1000,1500,2000,2500,3000]: call counts;
//! - `NATTER_RELAY_WINDOW_SECS` [20]: measured window per step;
//! - `NATTER_RELAY_WARMUP_SECS` [3]: traffic before the window;
//! - `NATTER_RELAY_SERVER_CORE` [1], `NATTER_RELAY_LOAD_CORE` [0];
//! - `NATTER_RELAY_ALL_STEPS` [0]: 1 = do not stop at the first failing step;
//! - `NATTER_RELAY_TARGET` [natter]: `bare` = relay through the bare
//!   forwarder of `bare.rs` instead of a supernode (no signaling, no binds):
//!   the practical limit of the server core, with the same load generator;
//! - `NATTER_RELAY_RT` [0]: 1 = once the calls are set up, put the server
//!   and the load generator under SCHED_FIFO 20 (`chrt`, needs root): on a
//!   machine busy with other work
//!   the pinned processes are otherwise starved and the relay socket
//!   overflows while the relay is idle. Compare with coturn under the same
//!   policy (`relay-vs-coturn.sh` does with `NATTER_RELAY_RT=1`).
//!
//! Without `--bench` (`cargo test --benches`) it is a smoke run of 8 calls
//! for a second, unpinned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bare;
#[path = "../common/mod.rs"]
mod common;

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use natter_client::supernode::SupernodeSession;
use natter_net::TransportSettings;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    CallInvite, CallSignal, RelayAllocate, RelayAllocated, call_signal::Kind,
};
use natter_proto::relay::{self as wire, BindStatus};
use natter_proto::som::{Function, Header};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use rsa::pkcs8::{EncodePublicKey, LineEnding};

use common::{Keys, ServerProcess, env_or, spawn_server};
use tokio::process::Command;

/// Bytes of one media datagram (SoM header included), as a real call sends.
const DATAGRAM: usize = 61;
/// Packets per second each side sends.
const PPS: u64 = 50;
/// Calls per requesting /24 (the relay allows 64 allocations per prefix).
const CALLS_PER_PREFIX: usize = 60;
/// Latency histogram: 1 us buckets up to this many.
const HIST_US: usize = 200_000;
/// A step passes under this loss (percent).
const MAX_LOSS: f64 = 0.5;
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
struct Settings {
    calls: Vec<usize>,
    window: Duration,
    warmup: Duration,
    server_core: usize,
    load_core: usize,
    all_steps: bool,
    realtime: bool,
    quick: bool,
    target: Target,
}

/// What relays the load: the supernode, or the bare forwarder (`bare.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Natter,
    Bare,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Natter => "natter",
            Target::Bare => "bare",
        }
    }
}

impl Settings {
    fn from_env(quick: bool) -> Self {
        let calls = std::env::var("NATTER_RELAY_CALLS").unwrap_or_else(|_| {
            if quick {
                "8".into()
            } else {
                "500,1000,1500,2000,2500,3000".into()
            }
        });
        let mut calls: Vec<usize> = calls
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().expect("NATTER_RELAY_CALLS: counts"))
            .filter(|&n| n > 0)
            .collect();
        calls.sort_unstable();
        calls.dedup();
        Self {
            calls,
            window: Duration::from_secs(env_or(
                "NATTER_RELAY_WINDOW_SECS",
                if quick { 1 } else { 20 },
            )),
            warmup: Duration::from_secs(env_or(
                "NATTER_RELAY_WARMUP_SECS",
                if quick { 1 } else { 3 },
            )),
            server_core: env_or("NATTER_RELAY_SERVER_CORE", 1),
            load_core: env_or("NATTER_RELAY_LOAD_CORE", 0),
            all_steps: env_or("NATTER_RELAY_ALL_STEPS", 0u8) == 1,
            realtime: env_or("NATTER_RELAY_RT", 0u8) == 1,
            quick,
            target: match std::env::var("NATTER_RELAY_TARGET").as_deref() {
                Ok("bare") => Target::Bare,
                Ok("natter") | Err(_) => Target::Natter,
                Ok(other) => panic!("NATTER_RELAY_TARGET: natter or bare, not {other:?}"),
            },
        }
    }
}

// ------------------------------------------------------------------ identities

// ------------------------------------------------------------------ the supernode

async fn start_supernode(settings: &Settings, keys: &Keys, dir: &std::path::Path) -> ServerProcess {
    // The login server: a loopback port held and never read (the supernode
    // certifies itself with the test issuer's key).
    let login_sink = UdpSocket::bind("127.0.0.1:0").expect("bind login sink");
    let login = login_sink.local_addr().unwrap();
    std::mem::forget(login_sink);
    let key_path = dir.join("login-key.pub");
    let pem = keys
        .issuer
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&key_path, pem).unwrap();
    let issuer_path = format!(
        "{}/../proto/tests/vectors/issuer.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let binary = std::env::var("NATTER_RELAY_SUPERNODE")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_natter-supernode").to_owned());
    let mut command = server_command(settings, &binary);
    command
        .args(["--listen", "127.0.0.1:0", "--relay-lifetime", "3600"])
        .arg("--login")
        .arg(login.to_string())
        .arg("--login-key")
        .arg(&key_path)
        .arg("--issuer-key")
        .arg(&issuer_path)
        .env("RUST_LOG", "warn");
    spawn_server(command, &binary).await
}

/// The bare forwarder: this bench's own binary with [`bare::ARG`].
async fn start_bare(settings: &Settings) -> ServerProcess {
    let exe = std::env::current_exe().expect("current exe");
    let exe = exe.to_string_lossy().into_owned();
    let mut command = server_command(settings, &exe);
    command.arg(bare::ARG).env_remove("NATTER_RELAY_PINNED");
    spawn_server(command, "the bare forwarder").await
}

/// `program`, pinned to the server core unless this is the smoke run.
fn server_command(settings: &Settings, program: &str) -> Command {
    if settings.quick {
        Command::new(program)
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", &settings.server_core.to_string(), program]);
        c
    }
}

// ------------------------------------------------------------------ calls

/// One relayed call: the relay's address and each side's token.
#[derive(Debug, Clone, Copy)]
struct Call {
    relay: SocketAddr,
    tokens: [[u8; 16]; 2],
}

fn signal(invite: &[u8], to: &str, kind: Kind) -> Body {
    Body::CallSignal(CallSignal {
        invite_id: invite.to_vec(),
        from: String::new(),
        to: to.into(),
        kind: Some(kind),
        ..Default::default()
    })
}

async fn request(session: &SupernodeSession, body: Body) -> Body {
    session.request(body, TIMEOUT).await.expect("request")
}

async fn allocate(session: &SupernodeSession, invite: &[u8]) -> RelayAllocated {
    match request(
        session,
        Body::RelayAllocate(RelayAllocate {
            invite_id: invite.to_vec(),
        }),
    )
    .await
    {
        Body::RelayAllocated(a) => a,
        other => panic!("expected RelayAllocated, got {other:?}"),
    }
}

/// Sets up call `i` through the control protocol: join both users, invite,
/// ring, both allocate; then closes both sessions.
async fn set_up_call(keys: &Keys, endpoint: &quinn::Endpoint, sn: SocketAddr, i: usize) -> Call {
    let (caller_name, callee_name) = (format!("rc{i}"), format!("re{i}"));
    let issuer = keys.issuer.public_key();
    let join = |name: String, serial: u64| {
        let identity = keys.identity(&name, serial);
        let issuer = issuer.clone();
        async move {
            SupernodeSession::join(endpoint, sn, &identity, &issuer, TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{name} joins: {e}"))
        }
    };
    let (caller, callee) = tokio::join!(
        join(caller_name, 2 * i as u64 + 1),
        join(callee_name.clone(), 2 * i as u64 + 2)
    );
    let mut invite = [0u8; 16];
    invite[..8].copy_from_slice(&(i as u64).to_be_bytes());
    invite[8..].copy_from_slice(b"relaybnc");
    match request(
        &caller,
        signal(&invite, &callee_name, Kind::Invite(CallInvite::default())),
    )
    .await
    {
        Body::Ack(_) => {}
        other => panic!("invite: {other:?}"),
    }
    // The callee sees the invite, rings (as its client does on every invite).
    loop {
        match tokio::time::timeout(TIMEOUT, callee.next_push()).await {
            Ok(Some(Body::CallSignal(s))) if s.invite_id == invite => break,
            Ok(Some(_)) => {}
            other => panic!("callee {i}: no invite push ({other:?})"),
        }
    }
    let caller_name = format!("rc{i}");
    match request(
        &callee,
        signal(&invite, &caller_name, Kind::Ringing(Default::default())),
    )
    .await
    {
        Body::Ack(_) => {}
        other => panic!("ringing: {other:?}"),
    }
    let theirs = allocate(&callee, &invite).await;
    let mine = allocate(&caller, &invite).await;
    let relay = SocketAddr::try_from(mine.relay.as_ref().expect("relay address")).expect("addr");
    let token = |a: &RelayAllocated| -> [u8; 16] { a.token.as_slice().try_into().expect("token") };
    caller.close();
    callee.close();
    Call {
        relay,
        tokens: [token(&mine), token(&theirs)],
    }
}

async fn set_up_calls(keys: Arc<Keys>, sn: SocketAddr, n: usize) -> Vec<Call> {
    let prefixes = n.div_ceil(CALLS_PER_PREFIX);
    let endpoints: Vec<quinn::Endpoint> = (0..prefixes)
        .map(|p| {
            // One /24 per endpoint (127.X.Y.1), apart from the sides' 127.100+.
            let ip = Ipv4Addr::new(127, (p / 250) as u8 + 2, (p % 250) as u8, 1);
            natter_net::client_endpoint(SocketAddr::new(ip.into(), 0), &TransportSettings::OVERLAY)
                .expect("client endpoint")
        })
        .collect();
    let endpoints = Arc::new(endpoints);
    let mut calls = vec![None; n];
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    let concurrency = 16;
    let started = Instant::now();
    loop {
        while set.len() < concurrency && next < n {
            let (keys, endpoints) = (Arc::clone(&keys), Arc::clone(&endpoints));
            let i = next;
            next += 1;
            set.spawn(async move {
                let call = set_up_call(&keys, &endpoints[i / CALLS_PER_PREFIX], sn, i).await;
                (i, call)
            });
        }
        match set.join_next().await {
            Some(done) => {
                let (i, call) = done.expect("call setup panicked");
                calls[i] = Some(call);
            }
            None => break,
        }
    }
    println!(
        "{n} calls set up through the control protocol in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    calls.into_iter().map(|c| c.expect("every call")).collect()
}

// ------------------------------------------------------------------ media

/// The source IP of side `s` (call `s / 2`, side `s % 2`).
fn side_ip(s: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        100 + (s / 62_500) as u8,
        ((s / 250) % 250) as u8,
        (s % 250) as u8 + 1,
    )
}

fn side_of(ip: IpAddr) -> Option<usize> {
    let IpAddr::V4(v4) = ip else { return None };
    let o = v4.octets();
    if o[0] != 127 || o[1] < 100 || o[3] == 0 {
        return None;
    }
    Some(usize::from(o[1] - 100) * 62_500 + usize::from(o[2]) * 250 + usize::from(o[3]) - 1)
}

/// The load generator's socket: bound to the wildcard address, so one
/// socket sends from (IP_PKTINFO) and receives at every side's address.
struct Load {
    socket: UdpSocket,
    state: UdpSocketState,
    port: u16,
}

impl Load {
    fn new() -> Self {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind load socket");
        let state = UdpSocketState::new(UdpSockRef::from(&socket)).expect("quinn-udp state");
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), 32 << 20);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), 8 << 20);
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        Self {
            socket,
            state,
            port,
        }
    }

    fn send(&self, from_side: usize, to: SocketAddr, datagram: &[u8]) {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: datagram,
            segment_size: None,
            src_ip: Some(side_ip(from_side).into()),
        };
        loop {
            match self.state.send(UdpSockRef::from(&self.socket), &transmit) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                _ => return,
            }
        }
    }

    /// Receives a batch into `bufs`: (side it was sent to, buffer, start,
    /// end) of each datagram.
    fn recv(&self, bufs: &mut [[u8; 2048]], meta: &mut [RecvMeta], out: &mut Vec<Got>) {
        let _ = self.try_recv(bufs, meta, out);
    }

    /// [`Self::recv`], with `WouldBlock` when nothing is there (quinn-udp
    /// makes the socket non-blocking).
    fn try_recv(
        &self,
        bufs: &mut [[u8; 2048]],
        meta: &mut [RecvMeta],
        out: &mut Vec<Got>,
    ) -> std::io::Result<()> {
        out.clear();
        let mut slices: Vec<IoSliceMut<'_>> = bufs
            .iter_mut()
            .map(|b| IoSliceMut::new(&mut b[..]))
            .collect();
        let n = self
            .state
            .recv(UdpSockRef::from(&self.socket), &mut slices, meta)?;
        drop(slices);
        for (i, m) in meta.iter().enumerate().take(n) {
            let Some(side) = m.dst_ip.and_then(side_of) else {
                continue;
            };
            let stride = m.stride.max(1);
            let mut at = 0;
            while at < m.len {
                let end = (at + stride).min(m.len);
                out.push((side, i, at, end));
                at = end;
            }
        }
        Ok(())
    }
}

/// A received datagram: the side it was sent to, its buffer, start and end.
type Got = (usize, usize, usize, usize);

/// Binds every side of `calls` as a client does (cookie round trip), with
/// retries. Panics if a side does not get `Bound`.
fn bind_all(load: &Load, calls: &[Call]) {
    let sides = calls.len() * 2;
    let mut cookie: Vec<Option<[u8; 16]>> = vec![None; sides];
    let mut bound = vec![false; sides];
    let mut bufs = vec![[0u8; 2048]; 32];
    let mut meta = vec![RecvMeta::default(); 32];
    let mut out = Vec::new();
    let started = Instant::now();
    for attempt in 0..20 {
        let pending: Vec<usize> = (0..sides).filter(|&s| !bound[s]).collect();
        if pending.is_empty() {
            println!(
                "{sides} sides bound (cookie round trip) in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        for (k, &s) in pending.iter().enumerate() {
            let call = &calls[s / 2];
            let bind = wire::encode_bind(&call.tokens[s % 2], &cookie[s].unwrap_or([0; 16]), 1, 0);
            load.send(s, call.relay, &bind);
            // Stay inside the relay's receive buffer.
            if k % 256 == 255 {
                drain_binds(
                    load,
                    &mut bufs,
                    &mut meta,
                    &mut out,
                    &mut cookie,
                    &mut bound,
                    calls,
                );
            }
        }
        let until = Instant::now() + Duration::from_millis(300 + 100 * attempt);
        while Instant::now() < until {
            drain_binds(
                load,
                &mut bufs,
                &mut meta,
                &mut out,
                &mut cookie,
                &mut bound,
                calls,
            );
        }
    }
    let missing = bound.iter().filter(|b| !**b).count();
    panic!("{missing} of {sides} sides did not bind");
}

fn drain_binds(
    load: &Load,
    bufs: &mut [[u8; 2048]],
    meta: &mut [RecvMeta],
    out: &mut Vec<Got>,
    cookie: &mut [Option<[u8; 16]>],
    bound: &mut [bool],
    calls: &[Call],
) {
    load.recv(bufs, meta, out);
    for &(side, i, start, end) in out.iter() {
        let bytes = &bufs[i][start..end];
        let Ok(reply) = wire::decode_bind_reply(bytes) else {
            continue;
        };
        if side >= bound.len() || reply.token != calls[side / 2].tokens[side % 2] {
            continue;
        }
        match reply.status {
            BindStatus::Bound => bound[side] = true,
            BindStatus::Cookie => cookie[side] = Some(reply.cookie),
            other => panic!("side {side}: bind refused: {other:?}"),
        }
    }
}

/// Nanoseconds since `base`.
fn ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

#[derive(Debug, Default)]
struct StepResult {
    sent: u64,
    received: u64,
    latency_us: Vec<u64>,
    overflow: u64,
}

/// Runs media for the first `n` calls: warm-up, window, drain. Counts the
/// datagrams sent in the window and those of them received.
fn run_media(
    load: &Load,
    calls: &[Call],
    n: usize,
    settings: &Settings,
    sn_pid: &str,
) -> (StepResult, Cpu) {
    let sides = 2 * n;
    let rate = PPS * sides as u64;
    let base = Instant::now();
    let window_start = settings.warmup.as_nanos() as u64;
    let window_end = window_start + settings.window.as_nanos() as u64;
    let stop_send = window_end + 200_000_000;
    let done = AtomicBool::new(false);
    let sent_in_window = AtomicU64::new(0);
    let mut result = StepResult::default();
    let mut cpu = Cpu::default();
    std::thread::scope(|scope| {
        // Receiver.
        let receiver = scope.spawn(|| {
            let mut hist = vec![0u64; HIST_US];
            let mut overflow = 0;
            let mut received = 0u64;
            let mut bufs = vec![[0u8; 2048]; 32];
            let mut meta = vec![RecvMeta::default(); 32];
            let mut out = Vec::with_capacity(64);
            // Waits for the (non-blocking) socket on a runtime of its own.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let watch = runtime
                .block_on(async {
                    tokio::net::UdpSocket::from_std(load.socket.try_clone().unwrap())
                })
                .unwrap();
            while !done.load(Ordering::Relaxed) {
                let got = runtime.block_on(async {
                    match tokio::time::timeout(Duration::from_millis(100), watch.readable()).await {
                        Ok(Ok(())) => watch.try_io(tokio::io::Interest::READABLE, || {
                            load.try_recv(&mut bufs, &mut meta, &mut out)
                        }),
                        _ => Err(std::io::ErrorKind::WouldBlock.into()),
                    }
                });
                if got.is_err() {
                    continue;
                }
                let now = ns(base);
                for &(side, i, start, end) in &out {
                    let bytes = &bufs[i][start..end];
                    if bytes.len() != DATAGRAM {
                        continue;
                    }
                    let from = u32::from_be_bytes(bytes[3..7].try_into().unwrap()) as usize;
                    let ts = u64::from_be_bytes(bytes[11..19].try_into().unwrap());
                    if from ^ 1 != side || ts < window_start || ts >= window_end {
                        continue;
                    }
                    received += 1;
                    let us = (now.saturating_sub(ts) / 1000) as usize;
                    match hist.get_mut(us) {
                        Some(h) => *h += 1,
                        None => overflow += 1,
                    }
                }
            }
            (received, hist, overflow)
        });
        // Sender: paced evenly, side after side.
        let sender = scope.spawn(|| {
            let mut datagram = [0u8; DATAGRAM];
            let mut sent = 0u64;
            loop {
                let now = ns(base);
                if now >= stop_send {
                    break;
                }
                let due = (now as u128 * rate as u128 / 1_000_000_000) as u64;
                while sent < due {
                    let side = (sent % sides as u64) as usize;
                    let seq = sent / sides as u64;
                    let ts = ns(base);
                    datagram[..3]
                        .copy_from_slice(&Header::new(seq as u16, Function::Data, 5).to_bytes());
                    datagram[3..7].copy_from_slice(&(side as u32).to_be_bytes());
                    datagram[7..11].copy_from_slice(&(seq as u32).to_be_bytes());
                    datagram[11..19].copy_from_slice(&ts.to_be_bytes());
                    let call = &calls[side / 2];
                    load.send(side, call.relay, &datagram);
                    if ts >= window_start && ts < window_end {
                        sent_in_window.fetch_add(1, Ordering::Relaxed);
                    }
                    sent += 1;
                    if sent.is_multiple_of(64) {
                        // Behind schedule: let the receiver (on this core,
                        // maybe under the same SCHED_FIFO) run.
                        std::thread::yield_now();
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        // CPU sampling over the window.
        std::thread::sleep(Duration::from_nanos(window_start.saturating_sub(ns(base))));
        let before = CpuSample::take(sn_pid, settings.server_core);
        std::thread::sleep(Duration::from_nanos(window_end.saturating_sub(ns(base))));
        let after = CpuSample::take(sn_pid, settings.server_core);
        cpu = after.since(&before);
        sender.join().unwrap();
        // Drain what is still in flight.
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, Ordering::Relaxed);
        let (received, hist, overflow) = receiver.join().unwrap();
        result.received = received;
        result.latency_us = hist;
        result.overflow = overflow;
    });
    result.sent = sent_in_window.load(Ordering::Relaxed);
    (result, cpu)
}

fn percentile(hist: &[u64], overflow: u64, p: f64) -> String {
    let total: u64 = hist.iter().sum::<u64>() + overflow;
    if total == 0 {
        return "-".into();
    }
    let want = ((total as f64) * p).ceil() as u64;
    let mut acc = 0;
    for (us, n) in hist.iter().enumerate() {
        acc += n;
        if acc >= want {
            return format!("{us}");
        }
    }
    format!(">{HIST_US}")
}

// ------------------------------------------------------------------ /proc

#[derive(Debug, Default, Clone)]
struct CpuSample {
    at: Option<Instant>,
    server_ns: u64,
    softirqd_ns: u64,
    core_idle_ticks: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    /// Shares of one core over the window.
    server: f64,
    softirqd: f64,
    core_busy: f64,
    secs: f64,
}

fn schedstat_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Datagrams dropped so far by the UDP sockets bound to `port` (the last
/// column of /proc/net/udp): a full receive buffer.
fn socket_drops(port: u16) -> u64 {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&want))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

fn ksoftirqd_pid(core: usize) -> Option<String> {
    let want = format!("ksoftirqd/{core}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == want).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

impl CpuSample {
    fn take(pid: &str, core: usize) -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu = format!("cpu{core} ");
        let idle = stat
            .lines()
            .find(|l| l.starts_with(&cpu))
            .map(|l| {
                let f: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0)
            })
            .unwrap_or(0);
        Self {
            at: Some(Instant::now()),
            server_ns: schedstat_ns(pid),
            softirqd_ns: ksoftirqd_pid(core).map_or(0, |p| schedstat_ns(&p)),
            core_idle_ticks: idle,
        }
    }

    fn since(&self, before: &Self) -> Cpu {
        let secs = match (self.at, before.at) {
            (Some(a), Some(b)) => a.duration_since(b).as_secs_f64(),
            _ => 1.0,
        };
        let share = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e9 / secs;
        let idle =
            self.core_idle_ticks.saturating_sub(before.core_idle_ticks) as f64 / 100.0 / secs;
        Cpu {
            server: share(self.server_ns, before.server_ns),
            softirqd: share(self.softirqd_ns, before.softirqd_ns),
            core_busy: (1.0 - idle).max(0.0),
            secs,
        }
    }
}

// ------------------------------------------------------------------ main

/// Re-executes this bench under `taskset -c LOAD_CORE` once.
fn pin_self(settings: &Settings) {
    if settings.quick || std::env::var_os("NATTER_RELAY_PINNED").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let status = std::process::Command::new("taskset")
        .args(["-c", &settings.load_core.to_string()])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("NATTER_RELAY_PINNED", "1")
        .status()
        .expect("taskset (util-linux) is needed to pin the bench");
    std::process::exit(status.code().unwrap_or(1));
}

fn main() {
    if std::env::args().any(|a| a == bare::ARG) {
        bare::run(DATAGRAM);
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(quick);
    pin_self(&settings);
    let max = *settings.calls.last().expect("at least one call count");
    println!(
        "{} relay bench{}: server on core {}, load on core {}; {} B datagrams, {} pps per side; calls {:?}, window {} s",
        settings.target.name(),
        if quick {
            " (smoke run: no --bench, unpinned)"
        } else {
            ""
        },
        settings.server_core,
        settings.load_core,
        DATAGRAM,
        PPS,
        settings.calls,
        settings.window.as_secs()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (sn, calls) = match settings.target {
        Target::Natter => {
            let keys = Arc::new(Keys::load());
            let sn = runtime.block_on(start_supernode(&settings, &keys, dir.path()));
            println!("supernode pid {} at {}", sn.pid, sn.addr);
            let calls = runtime.block_on(set_up_calls(Arc::clone(&keys), sn.addr, max));
            (sn, calls)
        }
        Target::Bare => {
            let server = runtime.block_on(start_bare(&settings));
            println!("bare forwarder pid {} at {}", server.pid, server.addr);
            // No signaling, no allocations: every call goes through the one
            // socket, which learns each side from its datagrams.
            let call = Call {
                relay: server.addr,
                tokens: [[0; 16]; 2],
            };
            (server, vec![call; max])
        }
    };
    if settings.realtime {
        // Only for the media, and only the threads that carry it: the
        // server's relay thread (all its threads if it has none, as a relay
        // in a tokio task), and this thread, whose load threads inherit it.
        // Under SCHED_FIFO a busy tokio worker would starve the rest.
        let relay_tid = std::fs::read_dir(format!("/proc/{}/task", sn.pid))
            .into_iter()
            .flatten()
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "natter-relay")
            })
            .map(|t| t.file_name().to_string_lossy().into_owned());
        let server: Vec<&str> = match &relay_tid {
            Some(tid) => vec![tid.as_str()],
            None => vec!["-a", sn.pid.as_str()],
        };
        let me = std::process::id().to_string();
        for target in [server, vec![me.as_str()]] {
            let ok = std::process::Command::new("chrt")
                .args(["-f", "-p", "20"])
                .args(&target)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "chrt -f -p 20 {target:?} failed (NATTER_RELAY_RT=1 needs root)"
            );
        }
        println!(
            "SCHED_FIFO 20: {} and the load generator",
            if relay_tid.is_some() {
                "the server's relay thread"
            } else {
                "every server thread"
            }
        );
    }
    let load = Load::new();
    println!("load socket 0.0.0.0:{} (sides at 127.100.x.y)", load.port);
    if settings.target == Target::Natter {
        bind_all(&load, &calls);
    }
    println!(
        "{:>6} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "calls",
        "offered",
        "relayed/s",
        "loss%",
        "server%",
        "softirq%",
        "core_busy%",
        "us/pkt",
        "p50_us",
        "p99_us"
    );
    let mut best: Option<(usize, f64, f64)> = None;
    let relay_port = calls[0].relay.port();
    for &n in &settings.calls {
        let drops = (socket_drops(relay_port), socket_drops(load.port));
        let (r, cpu) = run_media(&load, &calls, n, &settings, &sn.pid);
        let drops = (
            socket_drops(relay_port) - drops.0,
            socket_drops(load.port) - drops.1,
        );
        let loss = if r.sent == 0 {
            100.0
        } else {
            100.0 * (r.sent.saturating_sub(r.received)) as f64 / r.sent as f64
        };
        let relayed = r.received as f64 / settings.window.as_secs_f64();
        let us_per_pkt = if r.received == 0 {
            f64::NAN
        } else {
            (cpu.server + cpu.softirqd) * cpu.secs * 1e6 / r.received as f64
        };
        println!(
            "{:>6} {:>10} {:>10.0} {:>8.3} {:>9.1} {:>9.1} {:>10.1} {:>8.2} {:>8} {:>8}",
            n,
            PPS * 2 * n as u64,
            relayed,
            loss,
            100.0 * cpu.server,
            100.0 * cpu.softirqd,
            100.0 * cpu.core_busy,
            us_per_pkt,
            percentile(&r.latency_us, r.overflow, 0.50),
            percentile(&r.latency_us, r.overflow, 0.99),
        );
        if drops != (0, 0) {
            println!(
                "       receive-buffer drops in the step: relay socket {}, load socket {}",
                drops.0, drops.1
            );
        }
        if r.sent > 0 && loss < MAX_LOSS {
            best = Some((n, relayed, us_per_pkt));
        } else if !settings.all_steps {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    match best {
        Some((n, relayed, us)) => println!(
            "== {}: highest relayed packets/s under {MAX_LOSS} % loss: {relayed:.0} ({n} calls), {us:.2} us CPU per relayed packet (server threads + ksoftirqd/{})",
            settings.target.name(),
            settings.server_core
        ),
        None => println!(
            "== {}: no step stayed under {MAX_LOSS} % loss",
            settings.target.name()
        ),
    }
    if quick {
        assert!(best.is_some(), "the smoke run relayed nothing");
    }
    runtime.block_on(sn.stop());
    runtime.shutdown_timeout(Duration::from_secs(2));
}
