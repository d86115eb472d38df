//! The directory replica's data (sans-IO: times are unix milliseconds passed
//! in by the caller): user records and chat waiting for offline users.

use std::collections::{HashMap, HashSet, VecDeque};

use natter_proto::messages::{ChatMessage, PresenceStatus, UserRecord};

/// How long records of offline users are kept: 72 hours.
pub const OFFLINE_RECORD_TTL_MS: i64 = 72 * 3600 * 1000;
/// How long undelivered chat is kept: 30 days.
pub const PENDING_CHAT_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// Most chat messages stored for one user; the oldest are dropped beyond it.
pub const MAX_PENDING_PER_USER: usize = 1000;

/// The status of `record` once its home supernode's liveness is taken into
/// account: a user whose home is not live is offline.
pub fn effective_status(
    record: &UserRecord,
    home_is_live: impl Fn(&[u8]) -> bool,
) -> PresenceStatus {
    let status = PresenceStatus::try_from(record.status).unwrap_or(PresenceStatus::Offline);
    if status != PresenceStatus::Offline && !home_is_live(&record.home_node_id) {
        PresenceStatus::Offline
    } else {
        status
    }
}

fn is_online(record: &UserRecord) -> bool {
    record.status != PresenceStatus::Offline as i32
}

/// User records held by this replica.
#[derive(Debug, Default, Clone)]
pub struct RecordStore {
    records: HashMap<String, UserRecord>,
}

impl RecordStore {
    /// Stores `record` unless the one held is newer. Newer means a later
    /// `last_seen`, except that an *offline* record from one home never
    /// replaces an *online* record from another: that is the end of an old
    /// session after the user joined elsewhere. Returns whether it was stored.
    pub fn put(&mut self, record: UserRecord) -> bool {
        if let Some(held) = self.records.get(&record.name) {
            if record.last_seen < held.last_seen {
                return false;
            }
            if !is_online(&record) && is_online(held) && record.home_node_id != held.home_node_id {
                return false;
            }
        }
        self.records.insert(record.name.clone(), record);
        true
    }

    /// The record of `name`.
    pub fn get(&self, name: &str) -> Option<&UserRecord> {
        self.records.get(name)
    }

    /// Removes and returns the record of `name`.
    pub fn remove(&mut self, name: &str) -> Option<UserRecord> {
        self.records.remove(name)
    }

    /// Names of all records held.
    pub fn names(&self) -> Vec<String> {
        self.records.keys().cloned().collect()
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Drops records of users offline (by [`effective_status`]) and not seen
    /// for [`OFFLINE_RECORD_TTL_MS`]. Returns how many were dropped.
    pub fn expire(&mut self, now_ms: i64, home_is_live: impl Fn(&[u8]) -> bool) -> usize {
        let before = self.records.len();
        self.records.retain(|_, r| {
            effective_status(r, &home_is_live) != PresenceStatus::Offline
                || now_ms.saturating_sub(r.last_seen) < OFFLINE_RECORD_TTL_MS
        });
        before - self.records.len()
    }
}

/// Chat waiting for offline recipients, per recipient, deduplicated by
/// message id and bounded by [`MAX_PENDING_PER_USER`].
#[derive(Debug, Default, Clone)]
pub struct ChatStore {
    per_user: HashMap<String, VecDeque<(ChatMessage, i64)>>,
}

impl ChatStore {
    /// Stores `message` for `message.to` at `now_ms`. Returns false for a
    /// duplicate message id.
    pub fn add(&mut self, message: ChatMessage, now_ms: i64) -> bool {
        let queue = self.per_user.entry(message.to.clone()).or_default();
        if queue
            .iter()
            .any(|(m, _)| m.message_id == message.message_id)
        {
            return false;
        }
        if queue.len() >= MAX_PENDING_PER_USER {
            queue.pop_front();
        }
        queue.push_back((message, now_ms));
        true
    }

    /// Removes and returns everything stored for `name`, oldest first.
    pub fn take(&mut self, name: &str) -> Vec<ChatMessage> {
        self.per_user
            .remove(name)
            .map(|q| q.into_iter().map(|(m, _)| m).collect())
            .unwrap_or_default()
    }

    /// Recipients with stored chat.
    pub fn names(&self) -> Vec<String> {
        self.per_user.keys().cloned().collect()
    }

    /// Messages stored for `name`.
    pub fn count(&self, name: &str) -> usize {
        self.per_user.get(name).map_or(0, VecDeque::len)
    }

