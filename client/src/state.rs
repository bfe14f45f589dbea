//! State shared by the tunnel, the agent and the control API, and the status they report.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the tunnel is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    /// Assistance is off; no session.
    Disabled,
    /// First connection of a window in progress.
    Connecting,
    /// Logged in with every forward granted.
    Connected,
    /// Lost or failed; waiting for the next attempt (see `last_error`).
    Reconnecting,
    /// Stopped for good (for example a changed jump host key); see `last_error`.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub state: TunnelState,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    /// Relayed connections open right now.
    pub active: u64,
    /// Relayed connections since assistance was last enabled.
    pub total: u64,
}

/// The answer of `GET /api/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub serial: String,
    pub device_fingerprint: String,
    pub enabled: bool,
    /// End of the window, RFC 3339 UTC.
    pub until: Option<String>,
    /// Seconds left in the window (handy for a countdown).
    pub remaining_secs: Option<u64>,
    pub tunnel: TunnelStatus,
    pub connections: Connections,
}

/// Counters and tunnel state, updated from many tasks.
#[derive(Debug)]
pub struct Shared {
    tunnel: Mutex<TunnelStatus>,
    active: AtomicU64,
    total: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            tunnel: Mutex::new(TunnelStatus {
                state: TunnelState::Disabled,
                last_error: None,
            }),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }
}

impl Shared {
    /// Sets the tunnel state; `last_error` is kept unless a new one is given or the tunnel
    /// connected (then the old error no longer describes anything).
    pub fn set_tunnel(&self, state: TunnelState, error: Option<String>) {
        if let Ok(mut t) = self.tunnel.lock() {
            t.state = state;
            if error.is_some() || state == TunnelState::Connected {
                t.last_error = error;
            }
        }
    }

    pub fn tunnel(&self) -> TunnelStatus {
        self.tunnel
            .lock()
            .map(|t| t.clone())
            .unwrap_or(TunnelStatus {
                state: TunnelState::Failed,
                last_error: Some("internal state poisoned".into()),
            })
    }

    /// Counts a relayed connection until the returned guard drops.
    pub fn connection_opened(&self) -> ConnectionGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self)
    }

    pub fn connections(&self) -> Connections {
        Connections {
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        }
    }

    /// A new window: no error from an earlier one, a fresh total (the active count drains
    /// by itself).
    pub fn start_window(&self) {
        if let Ok(mut t) = self.tunnel.lock() {
            t.state = TunnelState::Connecting;
            t.last_error = None;
        }
        self.total.store(0, Ordering::Relaxed);
    }
}

pub struct ConnectionGuard<'a>(&'a Shared);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
