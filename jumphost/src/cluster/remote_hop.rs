//! An engineer's hop to a serial whose tunnel is not on this node: find the node holding
//! it from its live lease, check the engineer here as for a local hop, then run the hop
//! through the link to that node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use russh::server::{ChannelOpenHandle, Msg};

use super::Cluster;
use crate::ssh::Relay;
use crate::ssh::auth::{self, Engineer};
use crate::ssh::handler::{PROHIBITED, not_connected, refuse_open};
use crate::ssh::hop::{CONNECT_FAILED, Hop, Target};

pub struct RemoteHop {
    pub relay: Arc<Relay>,
    pub cluster: Arc<Cluster>,
    pub engineer: Engineer,
    pub source: SocketAddr,
    /// The serial as the engineer's client named it.
    pub asked: String,
    pub port: u32,
    pub engineer_takes_notices: bool,
}

impl RemoteHop {
    pub async fn run(self, channel: russh::Channel<Msg>, reply: ChannelOpenHandle) {
        let what = format!("direct-tcpip to {}:{}", self.asked, self.port);
        let refuse = |reply, code, reason| {
            refuse_open(
                &self.relay,
                Some(&self.engineer.name),
                self.source,
                &what,
                reply,
                code,
                reason,
            );
        };
        let asked = self.asked.clone();
        let holder = match self.cluster.call(move |d| d.holder(&asked)).await {
            // A lease of this node's own without a session here is one it is giving up.
            Ok(Some(holder)) if holder.node != self.cluster.node() => holder,
            Ok(_) => return refuse(reply, CONNECT_FAILED, not_connected(&self.asked)),
            Err(e) => {
                tracing::error!(error = %e, "cannot look up which node holds the device");
                let reason = format!(
                    "device {} is not connected here, and the cluster's database cannot be \
                     read to find it elsewhere",
                    self.asked
                );
                return refuse(reply, CONNECT_FAILED, reason);
            }
        };
        // The same check, and in the same order, as for a device on this node.
        let policy = self.relay.policy.current();
        if let Err(reason) = auth::hop_allowed(
            &policy,
            &self.engineer,
            self.source.ip(),
            &holder.serial,
            SystemTime::now(),
        ) {
            return refuse(reply, PROHIBITED, reason);
        }
        let link = match self
            .cluster
            .links
            .to(self.cluster.node(), &self.cluster.key, &holder)
            .await
        {
            Ok(link) => link,
            Err(e) => {
                let reason = format!("device {} port {}: {e}", holder.serial, self.port);
                return refuse(reply, CONNECT_FAILED, reason);
            }
        };
        tracing::debug!(node = %holder.node, "hop goes through the node holding the device");
        let hop = Hop {
            relay: Arc::clone(&self.relay),
            engineer: self.engineer.clone(),
            source: self.source,
            serial: holder.serial,
            port: self.port,
            target: Target::Peer {
                node: holder.node,
                link,
            },
            engineer_takes_notices: self.engineer_takes_notices,
        };
        hop.run(channel, reply).await;
    }
}
