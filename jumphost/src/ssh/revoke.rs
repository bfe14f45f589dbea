//! Live revocation. Every logged-in session and every hop is registered with what let it
//! in; at each policy reload they are asked again of the new policy, and at a serial reset
//! the device's session is ended, so an edit reaches connections that are already open
//! instead of waiting for them to leave.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use assist_proto::lock;
use tokio_util::sync::CancellationToken;

use super::Relay;
use super::auth::{self, Identity};
use super::routes::SessionId;
use crate::policy::Policy;

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

/// Why `identity` connected from `peer` may no longer be connected under `policy`, if so.
pub fn session_allowed(
    policy: &Policy,
    identity: &Identity,
    peer: SocketAddr,
    now: SystemTime,
) -> Result<(), String> {
    match identity {
        Identity::Device { serial, .. } => auth::device_allowed(policy, serial, peer.ip()),
        Identity::Engineer(engineer) => {
            auth::engineer_scope(policy, engineer, peer.ip(), now).map(|_| ())
        }
    }
}

/// What one recheck ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rechecked {
    pub sessions: usize,
    pub hops: usize,
}

impl Relay {
    /// Asks every session and hop again of `policy`; those that no longer pass are told to
    /// stop with the reason (their own tasks log, audit and close them).
    pub fn recheck(&self, policy: &Policy) -> Rechecked {
        let now = SystemTime::now();
        let mut ended = Rechecked::default();
        for session in self.sessions.lock().values() {
            if let Err(why) = session_allowed(policy, &session.identity, session.peer, now) {
                session.revoke.revoke(why);
                ended.sessions += 1;
            }
        }
        ended.hops = self.hops.revoke_where(|hop| {
            auth::hop_allowed(policy, hop.engineer, hop.source.ip(), hop.serial, now).err()
        });
        ended
    }

    /// Ends the session of device `serial` (any case), if one is connected. Returns how many.
    pub fn revoke_device(&self, serial: &str, reason: &str) -> usize {
        let mut ended = 0;
        for session in self.sessions.lock().values() {
            if let Identity::Device { serial: s, .. } = &session.identity
                && s.eq_ignore_ascii_case(serial)
            {
                session.revoke.revoke(reason.to_owned());
                ended += 1;
            }
        }
        ended
    }
}

/// Rechecks every session and hop each time a new policy is put in force, until `shutdown`.
pub fn spawn_policy_rechecks(
    relay: Arc<Relay>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut updates = relay.policy.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = updates.changed() => if changed.is_err() { return },
            }
            let policy = updates.borrow_and_update().clone();
            let ended = relay.recheck(&policy);
            if ended != Rechecked::default() {
                tracing::info!(
                    sessions = ended.sessions,
                    hops = ended.hops,
                    "policy reload: ending what the new policy no longer allows"
                );
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
