//! The embedded SQLite store: `data_dir/assist.db`, WAL with `synchronous=FULL` so every
//! commit is on disk before the call returns, schema versioned with `PRAGMA user_version`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use assist_proto::lock;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use russh::keys::PublicKey;

use super::{
    AuditEvent, AuditRecord, DeviceBinding, HopRecord, HopStart, LOCAL_NODE, Store, StoreError,
    from_ms, key_text, parse_key, to_i64, to_ms,
};

/// File name of the database inside `data_dir`.
pub const DB_FILE: &str = "assist.db";

/// Schema steps; `user_version` counts how many ran. Append, never edit a shipped step.
const MIGRATIONS: &[&str] = &[
    // 1: bindings, audit trail, hops. Times are Unix milliseconds.
    "CREATE TABLE bindings (
        serial      TEXT PRIMARY KEY NOT NULL,
        public_key  TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        bound_at    INTEGER NOT NULL,
        renewed_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX bindings_expires_at ON bindings (expires_at);
    CREATE TABLE audit_events (
        id      INTEGER PRIMARY KEY,
        at      INTEGER NOT NULL,
        kind    TEXT NOT NULL,
        who     TEXT,
        source  TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE TABLE hops (
        id                INTEGER PRIMARY KEY,
        engineer          TEXT NOT NULL,
        source            TEXT NOT NULL,
        serial            TEXT NOT NULL,
        port              INTEGER NOT NULL,
        started_at        INTEGER NOT NULL,
        ended_at          INTEGER,
        bytes_to_device   INTEGER,
        bytes_from_device INTEGER
    );",
    // 2: one serial whatever its case. Stock `ssh` lowercases host names, so routes match
    // serials without regard to case; bindings must be unique the same way, or `sn-1` could
    // be bound to another key than `SN-1` and take over its route. Of case variants already
    // stored, the most recently renewed one is kept.
    "CREATE TABLE bindings_nocase (
        serial      TEXT PRIMARY KEY NOT NULL COLLATE NOCASE,
        public_key  TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        bound_at    INTEGER NOT NULL,
        renewed_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO bindings_nocase
        SELECT serial, public_key, fingerprint, bound_at, renewed_at, expires_at
        FROM bindings ORDER BY renewed_at DESC;
    DROP TABLE bindings;
    ALTER TABLE bindings_nocase RENAME TO bindings;
    CREATE INDEX bindings_expires_at ON bindings (expires_at);",
    // 3: a hop still open when the process died (kill -9, power loss) is closed at the next
    // start and marked, so the trail tells an interrupted hop from one still running.
    "ALTER TABLE hops ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0;",
    // 4: the node that relayed a hop or recorded an event, for jump hosts sharing a
    // database; rows from before were this one jump host's.
    "ALTER TABLE hops ADD COLUMN node TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE audit_events ADD COLUMN node TEXT NOT NULL DEFAULT 'local';",
];

/// How long a write waits for another process (e.g. `serial reset`) holding the lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    conn: Mutex<Connection>,
    node: String,
}

fn err(what: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError(format!("{what}: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/assist.db` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        // SQLite gives its -wal and -shm files the database file's mode.
        private_file(&path)?;
        let conn = Connection::open(&path)
            .map_err(|e| StoreError(format!("opening {}: {e}", path.display())))?;
        Self::from_connection(conn)
            .map_err(|StoreError(e)| StoreError(format!("{}: {e}", path.display())))
    }

    /// A throwaway in-memory store, for tests of code that needs one.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(err("opening in-memory database"))?;
        Self::from_connection(conn)
    }

    fn from_connection(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("setting busy timeout"))?;
        // journal_mode answers with a row, so it is read rather than executed.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err("enabling WAL"))?;
        // FULL syncs the WAL on every commit: an acknowledged registration survives power loss.
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(err("setting synchronous=FULL"))?;
        let mut conn = conn;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
            node: LOCAL_NODE.to_owned(),
        })
    }

    /// The same store stamping `node` on the hops and audit rows it writes.
    pub fn with_node(mut self, node: &str) -> Self {
        node.clone_into(&mut self.node);
        self
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done transaction behind
        // (rusqlite rolls back on drop), so the connection is still usable.
        lock::mutex(&self.conn)
    }

    /// Holds the connection's lock until the guard drops, so a test can make the store slow.
    #[cfg(test)]
    pub fn hold_for_test(&self) -> MutexGuard<'_, Connection> {
        self.conn()
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError(format!("creating data folder {}: {e}", dir.display())))
}

