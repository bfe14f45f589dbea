//! One engineer hop: open `forwarded-tcpip` on the device's session (or a channel to it
//! through the node holding it), answer the engineer's `direct-tcpip` with the outcome, relay until either side ends or the policy no longer
//! allows it, and record the hop in the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use assist_proto::limits::{ATTESTATION_PORT, NOTES_PORT};
use russh::ChannelOpenFailure;
use russh::server::{ChannelOpenHandle, Handle, Msg};

use super::Relay;
use super::auth::{self, Engineer};
use super::live::{HopEntry, LiveHop, Revoke};
use super::routes::Route;
use super::splice::{End, Transferred, splice};
use crate::cluster::peer_link::Link;
use crate::store::{self, HopStart};

/// SSH reason code "connect failed" (RFC 4254), sent with our own description.
pub(crate) const CONNECT_FAILED: u32 = 2;

pub struct Hop {
    pub relay: Arc<Relay>,
    pub engineer: Engineer,
    pub source: SocketAddr,
    pub serial: String,
    pub port: u32,
    pub target: Target,
    /// The engineer's client takes notices on the relayed channel ([`End::takes_notices`]).
    pub engineer_takes_notices: bool,
}

/// Where the device's tunnel is.
pub enum Target {
    /// On this node.
    Local(Route<Handle>),
    /// On another node of the cluster, reached over this node's link to it.
    Peer { node: String, link: Arc<Link> },
}

/// The device's end of the hop, as opened.
enum Device {
    Local(russh::Channel<Msg>),
    Peer(russh::Channel<russh::client::Msg>),
}

impl Device {
    async fn close(self) {
        let _ = match self {
            Device::Local(channel) => channel.close().await,
            Device::Peer(channel) => channel.close().await,
        };
    }
}

impl Hop {
    /// Runs in its own task: the device may take a while to accept, and the engineer's
    /// session must keep serving other channels meanwhile.
    pub async fn run(self, engineer: russh::Channel<Msg>, reply: ChannelOpenHandle) {
        let device = match self.open_device().await {
            Ok(device) => device,
            Err(why) => return self.refuse(reply, why).await,
        };
        // The hop is on disk before the engineer learns the channel is open, so a crash at
        // any later point cannot lose a hop that carried a byte. No trail, no hop.
        let started_at = SystemTime::now();
        let Some(hop_id) = self.record_start(started_at).await else {
            device.close().await;
            return self
                .refuse(reply, "the audit trail cannot be written".into())
                .await;
        };
        reply.accept().await;
        if let (Target::Peer { node, .. }, Some(cluster)) = (&self.target, &self.relay.cluster) {
            let (cluster, node) = (Arc::clone(cluster), node.clone());
            self.relay.tasks.spawn(async move {
                if let Err(e) = cluster.call(move |d| d.hop_reached(hop_id, &node)).await {
                    tracing::warn!(error = %e, "could not record the hop's device node");
                }
            });
        }
        crate::metrics::hop_started();
        tracing::info!(engineer = %self.engineer.name, source = %self.source, "hop started");
        let stop = Revoke::new();
        self.relay.hops.insert(
            hop_id,
            HopEntry {
                shown: LiveHop {
                    engineer: self.engineer.name.clone(),
                    source: self.source,
                    serial: self.serial.clone(),
                    port: self.port,
                    since: started_at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                },
                engineer: self.engineer.clone(),
                stop: Arc::clone(&stop),
            },
        );
        // A reload between the check at open and the entry above found no entry to stop.
        let policy = self.relay.policy.current();
        let now = SystemTime::now();
        if let Err(why) =
            auth::hop_allowed(&policy, &self.engineer, self.source.ip(), &self.serial, now)
        {
            stop.revoke(why);
        }
        let mut engineer = End::new(engineer);
        engineer.takes_notices = self.engineer_takes_notices;
        let moved = match device {
            Device::Local(device) => splice(engineer, End::new(device), stop.token()).await,
            Device::Peer(device) => splice(engineer, End::new(device), stop.token()).await,
        };
        self.relay.hops.remove(hop_id);
        if stop.token().is_cancelled() {
            let why = stop.revoked().await;
            tracing::warn!(engineer = %self.engineer.name, reason = %why, "hop closed: no longer allowed");
            self.relay.audit(
                "ssh.hop",
                Some(&self.engineer.name),
                self.source.ip(),
                format!("closed {}:{}: {why}", self.serial, self.port),
            );
        }
        tracing::info!(
            bytes_to_device = moved.to_device,
            bytes_from_device = moved.from_device,
            secs = started_at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
            "hop ended"
        );
        crate::metrics::relayed(moved.to_device, moved.from_device);
        self.record_end(hop_id, moved).await;
    }

