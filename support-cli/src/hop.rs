//! The hop: an SSH session to the jump host with the engineer's key, `direct-tcpip` channels
//! through it to a device's service, and an SSH session to the device inside such a channel.

use russh::client::{self, AuthResult, Handle, Msg};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{Channel, ChannelOpenFailure};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use assist_proto::greeting::{self, Greeting, Recorder};
use assist_proto::lock;

use crate::config::{IdentitySource, JumpAddr};
use crate::error::HopError;
use crate::known_hosts::{self, Accepted, Pin};
use crate::progress::Progress;

/// TLS for a `wss://` jump host: the system's CA certificates, as a browser would.
fn system_tls() -> Result<rustls::ClientConfig, std::io::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// How long the TCP connection to the jump host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Errors a handler can stop a connection with.
#[derive(Debug)]
pub enum HandlerError {
    Ssh(russh::Error),
    HostKey(String),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        Self::Ssh(e)
    }
}

/// How long a refused open waits for the refusal's description, which russh hands the
/// handler just after it fails the open.
const REFUSAL_WAIT: Duration = Duration::from_millis(500);

/// Checks the host key against known_hosts, keeps the jump host's words for refused
/// channels, and notices when the connection ends.
pub struct Client {
    pin: Pin,
    /// The host keys the device proved with the code; the server must present one of them.
    attested: Option<Vec<PublicKey>>,
    progress: Progress,
    closed: CancellationToken,
    refusals: tokio::sync::watch::Sender<Refusal>,
    /// The reason the server gave when it disconnected, if it gave one.
    farewell: Arc<std::sync::Mutex<Option<String>>>,
    /// Why each relayed channel was closed, as the far end said before closing it.
    notices: Notices,
}

/// The notices that came as stderr (extended data 1) on relayed channels: the agent says
/// there why it closes an engineer's session ("the customer stopped remote assistance"),
/// which the session inside the channel cannot tell.
pub type Notices = Arc<std::sync::Mutex<std::collections::HashMap<russh::ChannelId, String>>>;

/// The latest channel refusal's description; `seq` counts refusals.
#[derive(Debug, Clone, Default)]
pub struct Refusal {
    seq: u64,
    description: String,
}

impl client::Handler for Client {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        presented: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Certificates are not advertised, so this is a plain key; pin its key either way.
        let key = presented.public_key();
        if let Some(attested) = &self.attested
            && !attested.iter().any(|k| k.key_data() == key.key_data())
        {
            return Err(HandlerError::HostKey(format!(
                "{} presented host key {}, which is not among the keys it proved with the \
                 code: someone between you and the device is playing it; nothing was sent",
                self.pin.label,
                key.fingerprint(russh::keys::HashAlg::Sha256)
            )));
        }
        match self.pin.verify(&key) {
            Ok(Accepted::Known) => Ok(true),
            Ok(Accepted::Learned(note)) => {
                self.progress.note(&note);
                Ok(true)
            }
            Err(warning) => Err(HandlerError::HostKey(warning)),
        }
    }

    async fn channel_open_failure(
        &mut self,
        _channel: russh::ChannelId,
        _reason: ChannelOpenFailure,
        description: &str,
        _language: &str,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        // The jump host's sentence (no longer allowed, outside the engineer's serials, …),
        // which russh does not put in the error the open returns.
        let description = greeting::printable(description);
        self.refusals.send_modify(|r| {
            r.seq += 1;
            r.description = description;
        });
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: russh::ChannelId,
        ext: u32,
        data: &[u8],
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let words = greeting::printable(String::from_utf8_lossy(data).trim());
        if ext == 1 && !words.is_empty() {
            lock::mutex(&self.notices).insert(channel, words);
        }
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                let words = greeting::printable(&info.message);
                if !words.is_empty() {
                    *lock::mutex(&self.farewell) = Some(words);
                }
                self.closed.cancel();
                Ok(())
            }
            client::DisconnectReason::Error(e) => {
                self.closed.cancel();
                Err(e)
            }
        }
    }
}

/// A logged-in session to the jump host; channels to devices are opened through it.
pub struct Jump {
    handle: Handle<Client>,
    notices: Notices,
    /// Cancelled when the jump host connection ends.
    pub closed: CancellationToken,
    refusals: tokio::sync::watch::Receiver<Refusal>,
}

