//! Approval per connection (`approve_connections = true`): each new engineer connection waits
//! here, listed on the customer's page, until the customer allows or denies it, the wait runs
//! out, or assistance ends.

use assist_proto::lock;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long a connection waits for the customer's answer before it is closed.
pub const APPROVAL_WAIT: Duration = Duration::from_secs(60);

/// How a connection ended when it was not allowed, in the customer's history.
pub const DENIED: &str = "denied by the customer";
/// ... and when nobody answered in time.
pub const NOT_ANSWERED: &str = "not answered by the customer within 60 s";

/// A connection waiting for the customer, as the page lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    /// The engineer's address as the jump host reports it (`ip:port`).
    pub from: String,
    /// The service asked for (`ssh`, `http`, a port).
    pub service: String,
    /// RFC 3339.
    pub asked: String,
    /// Seconds left before it is closed unanswered.
    pub seconds_left: u64,
    /// Who the engineer is, from the jump host's note, once it has arrived.
    pub engineer: Option<String>,
}

/// The customer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// What became of a connection that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    NotAnswered,
    /// Assistance ended (or the window changed) while it waited.
    Withdrawn,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error(
        "no connection {0} is waiting for an answer (it was answered already, timed out or \
         closed)"
    )]
    NotWaiting(u64),
}

struct Pending {
    from: String,
    service: String,
    asked: OffsetDateTime,
    deadline: tokio::time::Instant,
    answer: oneshot::Sender<Verdict>,
}

/// The connections waiting for the customer.
#[derive(Default)]
pub struct Approvals {
    required: AtomicBool,
    next_id: AtomicU64,
    pending: Mutex<BTreeMap<u64, Pending>>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("required", &self.required())
            .field("pending", &lock::mutex(&self.pending).len())
            .finish()
    }
}

/// Takes a request off the list however its wait ends (answered, timed out, cancelled, or
/// the relay's task dropped).
struct Unlist<'a> {
    approvals: &'a Approvals,
    id: u64,
}

impl Drop for Unlist<'_> {
    fn drop(&mut self) {
        lock::mutex(&self.approvals.pending).remove(&self.id);
    }
}

impl Approvals {
    /// Whether connections must be approved (`approve_connections`).
    pub fn required(&self) -> bool {
        self.required.load(Ordering::Relaxed)
    }

    pub fn require(&self, on: bool) {
        self.required.store(on, Ordering::Relaxed);
    }

    /// Lists the connection from `from` to `service` and waits for the customer's answer, at
    /// most [`APPROVAL_WAIT`], or until `cancel` (assistance ended).
    pub async fn ask(&self, from: &str, service: &str, cancel: &CancellationToken) -> Outcome {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (answer, verdict) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + APPROVAL_WAIT;
        lock::mutex(&self.pending).insert(
            id,
            Pending {
                from: from.to_owned(),
                service: service.to_owned(),
                asked: OffsetDateTime::now_utc(),
                deadline,
                answer,
            },
        );
        let _unlist = Unlist {
            approvals: self,
            id,
        };
        tracing::info!(
            id,
            from,
            service,
            "waiting for the customer to allow the connection"
        );
        tokio::select! {
            answered = tokio::time::timeout_at(deadline, verdict) => match answered {
                Ok(Ok(Verdict::Allow)) => Outcome::Allowed,
                Ok(Ok(Verdict::Deny)) => Outcome::Denied,
                // The sender went without an answer: `end_all`.
                Ok(Err(_)) => Outcome::Withdrawn,
                Err(_) => Outcome::NotAnswered,
            },
            () = cancel.cancelled() => Outcome::Withdrawn,
        }
    }

    /// The customer's answer to request `id`. A request answered, timed out or gone is an
    /// error and changes nothing.
    pub fn answer(&self, id: u64, verdict: Verdict) -> Result<(), AnswerError> {
        let pending = lock::mutex(&self.pending)
            .remove(&id)
            .ok_or(AnswerError::NotWaiting(id))?;
        // The waiter may have timed out a moment ago; it then closes as unanswered.
        pending
            .answer
            .send(verdict)
            .map_err(|_| AnswerError::NotWaiting(id))
    }

    /// The waiting requests, oldest first; `engineer` names the engineer at an address when
    /// the jump host's note for it has arrived.
    pub fn waiting(&self, engineer: impl Fn(&str) -> Option<String>) -> Vec<Request> {
        let now = tokio::time::Instant::now();
        lock::mutex(&self.pending)
            .iter()
            .map(|(id, p)| Request {
                id: *id,
                engineer: engineer(&p.from),
                from: p.from.clone(),
                service: p.service.clone(),
                asked: crate::state::rfc3339(p.asked),
                seconds_left: p.deadline.saturating_duration_since(now).as_secs(),
            })
            .collect()
    }

