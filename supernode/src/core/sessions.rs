//! The session table: every client connection the shell reported, in its
//! handshake phase or joined under a user name (at most one session per
//! name), with its rate limiter and the requests waiting behind a busy one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use natter_proto::binding::Exporter;
use natter_proto::messages::{ChatMessage, Envelope, PresenceStatus};
use rsa::RsaPublicKey;

use super::interface::{Carrier, SessionId};
use super::jobs::JobId;
use super::statements::{Certified, SignedJoin};
use crate::ratelimit::RateLimiter;

/// Where a session is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Waiting for the `JoinHello`.
    Hello,
    /// Challenged; waiting for the proof.
    Challenged {
        name: String,
        /// The certificate of the hello and what it certifies.
        certified: Box<Certified>,
        nonce: [u8; 32],
    },
    /// Joined under `name`.
    Joined(Joined),
}

/// A joined user's session state.
#[derive(Debug)]
pub(crate) struct Joined {
    pub name: String,
    pub status: PresenceStatus,
    /// The user's verified join statement and certificate, carried by
    /// every record of this session.
    pub signed: SignedJoin,
    pub changed_at: i64,
    pub subscriptions: HashSet<String>,
    /// The request being served (the others wait, in order, as they did
    /// behind a reader that served one request at a time).
    pub busy: Option<JobId>,
    pub backlog: VecDeque<Envelope>,
    /// Chat pushed to this session and not acknowledged yet (only for a
    /// client that acknowledges chat).
    pub acks: Box<ChatAcks>,
}

/// The chat acknowledgements a session owes (docs/PROTOCOL.md, 8.7).
#[derive(Debug, Default)]
pub(crate) struct ChatAcks {
    /// The client said `acks_chat` in its hello: pushed chat counts as
    /// delivered only once it sent `ChatDelivered` for it.
    pub enabled: bool,
    /// Live (routed) chat pushed and not acknowledged: kept here, and
    /// stored on the recipient's replicas if it never is (by its due time).
    pub live: HashMap<Vec<u8>, (ChatMessage, Instant)>,
    /// Gathers of this session waiting for acknowledgements.
    pub gathers: Vec<JobId>,
}

/// The certified keys a session joined with, and until when.
#[derive(Debug, Clone)]
pub(crate) struct SessionKeys {
    pub public_key: RsaPublicKey,
    pub chat_key: [u8; natter_proto::cert::CHAT_KEY_LEN],
    /// Unix seconds: the session ends then unless a `CertificateRenewal`
    /// moved it.
    pub not_after: i64,
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct Session {
    /// Set once the `JoinHello`'s certificate verified.
    pub keys: Option<SessionKeys>,
    pub remote: SocketAddr,
    /// The connection's TLS exporter: the supernode's challenge signature
    /// and the client's join proof are bound to it.
    pub exporter: Exporter,
    pub carrier: Carrier,
    pub phase: Phase,
    pub limiter: RateLimiter,
    /// The handshake must be over by then.
    pub deadline: Option<Instant>,
    /// The hello said the client acknowledges pushed chat.
    pub acks_chat: bool,
    /// The hello said the client checks liveness every second: the
    /// session ends after [`natter_proto::alive::SILENT_AFTER_MS`] without a
    /// beacon or a frame from it (core/beacons.rs).
    pub beacons: bool,
    /// When a frame or a beacon of this session was last seen.
    pub heard: Instant,
    /// The liveness ticket given in `JoinAccepted`, if any.
    pub ticket: Option<[u8; natter_proto::alive::MAC_LEN]>,
}

impl Session {
    /// The joined state, if joined.
    pub fn joined(&self) -> Option<&Joined> {
        match &self.phase {
            Phase::Joined(j) => Some(j),
            _ => None,
        }
    }

    /// The joined state, mutably.
    pub fn joined_mut(&mut self) -> Option<&mut Joined> {
        match &mut self.phase {
            Phase::Joined(j) => Some(j),
            _ => None,
        }
    }
}

/// Every session, and the joined ones by name.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    pub all: HashMap<SessionId, Session>,
    pub by_name: HashMap<String, SessionId>,
    /// Sessions joined over TCP since start.
    pub tcp_joined_total: u64,
    /// Joined sessions by the mac of their liveness ticket.
    pub by_ticket: HashMap<[u8; natter_proto::alive::MAC_LEN], SessionId>,
}

impl Sessions {
    /// The joined session of `name`.
    pub fn of_name(&self, name: &str) -> Option<(SessionId, &Joined)> {
        let id = *self.by_name.get(name)?;
        Some((id, self.all.get(&id)?.joined()?))
    }

    /// The joined session `id`.
    pub fn joined(&self, id: SessionId) -> Option<&Joined> {
        self.all.get(&id)?.joined()
    }

    /// The joined session `id`, mutably.
    pub fn joined_mut(&mut self, id: SessionId) -> Option<&mut Joined> {
        self.all.get_mut(&id)?.joined_mut()
    }

    /// Whether `id` is the current session of `name`.
    pub fn is_current(&self, id: SessionId, name: &str) -> bool {
        self.by_name.get(name) == Some(&id)
    }

    /// Joined sessions now, over TCP.
    pub fn tcp_joined(&self) -> usize {
        self.by_name
            .values()
            .filter(|id| self.all.get(id).is_some_and(|s| s.carrier == Carrier::Tcp))
            .count()
    }
}
