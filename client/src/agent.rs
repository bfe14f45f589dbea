//! The agent's core: enable (register, code, key line, tunnel), disable (tunnel down, line
//! removed) and status, serialized so the key line and the tunnel never disagree.

use crate::attest::{Attestor, HostKeys};
use crate::authorized_keys::{Account, KeysFile, KeysFileError, key_line};
use crate::config::Config;
use crate::history::{Event, History, Origin};
use crate::keys::{self, KeyError};
use crate::pin::HostKeyPin;
use crate::register::{RegisterError, Registration};
use crate::state::{Shared, Status, TunnelState, rfc3339};
use crate::target;
use crate::tunnel::Tunnel;
use assist_proto::OneTimeCode;
use assist_proto::limits::{DEFAULT_ASSISTANCE_MINUTES, ENABLE_TUNNEL_WAIT, SHUTDOWN_GRACE};
use assist_proto::lock;
use russh::keys::PrivateKey;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Whether the jump host carries `service` as a virtual port of its own: only ssh, whose
/// stream is SSH already. Every other service rides inside the SSH session that the code
/// authenticates (`support-cli forward --service http --code …`, a `direct-tcpip` channel to
/// the customer's sshd that the key line's `permitopen` limits), so neither the jump host
/// nor an engineer without the code can reach it.
fn is_tunnelled(service: &crate::config::Service) -> bool {
    service.port == assist_proto::limits::SSH_SERVICE_PORT
}

/// What an engineer is told when the customer stops assistance.
pub const STOPPED_BY_CUSTOMER: &str = "the customer stopped remote assistance";

/// No window lasts longer than a year, whatever the policy says.
const LONGEST_WINDOW_SECS: u64 = 366 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    KeysFile(#[from] KeysFileError),
    #[error(transparent)]
    DeviceKey(#[from] KeyError),
    #[error("the number of minutes must be at least 1")]
    BadMinutes,
    #[error("assistance is not enabled: there is no window to extend")]
    NotEnabled,
    #[error("the jump host's policy allows no assistance window (max_assistance is 0)")]
    NoWindowAllowed,
    #[error("cannot derive the one-time key: {0}")]
    Derive(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The customer's SSH server cannot be reached, or does not let the code's key in.
    #[error("{0}")]
    Target(String),
    /// The tunnel failed before it held its forwards: no engineer could have used a code.
    #[error(
        "assistance was not enabled, no code is valid: the tunnel to the jump host {jumphost} \
         failed: {reason}"
    )]
    Tunnel { jumphost: String, reason: String },
}

/// What enable hands back to the owner (over the authenticated local API only).
pub struct Enabled {
    pub code: OneTimeCode,
    /// The window's number, as [`Agent::window_number`] tells it while the window is open.
    pub window: u64,
    pub until: OffsetDateTime,
    /// Length of the window: what was asked, capped by the policy.
    pub window_secs: u64,
    /// The policy's ceiling.
    pub max_secs: u64,
    /// Set when the tunnel did not hold its forwards within [`ENABLE_TUNNEL_WAIT`] but has
    /// not failed either (a slow network): what it is doing. The code works once it holds.
    pub tunnel_pending: Option<String>,
}

/// What the tunnel did within enable's wait.
enum TunnelWait {
    Holds,
    Failed(String),
    Pending(String),
}

/// What extend did, for the owner: the same code, a later end.
pub struct Extended {
    pub until: OffsetDateTime,
    /// Length of the window from now: what was asked, capped by the policy.
    pub window_secs: u64,
    pub max_secs: u64,
    /// Relayed connections that stay open through the extension.
    pub connections_kept: u64,
}

/// What disable did, for the owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DisableReport {
    pub was_enabled: bool,
    pub connections_closed: u64,
    pub key_lines_removed: usize,
}

/// One enabled window.
struct Window {
    epoch: u64,
    /// Its id in the history file.
    id: String,
    cancel: CancellationToken,
    relays: TaskTracker,
    task: JoinHandle<()>,
    /// The window's end; extend sends a later one and the supervisor's timer follows.
    until: tokio::sync::watch::Sender<OffsetDateTime>,
    /// What the key line is made of, so extend can write it again with a new expiry; `None`
    /// for the built-in target, which needs no key line.
    line: Option<LineParts>,
    /// The policy's longest window, as the enable's registration told it.
    max_secs: u64,
}

