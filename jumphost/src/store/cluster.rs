//! The cluster's routing state in the shared PostgreSQL database: which nodes there are
//! (their peer address and peer key) and which node holds each serial's tunnel.
//!
//! A node holds a serial through a lease that it renews while the device stays connected;
//! the lease's expiry is set and compared with the database's clock, so a dead node's
//! serials stop counting a fixed time after its last renewal whatever the nodes' clocks
//! say. Taking a lease always wins: the newest connection of a device is the one engineers
//! reach, and the node that held it before finds out at its next renewal.
//!
//! The nodes also share their host key here, so that agents and engineers, who pin it, see
//! one service whichever node they reach: the first node to start publishes its own, the
//! others adopt it. That is a private key in the database: whoever reads the database can
//! pose as the jump host (not read sessions, which are end-to-end).
//!
//! SQLite has one node and no such state: [`Directory`] exists only on PostgreSQL.

use std::time::Duration;

use postgres::GenericClient;
use russh::keys::PublicKey;

use super::postgres::{Pool, close_elsewhere, err};
use super::{StoreError, key_text};

/// How long a lease counts after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a node renews its leases: three tries before one lapses.
pub const LEASE_RENEWAL: Duration = Duration::from_secs(3);

/// The node holding a serial now, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The serial as its device spelled it.
    pub serial: String,
    pub node: String,
    pub peer_address: String,
    pub peer_key: PublicKey,
}

/// A node as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub peer_address: String,
    pub peer_key: PublicKey,
}

/// A node with the serials it holds live leases on, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeDevices {
    pub name: String,
    pub peer_address: String,
    /// Sorted, as their devices spell them.
    pub devices: Vec<String>,
}

/// The routing state as one node reads and writes it.
pub struct Directory {
    pool: Pool,
    node: String,
}

impl Drop for Directory {
    fn drop(&mut self) {
        close_elsewhere(self.pool.clone());
    }
}

/// The lease's lifetime as SQL: a parameter in milliseconds.
const EXPIRY: &str = "clock_timestamp() + $2::bigint * interval '1 millisecond'";

fn ttl_ms() -> i64 {
    i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX)
}

