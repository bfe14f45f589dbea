//! The customer's own record of assistance: every window (who enabled it, from where, start,
//! end, why it ended) and every relayed connection in it (engineer, source, service, start,
//! end, bytes each way, how it ended), kept in `data_dir/history.jsonl`.
//!
//! The file is append-only JSON Lines: each event is one line written with one `write` on a
//! descriptor opened with `O_APPEND` and synced before the call returns, so a crash loses at
//! most the line being written, and a reader skips a torn last line. At start the agent ends
//! what a crash left open (saying so) and drops windows older than `history_keep`, by writing
//! the kept lines to a new file renamed over the old one.

use assist_proto::lock;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::state::rfc3339;

/// Why a window or a connection has no end of its own in the file.
const CUT_SHORT: &str = "the agent stopped without closing it (crash or kill)";

/// One line of the history file. Times are RFC 3339 UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    WindowStarted {
        window: String,
        at: String,
        until: String,
        /// `web page` or `command line`.
        by: String,
        /// The local account that asked, when the agent could tell.
        user: Option<String>,
    },
    WindowExtended {
        window: String,
        at: String,
        until: String,
        by: String,
        user: Option<String>,
    },
    WindowEnded {
        window: String,
        at: String,
        reason: String,
    },
    ConnectionStarted {
        window: String,
        connection: u64,
        at: String,
        service: Option<String>,
        source: Option<String>,
        engineer: Option<String>,
    },
    /// The jump host's note of who it is came after the connection opened.
    ConnectionNamed {
        window: String,
        connection: u64,
        engineer: String,
    },
    ConnectionEnded {
        window: String,
        connection: u64,
        at: String,
        bytes_to_engineer: u64,
        bytes_from_engineer: u64,
        how: String,
    },
}

impl Event {
    fn window(&self) -> &str {
        match self {
            Event::WindowStarted { window, .. }
            | Event::WindowExtended { window, .. }
            | Event::WindowEnded { window, .. }
            | Event::ConnectionStarted { window, .. }
            | Event::ConnectionNamed { window, .. }
            | Event::ConnectionEnded { window, .. } => window,
        }
    }
}

/// Who enabled or extended a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `web page` or `command line`.
    pub by: &'static str,
    pub user: Option<String>,
}

impl Origin {
    pub fn page(user: Option<String>) -> Self {
        Self {
            by: "web page",
            user,
        }
    }

    pub fn command_line(user: Option<String>) -> Self {
        Self {
            by: "command line",
            user,
        }
    }
}

/// A window as `assist-client history` and the page show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRecord {
    pub id: String,
    pub by: String,
    pub user: Option<String>,
    pub start: String,
    /// The last end it was given (by enable or the last extend).
    pub until: String,
    pub extended: u32,
    /// `None`: open now.
    pub end: Option<String>,
    pub reason: Option<String>,
    pub connections: Vec<ConnectionRecord>,
}

/// A relayed connection of a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub engineer: Option<String>,
    pub source: Option<String>,
    pub service: Option<String>,
    pub start: String,
    /// `None`: open now.
    pub end: Option<String>,
    pub bytes_to_engineer: u64,
    pub bytes_from_engineer: u64,
    pub how: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} the history file {}: {source}", path.display())]
pub struct HistoryError {
    action: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

/// The history file, appended to by the agent.
pub struct History {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl History {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: Mutex::new(None),
        }
    }

    /// Appends `event` and syncs it. A history that cannot be written is logged, never a
    /// reason to refuse assistance.
    pub fn record(&self, event: &Event) {
        if let Err(e) = self.append(event) {
            tracing::error!("{e}");
        }
    }

    fn append(&self, event: &Event) -> Result<(), HistoryError> {
        let err = |action, source| HistoryError {
            action,
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(event).map_err(|e| err("encode for", e.into()))?;
        line.push(b'\n');
        let mut file = lock::mutex(&self.file);
        if file.is_none() {
            *file = Some(open_append(&self.path).map_err(|e| err("open", e))?);
        }
        let Some(f) = file.as_mut() else {
            return Ok(());
        };
        let written = f.write_all(&line).and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Opened again next time: the descriptor may be what failed.
            *file = None;
            return Err(err("append to", e));
        }
        Ok(())
    }

