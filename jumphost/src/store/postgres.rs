//! The store on PostgreSQL, shared by the jump hosts of a cluster: the SQLite store's tables
//! and migrations in a database named by `database = "postgresql://…"`.
//!
//! Commits wait for the WAL flush (`synchronous_commit = on`, forced per connection), so an
//! acknowledged registration survives `kill -9` of the jump host and of the database. The
//! compare-and-set on a serial's binding takes a transaction-scoped advisory lock on the
//! serial first, so two nodes racing for one serial are serialized by the database and the
//! second sees the first's binding.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use postgres::config::Host;
use postgres::{Client, GenericClient, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use russh::keys::PublicKey;

use super::{
    AuditEvent, AuditRecord, DeviceBinding, HopRecord, HopStart, Store, StoreError, from_ms,
    key_text, parse_key, to_i64, to_ms,
};

/// Schema steps, the same as SQLite's in PostgreSQL's words; `assist_schema.version` counts
/// how many ran. Append, never edit a shipped step.
const MIGRATIONS: &[&str] = &[
    // 1: bindings, audit trail, hops. Times are Unix milliseconds.
    "CREATE TABLE bindings (
        serial      TEXT PRIMARY KEY NOT NULL,
        public_key  TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        bound_at    BIGINT NOT NULL,
        renewed_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL
    );
    CREATE INDEX bindings_expires_at ON bindings (expires_at);
    CREATE TABLE audit_events (
        id      BIGSERIAL PRIMARY KEY,
        at      BIGINT NOT NULL,
        kind    TEXT NOT NULL,
        who     TEXT,
        source  TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE TABLE hops (
        id                BIGSERIAL PRIMARY KEY,
        engineer          TEXT NOT NULL,
        source            TEXT NOT NULL,
        serial            TEXT NOT NULL,
        port              BIGINT NOT NULL,
        started_at        BIGINT NOT NULL,
        ended_at          BIGINT,
        bytes_to_device   BIGINT,
        bytes_from_device BIGINT
    );",
    // 2: one serial whatever its case (stock `ssh` lowercases host names); of case variants
    // already stored, the most recently renewed one is kept. Serials are ASCII, so lower()
    // folds them the same under any collation.
    "DELETE FROM bindings b USING bindings o
        WHERE lower(b.serial) = lower(o.serial) AND b.serial <> o.serial
          AND (b.renewed_at < o.renewed_at
               OR (b.renewed_at = o.renewed_at AND b.serial > o.serial));
    CREATE UNIQUE INDEX bindings_serial_nocase ON bindings (lower(serial));",
    // 3: a hop still open when its node died is closed at the node's next start, and marked.
    "ALTER TABLE hops ADD COLUMN interrupted BOOLEAN NOT NULL DEFAULT false;",
    // 4: the node that relayed a hop or recorded an event.
    "ALTER TABLE hops ADD COLUMN node TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE audit_events ADD COLUMN node TEXT NOT NULL DEFAULT 'local';
    CREATE INDEX hops_open ON hops (node) WHERE ended_at IS NULL;",
    // 5: the cluster's routing state (see `store::cluster`): each node's peer address and
    // key, which node holds each serial's tunnel (a lease, timed by the database's clock so
    // the nodes' clocks need not agree), the node a hop reached its device on, and the host
    // key the nodes share.
    "CREATE TABLE nodes (
        name         TEXT PRIMARY KEY NOT NULL,
        peer_address TEXT NOT NULL,
        peer_key     TEXT NOT NULL,
        started_at   TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE leases (
        serial     TEXT PRIMARY KEY NOT NULL,
        spelled    TEXT NOT NULL,
        node       TEXT NOT NULL,
        claimed_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX leases_node ON leases (node);
    ALTER TABLE hops ADD COLUMN device_node TEXT;
    CREATE TABLE host_key (
        only_one    BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_one),
        private_key TEXT NOT NULL
    );",
];

/// Key of the advisory lock that serializes migrations of nodes starting at once.
const MIGRATION_LOCK: i64 = 0x6173_7369_7374; // "assist"

/// Connections kept open: calls run on tokio's blocking pool, a few at once.
const POOL_SIZE: u32 = 8;

/// How long a call waits for a connection, and the first connect at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `database` URL with the password from wherever it came. Shown (Debug, Display, logs)
/// as user, hosts and database only: never the password or other options.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: postgres::Config,
}

