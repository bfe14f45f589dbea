//! Keeps this node's leases alive: every [`LEASE_RENEWAL`] it renews the lease of each
//! serial whose tunnel it holds. A serial that another node holds a live lease on now has
//! connected there since; this node's session of it is stale and is dropped, so the
//! device's routes are where the device is. At shutdown the leases are given up.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::ssh::Relay;
use crate::store::cluster::LEASE_RENEWAL;

/// Renews until `shutdown`, then releases every lease of this node.
pub async fn keep(relay: Arc<Relay>, cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(LEASE_RENEWAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let held = relay.routes.owners();
        let serials: Vec<String> = held.iter().map(|(serial, _)| serial.clone()).collect();
        let lost = match cluster.call(move |d| d.renew(&serials)).await {
            Ok(lost) => lost,
            Err(e) => {
                tracing::error!(error = %e, "renewing leases failed; retrying");
                continue;
            }
        };
        for serial in lost {
            let Some((_, session)) = held.iter().find(|(s, _)| *s == serial) else {
                continue;
            };
            drop_stale(&relay, &serial, *session);
        }
    }
    if let Err(e) = cluster.call(|d| d.release_all()).await {
        tracing::warn!(error = %e, "could not release the leases; they lapse");
    }
}

/// Drops this node's session of `serial`: its device is connected to another node now.
fn drop_stale(relay: &Arc<Relay>, serial: &str, session: crate::ssh::routes::SessionId) {
    let Some(handle) = relay.routes.evict(serial, session) else {
        return;
    };
    tracing::info!(
        serial,
        "device connected to another node; dropping its session here"
    );
    relay.audit(
        "cluster.moved",
        Some(serial),
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        "session dropped: the device connected to another node".into(),
    );
    relay.tasks.spawn(async move {
        let _ = handle
            .disconnect(
                russh::Disconnect::ByApplication,
                "this device connected to another node of the jump host cluster".into(),
                String::new(),
            )
            .await;
    });
}
