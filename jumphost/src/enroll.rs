//! The jump host's enrollment key (`enrollment_key = "FILE"`): made on first start from the
//! OS's random source, 0600, and what every serial's enrollment secret is derived from
//! (`assist_proto::enroll`). A key file that others may read is refused: whoever reads it
//! can claim any serial.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use assist_proto::enroll::{self, KEY_LEN};
use assist_proto::private_file::{self, Existing};
use zeroize::Zeroize;

/// The enrollment key; `Debug` hides it and memory is wiped on drop.
pub struct EnrollmentKey([u8; KEY_LEN]);

impl std::fmt::Debug for EnrollmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnrollmentKey([redacted])")
    }
}

impl Drop for EnrollmentKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl EnrollmentKey {
    /// The key in `path`, made there first (0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        let existing = private_file::read_no_follow(path)
            .with_context(|| format!("reading the enrollment key {}", path.display()))?;
        let Some(mut bytes) = existing else {
            let mut key = [0u8; KEY_LEN];
            rand::fill(&mut key[..]);
            let mut text = hex::encode(key);
            text.push('\n');
            // Keep: two processes creating the key at once must not end up with two keys.
            let written = private_file::write_private(path, text.as_bytes(), Existing::Keep);
            text.zeroize();
            match written {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "enrollment key created");
                    return Ok(Self(key));
                }
                Err(private_file::PrivateFileError::Exists { .. }) => {
                    return Self::load_or_create(path);
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("writing the enrollment key {}", path.display()));
                }
            }
        };
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading the enrollment key {}", path.display()))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            bytes.zeroize();
            anyhow::bail!(
                "the enrollment key {} may be read by others (mode {mode:o}): whoever reads it \
                 can claim any serial; run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let key = enroll::parse_hex_key(&String::from_utf8_lossy(&bytes));
        bytes.zeroize();
        let key = key.with_context(|| {
            format!(
                "the enrollment key {} {}",
                path.display(),
                enroll::EnrollError::NotHex
            )
        })?;
        Ok(Self(key))
    }

    /// The secret the vendor ships with the product of this serial.
    pub fn secret(&self, serial: &str) -> assist_proto::Secret {
        enroll::secret(&self.0, serial)
    }

    /// Checks a registration's proof (see `assist_proto::enroll`).
    pub fn verify(
        &self,
        serial: &str,
        public_key: &str,
        at: u64,
        mac: &str,
    ) -> Result<(), enroll::EnrollError> {
        enroll::verify(&self.0, serial, public_key, at, mac)
    }

    /// A key for tests that need one without a file.
    #[cfg(test)]
    pub fn for_test(byte: u8) -> Self {
        Self([byte; KEY_LEN])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_then_read_back_and_an_open_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enroll.key");
        let made = EnrollmentKey::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = EnrollmentKey::load_or_create(&path).unwrap();
        assert_eq!(made.secret("SN-1"), again.secret("SN-1"));
        assert_ne!(made.secret("SN-1"), made.secret("SN-2"));
        assert_eq!(format!("{made:?}"), "EnrollmentKey([redacted])");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", EnrollmentKey::load_or_create(&path).unwrap_err());
        assert!(
            err.contains("mode 644") && err.contains("chmod 600"),
            "{err}"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not hex\n").unwrap();
        let err = format!("{:#}", EnrollmentKey::load_or_create(&path).unwrap_err());
        assert!(err.contains("is not 64 hex digits"), "{err}");
    }
}
