//! Throttling of password checks and registrations, per source prefix.
//!
//! Sources are grouped by prefix ([`Prefix`]: an IPv4 /24, an IPv6 /56 by
//! default), the unit one subscriber or one small network controls.
//!
//! - **Password checks** are counted per (name, prefix) and per prefix. An
//!   attempt *reserves* its place before any hashing ([`Throttle::begin`]),
//!   so guesses in flight count at once: no more attempts run together than
//!   could fail before the key is blocked. Wrong guesses from one prefix block
//!   that (name, prefix) and, across names, that prefix; the real user from
//!   another prefix still logs in.
//! - **Registrations** are a token bucket per prefix ([`Throttle::register`]).
//! - **Log lines** about refused requests are a token bucket per prefix
//!   ([`Throttle::log_line`]): an operator sees who is failing, and one
//!   source cannot fill the disk with a line per attempt.
//!
//! In memory only: a restart forgets it (acceptable for an online-guessing
//! brake; the argon2 cost bounds the guess rate anyway). Every table is
//! bounded. Time is an argument: nothing here reads a clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;

/// A source prefix: the address with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix(IpAddr);

impl Prefix {
    /// The prefix of `ip` (IPv4-mapped IPv6 counts as IPv4).
    pub fn of(ip: IpAddr, cfg: &ThrottleConfig) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::v4(v4, cfg.v4_prefix_len),
                None => {
                    let bits = u128::from(v6) & mask::<u128>(cfg.v6_prefix_len, 128);
                    Self(IpAddr::V6(Ipv6Addr::from(bits)))
                }
            },
            IpAddr::V4(v4) => Self::v4(v4, cfg.v4_prefix_len),
        }
    }

    fn v4(v4: Ipv4Addr, len: u8) -> Self {
        let bits = u32::from(v4) & mask::<u32>(len, 32);
        Self(IpAddr::V4(Ipv4Addr::from(bits)))
    }

    /// The network address of the prefix.
    pub fn addr(self) -> IpAddr {
        self.0
    }
}

/// A mask of the top `len` bits (clamped to `width`).
fn mask<T>(len: u8, width: u32) -> T
where
    T: From<u8> + std::ops::Not<Output = T> + std::ops::Shr<u32, Output = T> + Copy,
{
    let len = u32::from(len).min(width);
    let all = !T::from(0);
    if len == 0 { T::from(0) } else { !(all >> len) }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    in_flight: u32,
    last_failure: Instant,
    blocked_until: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            in_flight: 0,
            last_failure: now,
            blocked_until: now,
        }
    }
}

/// Failure records of one kind of key.
#[derive(Debug)]
struct Table<K> {
    entries: HashMap<K, Entry>,
    free: u32,
}

impl<K: Eq + Hash + Clone> Table<K> {
    fn new(free: u32) -> Self {
        Self {
            entries: HashMap::new(),
            free,
        }
    }

    /// Reserves one attempt for `key`, or says how long to wait. While the
    /// key has fewer than `free` failures, as many attempts may run at once
    /// as could still fail before the block starts (attempts in flight count
    /// as failures); beyond that, one at a time between blocks.
    fn reserve(&mut self, key: &K, now: Instant, cfg: &ThrottleConfig) -> Result<(), Duration> {
        if !self.entries.contains_key(key) && self.entries.len() >= cfg.max_entries {
            self.evict(now, cfg);
        }
        let entry = self
            .entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now));
        if entry.in_flight == 0 && now.duration_since(entry.last_failure) > cfg.forget_after {
            entry.failures = 0;
        }
        if entry.blocked_until > now {
            return Err(entry.blocked_until - now);
        }
        let slots = (self.free + 1).saturating_sub(entry.failures).max(1);
        if entry.in_flight >= slots {
            // Earlier attempts hold every slot: their outcome decides.
            return Err(cfg.base_delay);
        }
        entry.in_flight += 1;
        Ok(())
    }

    /// Ends a reservation without a failure.
    fn release(&mut self, key: &K) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if entry.failures == 0 && entry.in_flight == 0 {
                self.entries.remove(key);
            }
        }
    }

    /// Ends a reservation with a failure at `now`.
    fn fail(&mut self, key: &K, now: Instant, cfg: &ThrottleConfig) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures > self.free {
            let doublings = (entry.failures - self.free - 1).min(30);
            let delay = cfg
                .base_delay
                .saturating_mul(1u32 << doublings)
                .min(cfg.max_delay);
            entry.blocked_until = entry.blocked_until.max(now + delay);
        }
    }

    /// Clears the failures of `key` (after a correct password) and ends the
    /// reservation.
    fn clear(&mut self, key: &K) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if entry.in_flight == 0 {
                self.entries.remove(key);
            } else {
                entry.failures = 0;
                entry.blocked_until = entry.last_failure;
            }
        }
    }

    fn evict(&mut self, now: Instant, cfg: &ThrottleConfig) {
        // Entries with attempts in flight stay: their guard will come back.
        self.entries.retain(|_, e| {
            e.in_flight > 0 || now.duration_since(e.last_failure) <= cfg.forget_after
        });
        if self.entries.len() >= cfg.max_entries {
            // Still full: drop the half with the oldest failures.
            let mut ages: Vec<Instant> = self.entries.values().map(|e| e.last_failure).collect();
            ages.sort_unstable();
            if let Some(&cut) = ages.get(ages.len() / 2) {
                self.entries
                    .retain(|_, e| e.in_flight > 0 || e.last_failure > cut);
            }
        }
    }
}

