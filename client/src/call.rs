//! Placing and answering calls: the tokio shell around
//! [`natter_proto::call::CallSetup`] (signaling through the supernode) and
//! [`natter_media::session::MediaSession`] (SoM/UDP media).
//!
//! Media runs on one UDP socket per call, driven by a 20 ms interval: each
//! tick sends exactly one `Data` datagram (speech or silence, no suppression)
//! and plays exactly one frame. Probes every second measure the RTT.
//!
//! Where UDP does not work (the supernode session runs over TLS on TCP, or
//! every UDP path has gone silent mid-call) the same datagrams travel over
//! TLS relay legs to the supernodes' relays ([`crate::tcp_relay`]).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use natter_media::FRAME_SAMPLES;
use natter_media::session::{MediaConfig, MediaSession, MediaStats, Received};
use natter_media::wav::{WavSink, read_mono_48k};
use natter_proto::call::{CallEvent, CallSetup, EndReason, Phase};
use natter_proto::cert::Identity;
use natter_proto::handshake::CallKeys;
use natter_proto::messages::{CallSignal, Candidate, ErrorCode, call_signal, envelope};
use natter_proto::path::{PathConfig, PathKind, PathManager, Switch};
use rand::RngCore;
use rsa::RsaPublicKey;
use tokio::net::UdpSocket;

use crate::gather::{self, OwnRelay, RelayBinds};
use crate::now_unix_secs;
use crate::supernode::{SessionError, SupernodeSession};
use crate::tcp_relay::{TcpLeg, TcpLegs};

/// Time the callee has to answer.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A call with no media from the peer for this long is over.
pub const MEDIA_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// With UDP usable at the start, TCP relay legs open once no UDP datagram
/// has been heard from the peer for this long (UDP blocked mid-call, or
/// never working).
pub const UDP_SILENCE_FOR_TCP: Duration = Duration::from_millis(1500);

/// Audio and reporting options of a call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// WAV to send (any rate; silence after its end). None: silence.
    pub audio_in: Option<PathBuf>,
    /// WAV to write what was heard into.
    pub audio_out: Option<PathBuf>,
    /// Sound-card input (`default` for the default device) when there is no WAV input.
    pub input_device: Option<String>,
    /// Sound-card output (`default` for the default device) when there is no WAV output.
    pub output_device: Option<String>,
    /// Hang up after this long (caller default: the input's length, or 10 s).
    pub duration: Option<Duration>,
    /// Print a live one-line status on stderr (when it is a terminal).
    pub live_status: bool,
}

/// Why a call did not happen or broke.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no user named {0:?}")]
    UnknownUser(String),
    #[error("{0} is offline")]
    Offline(String),
    #[error("{0} did not answer")]
    NoAnswer(String),
    #[error("{0} declined the call")]
    Rejected(String),
    #[error("{0} is busy")]
    Busy(String),
    #[error("the peer's identity did not verify: {0}")]
    BadPeer(String),
    #[error("the call failed: {0}")]
    Failed(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("audio: {0}")]
    Audio(String),
    #[error("media socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("the supernode session ended during the call")]
    SessionLost,
}

/// The report of one call.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub peer: String,
    /// The path of the first media frame and of the last.
    pub path_start: Option<PathKind>,
    pub path_end: Option<PathKind>,
    /// Every change of path, in ms since media started.
    pub switches: Vec<Switch>,
    /// When a direct or hole-punched path was first confirmed.
    pub time_to_direct_ms: Option<u64>,
    pub remote_addr: Option<SocketAddr>,
    pub duration_s: f64,
    pub setup_ms: u64,
    pub first_audio_ms: Option<u64>,
    pub ended_by_peer: bool,
    pub media: MediaStats,
    pub codec_bitrate: i32,
    /// Transport of the supernode session (`quic` or `tcp`).
    pub signaling: &'static str,
    /// RTT of the path media last went over (connectivity-check probes).
    pub path_rtt_ms: Option<u64>,
    /// TLS relay legs connected (reconnections included).
    pub tcp_connects: u64,
    /// Datagrams dropped on full TCP leg queues.
    pub tcp_dropped: u64,
}

impl CallReport {
    /// Mean UDP payload of what this side sent, in bytes.
    pub fn mean_payload(&self) -> f64 {
        if self.media.sent_packets == 0 {
            0.0
        } else {
            self.media.sent_bytes as f64 / self.media.sent_packets as f64
        }
    }

