//! Call setup, sans-IO: invite -> ringing -> accept / reject / busy / hangup,
//! with the key agreement of [`crate::handshake`] and the setup timeout.
//!
//! One [`CallSetup`] per call and side. Feed it the signals that arrive for
//! its invite id ([`CallSetup::handle_signal`]) and the time
//! ([`CallSetup::handle_timeout`]); take what to send with
//! [`CallSetup::poll_signal`] and what happened with [`CallSetup::poll_event`].
//! Nothing reaches `Connected` before the peer's certificate and signed share
//! verified, so no media can flow to an unauthenticated peer.

use std::collections::VecDeque;

use rsa::RsaPublicKey;

use crate::cert::{Identity, VerifiedCertificate};
use crate::handshake::{CallKeys, HandshakeError, INVITE_ID_LEN, KeyAgreement, Role};
use crate::messages::{
    CallAccept, CallBusy, CallHangup, CallInvite, CallReject, CallRinging, CallSignal, Candidate,
    CandidateUpdate, HangupReason, RejectReason, call_signal,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// One side of one call.
#[derive(Debug)]
pub struct CallSetup {
    role: Role,
    invite_id: [u8; INVITE_ID_LEN],
    local_name: String,
    peer_name: String,
    agreement: Option<KeyAgreement>,
    login_key: RsaPublicKey,
    phase: Phase,
    deadline_ms: u64,
    /// The caller's share, kept by the callee until it accepts.
    pending_invite: Option<CallInvite>,
    out: VecDeque<CallSignal>,
    events: VecDeque<CallEvent>,
}

/// Most signals or events queued before the shell drains them.
const QUEUE_LIMIT: usize = 32;

impl CallSetup {
    /// Starts an outgoing call to `callee` and queues the invite. `secret` is
    /// 32 random bytes for the ephemeral key; `now_s` is unix seconds (for
    /// certificate checks), `now_ms` the shell's monotonic clock.
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
    ) -> Self {
        let agreement = KeyAgreement::new(Role::Caller, invite_id, secret);
        let invite = CallInvite {
            share: Some(agreement.share(identity)),
            candidates,
        };
        let mut setup = Self {
            role: Role::Caller,
            invite_id,
            local_name: local_name.to_owned(),
            peer_name: callee.to_owned(),
            agreement: Some(agreement),
            login_key,
            phase: Phase::Inviting,
            deadline_ms: now_ms + timeout_ms,
            pending_invite: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        setup.send(call_signal::Kind::Invite(invite));
        setup
    }

    /// Receives an invite (already routed to this user). Verifies the caller's
    /// certificate and share; on success queues `Ringing` and an
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
        let mut setup = Self {
            role: Role::Callee,
            invite_id,
            local_name: local_name.to_owned(),
            peer_name: signal.from.clone(),
            agreement: None,
            login_key,
            phase: Phase::Ringing,
            deadline_ms: now_ms + timeout_ms,
            pending_invite: Some(invite.clone()),
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        let verified = invite
            .share
            .as_ref()
            .ok_or(HandshakeError::MissingCertificate)
            .and_then(|share| {
                crate::handshake::verify_share(
                    share,
                    Role::Caller,
                    &invite_id,
                    &setup.login_key,
                    now_s,
                )
            })
            .and_then(|cert| {
                // The supernode stamped `from`; the certificate must agree.
                if cert.name == signal.from {
                    Ok(cert)
                } else {
                    Err(HandshakeError::Certificate(
                        crate::cert::CertError::NameMismatch {
                            expected: signal.from.clone(),
                            got: cert.name.clone(),
                        },
                    ))
                }
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

    /// The call's invite id.
    pub fn invite_id(&self) -> [u8; INVITE_ID_LEN] {
        self.invite_id
    }

    /// The other user's name.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// Where the setup stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// (Callee) answers the call.
    pub fn accept(
        &mut self,
        identity: &Identity,
        secret: [u8; 32],
        candidates: Vec<Candidate>,
        now_s: i64,
    ) {
        if self.phase != Phase::Ringing || self.role != Role::Callee {
            return;
        }
        let Some(invite) = self.pending_invite.take() else {
            return;
        };
        let agreement = KeyAgreement::new(Role::Callee, self.invite_id, secret);
        let share = agreement.share(identity);
        let Some(peer_share) = invite.share.as_ref() else {
            return;
        };
        match agreement.complete(peer_share, &self.login_key, now_s) {
            Ok(keys) => {
                self.send(call_signal::Kind::Accept(CallAccept {
                    share: Some(share),
                    candidates,
                }));
                self.phase = Phase::Connected;
                self.event(CallEvent::Connected {
                    keys: Box::new(keys),
                    remote_candidates: invite.candidates,
                });
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

    /// Ends the call from this side.
    pub fn hangup(&mut self) {
        if self.phase == Phase::Ended {
            return;
        }
        self.send(call_signal::Kind::Hangup(CallHangup {
            reason: HangupReason::Normal as i32,
        }));
        self.end(EndReason::HungUp { by_peer: false });
    }

    /// Sends late candidates to the peer.
    pub fn trickle(&mut self, candidates: Vec<Candidate>, end_of_candidates: bool) {
        if self.phase == Phase::Ended {
            return;
        }
        self.send(call_signal::Kind::Candidates(CandidateUpdate {
            candidates,
            end_of_candidates,
        }));
    }

    /// A signal for this call arrived from the peer (or its supernode).
    pub fn handle_signal(&mut self, signal: &CallSignal, now_s: i64) {
        if signal.invite_id.as_slice() != self.invite_id || self.phase == Phase::Ended {
            return;
        }
        use call_signal::Kind;
        match &signal.kind {
            Some(Kind::Ringing(_)) if self.phase == Phase::Inviting => {
                self.phase = Phase::Ringing;
                self.event(CallEvent::Ringing);
            }
            Some(Kind::Accept(accept))
                if self.role == Role::Caller && self.phase != Phase::Connected =>
            {
                let Some(agreement) = self.agreement.take() else {
                    return;
                };
                let result = accept
                    .share
                    .as_ref()
                    .ok_or(HandshakeError::MissingCertificate)
                    .and_then(|share| agreement.complete(share, &self.login_key, now_s))
                    .and_then(|keys| {
                        if keys.peer.name == self.peer_name {
                            Ok(keys)
                        } else {
                            Err(HandshakeError::Certificate(
                                crate::cert::CertError::NameMismatch {
                                    expected: self.peer_name.clone(),
                                    got: keys.peer.name.clone(),
                                },
                            ))
                        }
                    });
                match result {
                    Ok(keys) => {
                        self.phase = Phase::Connected;
                        self.event(CallEvent::Connected {
                            keys: Box::new(keys),
                            remote_candidates: accept.candidates.clone(),
                        });
                    }
                    Err(e) => {
                        self.send(Kind::Hangup(CallHangup {
                            reason: HangupReason::Error as i32,
                        }));
                        self.end(EndReason::BadPeer(e));
                    }
                }
            }
            Some(Kind::Reject(_)) => self.end(EndReason::Rejected),
            Some(Kind::Busy(_)) => self.end(EndReason::Busy),
            Some(Kind::Hangup(h)) => {
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
            Some(Kind::Candidates(update)) => {
                self.event(CallEvent::Candidates(update.candidates.clone()));
            }
            _ => {}
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
        self.out.push_back(CallSignal {
            invite_id: self.invite_id.to_vec(),
            from: self.local_name.clone(),
            to: self.peer_name.clone(),
            kind: Some(kind),
            mac: Vec::new(),
        });
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
        self.event(CallEvent::Ended(reason));
    }
}
