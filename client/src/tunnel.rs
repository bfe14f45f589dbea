//! The reverse tunnel: an SSH session to the jump host as the serial, a `tcpip-forward` per
//! service, a relay per `forwarded-tcpip`, and reconnection with backoff while enabled,
//! moving to the next jump host of the list when one fails.

use crate::attest::Attestor;
use crate::config::Service;
use crate::pin::{HostKeyPin, PinError};
use crate::register::{RegisterError, Registration};
use crate::state::{Shared, TunnelState};
use assist_proto::backoff::backoff;
use assist_proto::greeting::{self, Greeting, Recorder};
use assist_proto::limits::{ATTESTATION_PORT, NOTES_PORT};
use assist_proto::lock;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelOpenFailure, Disconnect, client};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long connecting to the jump host (TCP + SSH handshake + login) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a refused login waits for the jump host's disconnect, which says why when no
/// other key could help (an address outside client_cidrs) and trails the refusal.
const FAREWELL_WAIT: Duration = Duration::from_millis(500);
/// How long telling an engineer why his session closes may hold up its close.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long connecting to a local service may take before the engineer's channel is refused.
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A reason the tunnel cannot go on; retrying would not help.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error(transparent)]
    HostKey(#[from] PinError),
    /// The device key was refused and registering it again was refused too (the serial is
    /// bound to another key, or no longer allowed).
    #[error(transparent)]
    Register(RegisterError),
}

/// Everything a tunnel needs; one per enabled window.
pub struct Tunnel {
    pub serial: String,
    /// The jump hosts in the order they are tried; never empty.
    pub jumphosts: Vec<String>,
    pub device_key: Arc<PrivateKey>,
    pub services: Arc<Vec<Service>>,
    pub pin: HostKeyPin,
    pub shared: Arc<Shared>,
    /// Cancelled by disable: ends the session and every relay.
    pub cancel: CancellationToken,
    /// Relayed connections, so disable can wait for them to close.
    pub relays: TaskTracker,
    pub registration: Registration,
    /// Serves the device's proof of the code on `ATTESTATION_PORT`; `None` without an ssh
    /// service (there is no session to prove).
    pub attestor: Option<Arc<Attestor>>,
}

enum Attempt {
    /// The session ran and then ended; the text says why.
    Lost(String),
    /// Could not connect or set up the forwards.
    Failed(String),
    /// The jump host refused the device key (its binding expired or was reset).
    Refused(String),
    Fatal(FatalError),
    Cancelled,
}

impl Tunnel {
    /// Keeps the tunnel up until cancelled; returns only early on a fatal error.
    ///
    /// A failed attempt moves on to the next jump host of the list; a session that worked
    /// and was lost is tried once more where it was (a restart, a blip) before moving on.
    /// The backoff counts failed attempts whichever jump host they were at, so a fleet
    /// leaving a dead jump host spreads over time as it does after any loss.
    pub async fn run(self) -> Result<(), FatalError> {
        let mut failures: u32 = 0;
        let mut at = 0;
        let mut connected_once = false;
        loop {
            // Until every jump host was tried once, the first connection is still being
            // made: enable waits for it rather than reporting the first one's failure.
            let first_round = !connected_once && (failures as usize) < self.jumphosts.len();
            let jumphost = &self.jumphosts[at];
            self.shared.set_tunnel_at(
                if first_round {
                    TunnelState::Connecting
                } else {
                    TunnelState::Reconnecting
                },
                jumphost,
            );
            let reason = match self.attempt(jumphost).await {
                Attempt::Cancelled => return Ok(()),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Lost(reason) => {
                    // The session worked: start the backoff over.
                    connected_once = true;
                    failures = 0;
                    reason
                }
                Attempt::Failed(reason) => {
                    at = (at + 1) % self.jumphosts.len();
                    reason
                }
                Attempt::Refused(reason) => {
                    self.register_again(at).await?;
                    reason
                }
            };
            failures = failures.saturating_add(1);
            let delay = backoff(failures);
            let next = &self.jumphosts[at];
            tracing::warn!(%reason, retry_in = ?delay, jumphost = %next, "tunnel down, reconnecting");
            let still_first = !connected_once && (failures as usize) < self.jumphosts.len();
            self.shared.set_tunnel(
                if still_first {
                    TunnelState::Connecting
                } else {
                    TunnelState::Reconnecting
                },
                Some(reason),
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => return Ok(()),
            }
            self.shared.count_reconnect();
        }
    }

