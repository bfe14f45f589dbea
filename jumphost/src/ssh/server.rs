//! The accept loop and the life of one connection: source address check before the
//! handshake, login grace and MaxStartups-style cap, then the session until it ends, its
//! device key or engineer certificate expires, or the policy no longer allows it; route
//! cleanup.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use assist_proto::per_source::SourceSlot;
use russh::keys::PublicKey;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Relay;
use super::auth::{self, Identity};
use super::handler::ConnHandler;
use super::killable::Killable;
use super::revoke;
use super::routes::SessionId;
use crate::store;

/// How long a disconnected session gets to wind down before its task stops waiting.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts SSH connections on an already-bound listener until `shutdown` fires. Connection
/// tasks are tracked in `relay.tasks`; the caller drains them.
pub async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let startup = match admit(&relay, peer) {
            Ok(startup) => startup,
            Err(why) => {
                refuse_before_handshake(&stream, &why);
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        spawn_connection(&relay, stream, peer, startup, &shutdown);
    }
}

/// The checks every new connection passes before its handshake, whichever way it came
/// (TCP, or a WebSocket on the API port): an address some role may use, not penalized, and
/// a place among the unauthenticated connections of its source and of all. Refusals are
/// logged here; the caller closes (and over HTTP answers with the reason).
pub fn admit(relay: &Relay, peer: SocketAddr) -> Result<Startup, NotAdmitted> {
    if !auth::address_usable(&relay.policy.current(), peer.ip()) {
        tracing::warn!(%peer, "connection from a disallowed address closed");
        relay.audit(
            "ssh.address",
            None,
            peer.ip(),
            "refused: address not in support_cidrs or client_cidrs".into(),
        );
        crate::metrics::connection_refused("address");
        return Err(NotAdmitted::Address(peer.ip()));
    }
    if let Some(block) = relay.penalties.block(peer.ip(), std::time::Instant::now()) {
        // Not audited: a penalized source reconnecting in a loop would flood the trail;
        // the start of the penalty was audited.
        tracing::debug!(%peer, left_ms = block.left.as_millis(), "penalized source; closed");
        crate::metrics::connection_refused("penalized");
        return Err(NotAdmitted::Penalized {
            ip: peer.ip(),
            block,
        });
    }
    let Some(slot) = relay
        .startups_per_source
        .enter(peer.ip(), relay.limits.max_startups_per_source)
    else {
        tracing::warn!(
            %peer,
            limit = relay.limits.max_startups_per_source,
            "too many unauthenticated connections from this source; closed"
        );
        crate::metrics::connection_refused("busy");
        return Err(NotAdmitted::Busy);
    };
    let place = match Arc::clone(&relay.startups).try_acquire_owned() {
        Ok(permit) => Place::Held { _permit: permit },
        // Every handshake slot is taken: wait for one in the queue, unless it is full too.
        Err(_) => match Arc::clone(&relay.startup_queue).try_acquire_owned() {
            Ok(queued) => Place::Queued {
                _queued: queued,
                slots: Arc::clone(&relay.startups),
                wait: relay.limits.startup_wait,
            },
            Err(_) => {
                tracing::warn!(%peer, "too many unauthenticated connections; closed");
                crate::metrics::connection_refused("busy");
                return Err(NotAdmitted::Busy);
            }
        },
    };
    Ok(Startup {
        place,
        _source: slot,
    })
}

/// Why a new connection was closed before its handshake, in words for the person whose
/// client shows them (support-cli prints them; see [`refuse_before_handshake`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    #[error(
        "your address {0} is not allowed here (not in the jump host's support_cidrs for \
         engineers, nor client_cidrs for devices); ask the jump host admin to add it"
    )]
    Address(std::net::IpAddr),
    #[error("{}", penalty_words(*.ip, .block))]
    Penalized {
        ip: std::net::IpAddr,
        block: crate::penalty::Block,
    },
    #[error("too many connections are logging in at once; retry shortly")]
    Busy,
}

/// A penalty or ban as the refused person reads it: what happened, until when, what to do.
fn penalty_words(ip: std::net::IpAddr, block: &crate::penalty::Block) -> String {
    let secs = block.left.as_secs_f64().ceil().max(1.0) as u64;
    let failures = match block.failures {
        1 => "1 failed login".to_owned(),
        n => format!("{n} failed logins"),
    };
    if block.banned {
        let until = SystemTime::now() + Duration::from_secs(secs);
        let until = humantime::format_rfc3339_seconds(until);
        format!(
            "your address {ip} is banned after {failures}, until {until} ({} left); a wrong \
             key or engineer name counts as a failed login: fix that, then wait or ask the \
             jump host admin",
            humantime::format_duration(Duration::from_secs(secs))
        )
    } else {
        format!(
            "your address {ip} is penalized after {failures}: retry in {secs} s; a wrong key \
             or engineer name counts as a failed login"
        )
    }
}

