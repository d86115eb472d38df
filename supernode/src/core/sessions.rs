//! The session table: every client connection the shell reported, in its
//! handshake phase or joined under a user name (at most one session per
//! name), with its rate limiter and the requests waiting behind a busy one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use natter_proto::binding::Exporter;
use natter_proto::messages::{Envelope, PresenceStatus};
use rsa::RsaPublicKey;

use super::interface::{Carrier, SessionId};
use super::jobs::JobId;
use super::state::{Node, Timer};
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

impl Node {
    /// Arms the timer that ends session `id` when its certificate expires.
    pub(crate) fn arm_expiry(&mut self, id: SessionId, not_after: i64) {
        let left = u64::try_from(not_after.saturating_sub(self.now.unix_secs())).unwrap_or(0);
        let at = self.now.mono + std::time::Duration::from_secs(left);
        self.set_timer(at, Timer::CertificateExpiry(id));
    }

    /// The expiry timer of session `id` fired: the session ends unless a
    /// renewal moved its expiry (then the timer is armed again).
    pub(crate) fn certificate_due(&mut self, id: SessionId) {
        let Some(not_after) = self
            .sessions
            .all
            .get(&id)
            .and_then(|s| s.keys.as_ref())
            .map(|c| c.not_after)
        else {
            return;
        };
        if not_after > self.now.unix_secs() {
            return self.arm_expiry(id, not_after);
        }
        tracing::info!("session certificate expired, closing");
        self.stats.sessions_expired += 1;
        self.session_closed(id);
        self.emit(crate::core::Output::CloseSession(
            id,
            crate::close::REFUSED,
            "certificate expired",
        ));
    }

    /// A `CertificateRenewal` on joined session `id`: a valid certificate
    /// for the same name and the same keys moves the session's expiry
    /// (answered `Ack`); anything else is refused and changes nothing.
    pub(crate) fn renew_certificate(
        &mut self,
        id: SessionId,
        request_id: u64,
        renewal: natter_proto::messages::CertificateRenewal,
    ) {
        use natter_proto::messages::{ErrorCode, ErrorReply, envelope::Body};
        let now = self.now.unix_secs();
        let verified = renewal
            .certificate
            .as_ref()
            .ok_or_else(|| "no certificate".to_owned())
            .and_then(|c| {
                natter_proto::cert::verify(c, &self.config.login_key, now)
                    .map_err(|e| e.to_string())
            });
        let Some(session) = self.sessions.all.get_mut(&id) else {
            return;
        };
        let joined_as = session.joined().map(|j| j.name.clone());
        let renewed = renewal.certificate.clone();
        let result = match (verified, session.keys.as_mut(), joined_as) {
            (Ok(v), Some(held), Some(name))
                if natter_proto::name::normalise(&v.name).ok().as_deref()
                    == Some(name.as_str())
                    && v.public_key == held.public_key
                    && v.chat_key == held.chat_key =>
            {
                held.not_after = held.not_after.max(v.not_after);
                // The session's records carry the certificate in force.
                if let (Some(joined), Some(certificate)) = (session.joined_mut(), renewed) {
                    joined.signed.certificate = certificate;
                }
                Ok(())
            }
            (Ok(_), _, _) => Err("the certificate is for another name or key".to_owned()),
            (Err(e), _, _) => Err(e),
        };
        let body = match result {
            Ok(()) => Body::Ack(Default::default()),
            Err(e) => Body::Error(ErrorReply::new(ErrorCode::CertificateRejected, e)),
        };
        self.send_session(id, request_id, body);
    }
}
