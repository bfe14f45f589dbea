//! The jump host's own ed25519 host key: created on first start in `data_dir` (mode 0600,
//! OpenSSH format) and reused afterwards, so engineers' known_hosts entries stay valid. In
//! a cluster the nodes share one, through the database.

use std::path::Path;

use anyhow::Context;
use assist_proto::private_file::{self, Existing};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

/// File name of the host key inside `data_dir`.
pub const HOST_KEY_FILE: &str = "host_key";

/// Loads `data_dir/host_key`, creating it if it does not exist yet.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<PrivateKey> {
    load_or_create_key(&data_dir.join(HOST_KEY_FILE), "host key")
}

/// Loads the ed25519 key in `path` (its role in messages: `what`), creating it if it does
/// not exist yet.
pub fn load_or_create_key(path: &Path, what: &str) -> anyhow::Result<PrivateKey> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {what} {}", path.display()))?;
        return PrivateKey::from_openssh(text)
            .with_context(|| format!("parsing {what} {}", path.display()));
    }
    let key = assist_proto::keys::generate_ed25519();
    let text = key
        .to_openssh(LineEnding::LF)
        .with_context(|| format!("encoding the new {what}"))?;
    // Keep: refuses to overwrite a key that appeared meanwhile.
    private_file::write_private(path, text.as_bytes(), Existing::Keep)
        .with_context(|| format!("writing {what} {}", path.display()))?;
    tracing::info!(path = %path.display(), "created a new {what}");
    Ok(key)
}

/// The host key of a node in a cluster: the one the nodes share through the database
/// (`share` publishes a candidate and returns the key in force), written to
/// `data_dir/host_key` on the node's first start. A node that already has a different key
/// keeps it, since its agents and engineers pinned it, and says so.
pub fn load_or_share(
    data_dir: &Path,
    share: impl FnOnce(&str) -> anyhow::Result<zeroize::Zeroizing<String>>,
) -> anyhow::Result<PrivateKey> {
    let path = data_dir.join(HOST_KEY_FILE);
    let local = path
        .exists()
        .then(|| load_or_create(data_dir))
        .transpose()?;
    let candidate = match &local {
        Some(key) => key.clone(),
        None => assist_proto::keys::generate_ed25519(),
    };
    let text = candidate
        .to_openssh(LineEnding::LF)
        .context("encoding the host key")?;
    let shared = share(&text)?;
    let shared = PrivateKey::from_openssh(shared.as_bytes())
        .context("parsing the cluster's host key from the database")?;
    match local {
        Some(key) if key.public_key().key_data() != shared.public_key().key_data() => {
            let warning = format!(
                "{} ({}) is not the host key the cluster's other nodes share ({}): agents and \
                 engineers that move between nodes will refuse one of them as a changed key; \
                 remove the file to adopt the shared one",
                path.display(),
                fingerprint(&key),
                fingerprint(&shared)
            );
            eprintln!("WARNING: {warning}");
            tracing::warn!("{warning}");
            Ok(key)
        }
        Some(key) => Ok(key),
        None => {
            let text = shared
                .to_openssh(LineEnding::LF)
                .context("encoding the host key")?;
            private_file::write_private(&path, text.as_bytes(), Existing::Keep)
                .with_context(|| format!("writing host key {}", path.display()))?;
            tracing::info!(path = %path.display(), "took the cluster's shared host key");
            Ok(shared)
        }
    }
}

/// The `SHA256:…` fingerprint printed at start.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(fingerprint(&first), fingerprint(&second));
        assert!(fingerprint(&first).starts_with("SHA256:"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(HOST_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_node_adopts_the_shared_key_once_and_keeps_its_own_if_it_has_one() {
        let first = tempfile::tempdir().unwrap();
        let published = std::sync::Mutex::new(None::<String>);
        let share = |candidate: &str| {
            let mut p = published.lock().unwrap();
            let text = p.get_or_insert_with(|| candidate.to_owned()).clone();
            Ok(zeroize::Zeroizing::new(text))
        };
        let a = load_or_share(first.path(), share).unwrap();
        let second = tempfile::tempdir().unwrap();
        let b = load_or_share(second.path(), share).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_eq!(
            fingerprint(&load_or_create(second.path()).unwrap()),
            fingerprint(&a),
            "written to data_dir"
        );
        let third = tempfile::tempdir().unwrap();
        let own = load_or_create(third.path()).unwrap();
        let c = load_or_share(third.path(), share).unwrap();
        assert_eq!(fingerprint(&c), fingerprint(&own));
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(HOST_KEY_FILE), "garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("parsing host key"), "{err:#}");
    }
}
