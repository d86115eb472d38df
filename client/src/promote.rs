//! Supernode promotion: when a client becomes a supernode, and when it
//! steps down (sans-IO).
//!
//! A client that stays online (`natter online`) may run the supernode
//! library in its own process ([`crate::promoted`] does the I/O). Unlike
//! Skype's, the user can refuse (`--no-promote`, `promote = false` in the
//! config file), and [`Promotion`] only decides; every input carries the
//! time (milliseconds on the caller's clock), so the rule is tested on a
//! virtual clock:
//!
//! ```text
//!   Waiting ──(online for `after`)──► Checking ──(reachable, CPU spare)──► Starting
//!      ▲                                  │ not eligible: check again        │ certified
//!      └──────── after `recheck` ◄────────┘                                  ▼
//!   SteppedDown ◄──(quit, CPU busy for `busy_for`, no certificate in `cert_timeout`)── Serving
//! ```
//!
//! * **Eligible**: online for at least [`PromotePolicy::after`]; the
//!   netcheck ([`crate::netcheck`]) says the host is reachable from outside
//!   ([`Reachability::of`]: no NAT, or a full-cone NAT: endpoint-independent
//!   mapping and filtering that lets in packets from a port never sent to);
//!   the supernode's UDP and TCP ports bind (the shell reports a failed bind
//!   as not reachable); and the CPU has headroom: the load average per core
//!   is at most [`PromotePolicy::max_load`].
//! * **Stepping down**: the user quits (SIGTERM, Ctrl-C), the load stays
//!   over `max_load` for [`PromotePolicy::busy_for`], or no certificate came
//!   within [`PromotePolicy::cert_timeout`] of starting (the login server's
//!   policy did not approve the key). A node that stepped down is not
//!   promoted again in this run.
//!
//! Drive it like the other cores: `handle_*` for inputs, then drain
//! [`Promotion::poll_action`]; wake up at [`Promotion::poll_timeout`].

use std::collections::VecDeque;
use std::time::Duration;

use crate::netcheck::Report;

/// When a client becomes a supernode and when it gives up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromotePolicy {
    /// Online at least this long first (`--promote-after`).
    pub after: Duration,
    /// Highest 1-minute load average per core to start, and to stay
    /// (`--promote-max-load`).
    pub max_load: f64,
    /// A busy CPU for this long steps down.
    pub busy_for: Duration,
    /// Started without a certificate for this long steps down.
    pub cert_timeout: Duration,
    /// A client found not eligible checks again after this long.
    pub recheck: Duration,
}

/// `--promote-after` by default: an hour online.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(3600);
/// `--promote-max-load` by default: half of each core busy at most.
pub const DEFAULT_MAX_LOAD: f64 = 0.5;

impl Default for PromotePolicy {
    fn default() -> Self {
        Self {
            after: DEFAULT_AFTER,
            max_load: DEFAULT_MAX_LOAD,
            busy_for: Duration::from_secs(30),
            cert_timeout: Duration::from_secs(60),
            recheck: Duration::from_secs(300),
        }
    }
}

/// Whether this host can be reached from outside, as the netcheck sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// Not behind a NAT: the public address is the local one.
    Open,
    /// A full-cone NAT: one public mapping for every destination and
    /// packets let in from ports it never sent to.
    FullCone,
    /// Not reachable, and why.
    No(String),
}

impl Reachability {
    /// Reads a netcheck report. A reflector with one IP cannot tell
    /// endpoint-independent filtering from address-dependent filtering, so
    /// `FullCone` means "not port-dependent" here (docs/ARCHITECTURE.md).
    pub fn of(report: &Report) -> Self {
        if !report.udp {
            return Self::No("UDP blocked (no reflector answered)".into());
        }
        if report.behind_nat == Some(false) {
            return Self::Open;
        }
        if report.mapping == "endpoint-independent" && report.filtering == "not-port-dependent" {
            // The supernode's sockets are not the probe's: only a NAT that
            // keeps the local port gives them a public port known ahead.
            if report.port_preserved != Some(true) {
                return Self::No("full-cone NAT without port preservation".into());
            }
            return Self::FullCone;
        }
        Self::No(format!(
            "behind a NAT (mapping {}, filtering {})",
            report.mapping, report.filtering
        ))
    }

