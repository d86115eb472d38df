//! Work waiting on other supernodes: what each pending lookup or delivery
//! is for, so that its answer (or its timeout) can be acted upon. Data
//! only; the steps live in `directory` (lookups), `routing` (deliveries)
//! and `requests` (what a client asked).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use natter_proto::messages::envelope::Body;
use natter_proto::messages::{CallSignal, ChatMessage, UserRecord};

use super::interface::SessionId;
use super::statements::VerifiedRecord;
use crate::NodeId;

/// A job's id.
pub(crate) type JobId = u64;

/// A lookup asking the replicas of `name` one after the other, in HRW order.
#[derive(Debug)]
pub(crate) struct Lookup {
    pub name: String,
    pub replicas: VecDeque<NodeId>,
}

/// Why a lookup runs.
#[derive(Debug)]
pub(crate) enum LookupFor {
    /// A client's search: answer it with a `SearchReply`.
    Search {
        session: SessionId,
        request_id: u64,
        name: String,
    },
    /// A new presence subscription: push the status found.
    Subscribe { session: SessionId },
    /// To route a message to the user's home supernode.
    Deliver(Box<Delivery>),
}

/// A message being routed to the user in its `to`.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub to: String,
    pub body: Body,
    pub then: AfterDelivery,
}

/// What to do once a delivery succeeded or failed.
#[derive(Debug)]
pub(crate) enum AfterDelivery {
    /// A client's chat message: `Ack`, or stored for later when offline.
    Chat {
        session: SessionId,
        request_id: u64,
        message: ChatMessage,
    },
    /// A client's receipt: `Ack` or an error.
    Receipt { session: SessionId, request_id: u64 },
    /// A client's call signal: `Ack` (noting the call, starting the
    /// no-answer timer of an invite) or an error.
    Signal {
        session: SessionId,
        request_id: u64,
        signal: CallSignal,
    },
    /// Sent by the supernode itself (receipts, no-answer hangups).
    Quiet,
}

/// Why every replica of a name is asked (for a user who joined here).
#[derive(Debug)]
pub(crate) enum GatherFor {
    /// Finishing a join: publish, tell an older home, deliver the chat.
    Join { session: SessionId },
    /// A client's `InboxFetch`.
    Inbox { session: SessionId, request_id: u64 },
}

/// A job and what it waits for.
#[derive(Debug)]
pub(crate) enum Job {
    /// Asking replicas one by one.
    Lookup { lookup: Lookup, purpose: LookupFor },
    /// Asking every replica at once, in rounds; `waiting` holds the
    /// request ids of this round.
    Gather(Box<Gather>),
    /// Storing a client's chat for an offline recipient on its replicas.
    Store(Store),
    /// Handing a page of stored chat to other replicas.
    Handoff(Handoff),
    /// Waiting for the home supernode to take the message.
    Deliver(Box<Delivery>),
}

/// The record and stored chat of a user who joined here, gathered from
/// every replica in rounds: each round delivers one page per replica and
/// tells the replicas which ids the previous round delivered (they delete
/// them), until a round brings nothing.
#[derive(Debug)]
pub(crate) struct Gather {
    pub name: String,
    pub purpose: GatherFor,
    pub replicas: Vec<NodeId>,
    pub round: u32,
    pub waiting: HashSet<u64>,
    /// The verified records the replicas hold (first round).
    pub records: Vec<VerifiedRecord>,
    /// Chat brought by this round.
    pub chat: Vec<ChatMessage>,
    /// Ids delivered to the session so far.
    pub delivered: HashSet<Vec<u8>>,
    /// Ids the previous round brought (all delivered): deleted next round.
    pub last: Vec<Vec<u8>>,
    /// The previous round brought only ids delivered before.
    pub stale: bool,
    /// For a session that acknowledges chat: ids pushed this round and not
    /// acknowledged yet, with their senders (receipted on the
    /// acknowledgement). The next round waits for them, until `ack_due`.
    pub awaiting: HashMap<Vec<u8>, String>,
    /// Ids the session acknowledged during this gather.
    pub confirmed: HashSet<Vec<u8>>,
    pub ack_due: Option<Instant>,
}

/// A client's chat for an offline recipient, stored on its replicas; the
/// client hears `Ack` once one replica holds it, `MailboxFull` when every
/// replica that answered refused it.
#[derive(Debug)]
pub(crate) struct Store {
    /// The client waiting for the answer (`None`: live chat a session
    /// never acknowledged, stored by this node itself).
    pub reply: Option<(SessionId, u64)>,
    pub waiting: HashSet<u64>,
    pub stored: bool,
    /// Why a replica refused it.
    pub full: Option<String>,
    /// Replicas that did not answer (perhaps an older supernode that
    /// stores without answering).
    pub silent: usize,
}

/// A page of the chat stored here for `name`, sent to other replicas;
/// when every replica it was for acknowledged it and this node is no
/// longer a replica of `name`, the page is deleted here.
#[derive(Debug)]
pub(crate) struct Handoff {
    pub name: String,
    pub ids: Vec<Vec<u8>>,
    /// Messages before this page (pages of a copy follow one another).
    pub skip: usize,
    pub waiting: HashSet<u64>,
    /// Replicas the page went to, and how many acknowledged it.
    pub targets: usize,
    pub acks: usize,
    /// Whether the page went to every replica it was for (a replica not
    /// linked yet gets nothing: then the page is not deleted here).
    pub all_sent: bool,
}

/// Why a message could not be routed to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// No record of the user anywhere.
    Unknown,
    /// The user is offline, or its supernode did not take the message.
    Offline,
}

/// A job that finished, handed to the dispatcher.
// Version 2 grew `Envelope` and `UserRecord`; short-lived, not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Done {
    Lookup(LookupFor, Option<UserRecord>),
    /// A gather delivered everything the replicas held.
    Gathered(GatherFor),
    /// A store job answered its client (if it had one).
    Stored(Option<SessionId>),
    Delivered(Box<Delivery>, Result<(), RouteError>),
}
