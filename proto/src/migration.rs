//! When a call must move to another relay (sans-IO): the decision of
//! relay migration.
//!
//! A relayed call's media goes through one supernode's relay (each side's
//! own supernode allocates one; when both joined through the same supernode
//! there is only that one). When that supernode dies, or its relay stops
//! forwarding, every path of the call dies at once: the relay target that
//! carried media is given up by the path manager within
//! [`crate::path::PathConfig::media_dead_after_ms`], and no other target is
//! alive. [`RelayMigration`] watches for exactly that, *no path alive after
//! one worked*, and then asks the shell to migrate
//! ([`crate::session::Event::MigrateRelay`]):
//!
//! 1. if the dead relay was its own supernode's, or its supernode session is
//!    gone, rejoin the overlay through another supernode (the signaling is
//!    lost with the relay);
//! 2. send the peer a mid-call `Candidates` signal (empty: "I moved"),
//!    which also makes the call known to the new supernode's relay
//!    (docs/PROTOCOL.md, section 7.5);
//! 3. allocate a relay there for the call (the relay-first allocation of the
//!    call setup, again): this side's legs go to
//!    [`crate::session::CallSession::add_own_relay`], the peer's side is
//!    pushed to the peer by that supernode, and the peer binds it.
//!
//! The new relay becomes a target once its bind is confirmed, and the path
//! manager prefers a relay not tried yet over the one that died, so media
//! moves there as soon as the peer bound its side. The shell is asked again
//! every [`MigrationConfig::retry_ms`] while no path is alive (the peer may
//! not have rejoined yet, so the signal did not reach it), at most
//! [`MigrationConfig::max_attempts`] times per loss; when a path is alive
//! again the loss is over. A call whose peer really went away ends by the
//! media timeout as before.

/// Ask the shell to migrate this long after no path is alive any more.
pub const MIGRATE_AFTER_MS: u64 = 100;
/// Ask again this often while no path is alive.
pub const MIGRATE_RETRY_MS: u64 = 250;
/// Most requests per loss.
pub const MAX_MIGRATE_ATTEMPTS: u32 = 32;

/// Timing of the migration requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationConfig {
    /// See [`MIGRATE_AFTER_MS`].
    pub after_ms: u64,
    /// See [`MIGRATE_RETRY_MS`].
    pub retry_ms: u64,
    /// See [`MAX_MIGRATE_ATTEMPTS`].
    pub max_attempts: u32,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            after_ms: MIGRATE_AFTER_MS,
            retry_ms: MIGRATE_RETRY_MS,
            max_attempts: MAX_MIGRATE_ATTEMPTS,
        }
    }
}

/// One loss of every path, as the call report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathLoss {
    /// When no path was alive any more (ms on the session's clock).
    pub lost_ms: u64,
    /// When a path was alive again (`None`: not before the end).
    pub back_ms: Option<u64>,
    /// Migrations asked of the shell during this loss.
    pub attempts: u32,
}

/// Most losses remembered for the report.
const MAX_LOSSES: usize = 32;

/// The migration state of one call.
#[derive(Debug, Clone, Default)]
pub struct RelayMigration {
    config: MigrationConfig,
    /// A path was alive at least once (before that, the call is still
    /// setting up its paths: nothing to migrate from).
    worked: bool,
    /// The loss going on, if any.
    current: Option<PathLoss>,
    last_attempt_ms: Option<u64>,
    losses: Vec<PathLoss>,
}

impl RelayMigration {
    pub fn new(config: MigrationConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Whether some path is alive at `now_ms`; returns the attempt number
    /// (1, 2, ...) when the shell must migrate now.
    pub fn update(&mut self, any_alive: bool, now_ms: u64) -> Option<u32> {
        if any_alive {
            self.worked = true;
            if let Some(mut loss) = self.current.take() {
                loss.back_ms = Some(now_ms);
                self.remember(loss);
            }
            self.last_attempt_ms = None;
            return None;
        }
        if !self.worked {
            return None;
        }
        let loss = self.current.get_or_insert(PathLoss {
            lost_ms: now_ms,
            back_ms: None,
            attempts: 0,
        });
        if loss.attempts >= self.config.max_attempts {
            return None;
        }
        let due = match self.last_attempt_ms {
            None => loss.lost_ms.saturating_add(self.config.after_ms),
            Some(last) => last.saturating_add(self.config.retry_ms),
        };
        if now_ms < due {
            return None;
        }
        loss.attempts += 1;
        self.last_attempt_ms = Some(now_ms);
        Some(loss.attempts)
    }

    /// When [`Self::update`] may ask next (`None`: not before a path is
    /// alive again and lost again).
    pub fn poll_timeout(&self) -> Option<u64> {
        let loss = self.current?;
        if loss.attempts >= self.config.max_attempts {
            return None;
        }
        Some(match self.last_attempt_ms {
            None => loss.lost_ms.saturating_add(self.config.after_ms),
            Some(last) => last.saturating_add(self.config.retry_ms),
        })
    }

    fn remember(&mut self, loss: PathLoss) {
        if self.losses.len() < MAX_LOSSES {
            self.losses.push(loss);
        }
    }

    /// Every loss so far, the one going on last.
    pub fn losses(&self) -> Vec<PathLoss> {
        self.losses.iter().copied().chain(self.current).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_asked_before_a_path_worked() {
        let mut m = RelayMigration::new(MigrationConfig::default());
        for now in (0..20_000).step_by(10) {
            assert_eq!(m.update(false, now), None);
        }
        assert!(m.losses().is_empty());
    }

    #[test]
    fn a_loss_asks_after_the_delay_then_every_retry_then_stops() {
        let c = MigrationConfig::default();
        let mut m = RelayMigration::new(c);
        m.update(true, 0);
        assert_eq!(m.update(false, 1_000), None);
        assert_eq!(m.poll_timeout(), Some(1_000 + c.after_ms));
        assert_eq!(m.update(false, 1_000 + c.after_ms), Some(1));
        assert_eq!(m.update(false, 1_000 + c.after_ms + c.retry_ms / 2), None);
        assert_eq!(m.update(false, 1_000 + c.after_ms + c.retry_ms), Some(2));
        let asked = (1_000 + c.after_ms + c.retry_ms + 10..100_000)
            .step_by(10)
            .filter(|&now| m.update(false, now).is_some())
            .count();
        assert_eq!(asked as u32, c.max_attempts - 2, "bounded");
        assert_eq!(m.poll_timeout(), None);
        // A path is alive again: the loss is over, a new one asks again.
        m.update(true, 100_000);
        assert_eq!(m.losses()[0].back_ms, Some(100_000));
        assert_eq!(m.losses()[0].attempts, c.max_attempts);
        m.update(false, 200_000);
        assert_eq!(m.update(false, 200_000 + c.after_ms), Some(1));
        assert_eq!(m.losses().len(), 2);
    }
}