    /// After a refused login: registers the device key again (a renewal, or a new binding
    /// after an admin's `serial reset`), so the next attempt can log in instead of adding
    /// failed logins that count against this network's address. A refusal of the
    /// registration itself ends the tunnel; an unreachable API is retried with the login.
    /// With as many API URLs as jump hosts, the refusing jump host's own (`at`) is asked
    /// first.
    async fn register_again(&self, at: usize) -> Result<(), FatalError> {
        let first = if self.registration.api_urls.len() == self.jumphosts.len() {
            at
        } else {
            0
        };
        match self.registration.send_from(first).await {
            Ok(_) => {
                tracing::info!("device key registered again after a refused login");
                Ok(())
            }
            Err(
                e @ (RegisterError::BoundToOtherKey { .. }
                | RegisterError::NotAllowed { .. }
                | RegisterError::Enrollment { .. }),
            ) => Err(FatalError::Register(e)),
            Err(e) => {
                tracing::warn!(error = %e, "registering the device key again failed");
                Ok(())
            }
        }
    }

    /// The proxy to the jump host at `host`: the configured one, else the environment's.
    fn proxy_for(&self, host: &str) -> Result<Option<assist_proto::proxy::Proxy>, String> {
        if let Some(proxy) = &self.registration.proxy {
            return Ok(Some(proxy.clone()));
        }
        let env = |k: &str| std::env::var(k).ok();
        assist_proto::proxy::Proxy::from_env(host, &env).transpose()
    }

    async fn attempt(&self, jumphost: &str) -> Attempt {
        let pin_error = Arc::new(Mutex::new(None));
        let (farewell_tx, mut farewell) = tokio::sync::watch::channel(None);
        let handler = Handler {
            farewell: farewell_tx,
            jumphost: jumphost.to_owned(),
            pin: self.pin.clone(),
            pin_error: pin_error.clone(),
            services: self.services.clone(),
            shared: self.shared.clone(),
            cancel: self.cancel.clone(),
            relays: self.relays.clone(),
            attestor: self.attestor.clone(),
        };
        let config = assist_proto::ssh::client_config();
        let setup = async {
            let mut handle = match assist_proto::ws::WsUrl::parse(jumphost) {
                // SSH inside a WebSocket on the jump host's API port, verified as the API is.
                Ok(url) => {
                    let tls = match url.tls {
                        true => Some(Arc::new(crate::api_tls::client_config(
                            &self.registration.trust,
                        )?)),
                        false => None,
                    };
                    let proxy = self.proxy_for(&url.host)?;
                    let io = assist_proto::ws::connect(&url, tls, proxy.as_ref(), CONNECT_TIMEOUT)
                        .await?;
                    client::connect_stream(config, io, handler)
                        .await
                        .map_err(|e| {
                            format!("SSH with the jump host at {} failed: {e}", url.url())
                        })?
                }
                Err(_) => {
                    let (host, port) = crate::config::split_host_port(jumphost)
                        .ok_or_else(|| format!("{jumphost:?} is not HOST:PORT"))?;
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let proxy = self.proxy_for(host)?;
                    let tcp = assist_proto::proxy::tcp_connect(host, port, proxy.as_ref()).await?;
                    // The first bytes say why a handshake failed: the jump host's refusal
                    // line (a penalty, a ban, an address not allowed) or a port that is not
                    // SSH.
                    let (tcp, seen) = Recorder::new(tcp);
                    // Boxed as the WebSocket is: one russh client session compiled for
                    // both ways in (22 KB of the static agent), one indirect call per read.
                    let io: Box<dyn assist_proto::ws::Io> = Box::new(tcp);
                    client::connect_stream(config, io, handler)
                        .await
                        .map_err(|e| match greeting::read(&seen) {
                            Some(Greeting::Refused(words)) => {
                                format!("the jump host refused the connection: {words}")
                            }
                            Some(Greeting::NotSsh(what)) => format!(
                                "{} answered {what}, not SSH: is jumphost in client.toml the \
                                 jump host's SSH port?",
                                jumphost
                            ),
                            None => format!("cannot connect to jump host {jumphost}: {e}"),
                        })?
                }
            };
            let key = PrivateKeyWithHashAlg::new(self.device_key.clone(), None);
            let auth = handle
                .authenticate_publickey(self.serial.as_str(), key)
                .await
                .map_err(|e| format!("login to jump host {jumphost} failed: {e}"))?;
            if !auth.success() {
                let said =
                    tokio::time::timeout(FAREWELL_WAIT, farewell.wait_for(Option::is_some)).await;
                if let Ok(Ok(reason)) = said {
                    let reason = reason.clone().unwrap_or_default();
                    return Err(format!("the jump host refused this device: {reason}"));
                }
                return Ok(None);
            }
            for s in self.services.iter() {
                // Ask for the literal "localhost": the jump host echoes it back as
                // connected_address, and routing is by port.
                handle
                    .tcpip_forward("localhost", s.port)
                    .await
                    .map_err(|e| {
                        format!(
                            "jump host refused forward of {} (port {}): {e}",
                            s.name, s.port
                        )
                    })?;
            }
            // Asking for the notes port tells the jump host this agent reads its notes of
            // who opens each connection; a jump host that does not know it refuses, and the
            // page then shows addresses only.
            if let Err(e) = handle.tcpip_forward("localhost", NOTES_PORT).await {
                tracing::info!("the jump host sends no notes of who connects: {e}");
            }
            if self.attestor.is_some() {
                handle
                    .tcpip_forward("localhost", ATTESTATION_PORT)
                    .await
                    .map_err(|e| {
                        format!("jump host refused forward of the attestation port: {e}")
                    })?;
            }
            Ok(Some(handle))
        };
        let result = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, setup) => r,
            () = self.cancel.cancelled() => return Attempt::Cancelled,
        };
        let mut handle = match result {
            Ok(Ok(Some(handle))) => handle,
            Ok(Ok(None)) => {
                return Attempt::Refused(format!(
                    "the jump host refused the device key for {} (registration expired or \
                     reset); registering it again",
                    self.serial
                ));
            }
            Ok(Err(reason)) => {
                if let Some(e) = lock::mutex(&pin_error).take() {
                    return Attempt::Fatal(e.into());
                }
                return Attempt::Failed(reason);
            }
            Err(_) => {
                return Attempt::Failed(format!(
                    "timed out connecting to the jump host {jumphost}"
                ));
            }
        };
        tracing::info!(%jumphost, "tunnel connected");
        self.shared.set_tunnel_at(TunnelState::Connected, jumphost);
        tokio::select! {
            r = &mut handle => Attempt::Lost(match r {
                Ok(()) => format!("the jump host {jumphost} closed the session"),
                Err(e) => format!("lost the session with the jump host {jumphost}: {e}"),
            }),
            () = self.cancel.cancelled() => {
                // The relays tell their engineers why first; the disconnect would cut them.
                // russh drops what it has not written yet when it disconnects, so a ping
                // answered by the jump host proves the notices went out first.
                let _ = tokio::time::timeout(NOTICE_TIMEOUT, async {
                    self.relays.wait().await;
                    let _ = handle.send_ping().await;
                })
                .await;
                let _ = handle
                    .disconnect(Disconnect::ByApplication, "assistance disabled", "en")
                    .await;
                Attempt::Cancelled
            }
        }
    }
}

