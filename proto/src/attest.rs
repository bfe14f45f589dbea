//! The device's proof that it knows the one-time code, version 1.
//!
//! While a window is open the agent signs a short text naming its serial (as it spells it)
//! and its SSH server's host keys, with an ed25519 key derived from `(serial, code)` exactly as
//! the login key is but under the salt prefix `assist-attest-v1/`. The signature is an
//! OpenSSH `SSHSIG` (what `ssh-keygen -Y sign` makes) in namespace [`NAMESPACE`]. The support
//! CLI derives the same key from the code it was read, checks the signature, and then trusts
//! only those host keys, so a jump host or a squatter that plays the device is refused before
//! the engineer sends it anything. The attestation key never logs in anywhere, and the login
//! key never signs an attestation.
//!
//! The document, all lines ending in `\n`:
//!
//! ```text
//! assist-attestation v1
//! serial SN-0001
//! host-key ssh-ed25519 AAAA…
//! host-key ecdsa-sha2-nistp256 AAAA…
//! -----BEGIN SSH SIGNATURE-----
//! …
//! -----END SSH SIGNATURE-----
//! ```
//!
//! The signed message is everything before the `-----BEGIN` line.

use crate::code::OneTimeCode;
use crate::derive::{DeriveError, derive_labelled};
use russh::keys::ssh_key::{HashAlg, LineEnding, SshSig};
use russh::keys::{PrivateKey, PublicKey};

/// Salt prefix of the attestation key; the serial follows it.
pub const SALT_PREFIX: &str = "assist-attest-v1/";
/// The SSHSIG namespace of an attestation (`ssh-keygen -Y … -n assist-attest-v1`).
pub const NAMESPACE: &str = "assist-attest-v1";
/// Largest document a verifier reads; a real one is well under 2 KiB.
pub const MAX_LEN: usize = 16 * 1024;
/// Host keys one document may carry.
pub const MAX_HOST_KEYS: usize = 8;

const HEADER: &str = "assist-attestation v1";
const SIGNATURE_START: &str = "-----BEGIN SSH SIGNATURE-----";

/// Derives the key that signs the device's attestation for `(serial, code)`.
pub fn derive_attestation_key(serial: &str, code: &OneTimeCode) -> Result<PrivateKey, DeriveError> {
    derive_labelled(SALT_PREFIX, serial, code)
}

/// The keys of a code.
pub struct CodeKeys {
    /// Logs in to the device.
    pub login: PrivateKey,
    /// Signs (agent) or checks (CLI) the device's attestation.
    pub attestation: PrivateKey,
    /// The built-in target's host key ([`crate::derive::derive_login_and_host`]).
    pub host: PrivateKey,
}

