//! SSH inside a WebSocket (`GET /v1/ssh` on the jump host's API port), so one HTTPS port
//! carries registration and tunnels and HTTP proxies and reverse proxies pass it.
//!
//! Each binary message carries bytes of the SSH stream; message boundaries mean nothing.
//! [`WsStream`] frames and unframes them in place, on either end, without a buffer or a
//! task of its own: an idle tunnel holds only the stream's state. The handshakes are
//! here too: the client's whole ([`client_handshake`]), and the accept key the jump host's
//! answer needs ([`accept_key`]).

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::http_head::HeadError;

mod stream;

pub use stream::{Role, WsStream};

/// The path of the SSH service on the jump host's API listener.
pub const SSH_PATH: &str = "/v1/ssh";
/// Longest handshake answer read: a proxy's error page included, it fits.
const MAX_ANSWER: usize = 16 * 1024;

/// A byte stream of any transport, for russh.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// `Sec-WebSocket-Accept` for a handshake's `Sec-WebSocket-Key` (RFC 6455, 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
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
pub async fn client_handshake<S>(url: &WsUrl, mut stream: S) -> Result<Box<dyn Io>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |why: String| format!("WebSocket handshake with {} failed: {why}", url.url());
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
        url.path, url.port
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| failed(format!("sending the request: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| failed(format!("sending the request: {e}")))?;

    // The server may speak SSH right after its answer: the stream starts there.
    let answer = crate::http_head::read(&mut stream, MAX_ANSWER)
        .await
        .map_err(|e| match e {
            HeadError::TooLong => failed(format!(
                "the answer's head is longer than {MAX_ANSWER} bytes"
            )),
            HeadError::Closed => failed("the connection closed before an answer".into()),
            HeadError::Io(e) => failed(format!("reading the answer: {e}")),
        })?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    response
        .parse(&answer)
        .map_err(|e| failed(format!("the answer is not HTTP ({e})")))?;
    let code = response.code.unwrap_or(0);
    if code != 101 {
        return Err(format!(
            "{} answered HTTP {code} {} instead of a WebSocket (is the path {} right, and \
             does a proxy in front pass WebSocket upgrades?)",
            url.url(),
            response.reason.unwrap_or(""),
            url.path
        ));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .unwrap_or_default()
    };
    if !header("upgrade").eq_ignore_ascii_case("websocket")
        || !header("connection")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    {
        return Err(failed(
            "the answer is 101 but not an upgrade to WebSocket".into(),
        ));
    }
    if header("sec-websocket-accept") != accept_key(key.as_bytes()) {
        return Err(failed(
            "the answer's Sec-WebSocket-Accept does not match the key sent".into(),
        ));
    }
    Ok(Box::new(WsStream::new(stream, Role::Client)))
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

    fn payload() -> Vec<u8> {
        (0..1_000_000u32).map(|i| (i % 253) as u8).collect()
    }

    /// Our client against a WebSocket library's server (tungstenite's): what it sends
    /// arrives whole, and what the server sends comes back, over real TCP.
    #[tokio::test]
    async fn our_client_talks_to_a_library_server() {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            // Speaks first, as an SSH server does: these bytes may come with the answer.
            ws.send(Message::binary(&b"SSH-2.0-server\r\n"[..]))
                .await
                .unwrap();
            ws.send(Message::Ping(b"hi"[..].into())).await.unwrap();
            let mut got = Vec::new();
            while let Some(m) = ws.next().await {
                match m.unwrap() {
                    Message::Binary(data) => got.extend_from_slice(&data),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            got
        });
        let url = WsUrl::parse(&format!("ws://{addr}/v1/ssh")).unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut io = client_handshake(&url, tcp).await.unwrap();
        let mut banner = [0u8; 16];
        io.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"SSH-2.0-server\r\n");
        io.write_all(&payload()).await.unwrap();
        io.shutdown().await.unwrap();
        assert!(server.await.unwrap() == payload());
    }

    /// A WebSocket library's client (tungstenite's) against our server framing, after the
    /// handshake a server makes with [`accept_key`].
    #[tokio::test]
    async fn a_library_client_talks_to_our_server() {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let request = crate::http_head::read(&mut tcp, 4096).await.unwrap();
            let request = String::from_utf8(request).unwrap();
            let key = request
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_key(key.as_bytes())
            );
            tcp.write_all(answer.as_bytes()).await.unwrap();
            let mut io = WsStream::new(tcp, Role::Server);
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.unwrap();
            // Echoed back in our frames, over TCP (a vectored write each).
            io.write_all(&got).await.unwrap();
            io.shutdown().await.unwrap();
        });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ssh"))
            .await
            .unwrap();
        for piece in payload().chunks(100_000) {
            ws.send(Message::binary(piece.to_vec())).await.unwrap();
        }
        ws.send(Message::Close(None)).await.unwrap();
        let mut got = Vec::new();
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Binary(data)) => got.extend_from_slice(&data),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        server.await.unwrap();
        assert!(got == payload());
    }

    #[tokio::test]
    async fn a_refusal_is_told_with_its_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = tcp.read(&mut b).await.unwrap();
            tcp.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let url = WsUrl::parse(&format!("ws://{addr}/elsewhere")).unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let e = client_handshake(&url, tcp).await.err().unwrap();
        assert!(
            e.contains("answered HTTP 404 Not Found instead of a WebSocket"),
            "{e}"
        );
        assert!(e.contains("is the path /elsewhere right"), "{e}");
    }
}
