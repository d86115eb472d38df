//! The inbox kept in `--home`: `inbox.txt`, one received chat message per
//! line (`SENT_UNIX_SECS FROM: TEXT`), appended as messages arrive and
//! created mode 0600 by [`natter_fsutil::append_private`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use natter_fsutil::FileError;
use natter_proto::messages::{ChatMessage, envelope};

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
    pub fn line(m: &ChatMessage) -> String {
        format!(
            "{} {}: {}\n",
            m.sent_at / 1000,
            for_terminal(&m.from),
            for_terminal(&m.text.replace('\n', " "))
        )
    }

    /// Appends `m`.
    pub fn append(&self, m: &ChatMessage) -> Result<(), FileError> {
        natter_fsutil::append_private(&self.path, Self::line(m).as_bytes())
    }

    /// Everything received so far (empty when there is no inbox yet).
    pub fn read(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

/// Asks the supernode for the chat stored while this user was offline and
/// appends every message to `inbox`; returns how many arrived. Stored chat is
/// pushed before the request's reply, and whatever was pushed at join is
/// queued too; the wait ends after [`FETCH_QUIET`] without a push.
pub async fn fetch(
    sn: &SupernodeSession,
    inbox: &Inbox,
    request_timeout: Duration,
) -> Result<usize, ClientError> {
    sn.request(
        envelope::Body::InboxFetch(Default::default()),
        request_timeout,
    )
    .await?;
    let mut received = 0;
    while let Ok(Some(push)) = tokio::time::timeout(FETCH_QUIET, sn.next_push()).await {
        if let envelope::Body::ChatMessage(m) = push {
            inbox.append(&m)?;
            received += 1;
        }
    }
    Ok(received)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(from: &str, text: &str, sent_at: i64) -> ChatMessage {
        ChatMessage {
            message_id: vec![1; 16],
            from: from.to_owned(),
            to: "alice".to_owned(),
            text: text.to_owned(),
            sent_at,
            ..Default::default()
        }
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
        let mode = std::fs::metadata(inbox.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
