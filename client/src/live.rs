//! The terminals engineers hold on the built-in target, as the customer's page sees them:
//! who, since when, what they print (live, read-only) and a way to stop each one at once.
//!
//! The built-in target opens a [`Terminal`] per PTY session and feeds it what the session
//! prints; the page lists [`Board::terminals`], follows one with [`Board::watch`] and ends it
//! with [`Board::stop`]. A terminal leaves the board when its handle drops.

use assist_proto::lock;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What a watcher that joins late is shown first: the end of the output so far.
pub const BACKLOG_BYTES: usize = 64 * 1024;
/// Chunks a slow watcher may fall behind before it misses some (it is told, and rejoins).
const FEED_DEPTH: usize = 256;

/// What a watcher of a terminal receives after the backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes the session printed, exactly as sent to the engineer.
    Output(Arc<[u8]>),
    /// The engineer's terminal changed size.
    Resize { cols: u16, rows: u16 },
}

/// One terminal, as the page lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TerminalView {
    pub id: u64,
    /// The engineer, as the jump host's note names them (or their address until it arrives).
    pub engineer: String,
    /// The engineer's address as the jump host reports it.
    pub from: String,
    /// RFC 3339.
    pub started: String,
    /// `None` for an interactive shell, else the command run on a PTY.
    pub command: Option<String>,
    pub cols: u16,
    pub rows: u16,
}

/// What [`Board::watch`] hands a new watcher.
pub struct Watch {
    pub cols: u16,
    pub rows: u16,
    /// The end of what was printed before the watcher joined (at most [`BACKLOG_BYTES`]).
    pub backlog: Vec<u8>,
    pub frames: broadcast::Receiver<Frame>,
}

struct Entry {
    view: TerminalView,
    backlog: VecDeque<u8>,
    feed: broadcast::Sender<Frame>,
    stop: CancellationToken,
}

/// The live terminals of the built-in target.
#[derive(Default)]
pub struct Board {
    next_id: AtomicU64,
    terminals: Mutex<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board")
            .field("terminals", &lock::mutex(&self.terminals).len())
            .finish()
    }
}

/// The built-in target's handle on one terminal on the board; it leaves the board on drop.
pub struct Terminal {
    board: Arc<Board>,
    id: u64,
    stop: CancellationToken,
}

impl Board {
    /// Puts a new terminal on the board. `engineer` and `from` are what the page shows.
    pub fn open(
        self: &Arc<Self>,
        engineer: &str,
        from: &str,
        command: Option<String>,
        cols: u16,
        rows: u16,
    ) -> Terminal {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let stop = CancellationToken::new();
        let view = TerminalView {
            id,
            engineer: engineer.to_owned(),
            from: from.to_owned(),
            started: crate::state::rfc3339(OffsetDateTime::now_utc()),
            command,
            cols,
            rows,
        };
        let (feed, _) = broadcast::channel(FEED_DEPTH);
        lock::mutex(&self.terminals).insert(
            id,
            Entry {
                view,
                backlog: VecDeque::new(),
                feed,
                stop: stop.clone(),
            },
        );
        Terminal {
            board: self.clone(),
            id,
            stop,
        }
    }

    /// The terminals open now, oldest first.
    pub fn terminals(&self) -> Vec<TerminalView> {
        lock::mutex(&self.terminals)
            .values()
            .map(|e| e.view.clone())
            .collect()
    }

    /// Follows terminal `id`: its size, the end of its output so far, then what follows.
    /// `None` when no such terminal is open.
    pub fn watch(&self, id: u64) -> Option<Watch> {
        let terminals = lock::mutex(&self.terminals);
        let e = terminals.get(&id)?;
        Some(Watch {
            cols: e.view.cols,
            rows: e.view.rows,
            backlog: e.backlog.iter().copied().collect(),
            frames: e.feed.subscribe(),
        })
    }

    /// Ends terminal `id` at once (the customer's Stop). False when no such terminal is open.
    pub fn stop(&self, id: u64) -> bool {
        match lock::mutex(&self.terminals).get(&id) {
            Some(e) => {
                e.stop.cancel();
                true
            }
            None => false,
        }
    }
}

impl Terminal {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Cancelled when the customer stops this terminal: the session must end at once.
    pub fn stopped(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// What the session printed: kept for late watchers and sent to current ones.
    pub fn output(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut terminals = lock::mutex(&self.board.terminals);
        let Some(e) = terminals.get_mut(&self.id) else {
            return;
        };
        let keep = bytes.len().min(BACKLOG_BYTES);
        let drop = (e.backlog.len() + keep).saturating_sub(BACKLOG_BYTES);
        e.backlog.drain(..drop);
        e.backlog.extend(&bytes[bytes.len() - keep..]);
        // No watcher is fine: the page is not always open.
        let _ = e.feed.send(Frame::Output(Arc::from(bytes)));
    }

    /// The engineer's window changed size.
    pub fn resize(&self, cols: u16, rows: u16) {
        let mut terminals = lock::mutex(&self.board.terminals);
        if let Some(e) = terminals.get_mut(&self.id) {
            e.view.cols = cols;
            e.view.rows = rows;
            let _ = e.feed.send(Frame::Resize { cols, rows });
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // Watchers see their feed close when the entry (and its sender) goes.
        lock::mutex(&self.board.terminals).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watcher_gets_the_backlog_then_what_follows_and_the_end() {
        let board = Arc::new(Board::default());
        let t = board.open("alice", "127.0.0.1:5000", None, 80, 24);
        t.output(b"before ");
        let mut w = board.watch(t.id()).unwrap();
        assert_eq!(w.backlog, b"before ");
        assert_eq!((w.cols, w.rows), (80, 24));
        t.output(b"after");
        t.resize(100, 30);
        assert_eq!(
            w.frames.recv().await.unwrap(),
            Frame::Output(Arc::from(&b"after"[..]))
        );
        assert_eq!(
            w.frames.recv().await.unwrap(),
            Frame::Resize {
                cols: 100,
                rows: 30
            }
        );
        assert_eq!(board.terminals()[0].cols, 100);
        drop(t);
        assert!(
            w.frames.recv().await.is_err(),
            "the feed closes with the terminal"
        );
        assert!(board.terminals().is_empty());
        assert!(board.watch(1).is_none());
    }

    #[test]
    fn the_backlog_keeps_only_the_end() {
        let board = Arc::new(Board::default());
        let t = board.open("alice", "x", None, 80, 24);
        t.output(&vec![b'a'; BACKLOG_BYTES]);
        t.output(b"tail");
        let w = board.watch(t.id()).unwrap();
        assert_eq!(w.backlog.len(), BACKLOG_BYTES);
        assert!(w.backlog.ends_with(b"atail"));
        t.output(&vec![b'b'; BACKLOG_BYTES + 10]);
        let w = board.watch(t.id()).unwrap();
        assert_eq!(w.backlog, vec![b'b'; BACKLOG_BYTES]);
    }

    #[test]
    fn stop_cancels_only_that_terminal() {
        let board = Arc::new(Board::default());
        let a = board.open("alice", "x", None, 80, 24);
        let b = board.open("bob", "y", Some("top".into()), 80, 24);
        assert!(board.stop(a.id()));
        assert!(a.stopped().is_cancelled());
        assert!(!b.stopped().is_cancelled());
        assert!(!board.stop(999));
        assert_eq!(board.terminals()[1].engineer, "bob");
    }
}
