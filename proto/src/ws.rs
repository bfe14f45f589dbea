//! SSH inside a WebSocket (`GET /v1/ssh` on the jump host's API port), so one HTTPS port
//! carries registration and tunnels and HTTP proxies and reverse proxies pass it.
//!
//! Each binary message carries bytes of the SSH stream; message boundaries mean nothing.
//! [`WsIo`] reads and writes a WebSocket as an ordinary byte stream for russh, on either
//! end, without a buffer or a task of its own: an idle tunnel holds only what the
//! WebSocket library holds, which the two ends keep small ([`SERVER_BUFFER`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The path of the SSH service on the jump host's API listener.
pub const SSH_PATH: &str = "/v1/ssh";
/// Largest binary message sent: one SSH packet of russh's maximum plus framing fits.
const CHUNK: usize = 64 * 1024;
/// The WebSocket library's read buffer on the jump host: per idle tunnel, so small.
pub const SERVER_BUFFER: usize = 4 * 1024;

/// What a received message means for the byte stream.
pub enum Payload {
    Data(Bytes),
    /// The peer closed the WebSocket.
    Close,
    /// Ping, pong or text: nothing for the stream (pings are answered by the library).
    Skip,
}

/// A WebSocket as a byte stream. `binary` makes a message from bytes and `payload` reads
/// one, so both tungstenite's and axum's message types fit.
pub struct WsIo<S, M> {
    ws: S,
    /// What is left of the last message read.
    pending: Bytes,
    closed: bool,
    binary: fn(Bytes) -> M,
    payload: fn(M) -> Payload,
}

impl<S, M> WsIo<S, M> {
    pub fn new(ws: S, binary: fn(Bytes) -> M, payload: fn(M) -> Payload) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            closed: false,
            binary,
            payload,
        }
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl<S, M, E> AsyncRead for WsIo<S, M>
where
    S: Stream<Item = Result<M, E>> + Unpin,
    E: std::fmt::Display,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = buf.remaining().min(this.pending.len());
                buf.put_slice(&this.pending.split_to(n));
                if this.pending.is_empty() {
                    // An empty slice still holds the library's read buffer it came from,
                    // which then cannot be reused and is allocated again: one more buffer
                    // per idle tunnel. Let go of it.
                    this.pending = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None => this.closed = true,
                Some(Err(e)) => return Poll::Ready(Err(other(e))),
                Some(Ok(message)) => match (this.payload)(message) {
                    Payload::Data(data) => this.pending = data,
                    Payload::Close => this.closed = true,
                    Payload::Skip => {}
                },
            }
        }
    }
}

impl<S, M> AsyncWrite for WsIo<S, M>
where
    S: Sink<M> + Unpin,
    <S as Sink<M>>::Error: std::fmt::Display,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(other)?;
        let n = buf.len().min(CHUNK);
        Pin::new(&mut this.ws)
            .start_send((this.binary)(Bytes::copy_from_slice(&buf[..n])))
            .map_err(other)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_close(cx)
            .map_err(other)
    }
}

/// A byte stream of any transport, for russh.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// [`WsIo`] over a tokio-tungstenite WebSocket (the clients' end).
pub fn tungstenite_io<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
) -> WsIo<tokio_tungstenite::WebSocketStream<S>, tokio_tungstenite::tungstenite::Message>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    WsIo::new(ws, Message::Binary, |m| match m {
        Message::Binary(data) => Payload::Data(data),
        Message::Close(_) => Payload::Close,
        _ => Payload::Skip,
    })
}

/// A `ws://` or `wss://` URL of the SSH service, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl WsUrl {
    /// `ws://HOST[:PORT][/PATH]` or `wss://…`; the path defaults to [`SSH_PATH`], the port
    /// to 80 / 443.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = s.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err(format!("{s:?} is not a ws:// or wss:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, SSH_PATH),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(['@', ' ']) {
            return Err(format!("{s:?}: no host name"));
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?}: {p:?} is not a port"))?,
        };
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            path: if path == "/" {
                SSH_PATH.to_owned()
            } else {
                path.to_owned()
            },
        })
    }

    /// The URL again, for the handshake request and messages.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{}", self.port, self.path)
    }
}

/// Runs the client handshake on an already connected (and, for `wss://`, TLS) `stream`.
pub async fn client_handshake<S>(url: &WsUrl, stream: S) -> Result<Box<dyn Io>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ws, _response) = tokio_tungstenite::client_async(url.url(), stream)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => format!(
                "{} answered HTTP {} instead of a WebSocket (is the path {} right, and does \
                 a proxy in front pass WebSocket upgrades?)",
                url.url(),
                response.status(),
                url.path
            ),
            e => format!("WebSocket handshake with {} failed: {e}", url.url()),
        })?;
    Ok(Box::new(tungstenite_io(ws)))
}

/// Opens the SSH service at `url`: TCP to its host and port (through `proxy`), TLS with `tls` for `wss://`,
/// then the WebSocket handshake. The stream returned carries the SSH bytes.
pub async fn connect(
    url: &WsUrl,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    proxy: Option<&crate::proxy::Proxy>,
    timeout: std::time::Duration,
) -> Result<Box<dyn Io>, String> {
    let opened = tokio::time::timeout(timeout, async {
        let tcp = crate::proxy::tcp_connect(&url.host, url.port, proxy).await?;
        if !url.tls {
            return client_handshake(url, tcp).await;
        }
        let config = tls.ok_or_else(|| format!("{}: no TLS settings given", url.url()))?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("{}: {e}", url.url()))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {} failed: {e}", url.url()))?;
        client_handshake(url, stream).await
    })
    .await;
    opened.unwrap_or_else(|_| Err(format!("timed out connecting to {}", url.url())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn urls_parse_with_default_ports_and_path() {
        let u = WsUrl::parse("wss://jump.example.com").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "jump.example.com", 443, SSH_PATH)
        );
        let u = WsUrl::parse("ws://127.0.0.1:8080/v1/ssh").unwrap();
        assert_eq!((u.tls, u.port), (false, 8080));
        assert_eq!(u.url(), "ws://127.0.0.1:8080/v1/ssh");
        let u = WsUrl::parse("wss://[::1]:8443/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8443, SSH_PATH)
        );
        assert_eq!(u.url(), "wss://[::1]:8443/v1/ssh");
        for bad in [
            "http://x",
            "ws://",
            "ws://:80",
            "ws://h:0",
            "ws://h:x/",
            "wss://u@h",
        ] {
            assert!(WsUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn bytes_cross_a_real_websocket_both_ways() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let mut io = tungstenite_io(ws);
            // Echo until EOF.
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.unwrap();
            got
        });
        let url = WsUrl::parse(&format!("ws://{addr}/v1/ssh")).unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut io = client_handshake(&url, tcp).await.unwrap();
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        io.write_all(&payload).await.unwrap();
        io.shutdown().await.unwrap();
        assert_eq!(server.await.unwrap(), payload);
    }
}
