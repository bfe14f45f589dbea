//! Durable state behind a small trait: device key bindings, the audit trail and hops.
//!
//! [`SqliteStore`] is the embedded implementation; a shared database for several jump hosts
//! can implement [`Store`] later. Every write is durable when the call returns, so an API
//! answer sent after it survives `kill -9`. Calls are synchronous: async callers run them on
//! `spawn_blocking`.

mod sqlite;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use russh::keys::{HashAlg, PublicKey};

pub use sqlite::{AuditRecord, HopRecord, SqliteStore};

#[derive(Debug, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

#[derive(Debug, Clone)]
pub struct DeviceBinding {
    pub serial: String,
    pub public_key: PublicKey,
    pub expires_at: SystemTime,
}

impl DeviceBinding {
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at <= now
    }

    /// SHA256 fingerprint of the bound key, what logs and answers show instead of the key.
    pub fn fingerprint(&self) -> String {
        self.public_key.fingerprint(HashAlg::Sha256).to_string()
    }
}

/// A refusal or other notable event for the audit trail.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// e.g. "ssh.auth", "ssh.address", "ssh.channel", "api.register"
    pub kind: &'static str,
    /// serial or engineer name as claimed, if any
    pub who: Option<String>,
    pub source: IpAddr,
    /// "accepted", "refused: <reason>", …
    pub outcome: String,
}

#[derive(Debug, Clone)]
pub struct HopStart {
    pub engineer: String,
    pub source: SocketAddr,
    pub serial: String,
    pub port: u32,
    pub started_at: SystemTime,
}

pub trait Store: Send + Sync + 'static {
    /// The serial's binding if it has one that has not expired yet: an expired binding is
    /// never returned, even before [`Store::sweep_expired`] deletes it.
    fn binding(&self, serial: &str) -> Result<Option<DeviceBinding>, StoreError>;
    /// Creates or replaces the serial's binding.
    fn put_binding(&self, binding: &DeviceBinding) -> Result<(), StoreError>;
    /// Deletes the serial's binding, expired or not; false if there was none.
    fn reset_serial(&self, serial: &str) -> Result<bool, StoreError>;
    /// Deletes bindings expired at `now`; returns how many.
    fn sweep_expired(&self, now: SystemTime) -> Result<usize, StoreError>;
    fn record(&self, event: &AuditEvent) -> Result<(), StoreError>;
    fn hop_started(&self, hop: &HopStart) -> Result<i64, StoreError>;
    fn hop_ended(
        &self,
        id: i64,
        ended_at: SystemTime,
        bytes_to_device: u64,
        bytes_from_device: u64,
    ) -> Result<(), StoreError>;
    /// At start, before any hop can begin: closes the hops a previous process left open
    /// (it died without recording their end) and marks them interrupted. Returns how many.
    fn close_interrupted_hops(&self, now: SystemTime) -> Result<usize, StoreError>;

    /// Compare-and-set: stores `binding` only if the serial's current unexpired binding has
    /// the key `expected` (`None`: no unexpired binding), and `audit` with it in the same
    /// commit, so no crash leaves a binding change without its audit row. Returns false,
    /// storing nothing, if the binding changed meanwhile — two devices racing for one serial
    /// cannot both win.
    ///
    /// This default is neither atomic nor crash-safe; implementations should override it.
    fn put_binding_if(
        &self,
        binding: &DeviceBinding,
        expected: Option<&PublicKey>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let current = self.binding(&binding.serial)?;
        if current.as_ref().map(|b| b.public_key.key_data()) != expected.map(|k| k.key_data()) {
            return Ok(false);
        }
        self.put_binding(binding)?;
        self.record(audit)?;
        Ok(true)
    }
}

/// `assist-jumphost serial reset SERIAL --config FILE`.
pub fn reset_command(config: &Path, serial: &str) -> anyhow::Result<()> {
    assist_proto::validate_name(serial).with_context(|| format!("serial {serial:?}"))?;
    let config = crate::config::JumphostConfig::load(config)?;
    let store = SqliteStore::open(&config.data_dir)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let Some(old) = store.binding_including_expired(serial)? else {
        anyhow::bail!(
            "serial {serial} has no key binding in {} (nothing to reset)",
            config.data_dir.display()
        );
    };
    if !store.reset_serial(serial)? {
        anyhow::bail!("serial {serial}: its binding disappeared while resetting; nothing done");
    }
    let outcome = format!("reset by admin: removed key {}", old.fingerprint());
    let event = AuditEvent {
        kind: "admin.reset",
        who: Some(serial.to_string()),
        // A local admin command has no network source.
        source: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        outcome: outcome.clone(),
    };
    store.record(&event)?;
    tracing::info!(event = "admin.reset", serial, fingerprint = %old.fingerprint(), "serial reset");
    println!(
        "serial {serial}: removed the binding of key {} ({}); the device can now register a new key",
        old.fingerprint(),
        if old.is_expired(SystemTime::now()) {
            "already expired"
        } else {
            "was valid"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use russh::keys::PrivateKey;
    use russh::keys::ssh_key::private::Ed25519Keypair;

    use super::*;

    #[test]
    fn reset_command_deletes_a_binding_and_refuses_an_unknown_serial() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("jumphost.toml");
        std::fs::write(
            &config,
            "ssh_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n\
             data_dir = \"data\"\npolicies_dir = \"policies\"\n",
        )
        .unwrap();
        let store = SqliteStore::open(&dir.path().join("data")).unwrap();
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&[1; 32]));
        store
            .put_binding(&DeviceBinding {
                serial: "SN-1".into(),
                public_key: key.public_key().clone(),
                expires_at: SystemTime::now() + Duration::from_secs(60),
            })
            .unwrap();

        reset_command(&config, "SN-1").unwrap();
        assert!(store.binding("SN-1").unwrap().is_none());
        assert_eq!(store.recent_audit(1).unwrap()[0].kind, "admin.reset");

        let err = format!("{:#}", reset_command(&config, "SN-1").unwrap_err());
        assert!(
            err.contains("SN-1") && err.contains("no key binding"),
            "{err}"
        );
        let err = format!("{:#}", reset_command(&config, "../x").unwrap_err());
        assert!(err.contains("../x"), "{err}");
    }
}
