//! Throttling of failed password checks, per name and per source address.
//!
//! In memory only: a restart forgets it (acceptable for an online-guessing
//! brake; the argon2 cost bounds the guess rate anyway).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
}

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

    fn remaining(&self, key: &K, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        (entry.blocked_until > now).then(|| entry.blocked_until - now)
    }

    fn fail(&mut self, key: &K, now: Instant, cfg: &ThrottleConfig) {
        if !self.entries.contains_key(key) && self.entries.len() >= cfg.max_entries {
            self.evict(now, cfg);
        }
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            last_failure: now,
            blocked_until: now,
        });
        if now.duration_since(entry.last_failure) > cfg.forget_after {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures > self.free {
            let doublings = (entry.failures - self.free - 1).min(30);
            let delay = cfg
                .base_delay
                .saturating_mul(1u32 << doublings)
                .min(cfg.max_delay);
            entry.blocked_until = now + delay;
        }
    }

    fn evict(&mut self, now: Instant, cfg: &ThrottleConfig) {
        self.entries
            .retain(|_, e| now.duration_since(e.last_failure) <= cfg.forget_after);
        if self.entries.len() >= cfg.max_entries {
            // Still full: drop the half with the oldest failures.
            let mut ages: Vec<Instant> = self.entries.values().map(|e| e.last_failure).collect();
            ages.sort_unstable();
            if let Some(&cut) = ages.get(ages.len() / 2) {
                self.entries.retain(|_, e| e.last_failure > cut);
            }
        }
    }
}

/// Per-name and per-address failure records.
#[derive(Debug)]
pub struct Throttle {
    cfg: ThrottleConfig,
    names: Mutex<Table<String>>,
    addrs: Mutex<Table<IpAddr>>,
}

/// The key of an address: IPv4 as is, IPv6 by its /64 (one subscriber).
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    /// An empty throttle.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self {
            cfg,
            names: Mutex::new(Table::new(cfg.free_failures_per_name)),
            addrs: Mutex::new(Table::new(cfg.free_failures_per_addr)),
        }
    }

    /// How long `name` or `ip` must still wait, if either is blocked.
    pub fn check(&self, name: &str, ip: IpAddr, now: Instant) -> Option<Duration> {
        let by_name = lock(&self.names).remaining(&name.to_owned(), now);
        let by_addr = lock(&self.addrs).remaining(&addr_key(ip), now);
        by_name.max(by_addr)
    }

    /// Records a failed password check (`name` is `None` for unknown users).
    pub fn failure(&self, name: Option<&str>, ip: IpAddr, now: Instant) {
        if let Some(name) = name {
            lock(&self.names).fail(&name.to_owned(), now, &self.cfg);
        }
        lock(&self.addrs).fail(&addr_key(ip), now, &self.cfg);
    }

    /// Records a successful password check: the name's record is cleared.
    /// The address keeps its record, so an attacker cannot reset it by
    /// logging into an account of their own between guesses.
    pub fn success(&self, name: &str) {
        lock(&self.names).entries.remove(name);
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
        }
    }

    #[test]
    fn delays_grow_per_name_and_cap() {
        let t = Throttle::new(cfg());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        t.failure(Some("bob"), ip, now);
        t.failure(Some("bob"), other, now);
        assert_eq!(t.check("bob", ip, now), None);
        let mut expected = [1, 2, 4, 8, 8].into_iter();
        for _ in 0..5 {
            t.failure(Some("bob"), "198.51.100.7".parse().unwrap(), now);
            let wait = t.check("bob", "203.0.113.9".parse().unwrap(), now);
            assert_eq!(wait, Some(Duration::from_secs(expected.next().unwrap())));
        }
        // Another name from a fresh address is not affected.
        assert_eq!(t.check("carol", "203.0.113.9".parse().unwrap(), now), None);
        // Time passes: the block lifts.
        assert_eq!(t.check("bob", ip, now + Duration::from_secs(9)), None);
        // Success clears the name.
        t.success("bob");
        t.failure(Some("bob"), "198.51.100.8".parse().unwrap(), now);
        assert_eq!(t.check("bob", "203.0.113.9".parse().unwrap(), now), None);
    }

    #[test]
    fn per_address_across_names() {
        let t = Throttle::new(cfg());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        for i in 0..5 {
            t.failure(None, ip, now);
            let expected = (i >= 4).then(|| Duration::from_secs(1));
            assert_eq!(t.check(&format!("user{i}"), ip, now), expected);
        }
        // Same /64 is the same key.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(addr_key(a), addr_key(b));
    }

    #[test]
    fn bounded_memory() {
        let t = Throttle::new(cfg());
        let now = Instant::now();
        for i in 0..100u32 {
            t.failure(
                Some(&format!("n{i}")),
                IpAddr::from(i.to_be_bytes()),
                now + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(lock(&t.names).entries.len() <= 4);
        assert!(lock(&t.addrs).entries.len() <= 4);
    }
}
