//! The in-memory route table: `(authenticated serial, virtual port)` → the device session
//! that holds that virtual reverse forward.
//!
//! Serials are matched without regard to ASCII case: stock `ssh` lowercases the host name
//! it puts in `direct-tcpip` (`ssh -J jump root@SN-0001` asks for `sn-0001`).
//!
//! A serial belongs to exactly one session at a time. A reconnecting device claims its
//! serial and drops the old session's routes at once, so a half-dead old connection never
//! shadows the new one; cleanup after a session ends only touches routes it still owns.

use assist_proto::lock;
use std::collections::HashMap;
use std::sync::Mutex;

/// Identifies one SSH session for the lifetime of the process.
pub type SessionId = u64;

/// First port handed out when a device asks for port 0.
pub const FIRST_ASSIGNED_PORT: u32 = 10_000;
/// Largest port a device may ask for (the wire carries a u32, TCP ports stop here).
pub const MAX_PORT: u32 = 65_535;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("session no longer owns serial {0}")]
    NotOwner(String),
    #[error("port {0} is out of range")]
    BadPort(u32),
    #[error("no free virtual port left")]
    Exhausted,
    #[error("this device already holds {0} forwards, the most allowed (max_forwards_per_device)")]
    TooMany(usize),
}

/// Where an engineer's `direct-tcpip` to `(serial, port)` goes.
#[derive(Debug, Clone)]
pub struct Route<H> {
    /// The serial as the device authenticated with it.
    pub serial: String,
    pub handle: H,
    /// The exact address string the device passed in `tcpip-forward`: stock `ssh -R`
    /// matches incoming `forwarded-tcpip` opens on it.
    pub address: String,
}

struct Owner<H> {
    serial: String,
    session: SessionId,
    handle: H,
    /// port → address as requested
    ports: HashMap<u32, String>,
}

/// Thread-safe route table; `H` is the device session's handle (generic for tests).
pub struct RouteTable<H> {
    serials: Mutex<HashMap<String, Owner<H>>>,
}

impl<H: Clone> Default for RouteTable<H> {
    fn default() -> Self {
        Self {
            serials: Mutex::new(HashMap::new()),
        }
    }
}

/// The table's key for a serial.
fn key(serial: &str) -> String {
    serial.to_ascii_lowercase()
}

