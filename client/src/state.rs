//! State shared by the tunnel, the agent and the control API, and the status they report.

use crate::history::{Event, History};
use assist_proto::lock;
use assist_proto::note::HopNote;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How many sessions of a window the history keeps (the oldest finished ones go first).
const HISTORY_LIMIT: usize = 100;
/// Notes waiting for their connection; past this the oldest is dropped.
const PENDING_NOTES: usize = 64;
/// How long a note waits for its connection to open.
const NOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// The jump host (as client.toml names it) the tunnel holds, or is trying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jumphost: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    /// Relayed connections open right now.
    pub active: u64,
    /// Relayed connections since assistance was last enabled.
    pub total: u64,
    /// This window's relayed connections, oldest first (open ones have no `ended`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<SessionInfo>,
}

/// One relayed connection, as the owner's status and web page show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The service's name from `[services]` (`ssh`, `http`, a port), if the relay said.
    pub service: Option<String>,
    /// The engineer's address as the jump host reported it, if the relay said.
    pub originator: Option<String>,
    /// Who the engineer is, from the jump host's note: `alice (vendor key 'alice@laptop')`.
    /// Absent when the jump host sent none (an older jump host, or the note is late).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engineer: Option<String>,
    /// RFC 3339 UTC.
    pub since: String,
    pub ended: Option<String>,
    pub bytes_to_engineer: u64,
    pub bytes_from_engineer: u64,
}

impl SessionInfo {
    /// The session as a customer reads it:
    /// `alice (vendor key 'alice@laptop') from 203.0.113.5 → ssh, since 2026-…Z`.
    pub fn line(&self) -> String {
        let who = self.engineer.as_deref().unwrap_or("a support engineer");
        let from = self
            .originator
            .as_deref()
            .map(|o| o.rsplit_once(':').map_or(o, |(ip, _)| ip))
            .map(|ip| format!(" from {ip}"))
            .unwrap_or_default();
        let to = self
            .service
            .as_deref()
            .map(|s| format!(" → {s}"))
            .unwrap_or_default();
        format!("{who}{from}{to}, since {}", self.since)
    }
}

/// What the relay learns of a session after it opened.
#[derive(Debug, Clone, Default)]
struct SessionDetail {
    service: Option<String>,
    originator: Option<String>,
    engineer: Option<HopNote>,
    ended: Option<OffsetDateTime>,
    /// How it ended, for the history (`closed`, …).
    how: Option<String>,
}

/// Where a window's events go in the history file.
#[derive(Clone)]
pub struct WindowLog {
    pub history: Arc<History>,
    /// The window's id in the file.
    pub window: String,
}

impl std::fmt::Debug for WindowLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowLog")
            .field("window", &self.window)
            .finish()
    }
}

/// A session record, shared between the relay (which counts) and the history (which shows).
#[derive(Debug)]
struct SessionRecord {
    /// Its number in the history file, unique within the agent's run.
    number: u64,
    /// The window it was opened in, if the history is kept.
    log: Option<WindowLog>,
    since: OffsetDateTime,
    detail: Mutex<SessionDetail>,
    to_engineer: AtomicU64,
    from_engineer: AtomicU64,
}

impl SessionRecord {
    fn info(&self) -> SessionInfo {
        let SessionDetail {
            service,
            originator,
            engineer,
            ended,
            how: _,
        } = lock::mutex(&self.detail).clone();
        SessionInfo {
            service,
            originator,
            engineer: engineer.as_ref().map(HopNote::who),
            since: rfc3339(self.since),
            ended: ended.map(rfc3339),
            bytes_to_engineer: self.to_engineer.load(Ordering::Relaxed),
            bytes_from_engineer: self.from_engineer.load(Ordering::Relaxed),
        }
    }
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
    /// The customer's SSH server as the last enable found it, and who enforces what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_server: Option<crate::target::Server>,
}

