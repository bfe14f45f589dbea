//! The PROXY protocol header (HAProxy's v1 text and v2 binary forms, also what cloud load
//! balancers send in TCP mode) at the start of a connection to the API port, believed only
//! from `trusted_proxies` and only with `proxy_protocol = true`: its source address is then
//! the client's, for allowlists, penalties and audit. Parsing is the `ppp` crate's; this file
//! reads exactly the header's bytes, so what follows (HTTP, TLS) is untouched.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use ppp::HeaderResult;
use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature; a v1 header starts with `PROXY `.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes.
const V1_MAX: usize = 107;
/// Address blocks and TLVs of a v2 header beyond this are refused (HAProxy sends < 100).
const V2_MAX_PAYLOAD: usize = 1024;

/// Who may send the header, from the jump host's config.
#[derive(Debug, Clone)]
pub struct ProxyHeaders {
    pub trusted: Vec<IpNet>,
    pub timeout: Duration,
}

impl ProxyHeaders {
    pub fn trusts(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The connection's source: for a trusted proxy, the client its header names (or the
    /// proxy itself for a header that names none, as a health check's `LOCAL`); for anyone
    /// else, the peer, whose bytes are not looked at.
    pub async fn source(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, String> {
        if !self.trusts(peer) {
            return Ok(peer);
        }
        match tokio::time::timeout(self.timeout, read_header(tcp)).await {
            Ok(Ok(source)) => Ok(source.unwrap_or(peer)),
            Ok(Err(e)) => Err(format!("PROXY header from {peer}: {e}")),
            Err(_) => Err(format!(
                "PROXY header from {peer}: none within {} s",
                self.timeout.as_secs()
            )),
        }
    }
}

/// Reads one header, exactly its bytes, and returns the source address it names.
async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    let io = |e: std::io::Error| e.to_string();
    let mut header = vec![0u8; 6];
    tcp.read_exact(&mut header).await.map_err(io)?;
    if header == b"PROXY " {
        // v1: up to CRLF, one byte at a time so nothing after it is taken.
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err("a v1 header longer than 107 bytes".into());
            }
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.map_err(io)?;
            header.push(byte[0]);
        }
    } else if V2_SIGNATURE.starts_with(&header) {
        header.resize(16, 0);
        tcp.read_exact(&mut header[6..]).await.map_err(io)?;
        if &header[..12] != V2_SIGNATURE {
            return Err("not a PROXY protocol header".into());
        }
        let payload = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if payload > V2_MAX_PAYLOAD {
            return Err(format!(
                "a v2 header with {payload} bytes of addresses and TLVs"
            ));
        }
        header.resize(16 + payload, 0);
        tcp.read_exact(&mut header[16..]).await.map_err(io)?;
    } else {
        return Err("the connection does not start with a PROXY protocol header".into());
    }
    parse(&header)
}

/// The source address of a whole header.
fn parse(header: &[u8]) -> Result<Option<SocketAddr>, String> {
    let parsed = HeaderResult::parse(header);
    if parsed.is_incomplete() {
        return Err("a truncated header".into());
    }
    match parsed {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, ppp::v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            _ => None,
        }),
        HeaderResult::V1(Err(e)) => Err(format!("a malformed v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Err(format!("a malformed v2 header: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn headers(trusted: &str) -> ProxyHeaders {
        ProxyHeaders {
            trusted: vec![trusted.parse().unwrap()],
            timeout: Duration::from_secs(5),
        }
    }

    /// Sends `bytes` to a fresh connection and returns the source the server side reads, and
    /// what is left on the stream after it.
    async fn serve(pp: &ProxyHeaders, bytes: &[u8]) -> (Result<SocketAddr, String>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = bytes.to_vec();
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&bytes).await.unwrap();
            tcp.shutdown().await.unwrap();
        });
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let source = pp.source(&mut tcp, peer).await;
        let mut rest = Vec::new();
        if source.is_ok() {
            tcp.read_to_end(&mut rest).await.unwrap();
        }
        client.await.unwrap();
        (source, rest)
    }

    #[tokio::test]
    async fn a_trusted_proxys_v1_and_v2_headers_name_the_client_and_nothing_else_is_taken() {
        let pp = headers("127.0.0.1/32");
        let (source, rest) = serve(
            &pp,
            b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 443\r\nGET / HTTP/1.1\r\n\r\n",
        )
        .await;
        assert_eq!(source.unwrap(), "203.0.113.9:40000".parse().unwrap());
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");

        let mut v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:5000".parse::<SocketAddr>().unwrap(),
                "[::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        v2.extend_from_slice(b"\x16\x03\x01");
        let (source, rest) = serve(&pp, &v2).await;
        assert_eq!(source.unwrap(), "[2001:db8::7]:5000".parse().unwrap());
        assert_eq!(rest, b"\x16\x03\x01");

        // A health check's header names nobody: the proxy itself is the source.
        let (source, _) = serve(&pp, b"PROXY UNKNOWN\r\n").await;
        assert_eq!(source.unwrap().ip().to_string(), "127.0.0.1");
    }

    #[tokio::test]
    async fn anyone_elses_header_is_not_read_and_a_trusted_proxy_without_one_is_refused() {
        // Not trusted: the bytes stay for HTTP, which will answer 400 to them.
        let pp = headers("10.0.0.0/8");
        let line = b"PROXY TCP4 10.1.2.3 127.0.0.1 1 2\r\n";
        let (source, rest) = serve(&pp, line).await;
        assert_eq!(source.unwrap().ip().to_string(), "127.0.0.1");
        assert_eq!(rest, line);

        let pp = headers("127.0.0.1/32");
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 and then a very long line that goes on and on and on and on and on and on and on\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
            b"PROX",
        ] {
            let (source, _) = serve(&pp, bad).await;
            assert!(source.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
