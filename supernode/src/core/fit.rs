//! Envelopes that fit a frame: the one place that measures what the node
//! builds against [`MAX_FRAME_LEN`]. Lists (gossip views, host caches,
//! chat bundles) are cut to the longest prefix that fits; a finished
//! envelope is checked once more before it is queued.

use natter_proto::frame::MAX_FRAME_LEN;
use natter_proto::messages::Envelope;
use prost::Message;

/// Room kept for the length prefixes of the envelope's nested fields, which
/// grow by a byte or two as a list grows.
const SLACK: usize = 16;

/// Whether `envelope` fits one frame (the framing's own check).
pub(crate) fn fits(envelope: &Envelope) -> bool {
    natter_proto::frame::frame_len(envelope).is_ok()
}

/// The bytes one element adds to a repeated message field (numbers 1 to 15):
/// its tag, its length prefix, its body.
pub(crate) fn element_len(item: &impl Message) -> usize {
    let len = item.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// The bytes left for list elements in an envelope that, with an empty
/// list, encodes as `empty`.
pub(crate) fn budget(empty: &Envelope) -> usize {
    MAX_FRAME_LEN.saturating_sub(empty.encoded_len() + SLACK)
}

/// The longest prefix of `items` (at most `max_items`) whose elements take
/// at most `budget` bytes.
pub(crate) fn prefix<T: Message>(
    items: impl IntoIterator<Item = T>,
    budget: usize,
    max_items: usize,
) -> Vec<T> {
    let mut used = 0usize;
    let mut out = Vec::new();
    for item in items {
        if out.len() >= max_items {
            break;
        }
        let len = element_len(&item);
        if used + len > budget {
            break;
        }
        used += len;
        out.push(item);
    }
    out
}

/// An envelope made by `make` from the longest prefix of `items` that
/// fits a frame, and how many items it holds.
pub(crate) fn fitted<T: Message + Clone>(
    items: impl IntoIterator<Item = T>,
    max_items: usize,
    make: impl Fn(Vec<T>) -> Envelope,
) -> (Envelope, usize) {
    let budget = budget(&make(Vec::new()));
    let mut chosen = prefix(items, budget, max_items);
    loop {
        let envelope = make(chosen.clone());
        if fits(&envelope) || chosen.is_empty() {
            return (envelope, chosen.len());
        }
        chosen.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_proto::messages::envelope::Body;
    use natter_proto::messages::{ChatMessage, DirectoryStore};

    fn chat(i: usize, len: usize) -> ChatMessage {
        ChatMessage {
            message_id: (i as u32).to_be_bytes().to_vec(),
            from: "alice".into(),
            to: "bob".into(),
            text: "x".repeat(len),
            sent_at: i as i64,
            ..Default::default()
        }
    }

    fn store(chat: Vec<ChatMessage>) -> Envelope {
        Envelope::new(
            u64::MAX,
            Body::DirectoryStore(DirectoryStore {
                records: Vec::new(),
                pending_chat: chat,
            }),
        )
    }

    #[test]
    fn the_longest_fitting_prefix_is_taken_and_fits() {
        for len in [0, 1, 100, 1000, 16 * 1024, 40 * 1024] {
            let items: Vec<ChatMessage> = (0..200).map(|i| chat(i, len)).collect();
            let (envelope, n) = fitted(items.clone(), usize::MAX, store);
            assert!(fits(&envelope), "len {len}");
            assert!(n >= 1, "one message of {len} bytes always fits");
            if n < items.len() {
                let one_more = store(items[..=n].to_vec());
                assert!(!fits(&one_more), "len {len}: {n} is the longest prefix");
            }
        }
    }

    #[test]
    fn the_item_cap_applies() {
        let items: Vec<ChatMessage> = (0..50).map(|i| chat(i, 10)).collect();
        let (_, n) = fitted(items, 7, store);
        assert_eq!(n, 7);
    }
}
