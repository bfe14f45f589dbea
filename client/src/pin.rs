//! Pinning of the jump host's host key: trust on first use (stored in `data_dir`), or a
//! fingerprint fixed in the config. A changed key is refused with an error that says so.

use assist_proto::private_file::{self, Existing};
use russh::keys::{HashAlg, PublicKey};
use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PinError {
    #[error(
        "the jump host's key changed: pinned {pinned}, offered {offered}. This may be an \
         attack; if the vendor really replaced the key, delete {file} (or fix \
         jumphost_fingerprint in the config) and restart the agent"
    )]
    Changed {
        pinned: String,
        offered: String,
        file: String,
    },
    #[error("cannot use pinned jump host key {file}: {message}")]
    Io { file: String, message: String },
}

/// Where the expected jump host key comes from.
#[derive(Debug, Clone)]
pub struct HostKeyPin {
    /// Stored public key (trust on first use).
    file: PathBuf,
    /// Fingerprint from the config, which wins over the file.
    fingerprint: Option<String>,
}

impl HostKeyPin {
    pub fn new(file: PathBuf, fingerprint: Option<String>) -> Self {
        Self { file, fingerprint }
    }

    /// Accepts `offered` if it matches the pin, pins it if nothing is pinned yet.
    pub fn check(&self, offered: &PublicKey) -> Result<(), PinError> {
        let offered_fp = offered.fingerprint(HashAlg::Sha256).to_string();
        let io = |message: String| PinError::Io {
            file: self.file.display().to_string(),
            message,
        };
        if let Some(want) = &self.fingerprint {
            return if *want == offered_fp {
                Ok(())
            } else {
                Err(PinError::Changed {
                    pinned: want.clone(),
                    offered: offered_fp,
                    file: "jumphost_fingerprint".to_owned(),
                })
            };
        }
        match std::fs::read_to_string(&self.file) {
            Ok(text) => {
                let pinned = PublicKey::from_openssh(text.trim()).map_err(|e| io(e.to_string()))?;
                if pinned.key_data() == offered.key_data() {
                    Ok(())
                } else {
                    Err(PinError::Changed {
                        pinned: pinned.fingerprint(HashAlg::Sha256).to_string(),
                        offered: offered_fp,
                        file: self.file.display().to_string(),
                    })
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let line = offered.to_openssh().map_err(|e| io(e.to_string()))?;
                // Keep: a pin that appeared meanwhile is not overwritten.
                private_file::write_private(
                    &self.file,
                    format!("{line}\n").as_bytes(),
                    Existing::Keep,
                )
                .map_err(|e| io(e.to_string()))?;
                tracing::info!(fingerprint = %offered_fp, "pinned the jump host key on first use");
                Ok(())
            }
            Err(e) => Err(io(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::PrivateKey;
    use russh::keys::ssh_key::private::Ed25519Keypair;

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
            .public_key()
            .clone()
    }

    #[test]
    fn first_key_is_pinned_and_a_changed_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pin = HostKeyPin::new(dir.path().join("jumphost_host_key"), None);
        pin.check(&key(1)).unwrap();
        pin.check(&key(1)).unwrap();
        let err = pin.check(&key(2)).unwrap_err();
        assert!(matches!(err, PinError::Changed { .. }));
        assert!(err.to_string().contains("key changed"), "{err}");
    }

    #[test]
    fn configured_fingerprint_wins() {
        let dir = tempfile::tempdir().unwrap();
        let fp = key(3).fingerprint(HashAlg::Sha256).to_string();
        let pin = HostKeyPin::new(dir.path().join("pin"), Some(fp));
        pin.check(&key(3)).unwrap();
        assert!(pin.check(&key(4)).is_err());
        assert!(!dir.path().join("pin").exists());
    }
}