/// A token bucket per key.
#[derive(Debug)]
struct Buckets<K> {
    tokens: HashMap<K, (f64, Instant)>,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    fn take(
        &mut self,
        key: &K,
        burst: u32,
        interval: Duration,
        now: Instant,
        max_entries: usize,
    ) -> Result<(), Duration> {
        let burst = f64::from(burst.max(1));
        let per_sec = 1.0 / interval.as_secs_f64().max(1e-3);
        let refill = |(tokens, at): (f64, Instant)| {
            (tokens + now.duration_since(at).as_secs_f64() * per_sec).min(burst)
        };
        if !self.tokens.contains_key(key) && self.tokens.len() >= max_entries {
            // Full buckets hold no information: drop them first, then the oldest half.
            self.tokens.retain(|_, v| refill(*v) < burst);
            if self.tokens.len() >= max_entries {
                let mut ages: Vec<Instant> = self.tokens.values().map(|v| v.1).collect();
                ages.sort_unstable();
                if let Some(&cut) = ages.get(ages.len() / 2) {
                    self.tokens.retain(|_, v| v.1 > cut);
                }
            }
        }
        let tokens = self.tokens.get(key).copied().map_or(burst, refill);
        if tokens >= 1.0 {
            self.tokens.insert(key.clone(), (tokens - 1.0, now));
            Ok(())
        } else {
            self.tokens.insert(key.clone(), (tokens, now));
            Err(Duration::from_secs_f64((1.0 - tokens) / per_sec))
        }
    }
}

/// Per-(name, prefix) and per-prefix failure records, and per-prefix
/// registration buckets. Each table has its own lock.
#[derive(Debug)]
pub struct Throttle {
    cfg: ThrottleConfig,
    names: Mutex<Table<(String, Prefix)>>,
    prefixes: Mutex<Table<Prefix>>,
    registrations: Mutex<Buckets<Prefix>>,
    log_lines: Mutex<Buckets<Prefix>>,
}

/// Lines about refused requests one prefix may log at once...
const LOG_BURST: u32 = 20;
/// ...and one more every this long.
const LOG_INTERVAL: Duration = Duration::from_secs(30);

/// A reserved password check. End it with [`Attempt::failure`],
/// [`Attempt::unknown_user`] or [`Attempt::success`]; dropping it (an
/// internal error, a cancelled request) releases the reservation uncounted.
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    name: String,
    prefix: Prefix,
    done: bool,
}

