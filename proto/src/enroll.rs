//! Device enrollment (pinned; a change is a new version). The vendor ships each product
//! with its serial and a secret derived from the jump host's enrollment key, so only the
//! holder of that secret can create the serial's first binding:
//!
//! 1. `secret = HMAC-SHA256(key = the 32-byte enrollment key,
//!    message = "assist-enroll-v1\n" + ASCII-lowercase(serial))`, written as 64 lowercase
//!    hex digits. Lowercase because serials are one serial whatever their case.
//! 2. `proof = HMAC-SHA256(key = the 32 secret bytes, message = "assist-enroll-proof-v1\n" +
//!    serial + "\n" + public key type and base64 (no comment) + "\n" + at + "\n")`, hex, where
//!    `at` is the Unix time in seconds (decimal) when the proof was made. It binds the serial,
//!    the key and the time: it cannot bind another key, and it is refused once `at` is more
//!    than [`crate::limits::ENROLLMENT_SKEW`] from the jump host's clock.
//!
//! The test vectors below pin both steps.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::Secret;

/// Bytes of an enrollment key and of a secret.
pub const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    #[error("is not {} hex digits", KEY_LEN * 2)]
    NotHex,
    #[error("does not match: the secret is not this serial's, or it was not made for this key")]
    Mismatch,
}

/// Reads 64 hex digits (surrounding white space ignored).
pub fn parse_hex_key(text: &str) -> Result<[u8; KEY_LEN], EnrollError> {
    let mut out = [0u8; KEY_LEN];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| EnrollError::NotHex)?;
    Ok(out)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for part in parts {
        mac.update(part);
    }
    mac
}

/// The serial's enrollment secret, as the vendor ships it (hex).
pub fn secret(enrollment_key: &[u8; KEY_LEN], serial: &str) -> Secret {
    let serial = serial.to_ascii_lowercase();
    let tag = mac(enrollment_key, &[b"assist-enroll-v1\n", serial.as_bytes()]).finalize();
    Secret::new(hex::encode(tag.into_bytes()))
}

/// The type and base64 of an OpenSSH public key line, without its comment.
fn key_identity(public_key: &str) -> String {
    public_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn proof_mac(secret: &[u8; KEY_LEN], serial: &str, public_key: &str, at: u64) -> HmacSha256 {
    let key = key_identity(public_key);
    let at = at.to_string();
    mac(
        secret,
        &[
            b"assist-enroll-proof-v1\n",
            serial.as_bytes(),
            b"\n",
            key.as_bytes(),
            b"\n",
            at.as_bytes(),
            b"\n",
        ],
    )
}

/// The proof a device sends with its registration (hex).
pub fn proof(
    secret: &Secret,
    serial: &str,
    public_key: &str,
    at: u64,
) -> Result<String, EnrollError> {
    let secret = parse_hex_key(secret.expose())?;
    Ok(hex::encode(
        proof_mac(&secret, serial, public_key, at)
            .finalize()
            .into_bytes(),
    ))
}

/// Checks `mac` (hex) against the proof the serial's secret makes; in constant time.
pub fn verify(
    enrollment_key: &[u8; KEY_LEN],
    serial: &str,
    public_key: &str,
    at: u64,
    mac_hex: &str,
) -> Result<(), EnrollError> {
    let secret = parse_hex_key(secret(enrollment_key, serial).expose())?;
    let given = hex::decode(mac_hex.trim()).map_err(|_| EnrollError::Mismatch)?;
    proof_mac(&secret, serial, public_key, at)
        .verify_slice(&given)
        .map_err(|_| EnrollError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];
    const DEVICE: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJqE7egDfQoF+LPGvaRdEJjNURSRmJ2U+vQ9XSbMvnLX";

    /// Computed once with Python's hmac module from the definitions in the module docs:
    /// `hmac.new(bytes([7]*32), b"assist-enroll-v1\nsn-0001", "sha256").hexdigest()`, and the
    /// proof from that secret's bytes over the documented message.
    #[test]
    fn test_vectors() {
        let s = secret(&KEY, "SN-0001");
        assert_eq!(s.expose(), PINNED_SECRET);
        assert_eq!(
            secret(&KEY, "sn-0001").expose(),
            PINNED_SECRET,
            "one serial whatever its case"
        );
        let p = proof(&s, "SN-0001", &format!("{DEVICE} device@sn"), 1_800_000_000).unwrap();
        assert_eq!(p, PINNED_PROOF);
    }

    const PINNED_SECRET: &str = "0e8625406c4997564857ecc5e2562d800b421c01d25aac1990b0b9866c195167";
    const PINNED_PROOF: &str = "7f1b4d67b9a42e400f7e163575eef5d47fa2d217ce1182cd5813d924fc670d24";

    #[test]
    fn a_proof_binds_serial_key_and_time() {
        let s = secret(&KEY, "SN-1");
        let p = proof(&s, "SN-1", DEVICE, 100).unwrap();
        assert_eq!(verify(&KEY, "SN-1", DEVICE, 100, &p), Ok(()));
        assert_eq!(
            verify(&KEY, "SN-1", &format!("{DEVICE} other comment"), 100, &p),
            Ok(())
        );
        let other_key = DEVICE.replace("AAAAIJq", "AAAAIJr");
        for (serial, key, at, mac) in [
            ("SN-2", DEVICE, 100, p.as_str()),
            ("SN-1", other_key.as_str(), 100, p.as_str()),
            ("SN-1", DEVICE, 101, p.as_str()),
            ("SN-1", DEVICE, 100, "00"),
            ("SN-1", DEVICE, 100, "not hex"),
        ] {
            assert_eq!(
                verify(&KEY, serial, key, at, mac),
                Err(EnrollError::Mismatch),
                "{serial} {at} {mac}"
            );
        }
        // Another jump host's key makes other secrets.
        assert_eq!(
            verify(&[8; KEY_LEN], "SN-1", DEVICE, 100, &p),
            Err(EnrollError::Mismatch)
        );
        assert_eq!(
            proof(&crate::Secret::new("short"), "SN-1", DEVICE, 1),
            Err(EnrollError::NotHex)
        );
    }
}
