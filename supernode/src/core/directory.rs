//! The directory: user records on their HRW replicas, presence updates,
//! lookups across replicas (pending state with a timeout per replica), and
//! re-homing when the live set changes (stored chat: `mailbox`).

use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    DirectoryLookup, DirectoryRecords, DirectoryStore, Envelope, PresenceUpdate, SupernodeList,
    UserRecord,
};

use super::interface::Output;
use super::jobs::{Done, Job, JobId, Lookup, LookupFor};
use super::state::{Node, Timer};
use super::statements::{self, VerifiedRecord};
use crate::store::RecordMeta;
use crate::{NodeId, close, hrw};

/// The longest a lookup waits for a node's first link
/// ([`Node::start_lookup`]); a client's request waits longer.
pub(crate) const LOOKUP_PARK: std::time::Duration = std::time::Duration::from_secs(3);

impl Node {
    fn replicas_of(&self, name: &str) -> Vec<NodeId> {
        hrw::replicas(name, &self.membership.live_ids(), self.config.replicas)
    }

    /// Stores the `record` of a user joined here (`meta` from its session's
    /// statement) on its replicas (locally when this node is one). With
    /// `broadcast`, also announces the status to every linked supernode and
    /// to local subscribers.
    pub(crate) fn publish(&mut self, record: &UserRecord, meta: RecordMeta, broadcast: bool) {
        for replica in self.replicas_of(&record.name) {
            if replica == self.config.node_id {
                if let Err(e) = self.records.put(record.clone(), meta, true) {
                    self.stats.records_stale += 1;
                    tracing::debug!(user = %record.name, error = %e, "own record not stored");
                }
            } else {
                let store = Body::DirectoryStore(DirectoryStore {
                    records: vec![record.clone()],
                    pending_chat: Vec::new(),
                });
                self.send_link(&replica, Envelope::new(0, store));
            }
        }
        if broadcast {
            let update = PresenceUpdate {
                name: record.name.clone(),
                status: record.status,
                last_seen: record.last_seen,
            };
            let mut peers: Vec<NodeId> = self.links.by_peer.keys().copied().collect();
            peers.sort_unstable();
            for peer in peers {
                self.send_link(
                    &peer,
                    Envelope::new(0, Body::PresenceUpdate(update.clone())),
                );
            }
            self.notify_subscribers(&update);
        }
    }

    /// Pushes `update` to the local sessions subscribed to its name.
    pub(crate) fn notify_subscribers(&mut self, update: &PresenceUpdate) {
        let mut to: Vec<u64> = self
            .sessions
            .by_name
            .values()
            .copied()
            .filter(|id| {
                self.sessions
                    .joined(*id)
                    .is_some_and(|j| j.subscriptions.contains(&update.name))
            })
            .collect();
        to.sort_unstable();
        for id in to {
            self.send_session(id, 0, Body::PresenceUpdate(update.clone()));
        }
    }

    /// Publishes the status of the local session of `name`.
    pub(crate) fn publish_session(&mut self, name: &str, broadcast: bool) {
        if let Some((_, joined)) = self.sessions.of_name(name) {
            let record = self.local_record(name, joined);
            let meta = joined.signed.meta;
            self.publish(&record, meta, broadcast);
        }
    }

    /// Reacts to a change of the live set: tells the clients, moves the
    /// records and chat whose replica set changed, and re-publishes the
    /// records of local users to their (new) replicas.
    pub(crate) fn on_membership_change(&mut self) {
        let live = self.membership.live_ids();
        let old = std::mem::replace(&mut self.last_live, live.clone());
        if old == live {
            return;
        }
        tracing::info!(live = live.len(), "membership changed");
        if live.len() > 1 {
            for job in self.parked_lookups.clone() {
                self.resume_lookup(job);
            }
        }
        let mut joined: Vec<u64> = self.sessions.by_name.values().copied().collect();
        joined.sort_unstable();
        if !joined.is_empty() {
            let list = self.host_cache_envelope(|entries| {
                Envelope::new(0, Body::SupernodeList(SupernodeList { entries }))
            });
            for id in joined {
                if let Some(body) = list.body.clone() {
                    self.send_session(id, 0, body);
                }
            }
        }
        let me = self.config.node_id;
        let k = self.config.replicas;
        let mut names = self.records.names();
        names.sort();
        for name in names {
            let before = hrw::replicas(&name, &old, k);
            let after = hrw::replicas(&name, &live, k);
            if before == after {
                continue;
            }
            let Some(record) = self.records.get(&name).cloned() else {
                continue;
            };
            for replica in after.iter().filter(|r| **r != me) {
                let store = Body::DirectoryStore(DirectoryStore {
                    records: vec![record.clone()],
                    pending_chat: Vec::new(),
                });
                self.send_link(replica, Envelope::new(0, store));
            }
            if !after.contains(&me) {
                self.records.remove(&name);
            }
        }
        self.chat_replicas_changed(&old, &live);
        let mut names: Vec<String> = self.sessions.by_name.keys().cloned().collect();
        names.sort();
        for name in names {
            self.publish_session(&name, false);
        }
    }

