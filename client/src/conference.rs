//! Conference calls: the tokio shell of
//! [`natter_proto::conference::Conference`] (who hosts, which legs exist,
//! the handover: every decision is the core's; this module only does I/O).
//!
//! Each **leg** is an ordinary two-party call run by [`crate::call`]
//! (`place_call_via`, `Incoming::answer`: the same key agreement, SoM
//! framing, 50 datagrams/s, relay and TCP fallback), as a future of this
//! task. The legs share the one supernode session: the conference reads
//! its pushes and hands each to the leg whose invite id it names (bounded
//! queues, [`Signals::Channel`]). A leg's audio ends are bounded queues of
//! 20 ms frames ([`crate::leg`]); the conference owns the real ends (the
//! WAV or the sound card, [`LocalAudio`]), which outlive the legs, so a
//! handover re-forms the legs without losing the recording's place (a gap
//! is written as silence).
//!
//! Every 20 ms the conference reads one frame of its input, takes one frame
//! from each leg it listens to, and mixes with [`Mixer`] mix-minus: input 0
//! is its own voice, input `k` the leg's; output 0 (everything but its own
//! voice) is played, output `k` (everything but that leg) goes back on leg
//! `k`. The host listens to every member's leg ([`Conference::mix_legs`]);
//! another participant to the host's leg only (or, two left, to its
//! peer's), so the same mix passes its one leg through.
//!
//! Conference messages: a leg's [`crate::call::CallSetup`] hands those from
//! its peer up ([`LegEvent::Signal`]) to [`Conference::handle_signal`];
//! [`Conference::poll_signal`] goes down the named leg ([`LegCommand`]).
//! [`Event::Dial`] places a leg whose invite carries the conference id
//! (`CallInvite.conference_id`, docs/PROTOCOL.md 3.6), so the callee's
//! `natter answer` joins ([`join`]) and, once in the conference, accepts
//! further legs of it (a new host's after a handover) and answers other
//! calls busy.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use natter_media::FRAME_SAMPLES;
use natter_media::mix::Mixer;
use natter_proto::call::CallSetup;
use natter_proto::cert::Identity;
use natter_proto::conference::{
    Capabilities, Conference, Dropped, Event, ID_LEN, MAX_PARTIES, NatClass, Phase,
};
use natter_proto::messages::{CallSignal, call_signal, envelope};
use rand::RngCore;
use rsa::RsaPublicKey;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::call::{
    self, Answered, CallControl, CallError, CallOptions, CallReport, Incoming, LocalAudio, Signals,
};
use crate::leg::{
    CONTROL_QUEUE, FrameQueue, FrameSender, LegAudio, LegCommand, LegEvent, LegPort, frame_queue,
};
use crate::supernode::SupernodeSession;

/// How long the netcheck for this side's capability record may take.
const NETCHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long legs still hanging up may hold the conference's end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Mixing times kept for the report's percentiles (10 minutes of frames).
const MIX_SAMPLES: usize = 30_000;

/// What the conference's own capability record is made of.
#[derive(Debug, Clone, Default)]
pub struct ConferenceOptions {
    /// STUN reflectors for the NAT class (`natter netcheck`'s); none: unknown.
    pub reflectors: Vec<SocketAddr>,
    /// Upstream bandwidth, kb/s, as declared (`--upstream-kbps`; 0: unknown).
    pub upstream_kbps: u32,
}

