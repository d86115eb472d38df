//! The receiver's adaptive jitter buffer (sans-IO).
//!
//! Media frames arrive with their 16-bit frame number (see PROTOCOL.md 7.4).
//! [`JitterBuffer::handle_frame`] files them; the playout clock calls
//! [`JitterBuffer::poll_playout`] once per frame period and gets what to play:
//! the frame itself, the *next* frame (whose Opus in-band FEC rebuilds the
//! missing one), or a request to conceal the loss.
//!
//! Playout keeps a constant offset `O = now - next * frame_ms` between the
//! receiver's clock and media time while it plays one frame per period: a
//! frame with transit `arrival - number * frame_ms` is in time exactly when
//! its transit is at most `O`. The buffer keeps the transits of the last
//! [`TRANSIT_WINDOW`] frames and aims `O` at their 99th percentile (nearest
//! rank), so about 1 % of frames may come late while the delay it adds stays
//! as small as the jitter allows:
//!
//! * **grow**: when the frame due is missing and `O` is below the aim, it
//!   plays a concealment and keeps waiting for that frame (`O` += one frame);
//! * **shrink**: when `O` exceeds the aim by one and a half frames and the
//!   next two frames are here, it skips one (`O` -= one frame), at most once
//!   every [`SHRINK_EVERY`] periods (each step moves the audio by a frame:
//!   few and slow steps keep it steady).
//!
//! The aim never exceeds `max_delay` frames above the lowest recent transit.
//! The delay each played frame waited (playout time minus arrival) is kept
//! in a bounded histogram for the call report ([`JitterBuffer::added_delay_ms`]).
//! RFC 3550's interarrival jitter is measured for the report too. The buffer
//! holds at most `capacity` frames: anything beyond is dropped, never queued.

use std::collections::{BTreeMap, VecDeque};

/// Transits (arrival minus media time) the playout aim is computed from.
pub const TRANSIT_WINDOW: usize = 128;
/// Periods between two shrinking skips, at least.
pub const SHRINK_EVERY: u32 = 50;
/// Buckets (1 ms each) of the added-delay histogram; the last one holds
/// everything longer.
const DELAY_BUCKETS: usize = 1000;

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
    /// Periods held (concealed without moving on) to grow the delay.
    pub held: u64,
}

