//! Routing of call signals, chat and receipts: to a local session, or over
//! the link to the user's home supernode (found by a lookup), which answers
//! `Ack` once the message is queued for the user. Also the no-answer timer
//! of invites and the relay notes of routed calls.

use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Ack, CallHangup, CallSignal, ChatMessage, ChatReceipt, Envelope, ErrorCode, ErrorReply,
    HangupReason, PresenceStatus, UserRecord, call_signal,
};

use super::interface::{Output, RelayCommand, SessionId};
use super::jobs::{AfterDelivery, Delivery, Done, Job, JobId, LookupFor, RouteError};
use super::state::{Invite, Node, Timer};

/// An error reply body.
pub(crate) fn error(code: ErrorCode, detail: impl Into<String>) -> Body {
    Body::Error(ErrorReply::new(code, detail))
}

fn route_error(to: &str, e: RouteError) -> Body {
    match e {
        RouteError::Unknown => error(ErrorCode::UserUnknown, format!("no user {to}")),
        RouteError::Offline => error(ErrorCode::UserOffline, format!("{to} is offline")),
    }
}

fn recipient(body: &Body) -> Option<&str> {
    match body {
        Body::CallSignal(signal) => Some(&signal.to),
        Body::ChatMessage(message) => Some(&message.to),
        Body::ChatReceipt(receipt) => Some(&receipt.to),
        // A relay side granted to the other user of a call (section 7.5).
        Body::RelayAllocated(granted) if !granted.to.is_empty() => Some(&granted.to),
        _ => None,
    }
}

impl Node {
    /// Delivers a routed message (call signal, chat, receipt) to the local
    /// session named in its `to`. Chat delivered this way is receipted.
    pub(crate) fn deliver_local(&mut self, body: Body) -> bool {
        let Some(to) = recipient(&body).map(str::to_owned) else {
            return false;
        };
        // A client that acknowledges chat: held until it does (receipted
        // then), stored for its next join if it never does.
        if let Body::ChatMessage(message) = &body
            && let Some(pushed) = self.push_acked_chat(&to, message)
        {
            return pushed;
        }
        let signal = match &body {
            Body::CallSignal(signal) => {
                self.observe_signal(signal);
                Some(signal.clone())
            }
            _ => None,
        };
        let receipt = match &body {
            Body::ChatMessage(message) => Some(message.clone()),
            _ => None,
        };
        let delivered = self.push_to_name(&to, body);
        if delivered && let Some(message) = receipt {
            self.send_receipt(&message);
        }
        if delivered && let Some(signal) = signal {
            self.note_routed(&signal);
        }
        delivered
    }

    /// Routes `body` to the user `to`: locally, or to its home supernode.
    /// The outcome goes to `then` through the dispatcher.
    pub(crate) fn deliver(&mut self, to: &str, body: Body, then: AfterDelivery) -> JobId {
        if self.sessions.by_name.contains_key(to) {
            let job = self.fresh_id();
            let result = if self.deliver_local(body.clone()) {
                Ok(())
            } else {
                Err(RouteError::Offline)
            };
            let delivery = Box::new(Delivery {
                to: to.to_owned(),
                body,
                then,
            });
            self.finish(job, Done::Delivered(delivery, result));
            return job;
        }
        let delivery = Box::new(Delivery {
            to: to.to_owned(),
            body,
            then,
        });
        self.start_lookup(to, LookupFor::Deliver(delivery))
    }

    /// The lookup of a delivery's recipient finished: send it home.
    pub(crate) fn deliver_found(&mut self, delivery: Box<Delivery>, record: Option<UserRecord>) {
        let job = self.fresh_id();
        let Some(record) = record else {
            self.finish(job, Done::Delivered(delivery, Err(RouteError::Unknown)));
            return;
        };
        let home = crate::node_id(&record.home_node_id);
        let offline = record.status == PresenceStatus::Offline as i32
            || home.is_none()
            || home == Some(self.config.node_id);
        let sent = match home {
            Some(home) if !offline => self.request(home, delivery.body.clone(), job),
            _ => None,
        };
        if sent.is_some() {
            self.jobs.insert(job, Job::Deliver(delivery));
        } else {
            self.finish(job, Done::Delivered(delivery, Err(RouteError::Offline)));
        }
    }

    /// The home supernode's answer (`None`: none in time).
    pub(crate) fn deliver_answer(&mut self, job: JobId, reply: Option<Body>) {
        if let Some(Job::Deliver(delivery)) = self.jobs.remove(&job) {
            let result = match reply {
                Some(Body::Ack(_)) => Ok(()),
                _ => Err(RouteError::Offline),
            };
            self.finish(job, Done::Delivered(delivery, result));
        }
    }

    /// A delivery finished: answer the client that asked, if any. Returns
    /// the session that waited for it.
    pub(crate) fn delivered(
        &mut self,
        delivery: Box<Delivery>,
        result: Result<(), RouteError>,
    ) -> Option<SessionId> {
        let Delivery { to, then, .. } = *delivery;
        match then {
            AfterDelivery::Chat {
                session,
                request_id,
                message,
            } => {
                let reply = match result {
                    Ok(()) => Body::Ack(Ack {}),
                    Err(RouteError::Unknown) => {
                        error(ErrorCode::UserUnknown, format!("no user {to}"))
                    }
                    Err(RouteError::Offline) => {
                        // Answered once the replicas stored it.
                        let job = self.store_chat(Some((session, request_id)), message);
                        if let Some(joined) = self.sessions.joined_mut(session) {
                            joined.busy = Some(job);
                        }
                        return None;
                    }
                };
                self.send_session(session, request_id, reply);
                Some(session)
            }
            AfterDelivery::Receipt {
                session,
                request_id,
            } => {
                let reply = match result {
                    Ok(()) => Body::Ack(Ack {}),
                    Err(e) => route_error(&to, e),
                };
                self.send_session(session, request_id, reply);
                Some(session)
            }
            AfterDelivery::Signal {
                session,
                request_id,
                signal,
            } => {
                let reply = match result {
                    Ok(()) => {
                        self.note_routed(&signal);
                        if matches!(signal.kind, Some(call_signal::Kind::Invite(_))) {
                            self.start_invite_timer(&signal);
                        }
                        Body::Ack(Ack {})
                    }
                    Err(e) => route_error(&to, e),
                };
                self.send_session(session, request_id, reply);
                Some(session)
            }
            AfterDelivery::Quiet => {
                if let Err(e) = result {
                    tracing::debug!(%to, ?e, "not delivered");
                }
                None
            }
        }
    }