    /// Drops messages older than [`PENDING_CHAT_TTL_MS`].
    pub fn expire(&mut self, now_ms: i64) {
        for queue in self.per_user.values_mut() {
            queue.retain(|(_, at)| now_ms.saturating_sub(*at) < PENDING_CHAT_TTL_MS);
        }
        self.per_user.retain(|_, q| !q.is_empty());
    }
}

/// Merges chat from several replicas, dropping repeated message ids and
/// keeping the order of first appearance.
pub fn dedup_chat(messages: impl IntoIterator<Item = ChatMessage>) -> Vec<ChatMessage> {
    let mut seen = HashSet::new();
    let mut out: Vec<ChatMessage> = messages
        .into_iter()
        .filter(|m| seen.insert(m.message_id.clone()))
        .collect();
    out.sort_by_key(|m| m.sent_at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600 * 1000;

    fn record(name: &str, status: PresenceStatus, last_seen: i64, home: u8) -> UserRecord {
        UserRecord {
            name: name.into(),
            status: status as i32,
            last_seen,
            home_node_id: vec![home; 16],
            home_addr: None,
        }
    }

    fn chat(id: u8, to: &str, sent_at: i64) -> ChatMessage {
        ChatMessage {
            message_id: vec![id; 16],
            from: "alice".into(),
            to: to.into(),
            text: format!("m{id}"),
            sent_at,
        }
    }

    #[test]
    fn newer_records_win_but_stale_session_ends_do_not() {
        let mut s = RecordStore::default();
        assert!(s.put(record("bob", PresenceStatus::Online, 100, 1)));
        assert!(!s.put(record("bob", PresenceStatus::Away, 50, 1)), "older");
        // Bob moved to node 2, then node 1 noticed his old session end.
        assert!(s.put(record("bob", PresenceStatus::Online, 200, 2)));
        assert!(!s.put(record("bob", PresenceStatus::Offline, 300, 1)));
        assert_eq!(
            s.get("bob").map(|r| r.status),
            Some(PresenceStatus::Online as i32)
        );
        // Node 2 reports him offline.
        assert!(s.put(record("bob", PresenceStatus::Offline, 400, 2)));
        assert!(s.put(record("bob", PresenceStatus::Online, 500, 1)));
    }

    #[test]
    fn offline_records_expire_after_72_hours() {
        let mut s = RecordStore::default();
        s.put(record("old", PresenceStatus::Offline, 0, 1));
        s.put(record("recent", PresenceStatus::Offline, 10 * H, 1));
        s.put(record("online", PresenceStatus::Online, 0, 1));
        s.put(record("orphan", PresenceStatus::Online, 0, 9));
        let live = |id: &[u8]| id == [1u8; 16];
        assert_eq!(s.expire(71 * H, live), 0);
        // At 73 h "old" and "orphan" (home node 9 is gone) go, the online user stays.
        assert_eq!(s.expire(73 * H, live), 2);
        let mut names = s.names();
        names.sort();
        assert_eq!(names, vec!["online", "recent"]);
        assert_eq!(s.expire(83 * H, live), 1);
    }

    #[test]
    fn effective_status_follows_home_liveness() {
        let r = record("bob", PresenceStatus::Away, 0, 3);
        assert_eq!(effective_status(&r, |_| true), PresenceStatus::Away);
        assert_eq!(effective_status(&r, |_| false), PresenceStatus::Offline);
    }

    #[test]
    fn pending_chat_is_deduplicated_bounded_taken_and_expired() {
        let mut c = ChatStore::default();
        assert!(c.add(chat(1, "bob", 1), 0));
        assert!(!c.add(chat(1, "bob", 1), 0), "duplicate id");
        assert!(c.add(chat(2, "bob", 2), 0));
        assert_eq!(c.count("bob"), 2);
        let taken = c.take("bob");
        assert_eq!(taken.len(), 2);
        assert!(c.take("bob").is_empty());

        for i in 0..(MAX_PENDING_PER_USER + 5) {
            let mut m = chat(0, "carol", i as i64);
            m.message_id = (i as u32).to_be_bytes().to_vec();
            c.add(m, 0);
        }
        assert_eq!(c.count("carol"), MAX_PENDING_PER_USER);
        c.add(chat(7, "dave", 0), 31 * 24 * H);
        c.expire(31 * 24 * H);
        assert_eq!(c.count("carol"), 0);
        assert_eq!(c.count("dave"), 1);
    }

    #[test]
    fn dedup_merges_replica_answers() {
        let merged = dedup_chat(vec![chat(2, "b", 20), chat(1, "b", 10), chat(2, "b", 20)]);
        assert_eq!(
            merged.iter().map(|m| m.sent_at).collect::<Vec<_>>(),
            vec![10, 20]
        );
    }
}