/// The jitter buffer of one incoming stream.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    config: JitterConfig,
    /// Frames ahead of playout with their arrival time (ms).
    frames: BTreeMap<u64, (Vec<u8>, u64)>,
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
    /// Transits of the last frames (arrival ms - number * frame_ms).
    transits: VecDeque<i64>,
    /// Periods since the last shrinking skip.
    since_shrink: u32,
    /// Histogram of the delay played frames waited, 1 ms buckets.
    added: Vec<u64>,
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
            transits: VecDeque::with_capacity(TRANSIT_WINDOW),
            since_shrink: 0,
            added: vec![0; DELAY_BUCKETS],
            stats: JitterStats::default(),
        }
    }

    /// The `q` quantile (0..=1, nearest rank) of the delay played frames
    /// waited in the buffer (playout time minus arrival), in ms; `None`
    /// before the first frame played.
    pub fn added_delay_ms(&self, q: f64) -> Option<u32> {
        let total: u64 = self.added.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, &n) in self.added.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(ms as u32);
            }
        }
        Some(DELAY_BUCKETS as u32 - 1)
    }

    /// Frames that came after their playout time, in percent of the frames
    /// that came at all (duplicates not counted); 0 before any.
    pub fn late_loss_pct(&self) -> f64 {
        let came = self.stats.received + self.stats.late;
        if came == 0 {
            0.0
        } else {
            100.0 * self.stats.late as f64 / came as f64
        }
    }

    /// The playout offset to aim at (ms, same origin as the transits): the
    /// 99th percentile of recent transits, at most `max_delay` frames above
    /// their 5th percentile (one early outlier cannot pull the cap down);
    /// and that 5th percentile. `None` before any frame arrived.
    fn aim(&self) -> Option<(i64, i64)> {
        let mut t: Vec<i64> = self.transits.iter().copied().collect();
        if t.is_empty() {
            return None;
        }
        t.sort_unstable();
        let high = t[(t.len() * 99).div_ceil(100).max(1) - 1];
        let low = t[t.len() * 5 / 100];
        let cap = low + i64::from(self.config.max_delay * self.config.frame_ms);
        Some((high.min(cap), low))
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
                // a late frame's transit is what the aim must learn from
                self.note_transit(n, now_ms);
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
        self.frames.insert(n, (payload, now_ms));
        self.stats.received += 1;
        Ok(())
    }

    fn note_transit(&mut self, n: u64, now_ms: u64) {
        let transit = now_ms as i64 - (n as i64) * i64::from(self.config.frame_ms);
        if self.transits.len() == TRANSIT_WINDOW {
            self.transits.pop_front();
        }
        self.transits.push_back(transit);
        // the target delay (reported): the aim above the lowest transit
        if let Some((aim, lo)) = self.aim() {
            let frame = i64::from(self.config.frame_ms);
            let want = (aim - lo + frame - 1) / frame;
            self.target = (want.max(0) as u32).clamp(self.config.min_delay, self.config.max_delay);
        }
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
        self.note_transit(n, now_ms);
    }

    /// What to play now; call once per frame period. `None` until playout
    /// has started (the first frame waited out the target delay).
    pub fn poll_playout(&mut self, now_ms: u64) -> Option<Playout> {
        let frame = i64::from(self.config.frame_ms);
        let mut next = match self.next {
            Some(next) => next,
            None => {
                let first = self.first_arrival_ms?;
                let lowest = *self.frames.keys().next()?;
                if now_ms < first + u64::from(self.config.min_delay * self.config.frame_ms) {
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
        let offset = now_ms as i64 - next as i64 * frame;
        let aim = self.aim().map_or(offset, |(aim, _)| aim);
        self.since_shrink = self.since_shrink.saturating_add(1);
        if !self.frames.contains_key(&next) && offset < aim {
            // grow: the frame due is probably only late; wait one period
            // (not counted as concealed: no frame is lost by it)
            self.stats.held += 1;
            return Some(Playout::Conceal);
        }
        if offset - frame >= aim + frame / 2
            && self.since_shrink >= SHRINK_EVERY
            && self.frames.contains_key(&next)
            && self.frames.contains_key(&(next + 1))
        {
            // shrink: one frame less of delay still covers the aim
            self.frames.remove(&next);
            self.stats.skipped += 1;
            self.since_shrink = 0;
            next += 1;
        }
        self.next = Some(next + 1);
        let playout = if let Some((payload, arrival)) = self.frames.remove(&next) {
            self.stats.played += 1;
            let waited = now_ms.saturating_sub(arrival) as usize;
            self.added[waited.min(DELAY_BUCKETS - 1)] += 1;
            Playout::Frame(payload)
        } else if let Some((following, _)) = self.frames.get(&(next + 1)) {
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
        // transits spread over 60 ms: three frames cover them
        assert_eq!(jittery.target_delay_ms(), 60);
        let mut wild = jb();
        for n in 0..200u16 {
            let arrival = u64::from(n) * 20 + if n % 2 == 0 { 0 } else { 400 };
            let _ = wild.handle_frame(n, vec![], arrival);
            wild.poll_playout(u64::from(n) * 20 + 1);
        }
        assert_eq!(wild.target_delay_ms(), 200, "bounded by max_delay");
    }

    #[test]
    fn the_delay_grows_when_frames_come_late_and_shrinks_again() {
        let mut jb = jb();
        // 5 s at 20 ms transit, then 5 s at 100 ms, then 10 s at 20 ms again
        let transit = |m: u64| if (250..500).contains(&m) { 100 } else { 20 };
        let mut arrivals: Vec<(u64, u64)> = (0..1000).map(|m| (m * 20 + transit(m), m)).collect();
        arrivals.sort_unstable();
        let mut arrivals = arrivals.into_iter().peekable();
        let (mut late, mut played) = (Vec::new(), 0);
        // playout ticks at 10 ms past each 20 ms
        for tick in (10..22_000).step_by(20) {
            while let Some(&(at, m)) = arrivals.peek() {
                if at > tick {
                    break;
                }
                arrivals.next();
                if jb.handle_frame(m as u16, vec![], at) == Err(JitterDrop::Late) {
                    late.push(m);
                }
            }
            if let Some(Playout::Frame(_)) = jb.poll_playout(tick) {
                played += 1;
            }
        }
        let s = jb.stats();
        // the jump costs a few late frames, then the buffer has grown
        assert!(!late.is_empty() && late.len() <= 8, "{late:?}");
        assert!(late.iter().all(|&m| (250..270).contains(&m)), "{late:?}");
        assert!(s.held >= 3, "{s:?}");
        // after transit fell back, it skipped frames to shrink again
        assert!(s.skipped >= 3, "{s:?}");
        let p50 = jb.added_delay_ms(0.5).unwrap();
        assert!(p50 <= 30, "p50 {p50}");
        assert!(played > 950, "{played}");
        assert!(jb.late_loss_pct() < 1.0);
    }
}
