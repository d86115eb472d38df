//! The receiver's adaptive jitter buffer (sans-IO).
//!
//! Media frames arrive with their 16-bit frame number (see PROTOCOL.md 7.4).
//! [`JitterBuffer::handle_frame`] files them; the playout clock calls
//! [`JitterBuffer::poll_playout`] once per frame period and gets what to play:
//! the frame itself, the *next* frame (whose Opus in-band FEC rebuilds the
//! missing one), or a request to conceal the loss.
//!
//! The target delay follows the measured interarrival jitter (RFC 3550's
//! estimator) and stays within the configured bounds. The buffer holds at most
//! `capacity` frames: anything beyond is dropped, never queued.

use std::collections::BTreeMap;

/// Tunables of the jitter buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Duration of one frame, in ms.
    pub frame_ms: u32,
    /// Smallest target delay, in frames.
    pub min_delay: u32,
    /// Largest target delay, in frames.
    pub max_delay: u32,
    /// Most frames held.
    pub capacity: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            frame_ms: 20,
            min_delay: 2,
            max_delay: 10,
            capacity: 64,
        }
    }
}

/// Why a frame was not filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JitterDrop {
    #[error("frame arrived after its playout time")]
    Late,
    #[error("frame is already buffered")]
    Duplicate,
    #[error("frame is too far ahead of playout (buffer full)")]
    TooEarly,
}

/// What to play for one frame period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// The frame as received.
    Frame(Vec<u8>),
    /// The frame was lost but the next one is here: decode this payload with
    /// FEC to rebuild the lost frame.
    Fec(Vec<u8>),
    /// Nothing usable: conceal (Opus packet-loss concealment).
    Conceal,
}

/// Counters, for call statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub late: u64,
    pub duplicate: u64,
    pub too_early: u64,
    pub played: u64,
    pub fec: u64,
    pub concealed: u64,
    /// Frames skipped to shrink the delay after jitter fell.
    pub skipped: u64,
}

/// The jitter buffer of one incoming stream.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    config: JitterConfig,
    frames: BTreeMap<u64, Vec<u8>>,
    /// Extended number of the next frame to play, once playout started.
    next: Option<u64>,
    /// Highest extended frame number received.
    highest: Option<u64>,
    /// First arrival, to know when to start playout.
    first_arrival_ms: Option<u64>,
    /// (arrival ms, frame number) of the previous packet, for the jitter estimate.
    last_transit: Option<i64>,
    /// RFC 3550 interarrival jitter, in ms * 16 (fixed point).
    jitter16: i64,
    target: u32,
    stats: JitterStats,
}

impl JitterBuffer {
    /// An empty buffer.
    pub fn new(config: JitterConfig) -> Self {
        Self {
            config,
            frames: BTreeMap::new(),
            next: None,
            highest: None,
            first_arrival_ms: None,
            last_transit: None,
            jitter16: 0,
            target: config.min_delay,
            stats: JitterStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Measured interarrival jitter, in ms.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter16 as f64 / 16.0
    }

    /// Current target delay, in ms.
    pub fn target_delay_ms(&self) -> u32 {
        self.target * self.config.frame_ms
    }

    /// Frames buffered ahead of playout.
    pub fn depth(&self) -> usize {
        self.frames.len()
    }

    /// The delay the buffer currently adds, in ms: frames held ahead of playout.
    pub fn current_delay_ms(&self) -> u32 {
        match (self.next, self.highest) {
            (Some(next), Some(highest)) if highest >= next => {
                ((highest - next + 1) as u32).saturating_mul(self.config.frame_ms)
            }
            _ => 0,
        }
    }

    /// The extended frame number nearest to the stream's position.
    fn extend(&self, number: u16) -> u64 {
        let reference = self
            .next
            .or(self.highest)
            .unwrap_or(u64::from(number) + (1 << 16));
        let base = reference & !0xFFFF;
        let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
        candidates
            .into_iter()
            .map(|b| b | u64::from(number))
            .min_by_key(|c| c.abs_diff(reference))
            .unwrap_or(u64::from(number))
    }

    /// Files a received frame. `now_ms` is the receiver's clock.
    pub fn handle_frame(
        &mut self,
        number: u16,
        payload: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), JitterDrop> {
        // Frame numbers start at 2^16 so the first stream position never
        // wraps below zero.
        let n = self.extend(number);
        if let Some(next) = self.next {
            if n < next {
                self.stats.late += 1;
                return Err(JitterDrop::Late);
            }
            if n >= next + self.config.capacity as u64 {
                self.stats.too_early += 1;
                return Err(JitterDrop::TooEarly);
            }
        } else if self.frames.len() >= self.config.capacity {
            self.stats.too_early += 1;
            return Err(JitterDrop::TooEarly);
        }
        if self.frames.contains_key(&n) {
            self.stats.duplicate += 1;
            return Err(JitterDrop::Duplicate);
        }
        self.update_jitter(n, now_ms);
        self.first_arrival_ms.get_or_insert(now_ms);
        self.highest = Some(self.highest.map_or(n, |h| h.max(n)));
        self.frames.insert(n, payload);
        self.stats.received += 1;
        Ok(())
    }

    fn update_jitter(&mut self, n: u64, now_ms: u64) {
        // Transit time up to a constant: arrival minus media time.
        let transit = now_ms as i64 - (n as i64) * i64::from(self.config.frame_ms);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            // J += (|D| - J) / 16, kept as 16 * J.
            self.jitter16 += d - (self.jitter16 + 8) / 16;
        }
        self.last_transit = Some(transit);
        // Target: enough frames to cover about three times the jitter.
        let frame = i64::from(self.config.frame_ms);
        let want = 1 + (3 * self.jitter16 / 16 + frame - 1) / frame;
        self.target = (want as u32).clamp(self.config.min_delay, self.config.max_delay);
    }