    /// A `DirectoryStore` from `peer`: records (each verified, stored when
    /// newer; a newer statement from elsewhere replaces the local session)
    /// and chat to hold. Returns the answer to a request: `Ack`, or
    /// `MailboxFull` when chat was refused.
    pub(crate) fn on_directory_store(&mut self, peer: &NodeId, store: DirectoryStore) -> Body {
        for record in store.records {
            if let Some(verified) = self.verify_from_peer(&record) {
                self.accept_record(verified, peer);
            }
        }
        self.store_from_peer(store.pending_chat)
    }

    /// Verifies a record a peer sent; a refusal is counted and dropped.
    pub(crate) fn verify_from_peer(&mut self, record: &UserRecord) -> Option<VerifiedRecord> {
        match statements::verify_record(record, &self.config.login_key, self.now.unix_ms) {
            Ok(verified) => Some(verified),
            Err(e) => {
                self.stats.records_refused += 1;
                if e.is_future() {
                    self.stats.records_from_future += 1;
                }
                tracing::debug!(user = %record.name, error = %e, "record refused");
                None
            }
        }
    }

    /// A verified record from `peer`: a local session of the user ends when
    /// the record's statement, naming another home, is newer than the
    /// session's own (the user joined elsewhere since); the record is
    /// stored when newer than the one held (a presence change only from
    /// its home, see [`crate::store::RecordStore::put`]).
    fn accept_record(&mut self, verified: VerifiedRecord, peer: &NodeId) {
        let me = self.config.node_id;
        let name = verified.record().name.clone();
        if let Some((id, joined)) = self.sessions.of_name(&name)
            && verified.home() != me
            && verified.online()
            && verified.meta().joined_at > joined.signed.meta.joined_at
        {
            tracing::info!(user = %name, "session replaced by a join elsewhere");
            self.sessions.by_name.remove(&name);
            self.forget_session(id);
            self.emit(Output::CloseSession(
                id,
                close::REPLACED,
                "joined elsewhere",
            ));
        }
        let from_home = verified.home() == *peer;
        let (record, meta) = verified.into_parts();
        if let Err(e) = self.records.put(record, meta, from_home) {
            self.stats.records_stale += 1;
            tracing::debug!(user = %name, error = %e, "record not newer, kept the held one");
        }
    }

    /// A `DirectoryLookup` from a peer: the record held, or the live one of
    /// a local session unless the record held has a later statement (the
    /// user joined elsewhere since), and the chat stored when asked to hand
    /// it over.
    pub(crate) fn on_directory_lookup(&mut self, lookup: &DirectoryLookup) -> DirectoryRecords {
        let held = self.records.entry(&lookup.name);
        let local = self.sessions.of_name(&lookup.name);
        let record = match (held, local) {
            (Some((record, meta)), Some((_, joined)))
                if meta.joined_at > joined.signed.meta.joined_at =>
            {
                Some(record.clone())
            }
            (_, Some((_, joined))) => Some(self.local_record(&lookup.name, joined)),
            (held, None) => held.map(|(record, _)| record.clone()),
        };
        let records: Vec<UserRecord> = record.into_iter().collect();
        let pending_chat = self.chat_for_lookup(lookup);
        DirectoryRecords {
            records,
            pending_chat,
        }
    }

