//! Admin policies. (Interface skeleton: the data-side helper replaces the body.)

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PublicKey;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("policy error")]
pub struct PolicyError;

#[derive(Debug, Clone, Default)]
pub struct Policy {}

impl Policy {
    pub fn load_dir(_dir: &Path) -> Result<Policy, PolicyError> {
        Err(PolicyError)
    }
    pub fn engineer_from_allowed(&self, _ip: IpAddr) -> bool {
        false
    }
    pub fn client_from_allowed(&self, _ip: IpAddr) -> bool {
        false
    }
    /// The keys policy lists for this engineer name (empty if unknown).
    pub fn engineer_keys(&self, _name: &str) -> Vec<PublicKey> {
        Vec::new()
    }
    pub fn serial_allowed(&self, _serial: &str) -> bool {
        false
    }
    pub fn client_key_ttl(&self) -> Duration {
        Duration::ZERO
    }
    pub fn max_assistance(&self) -> Duration {
        Duration::ZERO
    }
}

/// The policy in force, swapped atomically by the watcher.
#[derive(Clone)]
pub struct PolicyHandle {}

impl PolicyHandle {
    pub fn new(_policy: Policy) -> Self {
        Self {}
    }
    pub fn current(&self) -> Arc<Policy> {
        Arc::new(Policy::default())
    }
}

/// Reloads on change (polling) and on SIGHUP; a bad edit is logged and the last good policy kept.
pub fn spawn_watcher(
    _dir: PathBuf,
    _handle: PolicyHandle,
    _shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {})
}

/// `assist-jumphost policy check --policies DIR`.
pub fn check_command(_dir: &Path) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
