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
//!   few and slow steps keep it steady), and only in a pause: the frame
//!   skipped, the one after it and the one played before are not speech
//!   (the sender's voice activity flag, [`JitterBuffer::handle_speech_frame`]:
//!   a frame skipped between two phrases loses nothing a listener hears, one
//!   skipped inside a word does), unless it has waited
//!   [`FORCED_SHRINK_EVERY`] periods for a pause.
//!
//! **Start.** Playout starts once the first frame has waited `min_delay`
//! frames, at the lowest frame received, unless that frame is stale: it
//! would wait more than `max_delay` frames longer than the freshest frame
//! (the lowest transit) received so far. A frame that waited before the
//! receiver read it (the peer sends as soon as it has the keys, the
//! receiver may start its media loop later; the first frames may come over
//! a path the sender has left) would otherwise set a playout delay the
//! stream does not need, for the whole call. Stale frames are dropped
//! ([`JitterStats::stale`]).
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
/// Periods after which a shrinking skip is made even without a pause
/// (continuous speech: the delay still comes down, slowly).
pub const FORCED_SHRINK_EVERY: u32 = 250;
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
    /// Frames dropped when playout started: they came before the start point
    /// (they had waited, so the stream's fresher frames set the delay).
    pub stale: u64,
}

/// A frame waiting for its playout time.
#[derive(Debug, Clone)]
struct Filed {
    payload: Vec<u8>,
    /// Arrival time, ms.
    arrival_ms: u64,
    /// The sender marked it as speech (not skipped to shrink the delay).
    speech: bool,
}

