//! This node's SSH links to the other nodes, as their client: one connection per node,
//! dialled when a hop first needs it and reused by the hops after, logged in as this node
//! with the node key. The node dialled must present the key it published; anything else
//! is refused before a byte of a hop goes through.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assist_proto::lock;
use russh::client::{self, Handle, Msg};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelId, ChannelOpenFailure};

use crate::store::cluster::Holder;

/// How long dialling a node and logging in to it may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// The links, by node name.
#[derive(Default)]
pub struct Links {
    links: tokio::sync::Mutex<HashMap<String, Arc<Link>>>,
}

/// One logged-in connection to another node.
pub struct Link {
    handle: Handle<PeerClient>,
    address: String,
    key: PublicKey,
    /// The description of the latest channel the node refused (russh reports the reason
    /// code to the opener and the words to the handler).
    refusal: Arc<Mutex<Option<String>>>,
}

/// Why a hop could not go through another node, in the engineer's words.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("node {node} ({address}) cannot be reached: {why}")]
    Unreachable {
        node: String,
        address: String,
        why: String,
    },
    #[error("node {node} refused: {why}")]
    Refused { node: String, why: String },
}

struct PeerClient {
    expected: PublicKey,
    refusal: Arc<Mutex<Option<String>>>,
}

impl client::Handler for PeerClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(presented.public_key().key_data() == self.expected.key_data())
    }

    async fn channel_open_failure(
        &mut self,
        _channel: ChannelId,
        _reason: ChannelOpenFailure,
        description: &str,
        _language: &str,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        *lock::mutex(&self.refusal) = Some(description.to_owned());
        Ok(())
    }
}

impl Links {
    /// The link to the node holding `holder`'s serial: the open one if it still goes to the
    /// published address and key, else a new one.
    pub async fn to(
        &self,
        me: &str,
        key: &Arc<PrivateKey>,
        holder: &Holder,
    ) -> Result<Arc<Link>, PeerError> {
        let mut links = self.links.lock().await;
        if let Some(link) = links.get(&holder.node)
            && !link.handle.is_closed()
            && link.address == holder.peer_address
            && link.key.key_data() == holder.peer_key.key_data()
        {
            return Ok(Arc::clone(link));
        }
        links.remove(&holder.node);
        let link = Arc::new(dial(me, key, holder).await?);
        links.insert(holder.node.clone(), Arc::clone(&link));
        Ok(link)
    }
}

async fn dial(me: &str, key: &Arc<PrivateKey>, holder: &Holder) -> Result<Link, PeerError> {
    let unreachable = |why: String| PeerError::Unreachable {
        node: holder.node.clone(),
        address: holder.peer_address.clone(),
        why,
    };
    let refusal = Arc::new(Mutex::new(None));
    let client = PeerClient {
        expected: holder.peer_key.clone(),
        refusal: Arc::clone(&refusal),
    };
    let login = async {
        let tcp = tokio::net::TcpStream::connect(holder.peer_address.as_str())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut handle = client::connect_stream(assist_proto::ssh::client_config(), tcp, client)
            .await
            .map_err(|e| match e {
                russh::Error::UnknownKey => unreachable(
                    "it presented a key other than the one it published in the node table".into(),
                ),
                e => unreachable(format!("SSH handshake: {e}")),
            })?;
        let signer = PrivateKeyWithHashAlg::new(Arc::clone(key), None);
        let accepted = handle
            .authenticate_publickey(me, signer)
            .await
            .map_err(|e| unreachable(format!("logging in: {e}")))?
            .success();
        if !accepted {
            return Err(PeerError::Refused {
                node: holder.node.clone(),
                why: format!("it does not know this node's key (node {me})"),
            });
        }
        Ok(handle)
    };
    let handle = tokio::time::timeout(DIAL_TIMEOUT, login)
        .await
        .map_err(|_| unreachable(format!("no login within {DIAL_TIMEOUT:?}")))??;
    tracing::info!(node = %holder.node, address = %holder.peer_address, "peer link up");
    Ok(Link {
        handle,
        address: holder.peer_address.clone(),
        key: holder.peer_key.clone(),
        refusal,
    })
}

impl Link {
    /// Opens a channel to `port` of device `serial` on the node at the other end, for an
    /// engineer at `source` (the device sees that address as the originator).
    pub async fn open(
        &self,
        node: &str,
        serial: &str,
        port: u32,
        source: SocketAddr,
    ) -> Result<russh::Channel<Msg>, PeerError> {
        let opened = self
            .handle
            .channel_open_direct_tcpip(
                serial,
                port,
                source.ip().to_string(),
                u32::from(source.port()),
            )
            .await;
        opened.map_err(|e| match e {
            russh::Error::ChannelOpenFailure(reason) => PeerError::Refused {
                node: node.to_owned(),
                why: lock::mutex(&self.refusal)
                    .take()
                    .unwrap_or_else(|| format!("{reason:?}")),
            },
            e => PeerError::Unreachable {
                node: node.to_owned(),
                address: self.address.clone(),
                why: e.to_string(),
            },
        })
    }
}
