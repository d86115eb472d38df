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
//! decision is the session's; when it asks for a relay migration
//! ([`Event::MigrateRelay`]) the shell carries it out (`migrate_relay`),
//! and a supernode lost during the call is rejoined by the call's link
//! ([`crate::call_link`], the CLI's calls).

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use natter_proto::report::{Sample, SampleSeries};
use natter_proto::session::{CallSession, Event, SessionConfig, SessionSetup};
use rand::RngCore;
use rsa::RsaPublicKey;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};

use crate::call_link::CallLink;
use crate::gather::{self, OwnRelay};
use crate::hold::{HoldLog, ScheduledHold};
use crate::leg::{LegAudio, LegCommand, LegEvent, LegPort};
use crate::now_unix_secs;
use crate::supernode::{SessionError, SupernodeSession};
use crate::tcp_relay::TcpLegs;

/// Time the callee has to answer.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A call with no media from the peer for this long is over (decided by
/// the call session).
pub const MEDIA_TIMEOUT: Duration = Duration::from_millis(natter_proto::session::MEDIA_TIMEOUT_MS);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a signal or allocation of a relay migration may take (the
/// media of the call waits meanwhile; the call session asks again).
const MIGRATION_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a relay migration waits for a signal to the peer to be routed:
/// a peer joined at the same supernode takes milliseconds; a peer not yet
/// rejoined keeps the supernode looking it up (through replicas that may
/// have died with the old supernode) for seconds, and then the allocation
/// is asked for anyway (the peer's own signal may have made the call known
/// there). Waiting the full second twice made the lab's relay-loss gap 2.5 s.
const MIGRATION_SIGNAL_WAIT: Duration = Duration::from_millis(300);
/// How long a hangup keeps trying when the supernode was lost or the peer
/// is not reachable yet (it is rejoining too).
pub const HANGUP_PERSIST: Duration = Duration::from_secs(8);
/// Pause between two tries of a hangup.
const HANGUP_RETRY: Duration = Duration::from_millis(500);
/// With UDP usable at the start, TCP relay legs open once no UDP datagram
/// has been heard from the peer for this long (decided by the call session).
pub const UDP_SILENCE_FOR_TCP: Duration =
    Duration::from_millis(natter_proto::session::UDP_SILENCE_FOR_TCP_MS);
/// Datagrams read at most, each frame period, between sending and playing
/// (those that waited while the call's task was not running), so a flood
/// cannot hold the frame period up.
const READ_BEFORE_PLAYOUT: usize = 32;

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
    /// Mute, hold and hang up from another task, and the live figures
    /// ([`CallControl`]); none for a call that runs on its own.
    pub control: Option<Arc<CallControl>>,
    /// A hold at a set time of the call (`natter call --hold-at`).
    pub hold: Option<ScheduledHold>,
    /// The call is a leg of a conference ([`crate::conference`]): its audio
    /// ends are the conference's frame queues (the WAV and device options
    /// are not used), conference messages go to and come from it, and it
    /// runs until the conference hangs it up (or the peer does).
    pub leg: Option<Arc<LegPort>>,
}

impl CallOptions {
    /// What this side sends, as a person reads it: the WAV file, the
    /// sound card, or silence.
    pub fn input_name(&self) -> String {
        match (&self.audio_in, &self.input_device) {
            (Some(path), _) => format!("WAV {}", path.display()),
            (None, Some(device)) => format!("sound card {device}"),
            (None, None) => "silence (no --audio-in or --input-device)".to_owned(),
        }
    }

    /// Where what is heard goes: the WAV file, the sound card, or nowhere.
    pub fn output_name(&self) -> String {
        match (&self.audio_out, &self.output_device) {
            (Some(path), _) => format!("WAV {}", path.display()),
            (None, Some(device)) => format!("sound card {device}"),
            (None, None) => "nowhere (no --audio-out or --output-device)".to_owned(),
        }
    }
}

/// A running call's controls, for another task than the call's (the
/// terminal UI's keys, the lines the CLI's `call` and `answer` read on
/// standard input), and its live figures, refreshed every second.
///
/// Mute sends silence instead of the input; hold sends silence, plays
/// silence and tells the peer (a MACed `hold` signal, [`crate::hold`]).
/// Either way a frame still goes out every 20 ms (50 packets/s each way,
/// as the call started), so the path, the NAT mappings and the peer's
/// media timeout stay as they were.
#[derive(Debug, Default)]
pub struct CallControl {
    muted: AtomicBool,
    held: AtomicBool,
    hangup: Notify,
    live: std::sync::Mutex<Option<LiveStats>>,
    /// Set by a conference: `add NAME` is understood.
    conference: AtomicBool,
    /// Names asked to be added (`add NAME`), for the conference to take
    /// (at most [`MAX_ADDS_WAITING`]).
    adds: std::sync::Mutex<Vec<String>>,
}

/// Most `add NAME` requests waiting for the conference to take them.
const MAX_ADDS_WAITING: usize = 4;

impl CallControl {
    /// Mutes (true) or unmutes the input.
    pub fn set_muted(&self, muted: bool) {
        self.muted.store(muted, Ordering::Relaxed);
    }

