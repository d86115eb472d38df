//! A cap on the connections one IP address holds at once on a listener
//! (issue 14, item 6): the global connection limit keeps a server alive, this
//! keeps one host from taking every slot. An IPv4-mapped IPv6 address counts
//! as its IPv4 address.
//!
//! [`PerIp::try_acquire`] hands out a [`PerIpPermit`] while the address holds
//! fewer than the cap; dropping the permit gives the slot back. The table
//! holds only addresses with a live connection, so it is bounded by the
//! global connection limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The live connections per IP address, capped.
#[derive(Debug)]
pub struct PerIp {
    cap: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's slot of its address; dropping it frees the slot.
#[derive(Debug)]
pub struct PerIpPermit {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// At most `cap` connections per address (`cap` 0 is taken as 1).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, or `None` when it holds the cap.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpPermit> {
        let ip = ip.to_canonical();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(PerIpPermit {
            owner: Arc::clone(self),
            ip,
        })
    }

    /// Connections `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

impl Drop for PerIpPermit {
    fn drop(&mut self) {
        let mut held = self
            .owner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_frees_on_drop() {
        let limit = PerIp::new(2);
        let a = IpAddr::from([127, 0, 0, 1]);
        let b = IpAddr::from([127, 0, 0, 2]);
        let p1 = limit.try_acquire(a).unwrap();
        let _p2 = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(a).is_none());
        // The same address as IPv4-mapped IPv6 is the same address.
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        assert!(limit.try_acquire(mapped).is_none());
        let _q = limit.try_acquire(b).unwrap();
        drop(p1);
        assert_eq!(limit.held(a), 1);
        let _p3 = limit.try_acquire(a).unwrap();
        assert_eq!(limit.held(b), 1);
    }
}