impl DatabaseUrl {
    /// Parses a `postgresql://` or `postgres://` URL (libpq's form, options included).
    pub fn parse(url: &str) -> Result<Self, String> {
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            return Err("must be a URL starting with postgresql://".into());
        }
        // The parser's messages name the option, never echo the URL.
        let mut config = postgres::Config::from_str(url).map_err(|e| chain(&e))?;
        if config.get_user().is_none() {
            return Err("names no user (postgresql://USER@HOST:PORT/DB)".into());
        }
        if config.get_hosts().is_empty() {
            return Err("names no host (postgresql://USER@HOST:PORT/DB)".into());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        Ok(Self { config })
    }

    /// Whether the URL itself carries a password.
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// The password to log in with, from a file or the environment.
    pub fn set_password(&mut self, password: &[u8]) {
        self.config.password(password);
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self.config.get_user().unwrap_or_default();
        let ports = self.config.get_ports();
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let name = match host {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                match ports.get(i).or(ports.first()) {
                    Some(port) => format!("{name}:{port}"),
                    None => name,
                }
            })
            .collect();
        let password = if self.has_password() { ":***" } else { "" };
        write!(
            f,
            "postgresql://{user}{password}@{}/{}",
            hosts.join(","),
            self.config.get_dbname().unwrap_or(user)
        )
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

pub(super) type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

pub struct PgStore {
    pool: Pool,
    node: String,
}

/// Every connection commits durably whatever the server's or the role's default says.
#[derive(Debug)]
struct DurableCommits;

impl r2d2::CustomizeConnection<Client, postgres::Error> for DurableCommits {
    fn on_acquire(&self, conn: &mut Client) -> Result<(), postgres::Error> {
        conn.batch_execute("SET synchronous_commit = on")
    }
}

/// An error and its causes in one line: postgres' own text is often only "db error" or
/// "invalid connection string", with the server's message or the bad option in the source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

pub(super) fn err(what: &str) -> impl Fn(postgres::Error) -> StoreError + '_ {
    move |e| StoreError(format!("{what}: {}", chain(&e)))
}