/// Every key of a code, derived on two threads at once (each is one Argon2 run of about
/// 19 MiB; the host key comes from the login key's run).
pub fn derive_keys(serial: &str, code: &OneTimeCode) -> Result<CodeKeys, DeriveError> {
    std::thread::scope(|s| {
        let attestation = s.spawn(|| derive_attestation_key(serial, code));
        let (login, host) = crate::derive::derive_login_and_host(serial, code)?;
        let attestation = attestation
            .join()
            .map_err(|_| DeriveError("the derivation thread panicked".into()))??;
        Ok(CodeKeys {
            login,
            attestation,
            host,
        })
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    #[error("the attestation is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("the attestation is malformed: {0}")]
    Malformed(String),
    #[error("the attestation is for serial {found:?}, not {asked:?}")]
    OtherSerial { asked: String, found: String },
    #[error("the attestation's signature does not verify with the key of this code")]
    BadSignature,
    #[error("cannot sign the attestation: {0}")]
    Sign(String),
}

/// What the device states: its serial and its SSH server's host keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    pub serial: String,
    pub host_keys: Vec<PublicKey>,
}

impl Attestation {
    /// The signed part of the document.
    fn message(&self) -> Result<String, AttestError> {
        let mut text = format!("{HEADER}\nserial {}\n", self.serial);
        for key in &self.host_keys {
            let mut key = key.clone();
            key.set_comment("");
            let line = key
                .to_openssh()
                .map_err(|e| AttestError::Sign(e.to_string()))?;
            text.push_str("host-key ");
            text.push_str(line.trim());
            text.push('\n');
        }
        Ok(text)
    }

    /// The whole document, signed with the attestation key.
    pub fn sign(&self, key: &PrivateKey) -> Result<String, AttestError> {
        if self.host_keys.is_empty() || self.host_keys.len() > MAX_HOST_KEYS {
            return Err(AttestError::Sign(format!(
                "{} host keys (1 to {MAX_HOST_KEYS} can be attested)",
                self.host_keys.len()
            )));
        }
        let message = self.message()?;
        let sig = key
            .sign(NAMESPACE, HashAlg::Sha512, message.as_bytes())
            .map_err(|e| AttestError::Sign(e.to_string()))?;
        let armored = sig
            .to_pem(LineEnding::LF)
            .map_err(|e| AttestError::Sign(e.to_string()))?;
        Ok(format!("{message}{}\n", armored.trim_end()))
    }
}

/// A parsed document whose signature is not checked yet: its serial tells which spelling
/// to derive the key with.
#[derive(Debug)]
pub struct Unverified {
    attestation: Attestation,
    message: String,
    signature: SshSig,
}

impl Unverified {
    /// Parses `document`, which must be for `asked` (compared ignoring ASCII case, as the
    /// jump host routes serials).
    pub fn parse(document: &[u8], asked: &str) -> Result<Self, AttestError> {
        if document.len() > MAX_LEN {
            return Err(AttestError::TooLong);
        }
        let malformed = |what: &str| AttestError::Malformed(what.to_string());
        let text = std::str::from_utf8(document).map_err(|_| malformed("not UTF-8"))?;
        let start = text
            .find(&format!("\n{SIGNATURE_START}"))
            .ok_or_else(|| malformed("no signature"))?
            + 1;
        let (message, armored) = text.split_at(start);
        let mut lines = message.lines();
        if lines.next() != Some(HEADER) {
            return Err(malformed("not an assist-attestation v1"));
        }
        let serial = lines
            .next()
            .and_then(|l| l.strip_prefix("serial "))
            .ok_or_else(|| malformed("no serial line"))?;
        crate::validate_name(serial).map_err(|e| AttestError::Malformed(format!("serial {e}")))?;
        if !serial.eq_ignore_ascii_case(asked) {
            return Err(AttestError::OtherSerial {
                asked: asked.to_string(),
                found: serial.to_string(),
            });
        }
        let mut host_keys = Vec::new();
        for line in lines {
            let key = line
                .strip_prefix("host-key ")
                .ok_or_else(|| malformed("a line that is not a host key"))?;
            let key = PublicKey::from_openssh(key)
                .map_err(|e| AttestError::Malformed(format!("host key: {e}")))?;
            host_keys.push(key);
        }
        if host_keys.is_empty() || host_keys.len() > MAX_HOST_KEYS {
            return Err(malformed("no host keys, or too many"));
        }
        let signature =
            SshSig::from_pem(armored.trim_end()).map_err(|_| malformed("unreadable signature"))?;
        Ok(Self {
            attestation: Attestation {
                serial: serial.to_string(),
                host_keys,
            },
            message: message.to_string(),
            signature,
        })
    }

    /// The serial as the device spells it; derive the keys with this one.
    pub fn serial(&self) -> &str {
        &self.attestation.serial
    }

    /// Checks the signature with the attestation key's public half.
    pub fn verify(self, key: &PublicKey) -> Result<Attestation, AttestError> {
        key.verify(NAMESPACE, self.message.as_bytes(), &self.signature)
            .map_err(|_| AttestError::BadSignature)?;
        Ok(self.attestation)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::private::Ed25519Keypair;

    fn code() -> OneTimeCode {
        OneTimeCode::parse("7K3QM-2XPD9").unwrap()
    }

    fn host_key() -> PublicKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]))
            .public_key()
            .clone()
    }

    /// Computed independently: Python's argon2-cffi and `cryptography` (ChaCha20, Ed25519).
    #[test]
    fn pinned_attestation_key() {
        let key = derive_attestation_key("SN-0001", &code()).unwrap();
        assert_eq!(
            key.public_key().to_openssh().unwrap(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEmXfX0NDKekp6uWCX/8rlUmfEBbgneaL6CCiWhUEru0"
        );
        let CodeKeys {
            login,
            attestation,
            host,
        } = derive_keys("SN-0001", &code()).unwrap();
        assert_eq!(attestation.public_key(), key.public_key());
        assert_eq!(
            host.public_key(),
            crate::derive::derive_login_and_host("SN-0001", &code())
                .unwrap()
                .1
                .public_key()
        );
        assert_eq!(
            login.public_key(),
            crate::derive_key("SN-0001", &code()).unwrap().public_key()
        );
        assert_ne!(login.public_key(), attestation.public_key());
    }

    /// The document of the docs' test vector; the signature was made by `ssh-keygen -Y sign`
    /// from a key file holding the Python-derived key (ed25519 signatures are deterministic).
    #[test]
    fn pinned_document() {
        let key = derive_attestation_key("SN-0001", &code()).unwrap();
        let doc = Attestation {
            serial: "SN-0001".into(),
            host_keys: vec![host_key()],
        }
        .sign(&key)
        .unwrap();
        assert_eq!(doc, VECTOR);
    }

    const VECTOR: &str = include_str!("attest_vector.txt");

    #[test]
    fn a_document_verifies_only_with_its_code_and_serial() {
        let key = derive_keys("SN-0001", &code()).unwrap().attestation;
        let doc = Attestation {
            serial: "SN-0001".into(),
            host_keys: vec![host_key()],
        }
        .sign(&key)
        .unwrap();
        let parsed = Unverified::parse(doc.as_bytes(), "sn-0001").unwrap();
        assert_eq!(parsed.serial(), "SN-0001");
        let attestation = parsed.verify(key.public_key()).unwrap();
        assert_eq!(attestation.host_keys, vec![host_key()]);

        let other =
            derive_attestation_key("SN-0001", &OneTimeCode::parse("7K3QM-2XPD8").unwrap()).unwrap();
        let parsed = Unverified::parse(doc.as_bytes(), "SN-0001").unwrap();
        assert_eq!(
            parsed.verify(other.public_key()),
            Err(AttestError::BadSignature)
        );
        assert!(matches!(
            Unverified::parse(doc.as_bytes(), "SN-0002"),
            Err(AttestError::OtherSerial { .. })
        ));
    }

    #[test]
    fn an_edited_document_fails() {
        let key = derive_attestation_key("SN-0001", &code()).unwrap();
        let doc = Attestation {
            serial: "SN-0001".into(),
            host_keys: vec![host_key()],
        }
        .sign(&key)
        .unwrap();
        let planted = PrivateKey::from(Ed25519Keypair::from_seed(&[8; 32]));
        let planted = planted.public_key().to_openssh().unwrap();
        let original = host_key().to_openssh().unwrap();
        // Another host key in place of the device's, or added to it.
        for edited in [
            doc.replace(original.trim(), planted.trim()),
            doc.replacen("host-key", &format!("host-key {planted}\nhost-key"), 1),
        ] {
            let parsed = Unverified::parse(edited.as_bytes(), "SN-0001").unwrap();
            assert_eq!(
                parsed.verify(key.public_key()),
                Err(AttestError::BadSignature)
            );
        }
        for bad in [
            String::new(),
            "assist-attestation v2\n".to_string(),
            doc.replace("serial SN-0001", "serial ../x"),
            doc.replace("host-key ssh", "key ssh"),
            doc.split(SIGNATURE_START).next().unwrap().to_string(),
            "x".repeat(MAX_LEN + 1),
        ] {
            assert!(
                Unverified::parse(bad.as_bytes(), "SN-0001").is_err(),
                "{bad}"
            );
        }
    }

    /// Stock OpenSSH reads our signatures: `ssh-keygen -Y check-novalidate` accepts a
    /// fresh document with several host keys.
    #[test]
    fn ssh_keygen_checks_a_document() {
        let key = derive_attestation_key("SN-0001", &code()).unwrap();
        let second = PrivateKey::from(Ed25519Keypair::from_seed(&[9; 32]));
        let doc = Attestation {
            serial: "SN-0001".into(),
            host_keys: vec![host_key(), second.public_key().clone()],
        }
        .sign(&key)
        .unwrap();
        let (message, signature) = doc.split_at(doc.find(SIGNATURE_START).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let sig = dir.path().join("msg.sig");
        std::fs::write(&sig, signature).unwrap();
        let out = check_novalidate(&sig, message);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        assert!(String::from_utf8_lossy(&out.stdout).contains(&fingerprint));
        // An edited message does not pass.
        let edited = message.replace("SN-0001", "SN-0002");
        assert!(!check_novalidate(&sig, &edited).status.success());
    }

    /// `ssh-keygen -Y check-novalidate` of `message` against the signature file `sig`.
    fn check_novalidate(sig: &std::path::Path, message: &str) -> std::process::Output {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut check = Command::new("ssh-keygen")
            .args(["-Y", "check-novalidate", "-n", NAMESPACE, "-s"])
            .arg(sig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        check.wait_with_output().unwrap()
    }

    #[test]
    fn nothing_or_too_much_is_not_signed() {
        let key = derive_attestation_key("SN-0001", &code()).unwrap();
        let none = Attestation {
            serial: "SN-0001".into(),
            host_keys: vec![],
        };
        assert!(none.sign(&key).is_err());
    }
}