/// Where to log in and with what.
pub struct JumpLogin<'a> {
    pub addr: &'a JumpAddr,
    pub engineer: &'a str,
    pub engineer_origin: crate::config::EngineerOrigin,
    pub identity: &'a IdentitySource,
    pub known_hosts: &'a std::path::Path,
}

impl<'a> JumpLogin<'a> {
    /// The login the settings describe, to the jump host at `addr`.
    pub fn from_settings(
        settings: &'a crate::config::Settings,
        addr: &'a JumpAddr,
    ) -> Result<Self, crate::error::UsageError> {
        Ok(Self {
            addr,
            engineer: settings.engineer()?,
            engineer_origin: settings.engineer_origin,
            identity: &settings.identity,
            known_hosts: &settings.known_hosts,
        })
    }
}

/// Connects and logs in to the first of `addrs` that lets us in. A jump host that cannot
/// be reached or refuses the connection is reported (as a note) and the next one tried; a
/// refusal that another jump host of the same service would repeat (this engineer or key
/// unknown, a changed host key) ends the search. Also returns the jump host that answered.
pub async fn connect_first<'a>(
    settings: &crate::config::Settings,
    addrs: &'a [JumpAddr],
    progress: &Progress,
) -> anyhow::Result<(Jump, &'a JumpAddr)> {
    let mut failed = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let login = JumpLogin::from_settings(settings, addr)?;
        match connect_jump(login, progress).await {
            Ok(jump) => return Ok((jump, addr)),
            Err(e) if addrs.len() > 1 && e.another_jump_host_may_answer() => {
                if let Some(next) = addrs.get(i + 1) {
                    progress.note(&format!("jump host {addr} failed: {e}; trying {next}"));
                }
                failed.push(format!("{addr}: {e}"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(HopError::NoJumpHost {
        tried: failed.join("; "),
    }
    .into())
}

/// Connects and authenticates to the jump host.
pub async fn connect_jump(login: JumpLogin<'_>, progress: &Progress) -> Result<Jump, HopError> {
    let addr = login.addr;
    let addr_text = match addr.assumed_port_note() {
        Some(note) => {
            progress.note(&note);
            format!("{addr} ({note})")
        }
        None => addr.to_string(),
    };
    progress.stage(format!("connecting to the jump host {addr}"));
    let closed = CancellationToken::new();
    let (refusals_tx, refusals) = tokio::sync::watch::channel(Refusal::default());
    let farewell = Arc::new(std::sync::Mutex::new(None));
    let notices = Notices::default();
    let client = Client {
        notices: Arc::clone(&notices),
        farewell: Arc::clone(&farewell),
        refusals: refusals_tx,
        attested: None,
        pin: Pin {
            path: login.known_hosts.to_path_buf(),
            name: known_hosts::host_name(&addr.host, addr.port),
            label: format!("the jump host {addr}"),
        },
        progress: progress.clone(),
        closed: closed.clone(),
    };
    let handshake =
        |e| handshake_error(e, HopError::JumpClosed, "SSH handshake with the jump host");
    let env = |k: &str| std::env::var(k).ok();
    let proxy = assist_proto::proxy::Proxy::from_env(&addr.host, &env)
        .transpose()
        .map_err(|e| HopError::Unreachable {
            addr: addr_text.clone(),
            cause: std::io::Error::other(e),
        })?;
    let mut handle = match &addr.ws {
        Some(url) => {
            let tls = match url.tls {
                true => Some(Arc::new(system_tls().map_err(|cause| {
                    HopError::Unreachable {
                        addr: addr_text.clone(),
                        cause,
                    }
                })?)),
                false => None,
            };
            let io = assist_proto::ws::connect(url, tls, proxy.as_ref(), CONNECT_TIMEOUT)
                .await
                .map_err(|e| HopError::Unreachable {
                    addr: addr_text.clone(),
                    cause: std::io::Error::other(e),
                })?;
            client::connect_stream(assist_proto::ssh::client_config(), io, client)
                .await
                .map_err(handshake)?
        }
        None => {
            let tcp = tokio::time::timeout(
                CONNECT_TIMEOUT,
                assist_proto::proxy::tcp_connect(&addr.host, addr.port, proxy.as_ref()),
            )
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()))
            .map_err(|e| HopError::Unreachable {
                addr: addr_text.clone(),
                cause: std::io::Error::other(e),
            })?;
            // Interactive keystrokes must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            // The first bytes say why a handshake failed: the jump host's refusal line, or
            // an HTTP or TLS server on that port.
            let (tcp, seen) = Recorder::new(tcp);
            client::connect_stream(assist_proto::ssh::client_config(), tcp, client)
                .await
                .map_err(|e| match greeting::read(&seen) {
                    Some(Greeting::Refused(words)) => HopError::JumpRefused(words),
                    Some(Greeting::NotSsh(what)) => HopError::NotSsh {
                        addr: addr_text.clone(),
                        what,
                    },
                    None => handshake(e),
                })?
        }
    };

    progress.stage(format!("logging in to the jump host as {}", login.engineer));
    let engineer = (login.engineer, login.engineer_origin);
    match authenticate_engineer(&mut handle, engineer, login.identity, progress).await {
        Ok(()) => Ok(Jump {
            handle,
            notices,
            closed,
            refusals,
        }),
        // A jump host that refuses the address for engineers hangs up during the login
        // rather than just rejecting the key; that reads as a refusal here unless we look.
        Err(HopError::EngineerRefused { .. } | HopError::JumpClosed)
            if hung_up(&handle, &closed).await =>
        {
            let said = lock::mutex(&farewell).take();
            let said = said.map(|s| s.strip_prefix("refused: ").map(str::to_owned).unwrap_or(s));
            Err(said.map_or(HopError::JumpClosed, HopError::JumpRefused))
        }
        Err(e) => Err(e),
    }
}

/// Whether the connection is gone or goes within a moment (the disconnect may trail the
/// authentication failure).
async fn hung_up(handle: &Handle<Client>, closed: &CancellationToken) -> bool {
    const GRACE: Duration = Duration::from_millis(200);
    handle.is_closed()
        || tokio::time::timeout(GRACE, closed.cancelled())
            .await
            .is_ok()
}

fn handshake_error(e: HandlerError, closed: HopError, what: &str) -> HopError {
    match e {
        HandlerError::HostKey(warning) => HopError::HostKey(warning),
        HandlerError::Ssh(e) if is_closed(&e) => closed,
        HandlerError::Ssh(cause) => HopError::Ssh {
            what: what.into(),
            cause,
        },
    }
}

/// Errors meaning the peer hung up rather than misbehaved.
fn is_closed(e: &russh::Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        russh::Error::Disconnect | russh::Error::HUP | russh::Error::SendError => true,
        russh::Error::IO(io) => {
            matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted
            )
        }
        _ => false,
    }
}

