//! Limits, timeouts and defaults shared by the programs, in one place.

use std::time::Duration;

/// Largest request body the registration API reads.
pub const MAX_API_BODY: usize = 64 * 1024;
/// Time an HTTP client gets to send its whole request body (both servers).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an HTTP client gets to send its request headers, counted from when the server starts
/// waiting for them: at connect, and again after each answer on a kept-alive connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP connections served at once by one server; more wait in the kernel's backlog.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;
/// HTTP connections one source address may hold at once; more are closed on arrival.
pub const MAX_HTTP_CONNECTIONS_PER_SOURCE: usize = 32;
/// How long an unauthenticated SSH connection may take to log in (OpenSSH's LoginGraceTime).
pub const LOGIN_GRACE: Duration = Duration::from_secs(30);
/// Unauthenticated SSH connections in their handshake at once, per core (MaxStartups is
/// this times the cores the jump host may use): a login costs CPU, so more cores can take
/// more at once.
pub const MAX_STARTUPS_PER_CORE: usize = 128;
/// Connections that found every startup slot taken and wait for one, per startup slot;
/// past that they are refused at once. Waiting costs a socket and a small task, not a
/// handshake, so a fleet reconnecting at once queues instead of being dropped. 64 per slot
/// is about what two cores log in within [`STARTUP_QUEUE_WAIT`] (~900 logins/s): with 16,
/// 10,000 devices coming back after a restart met a full queue 18,806 times and took 37.5 s;
/// with 64, 3,100 times and 17.7 s (bench/NOTES.md).
pub const STARTUP_QUEUE_PER_SLOT: usize = 64;
/// Longest a connection waits in that queue before it is refused (well inside the agent's
/// 20 s connection timeout, leaving it time for the handshake itself).
pub const STARTUP_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// The default MaxStartups: [`MAX_STARTUPS_PER_CORE`] times the cores this process may use.
pub fn max_startups() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    MAX_STARTUPS_PER_CORE * cores
}
/// Unauthenticated SSH connections one source (IPv4 address, IPv6 /64) may hold at once;
/// more are dropped (OpenSSH's PerSourceMaxStartups), so one host cannot take every slot.
pub const MAX_STARTUPS_PER_SOURCE: usize = 32;
/// Reverse forwards one device session may hold (`max_forwards_per_device`).
pub const MAX_FORWARDS_PER_DEVICE: usize = 16;
/// Audit events waiting to be written; past this, refusals are counted instead of queued.
pub const AUDIT_QUEUE: usize = 4096;
/// Audit events written in one commit.
pub const AUDIT_BATCH: usize = 256;
/// How far an enrollment proof's time may be from the jump host's clock.
pub const ENROLLMENT_SKEW: Duration = Duration::from_secs(300);
/// SSH keepalive interval used by the agent and the jump host.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Keepalives missed before a peer is considered gone.
pub const KEEPALIVE_MAX: usize = 3;
/// Ceiling of the agent's reconnect backoff.
pub const RECONNECT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// First step of the agent's reconnect backoff.
pub const RECONNECT_MIN_BACKOFF: Duration = Duration::from_millis(250);
/// How long a server drains its tasks on shutdown before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Default lifetime of a registered device key.
pub const DEFAULT_CLIENT_KEY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default and ceiling of an assistance window unless policy says otherwise.
pub const DEFAULT_MAX_ASSISTANCE: Duration = Duration::from_secs(8 * 3600);
/// Default assistance window when `enable` is given no `--minutes`.
pub const DEFAULT_ASSISTANCE_MINUTES: u64 = 60;
/// Virtual port of the `ssh` service.
pub const SSH_SERVICE_PORT: u32 = 22;
/// Virtual port on which a device hands out its proof of the code (`attest`); reserved,
/// never a service of its own.
pub const ATTESTATION_PORT: u32 = 1;
/// Virtual port on which a device that asks for it receives the jump host's note of who
/// opens each relayed connection (`note`); reserved: engineers can never open it.
pub const NOTES_PORT: u32 = 2;
/// Virtual port of the `http` service.
pub const HTTP_SERVICE_PORT: u32 = 80;
/// Time a client of the registration API gets to finish its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes of the registration API in progress at once; more wait in the backlog.
pub const MAX_TLS_HANDSHAKES: usize = 256;

/// How a jump host's refusal before the SSH handshake starts: a text line ahead of any SSH
/// version line (RFC 4253 4.2), which support-cli shows as the jump host's words.
pub const REFUSAL_LINE_PREFIX: &str = "assist-jumphost: refused: ";
/// How long `assist-client enable` waits for the tunnel to hold its forwards before it
/// shows the code anyway, saying the tunnel is still connecting.
pub const ENABLE_TUNNEL_WAIT: Duration = Duration::from_secs(8);