/// The russh client handler: checks the host key and hands each forwarded connection to a
/// relay task.
struct Handler {
    /// The jump host as the config names it, whose pin the host key must match.
    jumphost: String,
    pin: HostKeyPin,
    pin_error: Arc<Mutex<Option<PinError>>>,
    /// The reason the jump host gave when it disconnected, if it gave one.
    farewell: tokio::sync::watch::Sender<Option<String>>,
    services: Arc<Vec<Service>>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    relays: TaskTracker,
    attestor: Option<Arc<Attestor>>,
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                let words = greeting::printable(&info.message);
                let words = words.strip_prefix("refused: ").unwrap_or(&words).to_owned();
                if !words.is_empty() {
                    self.farewell.send_replace(Some(words));
                }
                Ok(())
            }
            client::DisconnectReason::Error(e) => Err(e),
        }
    }

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        match self.pin.check(&self.jumphost, key) {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::error!("{e}");
                *lock::mutex(&self.pin_error) = Some(e);
                Ok(false)
            }
        }
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        _connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        if connected_port == ATTESTATION_PORT
            && let Some(attestor) = self.attestor.clone()
        {
            let span = tracing::info_span!(
                "attestation",
                from = %format!("{originator_address}:{originator_port}")
            );
            self.relays
                .spawn(serve_attestation(channel, reply, attestor).instrument(span));
            return Ok(());
        }
        if connected_port == NOTES_PORT {
            // Only the jump host opens forwarded-tcpip channels, and it refuses engineers'
            // direct-tcpip to this port: what arrives here is its word.
            let from = format!("{originator_address}:{originator_port}");
            self.relays
                .spawn(read_note(channel, reply, from, self.shared.clone()));
            return Ok(());
        }
        let service = self
            .services
            .iter()
            .find(|s| s.port == connected_port)
            .cloned();
        let span = tracing::info_span!(
            "relay",
            port = connected_port,
            from = %format!("{originator_address}:{originator_port}")
        );
        let shared = self.shared.clone();
        let cancel = self.cancel.clone();
        // The jump host reports the engineer's address as originator; the page shows it.
        let engineer = format!("{originator_address}:{originator_port}");
        self.relays.spawn(
            async move {
                let Some(service) = service else {
                    tracing::warn!("no service on this port; refused");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                };
                relay(channel, reply, service, &engineer, shared, cancel).await;
            }
            .instrument(span),
        );
        Ok(())
    }
}