async fn authenticate_engineer(
    handle: &mut Handle<Client>,
    (engineer, origin): (&str, crate::config::EngineerOrigin),
    identity: &IdentitySource,
    progress: &Progress,
) -> Result<(), HopError> {
    let refused = || HopError::EngineerRefused {
        engineer: engineer.to_string(),
        origin: origin.describe(engineer),
    };
    let auth_err = |cause| {
        if is_closed(&cause) {
            HopError::JumpClosed
        } else {
            HopError::Ssh {
                what: "logging in to the jump host".into(),
                cause,
            }
        }
    };
    let default_file = match identity {
        IdentitySource::File(path) => {
            let key = crate::keys::load_identity(path, progress)?;
            return match authenticate_file_key(handle, engineer, path, key)
                .await
                .map_err(auth_err)?
            {
                true => Ok(()),
                false => Err(refused()),
            };
        }
        IdentitySource::Default(path) => path,
    };

    let mut offered = false;
    if let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await {
        let identities = agent.request_identities().await.unwrap_or_default();
        for id in identities {
            offered = true;
            let public = id.public_key().into_owned();
            let hash = rsa_hash(handle, &public).await;
            match handle
                .authenticate_publickey_with(engineer, public, hash, &mut agent)
                .await
            {
                Ok(AuthResult::Success) => return Ok(()),
                Ok(AuthResult::Failure { .. }) => {}
                Err(e) => tracing::debug!("agent could not sign: {e}"),
            }
        }
    }
    if default_file.exists() {
        let key = crate::keys::load_identity(default_file, progress)?;
        if authenticate_file_key(handle, engineer, default_file, key)
            .await
            .map_err(auth_err)?
        {
            return Ok(());
        }
        offered = true;
    }
    if offered {
        Err(refused())
    } else {
        Err(HopError::NoIdentity(format!(
            "pass --identity FILE, or create {} (ssh-keygen -t ed25519), or add a key to \
             ssh-agent",
            default_file.display()
        )))
    }
}