    /// At start: ends what an earlier run left open and forgets windows that ended more than
    /// `keep` ago. Runs before anything is appended.
    pub fn recover(
        &self,
        keep: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<(), HistoryError> {
        let events = read_events(&self.path)?;
        if events.is_empty() {
            return Ok(());
        }
        let windows = fold(&events);
        let cutoff = now - keep;
        let old: Vec<&str> = windows
            .iter()
            .filter(|w| {
                w.end
                    .as_deref()
                    .and_then(parse_time)
                    .is_some_and(|end| end < cutoff)
            })
            .map(|w| w.id.as_str())
            .collect();
        let mut kept: Vec<Event> = events
            .iter()
            .filter(|e| !old.contains(&e.window()))
            .cloned()
            .collect();
        let at = rfc3339(now);
        for w in windows.iter().filter(|w| !old.contains(&w.id.as_str())) {
            for (n, c) in w.connections.iter().enumerate() {
                if c.end.is_none() {
                    kept.push(Event::ConnectionEnded {
                        window: w.id.clone(),
                        connection: connection_number(&events, &w.id, n),
                        at: at.clone(),
                        bytes_to_engineer: c.bytes_to_engineer,
                        bytes_from_engineer: c.bytes_from_engineer,
                        how: CUT_SHORT.to_owned(),
                    });
                }
            }
            if w.end.is_none() {
                kept.push(Event::WindowEnded {
                    window: w.id.clone(),
                    at: at.clone(),
                    reason: CUT_SHORT.to_owned(),
                });
            }
        }
        if kept == events {
            return Ok(());
        }
        let mut text = Vec::new();
        for e in &kept {
            if let Ok(mut line) = serde_json::to_vec(e) {
                line.push(b'\n');
                text.extend_from_slice(&line);
            }
        }
        assist_proto::private_file::write_private(
            &self.path,
            &text,
            assist_proto::private_file::Existing::Replace,
        )
        .map_err(|e| HistoryError {
            action: "rewrite",
            path: self.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// The `connection` number of the `n`th connection of `window` in the file.
fn connection_number(events: &[Event], window: &str, n: usize) -> u64 {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ConnectionStarted {
                window: w,
                connection,
                ..
            } if w == window => Some(*connection),
            _ => None,
        })
        .nth(n)
        .unwrap_or_default()
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Every event in the file, skipping lines that do not parse (a line torn by a crash).
pub fn read_events(path: &Path) -> Result<Vec<Event>, HistoryError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HistoryError {
                action: "read",
                path: path.to_owned(),
                source,
            });
        }
    };
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| match serde_json::from_slice(line) {
            Ok(event) => Some(event),
            Err(e) => {
                tracing::warn!("skipping a history line that cannot be read: {e}");
                None
            }
        })
        .collect())
}

/// The events folded into windows, oldest first.
pub fn fold(events: &[Event]) -> Vec<WindowRecord> {
    let mut windows: Vec<WindowRecord> = Vec::new();
    // (window, connection number) → index in that window's connections
    let mut connections: Vec<(String, u64, usize)> = Vec::new();
    for e in events {
        let Some(i) = windows.iter().position(|w| w.id == e.window()) else {
            if let Event::WindowStarted {
                window,
                at,
                until,
                by,
                user,
            } = e
            {
                windows.push(WindowRecord {
                    id: window.clone(),
                    by: by.clone(),
                    user: user.clone(),
                    start: at.clone(),
                    until: until.clone(),
                    extended: 0,
                    end: None,
                    reason: None,
                    connections: Vec::new(),
                });
            }
            continue;
        };
        let w = &mut windows[i];
        let find = |connections: &[(String, u64, usize)], n: u64| {
            connections
                .iter()
                .find(|(id, c, _)| *id == w.id && *c == n)
                .map(|(_, _, at)| *at)
        };
        match e {
            Event::WindowStarted { .. } => {}
            Event::WindowExtended { until, .. } => {
                w.until = until.clone();
                w.extended += 1;
            }
            Event::WindowEnded { at, reason, .. } => {
                w.end = Some(at.clone());
                w.reason = Some(reason.clone());
            }
            Event::ConnectionStarted {
                connection,
                at,
                service,
                source,
                engineer,
                ..
            } => {
                connections.push((w.id.clone(), *connection, w.connections.len()));
                w.connections.push(ConnectionRecord {
                    engineer: engineer.clone(),
                    source: source.clone(),
                    service: service.clone(),
                    start: at.clone(),
                    end: None,
                    bytes_to_engineer: 0,
                    bytes_from_engineer: 0,
                    how: None,
                });
            }
            Event::ConnectionNamed {
                connection,
                engineer,
                ..
            } => {
                if let Some(c) = find(&connections, *connection) {
                    w.connections[c].engineer = Some(engineer.clone());
                }
            }
            Event::ConnectionEnded {
                connection,
                at,
                bytes_to_engineer,
                bytes_from_engineer,
                how,
                ..
            } => {
                if let Some(c) = find(&connections, *connection) {
                    let c = &mut w.connections[c];
                    c.end = Some(at.clone());
                    c.bytes_to_engineer = *bytes_to_engineer;
                    c.bytes_from_engineer = *bytes_from_engineer;
                    c.how = Some(how.clone());
                }
            }
        }
    }
    windows
}