/// Reads the jump host's note of who opens the connection from `from` and hands it to the
/// session records.
async fn read_note(
    channel: russh::Channel<client::Msg>,
    reply: client::ChannelOpenHandle,
    from: String,
    shared: Arc<Shared>,
) {
    use tokio::io::AsyncReadExt;
    reply.accept().await;
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        LOCAL_CONNECT_TIMEOUT,
        channel
            .into_stream()
            .take(assist_proto::note::MAX_NOTE as u64 + 1)
            .read_to_end(&mut line),
    )
    .await;
    match read {
        Ok(Ok(_)) if line.len() <= assist_proto::note::MAX_NOTE => {
            match assist_proto::note::HopNote::parse(&line) {
                Some(note) => {
                    tracing::info!(from, engineer = %note.who(), "the jump host names the engineer");
                    shared.note_arrived(&from, note);
                }
                None => tracing::warn!(from, "the jump host's note cannot be read"),
            }
        }
        Ok(Ok(_)) => tracing::warn!(from, "the jump host's note is too long"),
        Ok(Err(e)) => tracing::warn!(from, "the jump host's note was cut: {e}"),
        Err(_) => tracing::warn!(from, "the jump host's note did not end in time"),
    }
}

/// Hands the signed attestation to an engineer's CLI and closes the channel. The document
/// is public (it proves, it does not grant); what it reveals is the host keys any SSH
/// client of the device sees anyway.
async fn serve_attestation(
    channel: russh::Channel<client::Msg>,
    reply: client::ChannelOpenHandle,
    attestor: Arc<Attestor>,
) {
    let doc = match attestor.document().await {
        Ok(doc) => doc,
        Err(e) => {
            tracing::warn!("cannot attest the SSH server's host keys: {e}");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    reply.accept().await;
    if let Err(e) = channel.data(doc.as_bytes()).await {
        tracing::debug!("attestation not delivered: {e}");
    }
    let _ = channel.eof().await;
    let _ = channel.close().await;
    tracing::info!("attestation handed out");
}

/// Connects to the local service, accepts the channel, and copies both ways until both sides
/// are done (EOF carried each way) or assistance is disabled.
async fn relay(
    channel: russh::Channel<client::Msg>,
    reply: client::ChannelOpenHandle,
    service: Service,
    engineer: &str,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let Some(reply) = ask_customer(&channel, reply, &service, engineer, &shared, &cancel).await
    else {
        return;
    };
    if service.is_builtin() {
        let reply = match reply {
            Opening::Unanswered(reply) => Some(reply),
            Opening::Accepted => None,
        };
        crate::builtin::serve(channel, reply, engineer, shared, cancel).await;
        return;
    }
    let mut tcp = match tokio::time::timeout(
        LOCAL_CONNECT_TIMEOUT,
        TcpStream::connect(&service.target),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            tracing::warn!(target = %service.target, "cannot connect to local service: {e}");
            reply.reject(&channel).await;
            return;
        }
        Err(_) => {
            tracing::warn!(target = %service.target, "timed out connecting to local service");
            reply.reject(&channel).await;
            return;
        }
    };
    reply.accept().await;
    let counted = shared.connection_opened();
    counted.describe(&service.name, Some(engineer));
    tracing::info!(service = %service.name, "relaying");
    // Why the session ends, when the agent ends it, goes to the engineer as stderr on the
    // relayed channel: the session inside (support-cli with the customer's sshd) cannot
    // say it, and the jump host passes it on to clients that show it.
    let mut notice = channel.make_writer_ext(Some(1));
    // Counted as they flow, so status and the page show a session's bytes while it runs and
    // keep them when it ends by disable or an error.
    let mut local = Counting {
        inner: &mut tcp,
        guard: &counted,
    };
    let how = tokio::select! {
        r = assist_proto::ssh::relay_channel(&mut local, channel) => match r {
            Ok(relayed) => {
                tracing::info!(
                    to_engineer = relayed.to_channel,
                    from_engineer = relayed.from_channel,
                    "relay done"
                );
                "closed by the engineer or the service".to_owned()
            }
            Err(e) => {
                tracing::info!("relay ended: {e}");
                format!("broken: {e}")
            }
        },
        () = cancel.cancelled() => {
            let why = shared
                .farewell()
                .unwrap_or_else(|| crate::agent::STOPPED_BY_CUSTOMER.to_owned());
            tell(&mut notice, &why).await;
            tracing::info!(%why, "relay closed by disable");
            format!("closed: {why}")
        }
    };
    counted.ended_how(how);
}

/// An engineer's channel on its way to the local service: not answered yet, or accepted
/// already while the customer was asked.
enum Opening {
    Unanswered(client::ChannelOpenHandle),
    Accepted,
}

impl Opening {
    async fn accept(self) {
        if let Opening::Unanswered(reply) = self {
            reply.accept().await;
        }
    }

    /// The local service cannot be reached: refuses the channel, or closes it when the
    /// customer's approval had it accepted.
    async fn reject(self, channel: &russh::Channel<client::Msg>) {
        match self {
            Opening::Unanswered(reply) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
            Opening::Accepted => {
                let _ = channel.close().await;
            }
        }
    }
}

/// With `approve_connections`, asks the customer on the page and waits for the answer.
/// The channel is accepted first, whatever the target: the jump host gives a channel open
/// less time than the customer gets, and only an open channel can tell the engineer why it
/// closes. A connection not allowed is recorded in the history and closed: `None`.
async fn ask_customer(
    channel: &russh::Channel<client::Msg>,
    reply: client::ChannelOpenHandle,
    service: &Service,
    engineer: &str,
    shared: &Shared,
    cancel: &CancellationToken,
) -> Option<Opening> {
    if !shared.approvals().required() {
        return Some(Opening::Unanswered(reply));
    }
    reply.accept().await;
    // (how it ended for the history, what the engineer is told)
    let (how, told) = match shared
        .approvals()
        .ask(engineer, &service.name, cancel)
        .await
    {
        crate::approval::Outcome::Allowed => {
            tracing::info!(service = %service.name, "the customer allowed the connection");
            return Some(Opening::Accepted);
        }
        crate::approval::Outcome::Denied => (
            crate::approval::DENIED.to_owned(),
            format!("connection {}", crate::approval::DENIED),
        ),
        crate::approval::Outcome::NotAnswered => (
            crate::approval::NOT_ANSWERED.to_owned(),
            format!("connection {}", crate::approval::NOT_ANSWERED),
        ),
        crate::approval::Outcome::Withdrawn => {
            let why = shared
                .farewell()
                .unwrap_or_else(|| crate::agent::STOPPED_BY_CUSTOMER.to_owned());
            (format!("closed: {why}"), why)
        }
    };
    tracing::info!(service = %service.name, %how, "connection not allowed");
    let mut notice = channel.make_writer_ext(Some(1));
    tell(&mut notice, &told).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
    let counted = shared.connection_opened();
    counted.describe(&service.name, Some(engineer));
    counted.ended_how(how);
    None
}

/// Tells the engineer `words` on the relayed channel's stderr (`notice`), without holding up
/// a close for long.
async fn tell(notice: &mut (impl tokio::io::AsyncWrite + Unpin), words: &str) {
    let said = tokio::time::timeout(NOTICE_TIMEOUT, async {
        notice.write_all(format!("{words}\r\n").as_bytes()).await?;
        notice.flush().await
    })
    .await;
    if !matches!(said, Ok(Ok(()))) {
        tracing::debug!("the engineer was not told: {words}");
    }
}

/// The local service's end of a relay, adding what is read from it (to the engineer) and
/// written to it (from the engineer) to the session's counts.
pub(crate) struct Counting<'a, S> {
    pub(crate) inner: S,
    pub(crate) guard: &'a crate::state::ConnectionGuard<'a>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counting<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.guard.add_bytes(read as u64, 0);
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counting<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            self.guard.add_bytes(0, n as u64);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
