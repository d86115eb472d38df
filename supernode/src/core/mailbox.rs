//! Chat store-and-forward: chat for an offline user is stored on the
//! user's replicas (under the byte caps of [`crate::store::ChatLimits`],
//! refused `MailboxFull` beyond them), moves between replicas in pages
//! that fit a frame, and leaves a replica only once the next replica
//! acknowledged it or the user's supernode delivered it. Nothing is taken
//! out of a store before it reached its next holder.
//!
//! "Delivered" to a client that acknowledges chat (`JoinHello.acks_chat`)
//! means the client said `ChatDelivered` for it: a gather waits for the
//! acknowledgements of a round before it tells the replicas to delete, and
//! ends without deleting what was not acknowledged by the deadline
//! (`chat_ack_timeout`). Live chat routed to such a client is held here
//! until acknowledged, and stored on the replicas if it never is. At most
//! [`MAX_UNACKED`] pushes wait for one session. An older client (no
//! `acks_chat`) counts as having received what was queued for it.

use std::collections::{HashMap, HashSet};

use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Ack, ChatMessage, DirectoryLookup, DirectoryRecords, DirectoryStore, Envelope, ErrorCode,
    ErrorReply,
};

use super::fit;
use super::interface::SessionId;
use super::jobs::{Done, Gather, GatherFor, Handoff, Job, JobId, Store};
use super::routing::error;
use super::sessions::ChatAcks;
use super::state::{Node, Timer};
use super::statements::VerifiedRecord;
use crate::{NodeId, hrw, store};

/// Most messages in one page (also bounds what one round pushes to a
/// session queue).
pub const MAX_PAGE: usize = 16;
/// Most hand-overs in flight at once; the rest wait for a later tick.
pub const MAX_HANDOFFS: usize = 32;
/// Most chat pushes one session may have unacknowledged (gathers and live
/// chat together); beyond, stored chat waits on the replicas for a later
/// round and live chat is stored there.
pub const MAX_UNACKED: usize = 64;
/// Rounds of one gather at most (each round deletes at least one message
/// on every replica that follows the protocol).
const MAX_ROUNDS: u32 = 2 * store::MAX_PENDING_PER_USER as u32;

fn store_envelope(chat: Vec<ChatMessage>) -> Envelope {
    Envelope::new(
        u64::MAX,
        Body::DirectoryStore(DirectoryStore {
            records: Vec::new(),
            pending_chat: chat,
        }),
    )
}

fn mailbox_full(detail: impl Into<String>) -> Body {
    Body::Error(ErrorReply::new(ErrorCode::MailboxFull, detail))
}

impl Node {
    /// Stores a client's chat for an offline recipient on its replicas and
    /// answers the client when they did. Returns the job the session waits
    /// for.
    pub(crate) fn store_chat(
        &mut self,
        reply: Option<(SessionId, u64)>,
        message: ChatMessage,
    ) -> JobId {
        let job = self.fresh_id();
        let mut state = Store {
            reply,
            waiting: HashSet::new(),
            stored: false,
            full: None,
            silent: 0,
        };
        let replicas = hrw::replicas(
            &message.to,
            &self.membership.live_ids(),
            self.config.replicas,
        );
        for replica in replicas {
            if replica == self.config.node_id {
                match self.chats.add(message.clone(), self.now.unix_ms) {
                    Ok(_) => state.stored = true,
                    Err(e) => {
                        self.stats.mailbox_full += 1;
                        state.full = Some(e.to_string());
                    }
                }
                continue;
            }
            let body = Body::DirectoryStore(DirectoryStore {
                records: Vec::new(),
                pending_chat: vec![message.clone()],
            });
            if let Some(rid) = self.request(replica, body, job) {
                state.waiting.insert(rid);
            }
        }
        self.jobs.insert(job, Job::Store(state));
        self.store_check(job);
        job
    }

    /// A replica's answer to a store (`None`: none in time).
    pub(crate) fn store_answer(&mut self, job: JobId, rid: u64, reply: Option<Body>) {
        if let Some(Job::Store(state)) = self.jobs.get_mut(&job) {
            state.waiting.remove(&rid);
            match reply {
                Some(Body::Ack(_)) => state.stored = true,
                Some(Body::Error(e)) if e.code == ErrorCode::MailboxFull as i32 => {
                    state.full = Some(e.detail);
                }
                _ => state.silent += 1,
            }
        }
        self.store_check(job);
    }

