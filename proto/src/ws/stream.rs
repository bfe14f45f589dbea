//! The WebSocket framing (RFC 6455, section 5) of an SSH byte stream, done in place.
//!
//! Each binary message carries bytes of the SSH stream and message boundaries mean
//! nothing, so no message is ever held whole: the connection is read up to 64 KiB at a
//! time, headers are parsed there, and payload bytes are copied once into the reader's
//! buffer (russh's packet buffer) and unmasked there. A server writes a frame's header and
//! the writer's bytes in one vectored write; a client must mask what it sends, so it
//! copies each frame once and masks the copy. A WebSocket library held each message whole,
//! copied it into and out of its own buffers and read 4 KiB at a time; that made SSH over
//! WebSocket cost 14–25 % of the throughput of SSH over TCP (bench/NOTES.md).
//!
//! What the stream does with the rest of the protocol: a ping is answered with a pong, a
//! pong is dropped, text messages are dropped (SSH is binary), a close ends the stream, and
//! closing the stream sends a close. Anything malformed is an error of the stream.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which end of the WebSocket: a client masks every frame it sends, and a server takes
/// only masked frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Largest data frame written: one SSH packet of russh's maximum fits.
const CHUNK: usize = 64 * 1024;
/// A control frame's payload is at most this long (RFC 6455, 5.5).
const MAX_CONTROL: usize = 125;
/// Most read from the connection at once.
const READ_BUFFER: usize = 64 * 1024;
/// A read or a write at least this long means bytes are streaming: the stream keeps its
/// buffer for the next one. After a shorter one (a keepalive, a keystroke, the last of a
/// transfer) an emptied buffer is let go, since every idle tunnel of the jump host would
/// hold it.
const STREAMING: usize = 4 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// Close status 1000, "normal closure".
const NORMAL_CLOSURE: [u8; 2] = 1000u16.to_be_bytes();

/// Where the reader is in the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Gathering a frame's header.
    Header,
    /// Bytes of a binary message's frame still to hand out.
    Data { left: u64 },
    /// Bytes of a text message's frame still to drop.
    Skip { left: u64 },
    /// A control frame's payload being gathered.
    Control { op: u8, len: usize },
    /// The peer closed, or the stream failed: end of stream.
    Closed,
}

/// A WebSocket as a byte stream, on an upgraded connection `S`.
pub struct WsStream<S> {
    io: S,
    role: Role,
    /// Bytes read from the connection and not yet handed out: frame headers and payload.
    /// Let go when it is empty and the connection has nothing more (see [`STREAMING`]), so
    /// an idle stream holds none.
    read: BytesMut,
    reading: Reading,
    head: [u8; 14],
    head_len: usize,
    /// The mask of the frame being read, and how far into its payload the reader is.
    mask: Option<[u8; 4]>,
    mask_at: usize,
    control: [u8; MAX_CONTROL],
    control_len: usize,
    /// A fragmented message is under way, and whether it is text (dropped).
    in_message: bool,
    text: bool,
    /// Encoded frames, or the rest of one, that the connection has not taken yet.
    out: Vec<u8>,
    out_at: usize,
    /// A pong owed, sent once the frame being written is complete.
    pong: Option<Vec<u8>>,
    close_sent: bool,
    /// A write or flush is waiting for the connection to take bytes. The reader must not
    /// write then: a socket wakes only the last task that polled it for writing, and the
    /// writer would never hear (russh reads and writes from two halves of the stream).
    writer_waiting: bool,
    /// Whether the last read and the last frame written were long ([`STREAMING`]).
    reads_streaming: bool,
    writes_streaming: bool,
}