/// The parts of a window's key line other than its expiry.
struct LineParts {
    derived_public: String,
    permit_open: Vec<String>,
    enforced_by_server: bool,
}

impl LineParts {
    fn line(&self, serial: &str, until: OffsetDateTime) -> String {
        let permit_open: Vec<&str> = self.permit_open.iter().map(String::as_str).collect();
        key_line(
            &self.derived_public,
            serial,
            until,
            &permit_open,
            self.enforced_by_server,
        )
    }
}

/// The window now open, if any, and the number of the last one opened (so a window's own
/// end cannot close its successor).
#[derive(Default)]
struct Windows {
    last_epoch: u64,
    open: Option<Window>,
}

pub struct Agent {
    config: Config,
    device_key: Arc<PrivateKey>,
    keys_file: KeysFile,
    pin: HostKeyPin,
    shared: Arc<Shared>,
    /// The current window; the lock is held through a whole enable or disable.
    window: tokio::sync::Mutex<Windows>,
    /// End of the current window, readable while an enable (which may wait seconds on the
    /// jump host) holds `window`, so status never stalls.
    until: std::sync::Mutex<Option<(u64, OffsetDateTime)>>,
    /// The `ssh` service's server as the last enable found it.
    server: std::sync::Mutex<Option<target::Server>>,
    /// The customer's record of windows and connections.
    history: Arc<History>,
}

impl Agent {
    /// Loads (or makes) the device key and resolves the target account's key file.
    pub fn new(config: Config) -> Result<Self, AgentError> {
        let device_key = Arc::new(keys::load_or_create(&config.device_key_path())?);
        let account = Account::lookup(&config.target_user)?;
        let keys_file = KeysFile::new(&account, config.authorized_keys.clone());
        if !config.services.iter().any(is_tunnelled) {
            tracing::warn!(
                "no ssh service configured: the other services travel inside the SSH session \
                 and cannot be reached without it"
            );
        }
        let pin = HostKeyPin::new(
            config.pinned_host_key_path(),
            config.jumphost_fingerprints.clone(),
            config.jumphosts[0].clone(),
        );
        let shared = Arc::new(Shared::default());
        shared.approvals().require(config.approve_connections);
        Ok(Self {
            device_key,
            keys_file,
            pin,
            shared,
            window: tokio::sync::Mutex::new(Windows::default()),
            until: std::sync::Mutex::new(None),
            server: std::sync::Mutex::new(None),
            history: Arc::new(History::new(config.history_path())),
            config,
        })
    }

    pub fn device_fingerprint(&self) -> String {
        keys::fingerprint(&self.device_key)
    }

    /// What the tunnel, the built-in target and the page share: approvals, live terminals.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Where the built-in target writes its recordings.
    pub fn recordings_dir(&self) -> std::path::PathBuf {
        self.config.recordings_dir()
    }

    pub fn keys_file(&self) -> &KeysFile {
        &self.keys_file
    }

    /// At start: ends in the history what an earlier run left open, and forgets windows
    /// older than `history_keep`.
    pub fn recover_history(&self) -> Result<(), crate::history::HistoryError> {
        self.history
            .recover(self.config.history_keep, OffsetDateTime::now_utc())
    }

    /// The history's windows, oldest first.
    pub fn history(
        &self,
    ) -> Result<Vec<crate::history::WindowRecord>, crate::history::HistoryError> {
        Ok(crate::history::fold(&crate::history::read_events(
            &self.config.history_path(),
        )?))
    }

    /// Removes lines an earlier run left behind (after a crash or `kill -9`).
    pub fn purge_stale(&self) -> Result<usize, AgentError> {
        Ok(self.keys_file.remove(&self.config.serial)?)
    }

    /// This device's registration as the configuration says.
    fn registration(&self) -> Result<Registration, AgentError> {
        Ok(Registration {
            api_urls: self.config.api_urls.clone(),
            trust: self.config.api_trust.clone(),
            serial: self.config.serial.clone(),
            public_key: keys::public_line(&self.device_key)?,
            enrollment_secret: self.config.enrollment_secret()?,
            proxy: self.config.proxy.clone(),
        })
    }

