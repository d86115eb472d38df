//! Sending one chat message through the joined supernode.

use std::time::Duration;

use natter_proto::messages::{ChatMessage, envelope};

use crate::ClientError;
use crate::supernode::SupernodeSession;

/// How long [`send`] waits for the recipient's receipt.
pub const RECEIPT_WAIT: Duration = Duration::from_secs(2);

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The recipient is online and confirmed it.
    Delivered,
    /// No receipt within [`RECEIPT_WAIT`]: stored for when they next join.
    Stored,
}

/// A new message from `from` to `to`, with a random id, sent at `now_ms`.
pub fn message(from: &str, to: &str, text: &str, now_ms: i64) -> ChatMessage {
    let mut id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut id);
    ChatMessage {
        message_id: id.to_vec(),
        from: from.to_owned(),
        to: to.to_owned(),
        text: text.to_owned(),
        sent_at: now_ms,
        sealed: Vec::new(),
    }
}

/// Sends `message` and waits up to [`RECEIPT_WAIT`] for its receipt, which
/// comes back at once when the recipient is online.
pub async fn send(
    sn: &SupernodeSession,
    message: ChatMessage,
    request_timeout: Duration,
) -> Result<Delivery, ClientError> {
    let id = message.message_id.clone();
    sn.request(envelope::Body::ChatMessage(message), request_timeout)
        .await?;
    let receipt = tokio::time::timeout(RECEIPT_WAIT, async {
        while let Some(push) = sn.next_push().await {
            if let envelope::Body::ChatReceipt(r) = push
                && r.message_id == id
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    Ok(if receipt {
        Delivery::Delivered
    } else {
        Delivery::Stored
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_get_fresh_random_ids() {
        let a = message("alice", "bob", "hi", 42);
        let b = message("alice", "bob", "hi", 42);
        assert_eq!(a.message_id.len(), 16);
        assert_ne!(a.message_id, b.message_id);
        assert_eq!(
            (a.from.as_str(), a.to.as_str(), a.text.as_str(), a.sent_at),
            ("alice", "bob", "hi", 42)
        );
    }
}
