//! The built-in target (`[services] ssh = "builtin"`): the agent itself is the end of the
//! engineer's end-to-end SSH session, so the customer can watch it live, stop it, and keep a
//! recording, and a machine without sshd can be helped.
//!
//! Each relayed connection of the ssh service runs a russh server on the channel's stream.
//! It presents the host key derived from the window's code (the CLI derives the same one,
//! so there is no trust on first use), accepts only the window's login key, and serves a
//! shell or a command as `target_user` (on a PTY when asked), the `sftp` subsystem through
//! the system's `sftp-server` run as that user, and `direct-tcpip` to the configured
//! services only. Every shell and command is recorded (`record`), and every terminal is on
//! the customer's live board until it ends.

mod child;
mod forward;
pub mod record;
mod session;

pub use child::{AsUser, become_user_and_exec};

use crate::authorized_keys::Account;
use crate::config::Service;
use crate::state::Shared;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{self, Auth, Msg, PublicKeyOffer, VerifiedPublicKey};
use russh::{Channel, ChannelOpenFailure, MethodKind, MethodSet, client};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the engineer's client has to finish the handshake and log in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing connection waits for its sessions to say goodbye.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// One window's built-in target: what the code gives and what the config allows.
pub struct Window {
    /// The only key that logs in: the one derived from the window's code.
    pub login: PublicKey,
    /// The host key derived from the code (`assist_proto::derive::HOST_KEY_LABEL`).
    pub host_key: PrivateKey,
    /// Whom the sessions run as.
    pub account: Account,
    /// The services `direct-tcpip` may reach (by their local address).
    pub forwards: Vec<Service>,
    /// Where `recordings/` is.
    pub data_dir: PathBuf,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("account", &self.account.name)
            .finish_non_exhaustive()
    }
}

/// One engineer's connection to the built-in target, shared by its sessions.
pub(crate) struct Connection {
    window: Arc<Window>,
    shared: Arc<Shared>,
    /// The engineer's address as the jump host reports it.
    from: String,
    /// The user name the engineer logged in as.
    user: String,
    /// Cancelled when assistance ends (or the connection closes).
    stop: CancellationToken,
}

impl Connection {
    /// The engineer's name from the jump host's note, else the address.
    fn engineer(&self) -> String {
        self.shared
            .engineer_from(&self.from)
            .unwrap_or_else(|| self.from.clone())
    }

    fn farewell(&self) -> String {
        self.shared
            .farewell()
            .unwrap_or_else(|| crate::agent::STOPPED_BY_CUSTOMER.to_owned())
    }
}

