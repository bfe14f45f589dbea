//! The pinned derivation of an ed25519 key from `(serial, one-time code)`, version 1.
//!
//! `seed = Argon2id(code, "assist-otc-v1/" + serial, m=19456 KiB, t=2, p=1, 32 bytes)`, then the
//! first 32 bytes of `ChaCha20Rng::from_seed(seed)` are the ed25519 secret key. Changing any of
//! this is a new version: the agent and every deployed CLI must agree.
//!
//! The built-in target's host key comes from the login key's seed under a label of its own,
//! `HMAC-SHA256(key = seed, message = "assist-builtin-host-v1")` as the ed25519 secret key,
//! so both ends know it from the code without a second Argon2 run, and it shares nothing
//! usable with the login key (HMAC is a PRF keyed by the seed; ChaCha20 is another).

use crate::code::OneTimeCode;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use hmac::{Hmac, KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;
use sha2::Sha256;
use zeroize::Zeroize;

/// Salt prefix; the serial follows it.
pub const SALT_PREFIX: &str = "assist-otc-v1/";
/// The HMAC message that turns the login seed into the built-in target's host key.
pub const HOST_KEY_LABEL: &str = "assist-builtin-host-v1";
const ARGON2_M_KIB: u32 = 19_456;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[error("key derivation failed: {0}")]
pub struct DeriveError(pub(crate) String);

/// Derives the ed25519 key that the agent authorizes and the engineer logs in with.
pub fn derive_key(serial: &str, code: &OneTimeCode) -> Result<PrivateKey, DeriveError> {
    derive_labelled(SALT_PREFIX, serial, code)
}

/// The login key and the built-in target's host key of `(serial, code)`, from one Argon2 run.
pub fn derive_login_and_host(
    serial: &str,
    code: &OneTimeCode,
) -> Result<(PrivateKey, PrivateKey), DeriveError> {
    let seed = Seed::argon2(SALT_PREFIX, serial, code)?;
    Ok((seed.chacha_key(), seed.host_key()))
}

/// The version-1 recipe under a salt prefix of its own: each prefix gives an unrelated key
/// from the same `(serial, code)` (the login key here, the attestation key in
/// [`crate::attest`]).
pub(crate) fn derive_labelled(
    prefix: &str,
    serial: &str,
    code: &OneTimeCode,
) -> Result<PrivateKey, DeriveError> {
    Ok(Seed::argon2(prefix, serial, code)?.chacha_key())
}

/// Blocks (1 KiB each) reserved for Argon2's 19 MiB: more than 32 MiB. glibc's malloc serves
/// a block that large with its own mapping, and when such a block of 32 MiB or less is freed
/// it raises its mapping threshold (and twice that, its trim threshold) to the block's size:
/// after one derivation, the agent's freed buffers up to 19 MiB stayed in its heap for good,
/// 1.7 MiB of its idle RSS (bench/NOTES.md). Above 32 MiB the thresholds stay; the pages
/// past the 19 MiB are never touched, so they cost address space only.
const ARGON2_RESERVED_BLOCKS: usize = 33 << 10;

/// Argon2's working memory for `blocks` blocks, in a reservation of its own (see above).
fn argon2_memory(blocks: usize) -> Vec<Block> {
    let mut memory = Vec::with_capacity(blocks.max(ARGON2_RESERVED_BLOCKS));
    memory.resize(blocks, Block::default());
    memory
}

/// The Argon2 output of one prefix, serial and code; zeroized on drop.
struct Seed([u8; 32]);

impl Seed {
    fn argon2(prefix: &str, serial: &str, code: &OneTimeCode) -> Result<Self, DeriveError> {
        let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
            .map_err(|e| DeriveError(e.to_string()))?;
        let mut memory = argon2_memory(params.block_count());
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = format!("{prefix}{serial}");
        let mut seed = Seed([0u8; 32]);
        argon
            .hash_password_into_with_memory(
                code.normalized(),
                salt.as_bytes(),
                &mut seed.0,
                &mut memory[..],
            )
            .map_err(|e| DeriveError(e.to_string()))?;
        Ok(seed)
    }

    /// The first 32 bytes of ChaCha20 seeded with it: the login and attestation keys.
    fn chacha_key(&self) -> PrivateKey {
        let mut rng = ChaCha20Rng::from_seed(self.0);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        ed25519(secret)
    }

    /// `HMAC-SHA256(seed, HOST_KEY_LABEL)`: the built-in target's host key.
    fn host_key(&self) -> PrivateKey {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(HOST_KEY_LABEL.as_bytes());
        let mut secret: [u8; 32] = mac.finalize().into_bytes().into();
        let key = ed25519(secret);
        secret.zeroize();
        key
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

fn ed25519(mut secret: [u8; 32]) -> PrivateKey {
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&secret));
    secret.zeroize();
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::HashAlg;

    #[test]
    fn pinned_test_vector() {
        let code = OneTimeCode::parse("7K3QM-2XPD9").unwrap();
        let key = derive_key("SN-0001", &code).unwrap();
        let public = key.public_key();
        assert_eq!(
            public.to_openssh().unwrap(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJqE7egDfQoF+LPGvaRdEJjNURSRmJ2U+vQ9XSbMvnLX"
        );
        assert_eq!(
            public.fingerprint(HashAlg::Sha256).to_string(),
            "SHA256:tLKN6HA4MRIIEKQx/ZzJlkCmIU+D1o5VD4tNOkF+fns"
        );
    }

    /// Logs may carry a key's `Debug`; ssh-key redacts the secret half today, and an upgrade
    /// that stopped doing so must fail here.
    #[test]
    fn debug_of_a_derived_key_shows_no_secret_bytes() {
        let code = OneTimeCode::parse("7K3QM-2XPD9").unwrap();
        let key = derive_key("SN-0001", &code).unwrap();
        let secret = key.key_data().ed25519().unwrap().private.to_bytes();
        let hex = hex::encode(secret);
        let decimal = format!("{:?}", &secret[..4]);
        let decimal = decimal.trim_end_matches(']');
        for shown in [format!("{key:?}"), format!("{:?}", key.key_data())] {
            let lower = shown.to_lowercase();
            assert!(!lower.contains(&hex[..16]), "{shown}");
            assert!(!shown.contains(decimal), "{shown}");
        }
        assert!(!format!("{code:?}").contains("7K3QM"));
    }

    /// The built-in target's host key is a pinned contract too: the agent serves it and
    /// every support CLI expects it. Computed independently with Python's argon2-cffi,
    /// hmac and cryptography modules from the definitions in the module docs.
    #[test]
    fn pinned_host_key_of_the_test_vector() {
        let code = OneTimeCode::parse("7K3QM-2XPD9").unwrap();
        let (login, host) = derive_login_and_host("SN-0001", &code).unwrap();
        assert_eq!(
            login.public_key(),
            derive_key("SN-0001", &code).unwrap().public_key()
        );
        assert_ne!(host.public_key(), login.public_key());
        assert_eq!(
            host.public_key().to_openssh().unwrap(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAdd+CuDcgjaQsvkuAgvkIuQWDfHYV4BvNmO44FQ/keY"
        );
    }

    #[test]
    fn serial_and_code_both_matter() {
        let code = OneTimeCode::parse("7K3QM-2XPD9").unwrap();
        let other = OneTimeCode::parse("7K3QM-2XPD8").unwrap();
        let a = derive_key("SN-0001", &code).unwrap();
        let b = derive_key("SN-0002", &code).unwrap();
        let c = derive_key("SN-0001", &other).unwrap();
        assert_ne!(a.public_key(), b.public_key());
        assert_ne!(a.public_key(), c.public_key());
    }
}