    fn store_check(&mut self, job: JobId) {
        if !matches!(self.jobs.get(&job), Some(Job::Store(s)) if s.waiting.is_empty()) {
            return;
        }
        let Some(Job::Store(state)) = self.jobs.remove(&job) else {
            return;
        };
        let reply = if state.stored || state.silent > 0 {
            Body::Ack(Ack {})
        } else if let Some(detail) = state.full {
            mailbox_full(detail)
        } else {
            error(
                ErrorCode::UserOffline,
                "offline, and no replica to store for",
            )
        };
        if let Some((session, request_id)) = state.reply {
            self.send_session(session, request_id, reply);
        } else if !matches!(reply, Body::Ack(_)) {
            tracing::warn!("unacknowledged live chat could not be stored");
        }
        self.finish(job, Done::Stored(state.reply.map(|(session, _)| session)));
    }

    /// A `DirectoryStore`'s chat from a peer: stored; the answer for a
    /// request (`Ack`, or `MailboxFull` when a message was refused).
    /// A message that is not sealed (`chat::check_envelope`) is dropped and
    /// counted.
    pub(crate) fn store_from_peer(&mut self, chat: Vec<ChatMessage>) -> Body {
        let mut refused = None;
        for message in chat {
            if natter_proto::chat::check_envelope(&message).is_err() {
                self.stats.chat_malformed += 1;
                continue;
            }
            if let Err(e) = self.chats.add(message, self.now.unix_ms) {
                self.stats.mailbox_full += 1;
                refused = Some(e);
            }
        }
        match refused {
            Some(e) => mailbox_full(e.to_string()),
            None => Body::Ack(Ack {}),
        }
    }

    /// The chat part of a replica's answer to a `DirectoryLookup`: with
    /// `page_chat`, deletes the delivered ids and answers the next page,
    /// kept; an older supernode's `take_pending_chat` takes one page.
    pub(crate) fn chat_for_lookup(&mut self, lookup: &DirectoryLookup) -> Vec<ChatMessage> {
        if lookup.page_chat {
            self.chats.remove_ids(&lookup.name, &lookup.delivered_ids);
            self.chat_page(&lookup.name, 0)
        } else if lookup.take_pending_chat {
            let page = self.chat_page(&lookup.name, 0);
            let ids: Vec<Vec<u8>> = page.iter().map(|m| m.message_id.clone()).collect();
            self.chats.remove_ids(&lookup.name, &ids);
            page
        } else {
            Vec::new()
        }
    }

    /// The page of chat stored for `name` after the first `skip` messages
    /// that fits a `DirectoryRecords` (or `DirectoryStore`) frame.
    fn chat_page(&self, name: &str, skip: usize) -> Vec<ChatMessage> {
        let empty = Envelope::new(
            u64::MAX,
            Body::DirectoryRecords(DirectoryRecords {
                records: self.records.get(name).cloned().into_iter().collect(),
                pending_chat: Vec::new(),
            }),
        );
        let budget = fit::budget(&empty);
        let messages = self.chats.messages(name).skip(skip).cloned();
        fit::prefix(messages, budget, MAX_PAGE)
    }

    /// The live set changed from `old` to `live`: chat of names whose
    /// replicas changed is copied to the new replicas, or handed over (and
    /// deleted here once every new replica acknowledged it) when this node
    /// is no longer one.
    pub(crate) fn chat_replicas_changed(&mut self, old: &[NodeId], live: &[NodeId]) {
        let me = self.config.node_id;
        let k = self.config.replicas;
        let mut names = self.chats.names();
        names.sort();
        for name in names {
            let before = hrw::replicas(&name, old, k);
            let after = hrw::replicas(&name, live, k);
            if before == after {
                continue;
            }
            let to: Vec<NodeId> = if after.contains(&me) {
                after
                    .iter()
                    .filter(|r| **r != me && !before.contains(r))
                    .copied()
                    .collect()
            } else {
                after
            };
            self.hand_off(&name, to, 0);
        }
    }

