//! Placing and answering calls: the tokio shell around
//! [`natter_proto::call::CallSetup`] (signaling through the supernode),
//! [`natter_proto::session::CallSession`] (where each datagram goes, relay
//! binds, the TCP fallback, sealing and opening) and
//! [`natter_media::session::MediaSession`] (codec and jitter buffer).
//!
//! The media loop ([`run_media`]) only moves bytes and time: a 20 ms
//! interval encodes one frame (speech or silence, no suppression), hands it
//! to the call session and plays one frame; datagrams from the UDP socket
//! and from the TLS relay legs ([`crate::tcp_relay`]) go to the call
//! session; whatever the session queues goes out to the socket or the leg
//! it names, and legs open when the session asks. Every path and fallback
//! decision is the session's.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use natter_media::FRAME_SAMPLES;
use natter_media::session::{MediaConfig, MediaSession};
use natter_media::wav::{WavSink, read_mono_48k};
use natter_proto::call::{CallEvent, CallSetup, EndReason, Phase};
use natter_proto::cert::Identity;
use natter_proto::handshake::CallKeys;
use natter_proto::messages::{CallSignal, Candidate, ErrorCode, call_signal, envelope};
use natter_proto::path::Target;
pub use natter_proto::report::CallReport;
use natter_proto::report::SwitchReport;
use natter_proto::session::{CallSession, Event, SessionConfig, SessionSetup};
use rand::RngCore;
use rsa::RsaPublicKey;
use tokio::net::UdpSocket;

use crate::gather::{self, OwnRelay};
use crate::now_unix_secs;
use crate::supernode::{SessionError, SupernodeSession};
use crate::tcp_relay::TcpLegs;

/// Time the callee has to answer.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A call with no media from the peer for this long is over (decided by
/// the call session).
pub const MEDIA_TIMEOUT: Duration = Duration::from_millis(natter_proto::session::MEDIA_TIMEOUT_MS);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// With UDP usable at the start, TCP relay legs open once no UDP datagram
/// has been heard from the peer for this long (decided by the call session).
pub const UDP_SILENCE_FOR_TCP: Duration =
    Duration::from_millis(natter_proto::session::UDP_SILENCE_FOR_TCP_MS);

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

