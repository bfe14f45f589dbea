//! The engineer's stdin, read in pieces that become SSH messages as they are. A pipe or a
//! socket is read on the runtime's own thread (non-blocking while we hold it): a read lands
//! in the buffer that is sent, with no thread to hand it over. A terminal or a file, which
//! cannot be waited for that way, is read by a plain thread.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use rustix::fs::OFlags;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;

/// Bytes asked for at once. A pipe hands out at most its capacity per read; a file read by
/// the thread comes in pieces this size.
const CHUNK: usize = 256 * 1024;

/// What a pipe on stdin is grown to hold. Read on the runtime's one thread, a pipe of the
/// default 64 KiB made the writer wait for each 64 KiB read between two encryptions (upload
/// 16 % slower than with a thread draining it: bench/NOTES.md); this much lets the writer
/// run ahead as the thread's queue did, and a read take up to a whole piece.
const PIPE_CAPACITY: usize = 1024 * 1024;

/// The engineer's stdin (or any file descriptor, for tests).
pub struct Stdin {
    source: Source,
    /// Set when this made the file description non-blocking: puts it back on drop, as the
    /// description is shared with whoever gave us stdin (a shell reading the same pipe).
    _restore: Option<Blocking>,
}

enum Source {
    Pipe(tokio::net::unix::pipe::Receiver),
    Socket(tokio::net::UnixStream),
    /// Pieces read by a thread; `pending` is what a short `poll_read` left of one.
    Thread {
        pieces: mpsc::Receiver<Bytes>,
        pending: Bytes,
    },
}

impl Stdin {
    /// Stdin of this process. A closed stdin reads as empty.
    pub fn open() -> Self {
        match io::stdin().as_fd().try_clone_to_owned() {
            Ok(fd) => Self::from_fd(fd),
            Err(e) => {
                tracing::debug!("stdin: {e}");
                Self::thread_over(None)
            }
        }
    }

    /// Reads `fd` (a duplicate of stdin, or anything in tests). Must be called within the
    /// runtime when `fd` may be a pipe or a socket.
    pub fn from_fd(fd: OwnedFd) -> Self {
        use rustix::fs::FileType;
        let kind = rustix::fs::fstat(&fd).map(|st| FileType::from_raw_mode(st.st_mode));
        if let Ok(kind @ (FileType::Fifo | FileType::Socket)) = kind {
            match Self::nonblocking(fd.try_clone(), kind == FileType::Fifo) {
                Ok(stdin) => return stdin,
                Err(e) => tracing::debug!("stdin not waitable, read by a thread: {e}"),
            }
        }
        Self::thread_over(Some((fd, kind == Ok(FileType::RegularFile))))
    }

    fn nonblocking(fd: io::Result<OwnedFd>, fifo: bool) -> io::Result<Self> {
        let fd = fd?;
        let restore = Blocking::set_nonblocking(&fd)?;
        let source = if fifo {
            grow_pipe(&fd);
            Source::Pipe(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?)
        } else {
            let std = std::os::unix::net::UnixStream::from(fd);
            Source::Socket(tokio::net::UnixStream::from_std(std)?)
        };
        Ok(Self {
            source,
            _restore: restore,
        })
    }

    fn thread_over(fd: Option<(OwnedFd, bool)>) -> Self {
        let (tx, pieces) = mpsc::channel(8);
        if let Some((fd, regular)) = fd {
            std::thread::spawn(move || read_on_thread(std::fs::File::from(fd), regular, &tx));
        }
        Self {
            source: Source::Thread {
                pieces,
                pending: Bytes::new(),
            },
            _restore: None,
        }
    }

    /// The next piece of input, `None` at its end (a read error ends it too, as EOF: the
    /// far end is told the input is over either way). A pipe's or socket's piece is read
    /// into `buffer`'s spare room and split off, so nothing is copied on the way to SSH.
    pub async fn piece(&mut self, buffer: &mut BytesMut) -> Option<Bytes> {
        let read = match &mut self.source {
            Source::Pipe(pipe) => read_into(pipe, buffer).await,
            Source::Socket(socket) => read_into(socket, buffer).await,
            Source::Thread { pieces, pending } => {
                return match std::mem::take(pending) {
                    left if !left.is_empty() => Some(left),
                    _ => pieces.recv().await,
                };
            }
        };
        match read {
            Ok(0) => None,
            Ok(_) => Some(buffer.split().freeze()),
            Err(e) => {
                tracing::debug!("reading stdin: {e}");
                None
            }
        }
    }
}