    /// Every few ticks: chat held for names this node is no longer a
    /// replica of goes to their replicas (again, if a hand-over failed).
    pub(crate) fn handoffs_due(&mut self) {
        let me = self.config.node_id;
        let live = self.membership.live_ids();
        let mut names = self.chats.names();
        names.sort();
        for name in names {
            let replicas = hrw::replicas(&name, &live, self.config.replicas);
            if !replicas.contains(&me) {
                self.hand_off(&name, replicas, 0);
            }
        }
    }

    /// Sends the page of `name`'s chat after `skip` to `to`, as requests.
    fn hand_off(&mut self, name: &str, to: Vec<NodeId>, skip: usize) {
        if to.is_empty() || self.handoffs.contains(name) || self.handoffs.len() >= MAX_HANDOFFS {
            return;
        }
        let page = self.chat_page(name, skip);
        if page.is_empty() {
            return;
        }
        let ids: Vec<Vec<u8>> = page.iter().map(|m| m.message_id.clone()).collect();
        let job = self.fresh_id();
        let mut waiting = HashSet::new();
        let body = store_envelope(page).body;
        let targets = to.len();
        for replica in to {
            if let Some(body) = body.clone()
                && let Some(rid) = self.request(replica, body, job)
            {
                waiting.insert(rid);
            }
        }
        if waiting.is_empty() {
            return;
        }
        self.handoffs.insert(name.to_owned());
        let handoff = Handoff {
            name: name.to_owned(),
            ids,
            skip,
            all_sent: waiting.len() == targets,
            targets,
            acks: 0,
            waiting,
        };
        self.jobs.insert(job, Job::Handoff(handoff));
    }

    /// A replica's answer to a hand-over page (`None`: none in time).
    pub(crate) fn handoff_answer(&mut self, job: JobId, rid: u64, reply: Option<Body>) {
        let Some(Job::Handoff(handoff)) = self.jobs.get_mut(&job) else {
            return;
        };
        handoff.waiting.remove(&rid);
        if matches!(reply, Some(Body::Ack(_))) {
            handoff.acks += 1;
        }
        if !handoff.waiting.is_empty() {
            return;
        }
        let Some(Job::Handoff(handoff)) = self.jobs.remove(&job) else {
            return;
        };
        self.handoffs.remove(&handoff.name);
        if handoff.acks == 0 {
            self.stats.handoffs_failed += 1;
            return;
        }
        let me = self.config.node_id;
        let replicas = hrw::replicas(
            &handoff.name,
            &self.membership.live_ids(),
            self.config.replicas,
        );
        if replicas.contains(&me) {
            // A copy: the next page to the new replicas.
            let to: Vec<NodeId> = replicas.into_iter().filter(|r| *r != me).collect();
            let skip = handoff.skip + handoff.ids.len();
            self.hand_off(&handoff.name, to, skip);
        } else if handoff.all_sent && handoff.acks == handoff.targets {
            // Every replica it was for has the page: it leaves here.
            self.chats.remove_ids(&handoff.name, &handoff.ids);
            self.hand_off(&handoff.name, replicas, 0);
        } else {
            // Some replica does not have it yet (not linked, or no answer):
            // kept here and handed over again with the next `handoffs_due`
            // (replicas that have it already keep one copy: stores dedup by
            // message id).
            self.stats.handoffs_partial += 1;
        }
    }

    /// For a user who joined here: asks every replica for its record and
    /// the chat stored for it, delivering the chat page by page.
    pub(crate) fn start_gather(&mut self, name: &str, purpose: GatherFor) -> JobId {
        let job = self.fresh_id();
        let gather = Gather {
            name: name.to_owned(),
            purpose,
            replicas: hrw::replicas(name, &self.membership.live_ids(), self.config.replicas),
            round: 0,
            waiting: HashSet::new(),
            records: Vec::new(),
            chat: Vec::new(),
            delivered: HashSet::new(),
            last: Vec::new(),
            stale: false,
            awaiting: HashMap::new(),
            confirmed: HashSet::new(),
            ack_due: None,
        };
        self.jobs.insert(job, Job::Gather(Box::new(gather)));
        self.gather_round(job);
        job
    }

