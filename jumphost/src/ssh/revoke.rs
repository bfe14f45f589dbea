//! Live revocation. Every logged-in session and every hop is registered (`live`) with what
//! let it in; at each policy reload they are asked again of the new policy, and at a serial
//! reset the device's session is ended, so an edit reaches connections that are already
//! open instead of waiting for them to leave.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::Relay;
use super::auth::{self, Identity};
use crate::policy::Policy;

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
        Rechecked {
            sessions: self
                .sessions
                .revoke_where(|identity, peer| session_allowed(policy, identity, peer, now).err()),
            hops: self.hops.revoke_where(|hop| {
                auth::hop_allowed(policy, hop.engineer, hop.source.ip(), hop.serial, now).err()
            }),
        }
    }

    /// Ends the session of device `serial` (any case), if one is connected. Returns how many.
    pub fn revoke_device(&self, serial: &str, reason: &str) -> usize {
        self.sessions.revoke_where(|identity, _| match identity {
            Identity::Device { serial: s, .. } if s.eq_ignore_ascii_case(serial) => {
                Some(reason.to_owned())
            }
            _ => None,
        })
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
