//! The relay in process: a russh client plays device and engineer against the real accept
//! loop on 127.0.0.1:0, with a real store and policy in a temporary folder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use russh::client;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::server::serve;
use super::{Limits, Relay};
use crate::config::JumphostConfig;
use crate::policy::Policy;
use crate::policy::watch::PolicyHandle;
use crate::store::audit_queue::AuditQueue;
use crate::store::{DeviceBinding, SqliteStore, Store};

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

struct Fixture {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    store: Arc<dyn Store>,
    sqlite: Arc<SqliteStore>,
    relay: Arc<Relay>,
    shutdown: CancellationToken,
}

/// Engineer alice (key 1) from 127.0.0.1, serials `SN-*`, and `extra` (e.g. `serials` for
/// alice's entry when it starts with that key).
fn policy_text(alice_extra: &str, extra: &str) -> String {
    let engineer = key(1).public_key().to_openssh().unwrap();
    format!(
        "[allowlist]\nsupport_cidrs = [\"127.0.0.1/32\"]\n[serials]\nallow = [\"SN-*\"]\n\
         [[support]]\nname = \"alice\"\npublic_key = \"{engineer}\"\n{alice_extra}\n{extra}"
    )
}

fn parse_policy(text: &str) -> Policy {
    Policy::from_toml(std::path::Path::new("p.toml"), text).unwrap()
}

async fn start(limits: Limits) -> Fixture {
    start_with(limits, &policy_text("", "")).await
}

async fn start_with(limits: Limits, policy: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy = PolicyHandle::new(parse_policy(policy));
    let sqlite = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let store: Arc<dyn Store> = sqlite.clone();
    let audit = AuditQueue::start(Arc::clone(&store)).unwrap();
    let relay = Arc::new(Relay::new(
        Arc::clone(&store),
        audit,
        policy,
        key(9),
        limits,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, Arc::clone(&relay), shutdown.clone()));
    super::revoke::spawn_policy_rechecks(Arc::clone(&relay), shutdown.clone());
    Fixture {
        _dir: dir,
        addr,
        store,
        sqlite,
        relay,
        shutdown,
    }
}

/// A client that accepts the server key and hands `forwarded-tcpip` opens to the test.
struct Client {
    forwarded: Option<mpsc::UnboundedSender<(russh::Channel<client::Msg>, String, u32)>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        if let Some(tx) = &self.forwarded {
            let _ = tx.send((channel, connected_address.to_owned(), connected_port));
        }
        Ok(())
    }
}

async fn login(
    addr: SocketAddr,
    user: &str,
    key: PrivateKey,
    forwarded: Option<mpsc::UnboundedSender<(russh::Channel<client::Msg>, String, u32)>>,
) -> (client::Handle<Client>, bool) {
    let config = Arc::new(client::Config::default());
    let mut handle = client::connect(config, addr, Client { forwarded })
        .await
        .unwrap();
    let auth = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .unwrap();
    (handle, auth.success())
}

fn register(store: &Arc<dyn Store>, serial: &str, key: &PrivateKey, ttl: Duration) {
    store
        .put_binding(&DeviceBinding {
            serial: serial.into(),
            public_key: key.public_key().clone(),
            expires_at: SystemTime::now() + ttl,
        })
        .unwrap();
}

/// What the SSH server gets from the config (these keys were once read and then not used).
#[test]
fn limits_come_from_the_config() {
    const FOUR_KEYS: &str = "ssh_listen = \"127.0.0.1:2222\"\napi_listen = \"127.0.0.1:8080\"\n\
                             data_dir = \"data\"\npolicies_dir = \"policies\"\n";
    let text = format!(
        "{FOUR_KEYS}login_grace = \"5s\"\nmax_startups = 3\nmax_startups_per_source = 2\n\
         max_forwards_per_device = 4\n"
    );
    let parse = |text: &str| JumphostConfig::parse(text, std::path::Path::new("/x")).unwrap();
    let limits = Limits::from(&parse(&text));
    assert_eq!(limits.max_forwards_per_device, 4);
    assert_eq!(
        Limits::from(&parse(FOUR_KEYS)).max_forwards_per_device,
        assist_proto::limits::MAX_FORWARDS_PER_DEVICE
    );
    assert_eq!(limits.login_grace, Duration::from_secs(5));
    assert_eq!(limits.max_startups, 3);
    assert_eq!(limits.max_startups_per_source, 2);
}