    /// The path at the end of the call (the one media last went over).
    pub fn path(&self) -> &'static str {
        self.path_end.map_or("none", PathKind::name)
    }

    /// The report as JSON (the `--stats-json` file).
    pub fn to_json(&self) -> String {
        let m = &self.media;
        let secs = self.duration_s.max(0.001);
        let switches: Vec<_> = self
            .switches
            .iter()
            .map(|s| serde_json::json!({"at_ms": s.at_ms, "path": s.kind.name(), "addr": s.addr.to_string()}))
            .collect();
        serde_json::json!({
            "peer": self.peer,
            "path": self.path(),
            "path_start": self.path_start.map(PathKind::name),
            "path_end": self.path_end.map(PathKind::name),
            "switches": switches,
            "time_to_direct_ms": self.time_to_direct_ms,
            "remote_addr": self.remote_addr.map(|a| a.to_string()),
            "duration_s": (self.duration_s * 1000.0).round() / 1000.0,
            "setup_ms": self.setup_ms,
            "first_audio_ms": self.first_audio_ms,
            "ended_by_peer": self.ended_by_peer,
            "rtt_ms": m.last_rtt_ms,
            "jitter_ms": (m.jitter_ms * 100.0).round() / 100.0,
            "packets_sent": m.sent_packets,
            "packets_received": m.received_packets,
            "media_packets_sent": m.sent_media_packets,
            "media_packets_received": m.received_media_packets,
            "packets_lost": m.lost,
            "packets_late": m.jitter.late,
            "duplicates": m.jitter.duplicate,
            "fec_recoveries": m.jitter.fec,
            "concealed_frames": m.jitter.concealed,
            "dropped_auth": m.dropped_auth,
            "dropped_replay": m.dropped_replay,
            "dropped_malformed": m.dropped_malformed,
            "jitter_buffer_delay_ms": m.jitter_buffer_delay_ms,
            "send_bytes_per_s": (m.sent_bytes as f64 / secs * 10.0).round() / 10.0,
            "recv_bytes_per_s": (m.received_bytes as f64 / secs * 10.0).round() / 10.0,
            "mean_udp_payload": (self.mean_payload() * 100.0).round() / 100.0,
            "codec_bitrate": self.codec_bitrate,
            "signaling": self.signaling,
            "path_rtt_ms": self.path_rtt_ms,
            "tcp_connects": self.tcp_connects,
            "tcp_dropped": self.tcp_dropped,
        })
        .to_string()
    }

    /// A human-readable report.
    pub fn to_text(&self) -> String {
        let m = &self.media;
        format!(
            "call with {peer}: {dur:.1} s, path {path} ({remote}, RTT {prtt}), signaling over {sig}, setup {setup} ms, first audio {first}\n\
             sent {sp} packets ({smp} media, mean UDP payload {mp:.1} B, {sbps:.0} B/s), received {rp} ({rmp} media)\n\
             lost {lost} (FEC recovered {fec}, concealed {conc}), late {late}, dropped: auth {auth}, replay {rep}, malformed {mal}\n\
             RTT {rtt}, jitter {jit:.1} ms, jitter-buffer delay {jbd} ms, codec Opus {br} b/s",
            peer = self.peer,
            dur = self.duration_s,
            path = self.path(),
            remote = self.remote_addr.map_or("-".into(), |a| a.to_string()),
            prtt = self.path_rtt_ms.map_or("-".into(), |v| format!("{v} ms")),
            sig = self.signaling,
            setup = self.setup_ms,
            first = self
                .first_audio_ms
                .map_or("-".into(), |v| format!("{v} ms")),
            sp = m.sent_packets,
            smp = m.sent_media_packets,
            mp = self.mean_payload(),
            sbps = m.sent_bytes as f64 / self.duration_s.max(0.001),
            rp = m.received_packets,
            rmp = m.received_media_packets,
            lost = m.lost,
            fec = m.jitter.fec,
            conc = m.jitter.concealed,
            late = m.jitter.late,
            auth = m.dropped_auth,
            rep = m.dropped_replay,
            mal = m.dropped_malformed,
            rtt = m.last_rtt_ms.map_or("-".into(), |v| format!("{v} ms")),
            jit = m.jitter_ms,
            jbd = m.jitter_buffer_delay_ms,
            br = self.codec_bitrate,
        )
    }
}

