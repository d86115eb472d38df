//! The decision logic of the lab's userspace impairment link (the "wire",
//! [`crate::wire`]): which packet is lost, and when each other packet leaves.
//!
//! Pure: no sockets, no clock. Time is passed in as microseconds since an
//! arbitrary epoch, randomness comes from a seeded ChaCha8 generator, so a
//! seed and a sequence of `(time, packet)` offers always give the same
//! decisions (the unit tests and the in-memory jitter-buffer tests rely on it).
//!
//! Model, per direction:
//! * **Loss**: independent (Bernoulli) when the mean burst length is 1,
//!   otherwise the two-state Gilbert-Elliott chain (loss in the bad state
//!   only): from good to bad with probability `p`, back with `r`; the mean
//!   loss is `p / (p + r)` and a loss burst lasts `1 / r` packets on average.
//! * **Delay**: each packet independently uniform in
//!   `[delay - jitter, delay + jitter]` (clamped at 0), like netem's
//!   `delay D J` without a distribution table. Packets sent closer together
//!   than the jitter therefore overtake each other: reordering is a
//!   consequence of jitter, as on netem.
//! * **Queue**: at most `capacity` packets are held; an offer beyond that is
//!   dropped and counted (`overflow`).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

/// Default bound of the packets one direction holds at once.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Parameters of one direction of the link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkParams {
    /// Mean one-way delay added, microseconds.
    pub delay_us: u64,
    /// Half-width of the uniform delay spread (`delay +/- jitter`), microseconds.
    pub jitter_us: u64,
    /// Mean loss probability per packet (0.0..=1.0).
    pub loss: f64,
    /// Mean loss-burst length in packets (>= 1; 1 = independent losses).
    pub burst: f64,
}

impl LinkParams {
    /// Nothing added: every packet leaves at once.
    pub const CLEAN: LinkParams = LinkParams {
        delay_us: 0,
        jitter_us: 0,
        loss: 0.0,
        burst: 1.0,
    };

    /// Checks the ranges (loss in 0..=1, burst >= 1, both finite).
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(format!("loss {} is not in 0..=1", self.loss));
        }
        if !self.burst.is_finite() || self.burst < 1.0 {
            return Err(format!("burst {} is not >= 1", self.burst));
        }
        Ok(())
    }

    /// Lowest and highest delay a packet can get, microseconds.
    pub fn delay_range_us(&self) -> (u64, u64) {
        (
            self.delay_us.saturating_sub(self.jitter_us),
            self.delay_us.saturating_add(self.jitter_us),
        )
    }
}

/// The loss process.
#[derive(Debug, Clone)]
enum LossModel {
    None,
    Bernoulli(f64),
    /// Gilbert-Elliott: `p` good->bad, `r` bad->good, lose in bad.
    GilbertElliott {
        p: f64,
        r: f64,
        bad: bool,
    },
}

impl LossModel {
    fn new(loss: f64, burst: f64) -> LossModel {
        if loss <= 0.0 {
            LossModel::None
        } else if burst <= 1.0 || loss >= 1.0 {
            LossModel::Bernoulli(loss)
        } else {
            let r = 1.0 / burst;
            // stationary P(bad) = p / (p + r) = loss
            let p = (loss * r / (1.0 - loss)).min(1.0);
            LossModel::GilbertElliott { p, r, bad: false }
        }
    }

    fn lose(&mut self, rng: &mut ChaCha8Rng) -> bool {
        match self {
            LossModel::None => false,
            LossModel::Bernoulli(l) => rng.r#gen::<f64>() < *l,
            LossModel::GilbertElliott { p, r, bad } => {
                let u = rng.r#gen::<f64>();
                if *bad {
                    if u < *r {
                        *bad = false;
                    }
                } else if u < *p {
                    *bad = true;
                }
                *bad
            }
        }
    }
}

/// What happened to an offered packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Queued; it leaves at this time (microseconds).
    Queued {
        /// Release time, microseconds since the caller's epoch.
        at_us: u64,
    },
    /// Lost by the loss model.
    Lost,
    /// Dropped: the queue was full.
    Overflow,
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Packets offered.
    pub offered: u64,
    /// Packets handed out by [`Link::pop_due`].
    pub released: u64,
    /// Packets lost by the loss model.
    pub lost: u64,
    /// Packets dropped because the queue was full.
    pub overflow: u64,
    /// Released packets that left before one offered earlier (reordered).
    pub reordered: u64,
}

#[derive(Debug)]
struct Held<T> {
    at_us: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at_us, self.seq) == (o.at_us, o.seq)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Held<T> {
    // min-heap on (release time, offer order)
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at_us, o.seq).cmp(&(self.at_us, self.seq))
    }
}

