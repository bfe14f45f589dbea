//! The running jump host's admin socket (`data_dir/admin.sock`, mode 0600 in the 0700 data
//! folder, so only the jump host's own user reaches it).
//!
//! A caller writes one JSON [`Request`] line and reads one JSON answer: `status` gets what
//! the jump host holds in memory (devices online, hops in progress, penalized sources, a
//! policy edit or certificate renewal that did not load, the API certificate served);
//! `reset_serial` forgets a device key *and* ends the device's live session at once, which
//! a change to the database alone could not do.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::api::live_cert::{CertState, LiveCert};
use crate::penalty::SourceState;
use crate::ssh::Relay;
use crate::ssh::live::LiveHop;
use crate::store;

/// File name of the socket inside `data_dir`.
pub const SOCKET_FILE: &str = "admin.sock";
/// How long a caller waits for the answer, and the socket for the request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request line read.
const MAX_REQUEST: u64 = 4096;

/// What a caller asks, one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    ResetSerial { serial: String },
}

/// The answer to [`Request::ResetSerial`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetAnswer {
    /// `None`: the serial had no binding, nothing changed.
    pub removed: Option<RemovedBinding>,
    /// Live sessions of the device that were ended.
    pub sessions_ended: usize,
    /// Why nothing could be done (a store failure), if so.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedBinding {
    pub fingerprint: String,
    pub was_expired: bool,
}

/// What `status` shows; `--json` prints it as is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    /// This jump host's node name (`[cluster] node`).
    #[serde(default)]
    pub node: String,
    pub uptime_secs: u64,
    pub devices: Vec<Device>,
    pub hops: Vec<LiveHop>,
    /// Sources with remembered login failures, blocked ones first.
    pub sources: Vec<SourceState>,
    /// Why the latest policy reload failed, while the folder stays broken (the last good
    /// policy is in force).
    #[serde(default)]
    pub policy_error: Option<String>,
    /// The registration API's certificate, with `[api_tls]`.
    #[serde(default)]
    pub api_tls: Option<CertState>,
    /// Hops in progress as the store has them, of every node sharing its database.
    #[serde(default)]
    pub cluster_hops: Vec<ClusterHop>,
    /// Why the store could not be read for `cluster_hops`.
    #[serde(default)]
    pub cluster_error: Option<String>,
    /// With `[cluster] peer_listen`: every node of the cluster and the devices it holds.
    #[serde(default)]
    pub cluster_nodes: Vec<crate::store::cluster::NodeDevices>,
}

/// A hop in progress on some node, as recorded in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterHop {
    pub node: String,
    pub engineer: String,
    pub source: String,
    pub serial: String,
    pub port: u32,
    /// Unix seconds.
    pub since: u64,
}

impl From<store::HopRecord> for ClusterHop {
    fn from(h: store::HopRecord) -> Self {
        ClusterHop {
            node: h.node,
            engineer: h.engineer,
            source: h.source,
            serial: h.serial,
            port: h.port,
            since: h
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub serial: String,
    /// Virtual ports the device forwards.
    pub ports: Vec<u32>,
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Binds the socket, replacing one a dead process left behind; refuses to take over the
/// socket of a jump host that still answers on it (two processes on one `data_dir`).
pub fn bind(data_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = socket_path(data_dir);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!(
                "another jump host is running with data_dir {} (it answers on {}); stop it first",
                data_dir.display(),
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    Ok(listener)
}

/// Answers requests until `shutdown` fires, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    relay: Arc<Relay>,
    api_cert: Option<Arc<LiveCert>>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    continue;
                }
            },
        };
        let (relay, api_cert) = (Arc::clone(&relay), api_cert.clone());
        tokio::spawn(async move {
            let answered = tokio::time::timeout(
                ANSWER_TIMEOUT,
                answer(stream, &relay, api_cert.as_deref(), started),
            )
            .await;
            match answered {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "admin request not answered"),
                Err(_) => tracing::debug!("admin request timed out"),
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn answer(
    stream: tokio::net::UnixStream,
    relay: &Arc<Relay>,
    api_cert: Option<&LiveCert>,
    started: Instant,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST))
        .read_line(&mut line)
        .await
        .context("reading the request")?;
    let body = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Status) => {
            let mut snapshot = snapshot(relay, api_cert, started.elapsed());
            match store::blocking(&relay.store, |s| s.open_hops()).await {
                Ok(hops) => snapshot.cluster_hops = hops.into_iter().map(Into::into).collect(),
                Err(e) => snapshot.cluster_error = Some(e.to_string()),
            }
            if let Some(cluster) = &relay.cluster {
                match cluster.call(|d| d.nodes()).await {
                    Ok(nodes) => snapshot.cluster_nodes = nodes,
                    Err(e) => snapshot.cluster_error = Some(e.to_string()),
                }
            }
            serde_json::to_vec(&snapshot)?
        }
        Ok(Request::ResetSerial { serial }) => serde_json::to_vec(&reset(relay, serial).await)?,
        Err(e) => serde_json::to_vec(&serde_json::json!({ "error": format!("bad request: {e}") }))?,
    };
    write.write_all(&body).await.context("writing the answer")?;
    Ok(())
}