    /// Registers the device, makes a fresh code, installs its key line and starts the tunnel.
    /// Enabling while enabled starts a new window with a new code.
    pub async fn enable(
        self: &Arc<Self>,
        minutes: Option<u64>,
        origin: Origin,
    ) -> Result<Enabled, AgentError> {
        let minutes = minutes.unwrap_or(DEFAULT_ASSISTANCE_MINUTES);
        if minutes == 0 {
            return Err(AgentError::BadMinutes);
        }
        let mut guard = self.window.lock().await;
        let registration = self.registration()?;
        let registered = registration.send().await;
        let reg = match registered {
            Ok(reg) => reg,
            Err(e) if guard.open.is_none() => return Err(self.enable_failed(e.into())),
            Err(e) => return Err(e.into()),
        };
        let max_secs = reg.max_assistance_secs;
        if max_secs == 0 {
            return Err(AgentError::NoWindowAllowed);
        }
        let window_secs = window_secs(minutes, max_secs);
        let until = OffsetDateTime::now_utc() + time::Duration::seconds(window_secs as i64);

        let code = OneTimeCode::generate();
        let (serial, c) = (self.config.serial.clone(), code.clone());
        let code_keys =
            tokio::task::spawn_blocking(move || assist_proto::attest::derive_keys(&serial, &c))
                .await
                .map_err(|e| AgentError::Derive(e.to_string()))?
                .map_err(|e| AgentError::Derive(e.to_string()))?;
        let derived = code_keys.login;
        let derived_public = keys::public_line(&derived)?;
        let ssh = self.config.services.iter().find(|s| is_tunnelled(s));
        // The built-in target is the agent itself: its host key comes from the code, and
        // no sshd or key line is involved.
        let builtin = match ssh {
            Some(s) if s.is_builtin() => Some(Arc::new(crate::builtin::Window {
                login: derived.public_key().clone(),
                host_key: code_keys.host.clone(),
                account: Account::lookup(&self.config.target_user)?,
                forwards: self
                    .config
                    .services
                    .iter()
                    .filter(|s| !is_tunnelled(s))
                    .cloned()
                    .collect(),
                data_dir: self.config.data_dir.clone(),
            })),
            _ => None,
        };
        // The window's proof of the code is about the ssh service's host keys.
        let attestor = ssh.map(|ssh| {
            let host_keys = match ssh.is_builtin() {
                true => HostKeys::Known(vec![code_keys.host.public_key().clone()]),
                false => HostKeys::Scan(ssh.target.clone()),
            };
            Arc::new(Attestor::new(
                self.config.serial.clone(),
                host_keys,
                code_keys.attestation,
            ))
        });

        if let Some(old) = guard.open.take() {
            self.shared.set_farewell(
                "the customer started a new assistance window; ask them for the new code".into(),
            );
            let id = old.id.clone();
            stop_window(old).await;
            self.set_until(None);
            self.history.record(&Event::WindowEnded {
                window: id,
                at: rfc3339(OffsetDateTime::now_utc()),
                reason: format!("replaced by a new code ({})", origin.by),
            });
        }
        let permit_open: Vec<String> = self
            .config
            .services
            .iter()
            .filter(|s| !is_tunnelled(s))
            .map(|s| s.target.clone())
            .collect();
        // Which server the key line is for decides its options; a server that cannot be
        // reached cannot be proven to let the engineer in, so enable stops here.
        let server = match ssh {
            Some(ssh) if ssh.is_builtin() => None,
            Some(ssh) => match target::identify(&ssh.target).await {
                Ok(server) => Some(server),
                Err(why) => return Err(self.enable_failed(AgentError::Target(why))),
            },
            None => None,
        };
        let parts = LineParts {
            derived_public,
            permit_open,
            enforced_by_server: server.as_ref().is_none_or(target::Server::enforces_expiry),
        };
        let parts = match builtin {
            Some(_) => None,
            None => Some(parts),
        };
        if let Some(parts) = &parts {
            self.keys_file
                .install(&self.config.serial, &parts.line(&self.config.serial, until))?;
        }
        // Enable proves the login works: the agent logs in as the engineer will, and only
        // then shows the code. A refusal takes the line out again; nothing is half-enabled.
        if let Some(server) = &server {
            let checked = target::check_login(
                server,
                &self.config.target_user,
                &derived,
                &self.keys_file.path,
            )
            .await;
            match checked {
                Ok(took) => tracing::info!(
                    server = %server.software,
                    ms = took.as_millis(),
                    "login check passed"
                ),
                Err(why) => {
                    if let Err(e) = self.keys_file.remove(&self.config.serial) {
                        tracing::error!("cannot remove the key line after the failed check: {e}");
                    }
                    return Err(self.enable_failed(AgentError::Target(why)));
                }
            }
            if !server.enforces_expiry() {
                tracing::warn!("{}", server.guarantees());
            }
        }
        drop(derived);
        *lock::mutex(&self.server) = server;

        guard.last_epoch += 1;
        let epoch = guard.last_epoch;
        let started = OffsetDateTime::now_utc();
        // Unique across runs: the start to the nanosecond.
        let id = format!("{}", started.unix_timestamp_nanos());
        self.history.record(&Event::WindowStarted {
            window: id.clone(),
            at: rfc3339(started),
            until: rfc3339(until),
            by: origin.by.to_owned(),
            user: origin.user.clone(),
        });
        self.shared.start_window(Some(crate::state::WindowLog {
            history: self.history.clone(),
            window: id.clone(),
        }));
        self.shared.set_builtin(builtin);
        let cancel = CancellationToken::new();
        let relays = TaskTracker::new();
        let tunnel = Tunnel {
            serial: self.config.serial.clone(),
            jumphosts: self.config.jumphosts.clone(),
            device_key: self.device_key.clone(),
            services: Arc::new(
                self.config
                    .services
                    .iter()
                    .filter(|s| is_tunnelled(s))
                    .cloned()
                    .collect(),
            ),
            pin: self.pin.clone(),
            shared: self.shared.clone(),
            cancel: cancel.clone(),
            relays: relays.clone(),
            registration,
            attestor: attestor.clone(),
        };
        // Read the host keys now, while the customer reads out the code, so the first
        // engineer does not wait for them.
        if let Some(attestor) = attestor {
            tokio::spawn(async move {
                if let Err(e) = attestor.document().await {
                    tracing::warn!("cannot attest the SSH server's host keys yet: {e}");
                }
            });
        }
        let (until_tx, until_rx) = tokio::sync::watch::channel(until);
        let task = tokio::spawn(supervise(
            self.clone(),
            epoch,
            tunnel,
            until_rx,
            cancel.clone(),
        ));
        self.set_until(Some((epoch, until)));
        guard.open = Some(Window {
            epoch,
            id,
            cancel,
            relays,
            task,
            until: until_tx,
            line: parts,
            max_secs,
        });
        // A code is only shown when it can work: the tunnel must hold its forwards first.
        let started = std::time::Instant::now();
        let tunnel_pending = match self.tunnel_holds(ENABLE_TUNNEL_WAIT).await {
            TunnelWait::Holds => None,
            TunnelWait::Pending(what) => Some(what),
            TunnelWait::Failed(reason) => {
                let window = guard.open.take();
                if let Err(e) = self.finish(window, "tunnel failed at enable", None).await {
                    tracing::error!("cannot end the failed window cleanly: {e}");
                }
                return Err(self.enable_failed(AgentError::Tunnel {
                    jumphost: self.config.jumphosts.join(", "),
                    reason,
                }));
            }
        };
        tracing::info!(
            until = %rfc3339(until),
            window_secs,
            tunnel_ms = started.elapsed().as_millis(),
            pending = tunnel_pending.is_some(),
            "assistance enabled"
        );
        Ok(Enabled {
            code,
            window: epoch,
            until,
            window_secs,
            max_secs,
            tunnel_pending,
        })
    }