/// Grows the pipe to [`PIPE_CAPACITY`] where the system allows (an unprivileged process may
/// go up to `/proc/sys/fs/pipe-max-size`, 1 MiB by default); a pipe left as it is works too.
fn grow_pipe(fd: &OwnedFd) {
    match rustix::pipe::fcntl_getpipe_size(fd) {
        Ok(size) if size >= PIPE_CAPACITY => {}
        _ => {
            if let Err(e) = rustix::pipe::fcntl_setpipe_size(fd, PIPE_CAPACITY) {
                tracing::debug!("growing the stdin pipe: {e}");
            }
        }
    }
}

async fn read_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
) -> io::Result<usize> {
    buffer.clear();
    // Free again once the last piece is sent, or a new allocation.
    buffer.reserve(CHUNK);
    reader.read_buf(buffer).await
}

/// For `tokio::io::join` and relays that read into their own buffers.
impl AsyncRead for Stdin {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.source {
            Source::Pipe(pipe) => Pin::new(pipe).poll_read(cx, buf),
            Source::Socket(socket) => Pin::new(socket).poll_read(cx, buf),
            Source::Thread { pieces, pending } => {
                if pending.is_empty() {
                    match ready!(pieces.poll_recv(cx)) {
                        Some(piece) => *pending = piece,
                        None => return Poll::Ready(Ok(())),
                    }
                }
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending.split_to(n));
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// Reads `file` until its end into pieces for `tx`. A regular file is read straight into
/// each piece's allocation (it never blocks for long, so a full piece is read at once); a
/// terminal hands out what was typed, which is copied out of one reused buffer.
fn read_on_thread(file: std::fs::File, regular: bool, tx: &mpsc::Sender<Bytes>) {
    use std::io::Read;
    let mut scratch = if regular { Vec::new() } else { vec![0; CHUNK] };
    loop {
        let piece = if regular {
            let mut piece = Vec::with_capacity(CHUNK);
            (&file)
                .take(CHUNK as u64)
                .read_to_end(&mut piece)
                .map(|_| Bytes::from(piece))
        } else {
            (&file)
                .read(&mut scratch)
                .map(|n| Bytes::copy_from_slice(&scratch[..n]))
        };
        match piece {
            Ok(piece) if piece.is_empty() => return,
            Ok(piece) => {
                if tx.blocking_send(piece).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("reading stdin: {e}");
                return;
            }
        }
    }
}

/// Puts `O_NONBLOCK` back off on drop, through a descriptor of its own (the reader's may be
/// gone with the runtime by then).
struct Blocking(OwnedFd);

impl Blocking {
    /// Makes `fd`'s file description non-blocking; `None` when it already was.
    fn set_nonblocking(fd: &OwnedFd) -> io::Result<Option<Self>> {
        let flags = rustix::fs::fcntl_getfl(fd)?;
        if flags.contains(OFlags::NONBLOCK) {
            return Ok(None);
        }
        let restore = fd.try_clone()?;
        rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)?;
        Ok(Some(Self(restore)))
    }
}

impl Drop for Blocking {
    fn drop(&mut self) {
        if let Ok(flags) = rustix::fs::fcntl_getfl(&self.0) {
            let _ = rustix::fs::fcntl_setfl(&self.0, flags - OFlags::NONBLOCK);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    /// 8 MiB that no two offsets repeat within a piece, so a lost, doubled or reordered piece
    /// changes the bytes.
    fn data() -> Vec<u8> {
        (0..8u32 << 20)
            .map(|i| (i ^ (i >> 11) ^ (i >> 19)) as u8)
            .collect()
    }

    /// Reads `stdin` piece by piece to its end; no piece is empty.
    async fn drain(stdin: &mut Stdin) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buffer = BytesMut::new();
        while let Some(piece) = stdin.piece(&mut buffer).await {
            assert!(!piece.is_empty());
            got.extend_from_slice(&piece);
        }
        got
    }

    /// Writes `data` into `writer` on a thread and closes it; reads `stdin` to its end.
    async fn pump(
        mut stdin: Stdin,
        mut writer: impl Write + Send + 'static,
        data: Vec<u8>,
    ) -> Vec<u8> {
        let writing = std::thread::spawn(move || writer.write_all(&data).unwrap());
        let got = drain(&mut stdin).await;
        writing.join().unwrap();
        got
    }

    fn nonblocking(fd: &impl AsFd) -> bool {
        rustix::fs::fcntl_getfl(fd)
            .unwrap()
            .contains(OFlags::NONBLOCK)
    }

    #[tokio::test]
    async fn a_pipe_is_read_in_place_to_its_end_and_left_blocking() {
        let (reader, writer) = std::io::pipe().unwrap();
        let ours = reader.try_clone().unwrap();
        let stdin = Stdin::from_fd(reader.into());
        assert!(matches!(stdin.source, Source::Pipe(_)));
        assert!(nonblocking(&ours), "waited for through the runtime");
        assert_eq!(
            rustix::pipe::fcntl_getpipe_size(&ours).unwrap(),
            PIPE_CAPACITY
        );
        let want = data();
        let got = pump(stdin, writer, want.clone()).await;
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
        assert!(!nonblocking(&ours), "O_NONBLOCK left on a shared pipe");
    }

    #[tokio::test]
    async fn a_socket_is_read_in_place_to_its_end_and_left_blocking() {
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let ours = reader.try_clone().unwrap();
        let stdin = Stdin::from_fd(reader.into());
        assert!(matches!(stdin.source, Source::Socket(_)));
        let want = data();
        let got = pump(stdin, writer, want.clone()).await;
        assert!(got == want, "bytes differ");
        assert!(!nonblocking(&ours));
    }

    #[tokio::test]
    async fn an_already_nonblocking_pipe_stays_so() {
        let (reader, writer) = std::io::pipe().unwrap();
        rustix::fs::fcntl_setfl(&reader, OFlags::NONBLOCK).unwrap();
        let ours = reader.try_clone().unwrap();
        let got = pump(Stdin::from_fd(reader.into()), writer, b"abc".to_vec()).await;
        assert_eq!(got, b"abc");
        assert!(nonblocking(&ours));
    }

    #[tokio::test]
    async fn a_file_is_read_by_a_thread_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input");
        let want = data();
        std::fs::write(&path, &want).unwrap();
        let mut stdin = Stdin::from_fd(std::fs::File::open(&path).unwrap().into());
        assert!(matches!(stdin.source, Source::Thread { .. }));
        let got = drain(&mut stdin).await;
        assert!(got == want, "bytes differ");
    }

    #[tokio::test]
    async fn async_read_gives_the_same_bytes_from_a_thread_and_a_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input");
        let want = data();
        std::fs::write(&path, &want).unwrap();
        let mut from_file = Vec::new();
        Stdin::from_fd(std::fs::File::open(&path).unwrap().into())
            .read_to_end(&mut from_file)
            .await
            .unwrap();
        assert!(from_file == want, "file bytes differ");

        let (reader, mut writer) = std::io::pipe().unwrap();
        let sent = want.clone();
        let writing = std::thread::spawn(move || writer.write_all(&sent).unwrap());
        let mut from_pipe = Vec::new();
        Stdin::from_fd(reader.into())
            .read_to_end(&mut from_pipe)
            .await
            .unwrap();
        writing.join().unwrap();
        assert!(from_pipe == want, "pipe bytes differ");
    }

    #[tokio::test]
    async fn dev_null_is_an_empty_input() {
        let mut stdin = Stdin::from_fd(std::fs::File::open("/dev/null").unwrap().into());
        assert!(matches!(stdin.source, Source::Thread { .. }));
        assert!(stdin.piece(&mut BytesMut::new()).await.is_none());
    }
}