/// This side's capability record: the NAT class from a netcheck (bounded
/// in time), the declared upstream, the spare CPU from the load average.
pub async fn own_capabilities(options: &ConferenceOptions) -> Capabilities {
    let nat = match options.reflectors.first() {
        Some(first) => {
            let bind = SocketAddr::new(crate::gather::local_ip_towards(*first), 0);
            match tokio::time::timeout(
                NETCHECK_TIMEOUT,
                crate::netcheck::run(bind, &options.reflectors),
            )
            .await
            {
                Ok(Ok(report)) => report.nat_class(),
                _ => NatClass::Unknown,
            }
        }
        None => NatClass::Unknown,
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let spare = (1.0 - crate::promoted::load_per_core()).clamp(0.0, 1.0);
    Capabilities::new(nat, options.upstream_kbps, (spare * cores * 1000.0) as u32)
}

/// A finished conference, as this participant saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConferenceReport {
    /// The conference id (hex).
    pub id: String,
    pub local: String,
    /// The last host (none: it ended as a plain call, or never formed).
    pub host: Option<String>,
    /// Every host in turn.
    pub hosts: Vec<String>,
    pub epoch: u32,
    pub handovers: u32,
    /// It ended as a plain call between the last two.
    pub ended_as_call: bool,
    pub duration_s: f64,
    /// Frames played (one every 20 ms from the start).
    pub frames: u64,
    /// Frames this side mixed for others as host.
    pub hosted_frames: u64,
    /// Time to mix one frame as host (mix-minus and handing the frames
    /// to the legs; the legs decode and encode), microseconds.
    pub mix_us_p50: f64,
    pub mix_us_p99: f64,
    /// Audio frames dropped on the legs' queues (full, or a backlog).
    pub dropped_frames: u64,
    /// Conference messages dropped by the core, by reason.
    pub dropped_malformed: u64,
    pub dropped_unexpected: u64,
    pub dropped_stale: u64,
    /// Conference messages for a leg that was not up (or a full queue).
    pub undelivered_signals: u64,
    /// Legs this side had (placed or answered), and those that failed
    /// before their media ran.
    pub legs_started: u64,
    pub legs_failed: u64,
}

/// A conference's report and the reports of its legs.
#[derive(Debug, Clone, Default)]
pub struct ConferenceOutcome {
    pub conference: ConferenceReport,
    /// One per leg whose media ran, in the order they ended.
    pub legs: Vec<CallReport>,
}

impl ConferenceOutcome {
    /// `{"conference": {...}, "legs": [call reports]}` on one line.
    pub fn to_json(&self) -> String {
        let legs: Vec<serde_json::Value> = self
            .legs
            .iter()
            .map(|r| serde_json::from_str(&r.to_json()).unwrap_or(serde_json::Value::Null))
            .collect();
        serde_json::json!({
            "conference": serde_json::to_value(&self.conference).unwrap_or_default(),
            "legs": legs,
        })
        .to_string()
    }

    /// A human-readable report: the conference's lines, then each leg's.
    pub fn to_text(&self) -> String {
        let c = &self.conference;
        let mut s = format!(
            "conference {} as {}: {:.1} s, host {} (hosts {}), {} handover(s), epoch {}{}\n\
             mixing as host: {} frames, p50 {:.1} us, p99 {:.1} us per frame; \
             {} frames dropped, {} messages dropped, {} legs ({} failed)\n",
            c.id,
            c.local,
            c.duration_s,
            c.host.as_deref().unwrap_or("-"),
            if c.hosts.is_empty() {
                "-".to_owned()
            } else {
                c.hosts.join(", ")
            },
            c.handovers,
            c.epoch,
            if c.ended_as_call {
                ", ended as a plain call"
            } else {
                ""
            },
            c.hosted_frames,
            c.mix_us_p50,
            c.mix_us_p99,
            c.dropped_frames,
            c.dropped_malformed + c.dropped_unexpected + c.dropped_stale,
            c.legs_started,
            c.legs_failed,
        );
        for leg in &self.legs {
            s.push_str(&format!("leg: {}", leg.to_text()));
        }
        s
    }
}

/// What an answered invite became.
#[derive(Debug)]
pub enum AnsweredCall {
    Call(Box<CallReport>),
    Conference(Box<ConferenceOutcome>),
}

/// `natter answer`: [`call::answer_calls_via`] that also joins the
/// conferences it is invited into (an invite with a conference id); a
/// conference counts as one call.
pub async fn answer_calls_via(
    me: Incoming<'_>,
    signals: &mut Signals<'_>,
    calls: usize,
    accept: bool,
    conference: &ConferenceOptions,
) -> Result<Vec<AnsweredCall>, CallError> {
    let mut answered = Vec::new();
    let mut handled = 0;
    while handled < calls {
        let signal = call::next_invite(signals).await?;
        let current = signals.current_session();
        let incoming = Incoming {
            session: current.as_deref().unwrap_or(me.session),
            ..me
        };
        if accept && let Some(id) = CallSetup::conference_of(&signal) {
            let outcome = join(incoming, signals, signal, id, conference).await?;
            answered.push(AnsweredCall::Conference(Box::new(outcome)));
            handled += 1;
            continue;
        }
        match incoming
            .answer(signals, &signal, async move { accept })
            .await?
        {
            Answered::Talked(report) => {
                answered.push(AnsweredCall::Call(report));
                handled += 1;
            }
            Answered::Declined => handled += 1,
            Answered::Missed(_) => {}
        }
    }
    Ok(answered)
}