    /// Asks every replica for the next page, telling it what was delivered.
    fn gather_round(&mut self, job: JobId) {
        let Some(Job::Gather(mut gather)) = self.jobs.remove(&job) else {
            return;
        };
        gather.round += 1;
        let last = std::mem::take(&mut gather.last);
        for replica in gather.replicas.clone() {
            if replica == self.config.node_id {
                if gather.round == 1
                    && let Some((record, meta)) = self.records.entry(&gather.name)
                {
                    let held = VerifiedRecord::held(record.clone(), *meta);
                    gather.records.extend(held);
                }
                self.chats.remove_ids(&gather.name, &last);
                gather.chat.extend(self.chat_page(&gather.name, 0));
                continue;
            }
            let ask = Body::DirectoryLookup(DirectoryLookup {
                name: gather.name.clone(),
                take_pending_chat: true,
                page_chat: true,
                delivered_ids: last.clone(),
            });
            if let Some(rid) = self.request(replica, ask, job) {
                gather.waiting.insert(rid);
            }
        }
        self.jobs.insert(job, Job::Gather(gather));
        self.gather_check(job);
    }

    /// A replica's answer to a gather round (`None`: no answer in time).
    pub(crate) fn gather_answer(&mut self, job: JobId, rid: u64, reply: Option<Body>) {
        let mut malformed = 0;
        let (first_round, name) = match self.jobs.get(&job) {
            Some(Job::Gather(gather)) => (gather.round == 1, gather.name.clone()),
            _ => return,
        };
        let mut reply = reply;
        let newest = match &mut reply {
            Some(Body::DirectoryRecords(found)) if first_round => {
                self.newest_verified(&name, std::mem::take(&mut found.records))
            }
            _ => None,
        };
        if let Some(Job::Gather(gather)) = self.jobs.get_mut(&job) {
            gather.waiting.remove(&rid);
            gather.records.extend(newest);
            if let Some(Body::DirectoryRecords(found)) = reply {
                let name = &gather.name;
                for message in found.pending_chat {
                    if message.to != *name {
                        continue;
                    }
                    if natter_proto::chat::check_envelope(&message).is_err() {
                        malformed += 1;
                        continue;
                    }
                    gather.chat.push(message);
                }
            }
        }
        self.stats.chat_malformed += malformed;
        self.gather_check(job);
    }

    /// Ends a round once every replica answered: the first one settles the
    /// record; each one pushes the new chat to the session; a round that
    /// brought nothing ends the gather.
    fn gather_check(&mut self, job: JobId) {
        if !matches!(self.jobs.get(&job), Some(Job::Gather(g)) if g.waiting.is_empty()) {
            return;
        }
        let Some(Job::Gather(mut gather)) = self.jobs.remove(&job) else {
            return;
        };
        let session = match gather.purpose {
            GatherFor::Join { session } | GatherFor::Inbox { session, .. } => session,
        };
        if gather.round == 1 {
            let previous = std::mem::take(&mut gather.records)
                .into_iter()
                .max_by_key(VerifiedRecord::order);
            self.gathered_record(&gather.purpose, &gather.name, previous);
        }
        let chat = store::dedup_chat(std::mem::take(&mut gather.chat));
        let current = self.sessions.is_current(session, &gather.name);
        let fresh = chat
            .iter()
            .any(|m| !gather.delivered.contains(&m.message_id));
        // A round of only delivered ids gets one more round (which deletes
        // them), not more.
        let idle = !fresh && std::mem::replace(&mut gather.stale, !fresh);
        gather.stale = !fresh;
        if chat.is_empty() || idle || !current || gather.round >= MAX_ROUNDS {
            // Gone meanwhile: what was not confirmed stays on the replicas.
            self.finish(job, Done::Gathered(gather.purpose));
            return;
        }
        let acks = self
            .sessions
            .joined(session)
            .is_some_and(|j| j.acks.enabled);
        if !acks {
            for message in &chat {
                gather.last.push(message.message_id.clone());
                if gather.delivered.insert(message.message_id.clone())
                    && self.push_to_name(&gather.name, Body::ChatMessage(message.clone()))
                {
                    self.send_receipt(message);
                }
            }
            self.jobs.insert(job, Job::Gather(gather));
            self.gather_round(job);
            return;
        }
        // The session acknowledges chat: what it acknowledged before is
        // deleted next round; the rest is pushed (as far as the bound on
        // unacknowledged pushes allows) and waited for.
        let mut room = MAX_UNACKED.saturating_sub(self.unacked(session));
        for message in &chat {
            let id = &message.message_id;
            if gather.confirmed.contains(id) {
                gather.last.push(id.clone());
            } else if room > 0 && !gather.awaiting.contains_key(id) {
                room -= 1;
                gather.delivered.insert(id.clone());
                gather.awaiting.insert(id.clone(), message.from.clone());
                self.push_to_name(&gather.name, Body::ChatMessage(message.clone()));
            }
        }
        if gather.awaiting.is_empty() {
            if gather.last.is_empty() {
                // Nothing could be pushed (the bound): it stays stored.
                self.finish(job, Done::Gathered(gather.purpose));
                return;
            }
            self.jobs.insert(job, Job::Gather(gather));
            self.gather_round(job);
            return;
        }
        let due = self.now.mono + self.config.chat_ack_timeout;
        gather.ack_due = Some(due);
        self.jobs.insert(job, Job::Gather(gather));
        if let Some(joined) = self.sessions.joined_mut(session) {
            joined.acks.gathers.push(job);
        }
        self.set_timer(due, Timer::GatherAcks(job));
    }

