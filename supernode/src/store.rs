//! The directory replica's data (sans-IO: times are unix milliseconds passed
//! in by the caller): user records and chat waiting for offline users.

use std::collections::{HashMap, HashSet, VecDeque};

use natter_proto::messages::{ChatMessage, PresenceStatus, UserRecord};
use prost::Message;

/// How long records of offline users are kept: 72 hours.
pub const OFFLINE_RECORD_TTL_MS: i64 = 72 * 3600 * 1000;
/// How long undelivered chat is kept: 30 days.
pub const PENDING_CHAT_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// Most chat messages stored for one user; more are refused.
pub const MAX_PENDING_PER_USER: usize = 1000;

/// How long a record outlives its user's certificate, as last-seen
/// information only (never online, never a home to route to): 30 days.
/// Offline records go after [`OFFLINE_RECORD_TTL_MS`] anyway.
pub const RECORD_OUTLIVES_CERTIFICATE_MS: i64 = 30 * 24 * 3600 * 1000;

/// What a verified record is ordered and aged by, taken from its signed
/// parts (the join statement and the certificate), never from its
/// unsigned fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// The statement's `joined_at` (unix ms, the user's clock).
    pub joined_at: i64,
    /// The certificate's `not_after`, in unix ms.
    pub not_after_ms: i64,
}

/// Why [`RecordStore::put`] kept the record it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the record held has a newer join statement")]
    OlderStatement,
    #[error("another join statement of the same time is held")]
    OtherStatement,
    #[error("a presence change comes only from the record's home supernode")]
    NotFromHome,
    #[error("the record held was seen later")]
    OlderLastSeen,
}

/// The status of `record` at `now_ms` once its home supernode's liveness
/// and its certificate are taken into account: a user whose home is not
/// live, or whose certificate expired, is offline.
pub fn effective_status(
    record: &UserRecord,
    meta: &RecordMeta,
    now_ms: i64,
    home_is_live: impl Fn(&[u8]) -> bool,
) -> PresenceStatus {
    let status = PresenceStatus::try_from(record.status).unwrap_or(PresenceStatus::Offline);
    if status != PresenceStatus::Offline
        && (!home_is_live(&record.home_node_id) || now_ms >= meta.not_after_ms)
    {
        PresenceStatus::Offline
    } else {
        status
    }
}

/// User records held by this replica, each with its [`RecordMeta`].
#[derive(Debug, Default, Clone)]
pub struct RecordStore {
    records: HashMap<String, (UserRecord, RecordMeta)>,
}

impl RecordStore {
    /// Stores `record` (verified, with the `meta` of its signed parts)
    /// unless the one held is newer. A later join statement always wins and
    /// an earlier one never does; with the same statement (a presence change
    /// or the end of the session) the record must come `from_home` (from the
    /// supernode the statement names, or this node for its own users) and
    /// be seen no earlier than the one held. So the end of an old session
    /// never overwrites a join elsewhere, and no peer but the home changes
    /// what a statement's record says.
    pub fn put(
        &mut self,
        record: UserRecord,
        meta: RecordMeta,
        from_home: bool,
    ) -> Result<(), Refused> {
        if let Some((held, held_meta)) = self.records.get(&record.name) {
            if meta.joined_at < held_meta.joined_at {
                return Err(Refused::OlderStatement);
            }
            if meta.joined_at == held_meta.joined_at {
                if record.statement != held.statement {
                    return Err(Refused::OtherStatement);
                }
                if !from_home {
                    return Err(Refused::NotFromHome);
                }
                if record.last_seen < held.last_seen {
                    return Err(Refused::OlderLastSeen);
                }
            }
        }
        self.records.insert(record.name.clone(), (record, meta));
        Ok(())
    }

    /// The record of `name`.
    pub fn get(&self, name: &str) -> Option<&UserRecord> {
        self.records.get(name).map(|(r, _)| r)
    }

    /// The record of `name` with its meta.
    pub fn entry(&self, name: &str) -> Option<(&UserRecord, &RecordMeta)> {
        self.records.get(name).map(|(r, m)| (r, m))
    }

    /// Removes and returns the record of `name`.
    pub fn remove(&mut self, name: &str) -> Option<UserRecord> {
        self.records.remove(name).map(|(r, _)| r)
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
    /// for [`OFFLINE_RECORD_TTL_MS`], and records whose certificate expired
    /// more than [`RECORD_OUTLIVES_CERTIFICATE_MS`] ago. Returns how many
    /// were dropped.
    pub fn expire(&mut self, now_ms: i64, home_is_live: impl Fn(&[u8]) -> bool) -> usize {
        let before = self.records.len();
        self.records.retain(|_, (r, meta)| {
            let offline =
                effective_status(r, meta, now_ms, &home_is_live) == PresenceStatus::Offline;
            let outlived =
                now_ms.saturating_sub(meta.not_after_ms) >= RECORD_OUTLIVES_CERTIFICATE_MS;
            !outlived && (!offline || now_ms.saturating_sub(r.last_seen) < OFFLINE_RECORD_TTL_MS)
        });
        before - self.records.len()
    }
}

/// Byte caps on stored chat, counted as the messages' encoded length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatLimits {
    /// Most bytes stored for one recipient.
    pub per_recipient: usize,
    /// Most bytes stored from one sender, over all recipients.
    pub per_sender: usize,
    /// Most bytes stored on this supernode.
    pub total: usize,
}

