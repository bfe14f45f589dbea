//! Places held at once per source: unauthenticated SSH connections at the jump host, HTTP
//! connections at both servers. A source is an IPv4 address or an IPv6 /64 (one host
//! usually owns a whole /64, so counting per address would be trivial to dodge).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use crate::lock;

/// The key a source is counted under: an IPv4 address (IPv4-mapped IPv6 included), or the
/// /64 of an IPv6 address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(masked))
        }
    }
}

/// How many places each source holds. Only sources holding one are kept, so the map is
/// bounded by whatever bounds the places (a semaphore, the accept backlog).
#[derive(Debug, Default)]
pub struct PerSource(Mutex<HashMap<IpAddr, usize>>);

impl PerSource {
    /// A place for `ip` if its source holds fewer than `max` (at least 1); the place is given
    /// back when the returned slot is dropped.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut held = lock::mutex(&self.0);
        let count = held.entry(key).or_default();
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            sources: Arc::clone(self),
            key,
        })
    }

    /// Places `ip`'s source holds now.
    #[cfg(test)]
    pub fn held(&self, ip: IpAddr) -> usize {
        let held = lock::mutex(&self.0);
        held.get(&source_key(ip)).copied().unwrap_or(0)
    }
}

/// One place held by a source.
#[derive(Debug)]
pub struct SourceSlot {
    sources: Arc<PerSource>,
    key: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = lock::mutex(&self.sources.0);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_max_places_and_gets_them_back() {
        let sources = Arc::new(PerSource::default());
        let a = sources.enter(ip("192.0.2.1"), 2).unwrap();
        let b = sources.enter(ip("192.0.2.1"), 2).unwrap();
        assert!(sources.enter(ip("192.0.2.1"), 2).is_none());
        // Another source, and the same address written as IPv4-mapped IPv6.
        let _other = sources.enter(ip("192.0.2.2"), 2).unwrap();
        assert!(sources.enter(ip("::ffff:192.0.2.1"), 2).is_none());
        drop(a);
        assert_eq!(sources.held(ip("192.0.2.1")), 1);
        let _c = sources.enter(ip("192.0.2.1"), 2).unwrap();
        drop(b);
        drop(_c);
        assert_eq!(sources.held(ip("192.0.2.1")), 0);
        assert_eq!(
            sources.0.lock().unwrap().len(),
            1,
            "only the other source is kept"
        );
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_max_zero_means_one() {
        let sources = Arc::new(PerSource::default());
        let _a = sources.enter(ip("2001:db8:1:2::1"), 0).unwrap();
        assert!(sources.enter(ip("2001:db8:1:2:ffff::9"), 0).is_none());
        assert!(sources.enter(ip("2001:db8:1:3::1"), 0).is_some());
    }
}