    /// Whether the input is muted.
    pub fn muted(&self) -> bool {
        self.muted.load(Ordering::Relaxed)
    }

    /// Puts the call on hold (true) or takes it off.
    pub fn set_held(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
    }

    /// Whether the call is on hold.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Hangs up (or cancels a call still ringing); remembered if the
    /// call is not waiting for it yet.
    pub fn hang_up(&self) {
        self.hangup.notify_one();
    }

    /// The last live figures (none before the call connected).
    pub fn live(&self) -> Option<LiveStats> {
        self.live.lock().ok().and_then(|l| l.clone())
    }

    fn set_live(&self, stats: LiveStats) {
        if let Ok(mut live) = self.live.lock() {
            *live = Some(stats);
        }
    }

    /// A conference runs on this control: `add NAME` invites NAME.
    pub(crate) fn set_conference(&self) {
        self.conference.store(true, Ordering::Relaxed);
    }

    /// Asks the conference to add `name` (false: not a conference, or too
    /// many requests waiting).
    pub fn request_add(&self, name: &str) -> bool {
        if !self.conference.load(Ordering::Relaxed) {
            return false;
        }
        match self.adds.lock() {
            Ok(mut adds) if adds.len() < MAX_ADDS_WAITING => {
                adds.push(name.to_owned());
                true
            }
            _ => false,
        }
    }

    /// The names asked to be added since the last call.
    pub(crate) fn take_adds(&self) -> Vec<String> {
        self.adds
            .lock()
            .map(|mut adds| std::mem::take(&mut *adds))
            .unwrap_or_default()
    }

    pub(crate) async fn hung_up(control: Option<&Self>) {
        match control {
            Some(c) => c.hangup.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Acts on one line typed during a CLI call: `m` (mute / unmute),
    /// `h` (hold / resume), `q` (hang up), in a conference `add NAME`
    /// (invite NAME); returns what it did, or `None` for a line it does not
    /// know.
    pub fn command(&self, line: &str) -> Option<&'static str> {
        if let Some(name) = line.trim().strip_prefix("add ") {
            let name = name.trim();
            return Some(if name.is_empty() {
                "add NAME: whom to add"
            } else if !self.conference.load(Ordering::Relaxed) {
                "add works in a conference (natter call A B ...)"
            } else if self.request_add(name) {
                "adding"
            } else {
                "add: too many waiting, try again"
            });
        }
        match line.trim() {
            "m" | "mute" => {
                let muted = !self.muted();
                self.set_muted(muted);
                Some(if muted { "muted" } else { "unmuted" })
            }
            "h" | "hold" => {
                let held = !self.held();
                self.set_held(held);
                Some(if held { "on hold" } else { "resumed" })
            }
            "q" | "hangup" => {
                self.hang_up();
                Some("hanging up")
            }
            _ => None,
        }
    }
}

/// A connected call's figures at one moment (what the live status line
/// and the terminal UI show; the call report has the same at the end).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LiveStats {
    /// Seconds since the media started.
    pub elapsed_s: f64,
    /// The path in use (`direct`, `hole-punched`, `relay`, ...).
    pub path: Option<&'static str>,
    /// Where datagrams go on that path.
    pub remote: Option<SocketAddr>,
    /// Round-trip time of the path in use.
    pub rtt_ms: Option<u64>,
    /// Interarrival jitter.
    pub jitter_ms: f64,
    /// Frames lost.
    pub lost: u64,
    /// Media packets sent and received.
    pub sent: u64,
    pub received: u64,
    /// Estimated MOS (G.107 E-model) and mouth-to-ear delay.
    pub mos: f64,
    pub delay_ms: f64,
    /// The peer has the call on hold (its `hold` signal).
    pub held_by_peer: bool,
}