impl Default for ChatLimits {
    /// 1 MiB per recipient (64 messages of 16 KiB, or [`MAX_PENDING_PER_USER`]
    /// short ones), 4 MiB per sender, 256 MiB per supernode.
    fn default() -> Self {
        Self {
            per_recipient: 1024 * 1024,
            per_sender: 4 * 1024 * 1024,
            total: 256 * 1024 * 1024,
        }
    }
}

/// Why a message was not stored: a cap of [`ChatLimits`] (or
/// [`MAX_PENDING_PER_USER`]) would be exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MailboxFull {
    #[error("the recipient's mailbox is full")]
    Recipient,
    #[error("the sender has too much chat stored")]
    Sender,
    #[error("this supernode's chat storage is full")]
    Node,
}

#[derive(Debug, Clone)]
struct Stored {
    message: ChatMessage,
    at: i64,
    bytes: usize,
}

/// Chat waiting for offline recipients, per recipient, deduplicated by
/// message id and bounded by [`ChatLimits`] and [`MAX_PENDING_PER_USER`].
/// Nothing is dropped to make room: a message over a cap is refused.
/// Messages leave only by [`ChatStore::remove_ids`] (delivered, or handed
/// to another replica) or by expiry.
#[derive(Debug, Default, Clone)]
pub struct ChatStore {
    limits: ChatLimits,
    per_user: HashMap<String, VecDeque<Stored>>,
    per_user_bytes: HashMap<String, usize>,
    per_sender_bytes: HashMap<String, usize>,
    total: usize,
}

fn sub(map: &mut HashMap<String, usize>, key: &str, bytes: usize) {
    if let Some(held) = map.get_mut(key) {
        *held = held.saturating_sub(bytes);
        if *held == 0 {
            map.remove(key);
        }
    }
}

impl ChatStore {
    /// An empty store with these caps.
    pub fn new(limits: ChatLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Stores `message` for `message.to` at `now_ms`. Returns false for a
    /// duplicate message id (already held), an error over a cap.
    pub fn add(&mut self, message: ChatMessage, now_ms: i64) -> Result<bool, MailboxFull> {
        let queue = self.per_user.get(&message.to);
        if queue.is_some_and(|q| q.iter().any(|s| s.message.message_id == message.message_id)) {
            return Ok(false);
        }
        let bytes = message.encoded_len();
        let held = |map: &HashMap<String, usize>, key: &str| map.get(key).copied().unwrap_or(0);
        if queue.map_or(0, VecDeque::len) >= MAX_PENDING_PER_USER
            || held(&self.per_user_bytes, &message.to) + bytes > self.limits.per_recipient
        {
            return Err(MailboxFull::Recipient);
        }
        if held(&self.per_sender_bytes, &message.from) + bytes > self.limits.per_sender {
            return Err(MailboxFull::Sender);
        }
        if self.total + bytes > self.limits.total {
            return Err(MailboxFull::Node);
        }
        *self.per_user_bytes.entry(message.to.clone()).or_default() += bytes;
        *self
            .per_sender_bytes
            .entry(message.from.clone())
            .or_default() += bytes;
        self.total += bytes;
        self.per_user
            .entry(message.to.clone())
            .or_default()
            .push_back(Stored {
                message,
                at: now_ms,
                bytes,
            });
        Ok(true)
    }

    /// The messages stored for `name`, oldest first (not removed).
    pub fn messages(&self, name: &str) -> impl Iterator<Item = &ChatMessage> {
        self.per_user
            .get(name)
            .into_iter()
            .flat_map(|q| q.iter().map(|s| &s.message))
    }

    /// Removes the messages for `name` with these ids; returns how many.
    pub fn remove_ids(&mut self, name: &str, ids: &[Vec<u8>]) -> usize {
        let Some(queue) = self.per_user.get_mut(name) else {
            return 0;
        };
        let mut removed = Vec::new();
        queue.retain(|s| {
            let gone = ids.contains(&s.message.message_id);
            if gone {
                removed.push((s.message.from.clone(), s.bytes));
            }
            !gone
        });
        if queue.is_empty() {
            self.per_user.remove(name);
        }
        for (from, bytes) in &removed {
            sub(&mut self.per_user_bytes, name, *bytes);
            sub(&mut self.per_sender_bytes, from, *bytes);
            self.total = self.total.saturating_sub(*bytes);
        }
        removed.len()
    }

    /// Recipients with stored chat.
    pub fn names(&self) -> Vec<String> {
        self.per_user.keys().cloned().collect()
    }

    /// Messages stored for `name`.
    pub fn count(&self, name: &str) -> usize {
        self.per_user.get(name).map_or(0, VecDeque::len)
    }

    /// Bytes stored on this node.
    pub fn total_bytes(&self) -> usize {
        self.total
    }

    /// Drops messages older than [`PENDING_CHAT_TTL_MS`].
    pub fn expire(&mut self, now_ms: i64) {
        let mut expired: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for (name, queue) in &self.per_user {
            let ids: Vec<Vec<u8>> = queue
                .iter()
                .filter(|s| now_ms.saturating_sub(s.at) >= PENDING_CHAT_TTL_MS)
                .map(|s| s.message.message_id.clone())
                .collect();
            if !ids.is_empty() {
                expired.push((name.clone(), ids));
            }
        }
        for (name, ids) in expired {
            self.remove_ids(&name, &ids);
        }
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
            // Stands for the statement of a join at `home`.
            statement: vec![home],
            ..Default::default()
        }
    }

