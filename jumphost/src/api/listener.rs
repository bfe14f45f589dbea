//! The registration API's listener: hands the serve loop connections that are ready for
//! HTTP, after a trusted proxy's PROXY header (when configured) and the TLS handshake (for
//! HTTPS).
//!
//! Both steps run in their own tasks, each with a deadline and at most a fixed number at
//! once, so a client that connects and never sends a ClientHello holds neither the accept
//! loop nor a task for long. Beyond the bound, connections wait in the kernel's backlog.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

use super::proxy_header::ProxyHeaders;

/// A plain or a TLS connection. The TLS state is boxed: inline, every plain connection
/// (each idle WebSocket tunnel) would carry its size too (+1.9 KiB per idle tunnel at 1,000,
/// measured with bench/run.py).
pub type ApiStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// A TCP listener whose `accept` yields connections ready for HTTP, with the client's
/// address.
pub struct ApiListener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Option<Arc<ProxyHeaders>>,
    pending: JoinSet<Option<(ApiStream, SocketAddr)>>,
    timeout: Duration,
    max_pending: usize,
}

impl ApiListener {
    /// `tls`: HTTPS with this config; `proxy`: whose PROXY header to read first. `timeout`
    /// bounds each step, `max_pending` the connections in them at once.
    pub fn new(
        tcp: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        proxy: Option<ProxyHeaders>,
        timeout: Duration,
        max_pending: usize,
    ) -> Self {
        Self {
            tcp,
            tls: tls.map(TlsAcceptor::from),
            proxy: proxy.map(Arc::new),
            pending: JoinSet::new(),
            timeout,
            max_pending: max_pending.max(1),
        }
    }

    /// Hands back a connection with nothing to wait for at once (plain, no header to
    /// read), so those keep the order they were accepted in; the rest go to a task.
    fn prepare(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(ApiStream, SocketAddr)> {
        // SSH over WebSocket rides these connections: no Nagle delay, as on the SSH port.
        let _ = stream.set_nodelay(true);
        let header_expected = self.proxy.as_ref().is_some_and(|p| p.trusts(peer));
        if self.tls.is_none() && !header_expected {
            return Some((Either::Left(stream), peer));
        }
        let tls = self.tls.clone();
        let proxy = self.proxy.clone();
        let timeout = self.timeout;
        self.pending.spawn(async move {
            let source = match &proxy {
                Some(proxy) => match proxy.source(&mut stream, peer).await {
                    Ok(source) => source,
                    Err(e) => {
                        tracing::warn!("{e}; connection closed");
                        return None;
                    }
                },
                None => peer,
            };
            let Some(acceptor) = tls else {
                return Some((Either::Left(stream), source));
            };
            // Failures are debug only: port scanners and plain-HTTP clients would flood
            // the log otherwise.
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Some((Either::Right(Box::new(tls)), source)),
                Ok(Err(e)) => {
                    tracing::debug!(%source, error = %e, "API TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%source, "API TLS handshake timed out");
                    None
                }
            }
        });
        None
    }
}

impl axum::serve::Listener for ApiListener {
    type Io = ApiStream;
    type Addr = SocketAddr;

    // Cancel-safe, as the serve loop's shutdown needs: both awaited operations are, and the
    // connections being prepared live in `self`, not in this future.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.pending.len() < self.max_pending;
            tokio::select! {
                accepted = self.tcp.accept(), if room => match accepted {
                    Ok((stream, peer)) => {
                        if let Some(ready) = self.prepare(stream, peer) {
                            return ready;
                        }
                    }
                    Err(e) => accept_failed(e).await,
                },
                Some(done) = self.pending.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// As axum does for plain TCP: a connection that died before `accept` is nothing; anything
/// else (out of file descriptors) is logged and retried after a pause.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting an API connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cert;
    use crate::api::live_cert::{self, LiveCert};
    use crate::config::ApiTls;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server config from a fresh self-signed certificate, and a client config trusting it.
    fn configs(dir: &std::path::Path) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let tls = ApiTls::SelfSigned { names: vec![] };
        let api_cert = cert::load(&tls, dir, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(api_cert.chain[0].clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let live = LiveCert::new(api_cert.certified_key().unwrap());
        let server = live_cert::server_config(Arc::new(live)).unwrap();
        (server, Arc::new(client))
    }

    #[tokio::test]
    async fn a_silent_client_neither_blocks_others_for_long_nor_gets_a_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = configs(dir.path());
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let timeout = Duration::from_millis(300);
        // Room for one handshake: the silent client takes it until its deadline.
        let mut listener = ApiListener::new(tcp, Some(server), None, timeout, 1);
        let started = tokio::time::Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let talker = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .unwrap();
            tls.write_all(b"hello").await.unwrap();
            tls.flush().await.unwrap();
            tls
        });
        let (mut stream, peer) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the talking client is served after the silent one times out");
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        assert_eq!(peer.ip(), addr.ip());
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // The silent client's connection was closed by the server, not left open.
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        drop(talker.await.unwrap());
    }

    #[tokio::test]
    async fn plain_http_to_the_tls_port_gets_no_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = configs(dir.path());
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = ApiListener::new(tcp, Some(server), None, Duration::from_secs(10), 4);
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let accept = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
        assert!(
            accept.is_err(),
            "a plain HTTP client must not come out as a TLS stream"
        );
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
        assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    }
}