/// Where a call reads its pushes (signals, relay grants) from.
#[derive(Debug)]
pub enum Signals<'a> {
    /// The session's push queue itself: nothing else reads it during the
    /// call (the CLI's `call` and `answer`).
    Session(&'a SupernodeSession),
    /// A bounded channel fed by the one task that reads the session's
    /// pushes and hands each to whoever it is for (the terminal UI).
    Channel(&'a mut mpsc::Receiver<envelope::Body>),
    /// The call owns the overlay ([`CallLink`]): the pushes of its current
    /// session; a supernode lost during the call is rejoined and the call's
    /// signaling goes on through the new one (the CLI's `call` and
    /// `answer`).
    Link(CallLink<'a>),
}

impl Signals<'_> {
    /// The next push; `None` once the session (or the feeding task) ended
    /// (for a link: once no supernode can be joined any more).
    pub async fn next(&mut self) -> Option<envelope::Body> {
        match self {
            Signals::Session(session) => session.next_push().await,
            Signals::Channel(rx) => rx.recv().await,
            Signals::Link(link) => link.next_push().await,
        }
    }

    /// A link's current session (`None` for the other kinds, or while the
    /// link rejoins).
    pub(crate) fn current_session(&self) -> Option<Arc<SupernodeSession>> {
        match self {
            Signals::Link(link) => link.session_arc(),
            Signals::Session(_) | Signals::Channel(_) => None,
        }
    }

    /// The session to send the call's signals on now: a link's current
    /// one (`None` while it rejoins), else `session` itself.
    fn sender<'s>(&'s self, session: &'s SupernodeSession) -> Option<&'s SupernodeSession> {
        match self {
            Signals::Link(link) => link.session(),
            Signals::Session(_) | Signals::Channel(_) => Some(session),
        }
    }
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
    #[error("the call to {0} was cancelled")]
    Cancelled(String),
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
    send_signal_within(session, signal, REQUEST_TIMEOUT).await
}

async fn send_signal_within(
    session: &SupernodeSession,
    signal: CallSignal,
    timeout: Duration,
) -> Result<(), CallError> {
    let to = signal.to.clone();
    match session
        .request(envelope::Body::CallSignal(signal), timeout)
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
    flush_within(setup, session, REQUEST_TIMEOUT).await
}

/// [`flush`], each signal waiting at most `timeout` for its answer.
async fn flush_within(
    setup: &mut CallSetup,
    session: &SupernodeSession,
    timeout: Duration,
) -> Result<(), CallError> {
    while let Some(signal) = setup.poll_signal() {
        send_signal_within(session, signal, timeout).await?;
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
            Some(call_signal::Kind::Hold(_)) => "hold",
            Some(call_signal::Kind::Conference(_)) => "conference",
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
    let mut signals = Signals::Session(session);
    place_call_via(
        session,
        &mut signals,
        identity,
        local_name,
        login_key,
        callee,
        options,
    )
    .await
}

/// [`place_call`], reading the call's pushes from `signals`.
pub async fn place_call_via(
    session: &SupernodeSession,
    signals: &mut Signals<'_>,
    identity: &Identity,
    local_name: &str,
    login_key: &RsaPublicKey,
    callee: &str,
    options: &CallOptions,
) -> Result<CallReport, CallError> {
    let started = Instant::now();
    let (socket, candidates) = media_socket(session).await?;
    let behind_nat = gather::behind_nat(&candidates);
    let predicted = gather::predicted(&candidates);
    let mut rng = rand::thread_rng();
    let mut invite_id = [0u8; 16];
    rng.fill_bytes(&mut invite_id);
    if let Some(id) = options.leg.as_ref().and_then(|leg| leg.invite_id) {
        invite_id = id;
    }
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
    if let Some(leg) = &options.leg {
        setup.set_conference_id(leg.conference_id);
    }
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
                        predicted,
                    };
                    return run_media(
                        session, signals, &mut setup, transport, *keys, options, setup_ms,
                    )
                    .await;
                }
                CallEvent::Ended(reason) => return Err(end_error(reason, callee)),
                CallEvent::Candidates(mut more) => trickled.append(&mut more),
                CallEvent::Incoming { .. } | CallEvent::PeerHold(_) | CallEvent::Conference(_) => {}
            }
        }
        let deadline = setup
            .poll_timeout()
            .unwrap_or(SETUP_TIMEOUT.as_millis() as u64);
        let remaining = Duration::from_millis(deadline).saturating_sub(started.elapsed());
        tokio::select! {
            push = signals.next() => match push {
                Some(envelope::Body::CallSignal(signal)) => {
                    handle_signal(&mut setup, &signal, options.live_status);
                }
                Some(envelope::Body::RelayAllocated(r)) if r.invite_id == invite_id => {
                    own_relays.extend(gather::OwnRelay::of(&r));
                }
                Some(_) => {}
                None => return Err(CallError::SessionLost),
            },
            () = CallControl::hung_up(options.control.as_deref()) => {
                // Cancelled while ringing.
                setup.hangup();
                let _ = flush(&mut setup, session).await;
                return Err(CallError::Cancelled(callee.to_owned()));
            }
            () = tokio::time::sleep(remaining) => {
                setup.handle_timeout(started.elapsed().as_millis() as u64);
                let _ = flush(&mut setup, session).await;
            }
        }
    }
}

/// Waits for incoming calls, answers each (or declines each, when
/// `accept` is false: `natter answer --decline`), and returns after
/// `calls` calls.
pub async fn answer_calls(
    session: &SupernodeSession,
    identity: &Identity,
    local_name: &str,
    login_key: &RsaPublicKey,
    calls: usize,
    accept: bool,
    options: &CallOptions,
) -> Result<Vec<CallReport>, CallError> {
    let me = Incoming {
        session,
        identity,
        local_name,
        login_key,
        options,
    };
    answer_calls_via(me, &mut Signals::Session(session), calls, accept).await
}

/// [`answer_calls`] as `me`, reading the calls' pushes from `signals` (a
/// [`Signals::Link`] rejoins between and during calls).
pub async fn answer_calls_via(
    me: Incoming<'_>,
    signals: &mut Signals<'_>,
    calls: usize,
    accept: bool,
) -> Result<Vec<CallReport>, CallError> {
    let mut reports = Vec::new();
    let mut handled = 0;
    while handled < calls {
        let signal = next_invite(signals).await?;
        // The supernode the invite came through (a link may have rejoined).
        let current = signals.current_session();
        let incoming = Incoming {
            session: current.as_deref().unwrap_or(me.session),
            ..me
        };
        match incoming
            .answer(signals, &signal, async move { accept })
            .await?
        {
            Answered::Talked(report) => {
                reports.push(*report);
                handled += 1;
            }
            Answered::Declined => handled += 1,
            Answered::Missed(_) => {}
        }
    }
    Ok(reports)
}