/// Whether this side must do without UDP: its session fell back to TLS
/// over TCP because QUIC did not get through.
fn udp_blocked(session: &SupernodeSession) -> bool {
    session.transport() == natter_net::Transport::Tls
}

/// Binds the call's media socket and gathers its host and server-reflexive
/// candidates (none when UDP is blocked: only relays can reach this side).
async fn media_socket(
    session: &SupernodeSession,
) -> Result<(UdpSocket, Vec<Candidate>), CallError> {
    let ip = gather::local_ip_towards(session.addr());
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    let candidates = if udp_blocked(session) {
        Vec::new()
    } else {
        gather::local_candidates(session, &socket).await
    };
    Ok((socket, candidates))
}

async fn send_signal(session: &SupernodeSession, signal: CallSignal) -> Result<(), CallError> {
    let to = signal.to.clone();
    match session
        .request(envelope::Body::CallSignal(signal), REQUEST_TIMEOUT)
        .await
    {
        Ok(_) => Ok(()),
        Err(SessionError::Remote {
            code: ErrorCode::UserUnknown,
            ..
        }) => Err(CallError::UnknownUser(to)),
        Err(SessionError::Remote {
            code: ErrorCode::UserOffline,
            ..
        }) => Err(CallError::Offline(to)),
        Err(e) => Err(e.into()),
    }
}

async fn flush(setup: &mut CallSetup, session: &SupernodeSession) -> Result<(), CallError> {
    while let Some(signal) = setup.poll_signal() {
        send_signal(session, signal).await?;
    }
    Ok(())
}

fn end_error(reason: EndReason, peer: &str) -> CallError {
    match reason {
        EndReason::Rejected => CallError::Rejected(peer.to_owned()),
        EndReason::Busy => CallError::Busy(peer.to_owned()),
        EndReason::NoAnswer => CallError::NoAnswer(peer.to_owned()),
        EndReason::BadPeer(e) => CallError::BadPeer(e.to_string()),
        EndReason::Failed(r) => CallError::Failed(r.as_str_name().to_owned()),
        EndReason::HungUp { .. } => CallError::Failed("hung up during setup".into()),
    }
}

/// Opens (and closes) the sound cards `options` names, so a wrong device is
/// reported before anyone is called.
pub fn check_devices(options: &CallOptions) -> Result<(), CallError> {
    let name = |n: &String| (n != "default").then(|| n.clone());
    if options.audio_in.is_none()
        && let Some(device) = &options.input_device
    {
        natter_media::devices::Capture::open(name(device).as_deref())
            .map_err(|e| CallError::Audio(e.to_string()))?;
    }
    if options.audio_out.is_none()
        && let Some(device) = &options.output_device
    {
        natter_media::devices::Playback::open(name(device).as_deref())
            .map_err(|e| CallError::Audio(e.to_string()))?;
    }
    Ok(())
}

/// Places a call to `callee` and runs it to its end.
pub async fn place_call(
    session: &SupernodeSession,
    identity: &Identity,
    local_name: &str,
    login_key: &RsaPublicKey,
    callee: &str,
    options: &CallOptions,
) -> Result<CallReport, CallError> {
    let started = Instant::now();
    let (socket, candidates) = media_socket(session).await?;
    let behind_nat = gather::behind_nat(&candidates);
    let mut rng = rand::thread_rng();
    let mut invite_id = [0u8; 16];
    rng.fill_bytes(&mut invite_id);
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let mut setup = CallSetup::invite(
        identity,
        local_name,
        callee,
        invite_id,
        secret,
        candidates,
        login_key.clone(),
        0,
        SETUP_TIMEOUT.as_millis() as u64,
    );
    flush(&mut setup, session).await?;
    // The supernode knows the call now: allocate a relay and trickle it.
    let mut own_relay = None;
    if let Some((relay_candidates, own)) = gather::allocate_relay(session, &invite_id).await {
        setup.trickle(relay_candidates, true);
        flush(&mut setup, session).await?;
        own_relay = Some(own);
    }
    let mut trickled = Vec::new();
    loop {
        while let Some(event) = setup.poll_event() {
            match event {
                CallEvent::Ringing => {
                    if options.live_status {
                        eprintln!("ringing {callee}...");
                    }
                }
                CallEvent::Connected {
                    keys,
                    mut remote_candidates,
                } => {
                    let setup_ms = started.elapsed().as_millis() as u64;
                    remote_candidates.append(&mut trickled);
                    let transport = MediaTransport {
                        socket,
                        remote_candidates,
                        own_relay,
                        behind_nat,
                    };
                    return run_media(session, &mut setup, transport, *keys, options, setup_ms)
                        .await;
                }
                CallEvent::Ended(reason) => return Err(end_error(reason, callee)),
                CallEvent::Candidates(mut more) => trickled.append(&mut more),
                CallEvent::Incoming { .. } => {}
            }
        }
        let deadline = setup
            .poll_timeout()
            .unwrap_or(SETUP_TIMEOUT.as_millis() as u64);
        let remaining = Duration::from_millis(deadline).saturating_sub(started.elapsed());
        tokio::select! {
            push = session.next_push() => match push {
                Some(envelope::Body::CallSignal(signal)) => setup.handle_signal(&signal, now_unix_secs()),
                Some(_) => {}
                None => return Err(CallError::SessionLost),
            },
            () = tokio::time::sleep(remaining) => {
                setup.handle_timeout(started.elapsed().as_millis() as u64);
                let _ = flush(&mut setup, session).await;
            }
        }
    }
}