/// Tells a refused TCP client why before closing, as text lines ahead of any SSH version
/// line (RFC 4253 4.2 lets a server send them; OpenSSH shows them with -v), so a client
/// can tell a penalty, a ban or an address refusal from a port that does not speak SSH.
/// Never waits: what does not fit the socket's buffer at once is not sent.
fn refuse_before_handshake(stream: &tokio::net::TcpStream, why: &NotAdmitted) {
    // Unread input would turn the close into a reset that may discard the line at the
    // client; what the client sent so far (its version line) is read and dropped first.
    let mut sink = [0u8; 1024];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
    let line = refusal_line(why);
    let _ = stream.try_write(line.as_bytes());
}

/// The line a refused client reads ahead of any version line.
fn refusal_line(why: &NotAdmitted) -> String {
    format!("{}{why}\r\n", assist_proto::limits::REFUSAL_LINE_PREFIX)
}

/// Like [`refuse_before_handshake`], for a connection that waited in the startup queue
/// and got no place: the refusal line, then the close. Bounded: a client that reads
/// nothing does not hold the task.
async fn refuse_in_stream<S>(stream: &mut S, why: &NotAdmitted)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let line = refusal_line(why);
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent (its version line) until it closes too: unread input
        // would turn our close into a reset that may discard the line at the client.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Runs one admitted connection in its own tracked task, whatever carries its bytes.
pub fn spawn_connection<S>(
    relay: &Arc<Relay>,
    stream: S,
    peer: SocketAddr,
    startup: Startup,
    shutdown: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let id = relay.next_session.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", %peer, id, identity = tracing::field::Empty);
    let conn = connection(
        Arc::clone(relay),
        stream,
        peer,
        id,
        startup,
        shutdown.clone(),
        span.clone(),
    );
    relay.tasks.spawn(conn.instrument(span));
}