#[tokio::test]
async fn port_zero_route_relays_an_engineer_with_the_devices_address() {
    let f = start(Limits::default()).await;
    register(&f.store, "SN-1", &key(2), Duration::from_secs(3600));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (device, ok) = login(f.addr, "SN-1", key(2), Some(tx)).await;
    assert!(ok);
    let port = device.tcpip_forward("localhost", 0).await.unwrap();
    assert_eq!(port, super::routes::FIRST_ASSIGNED_PORT);

    let (engineer, ok) = login(f.addr, "alice", key(1), None).await;
    assert!(ok);
    // Serial case does not matter (stock ssh lowercases it).
    let hop = engineer
        .channel_open_direct_tcpip("sn-1", port, "127.0.0.1", 5555)
        .await
        .unwrap();
    let (at_device, address, connected_port) = rx.recv().await.unwrap();
    assert_eq!((address.as_str(), connected_port), ("localhost", port));

    // Echo on the device side; EOF travels through, then the reply comes back whole.
    tokio::spawn(async move {
        let mut stream = at_device.into_stream();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        stream.write_all(&got).await.unwrap();
        stream.shutdown().await.unwrap();
    });
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut stream = hop.into_stream();
    stream.write_all(&payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, payload);
    f.shutdown.cancel();
}

#[tokio::test]
async fn refusals_over_the_wire() {
    let f = start(Limits::default()).await;
    register(&f.store, "SN-2", &key(3), Duration::from_secs(3600));
    register(&f.store, "SN-3", &key(4), Duration::ZERO);
    // Expired before any sweep, unknown key, unknown engineer.
    assert!(!login(f.addr, "SN-3", key(4), None).await.1);
    assert!(!login(f.addr, "SN-2", key(4), None).await.1);
    assert!(!login(f.addr, "bob", key(1), None).await.1);

    let (engineer, ok) = login(f.addr, "alice", key(1), None).await;
    assert!(ok);
    let missing = engineer
        .channel_open_direct_tcpip("SN-2", 22, "127.0.0.1", 1)
        .await
        .unwrap_err();
    // russh's client keeps only the code; the description is checked with stock ssh (e2e).
    assert!(
        matches!(
            missing,
            russh::Error::ChannelOpenFailure(russh::ChannelOpenFailure::ConnectFailed)
        ),
        "{missing:?}"
    );
    assert!(engineer.tcpip_forward("", 22).await.is_err());
    assert!(engineer.channel_open_session().await.is_err());

    let (device, ok) = login(f.addr, "SN-2", key(3), None).await;
    assert!(ok);
    assert!(
        device
            .channel_open_direct_tcpip("SN-2", 22, "127.0.0.1", 1)
            .await
            .is_err()
    );
    assert!(device.channel_open_session().await.is_err());
    f.shutdown.cancel();
}

#[tokio::test]
async fn silent_connections_are_dropped_after_the_login_grace() {
    let f = start(Limits {
        login_grace: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut stream = TcpStream::connect(f.addr).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink))
        .await
        .expect("closed within the grace time");
    drop(closed);
    assert!(sink.starts_with(b"SSH-2.0-"));
}

#[tokio::test]
async fn unauthenticated_connections_are_capped() {
    let f = start(Limits {
        max_startups: 1,
        startup_queue: 0,
        ..Limits::default()
    })
    .await;
    let mut first = TcpStream::connect(f.addr).await.unwrap();
    let mut banner = [0u8; 8];
    first.read_exact(&mut banner).await.unwrap();
    // The second one is closed without a banner while the first holds the only slot,
    // told why in a line ahead of any version line.
    let mut second = TcpStream::connect(f.addr).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut buf))
        .await
        .expect("closed at once");
    assert_eq!(
        String::from_utf8_lossy(&buf),
        "assist-jumphost: refused: too many connections are logging in at once; retry shortly\r\n"
    );
}

#[tokio::test]
async fn over_the_cap_a_connection_waits_in_the_queue_for_a_place() {
    let f = start(Limits {
        max_startups: 1,
        startup_queue: 1,
        ..Limits::default()
    })
    .await;
    let mut first = TcpStream::connect(f.addr).await.unwrap();
    let mut banner = [0u8; 8];
    first.read_exact(&mut banner).await.unwrap();
    // The second waits (it takes the queue's only place), so a third is refused at once.
    let mut second = TcpStream::connect(f.addr).await.unwrap();
    let mut third = TcpStream::connect(f.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut buf))
        .await
        .expect("the third is closed at once")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&buf),
        "assist-jumphost: refused: too many connections are logging in at once; retry shortly\r\n"
    );
    // The first gives its place back: the second gets it and its handshake starts.
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), second.read_exact(&mut banner))
        .await
        .expect("the waiting connection is served once a place is free")
        .unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
}