/// Counters and tunnel state, updated from many tasks.
#[derive(Debug)]
pub struct Shared {
    /// Watched by enable, which waits for the tunnel to hold its forwards.
    tunnel: tokio::sync::watch::Sender<TunnelStatus>,
    active: AtomicU64,
    total: AtomicU64,
    sessions: Mutex<Vec<Arc<SessionRecord>>>,
    /// Why the relayed sessions are being closed, in the engineer's words; each relay
    /// sends it on its channel before closing.
    farewell: Mutex<Option<String>>,
    /// The jump host's notes that came before their connection: (originator, note, when).
    notes: Mutex<Vec<(String, HopNote, std::time::Instant)>>,
    /// The open window's place in the history, if it is kept.
    log: Mutex<Option<WindowLog>>,
    /// Numbers the connections in the history.
    numbered: AtomicU64,
    /// The built-in target's terminals, which the page shows live.
    live: Arc<crate::live::Board>,
    /// Tunnel attempts after a failure or a loss, since the agent started.
    reconnects: AtomicU64,
    /// Connections waiting for the customer's Allow (`approve_connections`).
    approvals: crate::approval::Approvals,
    /// The open window's built-in target, when `ssh = "builtin"`.
    builtin: Mutex<Option<Arc<crate::builtin::Window>>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            tunnel: tokio::sync::watch::Sender::new(TunnelStatus {
                state: TunnelState::Disabled,
                last_error: None,
                jumphost: None,
            }),
            reconnects: AtomicU64::new(0),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            sessions: Mutex::new(Vec::new()),
            farewell: Mutex::new(None),
            notes: Mutex::new(Vec::new()),
            log: Mutex::new(None),
            numbered: AtomicU64::new(0),
            live: Arc::default(),
            approvals: crate::approval::Approvals::default(),
            builtin: Mutex::new(None),
        }
    }
}

impl Shared {
    /// Sets the tunnel state; `last_error` is kept unless a new one is given or the tunnel
    /// connected (then the old error no longer describes anything).
    /// Off or failed for good, the tunnel is at no jump host.
    pub fn set_tunnel(&self, state: TunnelState, error: Option<String>) {
        self.tunnel.send_modify(|t| {
            t.state = state;
            if error.is_some() || state == TunnelState::Connected {
                t.last_error = error;
            }
            if matches!(state, TunnelState::Disabled | TunnelState::Failed) {
                t.jumphost = None;
            }
        });
    }

    /// Sets the tunnel state at `jumphost`, which it now holds or tries.
    pub fn set_tunnel_at(&self, state: TunnelState, jumphost: &str) {
        self.tunnel.send_modify(|t| {
            t.state = state;
            if state == TunnelState::Connected {
                t.last_error = None;
            }
            t.jumphost = Some(jumphost.to_owned());
        });
    }

    /// Counts a tunnel attempt after a failure or a loss.
    pub fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Tunnel attempts after a failure or a loss since the agent started.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub fn tunnel(&self) -> TunnelStatus {
        self.tunnel.borrow().clone()
    }

    /// Says why the relayed sessions are about to close, unless a reason was given already
    /// (the first one is the cause; what follows from it is not).
    pub fn set_farewell(&self, why: String) {
        lock::mutex(&self.farewell).get_or_insert(why);
    }

    /// Why the relayed sessions are closing, if said.
    pub fn farewell(&self) -> Option<String> {
        lock::mutex(&self.farewell).clone()
    }

    /// The built-in target's terminals, as the page sees them.
    /// The built-in target of the open window (set by enable, cleared when it ends).
    pub fn set_builtin(&self, window: Option<Arc<crate::builtin::Window>>) {
        *lock::mutex(&self.builtin) = window;
    }

    pub fn builtin(&self) -> Option<Arc<crate::builtin::Window>> {
        lock::mutex(&self.builtin).clone()
    }

    /// The name of the engineer the jump host's note names for the open connection from
    /// `originator`, or for one still waiting to open (a note usually comes first, and a
    /// connection waits while the customer is asked to approve it).
    pub fn engineer_from(&self, originator: &str) -> Option<String> {
        // Lock order: notes, then the sessions (as in `note_arrived`).
        let notes = lock::mutex(&self.notes);
        let open = lock::mutex(&self.sessions).iter().find_map(|record| {
            let d = lock::mutex(&record.detail);
            match d.ended.is_none() && d.originator.as_deref() == Some(originator) {
                true => d.engineer.as_ref().map(|note| note.engineer.clone()),
                false => None,
            }
        });
        open.or_else(|| {
            notes
                .iter()
                .find(|(from, _, at)| from == originator && at.elapsed() < NOTE_WAIT)
                .map(|(_, note, _)| note.engineer.clone())
        })
    }

    pub fn live(&self) -> &Arc<crate::live::Board> {
        &self.live
    }

    /// The connections waiting for the customer's answer.
    pub fn approvals(&self) -> &crate::approval::Approvals {
        &self.approvals
    }

    /// Follows the tunnel's state as it changes.
    pub fn watch_tunnel(&self) -> tokio::sync::watch::Receiver<TunnelStatus> {
        self.tunnel.subscribe()
    }