async fn rsa_hash(handle: &Handle<Client>, key: &PublicKey) -> Option<russh::keys::HashAlg> {
    if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten()
    } else {
        None
    }
}

/// The OpenSSH certificate that goes with the key file `key` (`KEY-cert.pub`, as `ssh`
/// looks for it), if there is one.
pub fn certificate_beside(key: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut name = key.file_name()?.to_os_string();
    name.push("-cert.pub");
    let cert = key.with_file_name(name);
    cert.exists().then_some(cert)
}

/// Logs in with a key file's certificate when one lies beside it (a CA-signed, short-lived
/// identity), then with the bare key, as `ssh` offers both.
async fn authenticate_file_key(
    handle: &mut Handle<Client>,
    user: &str,
    path: &std::path::Path,
    key: PrivateKey,
) -> Result<bool, russh::Error> {
    if let Some(cert_path) = certificate_beside(path) {
        match russh::keys::load_openssh_certificate(&cert_path) {
            Ok(cert) => {
                let key = Arc::new(key.clone());
                if handle
                    .authenticate_openssh_cert(user, key, cert)
                    .await?
                    .success()
                {
                    return Ok(true);
                }
                tracing::debug!(cert = %cert_path.display(), "certificate refused; trying the key");
            }
            Err(e) => {
                tracing::warn!(cert = %cert_path.display(), error = %e, "certificate not readable; trying the key");
            }
        }
    }
    authenticate_key(handle, user, key).await
}

async fn authenticate_key<H: client::Handler>(
    handle: &mut Handle<H>,
    user: &str,
    key: PrivateKey,
) -> Result<bool, russh::Error> {
    let hash = if key.algorithm().is_rsa() {
        handle.best_supported_rsa_hash().await?.flatten()
    } else {
        None
    };
    let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
    Ok(handle.authenticate_publickey(user, key).await?.success())
}

impl Jump {
    /// Opens a relayed connection to `port` of the device `serial`.
    pub async fn open(
        &self,
        serial: &str,
        port: u32,
        originator: std::net::SocketAddr,
    ) -> Result<Channel<Msg>, HopError> {
        let (ip, oport) = (originator.ip().to_string(), u32::from(originator.port()));
        let seen = self.refusals.borrow().seq;
        let opened = self
            .handle
            .channel_open_direct_tcpip(serial, port, ip, oport)
            .await;
        let refused = match &opened {
            Err(russh::Error::ChannelOpenFailure(code)) => Some(code.clone()),
            _ => None,
        };
        let description = match refused {
            Some(_) => self.refusal_after(seen).await,
            None => None,
        };
        opened.map_err(|e| match e {
            // The jump host says which: no session of that device, or one without this port
            // (or the device itself refused).
            russh::Error::ChannelOpenFailure(ChannelOpenFailure::ConnectFailed)
                if description
                    .as_deref()
                    .is_none_or(|d| d.contains("is not connected")) =>
            {
                HopError::DeviceNotConnected {
                    serial: serial.to_string(),
                }
            }
            russh::Error::ChannelOpenFailure(reason) => HopError::ChannelRefused {
                serial: serial.to_string(),
                port,
                reason: description.unwrap_or_else(|| format!("{reason:?}")),
            },
            e if is_closed(&e) => HopError::JumpLost,
            cause => HopError::Ssh {
                what: format!("opening {serial}:{port}"),
                cause,
            },
        })
    }

    /// The description of the first refusal after the `seen`-th, if it arrives in time.
    async fn refusal_after(&self, seen: u64) -> Option<String> {
        let mut refusals = self.refusals.clone();
        let arrived = tokio::time::timeout(REFUSAL_WAIT, refusals.wait_for(|r| r.seq > seen)).await;
        match arrived {
            Ok(Ok(r)) if !r.description.is_empty() => Some(r.description.clone()),
            _ => None,
        }
    }

