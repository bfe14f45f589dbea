//! The SSH relay: devices hold virtual reverse forwards, engineers hop through them by serial.
//!
//! `server` accepts TCP connections and runs one task per connection, `handler` is the thin
//! russh handler deciding who may do what, `auth` checks identities against policy and
//! store, `routes` maps `(serial, port)` to device sessions, `hop` and `splice` relay one
//! engineer channel to one device channel, `live` holds the sessions and hops connected now,
//! `revoke` ends those that a policy reload or a serial reset no longer allows, `hostkey`
//! keeps the jump host's own key.

pub mod auth;
pub mod handler;
pub mod hop;
pub mod hostkey;
mod killable;
pub mod live;
pub mod revoke;
pub mod routes;
pub mod server;
pub mod splice;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use assist_proto::limits;
use russh::keys::PrivateKey;
use russh::{MethodKind, MethodSet, Preferred, cipher};
use tokio_util::task::TaskTracker;

use crate::config::JumphostConfig;
use crate::policy::watch::PolicyHandle;
use crate::store::audit_queue::AuditQueue;
use crate::store::{AuditEvent, Store};

/// Connection limits, configurable so tests can use small values.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time an unauthenticated connection gets to log in (OpenSSH's LoginGraceTime).
    pub login_grace: Duration,
    /// Unauthenticated connections held at once (OpenSSH's MaxStartups).
    pub max_startups: usize,
    /// Unauthenticated connections one source may hold at once (PerSourceMaxStartups),
    /// waiting in the startup queue included.
    pub max_startups_per_source: usize,
    /// Connections that may wait for a place among `max_startups`; more are refused.
    pub startup_queue: usize,
    /// Longest such a wait; then the connection is refused.
    pub startup_wait: Duration,
    /// Time a device gets to accept a `forwarded-tcpip` open for an engineer.
    pub open_timeout: Duration,
    /// Reverse forwards one device session may hold.
    pub max_forwards_per_device: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            login_grace: limits::LOGIN_GRACE,
            max_startups: limits::max_startups(),
            max_startups_per_source: limits::MAX_STARTUPS_PER_SOURCE,
            startup_queue: limits::max_startups() * limits::STARTUP_QUEUE_PER_SLOT,
            startup_wait: limits::STARTUP_QUEUE_WAIT,
            open_timeout: Duration::from_secs(30),
            max_forwards_per_device: limits::MAX_FORWARDS_PER_DEVICE,
        }
    }
}

impl From<&JumphostConfig> for Limits {
    fn from(config: &JumphostConfig) -> Self {
        Self {
            login_grace: config.login_grace,
            max_startups: config.max_startups,
            max_startups_per_source: config.max_startups_per_source,
            startup_queue: config
                .startup_queue
                .unwrap_or(config.max_startups * limits::STARTUP_QUEUE_PER_SLOT),
            max_forwards_per_device: config.max_forwards_per_device,
            ..Limits::default()
        }
    }
}

/// State shared by every connection of the relay.
pub struct Relay {
    pub store: Arc<dyn Store>,
    pub policy: PolicyHandle,
    pub routes: routes::RouteTable<russh::server::Handle>,
    pub config: Arc<russh::server::Config>,
    pub limits: Limits,
    /// Hops and connections, drained on shutdown.
    pub tasks: TaskTracker,
    /// Login failures per source address.
    pub penalties: crate::penalty::Penalties,
    /// Hops in progress.
    pub hops: live::LiveHops,
    /// Logged-in sessions, rechecked at every policy reload.
    pub sessions: Arc<live::Sessions>,
    /// The audit trail's writer: events are queued and committed in batches.
    pub audit: AuditQueue,
    /// Unauthenticated connections held (MaxStartups), whichever way they came.
    pub startups: Arc<tokio::sync::Semaphore>,
    /// Places for connections waiting for one of `startups` (tokio's semaphore serves
    /// waiters in order, so the queue is first come, first served).
    pub startup_queue: Arc<tokio::sync::Semaphore>,
    /// Unauthenticated connections held per source.
    pub startups_per_source: Arc<assist_proto::per_source::PerSource>,
    /// Ids of sessions, unique in this process.
    pub next_session: std::sync::atomic::AtomicU64,
    /// This node's place in a cluster with `[cluster] peer_listen`: hops to devices on
    /// other nodes go there. `None`: only this node's devices are reachable.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Relay {
    pub fn new(
        store: Arc<dyn Store>,
        audit: AuditQueue,
        policy: PolicyHandle,
        host_key: PrivateKey,
        limits: Limits,
    ) -> Self {
        Self {
            audit,
            startups: Arc::new(tokio::sync::Semaphore::new(limits.max_startups)),
            startup_queue: Arc::new(tokio::sync::Semaphore::new(limits.startup_queue)),
            startups_per_source: Arc::default(),
            next_session: std::sync::atomic::AtomicU64::new(1),
            sessions: Arc::default(),
            store,
            policy,
            routes: routes::RouteTable::default(),
            config: Arc::new(russh_config(host_key)),
            limits,
            tasks: TaskTracker::new(),
            penalties: crate::penalty::Penalties::default(),
            hops: live::LiveHops::default(),
            cluster: None,
        }
    }