    fn chat(id: u8, to: &str, sent_at: i64) -> ChatMessage {
        ChatMessage {
            message_id: vec![id; 16],
            from: "alice".into(),
            to: to.into(),
            text: format!("m{id}"),
            sent_at,
            ..Default::default()
        }
    }

    /// Meta of a statement made at `joined_at`, certificate valid for ever.
    fn meta(joined_at: i64) -> RecordMeta {
        RecordMeta {
            joined_at,
            not_after_ms: i64::MAX,
        }
    }

    #[test]
    fn later_statements_win_and_only_the_home_changes_a_statement_record() {
        let mut s = RecordStore::default();
        assert_eq!(
            s.put(
                record("bob", PresenceStatus::Online, 100, 1),
                meta(10),
                true
            ),
            Ok(())
        );
        let away = record("bob", PresenceStatus::Away, 50, 1);
        assert_eq!(
            s.put(away.clone(), meta(10), true),
            Err(Refused::OlderLastSeen)
        );
        let mut away = away;
        away.last_seen = 150;
        assert_eq!(
            s.put(away.clone(), meta(10), false),
            Err(Refused::NotFromHome),
            "a presence change from a peer that is not the home"
        );
        assert_eq!(s.put(away, meta(10), true), Ok(()));
        // Bob joined node 2 later: any peer may bring that statement.
        assert_eq!(
            s.put(
                record("bob", PresenceStatus::Online, 200, 2),
                meta(20),
                false
            ),
            Ok(())
        );
        // Node 1 noticed his old session end, with a far later last_seen.
        assert_eq!(
            s.put(
                record("bob", PresenceStatus::Offline, 9000, 1),
                meta(10),
                true
            ),
            Err(Refused::OlderStatement)
        );
        // Another statement claiming the same time does not replace it.
        assert_eq!(
            s.put(
                record("bob", PresenceStatus::Offline, 300, 3),
                meta(20),
                true
            ),
            Err(Refused::OtherStatement)
        );
        assert_eq!(
            s.get("bob").map(|r| (r.status, r.home_node_id[0])),
            Some((PresenceStatus::Online as i32, 2))
        );
        // Node 2 reports him offline; then he joins node 1 again.
        assert_eq!(
            s.put(
                record("bob", PresenceStatus::Offline, 400, 2),
                meta(20),
                true
            ),
            Ok(())
        );
        assert_eq!(
            s.put(
                record("bob", PresenceStatus::Online, 500, 1),
                meta(30),
                false
            ),
            Ok(())
        );
        assert_eq!(s.entry("bob").map(|(_, m)| m.joined_at), Some(30));
    }