    /// Waits up to `wait` for the window's first tunnel attempt to hold its forwards or
    /// fail. A first attempt that fails is the answer (a changed jump host key, an address
    /// the jump host refuses, nothing listening): the customer hears it now, not from
    /// `status` after reading out a code that cannot work.
    async fn tunnel_holds(&self, wait: Duration) -> TunnelWait {
        let mut states = self.shared.watch_tunnel();
        let settled = tokio::time::timeout(
            wait,
            states.wait_for(|t| t.state != TunnelState::Connecting),
        )
        .await;
        let now = self.shared.tunnel();
        match (settled, now.state) {
            (Ok(_), TunnelState::Connected) => TunnelWait::Holds,
            (Ok(_), _) => TunnelWait::Failed(
                now.last_error
                    .unwrap_or_else(|| "it stopped without saying why".to_owned()),
            ),
            (Err(_), _) => TunnelWait::Pending(format!(
                "no answer from the jump host {} within {} s; the code works once \
                 `assist-client status` says connected",
                self.config.jumphosts.join(", "),
                wait.as_secs()
            )),
        }
    }

    /// Moves the open window's end to `minutes` from now (capped by the policy), keeping
    /// the code, the tunnel and every open session: the key line is written again with the
    /// new `expiry-time` (one atomic rename) and the window's timer follows.
    pub async fn extend(
        &self,
        minutes: Option<u64>,
        origin: Origin,
    ) -> Result<Extended, AgentError> {
        let minutes = minutes.unwrap_or(DEFAULT_ASSISTANCE_MINUTES);
        if minutes == 0 {
            return Err(AgentError::BadMinutes);
        }
        let mut guard = self.window.lock().await;
        if guard.open.is_none() {
            return Err(AgentError::NotEnabled);
        }
        // The policy may have changed since the window opened: ask again, so an extension
        // never outlasts the maximum in force now. The registration also renews the device
        // key's binding, as enable does.
        let reg = self.registration()?.send().await?;
        let Some(window) = guard.open.as_mut() else {
            return Err(AgentError::NotEnabled);
        };
        window.max_secs = reg.max_assistance_secs;
        if window.max_secs == 0 {
            return Err(AgentError::NoWindowAllowed);
        }
        let window_secs = window_secs(minutes, window.max_secs);
        let until = OffsetDateTime::now_utc() + time::Duration::seconds(window_secs as i64);
        if let Some(line) = &window.line {
            self.keys_file
                .install(&self.config.serial, &line.line(&self.config.serial, until))?;
        }
        window.until.send_replace(until);
        self.set_until(Some((window.epoch, until)));
        self.history.record(&Event::WindowExtended {
            window: window.id.clone(),
            at: rfc3339(OffsetDateTime::now_utc()),
            until: rfc3339(until),
            by: origin.by.to_owned(),
            user: origin.user,
        });
        let connections_kept = self.shared.connections().active;
        tracing::info!(until = %rfc3339(until), window_secs, connections_kept, "assistance extended");
        Ok(Extended {
            until,
            window_secs,
            max_secs: window.max_secs,
            connections_kept,
        })
    }