/// Human lines for `assist-client history`, newest window first.
pub fn print(windows: &[WindowRecord]) -> String {
    let mut out = String::new();
    if windows.is_empty() {
        out.push_str("no assistance windows recorded\n");
    }
    for w in windows.iter().rev() {
        let who = match &w.user {
            Some(user) => format!("{} by {user}", w.by),
            None => w.by.clone(),
        };
        let end = match (&w.end, &w.reason) {
            (Some(end), Some(reason)) => format!("until {end} ({reason})"),
            _ => format!("open, until {}", w.until),
        };
        let extended = match w.extended {
            0 => String::new(),
            n => format!(", extended {n}×"),
        };
        out.push_str(&format!(
            "window {} enabled on the {who}, {end}{extended}\n",
            w.start
        ));
        if w.connections.is_empty() {
            out.push_str("  no connections\n");
        }
        for c in &w.connections {
            let info = crate::state::SessionInfo {
                service: c.service.clone(),
                originator: c.source.clone(),
                engineer: c.engineer.clone(),
                since: c.start.clone(),
                ended: c.end.clone(),
                bytes_to_engineer: c.bytes_to_engineer,
                bytes_from_engineer: c.bytes_from_engineer,
            };
            let end = match (&c.end, &c.how) {
                (Some(end), Some(how)) => format!(" until {end} ({how})"),
                _ => " (open)".to_owned(),
            };
            out.push_str(&format!(
                "  {}{end}, {} bytes to the engineer, {} from\n",
                info.line(),
                c.bytes_to_engineer,
                c.bytes_from_engineer
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(window: &str, at: &str) -> Event {
        Event::WindowStarted {
            window: window.into(),
            at: at.into(),
            until: at.into(),
            by: "web page".into(),
            user: Some("anna".into()),
        }
    }

    #[test]
    fn events_fold_into_windows_with_their_connections() {
        let events = vec![
            started("w1", "2026-01-01T10:00:00Z"),
            Event::ConnectionStarted {
                window: "w1".into(),
                connection: 4,
                at: "2026-01-01T10:01:00Z".into(),
                service: Some("ssh".into()),
                source: Some("127.0.0.1:5000".into()),
                engineer: None,
            },
            Event::ConnectionNamed {
                window: "w1".into(),
                connection: 4,
                engineer: "alice (vendor key 'a')".into(),
            },
            Event::WindowExtended {
                window: "w1".into(),
                at: "2026-01-01T10:02:00Z".into(),
                until: "2026-01-01T12:02:00Z".into(),
                by: "web page".into(),
                user: None,
            },
            Event::ConnectionEnded {
                window: "w1".into(),
                connection: 4,
                at: "2026-01-01T10:03:00Z".into(),
                bytes_to_engineer: 7,
                bytes_from_engineer: 3,
                how: "closed".into(),
            },
            Event::WindowEnded {
                window: "w1".into(),
                at: "2026-01-01T10:04:00Z".into(),
                reason: "stopped".into(),
            },
        ];
        let w = fold(&events);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].until, "2026-01-01T12:02:00Z");
        assert_eq!(w[0].extended, 1);
        assert_eq!(w[0].reason.as_deref(), Some("stopped"));
        let c = &w[0].connections[0];
        assert_eq!(c.engineer.as_deref(), Some("alice (vendor key 'a')"));
        assert_eq!((c.bytes_to_engineer, c.bytes_from_engineer), (7, 3));
        assert_eq!(c.how.as_deref(), Some("closed"));
        let text = print(&w);
        assert!(text.contains("enabled on the web page by anna"), "{text}");
        assert!(
            text.contains("alice (vendor key 'a') from 127.0.0.1 → ssh"),
            "{text}"
        );
    }

    #[test]
    fn a_torn_line_is_skipped_what_a_crash_left_open_is_ended_and_old_windows_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let history = History::new(path.clone());
        history.record(&started("old", "2025-01-01T10:00:00Z"));
        history.record(&Event::WindowEnded {
            window: "old".into(),
            at: "2025-01-01T11:00:00Z".into(),
            reason: "window ended".into(),
        });
        history.record(&started("cut", "2026-01-01T10:00:00Z"));
        history.record(&Event::ConnectionStarted {
            window: "cut".into(),
            connection: 1,
            at: "2026-01-01T10:01:00Z".into(),
            service: Some("ssh".into()),
            source: None,
            engineer: None,
        });
        drop(history);
        // A crash in the middle of a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"event\":\"window_ended\",\"wind").unwrap();
        drop(f);

        let now = OffsetDateTime::parse("2026-01-02T00:00:00Z", &Rfc3339).unwrap();
        let history = History::new(path.clone());
        history
            .recover(std::time::Duration::from_secs(90 * 24 * 3600), now)
            .unwrap();
        let w = fold(&read_events(&path).unwrap());
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].id, "cut");
        assert_eq!(w[0].reason.as_deref(), Some(CUT_SHORT));
        assert_eq!(w[0].connections[0].how.as_deref(), Some(CUT_SHORT));
        // Appending goes on after the rewrite.
        history.record(&started("next", "2026-01-02T00:00:01Z"));
        assert_eq!(fold(&read_events(&path).unwrap()).len(), 2);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
