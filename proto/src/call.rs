//! Call setup, sans-IO: invite -> ringing -> accept / reject / busy / hangup,
//! with the key agreement of [`crate::handshake`] and the setup timeout.
//!
//! One [`CallSetup`] per call and side. Feed it the signals that arrive for
//! its invite id ([`CallSetup::handle_signal`]) and the time
//! ([`CallSetup::handle_timeout`]); take what to send with
//! [`CallSetup::poll_signal`] and what happened with [`CallSetup::poll_event`].
//! Nothing reaches `Connected` before the peer's certificate and signed share
//! verified for this pair of names, so no media can flow to an
//! unauthenticated peer.
//!
//! Signals are taken only `from` the peer. Once the keys are agreed, every
//! hangup, candidate update and hold carries a MAC under the call's signal key
//! ([`crate::handshake::SignalKey`]), both ways: this side holds candidates
//! trickled before the agreement and sends them MACed after it, and drops a
//! mid-call signal that is not from the peer, lacks the MAC or has a wrong
//! one (counted in [`CallSetup::ignored`]); the call goes on. Conference
//! messages ride the same way (MACed, connected calls only) and come out
//! as [`CallEvent::Conference`]. Before the
//! agreement no MAC is possible: a hangup, reject or busy from the peer's
//! name ends the setup (what an on-path supernode can fake there is a
//! refusal, a denial of service only).

use std::collections::VecDeque;

use rand_core::CryptoRngCore;
use rsa::RsaPublicKey;

use crate::cert::{Identity, VerifiedCertificate};
use crate::handshake::{
    CallKeys, CallNames, HandshakeError, INVITE_ID_LEN, KeyAgreement, Role, SignalKey,
};
use crate::messages::{
    CallAccept, CallBusy, CallHangup, CallHold, CallInvite, CallReject, CallRinging, CallSignal,
    Candidate, CandidateUpdate, Certificate, HangupReason, RejectReason, call_signal,
};

/// How a call ended, as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Either side hung up after the call connected.
    HungUp { by_peer: bool },
    /// The callee declined.
    Rejected,
    /// The callee is in another call.
    Busy,
    /// Nobody answered in time.
    NoAnswer,
    /// The peer's certificate or key share did not verify.
    BadPeer(HandshakeError),
    /// The peer ended the setup with another reason.
    Failed(HangupReason),
}

/// Something the shell must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// (Caller) the callee is alerting.
    Ringing,
    /// (Callee) a verified invite: answer with [`CallSetup::accept`] or [`CallSetup::reject`].
    Incoming { caller: VerifiedCertificate },
    /// Keys agreed: start media towards the peer's candidates.
    Connected {
        keys: Box<CallKeys>,
        remote_candidates: Vec<Candidate>,
    },
    /// More candidates from the peer.
    Candidates(Vec<Candidate>),
    /// The peer put the call on hold (true) or resumed it (false).
    PeerHold(bool),
    /// A conference message from the peer (MAC checked), for
    /// [`crate::conference::Conference::handle_signal`].
    Conference(crate::messages::ConferenceSignal),
    /// The call is over.
    Ended(EndReason),
}

/// Where the setup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Inviting,
    Ringing,
    Connected,
    Ended,
}

/// Signals a call dropped, by why (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IgnoredSignals {
    /// `from` was not the peer (another user, stamped by a supernode).
    pub wrong_sender: u64,
    /// A hangup or candidate update without the right MAC.
    pub bad_mac: u64,
    /// A setup signal (invite, accept, reject, busy) after the agreement.
    pub out_of_place: u64,
}

impl IgnoredSignals {
    /// All signals dropped.
    pub fn total(&self) -> u64 {
        self.wrong_sender + self.bad_mac + self.out_of_place
    }
}

