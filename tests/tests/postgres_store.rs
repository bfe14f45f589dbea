//! The store on a real PostgreSQL (a private cluster per test): the SQLite store's contract
//! (bindings, compare-and-set, case, audit, hops), and what sharing adds: two nodes racing
//! for one serial, each node closing only its own interrupted hops, migrations run once.

use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use assist_e2e::postgres::{PASSWORD, Postgres};
use assist_jumphost::store::{
    AuditEvent, Backend, DatabaseUrl, DeviceBinding, HopStart, Store, open,
};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};

const DAY: Duration = Duration::from_secs(86400);

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

fn registered(serial: &str) -> AuditEvent {
    AuditEvent {
        kind: "api.register",
        who: Some(serial.into()),
        source: "192.0.2.1".parse().unwrap(),
        outcome: "registered".into(),
    }
}

fn backend(pg: &Postgres) -> Backend {
    let mut url = DatabaseUrl::parse(&pg.url()).unwrap();
    url.set_password(PASSWORD.as_bytes());
    Backend::Postgres(Box::new(url))
}

fn node(pg: &Postgres, name: &str) -> Arc<dyn Store> {
    open(&backend(pg), name).unwrap()
}

fn bound_seed_is(store: &dyn Store, serial: &str, seed: u8) -> bool {
    store
        .binding(serial)
        .unwrap()
        .is_some_and(|b| b.public_key.key_data() == key(seed).key_data())
}

#[test]
fn bindings_round_trip_expire_and_compare_and_set_as_on_sqlite() {
    let pg = Postgres::start();
    let store = node(&pg, "a");
    assert!(store.binding("SN-1").unwrap().is_none());
    let b = binding("SN-1", 1, DAY);
    store.put_binding(&b).unwrap();
    let got = store.binding("SN-1").unwrap().unwrap();
    assert_eq!(got.public_key.key_data(), b.public_key.key_data());
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    assert_eq!(ms(got.expires_at), ms(b.expires_at));

    // One serial whatever its case.
    assert!(bound_seed_is(&*store, "sn-1", 1));
    assert!(
        !store
            .put_binding_if(&binding("sn-1", 2, DAY), None, &registered("sn-1"))
            .unwrap()
    );
    assert!(
        !store
            .put_binding_if(&binding("SN-1", 2, DAY), Some(&key(3)), &registered("SN-1"))
            .unwrap()
    );
    assert!(bound_seed_is(&*store, "SN-1", 1));
    assert!(
        store.recent_audit(10).unwrap().is_empty(),
        "losers wrote no audit row"
    );
    assert!(
        store
            .put_binding_if(&binding("SN-1", 2, DAY), Some(&key(1)), &registered("SN-1"))
            .unwrap()
    );
    assert!(bound_seed_is(&*store, "SN-1", 2));
    let audit = store.recent_audit(10).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].kind.as_str(), audit[0].node.as_str()),
        ("api.register", "a")
    );

    // Expired: never returned, counts as none, swept.
    let mut old = binding("SN-OLD", 1, DAY);
    old.expires_at = SystemTime::now() - Duration::from_secs(1);
    store.put_binding(&old).unwrap();
    assert!(store.binding("SN-OLD").unwrap().is_none());
    assert!(store.binding_including_expired("SN-OLD").unwrap().is_some());
    assert!(
        !store
            .put_binding_if(
                &binding("SN-OLD", 2, DAY),
                Some(&key(1)),
                &registered("SN-OLD")
            )
            .unwrap()
    );
    assert_eq!(store.sweep_expired(SystemTime::now()).unwrap(), 1);
    assert!(store.binding_including_expired("SN-OLD").unwrap().is_none());
    assert!(store.reset_serial("sn-1").unwrap());
    assert!(!store.reset_serial("SN-1").unwrap());
    assert!(store.binding("SN-1").unwrap().is_none());
}