    /// Open or full cone.
    pub fn reachable(&self) -> bool {
        !matches!(self, Self::No(_))
    }
}

/// Why a promoted node stepped down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepDownReason {
    /// The user quit (or the online process was told to stop).
    Quit,
    /// The CPU stayed busy.
    Busy,
    /// No supernode certificate within the timeout (not approved).
    NoCertificate,
    /// The supernode could not start (a port did not bind, ...).
    Failed(String),
}

impl std::fmt::Display for StepDownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quit => f.write_str("quit"),
            Self::Busy => f.write_str("CPU busy"),
            Self::NoCertificate => f.write_str("no supernode certificate in time (not approved)"),
            Self::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Where promotion stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// An ordinary client; `last_refusal` says why the last check failed.
    Waiting { last_refusal: Option<String> },
    /// The netcheck is running.
    Checking,
    /// The supernode runs and waits for its certificate.
    Starting { since_ms: u64 },
    /// Certified: announced, serving.
    Serving { since_ms: u64 },
    /// Stopped serving; not promoted again in this run.
    SteppedDown(StepDownReason),
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the netcheck and read the load, then call
    /// [`Promotion::handle_check`].
    Check,
    /// Start the supernode in this process.
    Promote,
    /// Stop the supernode (stop announcing, close its connections: peers
    /// re-home the directory records, relayed calls migrate).
    StepDown(StepDownReason),
}