/// One side of one call.
#[derive(Debug)]
pub struct CallSetup {
    role: Role,
    invite_id: [u8; INVITE_ID_LEN],
    names: CallNames,
    agreement: Option<KeyAgreement>,
    /// (Caller) the certificate sent in the invite, for the transcript.
    own_certificate: Option<Certificate>,
    login_key: RsaPublicKey,
    phase: Phase,
    deadline_ms: u64,
    /// The caller's share, kept by the callee until it accepts.
    pending_invite: Option<CallInvite>,
    /// The MAC key of mid-call signals, once the keys are agreed.
    signal_key: Option<SignalKey>,
    /// Candidates trickled before the agreement, sent MACed after it.
    held_candidates: Vec<Candidate>,
    held_end_of_candidates: bool,
    /// MACed signals from the peer that arrived before the keys to check them.
    early: VecDeque<CallSignal>,
    /// Whether the peer has the call on hold (its last hold signal).
    peer_held: bool,
    ignored: IgnoredSignals,
    out: VecDeque<CallSignal>,
    events: VecDeque<CallEvent>,
}

/// Most signals or events queued before the shell drains them.
const QUEUE_LIMIT: usize = 32;
/// Most MACed signals kept until the keys exist to check them.
const EARLY_LIMIT: usize = 8;
/// Most candidates held until the agreement.
const HELD_CANDIDATES_LIMIT: usize = 32;

/// Whether a signal of this kind carries a MAC (all but the setup kinds,
/// which travel before the keys exist).
pub fn needs_mac(kind: &call_signal::Kind) -> bool {
    use call_signal::Kind;
    !matches!(
        kind,
        Kind::Invite(_) | Kind::Ringing(_) | Kind::Accept(_) | Kind::Reject(_) | Kind::Busy(_)
    )
}

impl CallSetup {
    /// Starts an outgoing call to `callee` and queues the invite. `secret` is
    /// 32 random bytes for the ephemeral key; `now_ms` is the shell's
    /// monotonic clock; `rng` blinds the share's signature.
    #[allow(clippy::too_many_arguments)]
    pub fn invite(
        identity: &Identity,
        local_name: &str,
        callee: &str,
        invite_id: [u8; INVITE_ID_LEN],
        secret: [u8; 32],
        candidates: Vec<Candidate>,
        login_key: RsaPublicKey,
        now_ms: u64,
        timeout_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let names = CallNames::new(local_name, callee);
        let agreement = KeyAgreement::new(Role::Caller, invite_id, names.clone(), secret);
        let invite = CallInvite {
            share: Some(agreement.share(identity, rng)),
            candidates,
            conference_id: Vec::new(),
        };
        let mut setup = Self::new(
            Role::Caller,
            invite_id,
            names,
            login_key,
            now_ms,
            timeout_ms,
        );
        setup.agreement = Some(agreement);
        setup.own_certificate = Some(identity.certificate.clone());
        setup.phase = Phase::Inviting;
        setup.send(call_signal::Kind::Invite(invite));
        setup
    }