impl PgStore {
    /// Connects to `url` and brings its schema up to date; `node` is stamped on the hops and
    /// audit rows this store writes. Fails at once if the database cannot be reached.
    pub fn open(url: &DatabaseUrl, node: &str) -> Result<Self, StoreError> {
        let manager = PostgresConnectionManager::new(url.config.clone(), NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            .connection_customizer(Box::new(DurableCommits))
            .build_unchecked(manager);
        let store = Self {
            pool,
            node: node.to_owned(),
        };
        // A direct connect rather than the pool's, for the server's own reason on failure.
        let mut first = url
            .config
            .connect(NoTls)
            .map_err(|e| err(&format!("connecting to {url}"))(e))?;
        let migrated = migrate(&mut first);
        close_elsewhere(first);
        migrated.map_err(|StoreError(e)| StoreError(format!("{url}: {e}")))?;
        Ok(store)
    }

    /// The cluster's routing state in the same database, as node `node` sees it.
    pub fn directory(&self) -> super::cluster::Directory {
        super::cluster::Directory::new(self.pool.clone(), &self.node)
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, StoreError> {
        self.pool
            .get()
            .map_err(|e| StoreError(format!("no database connection: {e}")))
    }
}

/// postgres' blocking client runs a small runtime of its own, which must not be closed on
/// an async runtime's thread; a plain thread closes it wherever the last handle is dropped.
pub(super) fn close_elsewhere<T: Send + 'static>(handle: T) {
    if std::thread::Builder::new()
        .name("pg-close".into())
        .spawn(move || drop(handle))
        .is_err()
    {
        tracing::warn!("could not start a thread to close database connections");
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        close_elsewhere(self.pool.clone());
    }
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction().map_err(err("starting migration"))?;
    // Nodes starting at once take turns; the second finds the schema done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(err("locking for migration"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS assist_schema (version INTEGER NOT NULL)")
        .map_err(err("creating the schema version table"))?;
    let version: i32 = tx
        .query_opt("SELECT version FROM assist_schema", &[])
        .map_err(err("reading schema version"))?
        .map_or(0, |row| row.get(0));
    let known = MIGRATIONS.len() as i32;
    if version > known {
        return Err(StoreError(format!(
            "database schema version {version} is newer than this program knows ({known}); \
             upgrade assist-jumphost"
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.batch_execute(step)
            .map_err(|e| err(&format!("migration {}", i + 1))(e))?;
    }
    tx.execute("DELETE FROM assist_schema", &[])
        .map_err(err("writing schema version"))?;
    tx.execute("INSERT INTO assist_schema (version) VALUES ($1)", &[&known])
        .map_err(err("writing schema version"))?;
    tx.commit().map_err(err("committing migration"))
}

/// `now`: only a binding still valid at that time; `None`: whatever is stored.
fn read_binding(
    conn: &mut impl GenericClient,
    serial: &str,
    now: Option<SystemTime>,
) -> Result<Option<DeviceBinding>, StoreError> {
    let min_expiry = now.map_or(i64::MIN, to_ms);
    let row = conn
        .query_opt(
            "SELECT public_key, expires_at FROM bindings
             WHERE lower(serial) = lower($1) AND expires_at > $2",
            &[&serial, &min_expiry],
        )
        .map_err(err("reading binding"))?;
    row.map(|row| {
        let key: String = row.get(0);
        Ok(DeviceBinding {
            serial: serial.to_string(),
            public_key: parse_key(serial, &key)?,
            expires_at: from_ms(row.get(1)),
        })
    })
    .transpose()
}

fn insert_audit(
    conn: &mut impl GenericClient,
    node: &str,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit_events (at, kind, who, source, outcome, node)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &to_ms(SystemTime::now()),
            &event.kind,
            &event.who,
            &event.source.to_string(),
            &event.outcome,
            &node,
        ],
    )
    .map_err(err("recording audit event"))?;
    Ok(())
}

fn write_binding(conn: &mut impl GenericClient, b: &DeviceBinding) -> Result<(), StoreError> {
    let now = to_ms(SystemTime::now());
    // bound_at is kept across renewals of the same key and reset when the key changes.
    conn.execute(
        "INSERT INTO bindings (serial, public_key, fingerprint, bound_at, renewed_at, expires_at)
         VALUES ($1, $2, $3, $4, $4, $5)
         ON CONFLICT ((lower(serial))) DO UPDATE SET
            bound_at = CASE WHEN bindings.public_key = excluded.public_key
                            THEN bindings.bound_at ELSE excluded.bound_at END,
            public_key = excluded.public_key,
            fingerprint = excluded.fingerprint,
            renewed_at = excluded.renewed_at,
            expires_at = excluded.expires_at",
        &[
            &b.serial,
            &key_text(&b.public_key)?,
            &b.fingerprint(),
            &now,
            &to_ms(b.expires_at),
        ],
    )
    .map_err(err("writing binding"))?;
    Ok(())
}

fn hop_from_row(row: &postgres::Row) -> HopRecord {
    HopRecord {
        id: row.get(0),
        engineer: row.get(1),
        source: row.get(2),
        serial: row.get(3),
        port: u32::try_from(row.get::<_, i64>(4)).unwrap_or(0),
        started_at: from_ms(row.get(5)),
        ended_at: row.get::<_, Option<i64>>(6).map(from_ms),
        bytes_to_device: row.get::<_, Option<i64>>(7).map(|n| n.max(0) as u64),
        bytes_from_device: row.get::<_, Option<i64>>(8).map(|n| n.max(0) as u64),
        interrupted: row.get(9),
        node: row.get(10),
    }
}

const HOP_COLUMNS: &str = "id, engineer, source, serial, port, started_at, ended_at, \
                           bytes_to_device, bytes_from_device, interrupted, node";

impl Store for PgStore {
    fn binding(&self, serial: &str) -> Result<Option<DeviceBinding>, StoreError> {
        read_binding(&mut *self.conn()?, serial, Some(SystemTime::now()))
    }

    fn binding_including_expired(&self, serial: &str) -> Result<Option<DeviceBinding>, StoreError> {
        read_binding(&mut *self.conn()?, serial, None)
    }

    fn put_binding(&self, binding: &DeviceBinding) -> Result<(), StoreError> {
        write_binding(&mut *self.conn()?, binding)
    }

    fn put_binding_if(
        &self,
        binding: &DeviceBinding,
        expected: Option<&PublicKey>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(err("starting binding update"))?;
        // Held until commit or rollback: another node's compare-and-set on this serial waits
        // here and then reads what this one wrote. A row lock would not cover a serial with
        // no row yet.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext(lower($1)))",
            &[&binding.serial],
        )
        .map_err(err("locking the serial"))?;
        let current = read_binding(&mut tx, &binding.serial, Some(SystemTime::now()))?;
        if current.as_ref().map(|b| b.public_key.key_data()) != expected.map(|k| k.key_data()) {
            return Ok(false);
        }
        write_binding(&mut tx, binding)?;
        insert_audit(&mut tx, &self.node, audit)?;
        tx.commit().map_err(err("committing binding"))?;
        Ok(true)
    }

    fn reset_serial(&self, serial: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()?
            .execute(
                "DELETE FROM bindings WHERE lower(serial) = lower($1)",
                &[&serial],
            )
            .map_err(err("deleting binding"))?;
        Ok(n > 0)
    }

    fn sweep_expired(&self, now: SystemTime) -> Result<usize, StoreError> {
        let n = self
            .conn()?
            .execute(
                "DELETE FROM bindings WHERE expires_at <= $1",
                &[&to_ms(now)],
            )
            .map_err(err("sweeping expired bindings"))?;
        Ok(n as usize)
    }

    fn record(&self, event: &AuditEvent) -> Result<(), StoreError> {
        insert_audit(&mut *self.conn()?, &self.node, event)
    }

    fn record_batch(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(err("starting audit batch"))?;
        for event in events {
            insert_audit(&mut tx, &self.node, event)?;
        }
        tx.commit().map_err(err("committing audit batch"))
    }

    fn hop_started(&self, hop: &HopStart) -> Result<i64, StoreError> {
        let row = self
            .conn()?
            .query_one(
                "INSERT INTO hops (engineer, source, serial, port, started_at, node)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &hop.engineer,
                    &hop.source.to_string(),
                    &hop.serial,
                    &i64::from(hop.port),
                    &to_ms(hop.started_at),
                    &self.node,
                ],
            )
            .map_err(err("recording hop start"))?;
        Ok(row.get(0))
    }

