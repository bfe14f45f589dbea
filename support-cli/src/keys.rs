//! The keys the CLI works with: the two derived from a code, the engineer's own, and what a
//! device proved; with the checks of a serial and a code as typed.

use anyhow::Context;
use assist_proto::OneTimeCode;
use russh::keys::{PrivateKey, PublicKey};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{HopError, UsageError};
use crate::progress::Progress;

/// Checks a serial's format before anything is sent.
pub fn check_serial(serial: &str) -> Result<(), UsageError> {
    assist_proto::validate_name(serial).map_err(|e| UsageError(format!("serial {serial:?} {e}")))
}

/// Normalizes what the engineer typed, or says what is wrong with it.
pub fn parse_code(code: &str) -> Result<OneTimeCode, UsageError> {
    OneTimeCode::parse(code).map_err(|e| {
        UsageError(format!(
            "malformed code: {e}; ask the customer to read it again"
        ))
    })
}

/// The keys of a code: the one that logs in to the device, the one that checks the device's
/// proof of the code, and the built-in target's host key.
pub struct Keys {
    pub login: PrivateKey,
    pub attestation: PrivateKey,
    /// Only its public half is used: the built-in target must present it.
    pub builtin_host: PublicKey,
}

/// Derives the keys (two Argon2 runs side by side: about 200 ms), on a blocking thread.
pub async fn derive(serial: &str, code: OneTimeCode) -> anyhow::Result<(Keys, Duration)> {
    let serial = serial.to_string();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let keys = assist_proto::attest::derive_keys(&serial, &code)?;
        let mut login = keys.login;
        login.set_comment(format!("assist {serial}"));
        let keys = Keys {
            login,
            attestation: keys.attestation,
            builtin_host: keys.host.public_key().clone(),
        };
        Ok((keys, started.elapsed()))
    })
    .await
    .context("key derivation task")?
}

/// Loads the engineer's private key, asking for the passphrase when it is encrypted.
pub fn load_identity(path: &Path, progress: &Progress) -> Result<PrivateKey, HopError> {
    let unusable = |why: String| HopError::NoIdentity(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| unusable(e.to_string()))?;
    let key = PrivateKey::from_openssh(&text).map_err(|e| unusable(e.to_string()))?;
    if !key.is_encrypted() {
        return Ok(key);
    }
    let prompt = format!("Enter passphrase for key '{}': ", path.display());
    let passphrase = progress
        .paused(|| rpassword::prompt_password(&prompt))
        .map_err(|e| unusable(format!("encrypted, and no passphrase could be read: {e}")))?;
    let passphrase = assist_proto::Secret::new(passphrase);
    key.decrypt(passphrase.expose().as_bytes())
        .map_err(|_| unusable("wrong passphrase".to_string()))
}

/// A device that proved it knows the code.
pub struct Proven {
    /// The serial as the device spells it (the keys are derived with this one).
    pub serial: String,
    /// The key to log in to the device with.
    pub login: PrivateKey,
    /// The host keys the device attested (for the built-in target, its derived one).
    pub host_keys: Vec<PublicKey>,
    /// The built-in target's host key, derived from the code: accepted for the device in
    /// addition to the attested ones.
    pub builtin_host: PublicKey,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_serials_are_checked_before_use() {
        assert!(parse_code("7k3qm 2xpd9").is_ok());
        let err = parse_code("7K3QM-2XPD").unwrap_err().0;
        assert!(err.starts_with("malformed code"), "{err}");
        assert!(err.contains("read it again"), "{err}");
        assert!(parse_code("7K3QM-2XPDU").is_err());
        assert!(check_serial("SN-0001").is_ok());
        assert!(check_serial("../etc").unwrap_err().0.contains("serial"));
        assert!(check_serial("").is_err());
    }
}