    /// With no window open, status and the page say why enabling did not work.
    fn enable_failed(&self, e: AgentError) -> AgentError {
        self.shared.set_tunnel(
            crate::state::TunnelState::Disabled,
            Some(format!("enabling failed: {e}")),
        );
        e
    }

    /// Ends assistance: tunnel and relays closed, key line removed. Safe to call when off.
    /// `reason` is for the log; `farewell` is what each engineer is told.
    pub async fn disable(&self, reason: &str, farewell: &str) -> Result<DisableReport, AgentError> {
        let mut guard = self.window.lock().await;
        if guard.open.is_some() {
            self.shared.set_farewell(farewell.to_owned());
        }
        let window = guard.open.take();
        self.finish(window, reason, None).await
    }

    /// Ends window `epoch` from inside (its end came, or its tunnel failed for good).
    async fn end_window(&self, epoch: u64, fatal: Option<String>) {
        let mut guard = self.window.lock().await;
        if guard.open.as_ref().map(|w| w.epoch) != Some(epoch) {
            return;
        }
        let window = guard.open.take();
        let reason = match &fatal {
            Some(e) => format!("the tunnel failed: {e}"),
            None => "the window's time was up".to_owned(),
        };
        if let Err(e) = self.finish(window, &reason, fatal).await {
            tracing::error!("cannot end assistance cleanly: {e}");
        }
    }

    async fn finish(
        &self,
        window: Option<Window>,
        reason: &str,
        fatal: Option<String>,
    ) -> Result<DisableReport, AgentError> {
        let was_enabled = window.is_some();
        // The key line goes first: from here on sshd refuses the code, whatever follows.
        let removed = self.keys_file.remove(&self.config.serial);
        let connections_closed = self.shared.connections().active;
        // Connections still waiting for the customer's answer are refused with the rest.
        self.shared.approvals().end_all();
        if let Some(w) = window {
            let id = w.id.clone();
            stop_window(w).await;
            self.shared.set_builtin(None);
            // After the relays: their ends are in the file before the window's.
            self.history.record(&Event::WindowEnded {
                window: id,
                at: rfc3339(OffsetDateTime::now_utc()),
                reason: reason.to_owned(),
            });
        }
        match fatal {
            Some(e) => self.shared.set_tunnel(TunnelState::Failed, Some(e)),
            None => self.shared.set_tunnel(TunnelState::Disabled, None),
        }
        // Only now does status say "disabled": it never shows off while a line or a relay
        // is still in place.
        self.set_until(None);
        let key_lines_removed = removed?;
        if was_enabled || key_lines_removed > 0 {
            tracing::info!(
                reason,
                connections_closed,
                key_lines_removed,
                "assistance disabled"
            );
        }
        Ok(DisableReport {
            was_enabled,
            connections_closed,
            key_lines_removed,
        })
    }