    #[test]
    fn offline_records_expire_after_72_hours() {
        let mut s = RecordStore::default();
        let put = |s: &mut RecordStore, r| s.put(r, meta(0), true).unwrap();
        put(&mut s, record("old", PresenceStatus::Offline, 0, 1));
        put(&mut s, record("recent", PresenceStatus::Offline, 10 * H, 1));
        put(&mut s, record("online", PresenceStatus::Online, 0, 1));
        put(&mut s, record("orphan", PresenceStatus::Online, 0, 9));
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
    fn an_expired_certificate_makes_a_record_offline_then_drops_it() {
        let mut s = RecordStore::default();
        let expires = RecordMeta {
            joined_at: 0,
            not_after_ms: 10 * H,
        };
        let r = record("erin", PresenceStatus::Online, 0, 1);
        s.put(r.clone(), expires, true).unwrap();
        let live = |_: &[u8]| true;
        assert_eq!(
            effective_status(&r, &expires, 10 * H - 1, live),
            PresenceStatus::Online
        );
        assert_eq!(
            effective_status(&r, &expires, 10 * H, live),
            PresenceStatus::Offline
        );
        // Offline since its certificate expired, it goes 72 h after last seen.
        assert_eq!(s.expire(71 * H, live), 0);
        assert_eq!(s.expire(72 * H, live), 1);
        // An offline record seen late still goes 30 days after the expiry.
        let mut late = record("erin", PresenceStatus::Offline, 31 * 24 * H, 1);
        late.last_seen = 10 * H + RECORD_OUTLIVES_CERTIFICATE_MS - 1;
        s.put(late, expires, true).unwrap();
        assert_eq!(
            s.expire(10 * H + RECORD_OUTLIVES_CERTIFICATE_MS - 1, live),
            0
        );
        assert_eq!(s.expire(10 * H + RECORD_OUTLIVES_CERTIFICATE_MS, live), 1);
    }

    #[test]
    fn effective_status_follows_home_liveness() {
        let r = record("bob", PresenceStatus::Away, 0, 3);
        assert_eq!(
            effective_status(&r, &meta(0), 0, |_| true),
            PresenceStatus::Away
        );
        assert_eq!(
            effective_status(&r, &meta(0), 0, |_| false),
            PresenceStatus::Offline
        );
    }

    fn ids(c: &ChatStore, name: &str) -> Vec<u8> {
        c.messages(name).map(|m| m.message_id[0]).collect()
    }

    #[test]
    fn pending_chat_is_deduplicated_removed_by_id_and_expired() {
        let mut c = ChatStore::default();
        assert_eq!(c.add(chat(1, "bob", 1), 0), Ok(true));
        assert_eq!(c.add(chat(1, "bob", 1), 0), Ok(false), "duplicate id");
        assert_eq!(c.add(chat(2, "bob", 2), 0), Ok(true));
        assert_eq!(ids(&c, "bob"), vec![1, 2], "reading does not remove");
        assert_eq!(c.remove_ids("bob", &[vec![1; 16], vec![9; 16]]), 1);
        assert_eq!(ids(&c, "bob"), vec![2]);
        assert_eq!(c.remove_ids("bob", &[vec![2; 16]]), 1);
        assert_eq!(c.total_bytes(), 0);
        assert!(c.names().is_empty());

        c.add(chat(3, "carol", 0), 0).unwrap();
        c.add(chat(7, "dave", 0), 31 * 24 * H).unwrap();
        c.expire(31 * 24 * H);
        assert_eq!(c.count("carol"), 0);
        assert_eq!(c.count("dave"), 1);
        assert_eq!(c.total_bytes(), chat(7, "dave", 0).encoded_len());
    }

    #[test]
    fn each_cap_refuses_without_dropping_what_is_held() {
        let one = chat(0, "bob", 0).encoded_len();
        let limits = ChatLimits {
            per_recipient: 3 * one,
            per_sender: 5 * one,
            total: 7 * one,
        };
        let mut c = ChatStore::new(limits);
        for i in 1..=3 {
            assert_eq!(c.add(chat(i, "bob", 0), 0), Ok(true));
        }
        assert_eq!(c.add(chat(4, "bob", 0), 0), Err(MailboxFull::Recipient));
        assert_eq!(ids(&c, "bob"), vec![1, 2, 3], "nothing dropped");
        for i in 4..=5 {
            assert_eq!(c.add(chat(i, "cal", 0), 0), Ok(true));
        }
        assert_eq!(c.add(chat(6, "dan", 0), 0), Err(MailboxFull::Sender));
        let mut other = chat(6, "dan", 0);
        other.from = "mallo".into();
        assert_eq!(c.add(other.clone(), 0), Ok(true));
        other.message_id = vec![8; 16];
        assert_eq!(c.add(other.clone(), 0), Ok(true));
        other.message_id = vec![9; 16];
        assert_eq!(c.add(other.clone(), 0), Err(MailboxFull::Node));
        // Room comes back when messages leave.
        c.remove_ids("bob", &[vec![1; 16]]);
        assert_eq!(c.add(other, 0), Ok(true));

        let mut c = ChatStore::default();
        for i in 0..MAX_PENDING_PER_USER {
            let mut m = chat(0, "carol", 0);
            m.text.clear();
            m.message_id = (i as u32).to_be_bytes().to_vec();
            assert_eq!(c.add(m, 0), Ok(true));
        }
        assert_eq!(c.add(chat(1, "carol", 0), 0), Err(MailboxFull::Recipient));
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
