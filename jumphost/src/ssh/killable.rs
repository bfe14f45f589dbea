//! A connection's socket that the jump host can close whatever russh's session is doing.
//!
//! `run_stream` spawns the session and gives back a handle to its task; dropping that does
//! not stop it. A session that never finished its key exchange does not act on
//! `Handle::disconnect`, so after a login grace time it went on holding its socket and task
//! (until keepalives gave up, or forever), outside every limit. Wrapped in [`Killable`], its
//! reads and writes fail once the token is cancelled, the session ends and the socket is
//! closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub struct Killable<S> {
    inner: S,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    dead: bool,
}

impl<S> Killable<S> {
    pub fn new(inner: S, kill: CancellationToken) -> Self {
        Self {
            inner,
            killed: Box::pin(kill.cancelled_owned()),
            dead: false,
        }
    }

    /// Whether the token was cancelled; registers `cx` to be woken when it is.
    fn dead(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "closed by the jump host")
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead(cx) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.dead(cx) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead(cx) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_pending_read_fails_when_killed_and_the_peer_sees_the_close() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let kill = CancellationToken::new();
        let mut ours = Killable::new(ours, kill.clone());
        theirs.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        ours.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        // A read waiting for bytes that never come…
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let result = ours.read(&mut buf).await;
            drop(ours);
            result
        });
        kill.cancel();
        // …is woken with an error, and the dropped stream closes the other end.
        let result = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn writes_fail_once_killed() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let kill = CancellationToken::new();
        let mut ours = Killable::new(ours, kill.clone());
        ours.write_all(b"ok").await.unwrap();
        kill.cancel();
        assert!(ours.write_all(b"no").await.is_err());
    }
}
