//! Reading while a write waits (patches/russh/README.md).
//!
//! A session's loop writes all its pending output before it reads again. Two sessions
//! whose output is larger than what the connection between them buffers (channel data up
//! to a whole window each way, over TCP on loopback with 2 MiB windows) then both wait to
//! write, and neither reads: they stall for good. While its write waits, a session here
//! keeps reading: the packets it reads are kept, in order, and processed before any read
//! after them.
//!
//! A packet can be kept only if the ones after it are read with the same keys: reading
//! ahead stops at the peer's `NEWKEYS`, and does not start at all on a compressed
//! connection, where a packet's type cannot be seen before it is processed. It also stops
//! when the packets kept reach the session's bound (`room`): what the peer may send into
//! the channels' windows and a little more, so a peer that never reads cannot make the
//! session hold more than that.

use std::collections::VecDeque;
use std::future::Future;
use std::num::Wrapping;
use std::pin::Pin;

use log::debug;
use tokio::io::AsyncWrite;

use crate::Error;
use crate::cipher::OpeningKey;
use crate::sshbuffer::{PacketWriter, SSHBuffer};

/// What a session's read returns: the bytes read, the stream, its buffer (holding the
/// decrypted packet) and the key it was opened with.
pub(crate) type Reading<R> = Result<(usize, R, SSHBuffer, Box<dyn OpeningKey + Send>), Error>;

/// Bytes a session may keep beyond its channels' windows: transport and channel messages
/// that carry no data (window adjustments, requests, replies) are small.
pub(crate) const READ_AHEAD_BEYOND_WINDOWS: usize = 256 * 1024;

/// A packet read while a write waited: as `cipher::read` left it in the read buffer, with
/// the buffer's sequence number and byte count after it.
struct Kept {
    packet: Vec<u8>,
    seqn: Wrapping<u32>,
    bytes: usize,
}

/// The packets a session read while writing, oldest first.
#[derive(Default)]
pub(crate) struct Inbox {
    packets: VecDeque<Kept>,
    bytes: usize,
}

impl Inbox {
    /// The oldest packet kept, in a read buffer of its own, as `cipher::read` left it
    /// then. It is processed with that buffer while the session's reader goes on with
    /// its own: no packet after new keys is read ahead, so nothing the reader needs
    /// changes.
    pub(crate) fn pop(&mut self) -> Option<SSHBuffer> {
        let kept = self.packets.pop_front()?;
        self.bytes = self.bytes.saturating_sub(kept.packet.len());
        Some(SSHBuffer {
            buffer: kept.packet,
            seqn: kept.seqn,
            bytes: kept.bytes,
            ..SSHBuffer::new()
        })
    }

    fn push(&mut self, kept: Kept) {
        self.bytes = self.bytes.saturating_add(kept.packet.len());
        self.packets.push_back(kept);
    }
}

/// Whether packets after this one (as `cipher::read` leaves it: length, padding length,
/// payload) are read with the same keys.
fn keys_stay(packet: &[u8]) -> bool {
    packet
        .get(5)
        .is_some_and(|&message| message != crate::msg::NEWKEYS)
}

/// Writes the session's pending output. While the write waits, reads packets into `inbox`
/// (at most `room` bytes of them); a read that must be processed before the session reads
/// again (new keys, the end of the stream, an error) is left in `early`, and `reading` is
/// not polled again until it was.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn flush<W, R, F>(
    writer: &mut PacketWriter,
    stream: &mut W,
    mut reading: Pin<&mut F>,
    restart: impl Fn(R, SSHBuffer, Box<dyn OpeningKey + Send>) -> F,
    early: &mut Option<Reading<R>>,
    inbox: &mut Inbox,
    room: usize,
    mut inactivity_timer: Pin<&mut impl Future<Output = ()>>,
) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
    F: Future<Output = Reading<R>>,
{
    let write = writer.flush_into(stream);
    tokio::pin!(write);
    loop {
        let may_read = early.is_none() && inbox.bytes < room;
        tokio::select! {
            biased;
            written = &mut write => return Ok(written?),
            read = reading.as_mut(), if may_read => match read {
                Ok((_, stream_read, mut buffer, key)) if keys_stay(&buffer.buffer) => {
                    inbox.push(Kept {
                        packet: std::mem::take(&mut buffer.buffer),
                        seqn: buffer.seqn,
                        bytes: buffer.bytes,
                    });
                    reading.set(restart(stream_read, buffer, key));
                }
                read => *early = Some(read),
            },
            () = &mut inactivity_timer => {
                debug!("timeout while writing");
                return Err(Error::InactivityTimeout);
            }
        }
    }
}