async fn connection<S>(
    relay: Arc<Relay>,
    stream: S,
    peer: SocketAddr,
    id: SessionId,
    startup: Startup,
    shutdown: CancellationToken,
    span: tracing::Span,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut startup = startup;
    let mut stream = stream;
    let queued_at = Instant::now();
    let waited = tokio::select! {
        placed = startup.take_place() => placed,
        _ = shutdown.cancelled() => return,
    };
    if let Err(why) = waited {
        tracing::warn!(
            "no place among the unauthenticated connections within the queue's wait; closed"
        );
        crate::metrics::connection_refused("busy");
        return refuse_in_stream(&mut stream, &why).await;
    }
    let queued_for = queued_at.elapsed();
    if queued_for > Duration::from_millis(100) {
        tracing::debug!(
            waited_ms = queued_for.as_millis() as u64,
            "waited for a startup place"
        );
    }
    // The grace time counts from the handshake's start, not from the wait before it.
    let deadline = Instant::now() + relay.limits.login_grace;
    let (auth_tx, auth_rx) = oneshot::channel();
    let (fatal_tx, mut fatal_rx) = oneshot::channel::<String>();
    let mut failure = FailureGuard {
        relay: Arc::clone(&relay),
        peer,
        refused: Arc::new(AtomicBool::new(false)),
        logged_in: false,
    };
    let handler = ConnHandler::new(
        Arc::clone(&relay),
        peer,
        id,
        auth_tx,
        fatal_tx,
        Arc::clone(&failure.refused),
        span,
    );
    let kill = CancellationToken::new();
    let stream = Killable::new(stream, kill.clone());
    let started = tokio::time::timeout_at(
        deadline,
        russh::server::run_stream(Arc::clone(&relay.config), stream, handler),
    )
    .await;
    let mut session = match started {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => return tracing::debug!(error = %e, "handshake failed"),
        Err(_) => {
            failure.count();
            tracing::info!("no SSH banner within the login grace time");
            let outcome = "refused: no SSH banner within the login grace time";
            crate::metrics::login_refused("login_grace");
            return relay.audit("ssh.auth", None, peer.ip(), outcome.into());
        }
    };
    let handle = session.handle();
    let identity = tokio::select! {
        ended = &mut session => {
            return tracing::debug!(result = ?ended.err(), "closed before login");
        }
        identity = auth_rx => match identity {
            Ok(identity) => identity,
            Err(_) => {
                let _ = session.await;
                return tracing::debug!("closed before login");
            }
        },
        Ok(why) = &mut fatal_rx => {
            tracing::info!(%why, "refused for good; disconnecting");
            return disconnect(&handle, session, &kill, &format!("refused: {why}")).await;
        }
        _ = tokio::time::sleep_until(deadline) => {
            // Counted like a refused login (OpenSSH's PerSourcePenalties grace-exceeded):
            // holding unauthenticated slots is how one host would lock everyone out.
            failure.count();
            tracing::info!("login grace time expired; disconnecting");
            crate::metrics::login_refused("login_grace");
            relay.audit("ssh.auth", None, peer.ip(), "refused: login grace time expired".into());
            return disconnect(&handle, session, &kill, "login grace time expired").await;
        }
        _ = shutdown.cancelled() => {
            return disconnect(&handle, session, &kill, "jump host shutting down").await;
        }
    };
    drop(startup);
    failure.logged_in = true;
    let (_registered, revoke) = relay.sessions.register(id, identity.clone(), peer);
    // A reload between the login and the registration above found nothing to stop.
    if let Err(why) =
        revoke::session_allowed(&relay.policy.current(), &identity, peer, SystemTime::now())
    {
        revoke.revoke(why);
    }

    let expiry = async {
        match &identity {
            Identity::Device {
                serial,
                expires_at,
                key,
            } => {
                key_expiry(&relay, serial, key, *expires_at).await;
                "device key expired; register again"
            }
            Identity::Engineer(engineer) => match engineer.valid_before() {
                Some(at) => {
                    tokio::time::sleep(auth::until(at)).await;
                    "engineer certificate expired"
                }
                None => std::future::pending().await,
            },
        }
    };
    tokio::select! {
        ended = &mut session => {
            // Most peers just drop TCP after their last channel closes ("early eof").
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        why = expiry => {
            tracing::info!(why, "ending the session");
            relay.audit(
                "ssh.session",
                Some(identity.name()),
                peer.ip(),
                format!("ended: {why}"),
            );
            disconnect(&handle, session, &kill, why).await;
        }
        why = revoke.revoked() => {
            tracing::warn!(reason = %why, "no longer allowed; ending the session");
            relay.audit(
                "ssh.session",
                Some(identity.name()),
                peer.ip(),
                format!("ended: no longer allowed: {why}"),
            );
            disconnect(&handle, session, &kill, &format!("no longer allowed: {why}")).await;
        }
        _ = shutdown.cancelled() => {
            disconnect(&handle, session, &kill, "jump host shutting down").await;
        }
    }
    if let Identity::Device { serial, .. } = &identity
        && relay.routes.release(serial, id)
    {
        tracing::info!(serial, "routes removed");
        if let Some(cluster) = &relay.cluster {
            cluster.release(serial).await;
        }
    }
    tracing::info!("connection closed");
}

/// What an unauthenticated connection holds until it logs in: a place among
/// `max_startups` (or in the queue for one), and one among its source's
/// `max_startups_per_source`.
pub struct Startup {
    place: Place,
    _source: SourceSlot,
}

enum Place {
    Held {
        _permit: OwnedSemaphorePermit,
    },
    Queued {
        _queued: OwnedSemaphorePermit,
        slots: Arc<tokio::sync::Semaphore>,
        wait: Duration,
    },
}

impl Startup {
    /// Waits, if admission queued this connection, for a place among `max_startups`; at
    /// most the queue's wait, then the connection is refused as busy.
    async fn take_place(&mut self) -> Result<(), NotAdmitted> {
        let Place::Queued { slots, wait, .. } = &self.place else {
            return Ok(());
        };
        match tokio::time::timeout(*wait, Arc::clone(slots).acquire_owned()).await {
            Ok(Ok(permit)) => {
                self.place = Place::Held { _permit: permit };
                Ok(())
            }
            // Closed only if the relay is gone; either way this connection is not served.
            Ok(Err(_)) | Err(_) => Err(NotAdmitted::Busy),
        }
    }
}

/// Counts the connection as a failed login when it ends (on any path) without a login
/// after at least one refused attempt, or after `count` (the grace time ran out); a client
/// merely offering a few keys is not one.
struct FailureGuard {
    relay: Arc<Relay>,
    peer: SocketAddr,
    refused: Arc<AtomicBool>,
    logged_in: bool,
}

impl FailureGuard {
    /// Counts this connection as a failed login when it ends without one.
    fn count(&self) {
        self.refused.store(true, Ordering::Relaxed);
    }
}

impl Drop for FailureGuard {
    fn drop(&mut self) {
        if !self.logged_in && self.refused.load(Ordering::Relaxed) {
            self.relay.login_failed(self.peer.ip());
        }
    }
}

/// Resolves when the device key expires for good: a renewal of the same key while the
/// session runs (the agent re-registers) moves the deadline instead of ending the tunnel.
async fn key_expiry(relay: &Relay, serial: &str, key: &PublicKey, mut expires_at: SystemTime) {
    loop {
        let left = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(left).await;
        let owned = serial.to_owned();
        let current = store::blocking(&relay.store, move |s| s.binding(&owned)).await;
        match current {
            Ok(Some(b))
                if b.public_key.key_data() == key.key_data() && b.expires_at > expires_at =>
            {
                tracing::debug!("device key renewed; session continues");
                expires_at = b.expires_at;
            }
            _ => return,
        }
    }
}

/// Asks the peer to go with `why`; a session that has not ended within `CLOSE_WAIT` (one
/// still in key exchange ignores the request) has its socket closed under it.
async fn disconnect(
    handle: &russh::server::Handle,
    mut session: russh::server::RunningSession<ConnHandler>,
    kill: &CancellationToken,
    why: &str,
) {
    let polite = tokio::time::timeout(CLOSE_WAIT, async {
        let _ = handle
            .disconnect(
                russh::Disconnect::ByApplication,
                why.to_owned(),
                String::new(),
            )
            .await;
        let _ = (&mut session).await;
    })
    .await;
    if polite.is_err() {
        tracing::debug!("session did not end on request; closing its socket");
        kill.cancel();
        let _ = tokio::time::timeout(CLOSE_WAIT, session).await;
    }
}
