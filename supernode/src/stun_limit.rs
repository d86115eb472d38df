//! How many STUN answers a source prefix gets: a token bucket per /24 (IPv4)
//! or /56 (IPv6), in a table of bounded size. Pure: the caller passes `now`.
//!
//! A prefix not seen for as long as its bucket takes to refill is forgotten
//! by [`StunLimiter::expire`] (its bucket would be full again, so forgetting
//! it changes nothing). When the table is full, prefixes it does not hold
//! share one overflow bucket, so a flood of spoofed prefixes neither grows
//! the table nor gets more than the overflow rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::ratelimit::{RateLimiter, Verdict};

/// The limits of the STUN reflector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StunLimits {
    /// Answers per second to one source prefix.
    pub rate: f64,
    /// Answers one source prefix may get at once.
    pub burst: f64,
    /// Prefixes tracked at most.
    pub max_prefixes: usize,
    /// Answers per second, and at once, shared by every prefix the full
    /// table does not hold.
    pub overflow_rate: f64,
    pub overflow_burst: f64,
}

impl Default for StunLimits {
    fn default() -> Self {
        Self {
            rate: 20.0,
            burst: 40.0,
            max_prefixes: 4096,
            overflow_rate: 100.0,
            overflow_burst: 200.0,
        }
    }
}

/// A source prefix: the first 24 bits of an IPv4 address (an IPv4-mapped
/// IPv6 address counts as IPv4) or the first 56 of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prefix {
    V4([u8; 3]),
    V6([u8; 7]),
}

impl Prefix {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Self::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let mut p = [0u8; 7];
                p.copy_from_slice(&v6.octets()[..7]);
                Self::V6(p)
            }
        }
    }
}

#[derive(Debug)]
struct Entry {
    bucket: RateLimiter,
    last_seen: Instant,
}

/// The per-prefix buckets.
#[derive(Debug)]
pub struct StunLimiter {
    limits: StunLimits,
    prefixes: HashMap<Prefix, Entry>,
    overflow: RateLimiter,
}

impl StunLimiter {
    pub fn new(limits: StunLimits, now: Instant) -> Self {
        Self {
            limits,
            prefixes: HashMap::new(),
            overflow: RateLimiter::new(limits.overflow_rate, limits.overflow_burst, now),
        }
    }

    /// Whether an answer to `ip` may be sent at `now` (taking a token).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let prefix = Prefix::of(ip);
        let room = self.prefixes.len() < self.limits.max_prefixes;
        let (rate, burst) = (self.limits.rate, self.limits.burst);
        let bucket = match self.prefixes.entry(prefix) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let entry = e.into_mut();
                entry.last_seen = now.max(entry.last_seen);
                &mut entry.bucket
            }
            std::collections::hash_map::Entry::Vacant(e) if room => {
                let entry = e.insert(Entry {
                    bucket: RateLimiter::new(rate, burst, now),
                    last_seen: now,
                });
                &mut entry.bucket
            }
            std::collections::hash_map::Entry::Vacant(_) => &mut self.overflow,
        };
        // `Close` only means "far over the rate": still a refusal here.
        bucket.check(now) == Verdict::Allow
    }

    /// Forgets prefixes whose buckets have refilled; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let refill = Duration::from_secs_f64(self.limits.burst / self.limits.rate);
        let before = self.prefixes.len();
        self.prefixes
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < refill);
        before - self.prefixes.len()
    }

    /// Prefixes tracked now.
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn small() -> StunLimits {
        StunLimits {
            rate: 10.0,
            burst: 5.0,
            max_prefixes: 2,
            overflow_rate: 1.0,
            overflow_burst: 3.0,
        }
    }

    fn allowed(l: &mut StunLimiter, addr: &str, n: usize, now: Instant) -> usize {
        (0..n).filter(|_| l.allow(ip(addr), now)).count()
    }

    #[test]
    fn prefixes_are_24_and_56_bits() {
        assert_eq!(Prefix::of(ip("192.0.2.1")), Prefix::of(ip("192.0.2.254")));
        assert_ne!(Prefix::of(ip("192.0.2.1")), Prefix::of(ip("192.0.3.1")));
        assert_eq!(
            Prefix::of(ip("::ffff:192.0.2.9")),
            Prefix::of(ip("192.0.2.1"))
        );
        assert_eq!(
            Prefix::of(ip("2001:db8:0:1200::1")),
            Prefix::of(ip("2001:db8:0:12ff:ffff::2"))
        );
        assert_ne!(
            Prefix::of(ip("2001:db8:0:1200::1")),
            Prefix::of(ip("2001:db8:0:1300::1"))
        );
    }

    #[test]
    fn one_prefix_gets_its_burst_then_the_rate_and_others_are_separate() {
        let t0 = Instant::now();
        let limits = small();
        let mut l = StunLimiter::new(limits, t0);
        assert_eq!(allowed(&mut l, "192.0.2.1", 100, t0), limits.burst as usize);
        // Another address of the same /24 shares the bucket.
        assert_eq!(allowed(&mut l, "192.0.2.77", 10, t0), 0);
        // Another /24 has its own.
        assert_eq!(allowed(&mut l, "192.0.3.1", 100, t0), limits.burst as usize);
        // 250 ms later, rate * 0.25 tokens are back.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(
            allowed(&mut l, "192.0.2.1", 100, t1),
            (limits.rate * 0.25) as usize
        );
    }

    #[test]
    fn a_full_table_sends_new_prefixes_to_the_overflow_bucket_until_expiry() {
        let t0 = Instant::now();
        let limits = small();
        let mut l = StunLimiter::new(limits, t0);
        assert!(l.allow(ip("10.0.1.1"), t0));
        assert!(l.allow(ip("10.0.2.1"), t0));
        // Many new prefixes share the overflow burst; the table stays bounded.
        let overflow: usize = (3..100)
            .map(|i| allowed(&mut l, &format!("10.0.{i}.1"), 1, t0))
            .sum();
        assert_eq!(overflow, limits.overflow_burst as usize);
        assert_eq!(l.len(), limits.max_prefixes);
        // Nothing has refilled yet: nothing is forgotten.
        assert_eq!(l.expire(t0 + Duration::from_millis(100)), 0);
        // Once refilled, both are forgotten and new prefixes get a bucket.
        let later = t0 + Duration::from_secs_f64(limits.burst / limits.rate);
        assert_eq!(l.expire(later), 2);
        assert!(l.is_empty());
        assert_eq!(
            allowed(&mut l, "10.0.50.1", 100, later),
            limits.burst as usize
        );
    }
}