/// Waits for incoming calls, answers each, and returns after `calls` calls.
pub async fn answer_calls(
    session: &SupernodeSession,
    identity: &Identity,
    local_name: &str,
    login_key: &RsaPublicKey,
    calls: usize,
    options: &CallOptions,
) -> Result<Vec<CallReport>, CallError> {
    let mut reports = Vec::new();
    while reports.len() < calls {
        let Some(push) = session.next_push().await else {
            return Err(CallError::SessionLost);
        };
        let envelope::Body::CallSignal(signal) = push else {
            continue;
        };
        if !matches!(signal.kind, Some(call_signal::Kind::Invite(_))) {
            continue;
        }
        let started = Instant::now();
        let Some(mut setup) = CallSetup::incoming(
            &signal,
            local_name,
            login_key.clone(),
            now_unix_secs(),
            0,
            SETUP_TIMEOUT.as_millis() as u64,
        ) else {
            continue;
        };
        flush(&mut setup, session).await?;
        let caller = setup.peer_name().to_owned();
        let mut connected = None;
        let mut own_relay = None;
        let mut behind_nat = false;
        while let Some(event) = setup.poll_event() {
            match event {
                CallEvent::Incoming { .. } => {
                    let (socket, mut candidates) = media_socket(session).await?;
                    behind_nat = gather::behind_nat(&candidates);
                    if let Some((relay_candidates, own)) =
                        gather::allocate_relay(session, &setup.invite_id()).await
                    {
                        candidates.extend(relay_candidates);
                        own_relay = Some(own);
                    }
                    let mut secret = [0u8; 32];
                    rand::thread_rng().fill_bytes(&mut secret);
                    setup.accept(identity, secret, candidates, now_unix_secs());
                    flush(&mut setup, session).await?;
                    connected = Some(socket);
                }
                CallEvent::Connected {
                    keys,
                    remote_candidates,
                } => {
                    let Some(socket) = connected.take() else {
                        break;
                    };
                    let setup_ms = started.elapsed().as_millis() as u64;
                    let transport = MediaTransport {
                        socket,
                        remote_candidates,
                        own_relay,
                        behind_nat,
                    };
                    let report =
                        run_media(session, &mut setup, transport, *keys, options, setup_ms).await?;
                    reports.push(report);
                    break;
                }
                CallEvent::Ended(reason) => {
                    if options.live_status {
                        eprintln!("call from {caller} refused: {}", end_error(reason, &caller));
                    }
                    break;
                }
                CallEvent::Ringing | CallEvent::Candidates(_) => {}
            }
        }
    }
    Ok(reports)
}

/// The media socket of a call and what is known of where to send.
struct MediaTransport {
    socket: UdpSocket,
    remote_candidates: Vec<Candidate>,
    own_relay: Option<OwnRelay>,
    /// This side's own NAT, if gathering found one.
    behind_nat: bool,
}

