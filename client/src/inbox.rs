//! The inbox kept in `--home`: `inbox.txt`, one received chat message per
//! line (`SENT_UNIX_SECS FROM: TEXT`), appended as messages arrive and
//! created mode 0600 by [`natter_fsutil::append_private`].
//!
//! Chat arrives sealed (`natter_proto::chat`): [`receive`] opens it with
//! this user's chat key and verifies the sender against the pinned login
//! key. Only what opens and verifies is stored, as the plaintext under the
//! certified sender's name; anything else is refused: counted, reported to
//! the caller (the `natter` binary prints a warning) and never attributed
//! to the name it claims.
//!
//! Every pushed message is acknowledged to the supernode
//! ([`SupernodeSession::chat_delivered`]) once it is written (the line is
//! synced to disk first) or refused: only then does the supernode have
//! it deleted from the mailbox, so a message whose push was lost (the
//! connection died, the client crashed) comes again at the next join. A
//! message that comes again is recognised by its sender and id (the
//! `inbox.ids` file next to the inbox, one `SENDER HEX_ID` per line) and
//! neither stored nor shown twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use natter_fsutil::FileError;
use natter_proto::cert::Identity;
use natter_proto::chat::{self, ChatError, OpenedChat};
use natter_proto::messages::{ChatMessage, envelope};
use rsa::RsaPublicKey;

use crate::ClientError;
use crate::supernode::SupernodeSession;
use crate::text::for_terminal;

/// The inbox file in `--home`.
pub const FILE_NAME: &str = "inbox.txt";

/// How long [`fetch`] waits for each further stored message.
pub const FETCH_QUIET: Duration = Duration::from_millis(300);

/// The inbox file.
#[derive(Debug, Clone)]
pub struct Inbox {
    path: PathBuf,
}

impl Inbox {
    /// The inbox at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The line `m` is stored as: its text on one line, every other
    /// control or bidi character escaped (`text::for_terminal`), so showing
    /// the file cannot fake a sender either.
    pub fn line(m: &OpenedChat) -> String {
        format!(
            "{} {}: {}\n",
            m.sent_at.div_euclid(1000),
            for_terminal(&m.from),
            for_terminal(&m.text.replace('\n', " "))
        )
    }

    /// Appends `m`, then notes its id (a crash between the two stores it
    /// again when it comes again: never loses it).
    pub fn append(&self, m: &OpenedChat) -> Result<(), FileError> {
        natter_fsutil::append_private(&self.path, Self::line(m).as_bytes())?;
        natter_fsutil::append_private(&self.ids_path(), Self::id_line(m).as_bytes())
    }

    /// The file of the ids of the stored messages.
    pub fn ids_path(&self) -> PathBuf {
        self.path.with_extension("ids")
    }

    fn id_line(m: &OpenedChat) -> String {
        let id: String = m.message_id.iter().map(|b| format!("{b:02x}")).collect();
        format!("{} {id}\n", m.from)
    }

    /// Whether `m` (its certified sender and id) is stored already.
    pub fn contains(&self, m: &OpenedChat) -> bool {
        let wanted = Self::id_line(m);
        std::fs::read_to_string(self.ids_path())
            .unwrap_or_default()
            .lines()
            .any(|line| line == wanted.trim_end())
    }

    /// Everything received so far (empty when there is no inbox yet).
    pub fn read(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

/// A stored line read back: (sent, unix seconds; sender; text), as
/// [`Inbox::line`] wrote them (escaped); `None` for a line of another shape.
pub fn parse_line(line: &str) -> Option<(i64, &str, &str)> {
    let (secs, rest) = line.split_once(' ')?;
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (from, text) = rest.split_once(": ")?;
    Some((secs.parse().ok()?, from, text))
}

/// A stored line (`SENT_UNIX_SECS FROM: TEXT`) as a person reads it at
/// `now`: the time as [`crate::text::ago`] says it ("2 min ago: bob:
/// hi"); a line without a leading time is shown as it is.
pub fn human_line(line: &str, now: i64) -> String {
    match line.split_once(' ') {
        Some((secs, rest)) if !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit()) => {
            match secs.parse::<i64>() {
                Ok(secs) => format!("{}: {rest}", crate::text::ago(secs, now)),
                Err(_) => line.to_owned(),
            }
        }
        _ => line.to_owned(),
    }
}

/// What this user's keys open chat with.
#[derive(Debug, Clone)]
pub struct Keys<'a> {
    /// This user's identity (its chat secret decrypts).
    pub identity: &'a Identity,
    /// The pinned login key that senders' certificates must verify with.
    pub login_key: &'a RsaPublicKey,
}

/// A received message that did not open or verify: dropped, never shown
/// as from `claimed_from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The `from` of its envelope (what it claimed).
    pub claimed_from: String,
    pub error: ChatError,
}

impl Refused {
    /// The warning a user sees.
    pub fn warning(&self) -> String {
        format!(
            "warning: dropped a message claiming to be from {}: {}",
            for_terminal(&self.claimed_from),
            for_terminal(&self.error.to_string())
        )
    }
}

/// What became of a received message.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Opened, verified and appended to the inbox.
    Stored(OpenedChat),
    /// Opened and verified, and already in the inbox (delivered again).
    Duplicate(OpenedChat),
    /// Did not open or verify: not stored.
    Refused(Refused),
}