impl<H: Clone> RouteTable<H> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owner<H>>> {
        // A panic while holding this lock cannot leave the map half-updated (every update is
        // a single insert/remove), so a poisoned lock is still consistent.
        lock::mutex(&self.serials)
    }

    /// Makes `session` the owner of `serial`, dropping any routes of a previous session.
    /// Returns the previous owner's handle (so the caller can disconnect it), if another
    /// session held the serial.
    pub fn claim(&self, serial: &str, session: SessionId, handle: H) -> Option<H> {
        let old = self.lock().insert(
            key(serial),
            Owner {
                serial: serial.to_owned(),
                session,
                handle,
                ports: HashMap::new(),
            },
        );
        old.filter(|o| o.session != session).map(|o| o.handle)
    }

    /// Adds a virtual forward, at most `limit` per session; port 0 assigns the lowest free
    /// port from [`FIRST_ASSIGNED_PORT`] (a search of at most `limit + 1` ports, so the
    /// lock is held for a bounded time). Returns the port in force.
    pub fn add(
        &self,
        serial: &str,
        session: SessionId,
        address: &str,
        port: u32,
        limit: usize,
    ) -> Result<u32, RouteError> {
        if port > MAX_PORT {
            return Err(RouteError::BadPort(port));
        }
        let mut map = self.lock();
        let owner = map
            .get_mut(&key(serial))
            .filter(|o| o.session == session)
            .ok_or_else(|| RouteError::NotOwner(serial.to_owned()))?;
        if owner.ports.len() >= limit && !owner.ports.contains_key(&port) {
            return Err(RouteError::TooMany(owner.ports.len()));
        }
        let port = if port == 0 {
            (FIRST_ASSIGNED_PORT..=MAX_PORT)
                .find(|p| !owner.ports.contains_key(p))
                .ok_or(RouteError::Exhausted)?
        } else {
            port
        };
        owner.ports.insert(port, address.to_owned());
        Ok(port)
    }

    /// Removes one forward of the owning session; false if it was not there.
    pub fn cancel(&self, serial: &str, session: SessionId, port: u32) -> bool {
        let mut map = self.lock();
        match map.get_mut(&key(serial)).filter(|o| o.session == session) {
            Some(owner) => owner.ports.remove(&port).is_some(),
            None => false,
        }
    }

    /// The serial as its live session spells it, if one holds `serial` (with whatever
    /// ports).
    pub fn connected_as(&self, serial: &str) -> Option<String> {
        self.lock().get(&key(serial)).map(|o| o.serial.clone())
    }

    /// The route for `(serial, port)`, if a live session holds it.
    pub fn lookup(&self, serial: &str, port: u32) -> Option<Route<H>> {
        let map = self.lock();
        let owner = map.get(&key(serial))?;
        let address = owner.ports.get(&port)?;
        Some(Route {
            serial: owner.serial.clone(),
            handle: owner.handle.clone(),
            address: address.clone(),
        })
    }

    /// Drops every route of `serial` if `session` still owns it; a session that was
    /// replaced by a reconnect leaves the new owner alone. Returns whether it removed.
    pub fn release(&self, serial: &str, session: SessionId) -> bool {
        let mut map = self.lock();
        let key = key(serial);
        if map.get(&key).is_some_and(|o| o.session == session) {
            map.remove(&key);
            true
        } else {
            false
        }
    }

    /// Every live serial with the session holding it.
    pub fn owners(&self) -> Vec<(String, SessionId)> {
        self.lock()
            .values()
            .map(|o| (o.serial.clone(), o.session))
            .collect()
    }

    /// Drops every route of `serial` if `session` still owns it, and returns that session's
    /// handle (to disconnect it): its device is connected elsewhere now.
    pub fn evict(&self, serial: &str, session: SessionId) -> Option<H> {
        let mut map = self.lock();
        let key = key(serial);
        if map.get(&key).is_some_and(|o| o.session == session) {
            map.remove(&key).map(|o| o.handle)
        } else {
            None
        }
    }

    /// Every live serial with its virtual ports, sorted, for `assist-jumphost status`.
    pub fn snapshot(&self) -> Vec<(String, Vec<u32>)> {
        let mut live: Vec<(String, Vec<u32>)> = self
            .lock()
            .values()
            .map(|o| {
                let mut ports: Vec<u32> = o.ports.keys().copied().collect();
                ports.sort_unstable();
                (o.serial.clone(), ports)
            })
            .collect();
        live.sort();
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_ports_route_to_the_owner_with_the_address_asked() {
        let t = RouteTable::default();
        assert!(t.claim("SN-1", 1, "h1").is_none());
        assert_eq!(t.add("SN-1", 1, "localhost", 22, 16), Ok(22));
        assert_eq!(t.add("SN-1", 1, "127.0.0.1", 80, 16), Ok(80));
        let r = t.lookup("SN-1", 22).unwrap();
        assert_eq!((r.handle, r.address.as_str()), ("h1", "localhost"));
        assert_eq!(t.lookup("SN-1", 80).unwrap().address, "127.0.0.1");
        assert!(t.lookup("SN-1", 443).is_none());
        assert!(t.lookup("SN-2", 22).is_none());
        assert_eq!(t.connected_as("sn-1").as_deref(), Some("SN-1"));
        assert!(t.connected_as("SN-2").is_none());
    }

    #[test]
    fn serials_match_without_regard_to_case() {
        let t = RouteTable::default();
        t.claim("SN-1", 1, ());
        t.add("SN-1", 1, "", 22, 16).unwrap();
        assert_eq!(t.lookup("sn-1", 22).unwrap().serial, "SN-1");
        assert!(t.cancel("Sn-1", 1, 22));
        assert!(t.release("sn-1", 1));
    }

    #[test]
    fn port_zero_assigns_distinct_free_ports_per_serial() {
        let t = RouteTable::default();
        t.claim("SN-1", 1, ());
        t.claim("SN-2", 2, ());
        assert_eq!(t.add("SN-1", 1, "", 0, 16), Ok(FIRST_ASSIGNED_PORT));
        assert_eq!(t.add("SN-1", 1, "", 0, 16), Ok(FIRST_ASSIGNED_PORT + 1));
        assert_eq!(t.add("SN-2", 2, "", 0, 16), Ok(FIRST_ASSIGNED_PORT));
        // An explicit request inside the assigned range is honoured, and skipped later.
        assert_eq!(
            t.add("SN-1", 1, "", FIRST_ASSIGNED_PORT + 2, 16),
            Ok(FIRST_ASSIGNED_PORT + 2)
        );
        assert_eq!(t.add("SN-1", 1, "", 0, 16), Ok(FIRST_ASSIGNED_PORT + 3));
        assert!(t.cancel("SN-1", 1, FIRST_ASSIGNED_PORT));
        assert_eq!(t.add("SN-1", 1, "", 0, 16), Ok(FIRST_ASSIGNED_PORT));
        assert_eq!(
            t.add("SN-1", 1, "", MAX_PORT + 1, 16),
            Err(RouteError::BadPort(MAX_PORT + 1))
        );
    }

    #[test]
    fn reconnect_replaces_old_routes_at_once() {
        let t = RouteTable::default();
        t.claim("SN-1", 1, "old");
        t.add("SN-1", 1, "localhost", 22, 16).unwrap();
        assert_eq!(t.claim("SN-1", 2, "new"), Some("old"));
        assert!(
            t.lookup("SN-1", 22).is_none(),
            "old routes must go with the claim"
        );
        // The old session can no longer add or cancel anything.
        assert_eq!(
            t.add("SN-1", 1, "localhost", 22, 16),
            Err(RouteError::NotOwner("SN-1".into()))
        );
        t.add("SN-1", 2, "localhost", 22, 16).unwrap();
        assert!(!t.cancel("SN-1", 1, 22));
        assert_eq!(t.lookup("SN-1", 22).unwrap().handle, "new");
    }

    #[test]
    fn release_only_by_the_owner() {
        let t = RouteTable::default();
        t.claim("SN-1", 1, ());
        t.claim("SN-1", 2, ());
        t.add("SN-1", 2, "", 22, 16).unwrap();
        assert!(
            !t.release("SN-1", 1),
            "a replaced session must not remove the new routes"
        );
        assert!(t.lookup("SN-1", 22).is_some());
        assert!(t.release("SN-1", 2));
        assert!(t.lookup("SN-1", 22).is_none());
        assert!(t.snapshot().is_empty());
        assert!(!t.release("SN-1", 2));
    }

    #[test]
    fn eviction_takes_only_the_session_named() {
        let t = RouteTable::default();
        t.claim("SN-1", 1, "old");
        t.add("SN-1", 1, "", 22, 16).unwrap();
        assert_eq!(t.owners(), [("SN-1".to_owned(), 1)]);
        // The device came back here meanwhile: the new session stays.
        t.claim("SN-1", 2, "new");
        assert_eq!(t.evict("sn-1", 1), None);
        assert_eq!(t.connected_as("SN-1").as_deref(), Some("SN-1"));
        assert_eq!(t.evict("sn-1", 2), Some("new"));
        assert!(t.connected_as("SN-1").is_none());
        assert!(!t.release("SN-1", 2));
    }

    #[test]
    fn cancel_removes_one_forward() {
        let t = RouteTable::default();
        t.claim("SN-1", 1, ());
        t.add("SN-1", 1, "", 22, 16).unwrap();
        t.add("SN-1", 1, "", 80, 16).unwrap();
        assert!(t.cancel("SN-1", 1, 22));
        assert!(!t.cancel("SN-1", 1, 22));
        assert!(t.lookup("SN-1", 22).is_none());
        assert!(t.lookup("SN-1", 80).is_some());
        assert_eq!(t.snapshot().len(), 1);
    }

    #[test]
    fn a_device_holds_at_most_its_limit_of_forwards() {
        let t = RouteTable::default();
        t.claim("SN-1", 1, ());
        assert_eq!(t.add("SN-1", 1, "", 22, 2), Ok(22));
        assert_eq!(t.add("SN-1", 1, "", 0, 2), Ok(FIRST_ASSIGNED_PORT));
        assert_eq!(t.add("SN-1", 1, "", 80, 2), Err(RouteError::TooMany(2)));
        assert_eq!(t.add("SN-1", 1, "", 0, 2), Err(RouteError::TooMany(2)));
        // Asking again for a port it holds is not a new forward.
        assert_eq!(t.add("SN-1", 1, "localhost", 22, 2), Ok(22));
        assert!(t.cancel("SN-1", 1, 22));
        assert_eq!(t.add("SN-1", 1, "", 80, 2), Ok(80));
    }
}
