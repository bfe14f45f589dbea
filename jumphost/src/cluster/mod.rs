//! Routing across the nodes of a cluster: an engineer's hop that lands on a node not holding
//! the device is carried to the node that does, over SSH between the nodes.
//!
//! Each node publishes its peer address and its own node key in the shared database
//! (`store::cluster`), and holds a lease there on every serial whose tunnel it holds.
//! `lease` renews those leases and drops the sessions of devices that have connected to
//! another node since; `peer_link` dials the other nodes and opens channels to their
//! devices; `peer_server` accepts the other nodes' links and splices their channels into
//! its device tunnels; `remote_hop` decides where an engineer's hop goes.
//!
//! The engineer is checked (allowlist, policy, scope) on the node he logged in to only; a
//! node accepts peer links only from keys published in the node table, and a link checks
//! the node it dials against its published key the same way.

pub mod lease;
pub mod peer_link;
pub mod peer_server;
pub mod remote_hop;

use std::path::Path;
use std::sync::Arc;

use russh::keys::{HashAlg, PrivateKey};

use crate::store::StoreError;
use crate::store::cluster::Directory;

/// File of this node's own key inside `data_dir`: its identity towards the other nodes,
/// both as peer server and as peer client. Unlike `host_key` it differs on every node.
pub const NODE_KEY_FILE: &str = "node_key";

/// This node as a member of the cluster.
pub struct Cluster {
    pub directory: Arc<Directory>,
    /// The node key (see [`NODE_KEY_FILE`]).
    pub key: Arc<PrivateKey>,
    /// The other nodes' links, dialled when first needed and reused.
    pub links: peer_link::Links,
}

impl Cluster {
    /// Loads or creates the node key in `data_dir`.
    pub fn new(directory: Arc<Directory>, data_dir: &Path) -> anyhow::Result<Self> {
        let key =
            crate::ssh::hostkey::load_or_create_key(&data_dir.join(NODE_KEY_FILE), "node key")?;
        Ok(Self {
            directory,
            key: Arc::new(key),
            links: peer_link::Links::default(),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        self.directory.node()
    }

    /// The node key's `SHA256:…` fingerprint, printed at start.
    pub fn fingerprint(&self) -> String {
        self.key
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    /// Runs `call` on the directory from async code, on the blocking pool (the database
    /// client blocks).
    pub async fn call<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Directory) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let directory = Arc::clone(&self.directory);
        tokio::task::spawn_blocking(move || call(&directory))
            .await
            .map_err(|e| StoreError(format!("directory task failed: {e}")))?
    }

    /// Makes this node the holder of `serial` (its device has just claimed it here), so
    /// the other nodes route its hops here from now on.
    pub async fn take(&self, serial: &str) {
        let owned = serial.to_owned();
        match self.call(move |d| d.take(&owned)).await {
            Ok(Some(before)) => {
                tracing::info!(serial, node = %before, "device moved here from another node");
            }
            Ok(None) => tracing::debug!(serial, "lease taken"),
            // The renewal retries; meanwhile the device is reachable through this node.
            Err(e) => tracing::warn!(serial, error = %e, "could not take the lease"),
        }
    }

    /// Gives up this node's lease on `serial` (its device went away).
    pub async fn release(&self, serial: &str) {
        let owned = serial.to_owned();
        if let Err(e) = self.call(move |d| d.release(&owned)).await {
            tracing::warn!(serial, error = %e, "could not release the lease; it lapses");
        }
    }
}