/// Serves one relayed connection of the ssh service: accepts the channel and runs the SSH
/// server on it until the engineer leaves or assistance ends.
pub async fn serve(
    channel: Channel<client::Msg>,
    reply: Option<client::ChannelOpenHandle>,
    from: &str,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let Some(window) = shared.builtin() else {
        tracing::warn!("no assistance window for the built-in target; refused");
        match reply {
            Some(reply) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
            // Accepted while the customer was asked (`approve_connections`).
            None => {
                let _ = channel.close().await;
            }
        }
        return;
    };
    if let Some(reply) = reply {
        reply.accept().await;
    }
    let counted = shared.connection_opened();
    counted.describe("ssh", Some(from));
    tracing::info!("built-in target serving");
    let config = Arc::new(server::Config {
        keys: vec![window.host_key.clone()],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        window_size: assist_proto::ssh::INNER_WINDOW,
        maximum_packet_size: assist_proto::ssh::MAX_PACKET,
        channel_buffer_size: 256,
        inactivity_timeout: None,
        keepalive_interval: Some(assist_proto::limits::KEEPALIVE_INTERVAL),
        keepalive_max: assist_proto::limits::KEEPALIVE_MAX,
        nodelay: true,
        ..Default::default()
    });
    let stop = cancel.child_token();
    let sessions = TaskTracker::new();
    let handler = Handler {
        window: window.clone(),
        shared: shared.clone(),
        from: from.to_owned(),
        stop: stop.clone(),
        sessions: sessions.clone(),
        user: None,
    };
    // The SSH server runs on one end of a pipe; the relay counts the bytes on the other as
    // every relay does, so the page shows them while they flow.
    let (ours, theirs) = tokio::io::duplex(assist_proto::ssh::MAX_PACKET as usize * 4);
    let running = tokio::time::timeout(LOGIN_TIMEOUT, server::run_stream(config, theirs, handler));
    let mut ours = ours;
    let mut local = crate::tunnel::Counting {
        inner: &mut ours,
        guard: &counted,
    };
    let copy = assist_proto::ssh::relay_channel(&mut local, channel);
    tokio::pin!(copy);
    let session = tokio::select! {
        r = running => r,
        _ = &mut copy => {
            counted.ended_how("closed before the handshake".into());
            return;
        }
        () = cancel.cancelled() => {
            counted.ended_how("closed: assistance ended".into());
            return;
        }
    };
    let session = match session {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::info!("SSH with the engineer failed: {e}");
            counted.ended_how(format!("broken: {e}"));
            return;
        }
        Err(_) => {
            counted.ended_how("closed: no SSH handshake in time".into());
            return;
        }
    };
    let handle = session.handle();
    let how = tokio::select! {
        r = &mut copy => match r {
            Ok(_) => "closed by the engineer".to_owned(),
            Err(e) => format!("broken: {e}"),
        },
        r = session => match r {
            Ok(()) => "closed by the engineer".to_owned(),
            Err(e) => format!("broken: {e}"),
        },
        () = cancel.cancelled() => {
            let why = shared
                .farewell()
                .unwrap_or_else(|| crate::agent::STOPPED_BY_CUSTOMER.to_owned());
            // The sessions tell their engineer why, then the connection goes.
            stop.cancel();
            sessions.close();
            let _ = tokio::time::timeout(CLOSE_GRACE, sessions.wait()).await;
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, why.clone(), "en".into())
                .await;
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut copy).await;
            format!("closed: {why}")
        }
    };
    stop.cancel();
    sessions.close();
    let _ = tokio::time::timeout(CLOSE_GRACE, sessions.wait()).await;
    tracing::info!(%how, "built-in target done");
    counted.ended_how(how);
}

/// The russh handler: checks the login and hands each channel to its own task.
struct Handler {
    window: Arc<Window>,
    shared: Arc<Shared>,
    from: String,
    stop: CancellationToken,
    sessions: TaskTracker,
    /// The user name of the accepted login.
    user: Option<String>,
}

impl Handler {
    fn connection(&self) -> Arc<Connection> {
        Arc::new(Connection {
            window: self.window.clone(),
            shared: self.shared.clone(),
            from: self.from.clone(),
            user: self.user.clone().unwrap_or_default(),
            stop: self.stop.clone(),
        })
    }

    fn is_login_key(&self, key: &PublicKey) -> bool {
        key.key_data() == self.window.login.key_data()
    }
}

impl server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.is_login_key(offer.public_key) {
            true => Auth::Accept,
            false => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.is_login_key(key.public_key) {
            tracing::warn!("refused a key that is not this window's code's");
            return Ok(Auth::reject());
        }
        // Any user name logs in with the code's key; a session for another user than the
        // target user is then refused with words the engineer sees (SSH cannot say why a
        // login fails).
        tracing::info!(%user, "engineer logged in with the code's key");
        self.user = Some(user.to_owned());
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let conn = self.connection();
        let handle = session.handle();
        self.sessions.spawn(async move {
            reply.accept().await;
            session::run(channel, handle, conn).await;
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let conn = self.connection();
        let (host, port) = (host_to_connect.to_owned(), port_to_connect);
        self.sessions
            .spawn(forward::run(channel, reply, host, port, conn));
        Ok(())
    }
}
