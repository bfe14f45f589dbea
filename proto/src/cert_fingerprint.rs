//! SHA-256 fingerprint of the jump host API's TLS certificate: printed by the jump host at
//! start, pinned by the agent with `api_fingerprint`. One format on both sides.

use sha2::{Digest, Sha256};

/// SHA-256 over a certificate's DER bytes. Shown as `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a SHA-256 certificate fingerprint: expected sha256: and 64 hex digits \
     (colons allowed), as the jump host prints it"
)]
pub struct FingerprintError(String);

impl CertFingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// Accepts what the jump host prints and what `openssl x509 -fingerprint -sha256` prints
    /// after its `=`: an optional `sha256:` prefix (any case), hex digits in any case,
    /// optionally separated by colons.
    pub fn parse(text: &str) -> Result<Self, FingerprintError> {
        let bad = || FingerprintError(text.chars().take(120).collect());
        let trimmed = text.trim();
        let hex = match trimmed.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &trimmed[7..],
            _ => trimmed,
        };
        let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&digits, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }
}

impl std::fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl std::fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_form_parses_back_and_other_spellings_are_accepted() {
        let fp = CertFingerprint::of_der(b"certificate");
        let shown = fp.to_string();
        assert!(shown.starts_with("sha256:"), "{shown}");
        assert_eq!(shown.len(), 7 + 64);
        assert_eq!(CertFingerprint::parse(&shown), Ok(fp));
        let hex = &shown[7..];
        let openssl_style: Vec<String> = hex
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        for text in [
            hex.to_string(),
            format!("SHA256:{}", hex.to_uppercase()),
            openssl_style.join(":"),
            format!(" sha256:{} ", openssl_style.join(":")),
        ] {
            assert_eq!(CertFingerprint::parse(&text), Ok(fp), "{text}");
        }
    }

    #[test]
    fn wrong_length_or_digits_are_refused() {
        let hex = CertFingerprint::of_der(b"x").to_string()[7..].to_string();
        for text in [
            String::new(),
            "sha256:".into(),
            hex[..62].to_string(),
            format!("{hex}00"),
            hex.replace(&hex[..1], "g"),
            format!("md5:{hex}"),
            format!("SHA256:{}", &hex[..43]),
        ] {
            let err = CertFingerprint::parse(&text).unwrap_err();
            assert!(err.to_string().contains("64 hex digits"), "{err}");
        }
    }
}
