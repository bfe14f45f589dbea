//! Reaching the jump host through a proxy, as customer sites with no direct way out
//! require: an HTTP proxy with `CONNECT` (Basic authentication when the proxy URL carries a
//! user), or a SOCKS5 proxy (user/password authentication, RFC 1929).
//!
//! The proxy comes from configuration, else from `HTTPS_PROXY` / `https_proxy` /
//! `ALL_PROXY` / `all_proxy`, with `NO_PROXY` / `no_proxy` naming hosts to reach directly,
//! as curl reads them.

use std::net::IpAddr;

use base64::Engine;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::Secret;
use crate::http_head::HeadError;

/// Longest proxy answer header read.
const MAX_ANSWER: usize = 16 * 1024;

/// How a proxy is spoken to, from its URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`: HTTP `CONNECT`.
    Http,
    /// `socks5://`: SOCKS5, the jump host's name resolved on this machine.
    Socks5,
    /// `socks5h://`: SOCKS5, the name resolved by the proxy (sites whose machines have no
    /// public DNS), as curl means it.
    Socks5h,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Socks5 => "socks5",
            Scheme::Socks5h => "socks5h",
        }
    }

    /// The port a proxy URL without one means, as curl takes it.
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 8080,
            Scheme::Socks5 | Scheme::Socks5h => 1080,
        }
    }
}

/// A proxy: `http://[USER:PASS@]HOST:PORT`, `socks5://…` or `socks5h://…`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// `user:password` for Basic or SOCKS5 password authentication.
    credentials: Option<Secret>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// The proxy's address only: its password never reaches a message or a log.
impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = match &self.credentials {
            Some(c) => format!("{}@", c.expose().split(':').next().unwrap_or_default()),
            None => String::new(),
        };
        write!(
            f,
            "{}://{user}{}:{}",
            self.scheme.as_str(),
            bracketed(&self.host),
            self.port
        )
    }
}

/// An IPv6 address in brackets, as it stands in a URL or a `CONNECT` line.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

impl Proxy {
    /// Parses `http://[USER:PASS@]HOST[:PORT]`, `socks5://…` or `socks5h://…` (port 8080
    /// or 1080 when absent; a bare `HOST:PORT` is taken as http:// too, as curl does). User
    /// and password may be %-encoded.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "http" => (Scheme::Http, rest),
                "socks5" => (Scheme::Socks5, rest),
                "socks5h" => (Scheme::Socks5h, rest),
                _ => {
                    return Err(format!(
                        "{scheme}:// proxies are not supported; use an http://, socks5:// or \
                         socks5h:// proxy URL"
                    ));
                }
            },
            None => (Scheme::Http, s),
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decoded = format!("{}:{}", percent_decode(user)?, percent_decode(pass)?);
                (Some(Secret::new(decoded)), hostport)
            }
            None => (None, rest),
        };
        // An IPv6 address stands in brackets, with the port after them.
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or("the proxy URL has an unclosed [ in its host")?;
                let port = match after {
                    "" => None,
                    after => Some(
                        after
                            .strip_prefix(':')
                            .ok_or("the proxy URL has something other than :PORT after ]")?,
                    ),
                };
                (host, port)
            }
            None => match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            },
        };
        let port = match port {
            None => scheme.default_port(),
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| "the proxy's port is not a number".to_owned())?,
        };
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err("the proxy URL has no host (like http://proxy.example.com:3128)".into());
        }
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            credentials,
        })
    }

    /// The proxy URL with its credentials, for an HTTP client that takes one.
    pub fn url_with_credentials(&self) -> Secret {
        let userinfo = match &self.credentials {
            Some(c) => {
                let (user, pass) = c.expose().split_once(':').unwrap_or((c.expose(), ""));
                format!("{}:{}@", percent_encode(user), percent_encode(pass))
            }
            None => String::new(),
        };
        Secret::new(format!(
            "{}://{userinfo}{}:{}",
            self.scheme.as_str(),
            bracketed(&self.host),
            self.port
        ))
    }

    /// The proxy for reaching `target_host` as the environment says, if any.
    pub fn from_env(
        target_host: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Result<Self, String>> {
        let url = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .find_map(|k| env(k).filter(|v| !v.trim().is_empty()))?;
        let no_proxy = env("NO_PROXY")
            .or_else(|| env("no_proxy"))
            .unwrap_or_default();
        if bypassed(target_host, &no_proxy) {
            return None;
        }
        Some(
            Self::parse(url.trim())
                .map_err(|e| format!("the proxy {url:?} from the environment: {e}")),
        )
    }
}

