//! SSH client settings shared by the agent and the support CLI: one place decides cipher
//! order, window and packet sizes, so both ends of every relayed byte are tuned alike.

use std::borrow::Cow;
use std::sync::Arc;

use russh::{Preferred, cipher, client};

use crate::limits::{KEEPALIVE_INTERVAL, KEEPALIVE_MAX};

/// Flow-control window per channel: large, because a hop is windowed twice (the relayed
/// channel and the session inside it) and OpenSSH's 2 MiB is the yardstick.
pub const WINDOW: u32 = 8 * 1024 * 1024;
/// Largest channel packet russh sends (it warns above a TCP packet's 65535).
pub const MAX_PACKET: u32 = 65_535;

/// Ciphers when the CPU has AES instructions: ring's AES-GCM then outruns ChaCha20.
const CIPHERS_AES_HW: &[cipher::Name] = &[
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_CTR,
];
/// Ciphers otherwise: ChaCha20-Poly1305 is the fast one in software.
const CIPHERS_SOFT: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::AES_256_CTR,
];

/// The client's cipher order (in SSH the client's order wins). Both AEADs need no separate
/// MAC pass; which goes first depends on the CPU.
pub fn client_ciphers() -> &'static [cipher::Name] {
    #[cfg(target_arch = "x86_64")]
    let aes_hw = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes_hw = std::arch::is_aarch64_feature_detected!("aes");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let aes_hw = false;
    if aes_hw { CIPHERS_AES_HW } else { CIPHERS_SOFT }
}

/// Client settings for every SSH session the agent and the CLI open.
pub fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: 256,
        preferred: Preferred {
            cipher: Cow::Borrowed(client_ciphers()),
            ..Preferred::default()
        },
        nodelay: true,
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_only_aeads_first_and_no_cbc() {
        let ciphers = client_ciphers();
        assert!(
            ciphers[..3]
                .iter()
                .all(|c| c.as_ref().contains("gcm") || c.as_ref().contains("chacha"))
        );
        assert!(ciphers.iter().all(|c| !c.as_ref().contains("cbc")));
    }
}
