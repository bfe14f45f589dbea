//! What is connected right now: each logged-in session and each hop in progress with what
//! let it in and the [`Revoke`] that stops it. `revoke` asks them again at a policy reload,
//! `assist-jumphost status` lists them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use assist_proto::lock;
use tokio_util::sync::CancellationToken;

use super::auth::{Engineer, Identity};
use super::routes::SessionId;

/// A stop request with its reason: the first reason given is the one reported.
#[derive(Debug, Default)]
pub struct Revoke {
    token: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Revoke {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Asks whoever waits in [`Revoke::revoked`] to stop, for `reason`.
    pub fn revoke(&self, reason: String) {
        let mut slot = lock::mutex(&self.reason);
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.token.cancel();
    }

    /// Resolves with the reason once revoked.
    pub async fn revoked(&self) -> String {
        self.token.cancelled().await;
        lock::mutex(&self.reason).clone().unwrap_or_default()
    }

    /// Cancelled when revoked, for code that only needs to stop.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// A logged-in connection.
struct LiveSession {
    identity: Identity,
    peer: SocketAddr,
    revoke: Arc<Revoke>,
}

/// Every logged-in connection, by session id.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<SessionId, LiveSession>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, LiveSession>> {
        // Every update is a single insert or remove, so a poisoned map is still consistent.
        lock::mutex(&self.0)
    }

    /// Registers a logged-in session until the returned guard drops; the session stops when
    /// the returned [`Revoke`] fires.
    pub fn register(
        self: &Arc<Self>,
        id: SessionId,
        identity: Identity,
        peer: SocketAddr,
    ) -> (Registered, Arc<Revoke>) {
        let revoke = Revoke::new();
        self.lock().insert(
            id,
            LiveSession {
                identity,
                peer,
                revoke: Arc::clone(&revoke),
            },
        );
        let guard = Registered {
            sessions: Arc::clone(self),
            id,
        };
        (guard, revoke)
    }

    /// Stops every session for which `why` gives a reason; returns how many.
    pub fn revoke_where(
        &self,
        mut why: impl FnMut(&Identity, SocketAddr) -> Option<String>,
    ) -> usize {
        let mut ended = 0;
        for session in self.lock().values() {
            if let Some(reason) = why(&session.identity, session.peer) {
                session.revoke.revoke(reason);
                ended += 1;
            }
        }
        ended
    }
}

/// Removes a session from [`Sessions`] when its connection ends, on any path.
pub struct Registered {
    sessions: Arc<Sessions>,
    id: SessionId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

/// A hop in progress, as `assist-jumphost status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveHop {
    pub engineer: String,
    pub source: SocketAddr,
    pub serial: String,
    pub port: u32,
    /// Unix seconds.
    pub since: u64,
}

/// A hop in progress with what it is checked against at a policy reload.
pub struct HopEntry {
    pub shown: LiveHop,
    pub engineer: Engineer,
    pub stop: Arc<Revoke>,
}

/// What a recheck of [`LiveHops::revoke_where`] sees of one hop.
pub struct HopView<'a> {
    pub engineer: &'a Engineer,
    pub source: SocketAddr,
    pub serial: &'a str,
}

/// The hops in progress, by their id in the store (ids grow, so the map is oldest first).
#[derive(Default)]
pub struct LiveHops(Mutex<BTreeMap<i64, HopEntry>>);

impl LiveHops {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, HopEntry>> {
        // Every update is a single insert or remove, so a poisoned map is still consistent.
        lock::mutex(&self.0)
    }

    pub fn insert(&self, id: i64, entry: HopEntry) {
        self.lock().insert(id, entry);
    }

    pub fn remove(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// Every hop in progress, oldest first.
    pub fn snapshot(&self) -> Vec<LiveHop> {
        self.lock().values().map(|h| h.shown.clone()).collect()
    }

    /// Stops every hop for which `why` gives a reason; returns how many.
    pub fn revoke_where(&self, mut why: impl FnMut(HopView<'_>) -> Option<String>) -> usize {
        let mut ended = 0;
        for hop in self.lock().values() {
            let view = HopView {
                engineer: &hop.engineer,
                source: hop.shown.source,
                serial: &hop.shown.serial,
            };
            if let Some(reason) = why(view) {
                hop.stop.revoke(reason);
                ended += 1;
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::SystemTime;

    #[tokio::test]
    async fn the_first_reason_is_the_one_reported() {
        let revoke = Revoke::new();
        revoke.revoke("first".into());
        revoke.revoke("second".into());
        assert_eq!(revoke.revoked().await, "first");
        assert!(revoke.token().is_cancelled());
    }

    #[test]
    fn a_session_leaves_the_registry_when_its_guard_drops() {
        let sessions = Arc::new(Sessions::default());
        let identity = Identity::Device {
            serial: "SN-1".into(),
            expires_at: SystemTime::now(),
            key: russh::keys::PrivateKey::from(
                russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[1; 32]),
            )
            .public_key()
            .clone(),
        };
        let (guard, _revoke) = sessions.register(7, identity, "127.0.0.1:1".parse().unwrap());
        assert_eq!(sessions.lock().len(), 1);
        drop(guard);
        assert!(sessions.lock().is_empty());
    }
}
