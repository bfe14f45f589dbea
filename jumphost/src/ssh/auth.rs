//! Who is logging in: an engineer (policy name + policy key, or a certificate of a policy
//! CA naming them, from `support_cidrs`) or a device (serial + its registered, unexpired
//! key, from `client_cidrs` when that is set).
//!
//! A login is decided once, but what it allows is asked again of the policy in force at
//! every hop and every policy reload ([`engineer_scope`], [`hop_allowed`],
//! [`device_allowed`]), so an edit reaches sessions that are already open.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use russh::keys::{Certificate, PublicKey, ssh_key::certificate::CertType};

use crate::policy::{Policy, Scope};
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
    Engineer(Engineer),
}

/// An engineer and what let them in, kept to ask the policy again later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engineer {
    pub name: String,
    pub credential: Credential,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A key listed in a `[[support]]` entry of this name.
    Key(PublicKey),
    /// An OpenSSH user certificate naming this engineer, signed by a `[[support_ca]]`.
    Certificate {
        ca: PublicKey,
        /// The certificate's key id (who the CA issued it to), for logs and audit.
        key_id: String,
        /// `None`: valid forever.
        valid_before: Option<SystemTime>,
        /// The `source-address` critical option; empty: any address.
        source_address: Vec<IpNet>,
    },
}

impl Engineer {
    /// When the credential stops being valid (a certificate's end), if ever.
    pub fn valid_before(&self) -> Option<SystemTime> {
        match &self.credential {
            Credential::Key(_) => None,
            Credential::Certificate { valid_before, .. } => *valid_before,
        }
    }

    /// Who this is and how they logged in, for the device's note (`policy` gives the listed
    /// key's comment).
    pub fn note(
        &self,
        policy: &Policy,
        source: std::net::SocketAddr,
    ) -> assist_proto::note::HopNote {
        use assist_proto::note::{HopNote, NoteVia};
        let sha256 = |k: &PublicKey| k.fingerprint(russh::keys::HashAlg::Sha256).to_string();
        let via = match &self.credential {
            Credential::Key(key) => NoteVia::Key {
                comment: policy
                    .engineer_key_comment(&self.name, key)
                    .map(str::to_owned),
                fingerprint: sha256(key),
            },
            Credential::Certificate { ca, key_id, .. } => NoteVia::Certificate {
                key_id: key_id.clone(),
                ca: sha256(ca),
            },
        };
        HopNote {
            engineer: self.name.clone(),
            via,
            source: source.to_string(),
        }
    }

    /// How the engineer logged in, for the audit trail: never the key material.
    pub fn via(&self) -> String {
        match &self.credential {
            Credential::Key(key) => {
                format!("key {}", key.fingerprint(russh::keys::HashAlg::Sha256))
            }
            Credential::Certificate { ca, key_id, .. } => format!(
                "certificate {key_id:?} of CA {}",
                ca.fingerprint(russh::keys::HashAlg::Sha256)
            ),
        }
    }
}

impl Identity {
    /// The serial or engineer name, for logs and audit.
    pub fn name(&self) -> &str {
        match self {
            Identity::Device { serial, .. } => serial,
            Identity::Engineer(engineer) => &engineer.name,
        }
    }