#[tokio::test]
async fn a_connection_that_waits_too_long_for_a_place_is_told_why() {
    let f = start(Limits {
        max_startups: 1,
        startup_queue: 4,
        startup_wait: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let mut first = TcpStream::connect(f.addr).await.unwrap();
    let mut banner = [0u8; 8];
    first.read_exact(&mut banner).await.unwrap();
    let asked = std::time::Instant::now();
    let mut second = TcpStream::connect(f.addr).await.unwrap();
    second.write_all(b"SSH-2.0-waiting\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut buf))
        .await
        .expect("refused once the queue's wait is over")
        .unwrap();
    assert!(
        asked.elapsed() >= Duration::from_millis(200),
        "it waited for a place before the refusal, not refused at once"
    );
    assert_eq!(
        String::from_utf8_lossy(&buf),
        "assist-jumphost: refused: too many connections are logging in at once; retry shortly\r\n"
    );
}

#[tokio::test]
async fn one_source_cannot_take_every_unauthenticated_slot() {
    let f = start(Limits {
        max_startups: 8,
        max_startups_per_source: 2,
        ..Limits::default()
    })
    .await;
    let connect = |last: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from(([127, 0, 0, last], 0)))
            .unwrap();
        socket.connect(f.addr).await.unwrap()
    };
    let banner = |mut stream: TcpStream| async move {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            let mut byte = [0u8; 8];
            if stream.read_exact(&mut byte).await.is_ok() {
                buf.extend_from_slice(&byte);
            }
        })
        .await;
        (stream, buf)
    };
    let (_one, got) = banner(connect(3).await).await;
    assert_eq!(got, b"SSH-2.0-");
    let (two, got) = banner(connect(3).await).await;
    assert_eq!(got, b"SSH-2.0-");
    let (_, got) = banner(connect(3).await).await;
    assert_eq!(
        got, b"assist-j",
        "a third from 127.0.0.3 gets a refusal, not a banner"
    );
    let (_other, got) = banner(connect(4).await).await;
    assert_eq!(got, b"SSH-2.0-", "another source is served");
    // A place given back is a place again (the server sees the close a moment later).
    drop(two);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_again, got) = banner(connect(3).await).await;
        if got == b"SSH-2.0-" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_connection_that_never_logs_in_counts_as_a_failed_login() {
    let f = start(Limits {
        login_grace: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    // One sends nothing; one sends its banner and then nothing.
    for hello in [&b""[..], b"SSH-2.0-silent\r\n"] {
        let mut stream = TcpStream::connect(f.addr).await.unwrap();
        stream.write_all(hello).await.unwrap();
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink))
            .await
            .expect("closed at the grace time")
            .ok();
    }
    let failures = || {
        let policy = f.relay.policy.current();
        f.relay
            .penalties
            .snapshot(policy.penalties(), std::time::Instant::now())
            .iter()
            .find(|s| s.source.to_string() == "127.0.0.1")
            .map_or(0, |s| s.failures)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while failures() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} failures",
            failures()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failures(), 2);
}

#[tokio::test]
async fn a_device_session_ends_at_key_expiry_unless_the_key_was_renewed() {
    let f = start(Limits::default()).await;
    register(&f.store, "SN-4", &key(5), Duration::from_millis(1500));
    register(&f.store, "SN-5", &key(6), Duration::from_millis(1500));
    let (expiring, ok) = login(f.addr, "SN-4", key(5), None).await;
    assert!(ok);
    let (renewed, ok) = login(f.addr, "SN-5", key(6), None).await;
    assert!(ok);
    register(&f.store, "SN-5", &key(6), Duration::from_secs(3600));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !expiring.is_closed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired session kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The renewed one passed the same deadline and still answers.
    assert!(renewed.tcpip_forward("", 22).await.is_ok());
    assert!(!renewed.is_closed());
}