    /// Looks `name` up: a local session answers directly, otherwise the
    /// replicas are asked in HRW order and the first record found wins (its
    /// status offline when its home is not live).
    ///
    /// A node that has peers to dial but no link yet (just started, or just
    /// promoted) would be the only replica it knows and answer "not found"
    /// for users who are online elsewhere: it parks the lookup until its
    /// first link comes up, or [`LOOKUP_PARK`] at most.
    pub(crate) fn start_lookup(&mut self, name: &str, purpose: LookupFor) -> JobId {
        let job = self.fresh_id();
        if let Some((_, joined)) = self.sessions.of_name(name) {
            let record = self.local_record(name, joined);
            self.finish(job, Done::Lookup(purpose, Some(record)));
            return job;
        }
        let me = [self.config.addr, self.config.local_addr];
        let alone = self.membership.live_ids().len() <= 1
            && self.config.peers.iter().any(|p| !me.contains(p));
        let lookup = Lookup {
            name: name.to_owned(),
            replicas: if alone {
                Default::default()
            } else {
                self.replicas_of(name).into()
            },
        };
        self.jobs.insert(job, Job::Lookup { lookup, purpose });
        if alone {
            self.stats.lookups_parked += 1;
            self.parked_lookups.push(job);
            self.set_timer(self.now.mono + LOOKUP_PARK, Timer::ParkedLookup(job));
        } else {
            self.advance_lookup(job);
        }
        job
    }

    /// Goes on with a parked lookup (the first link came up, or it waited
    /// [`LOOKUP_PARK`]): asks the replicas of the membership known now.
    pub(crate) fn resume_lookup(&mut self, job: JobId) {
        let Some(at) = self.parked_lookups.iter().position(|j| *j == job) else {
            return;
        };
        self.parked_lookups.swap_remove(at);
        let replicas = match self.jobs.get(&job) {
            Some(Job::Lookup { lookup, .. }) => self.replicas_of(&lookup.name),
            _ => return,
        };
        if let Some(Job::Lookup { lookup, .. }) = self.jobs.get_mut(&job) {
            lookup.replicas = replicas.into();
        }
        self.advance_lookup(job);
    }

    /// Asks the next replica of a lookup, or finishes it.
    fn advance_lookup(&mut self, job: JobId) {
        let Some(Job::Lookup {
            mut lookup,
            purpose,
        }) = self.jobs.remove(&job)
        else {
            return;
        };
        while let Some(replica) = lookup.replicas.pop_front() {
            if replica == self.config.node_id {
                if let Some((record, meta)) = self.records.entry(&lookup.name) {
                    let (record, meta) = (record.clone(), *meta);
                    let record = self.effective(record, &meta);
                    self.finish(job, Done::Lookup(purpose, Some(record)));
                    return;
                }
                continue;
            }
            let ask = Body::DirectoryLookup(DirectoryLookup {
                name: lookup.name.clone(),
                ..DirectoryLookup::default()
            });
            if self.request(replica, ask, job).is_some() {
                self.jobs.insert(job, Job::Lookup { lookup, purpose });
                return;
            }
        }
        self.finish(job, Done::Lookup(purpose, None));
    }

    /// A replica's answer to a lookup (`None`: no answer in time).
    pub(crate) fn lookup_answer(&mut self, job: JobId, reply: Option<Body>) {
        let name = match self.jobs.get(&job) {
            Some(Job::Lookup { lookup, .. }) => lookup.name.clone(),
            _ => return,
        };
        // Only a record that verifies counts; a replica answering with
        // anything else is as good as one that holds nothing.
        let found = match reply {
            Some(Body::DirectoryRecords(found)) => self.newest_verified(&name, found.records),
            _ => None,
        };
        if let Some(verified) = found
            && let Some(Job::Lookup { purpose, .. }) = self.jobs.remove(&job)
        {
            let (record, meta) = verified.into_parts();
            let record = self.effective(record, &meta);
            self.finish(job, Done::Lookup(purpose, Some(record)));
            return;
        }
        self.advance_lookup(job);
    }

    /// The newest of the records of `name` a peer sent that verify.
    pub(crate) fn newest_verified(
        &mut self,
        name: &str,
        records: Vec<UserRecord>,
    ) -> Option<VerifiedRecord> {
        records
            .into_iter()
            .filter(|r| r.name == name)
            .filter_map(|r| self.verify_from_peer(&r))
            .max_by_key(VerifiedRecord::order)
    }

    /// Drops expired records and chat (every 60 ticks).
    pub(crate) fn expire_directory(&mut self) {
        let live = self.membership.live_ids();
        self.records.expire(self.now.unix_ms, |id| {
            crate::node_id(id).is_some_and(|id| live.contains(&id))
        });
        self.chats.expire(self.now.unix_ms);
    }
}
