//! One HTTP/1.1 request and its answer, for the agent's two clients: the registration (the
//! jump host's API, through a proxy, over TLS verified as `client.toml` says) and the
//! commands (the running agent on loopback). hyper's client connection over a stream that
//! `assist_proto::proxy::tcp_connect` opens, so the API is reached through HTTP CONNECT and
//! SOCKS5 proxies exactly as the tunnel is.

use assist_proto::proxy::Proxy;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Uri, header};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

/// Largest answer body read; the API's answers are a few hundred bytes.
const MAX_ANSWER: usize = 1024 * 1024;

/// Where a request goes: parsed from an `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// Without brackets for an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// Path and query, `/` at least.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{url:?} names no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            tls,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
            host,
        })
    }

    /// `host:port` as the `Host` header carries it (IPv6 in brackets).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The TCP connection, or the proxy on the way, failed: in `tcp_connect`'s words.
    #[error("{0}")]
    Connect(String),
    /// The TLS handshake failed; the rustls error is inside (see `api_tls::describe_tls_failure`).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("{0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// An answer: its status and its body, or why the body could not be read (a proxy that
/// refuses may hang up before its body).
pub struct Answer {
    pub status: u16,
    pub body: Result<String, String>,
}

/// What to send.
pub struct Outgoing<'a> {
    pub method: Method,
    /// `Authorization: Bearer …`, if any.
    pub bearer: Option<&'a str>,
    /// A JSON body, if any.
    pub json: Option<Vec<u8>>,
}

/// Sends one request to `target` (through `proxy`, over TLS with `tls` for `https://`) and
/// reads its answer, all within `timeout`.
pub async fn send(
    target: &Target,
    outgoing: Outgoing<'_>,
    tls: Option<Arc<rustls::ClientConfig>>,
    proxy: Option<&Proxy>,
    timeout: Duration,
) -> Result<Answer, RequestError> {
    tokio::time::timeout(timeout, exchange(target, outgoing, tls, proxy))
        .await
        .unwrap_or(Err(RequestError::Timeout(timeout)))
}

async fn exchange(
    target: &Target,
    outgoing: Outgoing<'_>,
    tls: Option<Arc<rustls::ClientConfig>>,
    proxy: Option<&Proxy>,
) -> Result<Answer, RequestError> {
    let tcp = assist_proto::proxy::tcp_connect(&target.host, target.port, proxy)
        .await
        .map_err(RequestError::Connect)?;
    let request = request(target, outgoing)?;
    match (target.tls, tls) {
        (true, Some(config)) => {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| RequestError::Http(format!("{:?}: {e}", target.host)))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(RequestError::Tls)?;
            over(stream, request).await
        }
        (true, None) => Err(RequestError::Http(
            "an https:// URL needs a TLS configuration".to_owned(),
        )),
        (false, _) => over(tcp, request).await,
    }
}

fn request(target: &Target, outgoing: Outgoing<'_>) -> Result<Request<Body>, RequestError> {
    let bad = |e: axum::http::Error| RequestError::Http(format!("cannot make the request: {e}"));
    let mut builder = Request::builder()
        .method(outgoing.method)
        .uri(target.path.as_str())
        .header(header::HOST, target.authority());
    if let Some(token) = outgoing.bearer {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| RequestError::Http(format!("the token cannot be sent: {e}")))?;
        value.set_sensitive(true);
        builder = builder.header(header::AUTHORIZATION, value);
    }
    match outgoing.json {
        Some(json) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json))
            .map_err(bad),
        None => builder.body(Body::empty()).map_err(bad),
    }
}

async fn over<S>(stream: S, request: Request<Body>) -> Result<Answer, RequestError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| RequestError::Http(format!("HTTP handshake failed: {e}")))?;
    let driver = tokio::spawn(connection);
    let answer = sender.send_request(request).await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            driver.abort();
            return Err(RequestError::Http(format!(
                "the request failed: {}",
                chain(&e)
            )));
        }
    };
    let status = answer.status().as_u16();
    let body = axum::body::to_bytes(Body::new(answer.into_body()), MAX_ANSWER)
        .await
        .map_err(|e| chain(&e))
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    driver.abort();
    Ok(Answer { status, body })
}

/// An error with its causes: hyper's top-level message hides them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_what_a_request_needs() {
        let t = Target::parse("https://jump.example.com/v1/register").unwrap();
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "jump.example.com".into(),
                port: 443,
                path: "/v1/register".into()
            }
        );
        let t = Target::parse("http://[::1]:8080/api/status").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 8080, false));
        assert_eq!(t.authority(), "[::1]:8080");
        assert_eq!(Target::parse("http://127.0.0.1:7").unwrap().path, "/");
        for bad in ["ftp://x/", "jump:2222", "https:///x", "not a url"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    /// A whole exchange with a real server on loopback: the method, path, `Host`, token and
    /// body arrive, and the status and body come back.
    #[tokio::test]
    async fn a_request_and_its_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("{\"a\":1}") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(b"HTTP/1.1 409 Conflict\r\nContent-Length: 5\r\n\r\ntaken")
                .await
                .unwrap();
            String::from_utf8_lossy(&seen).into_owned()
        });
        let target = Target::parse(&format!("http://{addr}/v1/register")).unwrap();
        let outgoing = Outgoing {
            method: Method::POST,
            bearer: Some("t0ken"),
            json: Some(b"{\"a\":1}".to_vec()),
        };
        let answer = send(&target, outgoing, None, None, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(answer.status, 409);
        assert_eq!(answer.body.unwrap(), "taken");
        let seen = server.await.unwrap().to_ascii_lowercase();
        assert!(seen.starts_with("post /v1/register http/1.1\r\n"), "{seen}");
        assert!(seen.contains(&format!("host: {addr}\r\n")), "{seen}");
        assert!(seen.contains("authorization: bearer t0ken\r\n"), "{seen}");
        assert!(
            seen.contains("content-type: application/json\r\n"),
            "{seen}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error_in_the_tunnels_words() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target = Target::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let outgoing = Outgoing {
            method: Method::GET,
            bearer: None,
            json: None,
        };
        let err = send(&target, outgoing, None, None, Duration::from_secs(10))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, RequestError::Connect(_)), "{err:?}");
        assert!(
            err.to_string().contains("cannot connect to 127.0.0.1"),
            "{err}"
        );
    }
}