    fn hop_ended(
        &self,
        id: i64,
        ended_at: SystemTime,
        bytes_to_device: u64,
        bytes_from_device: u64,
    ) -> Result<(), StoreError> {
        let n = self
            .conn()?
            .execute(
                "UPDATE hops SET ended_at = $2, bytes_to_device = $3, bytes_from_device = $4
                 WHERE id = $1",
                &[
                    &id,
                    &to_ms(ended_at),
                    &to_i64(bytes_to_device),
                    &to_i64(bytes_from_device),
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
        // Only this node's: the other nodes' open hops are running.
        let n = self
            .conn()?
            .execute(
                "UPDATE hops SET ended_at = $1, interrupted = true
                 WHERE ended_at IS NULL AND node = $2",
                &[&to_ms(now), &self.node],
            )
            .map_err(err("closing interrupted hops"))?;
        Ok(n as usize)
    }

    fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self
            .conn()?
            .query(
                "SELECT at, kind, who, source, outcome, node FROM audit_events
                 ORDER BY id DESC LIMIT $1",
                &[&to_i64(limit as u64)],
            )
            .map_err(err("reading audit events"))?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                at: from_ms(r.get(0)),
                kind: r.get(1),
                who: r.get(2),
                source: r.get(3),
                outcome: r.get(4),
                node: r.get(5),
            })
            .collect())
    }

    fn hops(&self) -> Result<Vec<HopRecord>, StoreError> {
        let rows = self
            .conn()?
            .query(&format!("SELECT {HOP_COLUMNS} FROM hops ORDER BY id"), &[])
            .map_err(err("reading hops"))?;
        Ok(rows.iter().map(hop_from_row).collect())
    }

    fn open_hops(&self) -> Result<Vec<HopRecord>, StoreError> {
        let rows = self
            .conn()?
            .query(
                &format!("SELECT {HOP_COLUMNS} FROM hops WHERE ended_at IS NULL ORDER BY id"),
                &[],
            )
            .map_err(err("reading hops"))?;
        Ok(rows.iter().map(hop_from_row).collect())
    }

    fn node(&self) -> &str {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_shown_without_its_password() {
        let url =
            DatabaseUrl::parse("postgresql://assist:s3cret@db.example:5433/relay?sslmode=disable")
                .unwrap();
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgresql://assist:***@db.example:5433/relay"),
            "{shown}"
        );
        let mut url = DatabaseUrl::parse("postgres://assist@127.0.0.1:5432/relay").unwrap();
        assert!(!url.has_password());
        url.set_password(b"from-a-file");
        assert!(url.has_password());
        assert!(!format!("{url:?}").contains("from-a-file"));
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (url, why) in [
            ("mysql://a@b/c", "postgresql://"),
            ("host=db user=a", "postgresql://"),
            ("postgresql://db.example/relay", "no user"),
            ("postgresql://a@db:notaport/relay", "port"),
        ] {
            let e = DatabaseUrl::parse(url).err().unwrap();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