/// Where a call's datagrams can go: UDP targets with their relay binds, and
/// TLS relay legs, opened when UDP is blocked or has gone silent.
struct Paths {
    path: PathManager,
    binds: RelayBinds,
    behind_nat: bool,
    /// No UDP at all: only TCP relay legs are used.
    udp_blocked: bool,
    /// TCP relay legs known (own relay, peer's TCP relay candidates).
    tcp_known: Vec<TcpLeg>,
    /// Whether known TCP legs are opened.
    tcp_active: bool,
    tcp: TcpLegs,
}

impl Paths {
    fn new(udp_blocked: bool, behind_nat: bool) -> Self {
        Self {
            path: PathManager::new(PathConfig::default(), 0),
            binds: RelayBinds::default(),
            behind_nat,
            udp_blocked,
            tcp_known: Vec::new(),
            tcp_active: udp_blocked,
            tcp: TcpLegs::default(),
        }
    }

    /// This side's own relay: bound over UDP (unless UDP is blocked) and
    /// over TCP once TCP legs are in use.
    fn add_own_relay(&mut self, own: OwnRelay) {
        if !self.udp_blocked {
            // Our own relay forwards to the peer once the peer binds too.
            self.path.add_target(own.udp.addr, PathKind::Relayed, 0);
            self.binds.add(own.udp);
        }
        if let Some(leg) = own.tcp {
            self.add_tcp(leg, 0);
        }
    }

    /// Hands the peer's candidates to the path manager, the relay binder
    /// and the TCP legs.
    fn add_candidates(&mut self, candidates: &[Candidate], now_ms: u64) {
        for c in candidates {
            let Some((addr, kind, token)) = gather::target(c, self.behind_nat) else {
                continue;
            };
            match (kind, token) {
                (PathKind::TcpRelay, Some(token)) => self.add_tcp(TcpLeg { addr, token }, now_ms),
                (PathKind::TcpRelay, None) => {}
                _ if self.udp_blocked => {}
                (_, token) => {
                    self.path.add_target(addr, kind, now_ms);
                    if let Some(token) = token {
                        self.binds.add(gather::RelayLeg { addr, token });
                    }
                }
            }
        }
    }

    fn add_tcp(&mut self, leg: TcpLeg, now_ms: u64) {
        if !self.tcp_known.contains(&leg) {
            self.tcp_known.push(leg);
        }
        if self.tcp_active {
            self.open_tcp(now_ms);
        }
    }

    /// Opens every known TCP leg (from now on).
    fn open_tcp(&mut self, now_ms: u64) {
        self.tcp_active = true;
        for leg in &self.tcp_known {
            if self.tcp.open(*leg) {
                self.path.add_target(leg.addr, PathKind::TcpRelay, now_ms);
            }
        }
    }

    /// Sends `datagram` to `to`, over the TCP leg when `to` is one.
    async fn send(&self, socket: &UdpSocket, datagram: &[u8], to: SocketAddr) {
        if self.tcp.contains(to) {
            self.tcp.send(to, datagram);
        } else if !self.udp_blocked {
            let _ = socket.send_to(datagram, to).await;
        }
    }
}