    fn new(
        role: Role,
        invite_id: [u8; INVITE_ID_LEN],
        names: CallNames,
        login_key: RsaPublicKey,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Self {
        Self {
            role,
            invite_id,
            names,
            agreement: None,
            own_certificate: None,
            login_key,
            phase: Phase::Ringing,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            pending_invite: None,
            signal_key: None,
            held_candidates: Vec::new(),
            held_end_of_candidates: false,
            early: VecDeque::new(),
            peer_held: false,
            ignored: IgnoredSignals::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Receives an invite (already routed to this user; `from` stamped by
    /// the supernode). Verifies the caller's certificate (it must name
    /// `from`) and its share (signed for this call from `from` to
    /// `local_name`); on success queues `Ringing` and an
    /// [`CallEvent::Incoming`], otherwise rejects and ends.
    pub fn incoming(
        signal: &CallSignal,
        local_name: &str,
        login_key: RsaPublicKey,
        now_s: i64,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Option<Self> {
        let invite_id: [u8; INVITE_ID_LEN] = signal.invite_id.as_slice().try_into().ok()?;
        let Some(call_signal::Kind::Invite(invite)) = &signal.kind else {
            return None;
        };
        let names = CallNames::new(&signal.from, local_name);
        let mut setup = Self::new(
            Role::Callee,
            invite_id,
            names,
            login_key,
            now_ms,
            timeout_ms,
        );
        setup.pending_invite = Some(invite.clone());
        let verified = invite
            .share
            .as_ref()
            .ok_or(HandshakeError::MissingCertificate)
            .and_then(|share| {
                crate::handshake::verify_share(
                    share,
                    Role::Caller,
                    &invite_id,
                    &setup.names,
                    &setup.login_key,
                    now_s,
                )
            });
        match verified {
            Ok(caller) => {
                setup.send(call_signal::Kind::Ringing(CallRinging {}));
                setup.event(CallEvent::Incoming { caller });
            }
            Err(e) => {
                setup.send(call_signal::Kind::Reject(CallReject {
                    reason: RejectReason::BadKeyShare as i32,
                }));
                setup.end(EndReason::BadPeer(e));
            }
        }
        Some(setup)
    }

    /// The conference an invite belongs to (its `conference_id`, when it
    /// is 16 bytes): `None` for a plain call or another kind of signal.
    pub fn conference_of(signal: &CallSignal) -> Option<[u8; crate::conference::ID_LEN]> {
        match &signal.kind {
            Some(call_signal::Kind::Invite(invite)) => {
                invite.conference_id.as_slice().try_into().ok()
            }
            _ => None,
        }
    }

    /// (Caller, before the invite is sent) marks the queued invite as a
    /// leg of the conference `id` (`CallInvite.conference_id`).
    pub fn set_conference_id(&mut self, id: [u8; crate::conference::ID_LEN]) {
        for signal in &mut self.out {
            if let Some(call_signal::Kind::Invite(invite)) = &mut signal.kind {
                invite.conference_id = id.to_vec();
            }
        }
    }

    /// The call's invite id.
    pub fn invite_id(&self) -> [u8; INVITE_ID_LEN] {
        self.invite_id
    }

    /// This user's (normalised) name.
    pub fn local_name(&self) -> &str {
        self.names.of(self.role)
    }

    /// The other user's (normalised) name.
    pub fn peer_name(&self) -> &str {
        self.names.of(self.role.peer())
    }

    /// Where the setup stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The signals dropped so far, by why.
    pub fn ignored(&self) -> IgnoredSignals {
        self.ignored
    }

    /// (Callee) answers the call; `rng` blinds the share's signature (any
    /// caller can make the callee sign).
    pub fn accept(
        &mut self,
        identity: &Identity,
        secret: [u8; 32],
        candidates: Vec<Candidate>,
        now_s: i64,
        rng: &mut impl CryptoRngCore,
    ) {
        if self.phase != Phase::Ringing || self.role != Role::Callee {
            return;
        }
        let Some(invite) = self.pending_invite.take() else {
            return;
        };
        let agreement = KeyAgreement::new(Role::Callee, self.invite_id, self.names.clone(), secret);
        let share = agreement.share(identity, rng);
        let Some(peer_share) = invite.share.as_ref() else {
            return;
        };
        match agreement.complete(&identity.certificate, peer_share, &self.login_key, now_s) {
            Ok(keys) => {
                self.send(call_signal::Kind::Accept(CallAccept {
                    share: Some(share),
                    candidates,
                }));
                self.connect(keys, invite.candidates, now_s);
            }
            Err(e) => {
                self.send(call_signal::Kind::Reject(CallReject {
                    reason: RejectReason::BadKeyShare as i32,
                }));
                self.end(EndReason::BadPeer(e));
            }
        }
    }

    /// (Callee) declines, or answers busy.
    pub fn reject(&mut self, busy: bool) {
        if self.phase == Phase::Ended {
            return;
        }
        if busy {
            self.send(call_signal::Kind::Busy(CallBusy {}));
            self.end(EndReason::Busy);
        } else {
            self.send(call_signal::Kind::Reject(CallReject {
                reason: RejectReason::Declined as i32,
            }));
            self.end(EndReason::Rejected);
        }
    }

    /// Ends the call from this side (MACed once the keys are agreed).
    pub fn hangup(&mut self) {
        if self.phase == Phase::Ended {
            return;
        }
        self.send(call_signal::Kind::Hangup(CallHangup {
            reason: HangupReason::Normal as i32,
        }));
        self.end(EndReason::HungUp { by_peer: false });
    }

    /// Sends late candidates to the peer: at once (MACed) once the keys are
    /// agreed, held until then.
    pub fn trickle(&mut self, candidates: Vec<Candidate>, end_of_candidates: bool) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.signal_key.is_none() {
            let room = HELD_CANDIDATES_LIMIT.saturating_sub(self.held_candidates.len());
            self.held_candidates
                .extend(candidates.into_iter().take(room));
            self.held_end_of_candidates |= end_of_candidates;
            return;
        }
        self.send(call_signal::Kind::Candidates(CandidateUpdate {
            candidates,
            end_of_candidates,
        }));
    }

    /// Puts the call on hold (`on`) or resumes it: tells the peer with a
    /// MACed `hold` signal. Only once connected (no-op otherwise); media is
    /// the shell's business (it keeps sending, silence while on hold).
    pub fn hold(&mut self, on: bool) {
        if self.phase != Phase::Connected {
            return;
        }
        self.send(call_signal::Kind::Hold(CallHold { on }));
    }

    /// Sends a conference message to the peer (MACed). Only once
    /// connected (no-op otherwise): conference messages travel on legs.
    pub fn send_conference(&mut self, signal: crate::messages::ConferenceSignal) {
        if self.phase != Phase::Connected {
            return;
        }
        self.send(call_signal::Kind::Conference(signal));
    }

    /// Whether the peer has the call on hold (its last `hold` signal).
    pub fn peer_held(&self) -> bool {
        self.peer_held
    }

    /// A signal for this call arrived (pushed by this user's supernode).
    pub fn handle_signal(&mut self, signal: &CallSignal, now_s: i64) {
        if signal.invite_id.as_slice() != self.invite_id || self.phase == Phase::Ended {
            return;
        }
        if crate::name::normalise(&signal.from).ok().as_deref() != Some(self.peer_name()) {
            self.ignored.wrong_sender += 1;
            return;
        }
        use call_signal::Kind;
        let Some(kind) = &signal.kind else {
            return;
        };
        if needs_mac(kind) {
            match &self.signal_key {
                Some(key) if !key.verify(signal) => {
                    self.ignored.bad_mac += 1;
                    return;
                }
                Some(_) => {}
                // Before the agreement: keep a MACed signal until the keys
                // exist (it may have overtaken the accept); an unMACed
                // hangup is the peer (or its supernode) ending the setup.
                None if !signal.mac.is_empty() => {
                    if self.early.len() >= EARLY_LIMIT {
                        self.ignored.bad_mac += 1;
                    } else {
                        self.early.push_back(signal.clone());
                    }
                    return;
                }
                None if matches!(kind, Kind::Hangup(_)) => {}
                None => {
                    self.ignored.bad_mac += 1;
                    return;
                }
            }
        } else if self.phase == Phase::Connected {
            if !matches!(kind, Kind::Ringing(_)) {
                self.ignored.out_of_place += 1;
            }
            return;
        }
        match kind {
            Kind::Ringing(_) if self.phase == Phase::Inviting => {
                self.phase = Phase::Ringing;
                self.event(CallEvent::Ringing);
            }
            Kind::Accept(accept) if self.role == Role::Caller => {
                let (Some(agreement), Some(own)) =
                    (self.agreement.take(), self.own_certificate.take())
                else {
                    return;
                };
                let result = accept
                    .share
                    .as_ref()
                    .ok_or(HandshakeError::MissingCertificate)
                    .and_then(|share| agreement.complete(&own, share, &self.login_key, now_s));
                match result {
                    Ok(keys) => self.connect(keys, accept.candidates.clone(), now_s),
                    Err(e) => {
                        self.send(Kind::Hangup(CallHangup {
                            reason: HangupReason::Error as i32,
                        }));
                        self.end(EndReason::BadPeer(e));
                    }
                }
            }
            Kind::Reject(_) => self.end(EndReason::Rejected),
            Kind::Busy(_) => self.end(EndReason::Busy),
            Kind::Hangup(h) => {
                let reason = HangupReason::try_from(h.reason).unwrap_or(HangupReason::Error);
                let end = match reason {
                    HangupReason::Normal if self.phase == Phase::Connected => {
                        EndReason::HungUp { by_peer: true }
                    }
                    HangupReason::Normal => EndReason::Rejected,
                    HangupReason::NoAnswer => EndReason::NoAnswer,
                    other => EndReason::Failed(other),
                };
                self.end(end);
            }
            Kind::Candidates(update) => {
                self.event(CallEvent::Candidates(update.candidates.clone()));
            }
            // Only a MACed hold of a connected call (a MACed signal never
            // gets here before the agreement: it waits in `early`). A
            // repeated state changes nothing.
            Kind::Hold(h) if self.phase == Phase::Connected && h.on != self.peer_held => {
                self.peer_held = h.on;
                self.event(CallEvent::PeerHold(h.on));
            }
            Kind::Conference(c) if self.phase == Phase::Connected => {
                self.event(CallEvent::Conference(c.clone()));
            }
            _ => {}
        }
    }

    /// The keys are agreed: connected; send what was held, check what
    /// arrived early.
    fn connect(&mut self, keys: CallKeys, remote_candidates: Vec<Candidate>, now_s: i64) {
        self.signal_key = Some(keys.signal.clone());
        self.phase = Phase::Connected;
        self.event(CallEvent::Connected {
            keys: Box::new(keys),
            remote_candidates,
        });
        if !self.held_candidates.is_empty() || self.held_end_of_candidates {
            let candidates = std::mem::take(&mut self.held_candidates);
            let end = std::mem::take(&mut self.held_end_of_candidates);
            self.trickle(candidates, end);
        }
        for signal in std::mem::take(&mut self.early) {
            self.handle_signal(&signal, now_s);
        }
    }

    /// Advances time: a setup that neither connected nor ended by its
    /// deadline ends as `NoAnswer`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if matches!(self.phase, Phase::Inviting | Phase::Ringing) && now_ms >= self.deadline_ms {
            self.send(call_signal::Kind::Hangup(CallHangup {
                reason: HangupReason::NoAnswer as i32,
            }));
            self.end(EndReason::NoAnswer);
        }
    }

    /// When [`Self::handle_timeout`] next needs to run.
    pub fn poll_timeout(&self) -> Option<u64> {
        matches!(self.phase, Phase::Inviting | Phase::Ringing).then_some(self.deadline_ms)
    }

    /// The next signal to send.
    pub fn poll_signal(&mut self) -> Option<CallSignal> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    fn send(&mut self, kind: call_signal::Kind) {
        if self.out.len() >= QUEUE_LIMIT {
            self.out.pop_front();
        }
        let mac = needs_mac(&kind);
        let mut signal = CallSignal {
            invite_id: self.invite_id.to_vec(),
            from: self.local_name().to_owned(),
            to: self.peer_name().to_owned(),
            kind: Some(kind),
            mac: Vec::new(),
        };
        if mac && let Some(key) = &self.signal_key {
            key.seal(&mut signal);
        }
        self.out.push_back(signal);
    }

    fn event(&mut self, event: CallEvent) {
        if self.events.len() >= QUEUE_LIMIT {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn end(&mut self, reason: EndReason) {
        self.phase = Phase::Ended;
        self.agreement = None;
        self.pending_invite = None;
        self.held_candidates.clear();
        self.early.clear();
        self.event(CallEvent::Ended(reason));
    }
}