/// Creates `path` as 0600 if missing, or makes it 0600: the trail names engineers, serials
/// and addresses.
fn private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| StoreError(format!("making {} private: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("starting migration"))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err("reading schema version"))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError(format!(
            "database schema version {version} is newer than this program knows ({known}); \
             upgrade assist-jumphost"
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.execute_batch(step)
            .map_err(|e| StoreError(format!("migration {}: {e}", i + 1)))?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {known}"))
        .map_err(err("writing schema version"))?;
    tx.commit().map_err(err("committing migration"))
}

/// `now`: only a binding still valid at that time; `None`: whatever is stored.
fn read_binding(
    conn: &Connection,
    serial: &str,
    now: Option<SystemTime>,
) -> Result<Option<DeviceBinding>, StoreError> {
    let min_expiry = now.map_or(i64::MIN, to_ms);
    let row: Option<(String, i64)> = conn
        .query_row(
            "SELECT public_key, expires_at FROM bindings WHERE serial = ?1 AND expires_at > ?2",
            params![serial, min_expiry],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(err("reading binding"))?;
    row.map(|(key, expires_at)| {
        Ok(DeviceBinding {
            serial: serial.to_string(),
            public_key: parse_key(serial, &key)?,
            expires_at: from_ms(expires_at),
        })
    })
    .transpose()
}

fn insert_audit(conn: &Connection, node: &str, event: &AuditEvent) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit_events (at, kind, who, source, outcome, node)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            to_ms(SystemTime::now()),
            event.kind,
            event.who,
            event.source.to_string(),
            event.outcome,
            node
        ],
    )
    .map_err(err("recording audit event"))?;
    Ok(())
}

fn write_binding(conn: &Connection, b: &DeviceBinding) -> Result<(), StoreError> {
    let now = to_ms(SystemTime::now());
    // bound_at is kept across renewals of the same key and reset when the key changes.
    conn.execute(
        "INSERT INTO bindings (serial, public_key, fingerprint, bound_at, renewed_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5)
         ON CONFLICT (serial) DO UPDATE SET
            bound_at = CASE WHEN bindings.public_key = excluded.public_key
                            THEN bindings.bound_at ELSE excluded.bound_at END,
            public_key = excluded.public_key,
            fingerprint = excluded.fingerprint,
            renewed_at = excluded.renewed_at,
            expires_at = excluded.expires_at",
        params![
            b.serial,
            key_text(&b.public_key)?,
            b.fingerprint(),
            now,
            to_ms(b.expires_at)
        ],
    )
    .map_err(err("writing binding"))?;
    Ok(())
}

impl Store for SqliteStore {
    fn binding(&self, serial: &str) -> Result<Option<DeviceBinding>, StoreError> {
        read_binding(&self.conn(), serial, Some(SystemTime::now()))
    }

    fn binding_including_expired(&self, serial: &str) -> Result<Option<DeviceBinding>, StoreError> {
        read_binding(&self.conn(), serial, None)
    }

    fn put_binding(&self, binding: &DeviceBinding) -> Result<(), StoreError> {
        write_binding(&self.conn(), binding)
    }