/// The promotion state machine of one online client.
#[derive(Debug, Clone)]
pub struct Promotion {
    policy: PromotePolicy,
    online_since_ms: u64,
    next_check_ms: u64,
    state: State,
    busy_since_ms: Option<u64>,
    actions: VecDeque<Action>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Promotion {
    /// A client online since `now_ms`.
    pub fn new(policy: PromotePolicy, now_ms: u64) -> Self {
        Self {
            policy,
            online_since_ms: now_ms,
            next_check_ms: now_ms.saturating_add(ms(policy.after)),
            state: State::Waiting { last_refusal: None },
            busy_since_ms: None,
            actions: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// How long the client has been online at `now_ms`.
    pub fn online_for(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.online_since_ms))
    }

    /// The time passed: starts a check when due, steps down a node still
    /// without a certificate after `cert_timeout`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        match self.state {
            State::Waiting { .. } if now_ms >= self.next_check_ms => {
                self.state = State::Checking;
                self.actions.push_back(Action::Check);
            }
            State::Starting { since_ms }
                if now_ms.saturating_sub(since_ms) >= ms(self.policy.cert_timeout) =>
            {
                self.step_down(StepDownReason::NoCertificate);
            }
            _ => {}
        }
    }

    /// The check's result: how reachable the host is and the load average
    /// per core.
    pub fn handle_check(&mut self, now_ms: u64, reachability: &Reachability, load: f64) {
        if self.state != State::Checking {
            return;
        }
        let refusal = match reachability {
            Reachability::No(why) => Some(why.clone()),
            _ if load > self.policy.max_load => Some(format!(
                "CPU busy (load {load:.2} per core, at most {:.2})",
                self.policy.max_load
            )),
            _ => None,
        };
        match refusal {
            Some(why) => {
                self.next_check_ms = now_ms.saturating_add(ms(self.policy.recheck));
                self.state = State::Waiting {
                    last_refusal: Some(why),
                };
            }
            None => {
                self.state = State::Starting { since_ms: now_ms };
                self.busy_since_ms = None;
                self.actions.push_back(Action::Promote);
            }
        }
    }

    /// The supernode has its certificate.
    pub fn handle_certified(&mut self, now_ms: u64) {
        if let State::Starting { .. } = self.state {
            self.state = State::Serving { since_ms: now_ms };
        }
    }

    /// The supernode could not start.
    pub fn handle_failed(&mut self, why: String) {
        if matches!(self.state, State::Starting { .. } | State::Serving { .. }) {
            self.state = State::SteppedDown(StepDownReason::Failed(why));
        }
    }

    /// A load sample (load average per core) while promoted: over
    /// `max_load` for `busy_for` steps down.
    pub fn handle_load(&mut self, now_ms: u64, load: f64) {
        if !matches!(self.state, State::Starting { .. } | State::Serving { .. }) {
            return;
        }
        if load <= self.policy.max_load {
            self.busy_since_ms = None;
            return;
        }
        let since = *self.busy_since_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= ms(self.policy.busy_for) {
            self.step_down(StepDownReason::Busy);
        }
    }

    /// The user quits: a promoted node steps down; an ordinary client is
    /// never promoted after this.
    pub fn handle_quit(&mut self) {
        match self.state {
            State::Starting { .. } | State::Serving { .. } => self.step_down(StepDownReason::Quit),
            State::SteppedDown(_) => {}
            _ => self.state = State::SteppedDown(StepDownReason::Quit),
        }
    }

    fn step_down(&mut self, reason: StepDownReason) {
        self.state = State::SteppedDown(reason.clone());
        self.actions.push_back(Action::StepDown(reason));
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Promotion::handle_timeout`] must be called next (`None`:
    /// only other inputs change anything).
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Waiting { .. } => Some(self.next_check_ms),
            State::Starting { since_ms } => {
                Some(since_ms.saturating_add(ms(self.policy.cert_timeout)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PromotePolicy {
        PromotePolicy {
            after: Duration::from_secs(10),
            max_load: 0.5,
            busy_for: Duration::from_secs(30),
            cert_timeout: Duration::from_secs(60),
            recheck: Duration::from_secs(300),
        }
    }

    fn report(behind_nat: Option<bool>, mapping: &str, filtering: &str) -> Report {
        Report {
            udp: true,
            local: None,
            mapped: Vec::new(),
            mapping: mapping.into(),
            filtering: filtering.into(),
            port_preserved: None,
            sequential_allocation: None,
            behind_nat,
        }
    }

    /// Promoted at t = 10 s, certified at 11 s.
    fn serving() -> Promotion {
        let mut p = Promotion::new(policy(), 0);
        p.handle_timeout(10_000);
        assert_eq!(p.poll_action(), Some(Action::Check));
        p.handle_check(10_500, &Reachability::Open, 0.1);
        assert_eq!(p.poll_action(), Some(Action::Promote));
        p.handle_certified(11_000);
        assert_eq!(p.state(), &State::Serving { since_ms: 11_000 });
        p
    }

    #[test]
    fn nothing_happens_before_the_threshold() {
        let mut p = Promotion::new(policy(), 1_000);
        assert_eq!(p.poll_timeout(), Some(11_000));
        p.handle_timeout(10_999);
        assert_eq!(p.poll_action(), None);
        assert!(matches!(p.state(), State::Waiting { .. }));
        p.handle_timeout(11_000);
        assert_eq!(p.poll_action(), Some(Action::Check));
        assert_eq!(p.state(), &State::Checking);
    }

    #[test]
    fn an_open_or_full_cone_host_with_spare_cpu_is_promoted() {
        serving();
        let mut p = Promotion::new(policy(), 0);
        p.handle_timeout(10_000);
        p.poll_action();
        p.handle_check(10_000, &Reachability::FullCone, 0.5);
        assert_eq!(p.poll_action(), Some(Action::Promote));
    }

    #[test]
    fn a_host_behind_a_nat_or_busy_waits_and_checks_again() {
        let mut p = Promotion::new(policy(), 0);
        p.handle_timeout(10_000);
        p.poll_action();
        let nat = Reachability::of(&report(
            Some(true),
            "address-and-port-dependent",
            "address-and-port-dependent",
        ));
        assert!(!nat.reachable());
        p.handle_check(10_000, &nat, 0.0);
        assert_eq!(p.poll_action(), None);
        assert!(
            matches!(p.state(), State::Waiting { last_refusal: Some(why) } if why.contains("NAT"))
        );
        // Checked again after `recheck`, then too busy.
        assert_eq!(p.poll_timeout(), Some(310_000));
        p.handle_timeout(310_000);
        assert_eq!(p.poll_action(), Some(Action::Check));
        p.handle_check(310_000, &Reachability::Open, 0.9);
        assert_eq!(p.poll_action(), None);
        assert!(
            matches!(p.state(), State::Waiting { last_refusal: Some(why) } if why.contains("CPU"))
        );
    }

    #[test]
    fn the_netcheck_report_decides_reachability() {
        assert_eq!(
            Reachability::of(&report(Some(false), "endpoint-independent", "unknown")),
            Reachability::Open
        );
        let mut full_cone = report(Some(true), "endpoint-independent", "not-port-dependent");
        assert!(!Reachability::of(&full_cone).reachable());
        full_cone.port_preserved = Some(true);
        assert_eq!(Reachability::of(&full_cone), Reachability::FullCone);
        // A port-restricted cone: endpoint-independent mapping, but the
        // filter wants the port it sent to.
        assert!(
            !Reachability::of(&report(
                Some(true),
                "endpoint-independent",
                "address-and-port-dependent"
            ))
            .reachable()
        );
        let mut blocked = report(None, "unknown", "unknown");
        blocked.udp = false;
        assert!(!Reachability::of(&blocked).reachable());
    }

    #[test]
    fn no_certificate_within_the_timeout_steps_down() {
        let mut p = Promotion::new(policy(), 0);
        p.handle_timeout(10_000);
        p.poll_action();
        p.handle_check(10_000, &Reachability::Open, 0.0);
        assert_eq!(p.poll_action(), Some(Action::Promote));
        assert_eq!(p.poll_timeout(), Some(70_000));
        p.handle_timeout(69_999);
        assert_eq!(p.poll_action(), None);
        p.handle_timeout(70_000);
        assert_eq!(
            p.poll_action(),
            Some(Action::StepDown(StepDownReason::NoCertificate))
        );
        // Never promoted again in this run.
        assert_eq!(p.poll_timeout(), None);
        p.handle_timeout(1_000_000);
        assert_eq!(p.poll_action(), None);
    }

    #[test]
    fn a_busy_cpu_steps_down_only_when_it_stays_busy() {
        let mut p = serving();
        p.handle_load(20_000, 0.9);
        p.handle_load(40_000, 0.9);
        // A quiet sample resets the busy spell.
        p.handle_load(45_000, 0.2);
        p.handle_load(50_000, 0.9);
        p.handle_load(79_999, 0.9);
        assert_eq!(p.poll_action(), None);
        p.handle_load(80_000, 0.9);
        assert_eq!(
            p.poll_action(),
            Some(Action::StepDown(StepDownReason::Busy))
        );
        assert_eq!(p.state(), &State::SteppedDown(StepDownReason::Busy));
    }

    #[test]
    fn quitting_steps_down_a_promoted_node_and_stops_an_unpromoted_one() {
        let mut p = serving();
        p.handle_quit();
        assert_eq!(
            p.poll_action(),
            Some(Action::StepDown(StepDownReason::Quit))
        );
        p.handle_quit();
        assert_eq!(p.poll_action(), None);

        let mut q = Promotion::new(policy(), 0);
        q.handle_quit();
        // Nothing was started, so there is nothing to stop.
        assert_eq!(q.poll_action(), None);
        q.handle_timeout(100_000);
        assert_eq!(q.poll_action(), None);
    }

    #[test]
    fn a_failed_start_is_final() {
        let mut p = Promotion::new(policy(), 0);
        p.handle_timeout(10_000);
        p.poll_action();
        p.handle_check(10_000, &Reachability::Open, 0.0);
        p.poll_action();
        p.handle_failed("port in use".into());
        assert!(matches!(
            p.state(),
            State::SteppedDown(StepDownReason::Failed(_))
        ));
        assert_eq!(p.poll_timeout(), None);
    }
}
