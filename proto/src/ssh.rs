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
    let mut buffers = Recycler::default();
    let mut total = 0u64;
    loop {
        let mut buffer = buffers.take();
        let n = reader.read_buf(&mut buffer).await?;
        if n == 0 {
            channel.eof().await.map_err(broken)?;
            return Ok(total);
        }
        total += n as u64;
        let data = if n < HAND_OVER_AT {
            let data = bytes::Bytes::copy_from_slice(&buffer);
            buffer.clear();
            buffers.keep(buffer);
            data
        } else {
            let data = buffer.split().freeze();
            buffers.handed_over(buffer);
            data
        };
        channel.data_bytes(data).await.map_err(broken)?;
    }
}

/// How many buffers a relay waits on before it takes a new one.
const RECYCLED: usize = 4;

/// A relay's read buffers. Each read is split off its buffer and handed to russh, which
/// drops it once it has copied it into a packet: usually after the next read has started,
/// so one buffer alone was a fresh allocation per packet, and on the static agent (whose
/// allocator gives freed pages back at once) 16 page faults per 64 KiB. The last few
/// buffers handed over are kept, and the oldest is read into again once russh is done with
/// it (`BytesMut::try_reclaim`).
#[derive(Default)]
struct Recycler {
    /// Oldest first; each the empty remainder of a buffer whose bytes were handed over.
    ring: std::collections::VecDeque<bytes::BytesMut>,
}

impl Recycler {
    /// A buffer with room for [`RELAY_BUFFER`] bytes: the oldest one back, or a new one.
    fn take(&mut self) -> bytes::BytesMut {
        if let Some(mut oldest) = self.ring.pop_front() {
            if oldest.try_reclaim(RELAY_BUFFER) {
                return oldest;
            }
            self.ring.push_front(oldest);
        }
        bytes::BytesMut::with_capacity(RELAY_BUFFER)
    }

    /// A buffer whose bytes were copied, not handed over: the next to be read into.
    fn keep(&mut self, buffer: bytes::BytesMut) {
        self.ring.push_front(buffer);
    }