/// `natter call A B [C D]`: convenes a conference of this side and
/// `invitees` (2 to 4 names) and runs it to its end.
#[allow(clippy::too_many_arguments)]
pub async fn convene(
    session: &SupernodeSession,
    signals: &mut Signals<'_>,
    identity: &Identity,
    local_name: &str,
    login_key: &RsaPublicKey,
    invitees: &[String],
    options: &CallOptions,
    conference: &ConferenceOptions,
) -> Result<ConferenceOutcome, CallError> {
    let own = own_capabilities(conference).await;
    let mut id = [0u8; ID_LEN];
    rand::thread_rng().fill_bytes(&mut id);
    let core = Conference::convene(local_name, id, own, invitees, 0)
        .map_err(|e| CallError::Failed(e.to_string()))?;
    let me = Incoming {
        session,
        identity,
        local_name,
        login_key,
        options,
    };
    let mut shell = Shell::new(me, id, Start::Convener(Box::new(core)), conference.clone());
    shell.run(signals).await
}

/// Joins the conference `id` that `invite` (a leg's call) belongs to.
pub async fn join(
    me: Incoming<'_>,
    signals: &mut Signals<'_>,
    invite: CallSignal,
    id: [u8; ID_LEN],
    conference: &ConferenceOptions,
) -> Result<ConferenceOutcome, CallError> {
    if me.options.live_status {
        eprintln!(
            "invited into conference {} by {}",
            hex::encode(id),
            crate::text::for_terminal(&invite.from)
        );
    }
    let own = own_capabilities(conference).await;
    let mut shell = Shell::new(me, id, Start::Invited(own), conference.clone());
    shell.accept(invite);
    shell.run(signals).await
}

type LegFuture<'a> = Pin<Box<dyn Future<Output = Result<CallReport, CallError>> + 'a>>;

/// How the shell starts: convening (the core exists), or invited (the core
/// is made from the first `invite` message on the first leg).
enum Start {
    Convener(Box<Conference>),
    Invited(Capabilities),
}

/// One leg as the conference holds it.
struct Leg {
    invite_id: [u8; 16],
    /// The peer's normalised name.
    peer: String,
    pushes: mpsc::Sender<envelope::Body>,
    commands: mpsc::Sender<LegCommand>,
    to_leg: FrameSender,
    from_leg: FrameQueue,
    control: Arc<CallControl>,
    up: bool,
    /// Still wanted by the conference (false once it closed the leg: the
    /// call hangs up and its end is no news to the core).
    current: bool,
}

/// What woke the shell.
enum Step {
    Leg(LegEvent),
    Tick,
    LegEnded([u8; 16], Box<Result<CallReport, CallError>>),
    Push(Option<envelope::Body>),
    Timeout,
    Leave,
}

struct Shell<'a> {
    me: Incoming<'a>,
    id: [u8; ID_LEN],
    own: Capabilities,
    core: Option<Conference>,
    _conference: ConferenceOptions,
    legs: Vec<Leg>,
    running: Vec<([u8; 16], LegFuture<'a>)>,
    events_tx: mpsc::Sender<LegEvent>,
    events_rx: mpsc::Receiver<LegEvent>,
    dropped_frames: Arc<AtomicU64>,
    start: Instant,
    report: ConferenceReport,
    legs_done: Vec<CallReport>,
    mix_us: Vec<u32>,
    left: bool,
}