    fn put_binding_if(
        &self,
        binding: &DeviceBinding,
        expected: Option<&PublicKey>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("starting binding update"))?;
        let current = read_binding(&tx, &binding.serial, Some(SystemTime::now()))?;
        if current.as_ref().map(|b| b.public_key.key_data()) != expected.map(|k| k.key_data()) {
            return Ok(false);
        }
        write_binding(&tx, binding)?;
        insert_audit(&tx, &self.node, audit)?;
        tx.commit().map_err(err("committing binding"))?;
        Ok(true)
    }

    fn reset_serial(&self, serial: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM bindings WHERE serial = ?1", [serial])
            .map_err(err("deleting binding"))?;
        Ok(n > 0)
    }

    fn sweep_expired(&self, now: SystemTime) -> Result<usize, StoreError> {
        self.conn()
            .execute("DELETE FROM bindings WHERE expires_at <= ?1", [to_ms(now)])
            .map_err(err("sweeping expired bindings"))
    }

    fn record(&self, event: &AuditEvent) -> Result<(), StoreError> {
        insert_audit(&self.conn(), &self.node, event)
    }

    fn record_batch(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err("starting audit batch"))?;
        for event in events {
            insert_audit(&tx, &self.node, event)?;
        }
        tx.commit().map_err(err("committing audit batch"))
    }

    fn hop_started(&self, hop: &HopStart) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO hops (engineer, source, serial, port, started_at, node)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                hop.engineer,
                hop.source.to_string(),
                hop.serial,
                hop.port,
                to_ms(hop.started_at),
                self.node
            ],
        )
        .map_err(err("recording hop start"))?;
        Ok(conn.last_insert_rowid())
    }

    fn hop_ended(
        &self,
        id: i64,
        ended_at: SystemTime,
        bytes_to_device: u64,
        bytes_from_device: u64,
    ) -> Result<(), StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE hops SET ended_at = ?2, bytes_to_device = ?3, bytes_from_device = ?4
                 WHERE id = ?1",
                params![
                    id,
                    to_ms(ended_at),
                    to_i64(bytes_to_device),
                    to_i64(bytes_from_device)
                ],
            )
            .map_err(err("recording hop end"))?;
        if n == 0 {
            return Err(StoreError(format!(
                "recording hop end: no hop with id {id}"
            )));
        }
        Ok(())
    }

    fn close_interrupted_hops(&self, now: SystemTime) -> Result<usize, StoreError> {
        // The file is one jump host's (the admin socket keeps a second process out), so
        // every open hop was this process's predecessor's, whatever node name it had.
        self.conn()
            .execute(
                "UPDATE hops SET ended_at = ?1, interrupted = 1 WHERE ended_at IS NULL",
                params![to_ms(now)],
            )
            .map_err(err("closing interrupted hops"))
    }

    fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT at, kind, who, source, outcome, node FROM audit_events
                 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(err("reading audit events"))?;
        let rows = stmt
            .query_map([to_i64(limit as u64)], |r| {
                Ok(AuditRecord {
                    at: from_ms(r.get(0)?),
                    kind: r.get(1)?,
                    who: r.get(2)?,
                    source: r.get(3)?,
                    outcome: r.get(4)?,
                    node: r.get(5)?,
                })
            })
            .map_err(err("reading audit events"))?;
        rows.collect::<Result<_, _>>()
            .map_err(err("reading audit events"))
    }

    fn hops(&self) -> Result<Vec<HopRecord>, StoreError> {
        read_hops(&self.conn(), "")
    }

    fn open_hops(&self) -> Result<Vec<HopRecord>, StoreError> {
        read_hops(&self.conn(), "WHERE ended_at IS NULL")
    }

    fn node(&self) -> &str {
        &self.node
    }
}

/// Hops matching `filter` (a fixed `WHERE` clause or nothing), oldest first.
fn read_hops(conn: &Connection, filter: &str) -> Result<Vec<HopRecord>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id, engineer, source, serial, port, started_at, ended_at,
                    bytes_to_device, bytes_from_device, interrupted, node
             FROM hops {filter} ORDER BY id"
        ))
        .map_err(err("reading hops"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(HopRecord {
                id: r.get(0)?,
                engineer: r.get(1)?,
                source: r.get(2)?,
                serial: r.get(3)?,
                port: r.get(4)?,
                started_at: from_ms(r.get(5)?),
                ended_at: r.get::<_, Option<i64>>(6)?.map(from_ms),
                bytes_to_device: r.get::<_, Option<i64>>(7)?.map(|n| n.max(0) as u64),
                bytes_from_device: r.get::<_, Option<i64>>(8)?.map(|n| n.max(0) as u64),
                interrupted: r.get::<_, i64>(9)? != 0,
                node: r.get(10)?,
            })
        })
        .map_err(err("reading hops"))?;
    rows.collect::<Result<_, _>>().map_err(err("reading hops"))
}

#[cfg(test)]
mod tests;