    /// What to play now; call once per frame period. `None` until playout
    /// has started (the first frame waited out the target delay).
    pub fn poll_playout(&mut self, now_ms: u64) -> Option<Playout> {
        let next = match self.next {
            Some(next) => next,
            None => {
                let first = self.first_arrival_ms?;
                let lowest = *self.frames.keys().next()?;
                if now_ms < first + u64::from(self.target_delay_ms()) {
                    return None;
                }
                self.next = Some(lowest);
                lowest
            }
        };
        // Frames filed before playout started can lie beyond the window that
        // later arrivals are held to: drop them, so the buffer holds at most
        // `capacity` frames and they are not taken for excess delay.
        let beyond = self.frames.split_off(&(next + self.config.capacity as u64));
        self.stats.too_early += beyond.len() as u64;
        // Too much buffered for the current jitter: skip one old frame.
        let excess = self.frames.range(next..).count() as u32;
        let mut next = next;
        if excess > self.target + 2 && self.frames.remove(&next).is_some() {
            self.stats.skipped += 1;
            next += 1;
        }
        self.next = Some(next + 1);
        let playout = if let Some(frame) = self.frames.remove(&next) {
            self.stats.played += 1;
            Playout::Frame(frame)
        } else if let Some(following) = self.frames.get(&(next + 1)) {
            self.stats.fec += 1;
            Playout::Fec(following.clone())
        } else {
            self.stats.concealed += 1;
            Playout::Conceal
        };
        // Anything older than the playout point can never be played.
        self.frames = self.frames.split_off(&(next + 1));
        Some(playout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jb() -> JitterBuffer {
        JitterBuffer::new(JitterConfig::default())
    }

    #[test]
    fn plays_in_order_after_the_target_delay() {
        let mut jb = jb();
        for (i, n) in [3u16, 1, 2].into_iter().enumerate() {
            jb.handle_frame(n, vec![n as u8], i as u64).unwrap();
        }
        assert_eq!(jb.poll_playout(10), None, "still waiting out the delay");
        let played: Vec<_> = (0..3).map(|i| jb.poll_playout(40 + i * 20)).collect();
        assert_eq!(
            played,
            vec![
                Some(Playout::Frame(vec![1])),
                Some(Playout::Frame(vec![2])),
                Some(Playout::Frame(vec![3]))
            ]
        );
    }

    #[test]
    fn a_lost_frame_is_rebuilt_from_the_next_or_concealed() {
        let mut jb = jb();
        jb.handle_frame(10, vec![10], 0).unwrap();
        jb.handle_frame(12, vec![12], 40).unwrap();
        assert_eq!(jb.poll_playout(100), Some(Playout::Frame(vec![10])));
        assert_eq!(jb.poll_playout(120), Some(Playout::Fec(vec![12])));
        assert_eq!(jb.poll_playout(140), Some(Playout::Frame(vec![12])));
        assert_eq!(jb.poll_playout(160), Some(Playout::Conceal));
        let s = jb.stats();
        assert_eq!((s.played, s.fec, s.concealed), (2, 1, 1));
    }

    #[test]
    fn late_and_duplicate_frames_are_dropped_and_counted() {
        let mut jb = jb();
        jb.handle_frame(5, vec![5], 0).unwrap();
        assert_eq!(jb.handle_frame(5, vec![5], 1), Err(JitterDrop::Duplicate));
        jb.poll_playout(100);
        assert_eq!(jb.handle_frame(5, vec![5], 101), Err(JitterDrop::Late));
        assert_eq!(jb.handle_frame(4, vec![4], 101), Err(JitterDrop::Late));
        assert_eq!(jb.stats().late, 2);
        assert_eq!(jb.stats().duplicate, 1);
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut jb = jb();
        jb.handle_frame(0, vec![], 0).unwrap();
        jb.poll_playout(100);
        let cap = JitterConfig::default().capacity as u16;
        assert_eq!(
            jb.handle_frame(cap + 1, vec![], 101),
            Err(JitterDrop::TooEarly)
        );
        assert!(jb.depth() <= JitterConfig::default().capacity);
    }

    #[test]
    fn frame_numbers_wrap() {
        let mut jb = jb();
        for (i, n) in [65_534u16, 65_535, 0, 1].into_iter().enumerate() {
            jb.handle_frame(n, vec![n as u8], i as u64 * 20).unwrap();
        }
        let mut got = Vec::new();
        for i in 0..4 {
            if let Some(Playout::Frame(f)) = jb.poll_playout(200 + i * 20) {
                got.push(f[0]);
            }
        }
        assert_eq!(got, vec![254, 255, 0, 1]);
    }

    #[test]
    fn the_target_delay_follows_jitter_within_bounds() {
        let mut steady = jb();
        for n in 0..200u16 {
            steady.handle_frame(n, vec![], u64::from(n) * 20).unwrap();
            steady.poll_playout(u64::from(n) * 20 + 1);
        }
        assert_eq!(steady.target_delay_ms(), 40, "no jitter: the minimum");
        let mut jittery = jb();
        for n in 0..200u16 {
            // Alternating 0 / 60 ms extra transit.
            let arrival = u64::from(n) * 20 + if n % 2 == 0 { 0 } else { 60 };
            let _ = jittery.handle_frame(n, vec![], arrival);
            jittery.poll_playout(u64::from(n) * 20 + 1);
        }
        assert!(jittery.jitter_ms() > 30.0, "jitter {}", jittery.jitter_ms());
        assert!(jittery.target_delay_ms() > 100);
        assert!(jittery.target_delay_ms() <= 200, "bounded by max_delay");
    }
}