/// One direction of the impairment link: a bounded queue of packets held
/// until their release time.
#[derive(Debug)]
pub struct Link<T> {
    params: LinkParams,
    loss: LossModel,
    rng: ChaCha8Rng,
    held: BinaryHeap<Held<T>>,
    capacity: usize,
    next_seq: u64,
    /// highest offer sequence released so far (reorder detection)
    max_released: Option<u64>,
    stats: LinkStats,
}

impl<T> Link<T> {
    /// A link with `params` (validated), a queue bound and an RNG seed.
    pub fn new(params: LinkParams, capacity: usize, seed: u64) -> Result<Link<T>, String> {
        params.validate()?;
        if capacity == 0 {
            return Err("queue capacity must be at least 1".into());
        }
        Ok(Link {
            params,
            loss: LossModel::new(params.loss, params.burst),
            rng: ChaCha8Rng::seed_from_u64(seed),
            held: BinaryHeap::new(),
            capacity,
            next_seq: 0,
            max_released: None,
            stats: LinkStats::default(),
        })
    }

    /// The link's parameters.
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Offers a packet arriving at `now_us`.
    pub fn offer(&mut self, now_us: u64, item: T) -> Verdict {
        self.stats.offered += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.loss.lose(&mut self.rng) {
            self.stats.lost += 1;
            return Verdict::Lost;
        }
        let (lo, hi) = self.params.delay_range_us();
        let d = if hi > lo {
            self.rng.gen_range(lo..=hi)
        } else {
            lo
        };
        if self.held.len() >= self.capacity {
            self.stats.overflow += 1;
            return Verdict::Overflow;
        }
        let at_us = now_us.saturating_add(d);
        self.held.push(Held { at_us, seq, item });
        Verdict::Queued { at_us }
    }

    /// The earliest release time held, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.held.peek().map(|h| h.at_us)
    }

    /// Takes the next packet whose release time is at or before `now_us`.
    pub fn pop_due(&mut self, now_us: u64) -> Option<T> {
        if self.held.peek()?.at_us > now_us {
            return None;
        }
        let h = self.held.pop()?;
        self.stats.released += 1;
        match self.max_released {
            Some(m) if h.seq < m => self.stats.reordered += 1,
            _ => self.max_released = Some(h.seq),
        }
        Some(h.item)
    }

    /// Packets held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The counters so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }
}