/// Opens `m` (received at `now_ms`) and, when it opens and verifies and is
/// not stored yet, appends it to `inbox`.
pub fn receive(
    inbox: &Inbox,
    keys: &Keys<'_>,
    m: &ChatMessage,
    now_ms: i64,
) -> Result<Received, FileError> {
    match chat::open(m, keys.identity, keys.login_key, now_ms) {
        Ok(opened) if inbox.contains(&opened) => Ok(Received::Duplicate(opened)),
        Ok(opened) => {
            inbox.append(&opened)?;
            Ok(Received::Stored(opened))
        }
        Err(error) => Ok(Received::Refused(Refused {
            claimed_from: m.from.clone(),
            error,
        })),
    }
}

/// [`receive`], then the acknowledgement to the supernode that pushed `m`
/// (stored, already stored or refused: in each case it may go). An
/// acknowledgement that does not get through is not an error: the message
/// comes again and is recognised as a duplicate.
pub async fn receive_and_ack(
    sn: &SupernodeSession,
    inbox: &Inbox,
    keys: &Keys<'_>,
    m: &ChatMessage,
    request_timeout: Duration,
) -> Result<Received, FileError> {
    let received = receive(inbox, keys, m, crate::now_unix_ms())?;
    // Not getting through is fine: it comes again (see above).
    let _ = sn
        .chat_delivered(vec![m.message_id.clone()], request_timeout)
        .await;
    Ok(received)
}

/// What one [`fetch`] brought.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Messages opened and appended to the inbox (not counting messages
    /// that were stored already).
    pub received: usize,
    /// Messages refused (not stored).
    pub refused: Vec<Refused>,
}

/// Asks the supernode for the chat stored while this user was offline and
/// appends every message that opens to `inbox`, acknowledging each. Stored
/// chat is pushed before the request's reply, and whatever was pushed at
/// join is queued too; the wait ends after [`FETCH_QUIET`] without a push
/// once the request was answered.
pub async fn fetch(
    sn: &SupernodeSession,
    inbox: &Inbox,
    keys: &Keys<'_>,
    request_timeout: Duration,
) -> Result<Fetched, ClientError> {
    // The supernode answers once every page was pushed and (for a
    // supernode that waits for acknowledgements) acknowledged: the pushes
    // are read and acknowledged while the request is out.
    let request = sn.request(
        envelope::Body::InboxFetch(Default::default()),
        request_timeout,
    );
    let mut request = std::pin::pin!(request);
    let mut answered = false;
    let mut fetched = Fetched::default();
    loop {
        tokio::select! {
            reply = &mut request, if !answered => {
                reply?;
                answered = true;
            }
            push = sn.next_push() => match push {
                Some(envelope::Body::ChatMessage(m)) => {
                    match receive_and_ack(sn, inbox, keys, &m, request_timeout).await? {
                        Received::Stored(_) => fetched.received += 1,
                        Received::Duplicate(_) => {}
                        Received::Refused(refused) => fetched.refused.push(refused),
                    }
                }
                Some(_) => {}
                None => break,
            },
            () = tokio::time::sleep(FETCH_QUIET), if answered => break,
        }
    }
    Ok(fetched)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(from: &str, text: &str, sent_at: i64) -> OpenedChat {
        use rsa::pkcs8::DecodePrivateKey;
        let pem = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../proto/tests/vectors/bob.pem"
        );
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(pem).unwrap())
            .unwrap()
            .to_public_key();
        OpenedChat {
            message_id: vec![1; 16],
            from: from.to_owned(),
            to: "alice".to_owned(),
            text: text.to_owned(),
            sent_at,
            sender: natter_proto::cert::VerifiedCertificate {
                name: from.to_owned(),
                public_key: key,
                chat_key: [0; 32],
                serial: 1,
                not_before: 0,
                not_after: 1,
            },
        }
    }

    #[test]
    fn a_stored_message_is_known_by_its_sender_and_id() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::new(dir.path().join(FILE_NAME));
        let m = message("bob", "hi", 1_800_000_000_123);
        assert!(!inbox.contains(&m), "nothing stored yet");
        inbox.append(&m).unwrap();
        assert!(inbox.contains(&m));
        let mut other_id = m.clone();
        other_id.message_id = vec![2; 16];
        assert!(!inbox.contains(&other_id));
        // Another sender reusing the id does not hide its message.
        let mut other_sender = m.clone();
        other_sender.from = "mallory".into();
        assert!(!inbox.contains(&other_sender));
        let mode = std::fs::metadata(inbox.ids_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn append_then_read_one_line_per_message_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::new(dir.path().join(FILE_NAME));
        assert_eq!(inbox.read(), "", "no inbox yet");
        inbox
            .append(&message("bob", "hi", 1_800_000_000_123))
            .unwrap();
        inbox
            .append(&message("carol", "two\nlines", 1_800_000_001_999))
            .unwrap();
        assert_eq!(
            inbox.read(),
            "1800000000 bob: hi\n1800000001 carol: two lines\n"
        );
        assert_eq!(
            human_line("1800000000 bob: hi", 1_800_000_125),
            "2 min ago: bob: hi"
        );
        assert_eq!(human_line("no time here", 1), "no time here");
        assert_eq!(
            parse_line("1800000001 carol: two lines: one"),
            Some((1_800_000_001, "carol", "two lines: one"))
        );
        assert_eq!(parse_line("carol: no time"), None);
        let mode = std::fs::metadata(inbox.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