/// Waits (with a deadline) until `closed` says so.
async fn until(what: &str, mut closed: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !closed() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A device SN-1 (key 2) holding port 22, and a hop of alice's to it whose device end is
/// handed back.
async fn device_and_hop(
    f: &Fixture,
) -> (
    client::Handle<Client>,
    client::Handle<Client>,
    russh::Channel<client::Msg>,
    russh::Channel<client::Msg>,
) {
    register(&f.store, "SN-1", &key(2), Duration::from_secs(3600));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (device, ok) = login(f.addr, "SN-1", key(2), Some(tx)).await;
    assert!(ok);
    device.tcpip_forward("localhost", 22).await.unwrap();
    let (engineer, ok) = login(f.addr, "alice", key(1), None).await;
    assert!(ok);
    let hop = engineer
        .channel_open_direct_tcpip("SN-1", 22, "127.0.0.1", 5555)
        .await
        .unwrap();
    let (at_device, _, _) = rx.recv().await.unwrap();
    (device, engineer, hop, at_device)
}

/// Reads the channel until it closes; true if it did within the deadline.
async fn closes(mut channel: russh::Channel<client::Msg>) -> bool {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = channel.wait().await {
            if matches!(msg, russh::ChannelMsg::Close) {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn removing_an_engineer_ends_his_session_and_open_hop_at_the_reload() {
    let f = start(Limits::default()).await;
    let (device, engineer, hop, at_device) = device_and_hop(&f).await;
    assert_eq!(f.relay.hops.snapshot().len(), 1);

    f.relay.policy.replace(parse_policy(
        "[allowlist]\nsupport_cidrs = [\"127.0.0.1/32\"]\n[serials]\nallow = [\"SN-*\"]\n",
    ));
    until("engineer session closed", || engineer.is_closed()).await;
    assert!(closes(hop).await, "the engineer's hop channel stays open");
    assert!(
        closes(at_device).await,
        "the device end of the hop stays open"
    );
    until("hop gone from status", || {
        f.relay.hops.snapshot().is_empty()
    })
    .await;
    assert!(!device.is_closed(), "the device is still allowed");
    // The trail says why (the connection's task writes it as the session ends).
    let mut ended = Vec::new();
    for _ in 0..500 {
        f.relay.audit.flush().await;
        ended = f.sqlite.recent_audit(50).unwrap();
        ended.retain(|r| r.kind == "ssh.session" && r.who.as_deref() == Some("alice"));
        if !ended.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        ended.iter().any(|r| r.outcome
            == "ended: no longer allowed: the key of engineer alice is no longer in the policy"),
        "{ended:?}"
    );
    // Nor can the removed engineer come back.
    assert!(!login(f.addr, "alice", key(1), None).await.1);
}

#[tokio::test]
async fn a_narrowed_scope_closes_the_hop_but_keeps_the_session() {
    let f = start(Limits::default()).await;
    let (_device, engineer, hop, _at_device) = device_and_hop(&f).await;
    f.relay
        .policy
        .replace(parse_policy(&policy_text("serials = [\"SN-EU-*\"]", "")));
    assert!(
        closes(hop).await,
        "the hop outside the new scope stays open"
    );
    assert!(
        !engineer.is_closed(),
        "the engineer may still reach SN-EU-*"
    );
    // A new hop to the same device is refused at open, with the policy now in force.
    let refused = engineer
        .channel_open_direct_tcpip("SN-1", 22, "127.0.0.1", 5556)
        .await;
    assert!(
        matches!(
            refused,
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::AdministrativelyProhibited
            ))
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_hop_outside_the_engineers_scope_is_refused_at_open() {
    let f = start_with(
        Limits::default(),
        &policy_text("serials = [\"SN-EU-*\"]", ""),
    )
    .await;
    register(&f.store, "SN-1", &key(2), Duration::from_secs(3600));
    let (device, ok) = login(f.addr, "SN-1", key(2), None).await;
    assert!(ok);
    device.tcpip_forward("localhost", 22).await.unwrap();
    let (engineer, ok) = login(f.addr, "alice", key(1), None).await;
    assert!(ok);
    let refused = engineer
        .channel_open_direct_tcpip("SN-1", 22, "127.0.0.1", 5555)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(f.relay.hops.snapshot().is_empty());
}

#[tokio::test]
async fn a_serial_no_longer_allowed_ends_the_devices_session() {
    let f = start(Limits::default()).await;
    let (device, engineer, hop, _at_device) = device_and_hop(&f).await;
    f.relay.policy.replace(parse_policy(
        &policy_text("", "").replace("allow = [\"SN-*\"]", "allow = [\"LAB-*\"]"),
    ));
    until("device session closed", || device.is_closed()).await;
    assert!(
        closes(hop).await,
        "the hop to the removed device stays open"
    );
    assert!(!engineer.is_closed());
    until("routes released", || f.relay.routes.snapshot().is_empty()).await;
}

#[tokio::test]
async fn forwards_per_device_and_address_length_are_capped() {
    let f = start(Limits {
        max_forwards_per_device: 2,
        ..Limits::default()
    })
    .await;
    register(&f.store, "SN-1", &key(2), Duration::from_secs(3600));
    let (device, ok) = login(f.addr, "SN-1", key(2), None).await;
    assert!(ok);
    assert!(device.tcpip_forward("localhost", 22).await.is_ok());
    assert!(device.tcpip_forward("localhost", 0).await.is_ok());
    assert!(device.tcpip_forward("localhost", 80).await.is_err());
    assert!(device.cancel_tcpip_forward("localhost", 22).await.is_ok());
    assert!(device.tcpip_forward(&"a".repeat(256), 80).await.is_err());
    assert!(device.tcpip_forward(&"a".repeat(255), 80).await.is_ok());
}

/// A store whose every commit takes as long as a slow disk's sync.
struct SlowStore(SqliteStore);

const SLOW_COMMIT: Duration = Duration::from_millis(20);

impl Store for SlowStore {
    fn binding(&self, serial: &str) -> Result<Option<DeviceBinding>, crate::store::StoreError> {
        self.0.binding(serial)
    }
    fn binding_including_expired(
        &self,
        serial: &str,
    ) -> Result<Option<DeviceBinding>, crate::store::StoreError> {
        self.0.binding_including_expired(serial)
    }
    fn put_binding(&self, b: &DeviceBinding) -> Result<(), crate::store::StoreError> {
        self.0.put_binding(b)
    }
    fn put_binding_if(
        &self,
        b: &DeviceBinding,
        expected: Option<&russh::keys::PublicKey>,
        audit: &crate::store::AuditEvent,
    ) -> Result<bool, crate::store::StoreError> {
        self.0.put_binding_if(b, expected, audit)
    }
    fn reset_serial(&self, serial: &str) -> Result<bool, crate::store::StoreError> {
        self.0.reset_serial(serial)
    }
    fn sweep_expired(&self, now: SystemTime) -> Result<usize, crate::store::StoreError> {
        self.0.sweep_expired(now)
    }
    fn record(&self, event: &crate::store::AuditEvent) -> Result<(), crate::store::StoreError> {
        // The lock is held through the "sync", as SQLite holds its own through fsync.
        let _held = self.0.hold_for_test();
        std::thread::sleep(SLOW_COMMIT);
        drop(_held);
        self.0.record(event)
    }
    fn record_batch(
        &self,
        events: &[crate::store::AuditEvent],
    ) -> Result<(), crate::store::StoreError> {
        let held = self.0.hold_for_test();
        std::thread::sleep(SLOW_COMMIT);
        drop(held);
        self.0.record_batch(events)
    }
    fn hop_started(&self, hop: &crate::store::HopStart) -> Result<i64, crate::store::StoreError> {
        self.0.hop_started(hop)
    }
    fn hop_ended(
        &self,
        id: i64,
        at: SystemTime,
        a: u64,
        b: u64,
    ) -> Result<(), crate::store::StoreError> {
        self.0.hop_ended(id, at, a, b)
    }
    fn close_interrupted_hops(&self, now: SystemTime) -> Result<usize, crate::store::StoreError> {
        self.0.close_interrupted_hops(now)
    }
    fn recent_audit(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::store::AuditRecord>, crate::store::StoreError> {
        self.0.recent_audit(limit)
    }
    fn hops(&self) -> Result<Vec<crate::store::HopRecord>, crate::store::StoreError> {
        self.0.hops()
    }
    fn open_hops(&self) -> Result<Vec<crate::store::HopRecord>, crate::store::StoreError> {
        self.0.open_hops()
    }
    fn node(&self) -> &str {
        self.0.node()
    }
}

/// A flood of refused logins must not hold up a device's login behind their audit rows:
/// with one synced commit per refusal (20 ms each here), 2,000 of them queue 40 s of
/// commits in front of the store lock the device's binding is read under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_does_not_stall_a_device_login() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SlowStore(SqliteStore::open(dir.path()).unwrap()));
    let audit = AuditQueue::start(Arc::clone(&store)).unwrap();
    let policy = PolicyHandle::new(parse_policy(&policy_text("", "")));
    let relay = Arc::new(Relay::new(
        Arc::clone(&store),
        audit,
        policy,
        key(9),
        Limits::default(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, Arc::clone(&relay), shutdown.clone()));
    register(&store, "SN-1", &key(2), Duration::from_secs(3600));

    let source = std::net::IpAddr::from([127, 0, 0, 9]);
    for n in 0..2000 {
        relay.audit(
            "ssh.auth",
            Some(&format!("x{n}")),
            source,
            "refused: flood".into(),
        );
    }
    let started = std::time::Instant::now();
    let (_device, ok) = login(addr, "SN-1", key(2), None).await;
    let took = started.elapsed();
    assert!(ok);
    assert!(
        took < Duration::from_secs(2),
        "the device's login took {took:?} behind the flood"
    );
    relay.audit.flush().await;
    shutdown.cancel();
}