impl<'a> Shell<'a> {
    fn new(
        me: Incoming<'a>,
        id: [u8; ID_LEN],
        start: Start,
        conference: ConferenceOptions,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(CONTROL_QUEUE);
        let (core, own) = match start {
            Start::Convener(core) => {
                let core = *core;
                let own = core
                    .roster()
                    .get(core.local())
                    .cloned()
                    .unwrap_or_else(|| Capabilities::new(NatClass::Unknown, 0, 0));
                (Some(core), own)
            }
            Start::Invited(own) => (None, own),
        };
        Self {
            me,
            id,
            own,
            core,
            _conference: conference,
            legs: Vec::new(),
            running: Vec::new(),
            events_tx,
            events_rx,
            dropped_frames: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
            report: ConferenceReport {
                id: hex::encode(id),
                local: natter_proto::name::normalise(me.local_name)
                    .unwrap_or_else(|_| me.local_name.to_owned()),
                ..ConferenceReport::default()
            },
            legs_done: Vec::new(),
            mix_us: Vec::new(),
            left: false,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn say(&self, line: &str) {
        if self.me.options.live_status {
            eprintln!("{}", crate::text::for_terminal(line));
        }
    }

    /// A new leg's queues; the call's ends go into its options.
    fn new_leg(
        &mut self,
        invite_id: [u8; 16],
        peer: String,
        placed: bool,
    ) -> (CallOptions, mpsc::Receiver<envelope::Body>) {
        let (pushes, push_rx) = mpsc::channel(CONTROL_QUEUE);
        let (commands, command_rx) = mpsc::channel(CONTROL_QUEUE);
        let (to_leg, leg_input) = frame_queue(&self.dropped_frames);
        let (leg_output, from_leg) = frame_queue(&self.dropped_frames);
        let control = Arc::new(CallControl::default());
        let port = LegPort::new(
            self.id,
            placed.then_some(invite_id),
            LegAudio {
                input: leg_input,
                output: leg_output,
            },
            command_rx,
            self.events_tx.clone(),
        );
        self.legs.push(Leg {
            invite_id,
            peer,
            pushes,
            commands,
            to_leg,
            from_leg,
            control: control.clone(),
            up: false,
            current: true,
        });
        self.report.legs_started += 1;
        let options = CallOptions {
            live_status: false,
            control: Some(control),
            leg: Some(Arc::new(port)),
            ..CallOptions::default()
        };
        (options, push_rx)
    }

    /// Places a leg to `peer` (the core's [`Event::Dial`]).
    fn dial(&mut self, peer: String) {
        let mut invite_id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut invite_id);
        let (options, mut pushes) = self.new_leg(invite_id, peer.clone(), true);
        let Incoming {
            session,
            identity,
            local_name,
            login_key,
            ..
        } = self.me;
        self.say(&format!("conference: calling {peer}"));
        let leg: LegFuture<'a> = Box::pin(async move {
            let mut signals = Signals::Channel(&mut pushes);
            call::place_call_via(
                session,
                &mut signals,
                identity,
                local_name,
                login_key,
                &peer,
                &options,
            )
            .await
        });
        self.running.push((invite_id, leg));
    }

    /// Answers a leg of this conference (the first one, or a new host's).
    fn accept(&mut self, invite: CallSignal) {
        let Ok(invite_id) = <[u8; 16]>::try_from(invite.invite_id.as_slice()) else {
            return;
        };
        let peer = natter_proto::name::normalise(&invite.from).unwrap_or_default();
        let (options, mut pushes) = self.new_leg(invite_id, peer, false);
        let me = self.me;
        let leg: LegFuture<'a> = Box::pin(async move {
            let mut signals = Signals::Channel(&mut pushes);
            let me = Incoming {
                options: &options,
                ..me
            };
            match me
                .answer(&mut signals, &invite, std::future::ready(true))
                .await?
            {
                Answered::Talked(report) => Ok(*report),
                Answered::Declined => Err(CallError::Failed("declined".into())),
                Answered::Missed(why) => Err(CallError::Failed(why)),
            }
        });
        self.running.push((invite_id, leg));
    }

    fn leg_mut(&mut self, invite_id: &[u8; 16]) -> Option<&mut Leg> {
        self.legs.iter_mut().find(|l| l.invite_id == *invite_id)
    }

    /// The current leg to `peer` (normalised).
    fn current_leg(&self, peer: &str) -> Option<&Leg> {
        self.legs.iter().find(|l| l.current && l.peer == peer)
    }

    /// Sends what the core queued and acts on its events.
    fn drain_core(&mut self) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let mut signals = Vec::new();
        while let Some(out) = core.poll_signal() {
            signals.push(out);
        }
        let mut events = Vec::new();
        while let Some(event) = core.poll_event() {
            events.push(event);
        }
        // Messages first: those queued before a Close go out on the leg
        // before it is hung up (the leg's command queue keeps the order).
        for (to, signal) in signals {
            let sent = self
                .current_leg(&to)
                .filter(|l| l.up)
                .is_some_and(|l| l.commands.try_send(LegCommand::Signal(signal)).is_ok());
            if !sent {
                self.report.undelivered_signals += 1;
            }
        }
        for event in events {
            match event {
                Event::Dial { peer } => self.dial(peer),
                Event::Close { peer } => {
                    for leg in self.legs.iter_mut().filter(|l| l.current && l.peer == peer) {
                        leg.current = false;
                        if leg.up {
                            let _ = leg.commands.try_send(LegCommand::Hangup);
                        } else {
                            leg.control.hang_up();
                        }
                    }
                }
                Event::Host {
                    host,
                    epoch,
                    handover,
                } => {
                    self.say(&format!(
                        "conference: {host} hosts (epoch {epoch}{})",
                        if handover { ", handover" } else { "" }
                    ));
                    self.report.hosts.push(host);
                }
                Event::Joined { name } => self.say(&format!("conference: {name} joined")),
                Event::Left { name, lost } => self.say(&format!(
                    "conference: {name} {}",
                    if lost { "was lost" } else { "left" }
                )),
                Event::Call { peer } => {
                    self.report.ended_as_call = true;
                    self.say(&format!("conference: two left, a plain call with {peer}"));
                }
                Event::Ended => self.say("conference: ended"),
            }
        }
    }

    fn ended(&self) -> bool {
        self.core
            .as_ref()
            .map_or(self.left, |c| c.phase() == Phase::Ended)
    }

    /// The legs the mix takes from and gives to, by index in `self.legs`.
    fn mixed_legs(&self) -> Vec<usize> {
        let Some(core) = self.core.as_ref() else {
            return Vec::new();
        };
        let wanted: BTreeSet<String> = match core.phase() {
            Phase::Hosted if core.is_host() => {
                core.mix_legs().into_iter().map(str::to_owned).collect()
            }
            Phase::Hosted => core.host().into_iter().map(str::to_owned).collect(),
            Phase::Call => core
                .roster()
                .keys()
                .filter(|n| n.as_str() != core.local())
                .cloned()
                .collect(),
            Phase::Forming | Phase::Ended => BTreeSet::new(),
        };
        let mut chosen = Vec::new();
        for peer in wanted {
            if let Some(i) = self
                .legs
                .iter()
                .position(|l| l.current && l.up && l.peer == peer)
            {
                chosen.push(i);
            }
        }
        chosen.truncate(MAX_PARTIES - 1);
        chosen
    }

    /// `add NAME` typed during the conference: the core invites NAME when
    /// this side hosts (or two are left); otherwise it says why not.
    fn add(&mut self, name: &str, now_ms: u64) {
        let result = match self.core.as_mut() {
            Some(core) => core.invite(name, now_ms).map_err(|e| e.to_string()),
            None => Err("not in the conference yet".to_owned()),
        };
        match result {
            Ok(()) => self.say(&format!("conference: inviting {name}")),
            Err(e) => self.say(&format!("conference: cannot add {name}: {e}")),
        }
    }

    /// Leaves the conference (hang-up, the duration, Ctrl-C).
    fn leave(&mut self) {
        if let Some(core) = self.core.as_mut() {
            core.leave();
        } else {
            self.left = true;
            for leg in &mut self.legs {
                leg.current = false;
                leg.control.hang_up();
            }
        }
    }

    async fn run(&mut self, signals: &mut Signals<'_>) -> Result<ConferenceOutcome, CallError> {
        let options = self.me.options;
        let mut ends = LocalAudio::open(options)?;
        let duration = options.duration.or_else(|| {
            self.core
                .is_some()
                .then(|| ends.input_length().unwrap_or(Duration::from_secs(10)))
        });
        let control = options.control.clone();
        if let Some(control) = &control {
            control.set_conference();
        }
        let mut tick =
            tokio::time::interval(Duration::from_millis(u64::from(natter_media::FRAME_MS)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut mixer = Mixer::new(1).map_err(|e| CallError::Audio(e.to_string()))?;
        let mut own = vec![0i16; FRAME_SAMPLES];
        let mut session_alive = true;
        let mut ended_at: Option<Instant> = None;
        // An invitee whose first leg brings no invitation gives up.
        let join_deadline = Duration::from_millis(
            natter_proto::conference::FORM_TIMEOUT_MS + natter_proto::conference::LEG_TIMEOUT_MS,
        );
        loop {
            self.drain_core();
            if self.ended() {
                let since = *ended_at.get_or_insert_with(Instant::now);
                if self.running.is_empty() || since.elapsed() >= CLOSE_TIMEOUT {
                    break;
                }
            } else if self.core.is_none() && self.start.elapsed() >= join_deadline {
                self.say("conference: no invitation came on the leg");
                self.leave();
            }
            let timeout = self
                .core
                .as_ref()
                .and_then(Conference::poll_timeout)
                .map(|ms| self.start + Duration::from_millis(ms));
            let step = {
                let running = &mut self.running;
                let events = &mut self.events_rx;
                tokio::select! {
                    biased;
                    Some(event) = events.recv() => Step::Leg(event),
                    _ = tick.tick() => Step::Tick,
                    (id, result) = poll_legs(running), if !running.is_empty() => Step::LegEnded(id, Box::new(result)),
                    push = signals.next(), if session_alive => Step::Push(push),
                    () = sleep_until(timeout), if timeout.is_some() => Step::Timeout,
                    () = CallControl::hung_up(control.as_deref()) => Step::Leave,
                    _ = tokio::signal::ctrl_c() => Step::Leave,
                }
            };
            let now_ms = self.now_ms();
            match step {
                Step::Leg(LegEvent::Up { invite_id, peer }) => {
                    let peer = natter_proto::name::normalise(&peer).unwrap_or(peer);
                    let current = self.leg_mut(&invite_id).map(|leg| {
                        leg.up = true;
                        leg.current
                    });
                    if current == Some(true)
                        && let Some(core) = self.core.as_mut()
                    {
                        core.handle_leg_up(&peer, now_ms);
                    }
                }
                Step::Leg(LegEvent::Signal {
                    invite_id,
                    peer,
                    signal,
                }) => {
                    let current = self.leg_mut(&invite_id).is_some_and(|l| l.current);
                    if !current {
                        continue;
                    }
                    match self.core.as_mut() {
                        Some(core) => core.handle_signal(&peer, &signal, now_ms),
                        None => match Conference::invited(
                            self.me.local_name,
                            self.own.clone(),
                            &peer,
                            &signal,
                            now_ms,
                        ) {
                            Ok(core) if core.id() == self.id => self.core = Some(core),
                            _ => self.report.dropped_unexpected += 1,
                        },
                    }
                }
                Step::LegEnded(invite_id, result) => {
                    let Some(i) = self.legs.iter().position(|l| l.invite_id == invite_id) else {
                        continue;
                    };
                    let leg = self.legs.remove(i);
                    match *result {
                        Ok(report) => self.legs_done.push(report),
                        Err(e) => {
                            self.report.legs_failed += 1;
                            self.say(&format!("conference: leg to {}: {e}", leg.peer));
                        }
                    }
                    if leg.current {
                        match self.core.as_mut() {
                            Some(core) => core.handle_leg_lost(&leg.peer, now_ms),
                            // The first leg ended before its invitation.
                            None => self.left = true,
                        }
                    }
                }
                Step::Push(None) => session_alive = false,
                Step::Push(Some(push)) => self.route(push, signals).await,
                Step::Timeout => {
                    if let Some(core) = self.core.as_mut() {
                        core.handle_timeout(now_ms);
                    }
                }
                Step::Leave => self.leave(),
                Step::Tick => {
                    if duration.is_some_and(|d| self.start.elapsed() >= d) && !self.ended() {
                        self.leave();
                    }
                    for name in control
                        .as_deref()
                        .map(CallControl::take_adds)
                        .unwrap_or_default()
                    {
                        self.add(&name, now_ms);
                    }
                    self.mix_frame(&mut ends, &mut mixer, &mut own)?;
                }
            }
        }
        ends.finish()?;
        Ok(self.outcome())
    }

    /// One 20 ms frame: the input, the legs' frames, the mix-minus, the
    /// output and the legs' frames back.
    fn mix_frame(
        &mut self,
        ends: &mut LocalAudio,
        mixer: &mut Mixer,
        own: &mut [i16],
    ) -> Result<(), CallError> {
        ends.next_frame(own);
        if self
            .me
            .options
            .control
            .as_deref()
            .is_some_and(CallControl::muted)
        {
            own.fill(0);
        }
        let mixed = self.mixed_legs();
        let hosting = self.core.as_ref().is_some_and(Conference::is_host);
        let started = Instant::now();
        mixer
            .set_legs(1 + mixed.len())
            .map_err(|e| CallError::Audio(e.to_string()))?;
        if let Some(input) = mixer.input(0) {
            input.copy_from_slice(own);
        }
        for (k, &i) in mixed.iter().enumerate() {
            if let Some(input) = mixer.input(k + 1)
                && !self.legs[i].from_leg.next_into(input)
            {
                input.fill(0);
            }
        }
        mixer.mix();
        for (k, &i) in mixed.iter().enumerate() {
            if let Some(output) = mixer.output(k + 1) {
                self.legs[i].to_leg.send(output);
            }
        }
        if hosting && !mixed.is_empty() {
            self.report.hosted_frames += 1;
            if self.mix_us.len() < MIX_SAMPLES {
                self.mix_us.push(started.elapsed().as_micros() as u32);
            }
        }
        // Legs not in the mix: what they heard is not played.
        let mut scratch = [0i16; FRAME_SAMPLES];
        for (i, leg) in self.legs.iter_mut().enumerate() {
            if !mixed.contains(&i) {
                while leg.from_leg.next_into(&mut scratch) {}
            }
        }
        self.report.frames += 1;
        match mixer.output(0) {
            Some(heard) => ends.play(heard),
            None => Ok(()),
        }
    }

    /// Hands a push to the leg whose call it names; a new leg of this
    /// conference is answered, any other call is busy.
    async fn route(&mut self, push: envelope::Body, signals: &Signals<'_>) {
        let invite_id = match &push {
            envelope::Body::CallSignal(s) => s.invite_id.clone(),
            envelope::Body::RelayAllocated(r) => r.invite_id.clone(),
            _ => return,
        };
        if let Some(leg) = self.legs.iter().find(|l| l.invite_id[..] == invite_id[..]) {
            // A full queue drops it: the call's own retries and timeouts
            // cover a lost signal.
            let _ = leg.pushes.try_send(push);
            return;
        }
        let envelope::Body::CallSignal(signal) = push else {
            return;
        };
        if !matches!(signal.kind, Some(call_signal::Kind::Invite(_))) {
            return;
        }
        let ours = CallSetup::conference_of(&signal) == Some(self.id);
        if ours && !self.ended() && self.legs.len() < 2 * MAX_PARTIES {
            self.accept(signal);
        } else {
            let current = signals.current_session();
            call::answer_busy(current.as_deref().unwrap_or(self.me.session), &signal).await;
        }
    }

    fn outcome(&mut self) -> ConferenceOutcome {
        let mut report = std::mem::take(&mut self.report);
        report.duration_s = self.start.elapsed().as_secs_f64();
        report.dropped_frames = self.dropped_frames.load(Ordering::Relaxed);
        if let Some(core) = &self.core {
            let Dropped {
                malformed,
                unexpected,
                stale,
            } = core.dropped();
            report.dropped_malformed += malformed;
            report.dropped_unexpected += unexpected;
            report.dropped_stale += stale;
            report.epoch = core.epoch();
            report.handovers = core.handovers();
        }
        report.host = if report.ended_as_call {
            None
        } else {
            report.hosts.last().cloned()
        };
        let mut mix = std::mem::take(&mut self.mix_us);
        mix.sort_unstable();
        let pct = |p: f64| -> f64 {
            if mix.is_empty() {
                return 0.0;
            }
            let i = ((mix.len() - 1) as f64 * p).round() as usize;
            f64::from(mix[i])
        };
        report.mix_us_p50 = pct(0.50);
        report.mix_us_p99 = pct(0.99);
        ConferenceOutcome {
            conference: report,
            legs: std::mem::take(&mut self.legs_done),
        }
    }
}

/// The first leg future to finish, and which one.
fn poll_legs<'f, 'a>(
    running: &'f mut Vec<([u8; 16], LegFuture<'a>)>,
) -> impl Future<Output = ([u8; 16], Result<CallReport, CallError>)> + 'f
where
    'a: 'f,
{
    std::future::poll_fn(move |cx| {
        for i in 0..running.len() {
            if let Poll::Ready(result) = running[i].1.as_mut().poll(cx) {
                let (id, _) = running.swap_remove(i);
                return Poll::Ready((id, result));
            }
        }
        Poll::Pending
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