    /// Counts a relayed connection until the returned guard drops.
    /// Also records it in this window's history; the guard can add the service, the
    /// engineer's address and the bytes moved.
    pub fn connection_opened(&self) -> ConnectionGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        let record = Arc::new(SessionRecord {
            number: self.numbered.fetch_add(1, Ordering::Relaxed) + 1,
            log: lock::mutex(&self.log).clone(),
            since: OffsetDateTime::now_utc(),
            detail: Mutex::new(SessionDetail::default()),
            to_engineer: AtomicU64::new(0),
            from_engineer: AtomicU64::new(0),
        });
        let mut sessions = lock::mutex(&self.sessions);
        if sessions.len() >= HISTORY_LIMIT
            && let Some(i) = sessions.iter().position(|r| r.is_finished())
        {
            sessions.remove(i);
        }
        sessions.push(record.clone());
        drop(sessions);
        ConnectionGuard {
            shared: self,
            record,
        }
    }

    /// The jump host's note of who opens a connection from `originator` (`ip:port`): it
    /// names the open, still unnamed connection from there, or waits for it to open (the
    /// note and the connection travel on separate channels, either may come first).
    pub fn note_arrived(&self, originator: &str, note: HopNote) {
        // Held throughout, as `describe` holds it, so a connection cannot slip between the
        // look at the open connections and the note joining the waiting ones.
        let mut notes = lock::mutex(&self.notes);
        for record in lock::mutex(&self.sessions).iter() {
            let mut d = lock::mutex(&record.detail);
            if d.ended.is_none()
                && d.engineer.is_none()
                && d.originator.as_deref() == Some(originator)
            {
                if let Some(log) = &record.log {
                    log.history.record(&Event::ConnectionNamed {
                        window: log.window.clone(),
                        connection: record.number,
                        engineer: note.who(),
                    });
                }
                d.engineer = Some(note);
                return;
            }
        }
        notes.retain(|(_, _, at)| at.elapsed() < NOTE_WAIT);
        if notes.len() >= PENDING_NOTES {
            notes.remove(0);
        }
        notes.push((originator.to_owned(), note, std::time::Instant::now()));
    }

    pub fn connections(&self) -> Connections {
        let sessions = lock::mutex(&self.sessions)
            .iter()
            .map(|r| r.info())
            .collect();
        Connections {
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            sessions,
        }
    }

    /// A new window: no error from an earlier one, a fresh total (the active count drains
    /// by itself); its connections are recorded in `log`.
    pub fn start_window(&self, log: Option<WindowLog>) {
        *lock::mutex(&self.log) = log;
        self.tunnel.send_modify(|t| {
            t.state = TunnelState::Connecting;
            t.last_error = None;
            t.jumphost = None;
        });
        self.total.store(0, Ordering::Relaxed);
        *lock::mutex(&self.farewell) = None;
        lock::mutex(&self.sessions).retain(|r| !r.is_finished());
    }
}

impl SessionRecord {
    fn is_finished(&self) -> bool {
        lock::mutex(&self.detail).ended.is_some()
    }
}

/// Counts one relayed connection while it lives; dropping it marks the session ended.
pub struct ConnectionGuard<'a> {
    shared: &'a Shared,
    record: Arc<SessionRecord>,
}

impl ConnectionGuard<'_> {
    /// Names the service and the engineer's address (`ip:port`) for the history.
    /// A note of who it is that came first is taken now. The connection is in the history
    /// from here on.
    pub fn describe(&self, service: &str, originator: Option<&str>) {
        // Lock order: notes, then the record (as in `note_arrived`).
        let mut notes = lock::mutex(&self.shared.notes);
        let note = originator.and_then(|o| {
            notes.retain(|(_, _, at)| at.elapsed() < NOTE_WAIT);
            let i = notes.iter().position(|(from, _, _)| from == o)?;
            Some(notes.remove(i).1)
        });
        let mut d = lock::mutex(&self.record.detail);
        d.service = Some(service.to_owned());
        d.originator = originator.map(str::to_owned);
        drop(notes);
        if note.is_some() {
            d.engineer = note;
        }
        if let Some(log) = &self.record.log {
            log.history.record(&Event::ConnectionStarted {
                window: log.window.clone(),
                connection: self.record.number,
                at: rfc3339(self.record.since),
                service: d.service.clone(),
                source: d.originator.clone(),
                engineer: d.engineer.as_ref().map(HopNote::who),
            });
        }
    }

    /// Says how the connection ended, for the history.
    pub fn ended_how(&self, how: String) {
        lock::mutex(&self.record.detail).how = Some(how);
    }

    /// Adds bytes moved (to the engineer, from the engineer); may be called as they flow.
    pub fn add_bytes(&self, to_engineer: u64, from_engineer: u64) {
        self.record
            .to_engineer
            .fetch_add(to_engineer, Ordering::Relaxed);
        self.record
            .from_engineer
            .fetch_add(from_engineer, Ordering::Relaxed);
    }
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        let now = OffsetDateTime::now_utc();
        let how = {
            let mut d = lock::mutex(&self.record.detail);
            d.ended = Some(now);
            d.how.clone()
        };
        let was_last = self.shared.active.fetch_sub(1, Ordering::Relaxed) == 1;
        if let Some(log) = &self.record.log {
            log.history.record(&Event::ConnectionEnded {
                window: log.window.clone(),
                connection: self.record.number,
                at: rfc3339(now),
                bytes_to_engineer: self.record.to_engineer.load(Ordering::Relaxed),
                bytes_from_engineer: self.record.from_engineer.load(Ordering::Relaxed),
                how: how.unwrap_or_else(|| "closed".to_owned()),
            });
        }
        // Nothing is relayed any more: the buffers a transfer queued are free, and on a
        // device the memory they held should be the system's again, not the allocator's
        // nor russh's pool of received packets' buffers.
        if was_last {
            russh::packet_pool::release();
            let released = assist_heap::release_free_memory();
            tracing::debug!(
                released,
                "last connection closed; free heap memory returned"
            );
        }
    }
}

