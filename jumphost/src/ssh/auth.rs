//! Who is logging in: an engineer (policy name + policy key, from `support_cidrs`) or a
//! device (serial + its registered, unexpired key, from `client_cidrs` when that is set).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use russh::keys::PublicKey;

use crate::policy::Policy;
use crate::store::Store;

/// An authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Device {
        serial: String,
        /// The device key's expiry; the session is ended then unless the key was renewed.
        expires_at: SystemTime,
        key: PublicKey,
    },
    Engineer {
        name: String,
    },
}

impl Identity {
    /// The serial or engineer name, for logs and audit.
    pub fn name(&self) -> &str {
        match self {
            Identity::Device { serial, .. } => serial,
            Identity::Engineer { name } => name,
        }
    }

    pub fn role(&self) -> &'static str {
        match self {
            Identity::Device { .. } => "device",
            Identity::Engineer { .. } => "engineer",
        }
    }
}

/// Why a login was refused. `fatal` refusals (a disallowed source address) close the
/// connection instead of letting the client try another key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub fatal: bool,
}

impl Refusal {
    fn retry(reason: String) -> Self {
        Self {
            reason,
            fatal: false,
        }
    }
    fn fatal(reason: String) -> Self {
        Self {
            reason,
            fatal: true,
        }
    }
}

/// Whether a source address could be used by any role at all; others are closed before
/// the handshake.
pub fn address_usable(policy: &Policy, ip: IpAddr) -> bool {
    policy.engineer_from_allowed(ip) || policy.client_from_allowed(ip)
}

/// Decides who `user` with `key` from `ip` is. The key decides the role: a key listed for
/// engineer `user` makes an engineer login, anything else is tried as a device.
pub async fn check(
    policy: &Policy,
    store: &Arc<dyn Store>,
    ip: IpAddr,
    user: &str,
    key: &PublicKey,
    now: SystemTime,
) -> Result<Identity, Refusal> {
    let engineer_keys = policy.engineer_keys(user);
    if engineer_keys.iter().any(|k| k.key_data() == key.key_data()) {
        if !policy.engineer_from_allowed(ip) {
            return Err(Refusal::fatal(format!(
                "engineer {user} is not allowed from {ip} (not in support_cidrs)"
            )));
        }
        return Ok(Identity::Engineer {
            name: user.to_owned(),
        });
    }
    if !engineer_keys.is_empty() {
        return Err(Refusal::retry(format!(
            "key is not listed for engineer {user}"
        )));
    }
    if let Err(e) = assist_proto::validate_name(user) {
        return Err(Refusal::retry(format!("user name {e}")));
    }
    if !policy.client_from_allowed(ip) {
        return Err(Refusal::fatal(format!(
            "devices are not allowed from {ip} (not in client_cidrs)"
        )));
    }
    if !policy.serial_allowed(user) {
        return Err(Refusal::retry(format!(
            "unknown engineer or serial {user} not allowed by policy"
        )));
    }
    let store = Arc::clone(store);
    let serial = user.to_owned();
    let binding = tokio::task::spawn_blocking(move || store.binding(&serial))
        .await
        .map_err(|e| Refusal::retry(format!("store lookup failed: {e}")))?
        .map_err(|e| Refusal::retry(format!("store lookup failed: {e}")))?;
    let Some(binding) = binding else {
        return Err(Refusal::retry(format!(
            "serial {user} has no registered, unexpired key"
        )));
    };
    if binding.public_key.key_data() != key.key_data() {
        return Err(Refusal::retry(format!(
            "key is not the one registered for serial {user}"
        )));
    }
    if binding.expires_at <= now {
        return Err(Refusal::retry(format!(
            "the key registered for serial {user} expired at {}",
            humantime::format_rfc3339_seconds(binding.expires_at)
        )));
    }
    Ok(Identity::Device {
        serial: user.to_owned(),
        expires_at: binding.expires_at,
        key: binding.public_key,
    })
}
