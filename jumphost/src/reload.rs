//! The loop behind every "re-read on change or SIGHUP" of the jump host (policy folder, API
//! certificate files).
//!
//! Polling a stamp (sizes, mtimes) every second is simpler and more portable than inotify,
//! and works on bind-mounted or network folders where file events do not arrive.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the stamps are taken.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Calls `reload("change")` whenever `stamp()` differs from the last one taken, and
/// `reload("SIGHUP")` on every SIGHUP, until `shutdown`. The first stamp and the signal
/// handler are taken before this returns: a change right after start must not be mistaken
/// for the starting state, and a SIGHUP sent once the caller reports ready must not hit the
/// default action (terminate). A stamp is remembered whether its reload worked or not, so a
/// broken file is reported once per change rather than every second.
pub fn spawn_on_change<S, R, F>(
    what: &'static str,
    mut stamp: impl FnMut() -> S + Send + 'static,
    mut reload: R,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    S: PartialEq + Send + 'static,
    R: FnMut(&'static str) -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let mut seen = stamp();
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGHUP; the {what} reloads only on change");
            None
        }
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => false,
                Some(()) = async { match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                } } => true,
            };
            let now = stamp();
            if !forced && now == seen {
                continue;
            }
            seen = now;
            reload(if forced { "SIGHUP" } else { "change" }).await;
        }
    })
}