/// Forgets the serial's key and ends its device's live session.
async fn reset(relay: &Arc<Relay>, serial: String) -> ResetAnswer {
    if let Err(e) = assist_proto::validate_name(&serial) {
        return ResetAnswer {
            removed: None,
            sessions_ended: 0,
            error: Some(format!("serial {serial:?} {e}")),
        };
    }
    let owned = serial.clone();
    let done = store::blocking(&relay.store, move |s| {
        store::reset_serial_audited(s, &owned)
    })
    .await;
    let removed = match done {
        Ok(removed) => removed,
        Err(e) => return reset_failed(e.to_string()),
    };
    // Even without a binding (swept already), a session still open on that serial goes.
    let sessions_ended = relay.revoke_device(
        &serial,
        "the jump host admin reset this serial; register again",
    );
    ResetAnswer {
        removed: removed.map(|b| RemovedBinding {
            fingerprint: b.fingerprint(),
            was_expired: b.is_expired(SystemTime::now()),
        }),
        sessions_ended,
        error: None,
    }
}

fn reset_failed(error: String) -> ResetAnswer {
    tracing::error!(%error, "serial reset failed");
    ResetAnswer {
        removed: None,
        sessions_ended: 0,
        error: Some(error),
    }
}

fn snapshot(relay: &Relay, api_cert: Option<&LiveCert>, uptime: Duration) -> Snapshot {
    let policy = relay.policy.current();
    Snapshot {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        node: relay.store.node().to_owned(),
        uptime_secs: uptime.as_secs(),
        devices: relay
            .routes
            .snapshot()
            .into_iter()
            .map(|(serial, ports)| Device { serial, ports })
            .collect(),
        hops: relay.hops.snapshot(),
        sources: relay.penalties.snapshot(policy.penalties(), Instant::now()),
        policy_error: relay.policy.last_reload_error(),
        api_tls: api_cert.map(LiveCert::state),
        cluster_hops: Vec::new(),
        cluster_error: None,
        cluster_nodes: Vec::new(),
    }
}

/// Why [`ask`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// No jump host listens on the socket (none runs with this `data_dir`).
    #[error(
        "the jump host does not answer on {} — is `assist-jumphost serve` running with this \
         config (and are you allowed to read its data_dir)?",
        path.display()
    )]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Sends `request` to the jump host running with `data_dir` and returns its answer.
pub fn ask<T: serde::de::DeserializeOwned>(
    data_dir: &Path,
    request: &Request,
) -> Result<T, AskError> {
    let path = socket_path(data_dir);
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| AskError::NotRunning {
            path: path.clone(),
            source,
        })?;
    let asked = (|| -> anyhow::Result<T> {
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .context("setting a read timeout")?;
        let mut line = serde_json::to_vec(request).context("encoding the request")?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .with_context(|| format!("writing to {}", path.display()))?;
        let mut body = Vec::new();
        stream
            .read_to_end(&mut body)
            .with_context(|| format!("reading the answer from {}", path.display()))?;
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "the answer on {} is not what was asked for: {}",
                path.display(),
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )
        })
    })();
    Ok(asked?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_process_cannot_take_a_live_socket_but_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let live = bind(dir.path()).unwrap();
        let err = bind(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another jump host"), "{err}");
        drop(live);
        // The file stays after the listener is gone (as after kill -9); it is replaced.
        assert!(socket_path(dir.path()).exists());
        let _again = bind(dir.path()).unwrap();
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