    /// Opens the proven device's ssh port and logs in there as `user` with the code's key,
    /// accepting only the host keys it proved.
    pub async fn login_device(
        &self,
        proven: crate::keys::Proven,
        user: &str,
        known_hosts: &std::path::Path,
        progress: &Progress,
    ) -> Result<Device, HopError> {
        let serial = proven.serial.clone();
        progress.stage(format!("reaching device {serial}"));
        let origin = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let channel = self
            .open(&serial, assist_proto::limits::SSH_SERVICE_PORT, origin)
            .await?;
        let relayed = channel.id();
        progress.stage(format!("authenticating to {serial}"));
        let mut device = match connect_device(channel, proven, user, known_hosts, progress).await {
            Ok(device) => device,
            // The device's end says why when it closes the channel before the login (the
            // customer denied the connection, or did not answer): that is the cause.
            Err(e) => {
                return Err(match lock::mutex(&self.notices).get(&relayed).cloned() {
                    Some(why) => HopError::Ended { serial, why },
                    None => e,
                });
            }
        };
        device.notice = Some((relayed, Arc::clone(&self.notices)));
        Ok(device)
    }

    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// An SSH session with the device, logged in.
pub struct Device {
    pub handle: Handle<Client>,
    /// Cancelled when the session with the device ends.
    pub closed: CancellationToken,
    /// Where the reason the relayed channel was closed arrives, if it is said.
    notice: Option<(russh::ChannelId, Notices)>,
}

impl Device {
    /// Why the device's end closed the session, if it said (the customer stopped
    /// assistance, the window ended).
    pub fn farewell(&self) -> Option<String> {
        let (id, notices) = self.notice.as_ref()?;
        lock::mutex(notices).get(id).cloned()
    }

    /// Opens `direct-tcpip` to `host:port` as the device sees it, inside this session (the
    /// device's sshd connects; its key line's `permitopen` decides what is allowed).
    pub async fn open(
        &self,
        serial: &str,
        host: &str,
        port: u32,
        originator: std::net::SocketAddr,
    ) -> Result<Channel<Msg>, HopError> {
        let (ip, oport) = (originator.ip().to_string(), u32::from(originator.port()));
        self.handle
            .channel_open_direct_tcpip(host, port, ip, oport)
            .await
            .map_err(|e| match e {
                russh::Error::ChannelOpenFailure(reason) => HopError::ServiceRefused {
                    serial: serial.to_string(),
                    target: format!("{host}:{port}"),
                    reason: format!("{reason:?}"),
                },
                e if is_closed(&e) => HopError::SessionEnded {
                    serial: serial.to_string(),
                },
                cause => HopError::Ssh {
                    what: format!("opening {host}:{port} on {serial}"),
                    cause,
                },
            })
    }
}

/// Runs an SSH session inside `channel` to the device that proved the code, accepting only
/// the host keys it proved, and logs in as `user` with the code's key.
pub async fn connect_device(
    channel: Channel<Msg>,
    proven: crate::keys::Proven,
    user: &str,
    known_hosts: &std::path::Path,
    progress: &Progress,
) -> Result<Device, HopError> {
    let crate::keys::Proven {
        serial,
        login: key,
        mut host_keys,
        builtin_host,
    } = proven;
    // The built-in target presents the key derived from the code, which only a holder of
    // the code can present.
    if !host_keys
        .iter()
        .any(|k| k.key_data() == builtin_host.key_data())
    {
        host_keys.push(builtin_host);
    }
    let serial = serial.as_str();
    let client = Client {
        attested: Some(host_keys),
        pin: Pin {
            path: known_hosts.to_path_buf(),
            name: serial.to_string(),
            label: format!("the device {serial}"),
        },
        progress: progress.clone(),
        closed: CancellationToken::new(),
        refusals: tokio::sync::watch::channel(Refusal::default()).0,
        farewell: Arc::default(),
        notices: Notices::default(),
    };
    let session_closed = client.closed.clone();
    let closed = || HopError::DeviceClosed {
        serial: serial.to_string(),
    };
    let mut handle = client::connect_stream(
        assist_proto::ssh::inner_client_config(),
        channel.into_stream(),
        client,
    )
    .await
    .map_err(|e| handshake_error(e, closed(), "SSH handshake with the device"))?;
    progress.stage(format!("logging in to {serial} as {user} with the code"));
    match authenticate_key(&mut handle, user, key).await {
        Ok(true) => Ok(Device {
            handle,
            closed: session_closed,
            notice: None,
        }),
        Ok(false) => Err(HopError::CodeRefused {
            serial: serial.to_string(),
            user: user.to_string(),
        }),
        Err(e) if is_closed(&e) => Err(closed()),
        Err(cause) => Err(HopError::Ssh {
            what: format!("logging in to {serial}"),
            cause,
        }),
    }
}