    /// Sends the delivery receipt of `message` to its sender.
    pub(crate) fn send_receipt(&mut self, message: &ChatMessage) {
        let receipt = ChatReceipt {
            message_id: message.message_id.clone(),
            from: message.to.clone(),
            to: message.from.clone(),
            delivered_at: self.now.unix_ms,
        };
        let to = receipt.to.clone();
        self.deliver(&to, Body::ChatReceipt(receipt), AfterDelivery::Quiet);
    }

    /// Cancels the no-answer timer of a call that got an answer.
    pub(crate) fn observe_signal(&mut self, signal: &CallSignal) {
        use call_signal::Kind;
        if matches!(
            signal.kind,
            Some(Kind::Accept(_) | Kind::Reject(_) | Kind::Busy(_) | Kind::Hangup(_))
        ) {
            self.invites.remove(&signal.invite_id);
        }
    }

    /// Tells the relay that `signal` was routed through this supernode:
    /// once it routed the invite the caller may allocate a relay for the
    /// call, once it routed the callee's ringing or accept the callee may; a
    /// hangup, reject or busy releases the call's allocations. A mid-call
    /// candidates signal of a call unknown here (a party moved to this
    /// supernode after its own or its relay died) makes the call known the
    /// way an invite does, its sender in the caller's place (relay
    /// migration, docs/PROTOCOL.md section 7.5).
    pub(crate) fn note_routed(&mut self, signal: &CallSignal) {
        use crate::relay::SignalKind;
        use call_signal::Kind;
        let kind = match signal.kind {
            Some(Kind::Invite(_)) => SignalKind::Invite,
            Some(Kind::Ringing(_)) => SignalKind::Ringing,
            Some(Kind::Accept(_)) => SignalKind::Accept,
            Some(Kind::Reject(_) | Kind::Busy(_) | Kind::Hangup(_)) => SignalKind::End,
            Some(Kind::Candidates(_)) => SignalKind::Resume,
            Some(Kind::Hold(_) | Kind::Conference(_)) | None => SignalKind::Other,
        };
        self.emit(Output::Relay(RelayCommand::NoteSignal {
            invite_id: signal.invite_id.clone(),
            from: signal.from.clone(),
            to: signal.to.clone(),
            kind,
        }));
    }

    /// Starts the no-answer timer of an invite routed from a local caller.
    pub(crate) fn start_invite_timer(&mut self, invite: &CallSignal) {
        let due = self.now.mono + self.config.no_answer_timeout;
        self.invites.insert(
            invite.invite_id.clone(),
            Invite {
                caller: invite.from.clone(),
                callee: invite.to.clone(),
                due,
            },
        );
        self.set_timer(due, Timer::NoAnswer(invite.invite_id.clone()));
    }

    /// The no-answer timer of `invite_id` fired: hang up both sides.
    pub(crate) fn no_answer(&mut self, invite_id: Vec<u8>) {
        let due = self.invites.get(&invite_id).map(|i| i.due);
        if due.is_none_or(|due| due > self.now.mono) {
            return;
        }
        let Some(invite) = self.invites.remove(&invite_id) else {
            return;
        };
        tracing::debug!(caller = %invite.caller, callee = %invite.callee, "invite not answered, hanging up");
        let hangup = |from: &str, to: &str| CallSignal {
            invite_id: invite_id.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
            kind: Some(call_signal::Kind::Hangup(CallHangup {
                reason: HangupReason::NoAnswer as i32,
            })),
            ..Default::default()
        };
        let to_caller = hangup(&invite.callee, &invite.caller);
        let to_callee = hangup(&invite.caller, &invite.callee);
        self.deliver(
            &invite.caller,
            Body::CallSignal(to_caller),
            AfterDelivery::Quiet,
        );
        self.deliver(
            &invite.callee,
            Body::CallSignal(to_callee),
            AfterDelivery::Quiet,
        );
    }

    /// A message routed to this node by a peer: delivered to the local
    /// session, answered `Ack` or `UserOffline` when asked (`request_id`).
    /// Chat that is not sealed (`chat::check_envelope`) is refused
    /// `Malformed` and counted, never pushed to the user.
    pub(crate) fn routed_from_peer(&mut self, peer: &crate::NodeId, request_id: u64, body: Body) {
        if let Body::ChatMessage(message) = &body
            && let Err(e) = natter_proto::chat::check_envelope(message)
        {
            self.stats.chat_malformed += 1;
            if request_id != 0 {
                let reply = error(ErrorCode::Malformed, e.to_string());
                self.send_link(peer, Envelope::new(request_id, reply));
            }
            return;
        }
        let delivered = self.deliver_local(body);
        if request_id != 0 {
            let reply = if delivered {
                Body::Ack(Ack {})
            } else {
                error(ErrorCode::UserOffline, "not joined here")
            };
            self.send_link(peer, Envelope::new(request_id, reply));
        }
    }
}