    /// Opens the device's end: on the device's session here, or through the node holding
    /// it. The note is polled first, so its channel open goes to the device before the
    /// hop's; both then wait for the device together, and the note costs the hop no round
    /// trip.
    async fn open_device(&self) -> Result<Device, String> {
        let wait = self.relay.limits.open_timeout;
        let (ip, port) = (self.source.ip().to_string(), u32::from(self.source.port()));
        match &self.target {
            Target::Local(route) => {
                let open = route.handle.channel_open_forwarded_tcpip(
                    route.address.clone(),
                    self.port,
                    ip,
                    port,
                );
                let ((), opened) = tokio::join!(
                    biased;
                    self.send_note(),
                    tokio::time::timeout(wait, open)
                );
                match opened {
                    Ok(Ok(channel)) => Ok(Device::Local(channel)),
                    Ok(Err(e)) => Err(format!("device refused: {e}")),
                    Err(_) => Err("device did not answer in time".into()),
                }
            }
            Target::Peer { node, link } => {
                let open = link.open(node, &self.serial, self.port, self.source);
                let ((), opened) = tokio::join!(
                    biased;
                    self.send_note(),
                    tokio::time::timeout(wait, open)
                );
                match opened {
                    Ok(Ok(channel)) => Ok(Device::Peer(channel)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("node {node} did not answer in time")),
                }
            }
        }
    }

    /// Tells the device who opens the channel that follows, if the device asked for notes:
    /// a `forwarded-tcpip` to [`NOTES_PORT`] from the same originator, one JSON line, closed.
    /// Through another node, that node relays the note to the device like any channel (and
    /// refuses it if the device takes no notes). A note that cannot be delivered costs the
    /// customer the name, not the engineer the hop.
    async fn send_note(&self) {
        if self.port == ATTESTATION_PORT {
            return;
        }
        let line = self
            .engineer
            .note(&self.relay.policy.current(), self.source)
            .to_line();
        let (ip, port) = (self.source.ip().to_string(), u32::from(self.source.port()));
        let send = async {
            match &self.target {
                Target::Local(route) => {
                    let Some(notes) = self.relay.routes.lookup(&route.serial, NOTES_PORT) else {
                        return Ok(());
                    };
                    let channel = notes
                        .handle
                        .channel_open_forwarded_tcpip(notes.address.clone(), NOTES_PORT, ip, port)
                        .await
                        .map_err(|e| e.to_string())?;
                    write_note(&channel, &line).await
                }
                Target::Peer { node, link } => {
                    let channel = link
                        .open(node, &self.serial, NOTES_PORT, self.source)
                        .await
                        .map_err(|e| e.to_string())?;
                    write_note(&channel, &line).await
                }
            }
        };
        match tokio::time::timeout(self.relay.limits.open_timeout, send).await {
            Ok(Ok(())) => tracing::debug!("note sent to the device"),
            Ok(Err(e)) => tracing::warn!(error = %e, "note not delivered to the device"),
            Err(_) => tracing::warn!("note not delivered to the device in time"),
        }
    }

    async fn refuse(&self, reply: ChannelOpenHandle, why: String) {
        crate::metrics::hop_refused();
        let reason = format!("device {} port {}: {why}", self.serial, self.port);
        tracing::warn!(%reason, "hop failed");
        self.relay.audit(
            "ssh.hop",
            Some(&self.engineer.name),
            self.source.ip(),
            format!("failed: {reason}"),
        );
        reply
            .reject(ChannelOpenFailure::Other {
                code: CONNECT_FAILED,
                reason,
            })
            .await;
    }

    async fn record_start(&self, started_at: SystemTime) -> Option<i64> {
        let start = HopStart {
            engineer: self.engineer.name.clone(),
            source: self.source,
            serial: self.serial.clone(),
            port: self.port,
            started_at,
        };
        match store::blocking(&self.relay.store, move |s| s.hop_started(&start)).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(error = %e, "could not record hop start");
                None
            }
        }
    }

    async fn record_end(&self, id: i64, moved: Transferred) {
        let done = store::blocking(&self.relay.store, move |s| {
            s.hop_ended(id, SystemTime::now(), moved.to_device, moved.from_device)
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "could not record hop end");
        }
    }
}

/// Writes one note line on `channel` and closes it.
async fn write_note<S: super::splice::SessionMsg>(
    channel: &russh::Channel<S>,
    line: &str,
) -> Result<(), String> {
    let send = async {
        channel.data(line.as_bytes()).await?;
        channel.eof().await?;
        channel.close().await
    };
    send.await.map_err(|e: russh::Error| e.to_string())
}
