//! SQLite store: round trips, expiry, reopening, migrations and the audit trail.

use std::net::{IpAddr, SocketAddr};

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;

use super::*;

fn key(seed: u8) -> PublicKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
        .public_key()
        .clone()
}

fn binding(serial: &str, seed: u8, valid_for: Duration) -> DeviceBinding {
    DeviceBinding {
        serial: serial.into(),
        public_key: key(seed),
        expires_at: SystemTime::now() + valid_for,
    }
}

const DAY: Duration = Duration::from_secs(86400);

fn registered() -> AuditEvent {
    AuditEvent {
        kind: "api.register",
        who: Some("SN-1".into()),
        source: "192.0.2.1".parse().unwrap(),
        outcome: "registered".into(),
    }
}

/// The key bound to `serial` now; panics when there is none.
fn bound_key(store: &SqliteStore, serial: &str) -> russh::keys::ssh_key::public::KeyData {
    store
        .binding(serial)
        .unwrap()
        .unwrap()
        .public_key
        .key_data()
        .clone()
}

#[test]
fn binding_round_trip_and_renewal() {
    let store = SqliteStore::open_in_memory().unwrap();
    assert!(store.binding("SN-1").unwrap().is_none());
    let b = binding("SN-1", 1, DAY);
    store.put_binding(&b).unwrap();
    let got = store.binding("SN-1").unwrap().unwrap();
    assert_eq!(got.serial, "SN-1");
    assert_eq!(got.public_key.key_data(), b.public_key.key_data());
    assert_eq!(to_ms(got.expires_at), to_ms(b.expires_at));
    assert!(store.binding("SN-2").unwrap().is_none());

    let renewed = binding("SN-1", 1, 2 * DAY);
    store.put_binding(&renewed).unwrap();
    assert_eq!(
        to_ms(store.binding("SN-1").unwrap().unwrap().expires_at),
        to_ms(renewed.expires_at)
    );
}

#[test]
fn expired_binding_is_never_returned_and_is_swept() {
    let store = SqliteStore::open_in_memory().unwrap();
    let mut old = binding("SN-OLD", 1, DAY);
    old.expires_at = SystemTime::now() - Duration::from_secs(1);
    store.put_binding(&old).unwrap();
    store.put_binding(&binding("SN-NEW", 2, DAY)).unwrap();
    assert!(
        store.binding("SN-OLD").unwrap().is_none(),
        "expired before the sweep"
    );
    assert!(store.binding_including_expired("SN-OLD").unwrap().is_some());

    assert_eq!(store.sweep_expired(SystemTime::now()).unwrap(), 1);
    assert!(store.binding_including_expired("SN-OLD").unwrap().is_none());
    assert!(store.binding("SN-NEW").unwrap().is_some());
    assert_eq!(store.sweep_expired(SystemTime::now() + 2 * DAY).unwrap(), 1);
    assert!(store.binding("SN-NEW").unwrap().is_none());
}

#[test]
fn compare_and_set_refuses_a_changed_binding() {
    let store = SqliteStore::open_in_memory().unwrap();
    let first = binding("SN-1", 1, DAY);
    assert!(store.put_binding_if(&first, None, &registered()).unwrap());
    // A second device racing for the same serial lost: the serial is no longer unbound.
    assert!(
        !store
            .put_binding_if(&binding("SN-1", 2, DAY), None, &registered())
            .unwrap()
    );
    assert!(
        !store
            .put_binding_if(&binding("SN-1", 2, DAY), Some(&key(3)), &registered())
            .unwrap()
    );
    assert_eq!(&bound_key(&store, "SN-1"), key(1).key_data());
    // The losers left no audit row: only the winner's change is recorded.
    assert_eq!(store.recent_audit(10).unwrap().len(), 1);
    assert!(
        store
            .put_binding_if(&binding("SN-1", 2, DAY), Some(&key(1)), &registered())
            .unwrap()
    );
    assert_eq!(store.recent_audit(10).unwrap().len(), 2);
    assert_eq!(&bound_key(&store, "SN-1"), key(2).key_data());

    // An expired binding counts as none.
    let mut old = binding("SN-2", 1, DAY);
    old.expires_at = SystemTime::now() - Duration::from_secs(1);
    store.put_binding(&old).unwrap();
    assert!(
        !store
            .put_binding_if(&binding("SN-2", 2, DAY), Some(&key(1)), &registered())
            .unwrap()
    );
    assert!(
        store
            .put_binding_if(&binding("SN-2", 2, DAY), None, &registered())
            .unwrap()
    );
}

#[test]
fn reset_deletes_the_binding() {
    let store = SqliteStore::open_in_memory().unwrap();
    store.put_binding(&binding("SN-1", 1, DAY)).unwrap();
    assert!(store.reset_serial("SN-1").unwrap());
    assert!(store.binding("SN-1").unwrap().is_none());
    assert!(!store.reset_serial("SN-1").unwrap());
}

#[test]
fn data_survives_reopening_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = SqliteStore::open(&data).unwrap();
        store.put_binding(&binding("SN-1", 1, DAY)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for _ in 0..2 {
        let store = SqliteStore::open(&data).unwrap();
        let got = store.binding("SN-1").unwrap().unwrap();
        assert_eq!(got.public_key.key_data(), key(1).key_data());
    }
    let conn = Connection::open(data.join(DB_FILE)).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let err = SqliteStore::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("99") && err.contains(DB_FILE), "{err}");
}