/// Whether `NO_PROXY` names `host`: `*`, the host itself, or a domain it is under.
fn bypassed(host: &str, no_proxy: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            let entry = entry
                .split(':')
                .next()
                .unwrap_or(entry)
                .to_ascii_lowercase();
            let domain = entry.trim_start_matches('.');
            entry == "*" || host == domain || host.ends_with(&format!(".{domain}"))
        })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or("a bad %-escape in the proxy URL")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a bad %-escape in the proxy URL")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the proxy URL's user or password is not UTF-8".into())
}

/// A TCP connection to `host:port`, through `proxy` when given.
pub async fn tcp_connect(
    host: &str,
    port: u16,
    proxy: Option<&Proxy>,
) -> Result<TcpStream, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Some(proxy) = proxy else {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        return Ok(tcp);
    };
    let tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| format!("cannot reach the proxy at {proxy}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match proxy.scheme {
        Scheme::Http => http_connect(tcp, host, port, proxy).await,
        Scheme::Socks5 | Scheme::Socks5h => socks5_connect(tcp, host, port, proxy).await,
    }
}

/// `CONNECT host:port` on a connection to an HTTP proxy; the connection, once it answers 200.
async fn http_connect(
    mut tcp: TcpStream,
    host: &str,
    port: u16,
    proxy: &Proxy,
) -> Result<TcpStream, String> {
    let authority = format!("{}:{port}", bracketed(host));
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(credentials) = &proxy.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(credentials.expose());
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    let request = Secret::new(request);
    tcp.write_all(request.expose().as_bytes())
        .await
        .map_err(|e| format!("the proxy at {proxy} closed the connection: {e}"))?;
    let answer = crate::http_head::read(&mut tcp, MAX_ANSWER)
        .await
        .map_err(|e| match e {
            HeadError::TooLong => {
                format!("the proxy at {proxy} sent an answer of more than {MAX_ANSWER} bytes")
            }
            HeadError::Closed => format!(
                "the proxy at {proxy} closed the connection without an answer to CONNECT {authority}"
            ),
            HeadError::Io(e) => format!("the proxy at {proxy}: {e}"),
        })?;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    match status {
        "200" => Ok(tcp),
        "407" => Err(format!(
            "the proxy at {proxy} refused: 407 authentication required ({}); check the user and password in the proxy URL",
            if proxy.credentials.is_some() {
                "the credentials given were not accepted"
            } else {
                "none were given"
            }
        )),
        // Some proxies (tinyproxy) answer wrong credentials with 401 rather than 407.
        "401" => Err(format!(
            "the proxy at {proxy} refused: 401 unauthorized: its user or password is wrong; check them in the proxy URL"
        )),
        _ => Err(format!(
            "the proxy at {proxy} refused CONNECT {authority}: {}",
            status_line.trim()
        )),
    }
}