/// The next invite pushed (other pushes are dropped: no call is running).
pub async fn next_invite(signals: &mut Signals<'_>) -> Result<CallSignal, CallError> {
    loop {
        let Some(push) = signals.next().await else {
            return Err(CallError::SessionLost);
        };
        if let envelope::Body::CallSignal(signal) = push
            && matches!(signal.kind, Some(call_signal::Kind::Invite(_)))
        {
            return Ok(signal);
        }
    }
}

/// What became of an incoming call.
#[derive(Debug)]
pub enum Answered {
    /// Accepted and talked: the call's report.
    Talked(Box<CallReport>),
    /// Declined (the caller was told).
    Declined,
    /// It ended before it was answered (the caller hung up, the invite
    /// did not verify, nobody answered in time): why.
    Missed(String),
}

/// An incoming call's context: who this side is and how it talks.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub session: &'a SupernodeSession,
    pub identity: &'a Identity,
    pub local_name: &'a str,
    pub login_key: &'a RsaPublicKey,
    pub options: &'a CallOptions,
}

impl Incoming<'_> {
    /// Answers the `invite` (a pushed `CallSignal`): rings (the caller is
    /// told), then waits for `accept` (a person's decision, or at once for
    /// `natter answer`) while following the call's signals from
    /// `signals` (the caller may give up; the setup times out), and then
    /// accepts and talks until either side hangs up, or declines.
    pub async fn answer(
        self,
        signals: &mut Signals<'_>,
        invite: &CallSignal,
        accept: impl Future<Output = bool>,
    ) -> Result<Answered, CallError> {
        let Self {
            session,
            identity,
            local_name,
            login_key,
            options,
        } = self;
        let started = Instant::now();
        let Some(mut setup) = CallSetup::incoming(
            invite,
            local_name,
            login_key.clone(),
            now_unix_secs(),
            0,
            SETUP_TIMEOUT.as_millis() as u64,
        ) else {
            return Ok(Answered::Missed("not an invite".to_owned()));
        };
        if options.live_status {
            let id: String = invite
                .invite_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            eprintln!(
                "call from {} (invite {id})",
                crate::text::for_terminal(setup.peer_name())
            );
        }
        flush(&mut setup, session).await?;
        let caller = setup.peer_name().to_owned();
        let mut own_relays = Vec::new();
        let mut early_relays = Vec::new();
        match setup.poll_event() {
            Some(CallEvent::Incoming { .. }) => {}
            Some(CallEvent::Ended(reason)) => {
                let why = end_error(reason, &caller).to_string();
                if options.live_status {
                    eprintln!("call from {caller} refused: {why}");
                }
                return Ok(Answered::Missed(why));
            }
            _ => return Ok(Answered::Missed("out of place".to_owned())),
        }
        // Ringing: until the decision, the caller may hang up and the
        // setup may time out.
        let mut accept = std::pin::pin!(accept);
        let accepted = loop {
            let deadline = setup
                .poll_timeout()
                .unwrap_or(SETUP_TIMEOUT.as_millis() as u64);
            let remaining = Duration::from_millis(deadline).saturating_sub(started.elapsed());
            tokio::select! {
                biased;
                decision = &mut accept => break decision,
                push = signals.next() => match push {
                    Some(envelope::Body::CallSignal(signal)) if signal.invite_id == setup.invite_id() => {
                        handle_signal(&mut setup, &signal, options.live_status);
                    }
                    Some(envelope::Body::CallSignal(signal)) => answer_busy(session, &signal).await,
                    Some(envelope::Body::RelayAllocated(r)) if r.invite_id == setup.invite_id() => {
                        early_relays.extend(gather::OwnRelay::of(&r));
                    }
                    Some(_) => {}
                    None => return Err(CallError::SessionLost),
                },
                () = tokio::time::sleep(remaining) => {
                    setup.handle_timeout(started.elapsed().as_millis() as u64);
                    let _ = flush(&mut setup, session).await;
                }
            }
            if setup.phase() == Phase::Ended {
                let why = match setup.poll_event() {
                    Some(CallEvent::Ended(EndReason::HungUp { .. })) => {
                        format!("{caller} hung up")
                    }
                    Some(CallEvent::Ended(reason)) => end_error(reason, &caller).to_string(),
                    _ => "ended".to_owned(),
                };
                return Ok(Answered::Missed(why));
            }
        };
        if !accepted {
            setup.reject(false);
            flush(&mut setup, session).await?;
            return Ok(Answered::Declined);
        }
        let (socket, candidates) = media_socket(session).await?;
        let behind_nat = gather::behind_nat(&candidates);
        let predicted = gather::predicted(&candidates);
        // The supernode routed this side's ringing: it grants a relay now,
        // before the accept, so that the caller holds its side (pushed)
        // when the call starts.
        own_relays.extend(gather::allocate_relay(session, &setup.invite_id()).await);
        own_relays.append(&mut early_relays);
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
        while let Some(event) = setup.poll_event() {
            match event {
                CallEvent::Connected {
                    keys,
                    remote_candidates,
                } => {
                    let setup_ms = started.elapsed().as_millis() as u64;
                    let transport = MediaTransport {
                        socket,
                        remote_candidates,
                        own_relays,
                        behind_nat,
                        predicted,
                    };
                    let report = run_media(
                        session, signals, &mut setup, transport, *keys, options, setup_ms,
                    )
                    .await?;
                    return Ok(Answered::Talked(Box::new(report)));
                }
                CallEvent::Ended(reason) => {
                    let why = end_error(reason, &caller).to_string();
                    if options.live_status {
                        eprintln!("call from {caller} refused: {why}");
                    }
                    return Ok(Answered::Missed(why));
                }
                CallEvent::Incoming { .. }
                | CallEvent::Ringing
                | CallEvent::Candidates(_)
                | CallEvent::PeerHold(_)
                | CallEvent::Conference(_) => {}
            }
        }
        Ok(Answered::Missed("the setup did not connect".to_owned()))
    }
}