    /// Pushes waiting for session `id`'s acknowledgement.
    fn unacked(&self, id: SessionId) -> usize {
        let Some(joined) = self.sessions.joined(id) else {
            return 0;
        };
        let gathered: usize = joined
            .acks
            .gathers
            .iter()
            .filter_map(|job| match self.jobs.get(job) {
                Some(Job::Gather(g)) => Some(g.awaiting.len()),
                _ => None,
            })
            .sum();
        joined.acks.live.len() + gathered
    }

    /// Session `id` acknowledged these pushed messages (`ChatDelivered`):
    /// live chat is receipted and let go; a gather whose round is all
    /// acknowledged goes on (its next round has the replicas delete them).
    /// Ids nothing waits for are ignored.
    pub(crate) fn chat_delivered(&mut self, id: SessionId, ids: &[Vec<u8>]) {
        let Some(joined) = self.sessions.joined_mut(id) else {
            return;
        };
        if !joined.acks.enabled {
            return;
        }
        let mut receipts = Vec::new();
        for message_id in ids {
            if let Some((message, _)) = joined.acks.live.remove(message_id) {
                receipts.push(message);
            }
        }
        let gathers = joined.acks.gathers.clone();
        let mut ready = Vec::new();
        for job in gathers {
            let Some(Job::Gather(gather)) = self.jobs.get_mut(&job) else {
                continue;
            };
            for message_id in ids {
                if let Some(from) = gather.awaiting.remove(message_id) {
                    gather.confirmed.insert(message_id.clone());
                    gather.last.push(message_id.clone());
                    receipts.push(ChatMessage {
                        message_id: message_id.clone(),
                        from,
                        to: gather.name.clone(),
                        ..Default::default()
                    });
                }
            }
            if gather.awaiting.is_empty() {
                gather.ack_due = None;
                ready.push(job);
            }
        }
        if let Some(joined) = self.sessions.joined_mut(id) {
            joined.acks.gathers.retain(|job| !ready.contains(job));
        }
        for message in &receipts {
            self.send_receipt(message);
        }
        for job in ready {
            self.gather_round(job);
        }
    }

    /// The acknowledgement deadline of a gather's round passed: the gather
    /// ends; what was acknowledged is deleted on the replicas, the rest
    /// stays there for the next join.
    pub(crate) fn gather_acks_due(&mut self, job: JobId) {
        let due = match self.jobs.get(&job) {
            Some(Job::Gather(g)) => g.ack_due,
            _ => None,
        };
        if due.is_none_or(|due| due > self.now.mono) {
            return;
        }
        self.stats.chat_unacked += 1;
        self.abandon_gather(job);
    }