#[test]
fn two_nodes_racing_for_one_serial_never_both_win() {
    let pg = Postgres::start();
    let (a, b) = (node(&pg, "a"), node(&pg, "b"));
    for round in 0..40u8 {
        let serial = format!("SN-RACE-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [(Arc::clone(&a), 1u8), (Arc::clone(&b), 2u8)]
            .into_iter()
            .map(|(store, seed)| {
                let (barrier, serial) = (Arc::clone(&barrier), serial.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let won = store
                        .put_binding_if(&binding(&serial, seed, DAY), None, &registered(&serial))
                        .unwrap();
                    (seed, won)
                })
            })
            .collect();
        let results: Vec<(u8, bool)> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<u8> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        // Both nodes see the winner's key, and the trail holds exactly its one row.
        assert!(bound_seed_is(&*a, &serial, winners[0]));
        assert!(bound_seed_is(&*b, &serial, winners[0]));
    }
    assert_eq!(a.recent_audit(1000).unwrap().len(), 40);
}

#[test]
fn hops_carry_their_node_and_a_restart_closes_only_its_own() {
    let pg = Postgres::start();
    let (a, b) = (node(&pg, "a"), node(&pg, "b"));
    let start = |serial: &str| HopStart {
        engineer: "alice".into(),
        source: "10.20.0.5:50000".parse().unwrap(),
        serial: serial.into(),
        port: 22,
        started_at: SystemTime::now(),
    };
    let done = a.hop_started(&start("SN-1")).unwrap();
    a.hop_ended(done, SystemTime::now(), 5, u64::MAX).unwrap();
    a.hop_started(&start("SN-2")).unwrap();
    b.hop_started(&start("SN-3")).unwrap();
    assert!(a.hop_ended(i64::MAX, SystemTime::now(), 0, 0).is_err());
    let open: Vec<(String, String)> = b
        .open_hops()
        .unwrap()
        .into_iter()
        .map(|h| (h.serial, h.node))
        .collect();
    assert_eq!(
        open,
        [("SN-2".into(), "a".into()), ("SN-3".into(), "b".into())]
    );

    // Node a restarts after a crash: its open hop is closed, b's is b's and stays open.
    drop(a);
    let a = node(&pg, "a");
    assert_eq!(a.close_interrupted_hops(SystemTime::now()).unwrap(), 1);
    let hops = a.hops().unwrap();
    assert_eq!(hops.len(), 3);
    assert!(!hops[0].interrupted);
    assert_eq!(hops[0].bytes_from_device, Some(i64::MAX as u64));
    assert!(hops[1].interrupted && hops[1].node == "a");
    assert!(!hops[2].interrupted && hops[2].ended_at.is_none() && hops[2].node == "b");
}

#[test]
fn nodes_starting_at_once_migrate_once_and_a_newer_schema_is_refused() {
    let pg = Postgres::start();
    let starters: Vec<_> = (0..4)
        .map(|i| {
            let backend = backend(&pg);
            std::thread::spawn(move || open(&backend, &format!("n{i}")).map(|_| ()))
        })
        .collect();
    for s in starters {
        s.join().unwrap().unwrap();
    }
    let mut client = pg.client();
    let version: i32 = client
        .query_one("SELECT version FROM assist_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 5);
    assert_eq!(
        client
            .query_one("SELECT count(*) FROM assist_schema", &[])
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    client
        .batch_execute("UPDATE assist_schema SET version = 99")
        .unwrap();
    let err = open(&backend(&pg), "late").err().unwrap().to_string();
    assert!(err.contains("99") && err.contains("upgrade"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}

#[test]
fn a_wrong_password_or_a_closed_port_is_a_clear_error_without_the_password() {
    let pg = Postgres::start();
    let mut url = DatabaseUrl::parse(&pg.url()).unwrap();
    url.set_password(b"wrong-password-123");
    let err = open(&Backend::Postgres(Box::new(url)), "a")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    let shown = pg.url().replace("assist@", "assist:***@");
    assert!(
        err.contains(&shown) && !err.contains("wrong-password-123"),
        "{err}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = DatabaseUrl::parse(&format!(
        "postgresql://assist:{PASSWORD}@127.0.0.1:{port}/x"
    ))
    .unwrap();
    let err = open(&Backend::Postgres(Box::new(url)), "a")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("connecting to") && err.contains(&port.to_string()),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
}
