//! What a server said before, or instead of, SSH: the jump host's refusal line (a penalty,
//! a ban, an address not allowed; see `limits::REFUSAL_LINE_PREFIX`), or an HTTP or TLS
//! answer from a port that is not an SSH port. Read from the first bytes an SSH handshake
//! received, so a client whose handshake failed can say which it was.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes kept from the start of a connection: a refusal or an HTTP status line fits.
const KEEP: usize = 2048;

/// A stream that keeps a copy of the first [`KEEP`] bytes read from it.
pub struct Recorder<S> {
    inner: S,
    kept: usize,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<S> Recorder<S> {
    /// Wraps `inner`; the returned buffer fills as the handshake reads.
    pub fn new(inner: S) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = Self {
            inner,
            kept: 0,
            seen: Arc::clone(&seen),
        };
        (recorder, seen)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.kept < KEEP {
            let new = &buf.filled()[before..];
            let take = new.len().min(KEEP - self.kept);
            if take > 0 {
                if let Ok(mut seen) = self.seen.lock() {
                    seen.extend_from_slice(&new[..take]);
                }
                self.kept += take;
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the first bytes of a failed handshake say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// The jump host's own words before it closed.
    Refused(String),
    /// Not an SSH server: `HTTP`, `TLS`, or its first line quoted.
    NotSsh(String),
}

/// Why a handshake failed, if its first bytes tell. `None` when nothing (or SSH) came.
pub fn read(seen: &Mutex<Vec<u8>>) -> Option<Greeting> {
    let seen = seen.lock().ok()?.clone();
    let text = String::from_utf8_lossy(&seen);
    if let Some(words) = text
        .lines()
        .find_map(|l| l.strip_prefix(crate::limits::REFUSAL_LINE_PREFIX))
    {
        return Some(Greeting::Refused(printable(words)));
    }
    let what = match seen.as_slice() {
        [] => return None,
        s if s.starts_with(b"SSH-") || text.lines().any(|l| l.starts_with("SSH-")) => {
            return None;
        }
        s if s.starts_with(b"HTTP/") => "HTTP".to_owned(),
        // A TLS record: an alert (21) or a handshake (22), version 3.x.
        [21 | 22, 3, ..] => "TLS".to_owned(),
        _ => format!("{:?}", printable(text.lines().next().unwrap_or_default())),
    };
    Some(Greeting::NotSsh(what))
}

/// What a peer said, safe to show: control characters (line breaks, escapes) dropped, at
/// most 400 characters.
pub fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(400).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn seen(bytes: &[u8]) -> Mutex<Vec<u8>> {
        Mutex::new(bytes.to_vec())
    }

    #[test]
    fn refusal_http_tls_and_ssh_are_told_apart() {
        assert_eq!(
            read(&seen(
                b"assist-jumphost: refused: your address 127.0.0.1 is banned\r\n"
            )),
            Some(Greeting::Refused("your address 127.0.0.1 is banned".into()))
        );
        assert_eq!(
            read(&seen(b"HTTP/1.1 400 Bad Request\r\n\r\n")),
            Some(Greeting::NotSsh("HTTP".into()))
        );
        assert_eq!(
            read(&seen(&[21, 3, 3, 0, 2, 2, 70])),
            Some(Greeting::NotSsh("TLS".into()))
        );
        assert_eq!(
            read(&seen(b"220 mail ESMTP\r\n")),
            Some(Greeting::NotSsh("\"220 mail ESMTP\"".into()))
        );
        assert_eq!(read(&seen(b"SSH-2.0-OpenSSH_9.2\r\n")), None);
        assert_eq!(read(&seen(b"")), None);
    }

    #[tokio::test]
    async fn keeps_only_the_start() {
        use tokio::io::AsyncReadExt;
        let data = vec![b'x'; KEEP * 2];
        let (mut r, kept) = Recorder::new(&data[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len(), KEEP * 2);
        assert_eq!(kept.lock().unwrap().len(), KEEP);
    }
}