impl Directory {
    pub(super) fn new(pool: Pool, node: &str) -> Self {
        Self {
            pool,
            node: node.to_owned(),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn conn(
        &self,
    ) -> Result<
        r2d2::PooledConnection<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>,
        StoreError,
    > {
        self.pool
            .get()
            .map_err(|e| StoreError(format!("no database connection: {e}")))
    }

    /// Publishes this node's peer address and key, and drops the leases a previous run of
    /// it left (its devices are gone with that process).
    pub fn publish(&self, peer_address: &str, peer_key: &PublicKey) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn
            .transaction()
            .map_err(err("starting node publication"))?;
        tx.execute(
            "INSERT INTO nodes (name, peer_address, peer_key, started_at)
             VALUES ($1, $2, $3, clock_timestamp())
             ON CONFLICT (name) DO UPDATE SET
                peer_address = excluded.peer_address,
                peer_key = excluded.peer_key,
                started_at = excluded.started_at",
            &[&self.node, &peer_address, &key_text(peer_key)?],
        )
        .map_err(err("publishing this node"))?;
        tx.execute("DELETE FROM leases WHERE node = $1", &[&self.node])
            .map_err(err("dropping this node's old leases"))?;
        tx.commit().map_err(err("committing node publication"))
    }

    /// The published node `name`, if there is one.
    pub fn node_named(&self, name: &str) -> Result<Option<Node>, StoreError> {
        let row = self
            .conn()?
            .query_opt(
                "SELECT name, peer_address, peer_key FROM nodes WHERE name = $1",
                &[&name],
            )
            .map_err(err("reading the node table"))?;
        row.map(|row| {
            let key: String = row.get(2);
            Ok(Node {
                name: row.get(0),
                peer_address: row.get(1),
                peer_key: parse_node_key(name, &key)?,
            })
        })
        .transpose()
    }

    /// Makes this node the holder of `serial` whoever held it; returns the node that held
    /// a live lease on it before, if another did.
    pub fn take(&self, serial: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(err("starting lease"))?;
        let before = live_holder(&mut tx, serial)?;
        tx.execute(
            &format!(
                "INSERT INTO leases (serial, spelled, node, claimed_at, expires_at)
                 VALUES (lower($1), $1, $3, clock_timestamp(), {EXPIRY})
                 ON CONFLICT (serial) DO UPDATE SET
                    spelled = excluded.spelled, node = excluded.node,
                    claimed_at = excluded.claimed_at, expires_at = excluded.expires_at"
            ),
            &[&serial, &ttl_ms(), &self.node],
        )
        .map_err(err("taking the lease"))?;
        tx.commit().map_err(err("committing lease"))?;
        Ok(before.filter(|node| *node != self.node))
    }

    /// Renews this node's leases on `serials` (those it holds tunnels of) and retakes the
    /// lapsed ones; returns those another node holds a live lease on now: their devices
    /// connected there since, and this node's sessions of them are stale.
    pub fn renew(&self, serials: &[String]) -> Result<Vec<String>, StoreError> {
        if serials.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .conn()?
            .query(
                &format!(
                    "INSERT INTO leases (serial, spelled, node, claimed_at, expires_at)
                     SELECT lower(s), s, $3, clock_timestamp(), {EXPIRY}
                     FROM unnest($1::text[]) AS s
                     ON CONFLICT (serial) DO UPDATE SET
                        spelled = excluded.spelled,
                        claimed_at = CASE WHEN leases.node = excluded.node
                                     THEN leases.claimed_at ELSE excluded.claimed_at END,
                        node = excluded.node,
                        expires_at = excluded.expires_at
                     WHERE leases.node = excluded.node OR leases.expires_at < clock_timestamp()
                     RETURNING spelled"
                ),
                &[&serials, &ttl_ms(), &self.node],
            )
            .map_err(err("renewing leases"))?;
        let kept: Vec<String> = rows
            .iter()
            .map(|r| r.get::<_, String>(0).to_ascii_lowercase())
            .collect();
        Ok(serials
            .iter()
            .filter(|s| !kept.contains(&s.to_ascii_lowercase()))
            .cloned()
            .collect())
    }

    /// Gives up this node's lease on `serial` (its device went away); another node's is
    /// left alone.
    pub fn release(&self, serial: &str) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                "DELETE FROM leases WHERE serial = lower($1) AND node = $2",
                &[&serial, &self.node],
            )
            .map_err(err("releasing the lease"))?;
        Ok(())
    }

    /// Gives up every lease of this node (at shutdown).
    pub fn release_all(&self) -> Result<(), StoreError> {
        self.conn()?
            .execute("DELETE FROM leases WHERE node = $1", &[&self.node])
            .map_err(err("releasing the leases"))?;
        Ok(())
    }

    /// The node holding a live lease on `serial`, with its peer address and key.
    pub fn holder(&self, serial: &str) -> Result<Option<Holder>, StoreError> {
        let row = self
            .conn()?
            .query_opt(
                "SELECT l.spelled, n.name, n.peer_address, n.peer_key
                 FROM leases l JOIN nodes n ON n.name = l.node
                 WHERE l.serial = lower($1) AND l.expires_at > clock_timestamp()",
                &[&serial],
            )
            .map_err(err("looking up the serial's node"))?;
        row.map(|row| {
            let node: String = row.get(1);
            let key: String = row.get(3);
            Ok(Holder {
                serial: row.get(0),
                peer_key: parse_node_key(&node, &key)?,
                node,
                peer_address: row.get(2),
            })
        })
        .transpose()
    }

    /// The host key the cluster's nodes share (OpenSSH private key text): the one already
    /// published, else `candidate`, published now. The first node to start decides.
    pub fn shared_host_key(
        &self,
        candidate: &str,
    ) -> Result<zeroize::Zeroizing<String>, StoreError> {
        let mut conn = self.conn()?;
        conn.execute(
            "INSERT INTO host_key (private_key) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&candidate],
        )
        .map_err(err("publishing the host key"))?;
        let row = conn
            .query_one("SELECT private_key FROM host_key", &[])
            .map_err(err("reading the cluster's host key"))?;
        Ok(zeroize::Zeroizing::new(row.get(0)))
    }

    /// Every published node with the serials it holds now, by name.
    pub fn nodes(&self) -> Result<Vec<NodeDevices>, StoreError> {
        let rows = self
            .conn()?
            .query(
                "SELECT n.name, n.peer_address,
                        coalesce(array_agg(l.spelled ORDER BY l.spelled)
                                 FILTER (WHERE l.spelled IS NOT NULL), '{}')
                 FROM nodes n LEFT JOIN leases l
                   ON l.node = n.name AND l.expires_at > clock_timestamp()
                 GROUP BY n.name, n.peer_address ORDER BY n.name",
                &[],
            )
            .map_err(err("reading the nodes"))?;
        Ok(rows
            .iter()
            .map(|r| NodeDevices {
                name: r.get(0),
                peer_address: r.get(1),
                devices: r.get(2),
            })
            .collect())
    }

    /// Notes on hop `id` the node whose device tunnel it went through.
    pub fn hop_reached(&self, id: i64, device_node: &str) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                "UPDATE hops SET device_node = $2 WHERE id = $1",
                &[&id, &device_node],
            )
            .map_err(err("recording the hop's device node"))?;
        Ok(())
    }
}

fn live_holder(conn: &mut impl GenericClient, serial: &str) -> Result<Option<String>, StoreError> {
    let row = conn
        .query_opt(
            "SELECT node FROM leases WHERE serial = lower($1) AND expires_at > clock_timestamp()",
            &[&serial],
        )
        .map_err(err("reading the lease"))?;
    Ok(row.map(|r| r.get(0)))
}

fn parse_node_key(node: &str, text: &str) -> Result<PublicKey, StoreError> {
    PublicKey::from_openssh(text)
        .map_err(|e| StoreError(format!("published key of node {node} is unreadable: {e}")))
}
