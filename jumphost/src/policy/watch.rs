//! The policy in force and the watcher that reloads it on change or SIGHUP.
//!
//! The stamp is a fingerprint of the folder (names, sizes, mtimes; see `crate::reload`). A
//! bad edit is logged with the file and key, and the last good policy stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use assist_proto::lock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Policy;

/// The policy in force, swapped atomically by the watcher.
#[derive(Clone)]
pub struct PolicyHandle {
    tx: Arc<watch::Sender<Arc<Policy>>>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl PolicyHandle {
    pub fn new(policy: Policy) -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(Arc::new(policy))),
            last_error: Arc::default(),
        }
    }

    /// A snapshot: callers keep using it even if a reload happens meanwhile.
    pub fn current(&self) -> Arc<Policy> {
        self.tx.borrow().clone()
    }

    /// Puts `policy` in force.
    pub fn replace(&self, policy: Policy) {
        self.set_last_error(None);
        self.tx.send_replace(Arc::new(policy));
    }

    /// Why the latest reload failed, while the folder stays broken (`None` once a reload
    /// succeeds).
    pub fn last_reload_error(&self) -> Option<String> {
        lock::mutex(&self.last_error).clone()
    }

    fn set_last_error(&self, error: Option<String>) {
        *lock::mutex(&self.last_error) = error;
    }

    /// Notified on every reload, e.g. to drop sessions the new policy no longer allows.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Policy>> {
        self.tx.subscribe()
    }
}

/// Reloads on change (polling) and on SIGHUP; a bad edit is logged and the last good policy kept.
pub fn spawn_watcher(
    dir: PathBuf,
    handle: PolicyHandle,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let stamp_dir = dir.clone();
    crate::reload::spawn_on_change(
        "policy",
        move || fingerprint(&stamp_dir),
        move |trigger| {
            let (dir, handle) = (dir.clone(), handle.clone());
            async move { reload(&dir, &handle, trigger).await }
        },
        shutdown,
    )
}

async fn reload(dir: &Path, handle: &PolicyHandle, trigger: &'static str) {
    let load_dir = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || Policy::load_dir(&load_dir)).await {
        Ok(Ok(policy)) => {
            let files = policy.files().len();
            let engineers = policy.engineers().count();
            let serial_patterns = policy.serial_patterns().count();
            let warnings: Vec<String> = policy.warnings().iter().map(ToString::to_string).collect();
            // In force before it is logged, as for a failure below.
            handle.replace(policy);
            crate::metrics::policy_reload("loaded");
            tracing::info!(dir = %dir.display(), trigger, files, engineers, serial_patterns, "policy reloaded");
            for warning in warnings {
                tracing::warn!(dir = %dir.display(), "{warning}");
            }
        }
        Ok(Err(err)) => {
            // State first, then the log line: whoever reads the log can ask status at once.
            handle.set_last_error(Some(err.to_string()));
            crate::metrics::policy_reload("failed");
            tracing::error!(dir = %dir.display(), trigger, error = %err, "policy not reloaded; keeping the last good policy");
        }
        Err(err) => {
            tracing::error!(dir = %dir.display(), error = %err, "policy reload task failed; keeping the last good policy");
        }
    }
}

/// Name, size and mtime of every entry; any change in the folder changes it.
type Fingerprint = Result<Vec<(std::ffi::OsString, u64, Option<SystemTime>)>, std::io::ErrorKind>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.kind())? {
        let entry = entry.map_err(|e| e.kind())?;
        // Follows symlinks, as Kubernetes ConfigMaps swap a symlinked folder.
        let meta = std::fs::metadata(entry.path()).ok();
        entries.push((
            entry.file_name(),
            meta.as_ref().map_or(0, |m| m.len()),
            meta.and_then(|m| m.modified().ok()),
        ));
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GOOD: &str = "[serials]\nallow = [\"SN-*\"]\n";

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn good_edit_is_picked_up_and_bad_edit_keeps_the_last_good_policy() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, GOOD).unwrap();
        let handle = PolicyHandle::new(Policy::load_dir(dir.path()).unwrap());
        let mut updates = handle.subscribe();
        let shutdown = CancellationToken::new();
        let task = spawn_watcher(dir.path().to_path_buf(), handle.clone(), shutdown.clone());

        std::fs::write(&file, "[serials]\nallow = [\"SN-*\", \"LAB-*\"]\n").unwrap();
        wait_for("LAB-* allowed", || handle.current().serial_allowed("LAB-1")).await;
        updates.mark_unchanged();

        std::fs::write(&file, "[serials]\nallow = [\"[\"]\n").unwrap();
        wait_for("reload error", || handle.last_reload_error().is_some()).await;
        let err = handle.last_reload_error().unwrap();
        assert!(
            err.contains("p.toml") && err.contains("[serials] allow"),
            "{err}"
        );
        assert!(handle.current().serial_allowed("LAB-1"));
        assert!(
            !updates.has_changed().unwrap(),
            "a bad edit must not replace the policy"
        );

        std::fs::write(&file, "[serials]\nallow = [\"OTHER-*\"]\n").unwrap();
        wait_for("OTHER-* allowed", || {
            handle.current().serial_allowed("OTHER-1")
        })
        .await;
        assert!(!handle.current().serial_allowed("LAB-1"));
        assert_eq!(handle.last_reload_error(), None);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn fingerprint_sees_new_files_and_size_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = fingerprint(dir.path());
        std::fs::write(dir.path().join("a.toml"), "x").unwrap();
        let b = fingerprint(dir.path());
        assert_ne!(a, b);
        std::fs::write(dir.path().join("a.toml"), "xy").unwrap();
        assert_ne!(b, fingerprint(dir.path()));
        assert!(fingerprint(&dir.path().join("missing")).is_err());
    }
}
