//! SSH client settings shared by the agent and the support CLI: one place decides cipher
//! order, window and packet sizes, so both ends of every relayed byte are tuned alike.

use std::borrow::Cow;
use std::sync::Arc;

use russh::{Preferred, cipher, client};

use crate::limits::{KEEPALIVE_INTERVAL, KEEPALIVE_MAX};

/// Flow-control window per channel of a session with the jump host (the device tunnel's
/// forwarded channels, the engineer's relayed channel): large, so one busy hop is never
/// window-bound on the relay's legs.
pub const WINDOW: u32 = 8 * 1024 * 1024;
/// Window of the end-to-end session inside a hop (support-cli with the customer's sshd or
/// the built-in target), OpenSSH's own default. This window bounds what one hop may have in
/// flight across the whole chain, and every hop to a device shares its one tunnel: at 8 MiB,
/// 100 hops could queue 800 MB in it, and a hop whose first bytes landed behind that queue
/// waited 11-16 s for them (fan-in fairness 0.55-0.60; at 2 MiB 0.92 with the first bytes of
/// every hop within 0.32 s, and a single transfer as fast within the noise: bench/NOTES.md).
pub const INNER_WINDOW: u32 = 2 * 1024 * 1024;
/// Largest channel packet russh sends (it warns above a TCP packet's 65535).
pub const MAX_PACKET: u32 = 65_535;

/// Bytes read at once when relaying between a socket and a channel: one SSH packet's worth of
/// data. tokio's `copy_bidirectional` reads 8 KiB at a time, and every read becomes a packet
/// that each hop of the chain encrypts, decrypts, splices and wakes up for.
pub const RELAY_BUFFER: usize = MAX_PACKET as usize;

/// Copies both ways between `a` and `b` until both are done, [`RELAY_BUFFER`] at a time.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, RELAY_BUFFER, RELAY_BUFFER).await
}

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

/// Client settings for the sessions the agent and the CLI open with the jump host.
pub fn client_config() -> Arc<client::Config> {
    config(WINDOW)
}

/// Client settings for the end-to-end session inside a hop: as [`client_config`], with the
/// smaller [`INNER_WINDOW`].
pub fn inner_client_config() -> Arc<client::Config> {
    config(INNER_WINDOW)
}

fn config(window_size: u32) -> Arc<client::Config> {
    Arc::new(client::Config {
        window_size,
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