/// Runs the media of a connected call until either side hangs up.
async fn run_media(
    session: &SupernodeSession,
    setup: &mut CallSetup,
    transport: MediaTransport,
    keys: CallKeys,
    options: &CallOptions,
    setup_ms: u64,
) -> Result<CallReport, CallError> {
    let peer = setup.peer_name().to_owned();
    let MediaTransport {
        socket,
        remote_candidates,
        own_relay,
        behind_nat,
    } = transport;
    let mut paths = Paths::new(udp_blocked(session), behind_nat);
    paths.add_candidates(&remote_candidates, 0);
    if let Some(own) = own_relay {
        paths.add_own_relay(own);
    }
    let mut path_start = None;
    let mut remote = None;
    let input = match &options.audio_in {
        Some(path) => read_mono_48k(path).map_err(|e| CallError::Audio(e.to_string()))?,
        None => Vec::new(),
    };
    let device_name = |name: &String| {
        (name != "default")
            .then_some(name.as_str())
            .map(str::to_owned)
    };
    let mut capture = match (&options.audio_in, &options.input_device) {
        (None, Some(name)) => Some(
            natter_media::devices::Capture::open(device_name(name).as_deref())
                .map_err(|e| CallError::Audio(e.to_string()))?,
        ),
        _ => None,
    };
    let mut playback = match (&options.audio_out, &options.output_device) {
        (None, Some(name)) => Some(
            natter_media::devices::Playback::open(device_name(name).as_deref())
                .map_err(|e| CallError::Audio(e.to_string()))?,
        ),
        _ => None,
    };
    let mut sink = match &options.audio_out {
        Some(path) => Some(WavSink::create(path).map_err(|e| CallError::Audio(e.to_string()))?),
        None => None,
    };
    let duration = options.duration.or_else(|| {
        (setup.role() == natter_proto::handshake::Role::Caller).then(|| {
            if input.is_empty() {
                Duration::from_secs(10)
            } else {
                Duration::from_millis((input.len() / 48) as u64)
            }
        })
    });
    let mut rng = rand::thread_rng();
    let mut media = MediaSession::new(
        &keys.send,
        &keys.recv,
        rng.next_u32() as u16,
        rng.next_u64(),
        MediaConfig::default(),
    )
    .map_err(|e| CallError::Audio(e.to_string()))?;

    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(natter_media::FRAME_MS)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut datagram = Vec::with_capacity(128);
    let mut buf = vec![0u8; 2048];
    let mut frame = vec![0i16; FRAME_SAMPLES];
    let mut pcm = vec![0i16; FRAME_SAMPLES];
    let mut frame_index = 0usize;
    let mut first_audio_ms = None;
    let mut last_heard = Instant::now();
    let mut last_udp_heard = Instant::now();
    let mut ended_by_peer = false;
    let show_status = options.live_status && std::io::stderr().is_terminal();
    let mut last_status = Instant::now();
    let mut session_alive = true;

    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now_ms = start.elapsed().as_millis() as u64;
                // Send: one frame of the input (WAV or sound card), or silence.
                let from = frame_index * FRAME_SAMPLES;
                pcm.fill(0);
                if let Some(capture) = capture.as_mut() {
                    capture.next_frame(&mut pcm);
                } else if from < input.len() {
                    let n = (input.len() - from).min(FRAME_SAMPLES);
                    pcm[..n].copy_from_slice(&input[from..from + n]);
                }
                frame_index += 1;
                // UDP silent too long: bring in the TCP relay legs.
                if !paths.tcp_active && last_udp_heard.elapsed() >= UDP_SILENCE_FOR_TCP {
                    paths.open_tcp(now_ms);
                }
                // Relay binds, connectivity checks, then the frame on the chosen path.
                if !paths.udp_blocked {
                    for (relay, bind) in paths.binds.poll(now_ms) {
                        let _ = socket.send_to(&bind, relay).await;
                    }
                }
                for to in paths.path.poll_probes(now_ms) {
                    media.probe(now_ms, &mut datagram).map_err(|e| CallError::Audio(e.to_string()))?;
                    paths.send(&socket, &datagram, to).await;
                }
                remote = paths.path.current(now_ms);
                if let Some((to, kind)) = remote {
                    path_start.get_or_insert(kind);
                    media.poll_transmit(&pcm, &mut datagram).map_err(|e| CallError::Audio(e.to_string()))?;
                    paths.send(&socket, &datagram, to).await;
                }
                // Play: one frame.
                if media.poll_audio(now_ms, &mut frame).map_err(|e| CallError::Audio(e.to_string()))? {
                    first_audio_ms.get_or_insert(setup_ms + now_ms);
                    if let Some(sink) = sink.as_mut() {
                        sink.write(&frame).map_err(|e| CallError::Audio(e.to_string()))?;
                    }
                    if let Some(playback) = playback.as_mut() {
                        playback.push_frame(&frame);
                    }
                }
                if show_status && last_status.elapsed() >= Duration::from_secs(1) {
                    last_status = Instant::now();
                    let s = media.stats();
                    eprint!(
                        "\r{peer}: {:>5.1} s  sent {}  recv {}  lost {}  jitter {:.1} ms  rtt {}   ",
                        start.elapsed().as_secs_f64(),
                        s.sent_media_packets,
                        s.received_media_packets,
                        s.lost,
                        s.jitter_ms,
                        s.last_rtt_ms.map_or("-".into(), |v| format!("{v} ms")),
                    );
                }
                if duration.is_some_and(|d| start.elapsed() >= d) {
                    setup.hangup();
                    let _ = flush(setup, session).await;
                    break;
                }
                if last_heard.elapsed() >= MEDIA_TIMEOUT {
                    setup.hangup();
                    let _ = flush(setup, session).await;
                    break;
                }
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let now_ms = start.elapsed().as_millis() as u64;
                if paths.binds.is_relay(from) && paths.binds.handle(from, &buf[..n]) {
                    continue;
                }
                if natter_proto::stun::looks_like_stun(&buf[..n]) {
                    continue; // a late reflector answer
                }
                if handle_datagram(&mut media, &mut paths, &socket, &buf[..n], from, now_ms, &mut datagram).await? {
                    last_heard = Instant::now();
                    last_udp_heard = last_heard;
                }
            }
            received = paths.tcp.recv() => {
                let Some((from, bytes)) = received else { continue };
                let now_ms = start.elapsed().as_millis() as u64;
                if handle_datagram(&mut media, &mut paths, &socket, &bytes, from, now_ms, &mut datagram).await? {
                    last_heard = Instant::now();
                }
            }
            _ = tokio::signal::ctrl_c() => {
                setup.hangup();
                let _ = flush(setup, session).await;
                break;
            }
            push = session.next_push(), if session_alive => match push {
                Some(envelope::Body::CallSignal(signal)) => {
                    if signal.invite_id == setup.invite_id() {
                        setup.handle_signal(&signal, now_unix_secs());
                        while let Some(event) = setup.poll_event() {
                            if let CallEvent::Candidates(more) = event {
                                paths.add_candidates(&more, start.elapsed().as_millis() as u64);
                            }
                        }
                        if setup.phase() == Phase::Ended {
                            ended_by_peer = true;
                            break;
                        }
                    } else if matches!(signal.kind, Some(call_signal::Kind::Invite(_))) {
                        // Already in a call: busy.
                        let busy = CallSignal {
                            invite_id: signal.invite_id.clone(),
                            // The supernode stamps the sender's name.
                            from: String::new(),
                            to: signal.from.clone(),
                            kind: Some(call_signal::Kind::Busy(Default::default())),
                        };
                        let _ = send_signal(session, busy).await;
                    }
                }
                Some(_) => {}
                // The supernode went away; media keeps flowing peer to peer
                // until the peer hangs up or goes silent.
                None => session_alive = false,
            },
        }
    }
    if show_status {
        eprintln!();
    }
    if let Some(sink) = sink {
        sink.finish().map_err(|e| CallError::Audio(e.to_string()))?;
    }
    let path_end = remote.map(|(_, kind)| kind);
    let path_rtt_ms = remote.and_then(|(addr, _)| {
        paths
            .path
            .targets()
            .iter()
            .find(|t| t.addr == addr)
            .and_then(|t| t.rtt_ms)
    });
    let tcp_stats = paths.tcp.stats();
    Ok(CallReport {
        peer,
        path_start,
        path_end,
        switches: paths.path.switches().to_vec(),
        time_to_direct_ms: paths.path.time_to_direct_ms(),
        remote_addr: remote.map(|(addr, _)| addr),
        duration_s: start.elapsed().as_secs_f64(),
        setup_ms,
        first_audio_ms,
        ended_by_peer,
        media: media.stats(),
        codec_bitrate: media.codec().bitrate,
        signaling: session.transport().name(),
        path_rtt_ms,
        tcp_connects: tcp_stats
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        tcp_dropped: tcp_stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// Handles one datagram from the peer's side (UDP or a TCP leg); returns
/// whether it authenticated. Drops are counted in the media stats.
async fn handle_datagram(
    media: &mut MediaSession,
    paths: &mut Paths,
    socket: &UdpSocket,
    bytes: &[u8],
    from: SocketAddr,
    now_ms: u64,
    scratch: &mut Vec<u8>,
) -> Result<bool, CallError> {
    let Ok(received) = media.handle_datagram(bytes, now_ms) else {
        return Ok(false);
    };
    paths.path.handle_authenticated(from, now_ms);
    match received {
        Received::Media => paths.path.handle_media(from, now_ms),
        // Answer where the probe came from (peer-reflexive).
        Received::Probe(payload) => {
            media
                .probe_reply(&payload, scratch)
                .map_err(|e| CallError::Audio(e.to_string()))?;
            paths.send(socket, scratch, from).await;
        }
        Received::ProbeReply { rtt_ms } => paths.path.handle_probe_reply(from, rtt_ms, now_ms),
        _ => {}
    }
    Ok(true)
}
