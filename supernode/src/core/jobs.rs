//! Work waiting on other supernodes: what each pending lookup or delivery
//! is for, so that its answer (or its timeout) can be acted upon. Data
//! only; the steps live in `directory` (lookups), `routing` (deliveries)
//! and `requests` (what a client asked).

use std::collections::{HashSet, VecDeque};

use natter_proto::messages::envelope::Body;
use natter_proto::messages::{CallSignal, ChatMessage, UserRecord};

use super::interface::SessionId;
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
    /// Asking every replica at once; `waiting` holds the request ids.
    Gather {
        name: String,
        waiting: HashSet<u64>,
        records: Vec<UserRecord>,
        chat: Vec<ChatMessage>,
        purpose: GatherFor,
    },
    /// Waiting for the home supernode to take the message.
    Deliver(Box<Delivery>),
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
#[derive(Debug)]
pub(crate) enum Done {
    Lookup(LookupFor, Option<UserRecord>),
    Gathered(GatherFor, String, Option<UserRecord>, Vec<ChatMessage>),
    Delivered(Box<Delivery>, Result<(), RouteError>),
}
