//! A call's signaling that survives the loss of its supernode: the current
//! supernode session of a call that owns the overlay (the CLI's `call` and
//! `answer`), and rejoining through another supernode of the host cache
//! when that one is lost mid-call ([`crate::overlay::Overlay::rejoin`]: the
//! alternates, QUIC or TLS over TCP by the dial race), while the media loop
//! goes on.
//!
//! A supernode is taken as lost when its session ends (QUIC or TLS idle
//! timeout, a reset), or sooner when the call session asks for a relay
//! migration and the dead relays include that supernode's own relay
//! ([`CallLink::suspect`]): the relay and the session are one process.
//! While the link rejoins it has no session ([`CallLink::session`] is
//! `None`): the call keeps its signals queued in its setup and sends them
//! once rejoined. The join publishes the user's directory record with the
//! new home supernode, so mid-call signals routed by user name (hangup,
//! candidates) reach this side again, and the peer's reach the peer once it
//! rejoined too.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use natter_proto::messages::envelope;
use natter_proto::path::Target;

use crate::overlay::{Overlay, OverlayError};
use crate::supernode::SupernodeSession;

/// Rejoin attempts (each tries every known supernode) before the link
/// gives up.
pub const REJOIN_ATTEMPTS: u32 = 3;
/// Pause between two rejoin attempts.
const REJOIN_PAUSE: Duration = Duration::from_secs(1);

type Rejoining<'a> =
    Pin<Box<dyn Future<Output = (&'a mut Overlay, Result<(), OverlayError>)> + Send + 'a>>;

enum State<'a> {
    Joined(&'a mut Overlay),
    Rejoining(Rejoining<'a>),
    /// No supernode could be joined: the call goes on without signaling.
    Failed,
}

/// The supernode link of a call that owns the overlay.
pub struct CallLink<'a> {
    session: Arc<SupernodeSession>,
    state: State<'a>,
    rejoins: u32,
    /// The supernode lost and the one rejoined through, since
    /// [`Self::take_rejoined`] was last asked.
    rejoined: Option<(SocketAddr, SocketAddr)>,
}

impl std::fmt::Debug for CallLink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Joined(_) => "joined",
            State::Rejoining(_) => "rejoining",
            State::Failed => "failed",
        };
        f.debug_struct("CallLink")
            .field("supernode", &self.session.addr())
            .field("state", &state)
            .field("rejoins", &self.rejoins)
            .finish()
    }
}

impl<'a> CallLink<'a> {
    /// The link of a call through `overlay`'s current session.
    pub fn new(overlay: &'a mut Overlay) -> Self {
        Self {
            session: overlay.session(),
            state: State::Joined(overlay),
            rejoins: 0,
            rejoined: None,
        }
    }

    /// The session to signal on now; `None` while rejoining (or after
    /// every rejoin failed).
    pub fn session(&self) -> Option<&SupernodeSession> {
        matches!(self.state, State::Joined(_)).then_some(&*self.session)
    }

    /// [`Self::session`], shared.
    pub fn session_arc(&self) -> Option<Arc<SupernodeSession>> {
        matches!(self.state, State::Joined(_)).then(|| self.session.clone())
    }

    /// Rejoins that finished during this link's life.
    pub fn rejoins(&self) -> u32 {
        self.rejoins
    }

    /// The supernode lost and the one rejoined through, when a rejoin
    /// finished since the last call (then the call sends what it held back,
    /// and finishes a relay migration it deferred).
    pub fn take_rejoined(&mut self) -> Option<(SocketAddr, SocketAddr)> {
        self.rejoined.take()
    }

    /// The call session found `dead_relays` dead (a relay migration): when
    /// one of them is this side's own supernode's relay, or the session is
    /// closed, that supernode is lost: rejoin now rather than wait for the
    /// session's idle timeout. Returns whether a rejoin is going on.
    pub fn suspect(&mut self, dead_relays: &[Target]) -> bool {
        if let State::Joined(_) = self.state {
            let own = self.session.reflector();
            let lost =
                !self.session.is_alive() || dead_relays.iter().any(|t| Some(t.addr()) == own);
            if lost {
                self.start_rejoin();
            }
        }
        matches!(self.state, State::Rejoining(_))
    }

    /// The session closed under a request: the supernode is lost, rejoin
    /// (nothing happens while a rejoin goes on already). Never for a request
    /// that only timed out: closing a live session over a slow answer (a
    /// signal routed through a replica that just died) cut the call's
    /// signaling off for good in the lab's relay-loss test.
    pub fn abandon(&mut self) {
        self.start_rejoin();
    }

    fn start_rejoin(&mut self) {
        let State::Joined(overlay) = std::mem::replace(&mut self.state, State::Failed) else {
            return;
        };
        self.state = State::Rejoining(Box::pin(async move {
            let mut result = Ok(());
            for attempt in 0..REJOIN_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(REJOIN_PAUSE).await;
                }
                result = overlay.rejoin().await;
                if result.is_ok() {
                    break;
                }
            }
            (overlay, result)
        }));
    }

    /// Drives a rejoin going on to its end.
    async fn finish_rejoin(&mut self) {
        let State::Rejoining(rejoining) = &mut self.state else {
            return;
        };
        let (overlay, result) = rejoining.await;
        match result {
            Ok(()) => {
                let lost = self.session.addr();
                self.session = overlay.session();
                self.rejoins += 1;
                self.rejoined = Some((lost, self.session.addr()));
                self.state = State::Joined(overlay);
            }
            Err(_) => self.state = State::Failed,
        }
    }

    /// The next push of the current session; a lost session is rejoined
    /// on the way (cancel-safe: a rejoin going on survives the caller
    /// giving up on this future). `None` once no supernode can be joined.
    pub async fn next_push(&mut self) -> Option<envelope::Body> {
        loop {
            match self.state {
                State::Failed => return None,
                State::Rejoining(_) => self.finish_rejoin().await,
                State::Joined(_) => match self.session.next_push().await {
                    Some(body) => return Some(body),
                    None => self.start_rejoin(),
                },
            }
        }
    }

    /// Waits, up to `limit`, until the link is joined (a rejoin going on
    /// finished); the session then, `None` if not in time or it failed.
    pub async fn joined_within(&mut self, limit: Duration) -> Option<&SupernodeSession> {
        if let State::Rejoining(_) = self.state {
            let _ = tokio::time::timeout(limit, self.finish_rejoin()).await;
        }
        self.session()
    }
}