    /// Counts a connection that ended without a login after a refused attempt, and logs and
    /// audits when the source's penalty or ban starts.
    pub fn login_failed(&self, source: IpAddr) {
        let policy = self.policy.current();
        let verdict =
            self.penalties
                .record_failure(source, policy.penalties(), std::time::Instant::now());
        match verdict {
            crate::penalty::Verdict::Tolerated { failures } => {
                tracing::info!(%source, failures, "failed login counted");
            }
            verdict => {
                tracing::warn!(%source, %verdict, "source penalized");
                self.audit("ssh.penalty", None, source, verdict.to_string());
            }
        }
    }

    /// Records an audit event without holding up the caller (see [`AuditQueue`]).
    pub fn audit(&self, kind: &'static str, who: Option<&str>, source: IpAddr, outcome: String) {
        self.audit.push(AuditEvent {
            kind,
            who: who.map(str::to_owned),
            source,
            outcome,
        });
    }
}

/// Key exchanges offered: hybrid post-quantum first, then X25519; no finite-field groups
/// (small moduli, SHA-1) and no NIST curves. The two extension markers keep `ext-info-s`
/// and strict KEX (OpenSSH's Terrapin countermeasure, CVE-2023-48795) switched on.
const KEX: &[russh::kex::Name] = &[
    russh::kex::MLKEM768X25519_SHA256,
    russh::kex::CURVE25519,
    russh::kex::CURVE25519_PRE_RFC_8731,
    russh::kex::EXTENSION_SUPPORT_AS_SERVER,
    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// AEAD ciphers only: no CBC, and no CTR (whose encrypt-and-MAC framing adds nothing here
/// since every client we ship and stock OpenSSH speak these).
const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
];

/// Never used with AEAD ciphers, but the KEXINIT must name some: SHA-2, encrypt-then-MAC.
const MACS: &[russh::mac::Name] = &[russh::mac::HMAC_SHA512_ETM, russh::mac::HMAC_SHA256_ETM];

/// The algorithm set of docs/hardening.md, checked with ssh-audit.
fn preferred() -> Preferred {
    Preferred {
        kex: std::borrow::Cow::Borrowed(KEX),
        key: std::borrow::Cow::Borrowed(&[russh::keys::Algorithm::Ed25519]),
        cipher: std::borrow::Cow::Borrowed(CIPHERS),
        mac: std::borrow::Cow::Borrowed(MACS),
        // Compression before encryption leaks plaintext lengths (CRIME-style); relayed
        // traffic is mostly encrypted already.
        compression: std::borrow::Cow::Borrowed(&[russh::compression::NONE]),
        ..Preferred::default()
    }
}

/// The russh settings: tuned for bulk relaying (large windows and packets, AEAD ciphers
/// only) and for long-lived idle tunnels (keepalives instead of an inactivity timeout).
pub(crate) fn russh_config(host_key: PrivateKey) -> russh::server::Config {
    let preferred = preferred();
    russh::server::Config {
        server_id: russh::SshId::Standard(std::borrow::Cow::Borrowed(concat!(
            "SSH-2.0-assist-jumphost_",
            env!("CARGO_PKG_VERSION")
        ))),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // The first "none" probe every client sends is not a failed guess: answer at once.
        auth_rejection_time_initial: Some(Duration::ZERO),
        auth_rejection_time: Duration::from_millis(500),
        keys: vec![host_key],
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 65_535,
        channel_buffer_size: 256,
        event_buffer_size: 64,
        preferred,
        inactivity_timeout: None,
        keepalive_interval: Some(limits::KEEPALIVE_INTERVAL),
        keepalive_max: limits::KEEPALIVE_MAX,
        nodelay: true,
        max_auth_attempts: 6,
        ..Default::default()
    }
}