/// Answers another call's invite with busy (this side is in a call, or
/// deciding on one); other signals of other calls are dropped.
pub(crate) async fn answer_busy(session: &SupernodeSession, signal: &CallSignal) {
    if matches!(signal.kind, Some(call_signal::Kind::Invite(_))) {
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

/// The media socket of a call and what is known of where to send.
struct MediaTransport {
    socket: UdpSocket,
    remote_candidates: Vec<Candidate>,
    /// This side's sides of relay allocations (its own supernode's, and any
    /// the peer's supernode pushed).
    own_relays: Vec<OwnRelay>,
    /// This side's own NAT, if gathering found one.
    behind_nat: bool,
    /// This side's predicted candidates (for the report).
    predicted: Vec<SocketAddr>,
}

/// Runs the media of a connected call until either side hangs up.
async fn run_media(
    session: &SupernodeSession,
    signals: &mut Signals<'_>,
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
        predicted,
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
        migrate: None,
        migrations: 0,
        migration_deferred: false,
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
    // A leg runs until its conference hangs it up.
    let duration = options.duration.or_else(|| {
        (setup.role() == natter_proto::handshake::Role::Caller && options.leg.is_none())
            .then(|| audio_ends.input_length().unwrap_or(Duration::from_secs(10)))
    });
    let mut leg_commands = options.leg.as_ref().and_then(|leg| leg.take_commands());
    if let Some(leg) = &options.leg {
        let up = LegEvent::Up {
            invite_id: setup.invite_id(),
            peer: peer.clone(),
        };
        let _ = leg.events.send(up).await;
    }
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(natter_media::FRAME_MS)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut buf = vec![0u8; 2048];
    let mut frame = vec![0i16; FRAME_SAMPLES];
    let mut pcm = vec![0i16; FRAME_SAMPLES];
    let mut first_audio_ms = None;
    let mut ended_by_peer = false;
    let show_status = options.live_status && std::io::stderr().is_terminal();
    let control = options.control.as_deref();
    // The figures go out at once, then every second.
    let mut last_status: Option<Instant> = None;
    let mut series = SampleSeries::default();
    let mut session_alive = true;
    let mut holds = HoldLog::default();
    // The last frame period's time: the call's media ended there (what
    // follows is hanging up), for the report's longest media gap.
    let mut last_tick_ms = 0u64;
    // Mid-call signals of this side (hold, a conference's messages), sent
    // beside the media loop in order, so that waiting for the supernode's
    // ack never delays a frame.
    let mut hold_signal: Option<std::pin::Pin<Box<dyn Future<Output = ()> + '_>>> = None;
    let sealing = |e: natter_proto::media::SealError| CallError::Failed(e.to_string());
    let audio = |e: natter_media::session::MediaError| CallError::Audio(e.to_string());

    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now_ms = start.elapsed().as_millis() as u64;
                last_tick_ms = now_ms;
                // Send one frame of the input (silence when muted or on
                // hold: the packet still goes), play one frame.
                audio_ends.next_frame(&mut pcm);
                let held = control.is_some_and(CallControl::held)
                    || options.hold.is_some_and(|h| h.covers(start.elapsed()));
                if held || control.is_some_and(CallControl::muted) {
                    pcm.fill(0);
                }
                let hold_changed = holds.set_own(held, call.stats().sent_media_packets);
                // The supernode's UDP service (the relay's port) echoing
                // this side's beacons: UDP works, whatever the peer's
                // silence (a relay migration, a peer that moved to TCP).
                if let Some(at) = signals.sender(session).and_then(SupernodeSession::udp_echoed_at) {
                    call.handle_udp_works(at.saturating_duration_since(start).as_millis() as u64);
                }
                call.handle_timeout(now_ms).map_err(sealing)?;
                let payload = io.media.encode(&pcm).map_err(audio)?;
                call.send_voice(payload, now_ms).map_err(sealing)?;
                io.drain(&mut call, now_ms).await;
                if hold_changed {
                    setup.hold(held);
                    send_beside(&mut hold_signal, setup, session);
                }
                // What came while this task was not running (a busy
                // machine: the tick and the datagrams were ready together)
                // is filed before the frame due is played: it may be there.
                for _ in 0..READ_BEFORE_PLAYOUT {
                    let now_ms = start.elapsed().as_millis() as u64;
                    if let Ok((n, from)) = socket.try_recv_from(&mut buf) {
                        call.handle_datagram(Target::Udp(from), &buf[..n], now_ms)
                            .map_err(sealing)?;
                    } else if let Some((from, bytes)) = io.legs.try_recv() {
                        call.handle_datagram(Target::TcpLeg(from), &bytes, now_ms)
                            .map_err(sealing)?;
                    } else {
                        break;
                    }
                    io.drain(&mut call, now_ms).await;
                }
                if io.media.poll_audio(now_ms, &mut frame).map_err(audio)? {
                    first_audio_ms.get_or_insert(setup_ms + now_ms);
                    if held {
                        frame.fill(0);
                    }
                    audio_ends.play(&frame)?;
                }
                if series.due(now_ms) {
                    let s = call.stats();
                    let m = io.media.stats();
                    series.push(Sample {
                        at_ms: now_ms,
                        rtt_ms: s.last_rtt_ms,
                        jitter_ms: m.jitter_ms,
                        received: s.received_media_packets,
                        lost: m.lost,
                        fec_recoveries: m.jitter.fec,
                        concealed: m.jitter.concealed,
                    });
                }
                if (show_status || control.is_some())
                    && last_status.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                {
                    last_status = Some(Instant::now());
                    let s = call.stats();
                    let m = io.media.stats();
                    let q = m.quality(call.path_rtt_ms());
                    if let Some(control) = control {
                        let current = call.current();
                        control.set_live(LiveStats {
                            elapsed_s: start.elapsed().as_secs_f64(),
                            path: current.map(|(_, kind)| kind.name()),
                            remote: current.map(|(to, _)| to.addr()),
                            rtt_ms: call.path_rtt_ms(),
                            jitter_ms: m.jitter_ms,
                            lost: m.lost,
                            sent: s.sent_media_packets,
                            received: s.received_media_packets,
                            mos: q.mos,
                            delay_ms: q.delay_ms,
                            held_by_peer: holds.held_by_peer(),
                        });
                    }
                    if show_status {
                    eprint!(
                        "\r{peer}: {:>5.1} s  sent {}  recv {}  lost {}  jitter {:.1} ms  rtt {}  delay {:.0} ms  MOS {:.2}{}   ",
                        start.elapsed().as_secs_f64(),
                        s.sent_media_packets,
                        s.received_media_packets,
                        m.lost,
                        m.jitter_ms,
                        s.last_rtt_ms.map_or("-".into(), |v| format!("{v} ms")),
                        q.delay_ms,
                        q.mos,
                        if holds.held_by_peer() { "  on hold by peer" } else { "" },
                    );
                    }
                }
                if duration.is_some_and(|d| start.elapsed() >= d) || io.peer_silent {
                    setup.hangup();
                    // A silent peer is gone: one try is enough.
                    send_hangup(setup, signals, session, !io.peer_silent).await;
                    break;
                }
                // The supernode was lost and another joined: what waited
                // for it goes out, and a deferred migration goes on.
                if let Signals::Link(link) = signals
                    && let Some((lost, via)) = link.take_rejoined()
                {
                    if options.live_status {
                        eprintln!("\nsupernode {lost} lost; rejoined via {via}");
                    }
                    // Rejoined over QUIC: UDP works, the media's silence
                    // is the dead relay's (the migration moves it), and
                    // the TCP fallback must not take the call.
                    if signals
                        .sender(session)
                        .is_some_and(|sn| sn.transport() == natter_net::Transport::Quic)
                    {
                        call.handle_udp_works(start.elapsed().as_millis() as u64);
                    }
                    if let Some(sn) = signals.sender(session) {
                        let _ = flush_within(setup, sn, MIGRATION_SIGNAL_WAIT).await;
                    }
                    if io.migration_deferred {
                        io.migrate.get_or_insert_with(Vec::new);
                    }
                }
                if let Some(dead) = io.migrate.take() {
                    io.migration_deferred =
                        migrate_relay(&mut call, setup, signals, session, &dead, start).await;
                    io.drain(&mut call, start.elapsed().as_millis() as u64).await;
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
            () = async { if let Some(f) = hold_signal.as_mut() { f.await } }, if hold_signal.is_some() => {
                hold_signal = None;
            }
            command = async { leg_commands.as_mut()?.recv().await }, if leg_commands.is_some() => match command {
                Some(LegCommand::Signal(signal)) => {
                    setup.send_conference(signal);
                    send_beside(&mut hold_signal, setup, session);
                }
                // The conference hangs the leg up, after its last messages.
                Some(LegCommand::Hangup) | None => {
                    if let Some(pending) = hold_signal.take() {
                        pending.await;
                    }
                    setup.hangup();
                    send_hangup(setup, signals, session, true).await;
                    break;
                }
            },
            // A leg's conference takes Ctrl-C (and leaves).
            _ = tokio::signal::ctrl_c(), if options.leg.is_none() => {
                setup.hangup();
                send_hangup(setup, signals, session, true).await;
                break;
            }
            () = CallControl::hung_up(control) => {
                setup.hangup();
                send_hangup(setup, signals, session, true).await;
                break;
            }
            push = signals.next(), if session_alive => match push {
                Some(envelope::Body::CallSignal(signal)) => {
                    if signal.invite_id == setup.invite_id() {
                        handle_signal(setup, &signal, options.live_status);
                        while let Some(event) = setup.poll_event() {
                            let now_ms = start.elapsed().as_millis() as u64;
                            match event {
                                CallEvent::Candidates(more) => call.add_candidates(&more, now_ms),
                                CallEvent::PeerHold(on) => {
                                    holds.peer(on, now_ms);
                                    if options.live_status {
                                        eprintln!("\n{peer} {}", if on { "put the call on hold" } else { "resumed the call" });
                                    }
                                }
                                CallEvent::Conference(signal) => {
                                    // A plain call has no use for them.
                                    if let Some(leg) = &options.leg {
                                        let event = LegEvent::Signal {
                                            invite_id: setup.invite_id(),
                                            peer: peer.clone(),
                                            signal,
                                        };
                                        let _ = leg.events.send(event).await;
                                    }
                                }
                                _ => {}
                            }
                        }
                        if setup.phase() == Phase::Ended {
                            ended_by_peer = true;
                            break;
                        }
                    } else {
                        // Already in a call: busy.
                        if let Some(sn) = signals.sender(session) {
                            answer_busy(sn, &signal).await;
                        }
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
    let (held_frames, peer_holds, peer_held_ms) = holds.finish(
        call.stats().sent_media_packets,
        start.elapsed().as_millis() as u64,
    );
    let done = CallDone {
        peer,
        duration_s: start.elapsed().as_secs_f64(),
        setup_ms,
        first_audio_ms,
        ended_by_peer,
        signaling: signals
            .sender(session)
            .unwrap_or(session)
            .transport()
            .name(),
        relay_migrations: io.migrations,
        max_media_gap_ms: call.max_media_gap_until(last_tick_ms),
        rejoins: match &signals {
            Signals::Link(link) => link.rejoins(),
            Signals::Session(_) | Signals::Channel(_) => 0,
        },
        tcp_connects: tcp_stats
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        tcp_dropped: tcp_stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        ignored_signals: setup.ignored().total(),
        samples: series.into_samples(),
        predicted,
        held_frames,
        peer_holds,
        peer_held_ms,
    };
    Ok(done.report(&call, io.media))
}

/// Sends what the setup queued beside the media loop, after whatever is
/// still on its way (`pending`): the peer sees every signal in order, and
/// waiting for the supernode's ack never delays a frame.
fn send_beside<'s>(
    pending: &mut Option<std::pin::Pin<Box<dyn Future<Output = ()> + 's>>>,
    setup: &mut CallSetup,
    session: &'s SupernodeSession,
) {
    let signals: Vec<CallSignal> = std::iter::from_fn(|| setup.poll_signal()).collect();
    let before = pending.take();
    *pending = Some(Box::pin(async move {
        if let Some(before) = before {
            before.await;
        }
        for signal in signals {
            let _ = send_signal(session, signal).await;
        }
    }));
}

/// Moves the call to a relay on another supernode, as the call session
/// asked ([`Event::MigrateRelay`], decided in `natter_proto::migration`):
/// rejoins first when the dead relays include this side's own supernode
/// (a [`Signals::Link`]), tells the peer with an empty mid-call candidates
/// signal (which also makes the call known to that supernode's relay), and
/// allocates a relay there with the relay-first request of the call setup;
/// the supernode pushes the other side to the peer. Returns whether the
/// migration waits for a rejoin going on (it is done once rejoined).
async fn migrate_relay(
    call: &mut CallSession,
    setup: &mut CallSetup,
    signals: &mut Signals<'_>,
    session: &SupernodeSession,
    dead_relays: &[Target],
    start: Instant,
) -> bool {
    if let Signals::Link(link) = signals
        && link.suspect(dead_relays)
    {
        return true;
    }
    let Some(sn) = signals.sender(session) else {
        return true;
    };
    setup.trickle(Vec::new(), false);
    match flush_within(setup, sn, MIGRATION_SIGNAL_WAIT).await {
        Ok(()) => {}
        Err(CallError::Session(SessionError::Closed(_))) => {
            // The session closed under the request: the supernode is lost.
            if let Signals::Link(link) = signals {
                link.abandon();
                return true;
            }
            return false;
        }
        // A slow answer is not a lost supernode (it may be routing to the
        // peer through a replica that died too; the session's liveness
        // check tells a dead supernode within 3 s), and the peer may not be
        // reachable yet (rejoining too): the session asks again. The
        // allocation is still asked for: the peer's own resume signal may
        // have made the call known to this supernode already (in the lab,
        // the callee's signal waited 2 s on a lookup through the dead
        // supernode while the caller's had gone through at once).
        Err(_) => {}
    }
    let allocated = tokio::time::timeout(
        MIGRATION_REQUEST_TIMEOUT,
        gather::allocate_relay(sn, &setup.invite_id()),
    )
    .await;
    if let Ok(Some(own)) = allocated {
        call.add_own_relay(own.udp, own.tcp, start.elapsed().as_millis() as u64);
    }
    false
}

/// Sends the hangup (and whatever else) the setup queued. Through a
/// [`Signals::Link`] and when `persist`, for up to [`HANGUP_PERSIST`]: a
/// supernode lost at the end of the call is rejoined first (or given up
/// when it does not answer), and a peer not reachable yet (rejoining too)
/// is tried again, so that the hangup ends the peer's call too.
async fn send_hangup(
    setup: &mut CallSetup,
    signals: &mut Signals<'_>,
    session: &SupernodeSession,
    persist: bool,
) {
    let Signals::Link(link) = signals else {
        let _ = flush(setup, session).await;
        return;
    };
    let deadline = Instant::now() + HANGUP_PERSIST;
    let queued: Vec<CallSignal> = std::iter::from_fn(|| setup.poll_signal()).collect();
    for signal in queued {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(sn) = link.joined_within(left).await else {
                return;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let sent = send_signal_within(sn, signal.clone(), left.min(REQUEST_TIMEOUT / 2)).await;
            match sent {
                Ok(()) => break,
                Err(_) if !persist || Instant::now() + HANGUP_RETRY >= deadline => return,
                // Closed: the supernode is lost, rejoin. A timeout is tried
                // again like any other failure: the liveness check, not a
                // slow answer, tells a dead supernode.
                Err(CallError::Session(SessionError::Closed(_))) => link.abandon(),
                Err(_) => tokio::time::sleep(HANGUP_RETRY).await,
            }
        }
    }
}

/// The audio ends of a call: a person's ([`LocalAudio`]), or a
/// conference's leg ([`LegAudio`]: frame queues to and from the conference,
/// which owns the real ends).
pub(crate) enum AudioEnds {
    Local(Box<LocalAudio>),
    Leg(LegAudio),
}

impl AudioEnds {
    fn open(options: &CallOptions) -> Result<Self, CallError> {
        match options.leg.as_ref() {
            Some(leg) => leg
                .take_audio()
                .map(AudioEnds::Leg)
                .ok_or_else(|| CallError::Audio("the leg's audio is taken".into())),
            None => LocalAudio::open(options).map(|local| AudioEnds::Local(Box::new(local))),
        }
    }

    fn input_length(&self) -> Option<Duration> {
        match self {
            AudioEnds::Local(local) => local.input_length(),
            AudioEnds::Leg(_) => None,
        }
    }

    fn next_frame(&mut self, pcm: &mut [i16]) {
        match self {
            AudioEnds::Local(local) => local.next_frame(pcm),
            AudioEnds::Leg(leg) => leg.next_frame(pcm),
        }
    }

    fn play(&mut self, frame: &[i16]) -> Result<(), CallError> {
        match self {
            AudioEnds::Local(local) => local.play(frame),
            AudioEnds::Leg(leg) => {
                leg.play(frame);
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<(), CallError> {
        match self {
            AudioEnds::Local(local) => local.finish(),
            AudioEnds::Leg(_) => Ok(()),
        }
    }
}

/// A person's audio ends: what is sent (a WAV, else the sound card, else
/// silence) and where what is heard goes (a WAV, the sound card).
pub(crate) struct LocalAudio {
    input: Vec<i16>,
    capture: Option<natter_media::devices::Capture>,
    playback: Option<natter_media::devices::Playback>,
    sink: Option<WavSink>,
    frame_index: usize,
}

impl LocalAudio {
    pub(crate) fn open(options: &CallOptions) -> Result<Self, CallError> {
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
    pub(crate) fn input_length(&self) -> Option<Duration> {
        (!self.input.is_empty()).then(|| Duration::from_millis((self.input.len() / 48) as u64))
    }

    /// The next frame to send (silence after the input's end).
    pub(crate) fn next_frame(&mut self, pcm: &mut [i16]) {
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
    pub(crate) fn play(&mut self, frame: &[i16]) -> Result<(), CallError> {
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
    pub(crate) fn finish(self) -> Result<(), CallError> {
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
    /// The session asked for a relay migration (the relays it found dead).
    migrate: Option<Vec<Target>>,
    /// Migrations asked.
    migrations: u32,
    /// A migration waits for the link to rejoin.
    migration_deferred: bool,
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
                Event::MigrateRelay { dead_relays, .. } => {
                    self.migrations += 1;
                    self.migrate = Some(dead_relays);
                }
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
    relay_migrations: u32,
    /// The longest time without a media datagram, up to the call's end.
    max_media_gap_ms: u64,
    rejoins: u32,
    tcp_connects: u64,
    tcp_dropped: u64,
    ignored_signals: u64,
    samples: Vec<Sample>,
    predicted: Vec<SocketAddr>,
    held_frames: Vec<[u64; 2]>,
    peer_holds: u64,
    peer_held_ms: u64,
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
            samples: self.samples,
            predicted_candidates: self.predicted,
            held_frames: self.held_frames,
            peer_holds: self.peer_holds,
            peer_held_ms: self.peer_held_ms,
            max_media_gap_ms: self.max_media_gap_ms,
            relay_migrations: self.relay_migrations,
            rejoins: self.rejoins,
        }
    }
}
