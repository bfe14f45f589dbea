//! One engineer hop: open `forwarded-tcpip` on the device's session, answer the engineer's
//! `direct-tcpip` with the outcome, relay until either side ends or the policy no longer
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
use crate::store::{self, HopStart};

/// SSH reason code "connect failed" (RFC 4254), sent with our own description.
pub(super) const CONNECT_FAILED: u32 = 2;

pub struct Hop {
    pub relay: Arc<Relay>,
    pub engineer: Engineer,
    pub source: SocketAddr,
    pub serial: String,
    pub port: u32,
    pub route: Route<Handle>,
    /// The engineer's client takes notices on the relayed channel ([`End::takes_notices`]).
    pub engineer_takes_notices: bool,
}

impl Hop {
    /// Runs in its own task: the device may take a while to accept, and the engineer's
    /// session must keep serving other channels meanwhile.
    pub async fn run(self, engineer: russh::Channel<Msg>, reply: ChannelOpenHandle) {
        // The note is polled first, so its channel open goes to the device before the hop's;
        // both then wait for the device together, and the note costs the hop no round trip.
        let ((), opened) = tokio::join!(
            biased;
            self.send_note(),
            tokio::time::timeout(
                self.relay.limits.open_timeout,
                self.route.handle.channel_open_forwarded_tcpip(
                    self.route.address.clone(),
                    self.port,
                    self.source.ip().to_string(),
                    u32::from(self.source.port()),
                ),
            )
        );
        let device = match opened {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return self.refuse(reply, format!("device refused: {e}")).await,
            Err(_) => {
                return self
                    .refuse(reply, "device did not answer in time".into())
                    .await;
            }
        };
        // The hop is on disk before the engineer learns the channel is open, so a crash at
        // any later point cannot lose a hop that carried a byte. No trail, no hop.
        let started_at = SystemTime::now();
        let Some(hop_id) = self.record_start(started_at).await else {
            let _ = device.close().await;
            return self
                .refuse(reply, "the audit trail cannot be written".into())
                .await;
        };
        reply.accept().await;
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
        let moved = splice(engineer, End::new(device), stop.token()).await;
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

    /// Tells the device who opens the channel that follows, if the device asked for notes:
    /// a `forwarded-tcpip` to [`NOTES_PORT`] from the same originator, one JSON line, closed.
    /// A note that cannot be delivered costs the customer the name, not the engineer the hop.
    async fn send_note(&self) {
        if self.port == ATTESTATION_PORT {
            return;
        }
        let Some(notes) = self.relay.routes.lookup(&self.serial, NOTES_PORT) else {
            return;
        };
        let line = self
            .engineer
            .note(&self.relay.policy.current(), self.source)
            .to_line();
        let send = async {
            let channel = notes
                .handle
                .channel_open_forwarded_tcpip(
                    notes.address.clone(),
                    NOTES_PORT,
                    self.source.ip().to_string(),
                    u32::from(self.source.port()),
                )
                .await?;
            channel.data(line.as_bytes()).await?;
            channel.eof().await?;
            channel.close().await
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