/// Standard deviation of the loss count over `n` packets of a
/// Gilbert-Elliott (or Bernoulli, `burst` = 1) loss process with mean loss
/// `loss` and mean burst `burst`, for large `n`: bursts start about
/// `n * loss / burst` times (Poisson), their lengths are geometric with mean
/// `burst`, so the count's variance is `starts * E[len^2]` with
/// `E[len^2] = (2 - r) / r^2`, `r = 1 / burst` (for `burst` = 1 this is
/// `n * loss`, close to the binomial `n * loss * (1 - loss)`). Tests use it
/// to state their tolerance.
pub fn loss_count_sd(n: u64, loss: f64, burst: f64) -> f64 {
    let r = 1.0 / burst.max(1.0);
    let starts = n as f64 * loss * r;
    (starts * (2.0 - r) / (r * r)).sqrt()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn wifi() -> LinkParams {
        LinkParams {
            delay_us: 30_000,
            jitter_us: 20_000,
            loss: 0.01,
            burst: 2.0,
        }
    }

    #[test]
    fn clean_link_releases_at_once_in_order() {
        let mut l = Link::new(LinkParams::CLEAN, 8, 1).unwrap();
        for i in 0..5u32 {
            assert_eq!(l.offer(100, i), Verdict::Queued { at_us: 100 });
        }
        let out: Vec<u32> = std::iter::from_fn(|| l.pop_due(100)).collect();
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
        assert_eq!(l.stats().reordered, 0);
        assert!(l.is_empty());
    }

    #[test]
    fn nothing_leaves_before_its_time_and_delays_stay_in_range() {
        let p = wifi();
        let mut l = Link::new(p, 100_000, 7).unwrap();
        let (lo, hi) = p.delay_range_us();
        let n = 20_000usize;
        // release time of packet i (sent at i ms), from its verdict
        let mut due = vec![None; n];
        let mut released = 0usize;
        let mut check = |now: u64, i: usize, due: &[Option<u64>]| {
            let at = due[i].unwrap();
            assert!(at <= now, "packet {i} released early: due {at}, now {now}");
            released += 1;
        };
        let mut now = 0;
        for i in 0..n {
            now = i as u64 * 1000;
            while let Some(j) = l.pop_due(now) {
                check(now, j, &due);
            }
            if let Verdict::Queued { at_us } = l.offer(now, i) {
                assert!((lo..=hi).contains(&(at_us - now)), "{}", at_us - now);
                due[i] = Some(at_us);
            }
        }
        // drain in release order, one release time at a time
        while let Some(t) = l.next_due() {
            assert!(t >= now);
            now = t;
            while let Some(j) = l.pop_due(now) {
                check(now, j, &due);
            }
        }
        let delays: Vec<f64> = due
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (d - i as u64 * 1000) as f64))
            .collect();
        assert_eq!(released, delays.len());
        // uniform on [10, 50] ms: mean 30 ms (SE 0.08 ms here), sd 11.5 ms
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let sd =
            (delays.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / delays.len() as f64).sqrt();
        assert!((29_500.0..30_500.0).contains(&mean), "{mean}");
        assert!((11_000.0..12_100.0).contains(&sd), "{sd}");
        let s = l.stats();
        assert_eq!(s.offered, n as u64);
        assert_eq!(s.released + s.lost, s.offered);
        // 1 ms spacing and +/- 20 ms jitter: many packets overtake others
        assert!(s.reordered > s.released / 5, "{s:?}");
    }

    #[test]
    fn gilbert_elliott_loss_rate_and_bursts() {
        let p = LinkParams {
            delay_us: 0,
            jitter_us: 0,
            loss: 0.05,
            burst: 3.0,
        };
        let mut l = Link::new(p, 16, 42).unwrap();
        let n = 400_000u64;
        let (mut lost, mut runs, mut in_run) = (0u64, 0u64, false);
        for i in 0..n {
            let v = l.offer(i, ());
            let gone = v == Verdict::Lost;
            lost += u64::from(gone);
            if gone && !in_run {
                runs += 1;
            }
            in_run = gone;
            while l.pop_due(i).is_some() {}
        }
        let sd = loss_count_sd(n, 0.05, 3.0);
        let mean = n as f64 * 0.05;
        assert!(
            (lost as f64 - mean).abs() < 5.0 * sd,
            "{lost} vs {mean} +/- {sd}"
        );
        let mean_run = lost as f64 / runs as f64;
        assert!((2.7..3.3).contains(&mean_run), "{mean_run}");
        assert_eq!(l.stats().overflow, 0);
    }

    #[test]
    fn independent_loss_has_no_bursts() {
        let p = LinkParams {
            loss: 0.02,
            ..LinkParams::CLEAN
        };
        let mut l = Link::new(p, 16, 3).unwrap();
        let n = 200_000u64;
        let (mut lost, mut runs, mut in_run) = (0u64, 0u64, false);
        for i in 0..n {
            let gone = l.offer(i, ()) == Verdict::Lost;
            lost += u64::from(gone);
            runs += u64::from(gone && !in_run);
            in_run = gone;
            while l.pop_due(i).is_some() {}
        }
        let sd = loss_count_sd(n, 0.02, 1.0);
        assert!((lost as f64 - 4000.0).abs() < 5.0 * sd, "{lost}");
        assert!(lost as f64 / (runs as f64) < 1.05);
    }

    #[test]
    fn the_queue_is_bounded() {
        let p = LinkParams {
            delay_us: 1_000_000,
            ..LinkParams::CLEAN
        };
        let mut l = Link::new(p, 3, 1).unwrap();
        let v: Vec<Verdict> = (0..5).map(|i| l.offer(i, i)).collect();
        assert_eq!(v[3], Verdict::Overflow);
        assert_eq!(v[4], Verdict::Overflow);
        assert_eq!(l.len(), 3);
        assert_eq!(l.stats().overflow, 2);
        assert!(l.pop_due(999_999).is_none());
        assert_eq!(l.pop_due(1_000_000), Some(0));
    }

    #[test]
    fn same_seed_same_decisions() {
        let run = |seed| {
            let mut l = Link::new(wifi(), 1000, seed).unwrap();
            (0..2000u64)
                .map(|i| l.offer(i * 20_000, i))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let bad = |f: fn(&mut LinkParams)| {
            let mut p = LinkParams::CLEAN;
            f(&mut p);
            Link::<()>::new(p, 1, 0).is_err()
        };
        assert!(bad(|p| p.loss = 1.5));
        assert!(bad(|p| p.loss = f64::NAN));
        assert!(bad(|p| p.burst = 0.5));
        assert!(Link::<()>::new(LinkParams::CLEAN, 0, 0).is_err());
    }
}