    /// The remainder of a buffer whose bytes russh now holds.
    fn handed_over(&mut self, buffer: bytes::BytesMut) {
        if self.ring.len() == RECYCLED {
            self.ring.pop_front();
        }
        self.ring.push_back(buffer);
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

    /// A server that accepts anyone and relays each session channel (as the agent does) to
    /// an echo: one that returns the bytes once they have all arrived (`Echo::After`), or
    /// one that returns each as it arrives, so that both directions stream at once
    /// (`Echo::AtOnce`).
    #[derive(Clone, Copy)]
    enum Echo {
        After,
        AtOnce,
        /// Takes the first channel and never reads it; echoes the others `AtOnce`.
        AtOnceIgnoringTheFirst,
    }

    impl russh::server::Handler for Echo {
        type Error = russh::Error;

        async fn auth_none(&mut self, _user: &str) -> Result<russh::server::Auth, Self::Error> {
            Ok(russh::server::Auth::Accept)
        }

        async fn channel_open_session(
            &mut self,
            channel: russh::Channel<russh::server::Msg>,
            reply: russh::server::ChannelOpenHandle,
            _session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            let echo = *self;
            if let Echo::AtOnceIgnoringTheFirst = echo {
                *self = Echo::AtOnce;
                tokio::spawn(async move {
                    reply.accept().await;
                    let _unread = channel;
                    std::future::pending::<()>().await;
                });
                return Ok(());
            }
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                reply.accept().await;
                let (mut near, mut far) = tokio::io::duplex(1 << 16);
                tokio::spawn(async move {
                    match echo {
                        Echo::After => {
                            let mut got = Vec::new();
                            let _ = far.read_to_end(&mut got).await;
                            let _ = far.write_all(&got).await;
                        }
                        Echo::AtOnce | Echo::AtOnceIgnoringTheFirst => {
                            let (mut from, mut to) = tokio::io::split(far);
                            let _ = tokio::io::copy(&mut from, &mut to).await;
                            far = from.unsplit(to);
                        }
                    }
                    let _ = far.shutdown().await;
                });
                let _ = relay_channel(&mut near, channel).await;
            });
            Ok(())
        }
    }

    struct TrustAny;

    impl client::Handler for TrustAny {
        type Error = russh::Error;

        async fn check_server_key(
            &mut self,
            _key: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    /// A stream whose reads return at most 4,999 bytes: packets arrive in pieces.
    struct Trickle(tokio::io::DuplexStream);

    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let mut piece = [0u8; 4_999];
            let room = buf.remaining().min(piece.len());
            let mut part = tokio::io::ReadBuf::new(&mut piece[..room]);
            let read = std::pin::Pin::new(&mut self.0).poll_read(cx, &mut part);
            buf.put_slice(part.filled());
            read
        }
    }

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.0).poll_write(cx, data)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// Sends `total` bytes through a russh client and server over `transport` (pieces of odd
    /// sizes, so packets are of many lengths) to `echo`, with both sides rekeying every
    /// `rekey` bytes, and checks they come back as sent.
    async fn round_trip<T>(transport: (T, T), echo: Echo, rekey: usize, total: usize)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limits = russh::Limits::new(rekey, rekey, std::time::Duration::from_secs(3600));
        let host_key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[3; 32]),
        );
        let server = Arc::new(russh::server::Config {
            keys: vec![host_key],
            limits: limits.clone(),
            window_size: 2 << 20,
            maximum_packet_size: MAX_PACKET,
            ..Default::default()
        });
        let client_config = Arc::new(client::Config {
            limits,
            window_size: 2 << 20,
            maximum_packet_size: MAX_PACKET,
            ..Default::default()
        });
        let (ours, theirs) = transport;
        let running =
            tokio::spawn(
                async move { russh::server::run_stream(server, theirs, echo).await?.await },
            );
        let mut session = client::connect_stream(client_config, ours, TrustAny)
            .await
            .expect("connecting");
        assert!(
            session
                .authenticate_none("echo")
                .await
                .expect("auth")
                .success()
        );
        // A channel whose reader never reads, sent to as fast as it will take.
        let flooding = tokio::spawn({
            let ignored = match echo {
                Echo::AtOnceIgnoringTheFirst => {
                    Some(session.channel_open_session().await.expect("channel"))
                }
                _ => None,
            };
            async move {
                if let Some(ignored) = ignored {
                    let mut to = ignored.into_stream();
                    let _ = to.write_all(&vec![0; 64 << 20]).await;
                    std::future::pending::<()>().await;
                }
            }
        });
        let channel = session.channel_open_session().await.expect("channel");
        let (mut from, mut to) = tokio::io::split(channel.into_stream());

        let sent: Vec<u8> = (0..total as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move {
                for piece in sent.chunks(40_961) {
                    to.write_all(piece).await.expect("writing");
                }
                to.shutdown().await.expect("eof");
            }
        });
        let mut back = Vec::with_capacity(total);
        // A stall is a failure, not a hang: the slowest of these takes a few seconds.
        tokio::time::timeout(
            std::time::Duration::from_secs(120),
            from.read_to_end(&mut back),
        )
        .await
        .unwrap_or_else(|_| panic!("stalled after {} of {total} bytes came back", back.len()))
        .expect("reading");
        writer.await.expect("writer");
        assert_eq!(back.len(), total);
        assert!(back == sent, "the echo came back changed");
        flooding.abort();
        drop(session);
        running.abort();
    }

    /// A pipe whose reads end anywhere in a packet, `Trickle` at both ends.
    fn trickling_pipe() -> (Trickle, Trickle) {
        let (ours, theirs) = tokio::io::duplex(8 << 20);
        (Trickle(ours), Trickle(theirs))
    }

    /// A pipe that holds 64 KiB each way, far less than a channel's window.
    fn narrow_pipe() -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
        tokio::io::duplex(64 << 10)
    }

    /// Two ends of a TCP connection on loopback.
    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (ours, theirs) =
            tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
        (ours.expect("connect"), theirs.expect("accept").0)
    }

    /// The patched russh receives channel data as slices of the packet it read
    /// (patches/russh/README.md). Through a pipe whose reads end anywhere in a packet, and
    /// with both sides rekeying every 256 KiB, 16 MiB go up to an echo and come back down
    /// as sent.
    #[tokio::test]
    async fn streams_through_partial_reads_and_rekeys_intact() {
        round_trip(trickling_pipe(), Echo::After, 256 << 10, 16 << 20).await;
    }

    /// Both directions at once, rekeying every 256 KiB: key exchanges start while data
    /// streams each way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_both_ways_at_once_through_rekeys() {
        round_trip(trickling_pipe(), Echo::AtOnce, 256 << 10, 16 << 20).await;
    }

    /// Both directions at once over TCP on loopback. The echo writes back only as fast as
    /// its relay takes what arrives: a session that waited for a channel's reader stalled
    /// here for good (patches/russh/README.md).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_both_ways_at_once_over_tcp() {
        round_trip(tcp_pair().await, Echo::AtOnce, 1 << 30, 64 << 20).await;
    }

    /// A channel whose reader stopped reading stops only that channel: the session goes on
    /// carrying the others. Published russh waited for the stopped reader in the session's
    /// loop, every channel with it (patches/russh/README.md).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_nobody_reads_stops_no_other() {
        round_trip(
            tcp_pair().await,
            Echo::AtOnceIgnoringTheFirst,
            1 << 30,
            16 << 20,
        )
        .await;
    }

    /// Both directions at once through a pipe that holds less than what either side has to
    /// write: each side must read while its writes wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_both_ways_at_once_through_a_narrow_pipe() {
        round_trip(narrow_pipe(), Echo::AtOnce, 1 << 30, 16 << 20).await;
    }

    /// Fills a buffer from the recycler, hands its bytes over (as to russh) and returns
    /// where its allocation starts with the bytes still held.
    fn hand_over(buffers: &mut Recycler) -> (*const u8, bytes::Bytes) {
        let mut buffer = buffers.take();
        assert!(buffer.capacity() >= RELAY_BUFFER);
        buffer.extend_from_slice(&[7; HAND_OVER_AT]);
        let start = buffer.as_ptr();
        let held = buffer.split().freeze();
        buffers.handed_over(buffer);
        (start, held)
    }

    #[test]
    fn a_relay_reads_into_a_buffer_again_once_its_bytes_were_dropped() {
        let mut buffers = Recycler::default();
        let (first, held) = hand_over(&mut buffers);
        let (second, held_second) = hand_over(&mut buffers);
        assert_ne!(first, second, "a buffer still held was read into");
        drop(held);
        let (third, _held_third) = hand_over(&mut buffers);
        assert_eq!(third, first, "the first buffer was not reused once free");
        drop(held_second);
        let (fourth, _) = hand_over(&mut buffers);
        assert_eq!(fourth, second);
    }

    #[test]
    fn a_relay_holds_at_most_a_few_buffers_russh_still_holds() {
        let mut buffers = Recycler::default();
        let held: Vec<_> = (0..RECYCLED * 3)
            .map(|_| hand_over(&mut buffers).1)
            .collect();
        assert_eq!(buffers.ring.len(), RECYCLED);
        drop(held);
        let mut kept = buffers.take();
        kept.extend_from_slice(b"typed");
        kept.clear();
        let start = kept.as_ptr();
        buffers.keep(kept);
        assert_eq!(
            buffers.take().as_ptr(),
            start,
            "a buffer read and copied is read into next"
        );
    }
}