    /// Ends a gather that waits for acknowledgements that will not come
    /// (in time, or at all: the session ended).
    fn abandon_gather(&mut self, job: JobId) {
        let Some(Job::Gather(mut gather)) = self.jobs.remove(&job) else {
            return;
        };
        let session = match gather.purpose {
            GatherFor::Join { session } | GatherFor::Inbox { session, .. } => session,
        };
        if let Some(joined) = self.sessions.joined_mut(session) {
            joined.acks.gathers.retain(|j| *j != job);
        }
        let last = std::mem::take(&mut gather.last);
        self.report_delivered(&gather.name, &gather.replicas, last);
        self.finish(job, Done::Gathered(gather.purpose));
    }

    /// Has the replicas of `name` delete `ids` (delivered and
    /// acknowledged), without a gather: their answers are not waited for
    /// (an older replica ignores the request; the user then gets the
    /// message again and drops it as a duplicate).
    fn report_delivered(&mut self, name: &str, replicas: &[crate::NodeId], ids: Vec<Vec<u8>>) {
        if ids.is_empty() {
            return;
        }
        let nobody = self.fresh_id();
        for replica in replicas {
            if *replica == self.config.node_id {
                self.chats.remove_ids(name, &ids);
                continue;
            }
            let ask = Body::DirectoryLookup(DirectoryLookup {
                name: name.to_owned(),
                take_pending_chat: false,
                page_chat: true,
                delivered_ids: ids.clone(),
            });
            self.request(*replica, ask, nobody);
        }
    }

    /// Live chat for `to`: `None` when `to`'s session does not acknowledge
    /// chat (the caller pushes it as before); `Some(true)` when pushed and
    /// held until acknowledged; `Some(false)` when the session has too
    /// many pushes unacknowledged (not delivered: the sender's supernode
    /// stores it).
    pub(crate) fn push_acked_chat(&mut self, to: &str, message: &ChatMessage) -> Option<bool> {
        let (id, joined) = self.sessions.of_name(to)?;
        if !joined.acks.enabled {
            return None;
        }
        if joined.acks.live.contains_key(&message.message_id) {
            // Already held (a copy routed twice): one push is enough.
            return Some(true);
        }
        if self.unacked(id) >= MAX_UNACKED {
            return Some(false);
        }
        let due = self.now.mono + self.config.chat_ack_timeout;
        if let Some(joined) = self.sessions.joined_mut(id) {
            joined
                .acks
                .live
                .insert(message.message_id.clone(), (message.clone(), due));
        }
        self.push_to_name(to, Body::ChatMessage(message.clone()));
        self.set_timer(due, Timer::LiveAck(id, message.message_id.clone()));
        Some(true)
    }

    /// A live message pushed to session `id` is due: if still not
    /// acknowledged, it is stored on the recipient's replicas.
    pub(crate) fn live_ack_due(&mut self, id: SessionId, message_id: &[u8]) {
        let now = self.now.mono;
        let Some(joined) = self.sessions.joined_mut(id) else {
            return;
        };
        if joined
            .acks
            .live
            .get(message_id)
            .is_none_or(|(_, due)| *due > now)
        {
            return;
        }
        if let Some((message, _)) = joined.acks.live.remove(message_id) {
            self.stats.chat_unacked += 1;
            self.store_chat(None, message);
        }
    }

    /// A joined session ended with these acknowledgements owed: its
    /// gathers end (deleting only what was acknowledged) and its
    /// unacknowledged live chat is stored on the replicas.
    pub(crate) fn release_acks(&mut self, acks: ChatAcks) {
        for job in acks.gathers {
            self.abandon_gather(job);
        }
        let mut live: Vec<ChatMessage> = acks.live.into_values().map(|(m, _)| m).collect();
        live.sort_by(|a, b| a.message_id.cmp(&b.message_id));
        for message in live {
            self.stats.chat_unacked += 1;
            self.store_chat(None, message);
        }
    }

    /// Removes session `id` from the table without the goodbye of a
    /// session that ended (it was replaced); what it owed is released.
    pub(crate) fn forget_session(&mut self, id: SessionId) {
        let Some(session) = self.sessions.all.remove(&id) else {
            return;
        };
        if let Some(mac) = session.ticket {
            self.sessions.by_ticket.remove(&mac);
        }
        if let super::sessions::Phase::Joined(mut joined) = session.phase {
            self.release_acks(*std::mem::take(&mut joined.acks));
        }
    }
}
