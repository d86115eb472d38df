//! Hold on the wire: what a call remembers of its holds, both ways.
//!
//! This side's hold is signalled to the peer (a MACed `hold` signal,
//! [`natter_proto::call::CallSetup::hold`]) when it changes; its media does
//! not change: a frame still goes out every 20 ms (silence), so packet
//! timing says nothing and the path, the NAT mappings and the peer's media
//! timeout stay as they were. The peer's holds arrive as
//! [`natter_proto::call::CallEvent::PeerHold`] and show in the live figures
//! ("on hold by peer") and the call report. Plain state, no I/O: the call
//! loop passes the frame counter and the time.

use std::time::Duration;

/// A hold scheduled by the command line (`natter call --hold-at`): on hold
/// from `at` after the media started, for `length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledHold {
    pub at: Duration,
    pub length: Duration,
}

impl ScheduledHold {
    /// Whether the call is on hold `elapsed` after the media started.
    pub fn covers(&self, elapsed: Duration) -> bool {
        elapsed >= self.at && elapsed < self.at.saturating_add(self.length)
    }
}

/// Both sides' holds during one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldLog {
    /// Whether this side is on hold (as last signalled).
    own: bool,
    /// This side's holds: first voice frame on hold, first one after.
    held_frames: Vec<[u64; 2]>,
    /// Since when (ms of the call) the peer has had the call on hold.
    peer_since_ms: Option<u64>,
    peer_holds: u64,
    peer_held_ms: u64,
}

impl HoldLog {
    /// This side's hold is now `held`, with `next_frame` the number of the
    /// next voice frame to go out; true when it changed (then tell the peer).
    pub fn set_own(&mut self, held: bool, next_frame: u64) -> bool {
        if held == self.own {
            return false;
        }
        self.own = held;
        if held {
            self.held_frames.push([next_frame, next_frame]);
        } else if let Some(last) = self.held_frames.last_mut() {
            last[1] = next_frame;
        }
        true
    }

    /// The peer put the call on hold (`on`) or resumed it at `now_ms`.
    pub fn peer(&mut self, on: bool, now_ms: u64) {
        match (on, self.peer_since_ms) {
            (true, None) => {
                self.peer_since_ms = Some(now_ms);
                self.peer_holds += 1;
            }
            (false, Some(since)) => {
                self.peer_since_ms = None;
                self.peer_held_ms += now_ms.saturating_sub(since);
            }
            _ => {}
        }
    }

    /// Whether the peer has the call on hold.
    pub fn held_by_peer(&self) -> bool {
        self.peer_since_ms.is_some()
    }

    /// The call ended at `now_ms` with `next_frame` the frame counter:
    /// closes the holds still open. Returns (this side's held frames, the
    /// peer's holds, how long the peer held in ms).
    pub fn finish(mut self, next_frame: u64, now_ms: u64) -> (Vec<[u64; 2]>, u64, u64) {
        if self.own
            && let Some(last) = self.held_frames.last_mut()
        {
            last[1] = next_frame;
        }
        self.peer(false, now_ms);
        (self.held_frames, self.peer_holds, self.peer_held_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_holds_are_frame_spans_and_only_changes_are_signalled() {
        let mut h = HoldLog::default();
        assert!(!h.set_own(false, 0));
        assert!(h.set_own(true, 100));
        assert!(!h.set_own(true, 101), "no change, no signal");
        assert!(h.set_own(false, 150));
        assert!(h.set_own(true, 300));
        let (frames, peer_holds, peer_ms) = h.finish(320, 9_000);
        assert_eq!(frames, vec![[100, 150], [300, 320]]);
        assert_eq!((peer_holds, peer_ms), (0, 0));
    }

    #[test]
    fn the_peers_holds_are_counted_and_timed() {
        let mut h = HoldLog::default();
        h.peer(false, 10);
        assert!(!h.held_by_peer());
        h.peer(true, 1_000);
        h.peer(true, 1_500);
        assert!(h.held_by_peer());
        h.peer(false, 3_000);
        h.peer(true, 5_000);
        let (_, holds, ms) = h.finish(0, 5_250);
        assert_eq!((holds, ms), (2, 2_250));
    }

    #[test]
    fn a_scheduled_hold_covers_its_window() {
        let s = ScheduledHold {
            at: Duration::from_secs(2),
            length: Duration::from_secs(3),
        };
        assert!(!s.covers(Duration::from_millis(1_999)));
        assert!(s.covers(Duration::from_secs(2)));
        assert!(s.covers(Duration::from_millis(4_999)));
        assert!(!s.covers(Duration::from_secs(5)));
    }
}