    pub fn role(&self) -> &'static str {
        match self {
            Identity::Device { .. } => "device",
            Identity::Engineer(_) => "engineer",
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
    if policy.engineer_key(user, key).is_some() {
        if !policy.engineer_from_allowed(ip) {
            return Err(Refusal::fatal(format!(
                "engineer {user} is not allowed from {ip} (not in support_cidrs); ask the jump \
                 host admin to add your address"
            )));
        }
        return Ok(Identity::Engineer(Engineer {
            name: user.to_owned(),
            credential: Credential::Key(key.clone()),
        }));
    }
    if policy.is_engineer(user) {
        return Err(Refusal::retry(format!(
            "key is not listed for engineer {user}"
        )));
    }
    if let Err(e) = assist_proto::validate_name(user) {
        return Err(Refusal::retry(format!("user name {e}")));
    }
    if !policy.client_from_allowed(ip) {
        return Err(Refusal::fatal(format!(
            "devices are not allowed from {ip} (not in client_cidrs); ask the vendor's jump \
             host admin to add this network's address"
        )));
    }
    if !policy.serial_allowed(user) {
        return Err(Refusal::retry(format!(
            "unknown engineer or serial {user} not allowed by policy"
        )));
    }
    let serial = user.to_owned();
    let binding = crate::store::blocking(store, move |s| s.binding(&serial))
        .await
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

/// Decides whether `cert` (whose signature and validity russh checked) logs in engineer
/// `user` from `ip`: a user certificate of a listed CA, naming `user` among its
/// principals, valid now, from an address its `source-address` allows; as OpenSSH does, a
/// certificate with a critical option this jump host does not know is refused.
pub fn check_certificate(
    policy: &Policy,
    ip: IpAddr,
    user: &str,
    cert: &Certificate,
    now: SystemTime,
) -> Result<Identity, Refusal> {
    let key_id = cert.key_id();
    let Some(ca) = policy.support_ca(cert.signature_key()) else {
        return Err(Refusal::retry(format!(
            "certificate {key_id:?} is signed by a CA that is not a [[support_ca]]"
        )));
    };
    if cert.cert_type() != CertType::User {
        return Err(Refusal::retry(format!(
            "certificate {key_id:?} is a host certificate, not a user certificate"
        )));
    }
    if !cert.valid_principals().iter().any(|p| p == user) {
        return Err(Refusal::retry(format!(
            "certificate {key_id:?} does not name {user} among its principals ({})",
            cert.valid_principals().join(", ")
        )));
    }
    if cert.verify_signature().is_err() {
        return Err(Refusal::retry(format!(
            "certificate {key_id:?} has a bad signature"
        )));
    }
    let valid_before = cert.valid_before_time();
    let not_yet = cert.valid_after_time().is_some_and(|t| now < t);
    if not_yet || valid_before.is_some_and(|t| now >= t) {
        return Err(Refusal::retry(format!(
            "certificate {key_id:?} is not valid now (expired or not yet valid)"
        )));
    }
    let mut source_address = Vec::new();
    for (option, value) in cert.critical_options().iter() {
        if option != "source-address" {
            return Err(Refusal::retry(format!(
                "certificate {key_id:?} has the critical option {option:?}, which this jump \
                 host does not support"
            )));
        }
        for net in value.split(',') {
            let net = net.trim();
            let parsed = net
                .parse::<IpNet>()
                .or_else(|_| net.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => source_address.push(net),
                Err(_) => {
                    return Err(Refusal::retry(format!(
                        "certificate {key_id:?} has a source-address {net:?} that is not an \
                         address or network"
                    )));
                }
            }
        }
    }
    let engineer = Engineer {
        name: user.to_owned(),
        credential: Credential::Certificate {
            ca: ca.key.clone(),
            key_id: key_id.to_owned(),
            valid_before,
            source_address,
        },
    };
    engineer_scope(policy, &engineer, ip, now).map_err(Refusal::fatal)?;
    Ok(Identity::Engineer(engineer))
}

/// What the policy in force lets `engineer` from `ip` reach, or why they may no longer be
/// connected at all (key or CA removed, address left `support_cidrs` or the certificate's
/// `source-address`, certificate expired).
pub fn engineer_scope<'p>(
    policy: &'p Policy,
    engineer: &Engineer,
    ip: IpAddr,
    now: SystemTime,
) -> Result<&'p Scope, String> {
    let name = &engineer.name;
    if !policy.engineer_from_allowed(ip) {
        return Err(format!(
            "engineer {name} is not allowed from {ip} (not in support_cidrs)"
        ));
    }
    match &engineer.credential {
        Credential::Key(key) => policy
            .engineer_key(name, key)
            .ok_or_else(|| format!("the key of engineer {name} is no longer in the policy")),
        Credential::Certificate {
            ca,
            key_id,
            valid_before,
            source_address,
        } => {
            let ip = ip.to_canonical();
            if !source_address.is_empty() && !source_address.iter().any(|n| n.contains(&ip)) {
                return Err(format!(
                    "certificate {key_id:?} of engineer {name} does not allow {ip} \
                     (source-address)"
                ));
            }
            if valid_before.is_some_and(|t| now >= t) {
                return Err(format!("certificate {key_id:?} of engineer {name} expired"));
            }
            policy
                .support_ca(ca.key_data())
                .map(|ca| &ca.scope)
                .ok_or_else(|| {
                    format!(
                        "the CA of certificate {key_id:?} of engineer {name} is no longer a \
                         [[support_ca]]"
                    )
                })
        }
    }
}

/// Whether `engineer` from `ip` may reach `serial` under the policy in force.
pub fn hop_allowed(
    policy: &Policy,
    engineer: &Engineer,
    ip: IpAddr,
    serial: &str,
    now: SystemTime,
) -> Result<(), String> {
    let scope = engineer_scope(policy, engineer, ip, now)?;
    if scope.covers(serial) {
        Ok(())
    } else {
        Err(format!(
            "engineer {} may not reach serial {serial} (allowed: {scope})",
            engineer.name
        ))
    }
}

/// Why a connected device may no longer be connected under the policy in force, if so.
pub fn device_allowed(policy: &Policy, serial: &str, ip: IpAddr) -> Result<(), String> {
    if !policy.client_from_allowed(ip) {
        return Err(format!(
            "devices are not allowed from {ip} (not in client_cidrs)"
        ));
    }
    if !policy.serial_allowed(serial) {
        return Err(format!("serial {serial} is no longer allowed by policy"));
    }
    Ok(())
}

/// How long until `at`, zero if it has passed.
pub fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}
