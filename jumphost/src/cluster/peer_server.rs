//! The other nodes' links to this one, on `peer_listen`: SSH with this node's node key as
//! host key, a login only for a node whose published key signs it, and then only
//! `direct-tcpip` to a serial whose tunnel is here, spliced into that tunnel exactly as an
//! engineer's local hop is. The engineer was checked by the node he logged in to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use assist_proto::limits::NOTES_PORT;
use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Cluster;
use crate::ssh::Relay;
use crate::ssh::hop::CONNECT_FAILED;
use crate::ssh::splice::{End, splice};

/// Peer connections logging in at once; more are closed (nodes are few, and a link is
/// reused by every hop between two nodes).
const MAX_PEER_STARTUPS: usize = 32;
/// Pause after a failed accept so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a closing link gets to say goodbye.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Accepts the other nodes' links on an already-bound listener until `shutdown` fires;
/// connection tasks are tracked in `relay.tasks`.
pub async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let config = Arc::new(crate::ssh::russh_config((*cluster.key).clone()));
    let startups = Arc::new(Semaphore::new(MAX_PEER_STARTUPS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(startup) = Arc::clone(&startups).try_acquire_owned() else {
            tracing::warn!(%peer, "too many peer links logging in at once; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::info_span!("peer", %peer, node = tracing::field::Empty);
        let handler = PeerHandler {
            relay: Arc::clone(&relay),
            cluster: Arc::clone(&cluster),
            peer,
            node: None,
            on_login: None,
            span: span.clone(),
        };
        let conn = connection(
            Arc::clone(&config),
            stream,
            handler,
            startup,
            shutdown.clone(),
        );
        relay.tasks.spawn(conn.instrument(span));
    }
}

/// One peer link: logged in within the login grace time or closed, then served until it
/// ends or this node shuts down.
async fn connection(
    config: Arc<russh::server::Config>,
    stream: tokio::net::TcpStream,
    mut handler: PeerHandler,
    startup: tokio::sync::OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let deadline = Instant::now() + handler.relay.limits.login_grace;
    let (login_tx, login_rx) = oneshot::channel();
    handler.on_login = Some(login_tx);
    let started =
        tokio::time::timeout_at(deadline, russh::server::run_stream(config, stream, handler)).await;
    let mut session = match started {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => return tracing::debug!(error = %e, "peer handshake failed"),
        Err(_) => return tracing::info!("peer sent no SSH banner in time; closed"),
    };
    let handle = session.handle();
    tokio::select! {
        ended = &mut session => {
            return tracing::debug!(result = ?ended.err(), "peer closed before logging in");
        }
        node = login_rx => if node.is_err() {
            let _ = session.await;
            return;
        },
        _ = tokio::time::sleep_until(deadline) => {
            tracing::warn!("peer did not log in within the login grace time; closed");
            return close(&handle, session, "login grace time expired").await;
        }
        _ = shutdown.cancelled() => return close(&handle, session, "node shutting down").await,
    }
    drop(startup);
    tokio::select! {
        ended = &mut session => if let Err(e) = ended {
            tracing::debug!(error = %e, "peer link ended with an error");
        },
        _ = shutdown.cancelled() => close(&handle, session, "node shutting down").await,
    }
    tracing::info!("peer link closed");
}

async fn close(
    handle: &russh::server::Handle,
    session: russh::server::RunningSession<PeerHandler>,
    why: &str,
) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, why.into(), String::new())
            .await;
        let _ = session.await;
    })
    .await;
}

struct PeerHandler {
    relay: Arc<Relay>,
    cluster: Arc<Cluster>,
    peer: SocketAddr,
    /// The node logged in as, once it has.
    node: Option<String>,
    on_login: Option<oneshot::Sender<String>>,
    span: tracing::Span,
}

impl PeerHandler {
    /// Whether `key` is the key node `user` published.
    async fn published(&self, user: &str, key: &PublicKey) -> bool {
        if assist_proto::validate_name(user).is_err() {
            return false;
        }
        let name = user.to_owned();
        match self.cluster.call(move |d| d.node_named(&name)).await {
            Ok(Some(node)) => node.peer_key.key_data() == key.key_data(),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(parent: &self.span, error = %e, "cannot read the node table");
                false
            }
        }
    }

    fn refused(&self, user: &str) -> Auth {
        tracing::warn!(parent: &self.span, user, "peer login refused: not a published node key");
        self.relay.audit(
            "peer.auth",
            Some(user),
            self.peer.ip(),
            "refused: not a key in the node table".into(),
        );
        Auth::reject()
    }
}

impl russh::server::Handler for PeerHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.published(user, offer.public_key).await {
            true => Auth::Accept,
            false => self.refused(user),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.published(user, key.public_key).await {
            return Ok(self.refused(user));
        }
        self.span.record("node", user);
        tracing::info!(parent: &self.span, "peer node logged in");
        self.node = Some(user.to_owned());
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        if let (Some(tx), Some(node)) = (self.on_login.take(), &self.node) {
            let _ = tx.send(node.clone());
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(from) = self.node.clone() else {
            return Ok(());
        };
        let Some(route) = self.relay.routes.lookup(host_to_connect, port_to_connect) else {
            let reason = match self.relay.routes.connected_as(host_to_connect) {
                Some(serial) => {
                    format!("device {serial} is connected but offers no port {port_to_connect}")
                }
                None => format!(
                    "device {host_to_connect} is not connected (to node {} any more)",
                    self.cluster.node()
                ),
            };
            tracing::info!(parent: &self.span, %reason, "peer channel refused");
            self.relay
                .tasks
                .spawn(reply.reject(ChannelOpenFailure::Other {
                    code: CONNECT_FAILED,
                    reason,
                }));
            return Ok(());
        };
        let span = tracing::info_span!(parent: &self.span, "peer hop", serial = %route.serial, port = port_to_connect);
        let relay = Arc::clone(&self.relay);
        let originator = (originator_address.to_owned(), originator_port);
        let task = async move {
            let opened = tokio::time::timeout(
                relay.limits.open_timeout,
                route.handle.channel_open_forwarded_tcpip(
                    route.address.clone(),
                    port_to_connect,
                    originator.0,
                    originator.1,
                ),
            )
            .await;
            let device = match opened {
                Ok(Ok(device)) => device,
                Ok(Err(e)) => return refuse(reply, format!("device refused: {e}")).await,
                Err(_) => return refuse(reply, "device did not answer in time".into()).await,
            };
            reply.accept().await;
            if port_to_connect == NOTES_PORT {
                tracing::debug!(node = %from, "note relayed for a peer's hop");
            } else {
                tracing::info!(node = %from, "hop of a peer node started");
            }
            let moved = splice(
                End::new(channel),
                End::new(device),
                &CancellationToken::new(),
            )
            .await;
            crate::metrics::relayed(moved.to_device, moved.from_device);
            if port_to_connect != NOTES_PORT {
                tracing::info!(
                    bytes_to_device = moved.to_device,
                    bytes_from_device = moved.from_device,
                    "hop of a peer node ended"
                );
            }
        };
        self.relay.tasks.spawn(task.instrument(span));
        Ok(())
    }
}

async fn refuse(reply: ChannelOpenHandle, reason: String) {
    tracing::warn!(%reason, "hop of a peer node failed");
    reply
        .reject(ChannelOpenFailure::Other {
            code: CONNECT_FAILED,
            reason,
        })
        .await;
}
