//! Per-session rate limiting: a token bucket for requests, and a penalty
//! bucket that closes sessions which keep sending while limited.

use std::time::{Duration, Instant};

/// What to do with one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Allow,
    /// Refuse it with `RATE_LIMITED`; a token is available after this long.
    Limit(Duration),
    /// The sender keeps flooding: close the session.
    Close,
}

/// A token bucket (`rate` messages per second, `burst` at once) plus a
/// penalty score: every refused message adds one, the score decays at
/// `rate / 5` per second, and reaching `burst` closes the session. A client
/// sending somewhat above the rate is only throttled; one sending far above
/// it is disconnected within a few seconds.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    penalty: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            penalty: 0.0,
            last: now,
        }
    }

    /// Decides about one message arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.penalty = (self.penalty - elapsed * self.rate / 5.0).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        self.penalty += 1.0;
        if self.penalty >= self.burst {
            return Verdict::Close;
        }
        Verdict::Limit(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_burst_then_limits_then_refills() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(50.0, 100.0, t0);
        for _ in 0..100 {
            assert_eq!(rl.check(t0), Verdict::Allow);
        }
        assert!(matches!(rl.check(t0), Verdict::Limit(_)));
        // 100 ms later five tokens are back.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..5 {
            assert_eq!(rl.check(t1), Verdict::Allow);
        }
        assert!(matches!(rl.check(t1), Verdict::Limit(_)));
    }

    #[test]
    fn sustained_flood_is_closed_moderate_excess_is_not() {
        let t0 = Instant::now();
        let mut flood = RateLimiter::new(50.0, 100.0, t0);
        let mut closed_at = None;
        // 1000 messages per second.
        for i in 0..5000u64 {
            if flood.check(t0 + Duration::from_millis(i)) == Verdict::Close {
                closed_at = Some(i);
                break;
            }
        }
        assert!(closed_at.is_some_and(|ms| ms < 1000), "{closed_at:?}");

        // 55 messages per second for 10 s: throttled, never closed.
        let mut moderate = RateLimiter::new(50.0, 100.0, t0);
        for i in 0..550u64 {
            let at = t0 + Duration::from_micros(i * 1_000_000 / 55);
            assert_ne!(moderate.check(at), Verdict::Close);
        }
    }
}
