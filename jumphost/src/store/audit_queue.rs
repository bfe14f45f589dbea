//! The audit trail's writer for events nobody waits on (logins, refusals, channels): a
//! bounded queue drained by one thread that commits up to [`AUDIT_BATCH`] events at a time.
//!
//! Every commit is synced to disk, so writing each refusal on its own would let a flood of
//! failed logins queue thousands of syncs in front of the store lock that device logins
//! read their binding under. Batched, a flood costs one sync per batch; past
//! [`AUDIT_QUEUE`] waiting events, further ones are counted rather than queued and the count
//! is written as one `audit.dropped` row, so the trail says that it is incomplete.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use assist_proto::limits::{AUDIT_BATCH, AUDIT_QUEUE};
use tokio::sync::{mpsc, oneshot};

use super::{AuditEvent, Store};

enum Item {
    Event(AuditEvent),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// Where events go; cheap to clone.
#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<Item>,
    dropped: Arc<AtomicU64>,
}

impl AuditQueue {
    /// Starts the writer thread for `store`; it ends when every clone of the queue is gone.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(&*store, rx, &counted))?;
        Ok(Self { tx, dropped })
    }

    /// Queues `event`; never waits. A full queue counts it as dropped.
    pub fn push(&self, event: AuditEvent) {
        if self.tx.try_send(Item::Event(event)).is_err() {
            // One warning per power of two, not one per event of the flood.
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "audit queue full; counting events instead of writing them"
                );
            }
        }
    }

    /// Waits until everything queued so far is written (at shutdown, and in tests).
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.tx.send(Item::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

fn write_loop(store: &dyn Store, mut rx: mpsc::Receiver<Item>, dropped: &AtomicU64) {
    let mut batch = Vec::with_capacity(AUDIT_BATCH);
    let mut waiting = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Event(event) => batch.push(event),
                Item::Flush(done) => waiting.push(done),
            }
            if batch.len() < AUDIT_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(AuditEvent {
                kind: "audit.dropped",
                who: None,
                source: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                outcome: format!("{lost} audit events not written: the queue was full"),
            });
        }
        if !batch.is_empty() {
            if let Err(e) = store.record_batch(&batch) {
                tracing::error!(error = %e, events = batch.len(), "could not record audit events");
            }
            batch.clear();
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn event(n: usize) -> AuditEvent {
        AuditEvent {
            kind: "ssh.auth",
            who: Some(format!("u{n}")),
            source: IpAddr::V4(Ipv4Addr::LOCALHOST),
            outcome: "refused: test".into(),
        }
    }

    #[tokio::test]
    async fn queued_events_are_all_written_in_order() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let queue = AuditQueue::start(store.clone()).unwrap();
        for n in 0..1000 {
            queue.push(event(n));
        }
        queue.flush().await;
        let rows = store.recent_audit(2000).unwrap();
        assert_eq!(rows.len(), 1000);
        assert_eq!(rows[0].who.as_deref(), Some("u999"));
        assert_eq!(rows[999].who.as_deref(), Some("u0"));
    }

    #[tokio::test]
    async fn a_full_queue_is_counted_and_said_in_the_trail() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        // Hold the store lock so the writer cannot drain while the queue fills.
        let queue = AuditQueue::start(store.clone()).unwrap();
        let held = store.hold_for_test();
        for n in 0..(AUDIT_QUEUE + AUDIT_BATCH + 100) {
            queue.push(event(n));
        }
        drop(held);
        queue.flush().await;
        let rows = store.recent_audit(AUDIT_QUEUE * 2).unwrap();
        let note = rows
            .iter()
            .find(|r| r.kind == "audit.dropped")
            .expect("a dropped row");
        assert!(
            note.outcome.contains("audit events not written"),
            "{}",
            note.outcome
        );
        assert!(rows.len() > AUDIT_QUEUE, "{}", rows.len());
    }
}
