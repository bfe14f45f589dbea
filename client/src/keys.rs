//! The device key: an ed25519 key made on first start, kept in OpenSSH format (mode 0600),
//! with which the agent registers and logs in to the jump host.

use assist_proto::private_file::{self, Existing, PrivateFileError};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read device key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "device key {path} is not an OpenSSH private key ({message}); move it away to make a new \
         one (the serial then needs `assist-jumphost serial reset` on the jump host)"
    )]
    Parse { path: String, message: String },
    #[error("cannot write the device key: {0}")]
    Write(#[source] PrivateFileError),
    #[error("cannot encode device key: {0}")]
    Encode(String),
}

/// Loads the key at `path`, or makes one there if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<PrivateKey, KeyError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text.as_bytes()).map_err(|e| KeyError::Parse {
            path: shown,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(source) => Err(KeyError::Read {
            path: shown,
            source,
        }),
    }
}

fn create(path: &Path) -> Result<PrivateKey, KeyError> {
    let key = assist_proto::keys::generate_ed25519();
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    // Keep: two agents started at once must not overwrite each other's key.
    private_file::write_private(path, text.as_bytes(), Existing::Keep).map_err(KeyError::Write)?;
    Ok(key)
}

/// `SHA256:…` fingerprint of a key's public half.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// The public half as an OpenSSH line (`ssh-ed25519 AAAA…`) without a comment.
pub fn public_line(key: &PrivateKey) -> Result<String, KeyError> {
    key.public_key()
        .to_openssh()
        .map_err(|e| KeyError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_with_mode_0600_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device_key");
        let a = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(&path).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert!(public_line(&a).unwrap().starts_with("ssh-ed25519 AAAA"));
    }

    #[test]
    fn a_corrupt_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device_key");
        std::fs::write(&path, "garbage").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("not an OpenSSH private key"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");
    }
}