impl Attempt<'_> {
    /// A wrong password: counted for the (name, prefix) and the prefix.
    pub fn failure(mut self, now: Instant) {
        let t = self.throttle;
        lock(&t.names).fail(&(self.name.clone(), self.prefix), now, &t.cfg);
        lock(&t.prefixes).fail(&self.prefix, now, &t.cfg);
        self.done = true;
    }

    /// No such user: counted for the prefix only.
    pub fn unknown_user(mut self, now: Instant) {
        let t = self.throttle;
        lock(&t.names).release(&(self.name.clone(), self.prefix));
        lock(&t.prefixes).fail(&self.prefix, now, &t.cfg);
        self.done = true;
    }

    /// A correct password: the (name, prefix) record is cleared. The prefix
    /// keeps its record, so an attacker cannot reset it by logging into an
    /// account of their own between guesses.
    pub fn success(mut self) {
        let t = self.throttle;
        lock(&t.names).clear(&(self.name.clone(), self.prefix));
        lock(&t.prefixes).release(&self.prefix);
        self.done = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            let t = self.throttle;
            lock(&t.names).release(&(self.name.clone(), self.prefix));
            lock(&t.prefixes).release(&self.prefix);
        }
    }
}

impl Throttle {
    /// An empty throttle.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self {
            cfg,
            names: Mutex::new(Table::new(cfg.free_failures_per_name)),
            prefixes: Mutex::new(Table::new(cfg.free_failures_per_addr)),
            registrations: Mutex::new(Buckets {
                tokens: HashMap::new(),
            }),
            log_lines: Mutex::new(Buckets {
                tokens: HashMap::new(),
            }),
        }
    }

    /// Whether a line about a request from `ip` that was refused (a wrong
    /// password, a failed proof, a malformed request) may be logged now:
    /// 20 at once per prefix, then one every 30 s; the rest are dropped
    /// (the refusal itself still happens and is answered).
    pub fn log_line(&self, ip: IpAddr, now: Instant) -> bool {
        let prefix = self.prefix(ip);
        lock(&self.log_lines)
            .take(&prefix, LOG_BURST, LOG_INTERVAL, now, self.cfg.max_entries)
            .is_ok()
    }

    /// The prefix `ip` is counted under.
    pub fn prefix(&self, ip: IpAddr) -> Prefix {
        Prefix::of(ip, &self.cfg)
    }

    /// Reserves a password check of `name` from `ip` before any hashing, or
    /// says how long to wait.
    pub fn begin(&self, name: &str, ip: IpAddr, now: Instant) -> Result<Attempt<'_>, Duration> {
        let prefix = self.prefix(ip);
        let key = (name.to_owned(), prefix);
        lock(&self.names).reserve(&key, now, &self.cfg)?;
        if let Err(wait) = lock(&self.prefixes).reserve(&prefix, now, &self.cfg) {
            lock(&self.names).release(&key);
            return Err(wait);
        }
        Ok(Attempt {
            throttle: self,
            name: key.0,
            prefix,
            done: false,
        })
    }

    /// Takes one registration from `ip`'s prefix bucket, or says how long
    /// until the next is allowed.
    pub fn register(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let prefix = self.prefix(ip);
        lock(&self.registrations).take(
            &prefix,
            self.cfg.registrations_per_prefix,
            self.cfg.registration_interval,
            now,
            self.cfg.max_entries,
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a table inconsistent
    // (every update is a single insert or field write), so keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig {
            free_failures_per_name: 2,
            free_failures_per_addr: 4,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            forget_after: Duration::from_secs(100),
            max_entries: 4,
            registrations_per_prefix: 2,
            registration_interval: Duration::from_secs(10),
            ..ThrottleConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn delays_grow_per_name_and_prefix_and_cap() {
        let t = Throttle::new(cfg());
        let now = Instant::now();
        t.begin("bob", ip("192.0.2.1"), now).unwrap().failure(now);
        t.begin("bob", ip("192.0.2.2"), now).unwrap().failure(now);
        let mut expected = [1, 2, 4, 8, 8].into_iter();
        let mut at = now;
        for _ in 0..5 {
            t.begin("bob", ip("192.0.2.7"), at).unwrap().failure(at);
            let wait = t.begin("bob", ip("192.0.2.9"), at).unwrap_err();
            assert_eq!(wait, Duration::from_secs(expected.next().unwrap()));
            at += wait;
        }
        // The same name from another /24 is not affected, nor another name.
        t.begin("bob", ip("198.51.100.7"), at).unwrap().success();
        t.begin("carol", ip("203.0.113.9"), at).unwrap().success();
        // Time passes: the block lifts; success clears the (name, prefix).
        let later = at + Duration::from_secs(9);
        t.begin("bob", ip("192.0.2.1"), later).unwrap().success();
        t.begin("bob", ip("192.0.2.1"), later)
            .unwrap()
            .failure(later);
        let key = ("bob".to_owned(), t.prefix(ip("192.0.2.1")));
        assert_eq!(lock(&t.names).entries[&key].failures, 1);
    }

    #[test]
    fn attempts_in_flight_count_at_once() {
        let t = Throttle::new(cfg());
        let now = Instant::now();
        // Free 2: the third failure starts the block, so three may run at once.
        let held: Vec<_> = (0..3)
            .map(|_| t.begin("bob", ip("192.0.2.1"), now).unwrap())
            .collect();
        assert_eq!(
            t.begin("bob", ip("192.0.2.1"), now).unwrap_err(),
            Duration::from_secs(1)
        );
        for a in held {
            a.failure(now);
        }
        assert_eq!(
            t.begin("bob", ip("192.0.2.1"), now).unwrap_err(),
            Duration::from_secs(1)
        );
        // After the block: one at a time.
        let later = now + Duration::from_secs(1);
        let one = t.begin("bob", ip("192.0.2.1"), later).unwrap();
        assert!(t.begin("bob", ip("192.0.2.1"), later).is_err());
        drop(one); // released uncounted
        assert!(t.begin("bob", ip("192.0.2.1"), later).is_ok());
    }

    #[test]
    fn per_prefix_across_names() {
        let t = Throttle::new(cfg());
        let now = Instant::now();
        for i in 0..5 {
            t.begin(&format!("user{i}"), ip("192.0.2.1"), now)
                .unwrap()
                .unknown_user(now);
        }
        assert!(t.begin("user9", ip("192.0.2.200"), now).is_err());
        assert!(t.begin("user9", ip("192.0.3.1"), now).is_ok());
        let c = cfg();
        assert_eq!(
            Prefix::of(ip("2001:db8:0:ab::1"), &c),
            Prefix::of(ip("2001:db8:0:ff:1::2"), &c)
        );
        assert_ne!(
            Prefix::of(ip("2001:db8:0:1ab::1"), &c),
            Prefix::of(ip("2001:db8:0:ab::1"), &c)
        );
        assert_eq!(
            Prefix::of(ip("::ffff:192.0.2.77"), &c).addr(),
            ip("192.0.2.0")
        );
    }

    #[test]
    fn registrations_are_a_bucket_per_prefix() {
        let t = Throttle::new(cfg());
        let now = Instant::now();
        assert!(t.register(ip("192.0.2.1"), now).is_ok());
        assert!(t.register(ip("192.0.2.2"), now).is_ok());
        assert_eq!(
            t.register(ip("192.0.2.3"), now),
            Err(Duration::from_secs(10))
        );
        assert!(t.register(ip("192.0.3.1"), now).is_ok());
        assert!(
            t.register(ip("192.0.2.3"), now + Duration::from_secs(10))
                .is_ok()
        );
    }

    #[test]
    fn bounded_memory() {
        let t = Throttle::new(cfg());
        let now = Instant::now();
        for i in 0..100u32 {
            let at = now + Duration::from_millis(u64::from(i));
            let addr = IpAddr::from((i << 8).to_be_bytes());
            t.begin(&format!("n{i}"), addr, at).unwrap().failure(at);
            let _ = t.register(addr, at);
        }
        assert!(lock(&t.names).entries.len() <= 4);
        assert!(lock(&t.prefixes).entries.len() <= 4);
        assert!(lock(&t.registrations).tokens.len() <= 4);
    }

    #[test]
    fn log_lines_are_a_budget_per_prefix() {
        let t = Throttle::new(cfg());
        let now = Instant::now();
        let logged = (0..100)
            .filter(|_| t.log_line(ip("192.0.2.1"), now))
            .count();
        assert_eq!(logged, LOG_BURST as usize);
        // Another address of the same prefix shares the budget...
        assert!(!t.log_line(ip("192.0.2.200"), now));
        // ...another prefix has its own, and time refills it.
        assert!(t.log_line(ip("192.0.3.1"), now));
        assert!(t.log_line(ip("192.0.2.1"), now + LOG_INTERVAL));
        assert!(!t.log_line(ip("192.0.2.1"), now + LOG_INTERVAL));
    }
}
