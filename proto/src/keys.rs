//! Fresh ed25519 keys for the programs' own identities (device key, jump host host key).

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;
use zeroize::Zeroize;

/// A new ed25519 key from the OS random number generator.
pub fn generate_ed25519() -> PrivateKey {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed[..]);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.zeroize();
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ() {
        assert_ne!(
            generate_ed25519().public_key(),
            generate_ed25519().public_key()
        );
    }
}