impl<S> WsStream<S> {
    /// `io` is the connection right after the handshake: its next byte is a frame's.
    pub fn new(io: S, role: Role) -> Self {
        Self {
            io,
            role,
            read: BytesMut::new(),
            reading: Reading::Header,
            head: [0; 14],
            head_len: 0,
            mask: None,
            mask_at: 0,
            control: [0; MAX_CONTROL],
            control_len: 0,
            in_message: false,
            text: false,
            out: Vec::new(),
            out_at: 0,
            pong: None,
            close_sent: false,
            writer_waiting: false,
            reads_streaming: false,
            writes_streaming: false,
        }
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {why}"))
}

/// XORs `data` with `mask`, `at` bytes into the payload it belongs to; eight bytes at a
/// time, which the compiler vectorizes.
fn apply_mask(data: &mut [u8], mask: [u8; 4], at: usize) {
    let mut pattern = [0u8; 8];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = mask[(at + i) % 4];
    }
    let word = u64::from_ne_bytes(pattern);
    let mut words = data.chunks_exact_mut(8);
    for chunk in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (b, m) in words.into_remainder().iter_mut().zip(pattern) {
        *b ^= m;
    }
}

/// A frame's header: final, `op`, `len` bytes of payload, masked with `mask` if given.
fn header(op: u8, len: usize, mask: Option<[u8; 4]>) -> ([u8; 14], usize) {
    let mut h = [0u8; 14];
    h[0] = 0x80 | op;
    let masked = if mask.is_some() { 0x80 } else { 0 };
    let mut n = 2;
    if len < 126 {
        h[1] = masked | len as u8;
    } else if let Ok(len) = u16::try_from(len) {
        h[1] = masked | 126;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        n = 4;
    } else {
        h[1] = masked | 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        n = 10;
    }
    if let Some(mask) = mask {
        h[n..n + 4].copy_from_slice(&mask);
        n += 4;
    }
    (h, n)
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// What is read and not handed out yet, reading the connection if that is nothing;
    /// empty at the connection's end.
    fn poll_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        if self.read.is_empty() {
            self.read.reserve(READ_BUFFER);
            // Into the buffer's spare capacity, as it is: no zeroing first.
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read) {
                Poll::Pending => {
                    if !self.reads_streaming {
                        self.read = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => self.reads_streaming = n >= STREAMING,
            }
        }
        Poll::Ready(Ok(&self.read[..]))
    }

    /// Reads into `dst`, as much as is there; 0 at the connection's end.
    fn poll_raw(&mut self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<io::Result<usize>> {
        let there = ready!(self.poll_buffered(cx))?;
        let n = dst.len().min(there.len());
        dst[..n].copy_from_slice(&there[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(n))
    }

    /// Reads what is missing of `dst`; an end of stream here is in the middle of a frame.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut [u8],
        have: &mut usize,
    ) -> Poll<io::Result<()>> {
        while *have < dst.len() {
            let n = ready!(self.poll_raw(cx, &mut dst[*have..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "WebSocket: the connection ended inside a frame",
                )));
            }
            *have += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads one frame's header and decides what its payload is. The connection ending
    /// before a frame is the end of the stream.
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.head_len == 0 {
            let mut first = [0u8; 2];
            let n = ready!(self.poll_raw(cx, &mut first))?;
            if n == 0 {
                self.reading = Reading::Closed;
                return Poll::Ready(Ok(()));
            }
            self.head[..n].copy_from_slice(&first[..n]);
            self.head_len = n;
        }
        let mut head = self.head;
        let mut have = self.head_len;
        // Two bytes say how long the rest of the header is.
        let done = self.poll_fill(cx, &mut head[..2], &mut have);
        self.head = head;
        self.head_len = have;
        ready!(done)?;
        let (b0, b1) = (self.head[0], self.head[1]);
        let masked = b1 & 0x80 != 0;
        let extended = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let total = 2 + extended + if masked { 4 } else { 0 };
        let done = self.poll_fill(cx, &mut head[..total], &mut have);
        self.head = head;
        self.head_len = have;
        ready!(done)?;
        self.head_len = 0;

        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return Poll::Ready(Err(invalid("reserved bits set (no extension was agreed)")));
        }
        let len = match extended {
            2 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&head[2..10]);
                u64::from_be_bytes(b)
            }
            _ => u64::from(b1 & 0x7F),
        };
        if len >> 63 != 0 {
            return Poll::Ready(Err(invalid("frame length over 2^63")));
        }
        self.mask = if masked {
            let mut m = [0u8; 4];
            m.copy_from_slice(&head[total - 4..total]);
            Some(m)
        } else {
            None
        };
        self.mask_at = 0;
        match (self.role, masked) {
            (Role::Server, false) => {
                return Poll::Ready(Err(invalid("unmasked frame from the client")));
            }
            (Role::Client, true) => {
                return Poll::Ready(Err(invalid("masked frame from the server")));
            }
            _ => {}
        }
        self.reading = match op {
            OP_BINARY | OP_TEXT => {
                if self.in_message {
                    return Poll::Ready(Err(invalid("new message inside a fragmented one")));
                }
                self.in_message = !fin;
                self.text = op == OP_TEXT;
                self.data(len)
            }
            OP_CONTINUATION => {
                if !self.in_message {
                    return Poll::Ready(Err(invalid("continuation without a message")));
                }
                self.in_message = !fin;
                self.data(len)
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > MAX_CONTROL as u64 {
                    return Poll::Ready(Err(invalid("fragmented or oversized control frame")));
                }
                self.control_len = 0;
                Reading::Control {
                    op,
                    len: len as usize,
                }
            }
            _ => return Poll::Ready(Err(invalid(&format!("unknown opcode {op:#x}")))),
        };
        Poll::Ready(Ok(()))
    }

    fn data(&self, left: u64) -> Reading {
        if self.text {
            Reading::Skip { left }
        } else {
            Reading::Data { left }
        }
    }

    /// Reads a control frame's payload and acts on it.
    fn poll_control(&mut self, cx: &mut Context<'_>, op: u8, len: usize) -> Poll<io::Result<()>> {
        let mut control = self.control;
        let mut have = self.control_len;
        let done = self.poll_fill(cx, &mut control[..len], &mut have);
        self.control = control;
        self.control_len = have;
        ready!(done)?;
        let mut payload = self.control[..len].to_vec();
        if let Some(mask) = self.mask {
            apply_mask(&mut payload, mask, 0);
        }
        self.reading = Reading::Header;
        match op {
            OP_PING => {
                // Only the latest ping needs its answer (RFC 6455, 5.5.3).
                self.pong = Some(payload);
                if let Poll::Ready(Err(e)) = self.poll_drain_from_reader(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            OP_CLOSE => self.reading = Reading::Closed,
            _ => {}
        }
        Poll::Ready(Ok(()))
    }

    /// Sends what is queued from the reading side, unless a writer is waiting (then it
    /// goes out with that writer's bytes). Queued bytes then never wait for the stream's
    /// next write, which an idle SSH session may not make for a while.
    fn poll_drain_from_reader(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.writer_waiting || (self.out_at == self.out.len() && self.pong.is_none()) {
            return Poll::Ready(Ok(()));
        }
        self.poll_drain(cx)
    }

    /// Writes out what is queued: the rest of a frame, then a pong owed.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.out_at < self.out.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.out_at += n;
            }
            self.out.clear();
            self.out_at = 0;
            if !self.writes_streaming {
                self.out = Vec::new();
            }
            match self.pong.take() {
                Some(payload) => self.queue(OP_PONG, &payload),
                None => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Encodes one frame into the queue, masked by a client.
    fn queue(&mut self, op: u8, payload: &[u8]) {
        let mask = match self.role {
            Role::Client => Some(rand::random::<[u8; 4]>()),
            Role::Server => None,
        };
        let (h, n) = header(op, payload.len(), mask);
        self.out.reserve(n + payload.len());
        self.out.extend_from_slice(&h[..n]);
        let start = self.out.len();
        self.out.extend_from_slice(payload);
        if let Some(mask) = mask {
            apply_mask(&mut self.out[start..], mask, 0);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(Err(e)) = this.poll_drain_from_reader(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            let step = match this.reading {
                Reading::Closed => return Poll::Ready(Ok(())),
                Reading::Header => this.poll_header(cx),
                Reading::Control { op, len } => this.poll_control(cx, op, len),
                Reading::Skip { left: 0 } | Reading::Data { left: 0 } => {
                    this.reading = Reading::Header;
                    continue;
                }
                Reading::Skip { left } => {
                    let mut scratch = [0u8; 512];
                    let want = scratch
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    let mut have = 0;
                    match this.poll_fill(cx, &mut scratch[..want], &mut have) {
                        Poll::Pending if have == 0 => Poll::Pending,
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        _ => {
                            this.reading = Reading::Skip {
                                left: left - have as u64,
                            };
                            Poll::Ready(Ok(()))
                        }
                    }
                }
                Reading::Data { left } => {
                    let there = match this.poll_buffered(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(there)) => there,
                    };
                    if there.is_empty() {
                        this.reading = Reading::Closed;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "WebSocket: the connection ended inside a frame",
                        )));
                    }
                    let n = buf
                        .remaining()
                        .min(there.len())
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    // One pass over the bytes: copied into the reader's buffer (which may
                    // be uninitialized memory, so nothing is zeroed first), then unmasked
                    // there while still in cache.
                    let start = buf.filled().len();
                    buf.put_slice(&there[..n]);
                    this.read.advance(n);
                    if let Some(mask) = this.mask {
                        apply_mask(&mut buf.filled_mut()[start..], mask, this.mask_at);
                        this.mask_at = (this.mask_at + n) % 4;
                    }
                    this.reading = Reading::Data {
                        left: left - n as u64,
                    };
                    return Poll::Ready(Ok(()));
                }
            };
            match step {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.reading = Reading::Closed;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.poll_write_frame(cx, buf);
        this.writer_waiting = written.is_pending();
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        };
        this.writer_waiting = flushed.is_pending();
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let closed = this.poll_close(cx);
        this.writer_waiting = closed.is_pending();
        closed
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    fn poll_write_frame(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(CHUNK);
        self.writes_streaming = n >= STREAMING;
        if self.role == Role::Server && self.io.is_write_vectored() {
            let (h, hn) = header(OP_BINARY, n, None);
            let parts = [IoSlice::new(&h[..hn]), IoSlice::new(&buf[..n])];
            // Pending here has taken nothing, which is what the caller is told.
            let wrote = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &parts))?;
            if wrote == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            // The frame is promised now: what the connection did not take waits in the
            // queue, ahead of anything else.
            if wrote < hn {
                self.out.extend_from_slice(&h[wrote..hn]);
                self.out.extend_from_slice(&buf[..n]);
            } else if wrote < hn + n {
                self.out.extend_from_slice(&buf[wrote - hn..n]);
            }
        } else {
            self.queue(OP_BINARY, &buf[..n]);
            if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    /// Sends a close frame once, then ends the connection's sending side.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        if !self.close_sent {
            self.close_sent = true;
            self.queue(OP_CLOSE, &NORMAL_CLOSURE);
            ready!(self.poll_drain(cx))?;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// A frame as a peer would send it.
    fn frame(op: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let (mut h, n) = header(op, payload.len(), mask);
        if !fin {
            h[0] &= 0x7F;
        }
        let mut f = h[..n].to_vec();
        let start = f.len();
        f.extend_from_slice(payload);
        if let Some(mask) = mask {
            apply_mask(&mut f[start..], mask, 0);
        }
        f
    }

    #[test]
    fn masking_at_any_offset_matches_byte_by_byte() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..=255).collect();
        for at in 0..4 {
            for len in [0, 1, 7, 8, 9, 31, 256] {
                let mut fast = data[..len].to_vec();
                apply_mask(&mut fast, mask, at);
                let slow: Vec<u8> = data[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(at + i) % 4])
                    .collect();
                assert_eq!(fast, slow, "at {at}, len {len}");
            }
        }
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(header(OP_BINARY, 125, None).1, 2);
        assert_eq!(header(OP_BINARY, 126, None).1, 4);
        assert_eq!(header(OP_BINARY, 65_535, None).1, 4);
        let (h, n) = header(OP_BINARY, 65_536, Some([1, 2, 3, 4]));
        assert_eq!(n, 14);
        assert_eq!(h[..2], [0x82, 0x80 | 127]);
        assert_eq!(h[10..14], [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn fragments_pings_text_and_close_read_as_a_stream() {
        let (mut peer, ours) = duplex(1 << 20);
        let mut ws = WsStream::new(ours, Role::Server);
        let m = Some([9, 8, 7, 6]);
        let mut wire = Vec::new();
        wire.extend(frame(OP_BINARY, false, b"hel", m));
        wire.extend(frame(OP_PING, true, b"are you there", m));
        wire.extend(frame(OP_CONTINUATION, true, b"lo ", m));
        wire.extend(frame(OP_TEXT, false, b"dropped", m));
        wire.extend(frame(OP_CONTINUATION, true, b" too", m));
        wire.extend(frame(OP_BINARY, true, b"", m));
        wire.extend(frame(OP_PONG, true, b"", m));
        wire.extend(frame(OP_BINARY, true, &[b'x'; 70_000], m));
        wire.extend(frame(OP_CLOSE, true, &NORMAL_CLOSURE, m));
        wire.extend(frame(OP_BINARY, true, b"after the close", m));
        peer.write_all(&wire).await.unwrap();
        let mut got = Vec::new();
        ws.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..6], b"hello ");
        assert_eq!(got.len(), 6 + 70_000);
        assert!(got[6..].iter().all(|b| *b == b'x'));
        // The ping was answered at once, unmasked from a server, with its payload.
        let mut pong = vec![0u8; 2 + 13];
        peer.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, frame(OP_PONG, true, b"are you there", None));
    }

    #[tokio::test]
    async fn broken_frames_are_errors() {
        let cases: [(Role, Vec<u8>, &str); 6] = [
            (Role::Server, frame(OP_BINARY, true, b"x", None), "unmasked"),
            (
                Role::Client,
                frame(OP_BINARY, true, b"x", Some([1; 4])),
                "masked",
            ),
            (
                Role::Client,
                frame(OP_CONTINUATION, true, b"x", None),
                "continuation",
            ),
            (Role::Client, frame(OP_PING, false, b"x", None), "control"),
            (Role::Client, frame(0x3, true, b"x", None), "opcode"),
            (
                Role::Client,
                {
                    let mut f = frame(OP_BINARY, true, b"x", None);
                    f[0] |= 0x40;
                    f
                },
                "reserved",
            ),
        ];
        for (role, wire, why) in cases {
            let (mut peer, ours) = duplex(1024);
            let mut ws = WsStream::new(ours, role);
            peer.write_all(&wire).await.unwrap();
            let mut got = [0u8; 8];
            let e = ws.read(&mut got).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{why}");
            assert!(e.to_string().contains(why), "{e} should say {why}");
            // Nothing more comes out of a failed stream.
            assert_eq!(ws.read(&mut got).await.unwrap(), 0);
        }
    }

    #[tokio::test]
    async fn a_connection_ending_inside_a_frame_is_an_error() {
        let (mut peer, ours) = duplex(1024);
        let mut ws = WsStream::new(ours, Role::Client);
        let f = frame(OP_BINARY, true, b"truncated", None);
        peer.write_all(&f[..6]).await.unwrap();
        drop(peer);
        let mut got = Vec::new();
        let e = ws.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got, b"trun");
    }

    /// Each side's writes through a pipe that takes few bytes at a time, read back by the
    /// other role: partial writes keep frames whole.
    #[tokio::test]
    async fn both_roles_round_trip_through_a_narrow_pipe() {
        for (writer, reader) in [(Role::Client, Role::Server), (Role::Server, Role::Client)] {
            let (a, b) = duplex(1000);
            let mut tx = WsStream::new(a, writer);
            let mut rx = WsStream::new(b, reader);
            let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let sent = payload.clone();
            let send = tokio::spawn(async move {
                tx.write_all(&sent).await.unwrap();
                tx.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            rx.read_to_end(&mut got).await.unwrap();
            send.await.unwrap();
            assert!(got == payload, "{writer:?} to {reader:?}");
        }
    }
}
