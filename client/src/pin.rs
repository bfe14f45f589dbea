//! Pinning of the jump hosts' host keys: trust on first use (stored in `data_dir`, one pin
//! per jump host of the list), or fingerprints fixed in the config. A changed key is refused
//! with an error that says so.

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

/// Where the expected jump host keys come from.
#[derive(Debug, Clone)]
pub struct HostKeyPin {
    /// Stored public keys (trust on first use), one line per jump host:
    /// `JUMPHOST KEYTYPE BASE64`. A bare `KEYTYPE BASE64` line, as agents wrote it before
    /// `jumphost` could be a list, is the pin of the first jump host.
    file: PathBuf,
    /// Fingerprints from the config, which win over the file.
    fingerprints: Vec<String>,
    /// The first configured jump host, whose pin a bare line is.
    first: String,
}

impl HostKeyPin {
    pub fn new(file: PathBuf, fingerprints: Vec<String>, first: String) -> Self {
        Self {
            file,
            fingerprints,
            first,
        }
    }

    /// Accepts `offered` by `jumphost` if it matches that jump host's pin. A jump host with
    /// no pin yet is pinned now: to a key already trusted for another of the list (nodes of
    /// one service may share a key), or to whatever it offers (trust on first use).
    pub fn check(&self, jumphost: &str, offered: &PublicKey) -> Result<(), PinError> {
        let offered_fp = offered.fingerprint(HashAlg::Sha256).to_string();
        let io = |message: String| PinError::Io {
            file: self.file.display().to_string(),
            message,
        };
        if !self.fingerprints.is_empty() {
            return if self.fingerprints.contains(&offered_fp) {
                Ok(())
            } else {
                Err(PinError::Changed {
                    pinned: self.fingerprints.join(", "),
                    offered: offered_fp,
                    file: "jumphost_fingerprint".to_owned(),
                })
            };
        }
        let text = match std::fs::read_to_string(&self.file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e.to_string())),
        };
        let mut pins = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // A jump host always holds a ':' (HOST:PORT, a URL); a key type never does.
            let (owner, key) = match line.split_once(' ') {
                Some((owner, key)) if owner.contains(':') => (owner, key),
                _ => (self.first.as_str(), line),
            };
            let key = PublicKey::from_openssh(key.trim()).map_err(|e| io(e.to_string()))?;
            pins.push((owner, key));
        }
        let own: Vec<&PublicKey> = pins
            .iter()
            .filter(|(owner, _)| *owner == jumphost)
            .map(|(_, key)| key)
            .collect();
        if own.iter().any(|k| k.key_data() == offered.key_data()) {
            return Ok(());
        }
        if let Some(pinned) = own.first() {
            return Err(PinError::Changed {
                pinned: pinned.fingerprint(HashAlg::Sha256).to_string(),
                offered: offered_fp,
                file: self.file.display().to_string(),
            });
        }
        let line = offered.to_openssh().map_err(|e| io(e.to_string()))?;
        let shared = pins.iter().any(|(_, k)| k.key_data() == offered.key_data());
        let mut kept = text.clone();
        if !kept.is_empty() && !kept.ends_with('\n') {
            kept.push('\n');
        }
        kept.push_str(&format!("{jumphost} {line}\n"));
        private_file::write_private(&self.file, kept.as_bytes(), Existing::Replace)
            .map_err(|e| io(e.to_string()))?;
        if shared {
            tracing::info!(%jumphost, fingerprint = %offered_fp, "pinned the jump host key, shared with another jump host of the list");
        } else {
            tracing::info!(%jumphost, fingerprint = %offered_fp, "pinned the jump host key on first use");
        }
        Ok(())
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

    const A: &str = "a.example:2222";
    const B: &str = "wss://b.example/v1/ssh";

    #[test]
    fn first_key_is_pinned_and_a_changed_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pin = HostKeyPin::new(dir.path().join("jumphost_host_key"), vec![], A.into());
        pin.check(A, &key(1)).unwrap();
        pin.check(A, &key(1)).unwrap();
        let err = pin.check(A, &key(2)).unwrap_err();
        assert!(matches!(err, PinError::Changed { .. }));
        assert!(err.to_string().contains("key changed"), "{err}");
    }

    #[test]
    fn each_jump_host_has_its_own_pin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jumphost_host_key");
        let pin = HostKeyPin::new(file.clone(), vec![], A.into());
        pin.check(A, &key(1)).unwrap();
        // Another jump host: its own key, pinned on first use, the first one's kept.
        pin.check(B, &key(2)).unwrap();
        pin.check(A, &key(1)).unwrap();
        pin.check(B, &key(2)).unwrap();
        assert!(pin.check(A, &key(2)).is_err());
        assert!(pin.check(B, &key(1)).is_err());
        assert!(pin.check(B, &key(3)).is_err());
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");

        // A third that shares the first one's key is pinned to it, and held to it.
        let c = "10.0.0.3:2222";
        pin.check(c, &key(1)).unwrap();
        assert!(pin.check(c, &key(4)).is_err());
    }

    #[test]
    fn a_bare_pin_from_an_older_agent_is_the_first_jump_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jumphost_host_key");
        std::fs::write(&file, format!("{}\n", key(1).to_openssh().unwrap())).unwrap();
        let pin = HostKeyPin::new(file, vec![], A.into());
        pin.check(A, &key(1)).unwrap();
        assert!(pin.check(A, &key(2)).is_err());
        pin.check(B, &key(2)).unwrap();
        pin.check(A, &key(1)).unwrap();
    }

    #[test]
    fn configured_fingerprints_win() {
        let dir = tempfile::tempdir().unwrap();
        let fp = |k: u8| key(k).fingerprint(HashAlg::Sha256).to_string();
        let pin = HostKeyPin::new(dir.path().join("pin"), vec![fp(3), fp(5)], A.into());
        pin.check(A, &key(3)).unwrap();
        pin.check(B, &key(5)).unwrap();
        assert!(pin.check(A, &key(4)).is_err());
        assert!(!dir.path().join("pin").exists());
    }
}