/// Feeds a pushed signal to the call setup; says so on stderr (with
/// `live_status`) when the setup dropped it: not from the peer, or a
/// mid-call signal without the call's MAC.
fn handle_signal(setup: &mut CallSetup, signal: &CallSignal, live_status: bool) {
    let before = setup.ignored();
    setup.handle_signal(signal, now_unix_secs());
    let after = setup.ignored();
    if live_status && after != before {
        let why = if after.wrong_sender != before.wrong_sender {
            "not from the peer"
        } else if after.bad_mac != before.bad_mac {
            "no valid MAC"
        } else {
            "out of place"
        };
        let kind = match &signal.kind {
            Some(call_signal::Kind::Invite(_)) => "invite",
            Some(call_signal::Kind::Ringing(_)) => "ringing",
            Some(call_signal::Kind::Accept(_)) => "accept",
            Some(call_signal::Kind::Reject(_)) => "reject",
            Some(call_signal::Kind::Busy(_)) => "busy",
            Some(call_signal::Kind::Hangup(_)) => "hangup",
            Some(call_signal::Kind::Candidates(_)) => "candidates",
            None => "empty",
        };
        eprintln!(
            "ignored a {kind} signal from {}: {why}",
            crate::text::for_terminal(&signal.from)
        );
    }
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
        &mut rng,
    );
    flush(&mut setup, session).await?;
    // The supernode routed the invite: it grants the caller a relay now (a
    // call starts on the relay), and pushes the callee's side to the callee.
    // The callee's supernode pushes this side of its relay before the accept.
    let mut own_relays: Vec<OwnRelay> = gather::allocate_relay(session, &invite_id)
        .await
        .into_iter()
        .collect();
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
                        own_relays,
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
                Some(envelope::Body::CallSignal(signal)) => {
                    handle_signal(&mut setup, &signal, options.live_status);
                }
                Some(envelope::Body::RelayAllocated(r)) if r.invite_id == invite_id => {
                    own_relays.extend(gather::OwnRelay::of(&r));
                }
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
        if options.live_status {
            let invite: String = signal
                .invite_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            eprintln!(
                "call from {} (invite {invite})",
                crate::text::for_terminal(setup.peer_name())
            );
        }
        flush(&mut setup, session).await?;
        let caller = setup.peer_name().to_owned();
        let mut connected = None;
        let mut own_relays = Vec::new();
        let mut behind_nat = false;
        while let Some(event) = setup.poll_event() {
            match event {
                CallEvent::Incoming { .. } => {
                    let (socket, candidates) = media_socket(session).await?;
                    behind_nat = gather::behind_nat(&candidates);
                    // The supernode routed this side's ringing: it grants a
                    // relay now, before the accept, so that the caller holds
                    // its side (pushed) when the call starts.
                    own_relays.extend(gather::allocate_relay(session, &setup.invite_id()).await);
                    let mut secret = [0u8; 32];
                    rand::thread_rng().fill_bytes(&mut secret);
                    setup.accept(
                        identity,
                        secret,
                        candidates,
                        now_unix_secs(),
                        &mut rand::thread_rng(),
                    );
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
                        own_relays: std::mem::take(&mut own_relays),
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
    /// This side's sides of relay allocations (its own supernode's, and any
    /// the peer's supernode pushed).
    own_relays: Vec<OwnRelay>,
    /// This side's own NAT, if gathering found one.
    behind_nat: bool,
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
        own_relays,
        behind_nat,
    } = transport;
    let mut rng = rand::thread_rng();
    let start_index = (rng.next_u32() as u16) & natter_proto::media::MAX_START;
    crate::keylog::log_call(&keys, setup.role(), u64::from(start_index));
    let mut call = CallSession::new(
        &keys.send,
        &keys.recv,
        SessionSetup {
            udp_blocked: udp_blocked(session),
            behind_nat,
            start_index,
            seed: rng.next_u64(),
        },
        SessionConfig::default(),
        0,
    );
    call.add_candidates(&remote_candidates, 0);
    for own in own_relays {
        call.add_own_relay(own.udp, own.tcp, 0);
    }
    let mut media =
        MediaSession::new(MediaConfig::default()).map_err(|e| CallError::Audio(e.to_string()))?;
    let mut legs = TcpLegs::default();
    let mut io = MediaIo {
        socket: &socket,
        legs: &mut legs,
        media: &mut media,
        peer_silent: false,
    };
    // What the setup queued on connecting: held candidates to send (MACed
    // now), early signals from the peer it could check only now.
    flush(setup, session).await?;
    while let Some(event) = setup.poll_event() {
        if let CallEvent::Candidates(more) = event {
            call.add_candidates(&more, 0);
        }
    }
    // Legs the session wants from the start (UDP blocked) connect while
    // the audio is being set up.
    io.drain(&mut call, 0).await;

    let mut audio_ends = AudioEnds::open(options)?;
    let duration = options.duration.or_else(|| {
        (setup.role() == natter_proto::handshake::Role::Caller)
            .then(|| audio_ends.input_length().unwrap_or(Duration::from_secs(10)))
    });
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(natter_media::FRAME_MS)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut buf = vec![0u8; 2048];
    let mut frame = vec![0i16; FRAME_SAMPLES];
    let mut pcm = vec![0i16; FRAME_SAMPLES];
    let mut first_audio_ms = None;
    let mut ended_by_peer = false;
    let show_status = options.live_status && std::io::stderr().is_terminal();
    let mut last_status = Instant::now();
    let mut session_alive = true;
    let sealing = |e: natter_proto::media::SealError| CallError::Failed(e.to_string());
    let audio = |e: natter_media::session::MediaError| CallError::Audio(e.to_string());

    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now_ms = start.elapsed().as_millis() as u64;
                // Send one frame of the input, play one frame.
                audio_ends.next_frame(&mut pcm);
                call.handle_timeout(now_ms).map_err(sealing)?;
                let payload = io.media.encode(&pcm).map_err(audio)?;
                call.send_voice(payload, now_ms).map_err(sealing)?;
                io.drain(&mut call, now_ms).await;
                if io.media.poll_audio(now_ms, &mut frame).map_err(audio)? {
                    first_audio_ms.get_or_insert(setup_ms + now_ms);
                    audio_ends.play(&frame)?;
                }
                if show_status && last_status.elapsed() >= Duration::from_secs(1) {
                    last_status = Instant::now();
                    let s = call.stats();
                    let m = io.media.stats();
                    let q = m.quality(call.path_rtt_ms());
                    eprint!(
                        "\r{peer}: {:>5.1} s  sent {}  recv {}  lost {}  jitter {:.1} ms  rtt {}  delay {:.0} ms  MOS {:.2}   ",
                        start.elapsed().as_secs_f64(),
                        s.sent_media_packets,
                        s.received_media_packets,
                        m.lost,
                        m.jitter_ms,
                        s.last_rtt_ms.map_or("-".into(), |v| format!("{v} ms")),
                        q.delay_ms,
                        q.mos,
                    );
                }
                if duration.is_some_and(|d| start.elapsed() >= d) || io.peer_silent {
                    setup.hangup();
                    let _ = flush(setup, session).await;
                    break;
                }
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let now_ms = start.elapsed().as_millis() as u64;
                call.handle_datagram(Target::Udp(from), &buf[..n], now_ms).map_err(sealing)?;
                io.drain(&mut call, now_ms).await;
            }
            received = io.legs.recv() => {
                let Some((from, bytes)) = received else { continue };
                let now_ms = start.elapsed().as_millis() as u64;
                call.handle_datagram(Target::TcpLeg(from), &bytes, now_ms).map_err(sealing)?;
                io.drain(&mut call, now_ms).await;
            }
            _ = tokio::signal::ctrl_c() => {
                setup.hangup();
                let _ = flush(setup, session).await;
                break;
            }
            push = session.next_push(), if session_alive => match push {
                Some(envelope::Body::CallSignal(signal)) => {
                    if signal.invite_id == setup.invite_id() {
                        handle_signal(setup, &signal, options.live_status);
                        while let Some(event) = setup.poll_event() {
                            if let CallEvent::Candidates(more) = event {
                                call.add_candidates(&more, start.elapsed().as_millis() as u64);
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
                            mac: Vec::new(),
                        };
                        let _ = send_signal(session, busy).await;
                    }
                }
                // The peer's supernode granted this side of its relay.
                Some(envelope::Body::RelayAllocated(r)) if r.invite_id == setup.invite_id() => {
                    if let Some(own) = gather::OwnRelay::of(&r) {
                        let now_ms = start.elapsed().as_millis() as u64;
                        call.add_own_relay(own.udp, own.tcp, now_ms);
                        io.drain(&mut call, now_ms).await;
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
    audio_ends.finish()?;
    let tcp_stats = io.legs.stats();
    let done = CallDone {
        peer,
        duration_s: start.elapsed().as_secs_f64(),
        setup_ms,
        first_audio_ms,
        ended_by_peer,
        signaling: session.transport().name(),
        tcp_connects: tcp_stats
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        tcp_dropped: tcp_stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        ignored_signals: setup.ignored().total(),
    };
    Ok(done.report(&call, io.media))
}

/// The audio ends of a call: what is sent (a WAV, else the sound card,
/// else silence) and where what is heard goes (a WAV, the sound card).
struct AudioEnds {
    input: Vec<i16>,
    capture: Option<natter_media::devices::Capture>,
    playback: Option<natter_media::devices::Playback>,
    sink: Option<WavSink>,
    frame_index: usize,
}

impl AudioEnds {
    fn open(options: &CallOptions) -> Result<Self, CallError> {
        let input = match &options.audio_in {
            Some(path) => read_mono_48k(path).map_err(|e| CallError::Audio(e.to_string()))?,
            None => Vec::new(),
        };
        let device_name = |name: &String| {
            (name != "default")
                .then_some(name.as_str())
                .map(str::to_owned)
        };
        let capture = match (&options.audio_in, &options.input_device) {
            (None, Some(name)) => Some(
                natter_media::devices::Capture::open(device_name(name).as_deref())
                    .map_err(|e| CallError::Audio(e.to_string()))?,
            ),
            _ => None,
        };
        let playback = match (&options.audio_out, &options.output_device) {
            (None, Some(name)) => Some(
                natter_media::devices::Playback::open(device_name(name).as_deref())
                    .map_err(|e| CallError::Audio(e.to_string()))?,
            ),
            _ => None,
        };
        let sink = match &options.audio_out {
            Some(path) => Some(WavSink::create(path).map_err(|e| CallError::Audio(e.to_string()))?),
            None => None,
        };
        Ok(Self {
            input,
            capture,
            playback,
            sink,
            frame_index: 0,
        })
    }

    /// How long the WAV input lasts (`None` without one, or an empty one).
    fn input_length(&self) -> Option<Duration> {
        (!self.input.is_empty()).then(|| Duration::from_millis((self.input.len() / 48) as u64))
    }

    /// The next frame to send (silence after the input's end).
    fn next_frame(&mut self, pcm: &mut [i16]) {
        let from = self.frame_index * FRAME_SAMPLES;
        pcm.fill(0);
        if let Some(capture) = self.capture.as_mut() {
            capture.next_frame(pcm);
        } else if from < self.input.len() {
            let n = (self.input.len() - from).min(FRAME_SAMPLES);
            pcm[..n].copy_from_slice(&self.input[from..from + n]);
        }
        self.frame_index += 1;
    }

    /// Plays one frame heard from the peer.
    fn play(&mut self, frame: &[i16]) -> Result<(), CallError> {
        if let Some(sink) = self.sink.as_mut() {
            sink.write(frame)
                .map_err(|e| CallError::Audio(e.to_string()))?;
        }
        if let Some(playback) = self.playback.as_mut() {
            playback.push_frame(frame);
        }
        Ok(())
    }

    /// Completes the WAV output.
    fn finish(self) -> Result<(), CallError> {
        if let Some(sink) = self.sink {
            sink.finish().map_err(|e| CallError::Audio(e.to_string()))?;
        }
        Ok(())
    }
}

/// Where the call session's output goes: the UDP socket, the TLS legs, the
/// media session.
struct MediaIo<'a> {
    socket: &'a UdpSocket,
    legs: &'a mut TcpLegs,
    media: &'a mut MediaSession,
    /// The session reported the peer silent: hang up.
    peer_silent: bool,
}

impl MediaIo<'_> {
    /// Acts on the session's events (legs first, so that datagrams for a
    /// new leg find it open), then sends what it queued.
    async fn drain(&mut self, call: &mut CallSession, now_ms: u64) {
        while let Some(event) = call.poll_event() {
            match event {
                Event::OpenTcpLeg(leg) => {
                    self.legs.open(leg);
                }
                Event::Voice { number, payload } => {
                    // Late and duplicate frames are counted by the jitter buffer.
                    let _ = self.media.handle_frame(number, &payload, now_ms);
                }
                Event::PeerSilent => self.peer_silent = true,
                Event::PathChanged { .. } => {}
            }
        }
        while let Some(t) = call.poll_transmit() {
            match t.to {
                Target::Udp(to) => {
                    let _ = self.socket.send_to(&t.bytes, to).await;
                }
                Target::TcpLeg(to) => {
                    self.legs.send(to, &t.bytes);
                }
            }
        }
    }
}

/// What the shell knows of a finished call, besides the two sessions.
struct CallDone {
    peer: String,
    duration_s: f64,
    setup_ms: u64,
    first_audio_ms: Option<u64>,
    ended_by_peer: bool,
    signaling: &'static str,
    tcp_connects: u64,
    tcp_dropped: u64,
    ignored_signals: u64,
}

impl CallDone {
    fn report(self, call: &CallSession, media: &MediaSession) -> CallReport {
        let s = call.stats();
        let m = media.stats();
        let secs = self.duration_s.max(0.001);
        let current = call.current();
        let quality = m.quality(call.path_rtt_ms());
        CallReport {
            peer: self.peer,
            path: current.map(|(_, kind)| kind),
            path_start: call.path_start(),
            path_end: current.map(|(_, kind)| kind),
            switches: call.switches().iter().map(SwitchReport::from).collect(),
            time_to_direct_ms: call.time_to_direct_ms(),
            remote_addr: current.map(|(to, _)| to.addr()),
            duration_s: self.duration_s,
            setup_ms: self.setup_ms,
            first_audio_ms: self.first_audio_ms,
            ended_by_peer: self.ended_by_peer,
            rtt_ms: s.last_rtt_ms,
            jitter_ms: m.jitter_ms,
            packets_sent: s.sent_packets,
            packets_received: s.received_packets,
            media_packets_sent: s.sent_media_packets,
            media_packets_received: s.received_media_packets,
            packets_lost: m.lost,
            packets_late: m.jitter.late,
            duplicates: m.jitter.duplicate,
            fec_recoveries: m.jitter.fec,
            concealed_frames: m.jitter.concealed,
            dropped_auth: s.dropped_auth,
            dropped_replay: s.dropped_replay,
            dropped_malformed: s.dropped_malformed,
            jitter_buffer_delay_ms: m.jitter_buffer_delay_ms,
            jb_added_delay_p50_ms: m.added_delay_p50_ms,
            jb_added_delay_p95_ms: m.added_delay_p95_ms,
            late_loss_pct: m.late_loss_pct,
            send_bytes_per_s: s.sent_bytes as f64 / secs,
            recv_bytes_per_s: s.received_bytes as f64 / secs,
            mean_udp_payload: if s.sent_packets == 0 {
                0.0
            } else {
                s.sent_bytes as f64 / s.sent_packets as f64
            },
            codec_bitrate: media.codec().bitrate,
            mos_estimate: quality.mos,
            mouth_to_ear_ms: quality.delay_ms,
            signaling: self.signaling.to_owned(),
            path_rtt_ms: call.path_rtt_ms(),
            tcp_connects: self.tcp_connects,
            tcp_dropped: self.tcp_dropped,
            ignored_signals: self.ignored_signals,
        }
    }
}
