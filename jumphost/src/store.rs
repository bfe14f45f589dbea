//! Durable state. (Interface skeleton: the data-side helper replaces the body.)

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::SystemTime;

use russh::keys::PublicKey;

#[derive(Debug, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

#[derive(Debug, Clone)]
pub struct DeviceBinding {
    pub serial: String,
    pub public_key: PublicKey,
    pub expires_at: SystemTime,
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
    fn binding(&self, serial: &str) -> Result<Option<DeviceBinding>, StoreError>;
    fn put_binding(&self, binding: &DeviceBinding) -> Result<(), StoreError>;
    fn reset_serial(&self, serial: &str) -> Result<bool, StoreError>;
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
}

pub struct SqliteStore {}

impl SqliteStore {
    pub fn open(_data_dir: &Path) -> Result<Self, StoreError> {
        Err(StoreError("not implemented yet".into()))
    }
}

/// `assist-jumphost serial reset SERIAL --config FILE`.
pub fn reset_command(_config: &Path, _serial: &str) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