    /// Ends every wait without an answer (assistance disabled).
    pub fn end_all(&self) {
        lock::mutex(&self.pending).clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Waits until `approvals` lists `n` requests, letting the asking tasks run.
    async fn listed(approvals: &Approvals, n: usize) -> Vec<Request> {
        for _ in 0..1000 {
            let w = approvals.waiting(|_| None);
            if w.len() == n {
                return w;
            }
            tokio::task::yield_now().await;
        }
        panic!("{n} requests never listed");
    }

    #[tokio::test]
    async fn allow_and_deny_reach_their_own_connection_only() {
        let approvals = Arc::new(Approvals::default());
        let cancel = CancellationToken::new();
        let (a, c) = (approvals.clone(), cancel.clone());
        let first = tokio::spawn(async move { a.ask("127.0.0.1:5000", "ssh", &c).await });
        listed(&approvals, 1).await;
        let (a, c) = (approvals.clone(), cancel.clone());
        let second = tokio::spawn(async move { a.ask("127.0.0.1:5001", "http", &c).await });
        let w = listed(&approvals, 2).await;
        assert_eq!(
            (w[0].from.as_str(), w[0].service.as_str()),
            ("127.0.0.1:5000", "ssh")
        );
        assert_eq!(w[1].service, "http");
        assert!(w[0].seconds_left <= 60 && w[0].seconds_left >= 59);
        let names = approvals.waiting(|from| (from == "127.0.0.1:5001").then(|| "bob".into()));
        assert_eq!(names[0].engineer, None);
        assert_eq!(names[1].engineer.as_deref(), Some("bob"));

        approvals.answer(w[1].id, Verdict::Deny).unwrap();
        assert_eq!(second.await.unwrap(), Outcome::Denied);
        approvals.answer(w[0].id, Verdict::Allow).unwrap();
        assert_eq!(first.await.unwrap(), Outcome::Allowed);
        assert!(approvals.waiting(|_| None).is_empty());
    }

    #[tokio::test]
    async fn a_second_answer_or_an_unknown_id_is_refused_and_changes_nothing() {
        let approvals = Arc::new(Approvals::default());
        let cancel = CancellationToken::new();
        let a = approvals.clone();
        let waiting = tokio::spawn(async move { a.ask("127.0.0.1:5000", "ssh", &cancel).await });
        let id = listed(&approvals, 1).await[0].id;
        assert_eq!(
            approvals.answer(id + 1, Verdict::Allow),
            Err(AnswerError::NotWaiting(id + 1))
        );
        assert_eq!(listed(&approvals, 1).await[0].id, id, "still waiting");
        approvals.answer(id, Verdict::Deny).unwrap();
        assert_eq!(
            approvals.answer(id, Verdict::Allow),
            Err(AnswerError::NotWaiting(id))
        );
        assert_eq!(
            waiting.await.unwrap(),
            Outcome::Denied,
            "the first answer holds"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_closes_after_the_wait_and_leaves_the_list() {
        let approvals = Arc::new(Approvals::default());
        let cancel = CancellationToken::new();
        let a = approvals.clone();
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn(async move { a.ask("127.0.0.1:5000", "ssh", &cancel).await });
        let id = listed(&approvals, 1).await[0].id;
        assert_eq!(waiting.await.unwrap(), Outcome::NotAnswered);
        assert_eq!(started.elapsed(), APPROVAL_WAIT);
        assert!(approvals.waiting(|_| None).is_empty());
        assert_eq!(
            approvals.answer(id, Verdict::Allow),
            Err(AnswerError::NotWaiting(id))
        );
    }

    #[tokio::test]
    async fn ending_assistance_withdraws_every_waiting_connection() {
        let approvals = Arc::new(Approvals::default());
        let cancel = CancellationToken::new();
        let (a, c) = (approvals.clone(), cancel.clone());
        let by_cancel = tokio::spawn(async move { a.ask("127.0.0.1:1", "ssh", &c).await });
        listed(&approvals, 1).await;
        let a = approvals.clone();
        let other = CancellationToken::new();
        let by_end_all = tokio::spawn(async move { a.ask("127.0.0.1:2", "ssh", &other).await });
        listed(&approvals, 2).await;
        approvals.end_all();
        assert_eq!(by_end_all.await.unwrap(), Outcome::Withdrawn);
        cancel.cancel();
        assert_eq!(by_cancel.await.unwrap(), Outcome::Withdrawn);
        assert!(approvals.waiting(|_| None).is_empty());
    }
}
