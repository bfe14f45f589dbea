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

/// Bytes read at once from the local end of a relay: one SSH packet's worth of
/// data. tokio's `copy_bidirectional` reads 8 KiB at a time, and every read becomes a packet
/// that each hop of the chain encrypts, decrypts, splices and wakes up for.
pub const RELAY_BUFFER: usize = MAX_PACKET as usize;

/// Reads shorter than this (typing, prompts) are copied into a message of their own so the
/// relay's buffer is reused; longer ones are handed to russh as they are.
const HAND_OVER_AT: usize = 8 * 1024;

/// Bytes a [`relay_channel`] carried, named from the local end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Read from the local end and sent on the channel.
    pub to_channel: u64,
    /// Received on the channel and written to the local end.
    pub from_channel: u64,
}

/// Relays between a local stream and an SSH channel until both directions are done (EOF
/// carried each way), then closes the channel; an error either way ends both.
///
/// Unlike `tokio::io::copy_bidirectional` over `Channel::into_stream`, no byte is copied in user space on the way:
/// a message's data is written to the local end straight from russh's buffer, and a read of
/// the local end becomes the message itself. At a few GB/s of copying per core, the two
/// copies saved are a fifth of what the agent spends per byte it relays.
pub async fn relay_channel<L, S>(
    local: &mut L,
    channel: russh::Channel<S>,
) -> std::io::Result<Relayed>
where
    L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static,
{
    let (mut incoming, outgoing) = channel.split();
    let outgoing = CloseOnDrop(Some(outgoing));
    let (mut reader, mut writer) = tokio::io::split(local);
    let Some(sender) = outgoing.0.as_ref() else {
        return Err(std::io::ErrorKind::BrokenPipe.into());
    };
    let (to_channel, from_channel) = tokio::try_join!(
        local_to_channel(&mut reader, sender),
        channel_to_local(&mut incoming, &mut writer),
    )?;
    Ok(Relayed {
        to_channel,
        from_channel,
    })
}

async fn local_to_channel<R, S>(
    reader: &mut R,
    channel: &russh::ChannelWriteHalf<S>,
) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
    S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static,
{
    use tokio::io::AsyncReadExt;
    let mut buffer = bytes::BytesMut::with_capacity(RELAY_BUFFER);
    let mut total = 0u64;
    loop {
        // Free again once russh has sent the previous message, or a new allocation.
        buffer.reserve(RELAY_BUFFER);
        let n = reader.read_buf(&mut buffer).await?;
        if n == 0 {
            channel.eof().await.map_err(broken)?;
            return Ok(total);
        }
        total += n as u64;
        let data = if n < HAND_OVER_AT {
            let data = bytes::Bytes::copy_from_slice(&buffer);
            buffer.clear();
            data
        } else {
            buffer.split().freeze()
        };
        channel.data_bytes(data).await.map_err(broken)?;
    }
}

async fn channel_to_local<W>(
    channel: &mut russh::ChannelReadHalf,
    writer: &mut W,
) -> std::io::Result<u64>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::AsyncWriteExt;
    let mut total = 0u64;
    loop {
        match channel.wait().await {
            Some(russh::ChannelMsg::Data { data }) => {
                writer.write_all(&data).await?;
                writer.flush().await?;
                total += data.len() as u64;
            }
            Some(russh::ChannelMsg::Eof) | None => {
                writer.shutdown().await?;
                return Ok(total);
            }
            Some(_) => {}
        }
    }
}

fn broken(e: russh::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, e)
}

/// Closes the channel when the relay ends or is dropped, as `Channel::into_stream`'s stream
/// does.
struct CloseOnDrop<S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static>(
    Option<russh::ChannelWriteHalf<S>>,
);

impl<S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static> Drop
    for CloseOnDrop<S>
{
    fn drop(&mut self) {
        if let Some(channel) = self.0.take() {
            tokio::spawn(async move {
                let _ = channel.close().await;
            });
        }
    }
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