/// The SOCKS5 handshake on a connection to a SOCKS5 proxy; the connection, once the proxy
/// has connected it to `host:port`.
async fn socks5_connect(
    tcp: TcpStream,
    host: &str,
    port: u16,
    proxy: &Proxy,
) -> Result<TcpStream, String> {
    use tokio_socks::{Error, TargetAddr, tcp::Socks5Stream};
    let authority = format!("{}:{port}", bracketed(host));
    let target = match (host.parse::<IpAddr>(), proxy.scheme) {
        (Ok(ip), _) => TargetAddr::Ip((ip, port).into()),
        (Err(_), Scheme::Socks5h) => TargetAddr::Domain(host.into(), port),
        (Err(_), _) => {
            let resolved = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("cannot resolve {host} (a socks5:// proxy is given the address; socks5h:// lets the proxy resolve it): {e}"))?
                .next()
                .ok_or_else(|| format!("{host} has no address"))?;
            TargetAddr::Ip(resolved)
        }
    };
    let connected = match &proxy.credentials {
        Some(credentials) => {
            let (user, password) = credentials
                .expose()
                .split_once(':')
                .unwrap_or((credentials.expose(), ""));
            Socks5Stream::connect_with_password_and_socket(tcp, target, user, password).await
        }
        None => Socks5Stream::connect_with_socket(tcp, target).await,
    };
    connected.map(Socks5Stream::into_inner).map_err(|e| match e {
        Error::PasswordAuthFailure(_) => format!(
            "the proxy at {proxy} refused: authentication failed (the user or password is wrong); check them in the proxy URL"
        ),
        Error::NoAcceptableAuthMethods if proxy.credentials.is_none() => format!(
            "the proxy at {proxy} refused: authentication required (none was given); put the user and password in the proxy URL"
        ),
        Error::InvalidAuthValues(why) => format!("the proxy URL's {why}"),
        Error::ConnectionNotAllowedByRuleset => format!(
            "the proxy at {proxy} refused CONNECT {authority}: its rules do not allow it"
        ),
        Error::HostUnreachable
        | Error::NetworkUnreachable
        | Error::ConnectionRefused
        | Error::TtlExpired => format!("the proxy at {proxy} could not reach {authority}: {e}"),
        Error::Io(e) => format!("the proxy at {proxy} closed the connection: {e}"),
        e => format!("the proxy at {proxy} refused CONNECT {authority}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn proxy_urls_parse_and_never_show_the_password() {
        let p = Proxy::parse("http://alice:s%40cret@proxy.example.com:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.example.com", 3128));
        assert_eq!(p.credentials.as_ref().unwrap().expose(), "alice:s@cret");
        assert_eq!(p.to_string(), "http://alice@proxy.example.com:3128");
        assert!(!format!("{p:?}").contains("cret"));
        assert_eq!(
            p.url_with_credentials().expose(),
            "http://alice:s%40cret@proxy.example.com:3128"
        );
        assert_eq!(Proxy::parse("proxy:8888").unwrap().port, 8888);
        assert_eq!(Proxy::parse("http://proxy").unwrap().port, 8080);
        assert_eq!(Proxy::parse("http://[::1]:3128").unwrap().host, "::1");
        let p = Proxy::parse("socks5h://cust:pa%3Ass@[::1]").unwrap();
        assert_eq!((p.scheme, p.port), (Scheme::Socks5h, 1080));
        assert_eq!(p.to_string(), "socks5h://cust@[::1]:1080");
        assert_eq!(
            p.url_with_credentials().expose(),
            "socks5h://cust:pa%3Ass@[::1]:1080"
        );
        let p = Proxy::parse("SOCKS5://p:9050").unwrap();
        assert_eq!((p.scheme, p.port), (Scheme::Socks5, 9050));
        for bad in [
            "socks4://p:1080",
            "http://:3128",
            "http://p:x",
            "http://u:%zz@p:1",
            "http://[::1",
            "http://[::1]:",
            "http://[::1]x",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_environment_is_read_as_curl_does() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let e = env(&[
            ("https_proxy", "http://p:1"),
            ("NO_PROXY", "localhost, .internal,10.1.2.3"),
        ]);
        assert_eq!(
            Proxy::from_env("jump.example.com", &e)
                .unwrap()
                .unwrap()
                .port,
            1
        );
        for direct in ["localhost", "a.internal", "internal", "10.1.2.3"] {
            assert!(Proxy::from_env(direct, &e).is_none(), "{direct}");
        }
        let e = env(&[("ALL_PROXY", "http://p:2")]);
        assert_eq!(Proxy::from_env("x", &e).unwrap().unwrap().port, 2);
        assert!(Proxy::from_env("x", &env(&[])).is_none());
        assert!(Proxy::from_env("x", &env(&[("HTTPS_PROXY", "p:2"), ("no_proxy", "*")])).is_none());
    }

    /// A one-shot proxy on loopback that answers CONNECT with `answer`, then echoes.
    async fn fake_proxy(
        answer: &'static str,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let head = crate::http_head::read(&mut tcp, 4096).await.unwrap();
            tcp.write_all(answer.as_bytes()).await.unwrap();
            let mut buf = [0u8; 5];
            if tcp.read_exact(&mut buf).await.is_ok() {
                tcp.write_all(&buf).await.unwrap();
            }
            String::from_utf8(head).unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn connect_sends_basic_auth_and_reads_exactly_the_answer() {
        let (addr, task) = fake_proxy("HTTP/1.1 200 Connection established\r\nX: y\r\n\r\n").await;
        let proxy = Proxy::parse(&format!("http://u:p@{addr}")).unwrap();
        let mut tcp = tcp_connect("jump.example.com", 443, Some(&proxy))
            .await
            .unwrap();
        tcp.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tcp.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        let head = task.await.unwrap();
        assert!(
            head.starts_with("CONNECT jump.example.com:443 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("Proxy-Authorization: Basic dTpw\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn refusals_are_said_in_words() {
        let (addr, _task) = fake_proxy("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
        let proxy = Proxy::parse(&format!("http://u:wrong@{addr}")).unwrap();
        let err = tcp_connect("j", 1, Some(&proxy)).await.unwrap_err();
        assert!(
            err.contains("refused: 407 authentication required"),
            "{err}"
        );
        assert!(!err.contains("wrong"), "the password leaked: {err}");
        let (addr, _task) = fake_proxy("HTTP/1.1 403 Forbidden\r\n\r\n").await;
        let proxy = Proxy::parse(&addr.to_string()).unwrap();
        let err = tcp_connect("j", 1, Some(&proxy)).await.unwrap_err();
        assert!(
            err.contains("refused CONNECT j:1: HTTP/1.1 403 Forbidden"),
            "{err}"
        );
    }
}