/// The jitter buffer of one incoming stream.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    config: JitterConfig,
    /// Frames ahead of playout.
    frames: BTreeMap<u64, Filed>,
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
    /// The frame played last was speech (no skip right after it).
    played_speech: bool,
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
            played_speech: false,
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

    /// Files a received frame. `now_ms` is the receiver's clock. Whether it
    /// is speech is not known: it may be skipped to shrink the delay (see
    /// [`JitterBuffer::handle_speech_frame`]).
    pub fn handle_frame(
        &mut self,
        number: u16,
        payload: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), JitterDrop> {
        self.handle_speech_frame(number, payload, now_ms, false)
    }

    /// Files a received frame with the sender's voice activity flag
    /// (`speech`): a frame of speech, or next to one, is not skipped to
    /// shrink the delay (short of [`FORCED_SHRINK_EVERY`]).
    pub fn handle_speech_frame(
        &mut self,
        number: u16,
        payload: Vec<u8>,
        now_ms: u64,
        speech: bool,
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
        self.frames.insert(
            n,
            Filed {
                payload,
                arrival_ms: now_ms,
                speech,
            },
        );
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

    /// Starts playout at `now_ms` if the first frame has waited `min_delay`
    /// frames: at the lowest frame that is not stale, i.e. would not wait
    /// more than `max_delay` frames longer than the freshest frame (lowest
    /// transit) of the window (see the module's "Start"); stale frames are
    /// dropped. Returns the first frame to play.
    fn start(&mut self, now_ms: u64) -> Option<u64> {
        let first = self.first_arrival_ms?;
        let lowest = *self.frames.keys().next()?;
        let frame = i64::from(self.config.frame_ms);
        let start_delay = i64::from(self.config.min_delay) * frame;
        if (now_ms as i64) < first as i64 + start_delay {
            return None;
        }
        let window = lowest..lowest + self.config.capacity as u64;
        let (lo, freshest) = self
            .frames
            .range(window)
            .map(|(&n, f)| (f.arrival_ms as i64 - n as i64 * frame, n))
            .min()?;
        // stale: it would wait more than `max_delay` frames longer than the
        // freshest frame does
        let limit = lo + i64::from(self.config.max_delay) * frame;
        let start = self
            .frames
            .keys()
            .copied()
            .find(|&n| now_ms as i64 - n as i64 * frame <= limit)
            .unwrap_or(freshest)
            .min(freshest);
        let kept = self.frames.split_off(&start);
        self.stats.stale += self.frames.len() as u64;
        self.frames = kept;
        // what the dropped frames' transits said is past
        self.transits.clear();
        let transits: Vec<i64> = self
            .frames
            .iter()
            .map(|(&n, f)| f.arrival_ms as i64 - n as i64 * frame)
            .collect();
        for t in transits.into_iter().rev().take(TRANSIT_WINDOW).rev() {
            self.transits.push_back(t);
        }
        self.next = Some(start);
        Some(start)
    }

    /// What to play now; call once per frame period. `None` until playout
    /// has started (the first frame waited out the target delay).
    pub fn poll_playout(&mut self, now_ms: u64) -> Option<Playout> {
        let frame = i64::from(self.config.frame_ms);
        let mut next = match self.next {
            Some(next) => next,
            None => self.start(now_ms)?,
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
        let pause = || {
            !self.played_speech
                && [next, next + 1]
                    .iter()
                    .all(|n| self.frames.get(n).is_some_and(|f| !f.speech))
        };
        let shrink_due = self.since_shrink >= FORCED_SHRINK_EVERY
            || (self.since_shrink >= SHRINK_EVERY && pause());
        if offset - frame >= aim + frame / 2
            && shrink_due
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
        let playout = if let Some(f) = self.frames.remove(&next) {
            self.stats.played += 1;
            self.played_speech = f.speech;
            let waited = now_ms.saturating_sub(f.arrival_ms) as usize;
            self.added[waited.min(DELAY_BUCKETS - 1)] += 1;
            Playout::Frame(f.payload)
        } else if let Some(following) = self.frames.get(&(next + 1)) {
            self.stats.fec += 1;
            Playout::Fec(following.payload.clone())
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

    /// Plays `arrivals` ((arrival ms, frame number), any order) through a
    /// buffer polled every 20 ms at `phase` ms into the period, each frame
    /// marked speech or not by `speech`; returns the buffer and every frame
    /// played (its number and when).
    fn play(
        arrivals: &[(u64, u16)],
        phase: u64,
        periods: u64,
        speech: impl Fn(u16) -> bool,
    ) -> (JitterBuffer, Vec<(u16, u64)>) {
        let mut arrivals = arrivals.to_vec();
        arrivals.sort_unstable();
        let mut jb = jb();
        let mut it = arrivals.into_iter().peekable();
        let mut played = Vec::new();
        for p in 0..periods {
            let now = p * 20 + phase;
            while let Some(&(at, n)) = it.peek() {
                if at > now {
                    break;
                }
                it.next();
                let payload = n.to_be_bytes().to_vec();
                let _ = jb.handle_speech_frame(n, payload, at, speech(n));
            }
            if let Some(Playout::Frame(f)) = jb.poll_playout(now) {
                played.push((u16::from_be_bytes([f[0], f[1]]), now));
            }
        }
        (jb, played)
    }

    /// The frames of `played` (in order) that were skipped over.
    fn skipped(played: &[(u16, u64)]) -> Vec<u16> {
        played.windows(2).flat_map(|w| w[0].0 + 1..w[1].0).collect()
    }

    #[test]
    fn a_frame_that_waited_before_the_receiver_read_it_does_not_set_the_delay() {
        // What a lab call's caller saw: the callee started sending 320 ms
        // before the caller's media loop read its socket, so frame 0 was
        // read at once (2 ms) with frames 1..=16 lost on a relay the caller
        // had not bound yet; from frame 17 on the stream arrives 300 ms
        // "earlier" than frame 0 did (transit -320 + 2 ms).
        let mut arrivals = vec![(2, 0u16)];
        arrivals.extend((17..400u16).map(|n| (u64::from(n) * 20 - 320 + 2, n)));
        for phase in [1, 7, 13, 19] {
            let (jb, played) = play(&arrivals, phase, 400, |_| true);
            let s = jb.stats();
            // the stream, not the stale frame, set the delay: two frames
            // (the start delay) at most
            let p95 = jb.added_delay_ms(0.95).unwrap();
            assert!(p95 <= 60, "phase {phase}: p95 {p95} ms, {s:?}");
            assert_eq!(s.stale, 1, "phase {phase}: {s:?}");
            assert_eq!((s.late, s.held), (0, 0), "phase {phase}: {s:?}");
            // speech all along: one skip, forced, to shrink the start delay
            assert!(s.skipped <= 1, "phase {phase}: {s:?}");
            assert_eq!(played[0].0, 17, "phase {phase}");
            assert!(played.len() >= 380, "phase {phase}: {s:?}");
        }
    }

    #[test]
    fn skips_to_shrink_the_delay_wait_for_a_pause_in_speech() {
        // A clean link (transit 5..7 ms): playout starts two frames after
        // the first arrival, a frame and more above what the link needs.
        let arrivals: Vec<(u64, u16)> = (0..1000u16)
            .map(|n| (u64::from(n) * 20 + 5 + u64::from(n % 3), n))
            .collect();
        // speech for 3 s, a pause of two seconds (room for two skips, 50
        // periods apart), speech again
        let speech = |n: u16| !(150..250).contains(&n);
        for phase in [0, 5, 9, 15, 19] {
            let (jb, played) = play(&arrivals, phase, 1000, speech);
            let s = jb.stats();
            let skipped = skipped(&played);
            assert!(!skipped.is_empty(), "phase {phase}: {s:?}");
            // only in the pause, with a pause frame on either side
            assert!(
                skipped.iter().all(|&n| (151..249).contains(&n)),
                "phase {phase}: skipped {skipped:?}"
            );
            assert_eq!(
                (s.late, s.held, s.concealed),
                (0, 0, 0),
                "phase {phase}: {s:?}"
            );
            // and the pause brought the delay down to what the link needs:
            // the last frame waited less than a frame and a half
            let (n, at) = *played.last().unwrap();
            assert!(n >= 990, "phase {phase}: last played {n}");
            let waited = at - (u64::from(n) * 20 + 5 + u64::from(n % 3));
            assert!(waited < 30, "phase {phase}: waited {waited} ms, {s:?}");
        }
    }

    #[test]
    fn without_a_pause_the_delay_still_comes_down_slowly() {
        let arrivals: Vec<(u64, u16)> = (0..1000u16).map(|n| (u64::from(n) * 20 + 5, n)).collect();
        let (jb, played) = play(&arrivals, 15, 1000, |_| true);
        let skipped = skipped(&played);
        assert!(!skipped.is_empty(), "{:?}", jb.stats());
        // the first after FORCED_SHRINK_EVERY periods (playout started two
        // or three periods after frame 0 arrived)
        assert!(
            u32::from(skipped[0]) + 3 >= FORCED_SHRINK_EVERY,
            "{skipped:?}"
        );
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
