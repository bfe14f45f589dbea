//! Durable state behind a small trait: device key bindings, the audit trail and hops.
//!
//! [`SqliteStore`] is the embedded default; [`PgStore`] keeps the same tables in a
//! PostgreSQL database that several jump hosts (nodes) share. Every write is durable when
//! the call returns, so an API answer sent after it survives `kill -9`. Calls are
//! synchronous: async callers go through [`blocking`]. Hops and audit rows carry the name
//! of the node that wrote them.

pub mod audit_queue;
pub mod cluster;
mod postgres;
mod sqlite;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::{HashAlg, PublicKey};

pub use postgres::{DatabaseUrl, PgStore};
pub use sqlite::SqliteStore;

/// The node name of a store opened without one (a single jump host, admin commands).
pub const LOCAL_NODE: &str = "local";

/// Where the store lives.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `assist.db` in this folder.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database shared by the cluster's nodes.
    Postgres(Box<DatabaseUrl>),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Sqlite(dir) => write!(f, "sqlite {}", dir.join(sqlite::DB_FILE).display()),
            Backend::Postgres(url) => write!(f, "{url}"),
        }
    }
}

/// Opens the store of `backend` as node `node`, bringing its schema up to date. Blocks
/// (connects, migrates): async callers use `spawn_blocking`.
pub fn open(backend: &Backend, node: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match backend {
        Backend::Sqlite(dir) => Arc::new(SqliteStore::open(dir)?.with_node(node)),
        Backend::Postgres(url) => Arc::new(PgStore::open(url, node)?),
    })
}

/// One row of the audit trail, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: SystemTime,
    pub kind: String,
    pub who: Option<String>,
    pub source: String,
    pub outcome: String,
    /// The node that recorded it.
    pub node: String,
}

/// One hop, as read back; `ended_at` and the byte counts are `None` while it is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopRecord {
    pub id: i64,
    pub engineer: String,
    pub source: String,
    pub serial: String,
    pub port: u32,
    pub started_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub bytes_to_device: Option<u64>,
    pub bytes_from_device: Option<u64>,
    /// Closed at a restart: the process ended while it was open, its byte counts are lost.
    pub interrupted: bool,
    /// The node that relayed it.
    pub node: String,
}

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
    /// The serial's binding even if expired (for admin commands).
    fn binding_including_expired(&self, serial: &str) -> Result<Option<DeviceBinding>, StoreError>;
    /// Creates or replaces the serial's binding.
    fn put_binding(&self, binding: &DeviceBinding) -> Result<(), StoreError>;
    /// Deletes the serial's binding, expired or not; false if there was none.
    fn reset_serial(&self, serial: &str) -> Result<bool, StoreError>;
    /// Deletes bindings expired at `now`; returns how many.
    fn sweep_expired(&self, now: SystemTime) -> Result<usize, StoreError>;
    fn record(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// Records `events` in one commit (see [`audit_queue::AuditQueue`]).
    fn record_batch(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    fn hop_started(&self, hop: &HopStart) -> Result<i64, StoreError>;
    fn hop_ended(
        &self,
        id: i64,
        ended_at: SystemTime,
        bytes_to_device: u64,
        bytes_from_device: u64,
    ) -> Result<(), StoreError>;
    /// At start, before any hop can begin: closes the hops a previous process of this node
    /// left open (it died without recording their end) and marks them interrupted; other
    /// nodes' hops are theirs. Returns how many.
    fn close_interrupted_hops(&self, now: SystemTime) -> Result<usize, StoreError>;
    /// The newest `limit` audit events, newest first.
    fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
    /// Every hop, oldest first.
    fn hops(&self) -> Result<Vec<HopRecord>, StoreError>;
    /// Hops not ended yet, of every node writing to this store, oldest first.
    fn open_hops(&self) -> Result<Vec<HopRecord>, StoreError>;
    /// The name this store stamps on the hops and audit rows it writes.
    fn node(&self) -> &str;

    /// Compare-and-set: stores `binding` only if the serial's current unexpired binding has
    /// the key `expected` (`None`: no unexpired binding), and `audit` with it in the same
    /// commit, so no crash leaves a binding change without its audit row. Returns false,
    /// storing nothing, if the binding changed meanwhile — two devices racing for one serial
    /// cannot both win.
    fn put_binding_if(
        &self,
        binding: &DeviceBinding,
        expected: Option<&PublicKey>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;
}

/// Times as stored: Unix milliseconds.
fn to_ms(t: SystemTime) -> i64 {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The key as stored: type and base64 only, since a comment is not part of the identity.
fn key_text(key: &PublicKey) -> Result<String, StoreError> {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh()
        .map(|s| s.trim().to_string())
        .map_err(|e| StoreError(format!("encoding public key: {e}")))
}

fn parse_key(serial: &str, text: &str) -> Result<PublicKey, StoreError> {
    PublicKey::from_openssh(text)
        .map_err(|e| StoreError(format!("stored key of serial {serial} is unreadable: {e}")))
}

/// Runs `call` on the store from async code, on the blocking pool so a disk sync never
/// stalls the runtime. A call that panicked comes back as a [`StoreError`] like the call's
/// own failures, so callers handle one error.
pub async fn blocking<T, E, F>(store: &Arc<dyn Store>, call: F) -> Result<T, E>
where
    F: FnOnce(&dyn Store) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let done = call(&*store);
        crate::metrics::store_call(started.elapsed());
        done
    })
    .await
    .map_err(|e| E::from(StoreError(format!("store task failed: {e}"))))?
}

/// Forgets the key bound to `serial` (expired or not) and audits it as the admin's act.
/// Returns the binding removed; `None` if there was none, and then nothing changed.
pub fn reset_serial_audited(
    store: &dyn Store,
    serial: &str,
) -> Result<Option<DeviceBinding>, StoreError> {
    let Some(old) = store.binding_including_expired(serial)? else {
        return Ok(None);
    };
    if !store.reset_serial(serial)? {
        return Ok(None);
    }
    store.record(&AuditEvent {
        kind: "admin.reset",
        who: Some(serial.to_string()),
        // A local admin command has no network source.
        source: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        outcome: format!("reset by admin: removed key {}", old.fingerprint()),
    })?;
    tracing::info!(event = "admin.reset", serial, fingerprint = %old.fingerprint(), "serial reset");
    Ok(Some(old))
}