    fn set_until(&self, until: Option<(u64, OffsetDateTime)>) {
        *lock::mutex(&self.until) = until;
    }

    /// The number of the window open now, if any: the same through extensions, a new one
    /// at each enable.
    pub fn window_number(&self) -> Option<u64> {
        lock::mutex(&self.until).map(|(epoch, _)| epoch)
    }

    /// Tunnel attempts after a failure or a lost session since the agent started.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects()
    }

    pub async fn status(&self) -> Status {
        let until = lock::mutex(&self.until).map(|(_, until)| until);
        let remaining = until.map(|u| {
            let left = u - OffsetDateTime::now_utc();
            left.whole_seconds().max(0) as u64
        });
        Status {
            serial: self.config.serial.clone(),
            device_fingerprint: self.device_fingerprint(),
            enabled: until.is_some(),
            until: until.map(rfc3339),
            remaining_secs: remaining,
            tunnel: self.shared.tunnel(),
            connections: self.shared.connections(),
            ssh_server: lock::mutex(&self.server).clone(),
        }
    }
}

/// A window's length in seconds: `minutes`, capped by the policy and by a year.
fn window_secs(minutes: u64, max_secs: u64) -> u64 {
    // Seconds, not minutes: a policy may allow less than a minute.
    // A policy maximum of centuries (or a bogus answer) must not overflow the clock.
    minutes
        .saturating_mul(60)
        .min(max_secs)
        .min(LONGEST_WINDOW_SECS)
}

/// Time left until `until`, zero once it passed.
fn left_until(until: OffsetDateTime) -> Duration {
    (until - OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Runs the tunnel until the window's end (which extend may move), a fatal error, or
/// cancellation by disable.
async fn supervise(
    agent: Arc<Agent>,
    epoch: u64,
    tunnel: Tunnel,
    mut until: tokio::sync::watch::Receiver<OffsetDateTime>,
    cancel: CancellationToken,
) {
    let run = tunnel.run();
    tokio::pin!(run);
    let fatal = loop {
        let end = *until.borrow_and_update();
        tokio::select! {
            r = &mut run => match r {
                Ok(()) => return, // cancelled by disable, which does the rest
                Err(e) => break Some(e.to_string()),
            },
            // Extended: wait again, for the new end.
            Ok(()) = until.changed() => continue,
            () = tokio::time::sleep(left_until(end)) => {
                agent.shared.set_farewell(format!(
                    "the assistance window ended at {}",
                    clock_time(end)
                ));
                cancel.cancel();
                let _ = run.await;
                break None;
            }
        }
    };
    if let Some(e) = &fatal {
        tracing::error!("tunnel stopped: {e}");
        // Said at once, so an enable waiting for the tunnel hears it (and ends the window
        // itself while it holds the lock that end_window waits for).
        agent
            .shared
            .set_tunnel(TunnelState::Failed, Some(e.clone()));
    }
    // end_window joins this task, so it must run in another one.
    tokio::spawn(async move { agent.end_window(epoch, fatal).await });
}

/// A moment as the engineer on the phone reads it: `14:30 UTC`.
fn clock_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:02}:{:02} UTC", t.hour(), t.minute())
}

/// Cancels a window and waits (bounded) for its session and relays to close.
async fn stop_window(w: Window) {
    w.cancel.cancel();
    w.relays.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, w.relays.wait())
        .await
        .is_err()
    {
        tracing::warn!("some relayed connections did not close in time");
    }
    let abort = w.task.abort_handle();
    if tokio::time::timeout(SHUTDOWN_GRACE, w.task).await.is_err() {
        abort.abort();
    }
}