#[test]
fn audit_events_and_hops_are_recorded() {
    let store = SqliteStore::open_in_memory().unwrap();
    let source: IpAddr = "192.0.2.1".parse().unwrap();
    store
        .record(&AuditEvent {
            kind: "ssh.auth",
            who: Some("mallory".into()),
            source,
            outcome: "refused: not in support_cidrs".into(),
        })
        .unwrap();
    let events = store.recent_audit(10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "ssh.auth");
    assert_eq!(events[0].who.as_deref(), Some("mallory"));
    assert_eq!(events[0].source, "192.0.2.1");

    let peer: SocketAddr = "10.20.0.5:50000".parse().unwrap();
    let started = SystemTime::now();
    let id = store
        .hop_started(&HopStart {
            engineer: "alice".into(),
            source: peer,
            serial: "SN-1".into(),
            port: 22,
            started_at: started,
        })
        .unwrap();
    let open = store.hops().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].ended_at, None);
    store
        .hop_ended(id, started + Duration::from_secs(3), 1000, u64::MAX)
        .unwrap();
    let hop = &store.hops().unwrap()[0];
    assert_eq!(
        (hop.engineer.as_str(), hop.serial.as_str(), hop.port),
        ("alice", "SN-1", 22)
    );
    assert_eq!(hop.source, "10.20.0.5:50000");
    assert_eq!(hop.bytes_to_device, Some(1000));
    assert_eq!(hop.bytes_from_device, Some(i64::MAX as u64));
    assert_eq!(hop.ended_at.map(to_ms), Some(to_ms(started) + 3000));
    assert!(store.hop_ended(id + 1, started, 0, 0).is_err());
    assert!(!hop.interrupted);
}

#[test]
fn hops_left_open_by_a_dead_process_are_closed_and_marked_at_start() {
    let store = SqliteStore::open_in_memory().unwrap();
    let start = |serial: &str| HopStart {
        engineer: "alice".into(),
        source: "10.20.0.5:50000".parse().unwrap(),
        serial: serial.into(),
        port: 22,
        started_at: SystemTime::now(),
    };
    let done = store.hop_started(&start("SN-1")).unwrap();
    store.hop_ended(done, SystemTime::now(), 5, 6).unwrap();
    store.hop_started(&start("SN-2")).unwrap();
    let restarted = SystemTime::now() + Duration::from_secs(60);

    assert_eq!(store.close_interrupted_hops(restarted).unwrap(), 1);
    let hops = store.hops().unwrap();
    assert!(!hops[0].interrupted);
    assert_eq!(hops[0].bytes_to_device, Some(5));
    assert!(hops[1].interrupted);
    assert_eq!(hops[1].ended_at.map(to_ms), Some(to_ms(restarted)));
    assert_eq!(hops[1].bytes_to_device, None);
    // Nothing left open: a second call (a second restart) changes nothing.
    assert_eq!(store.close_interrupted_hops(restarted).unwrap(), 0);
}

#[test]
fn a_serial_is_one_device_whatever_its_case() {
    let store = SqliteStore::open_in_memory().unwrap();
    store.put_binding(&binding("SN-1", 1, DAY)).unwrap();
    let got = store.binding("sn-1").unwrap().unwrap();
    assert_eq!(got.public_key.key_data(), key(1).key_data());
    // Another key under another spelling is a conflict, not a second device.
    assert!(
        !store
            .put_binding_if(&binding("sn-1", 2, DAY), None, &registered())
            .unwrap()
    );
    assert_eq!(&bound_key(&store, "SN-1"), key(1).key_data());
    assert!(store.reset_serial("sn-1").unwrap());
    assert!(store.binding("SN-1").unwrap().is_none());
}

#[test]
fn migration_2_keeps_the_newest_of_case_variants() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(MIGRATIONS[0]).unwrap();
    conn.execute_batch("PRAGMA user_version = 1").unwrap();
    let far = to_ms(SystemTime::now() + DAY);
    for (serial, seed, renewed_at) in [("SN-1", 1u8, 1000i64), ("sn-1", 2, 2000), ("SN-2", 3, 1000)]
    {
        conn.execute(
            "INSERT INTO bindings VALUES (?1, ?2, 'fp', 0, ?3, ?4)",
            params![serial, key_text(&key(seed)).unwrap(), renewed_at, far],
        )
        .unwrap();
    }
    let store = SqliteStore::from_connection(conn).unwrap();
    assert_eq!(&bound_key(&store, "SN-1"), key(2).key_data());
    assert_eq!(&bound_key(&store, "sn-2"), key(3).key_data());
}

#[test]
fn rows_carry_the_node_and_migration_4_marks_older_rows_local() {
    let conn = Connection::open_in_memory().unwrap();
    for step in &MIGRATIONS[..3] {
        conn.execute_batch(step).unwrap();
    }
    conn.execute_batch("PRAGMA user_version = 3").unwrap();
    conn.execute(
        "INSERT INTO hops (engineer, source, serial, port, started_at) VALUES ('bob', 'x', 'SN-0', 22, 0)",
        [],
    )
    .unwrap();
    let store = SqliteStore::from_connection(conn)
        .unwrap()
        .with_node("eu-1");
    assert_eq!(store.node(), "eu-1");
    store.record(&registered()).unwrap();
    let id = store
        .hop_started(&HopStart {
            engineer: "alice".into(),
            source: "10.20.0.5:50000".parse().unwrap(),
            serial: "SN-1".into(),
            port: 22,
            started_at: SystemTime::now(),
        })
        .unwrap();
    assert_eq!(store.recent_audit(1).unwrap()[0].node, "eu-1");
    let nodes: Vec<String> = store
        .open_hops()
        .unwrap()
        .into_iter()
        .map(|h| h.node)
        .collect();
    assert_eq!(nodes, ["local", "eu-1"]);
    store.hop_ended(id, SystemTime::now(), 1, 2).unwrap();
    assert_eq!(store.open_hops().unwrap().len(), 1);
}