/// A time as status shows it: RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_recorded_with_detail_and_end_and_a_new_window_forgets_finished_ones() {
        let shared = Shared::default();
        let first = shared.connection_opened();
        first.describe("ssh", Some("127.0.0.1:5555"));
        first.add_bytes(10, 3);
        {
            let _second = shared.connection_opened();
        }
        let c = shared.connections();
        assert_eq!((c.active, c.total), (1, 2));
        assert_eq!(c.sessions.len(), 2);
        assert_eq!(c.sessions[0].service.as_deref(), Some("ssh"));
        assert_eq!(c.sessions[0].originator.as_deref(), Some("127.0.0.1:5555"));
        assert_eq!(
            (
                c.sessions[0].bytes_to_engineer,
                c.sessions[0].bytes_from_engineer
            ),
            (10, 3)
        );
        assert!(c.sessions[0].ended.is_none());
        assert!(c.sessions[1].ended.is_some());

        shared.start_window(None);
        let c = shared.connections();
        assert_eq!((c.active, c.total, c.sessions.len()), (1, 0, 1));
        drop(first);
        assert_eq!(shared.connections().active, 0);
    }

    fn note(name: &str) -> HopNote {
        HopNote {
            engineer: name.into(),
            via: assist_proto::note::NoteVia::Key {
                comment: Some(format!("{name}@laptop")),
                fingerprint: "SHA256:x".into(),
            },
            source: "127.0.0.1:7".into(),
        }
    }

    #[test]
    fn a_note_names_its_connection_whichever_comes_first_and_only_that_one() {
        let shared = Shared::default();
        // The connection first, then its note.
        let first = shared.connection_opened();
        first.describe("ssh", Some("127.0.0.1:7"));
        let other = shared.connection_opened();
        other.describe("ssh", Some("127.0.0.1:8"));
        shared.note_arrived("127.0.0.1:7", note("alice"));
        // The note first, then its connection.
        shared.note_arrived("127.0.0.1:9", note("bob"));
        let late = shared.connection_opened();
        late.describe("ssh", Some("127.0.0.1:9"));
        let who: Vec<_> = shared
            .connections()
            .sessions
            .into_iter()
            .map(|s| s.engineer)
            .collect();
        assert_eq!(
            who,
            [
                Some("alice (vendor key 'alice@laptop')".to_owned()),
                None,
                Some("bob (vendor key 'bob@laptop')".to_owned()),
            ]
        );
        assert_eq!(
            shared.connections().sessions[0].line(),
            format!(
                "alice (vendor key 'alice@laptop') from 127.0.0.1 → ssh, since {}",
                shared.connections().sessions[0].since
            )
        );
    }

    #[test]
    fn a_note_that_came_first_names_a_connection_still_waiting_to_open() {
        let shared = Shared::default();
        assert_eq!(shared.engineer_from("127.0.0.1:9"), None);
        shared.note_arrived("127.0.0.1:9", note("bob"));
        assert_eq!(shared.engineer_from("127.0.0.1:9").as_deref(), Some("bob"));
        assert_eq!(shared.engineer_from("127.0.0.1:8"), None);
        // Peeking leaves the note for the connection once it opens.
        let opened = shared.connection_opened();
        opened.describe("ssh", Some("127.0.0.1:9"));
        assert!(shared.connections().sessions[0].engineer.is_some());
        assert_eq!(
            shared.engineer_from("127.0.0.1:9").as_deref(),
            Some("bob"),
            "named by the open connection now"
        );
    }
}
