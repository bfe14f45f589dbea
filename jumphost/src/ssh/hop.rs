//! One engineer hop: open `forwarded-tcpip` on the device's session, answer the engineer's
//! `direct-tcpip` with the outcome, relay, and record the hop in the store.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use russh::ChannelOpenFailure;
use russh::server::{ChannelOpenHandle, Handle, Msg};

use super::Relay;
use super::routes::Route;
use super::splice::{End, Transferred, splice};
use crate::store::HopStart;

/// A hop in progress, as `assist-jumphost status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveHop {
    pub engineer: String,
    pub source: SocketAddr,
    pub serial: String,
    pub port: u32,
    /// Unix seconds.
    pub since: u64,
}

/// The hops in progress, by their id in the store (ids grow, so the map is oldest first).
#[derive(Debug, Default)]
pub struct LiveHops(Mutex<BTreeMap<i64, LiveHop>>);

impl LiveHops {
    fn insert(&self, id: i64, hop: LiveHop) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, hop);
    }

    fn remove(&self, id: i64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Every hop in progress, oldest first.
    pub fn snapshot(&self) -> Vec<LiveHop> {
        let hops = self.0.lock().unwrap_or_else(|p| p.into_inner());
        hops.values().cloned().collect()
    }
}

/// SSH reason code "connect failed".
const CONNECT_FAILED: u32 = 2;

pub struct Hop {
    pub relay: Arc<Relay>,
    pub engineer: String,
    pub source: SocketAddr,
    pub serial: String,
    pub port: u32,
    pub route: Route<Handle>,
}

impl Hop {
    /// Runs in its own task: the device may take a while to accept, and the engineer's
    /// session must keep serving other channels meanwhile.
    pub async fn run(self, engineer: russh::Channel<Msg>, reply: ChannelOpenHandle) {
        let opened = tokio::time::timeout(
            self.relay.limits.open_timeout,
            self.route.handle.channel_open_forwarded_tcpip(
                self.route.address.clone(),
                self.port,
                self.source.ip().to_string(),
                u32::from(self.source.port()),
            ),
        )
        .await;
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
        tracing::info!(engineer = %self.engineer, source = %self.source, "hop started");
        self.relay.hops.insert(
            hop_id,
            LiveHop {
                engineer: self.engineer.clone(),
                source: self.source,
                serial: self.serial.clone(),
                port: self.port,
                since: started_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            },
        );
        let moved = splice(End::new(engineer), End::new(device)).await;
        self.relay.hops.remove(hop_id);
        tracing::info!(
            bytes_to_device = moved.a_to_b,
            bytes_from_device = moved.b_to_a,
            secs = started_at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
            "hop ended"
        );
        self.record_end(hop_id, moved).await;
    }

    async fn refuse(&self, reply: ChannelOpenHandle, why: String) {
        let reason = format!("device {} port {}: {why}", self.serial, self.port);
        tracing::warn!(%reason, "hop failed");
        self.relay.audit(
            "ssh.hop",
            Some(&self.engineer),
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
            engineer: self.engineer.clone(),
            source: self.source,
            serial: self.serial.clone(),
            port: self.port,
            started_at,
        };
        let store = Arc::clone(&self.relay.store);
        match tokio::task::spawn_blocking(move || store.hop_started(&start)).await {
            Ok(Ok(id)) => Some(id),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not record hop start");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record hop start");
                None
            }
        }
    }

    async fn record_end(&self, id: i64, moved: Transferred) {
        let store = Arc::clone(&self.relay.store);
        let done = tokio::task::spawn_blocking(move || {
            store.hop_ended(id, SystemTime::now(), moved.a_to_b, moved.b_to_a)
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not record hop end"),
            Err(e) => tracing::error!(error = %e, "could not record hop end"),
        }
    }
}
