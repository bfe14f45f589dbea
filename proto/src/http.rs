//! Serving an axum router over HTTP/1.1 with the limits `axum::serve` lacks (both servers:
//! the jump host's API and the agent's local page).
//!
//! `axum::serve` sets no timer, so hyper's header-read timeout never runs: a client that
//! connects and sends nothing, or leaves a keep-alive connection idle, holds it forever, and
//! there is no bound on how many it holds. Here every connection must finish its request
//! headers within `header_timeout` of the server starting to wait for them (idle
//! keep-alive included), at most `max_connections` are served at once (more wait in the
//! kernel's backlog), and one source (an IPv4 address or IPv6 /64) gets at most
//! `max_per_source` of them (more are closed at once), so one host cannot take every slot.
//! HTTP/2 is not offered: both APIs are a handful of small requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::per_source::PerSource;

/// How long and how many: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_per_source: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        use crate::limits;
        Self {
            header_timeout: limits::HEADER_TIMEOUT,
            max_connections: limits::MAX_HTTP_CONNECTIONS,
            max_per_source: limits::MAX_HTTP_CONNECTIONS_PER_SOURCE,
        }
    }
}

/// Largest read buffer of one connection; bounds the memory a client's headers can take.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Serves `router` on `listener` until `shutdown` completes, then lets the connections
/// finish the request in hand (idle ones close at once) and returns. Handlers can read the
/// peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let sources = Arc::new(PerSource::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (io, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let Some(source) = sources.enter(peer.ip(), limits.max_per_source) else {
            tracing::warn!(%peer, limit = limits.max_per_source, "too many HTTP connections from this source; closed");
            continue;
        };
        let router = router.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _held = (permit, source);
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    let router = router.clone();
                    async move { router.oneshot(request.map(Body::new)).await }
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_READ_BUFFER);
            // Upgrades hand a WebSocket (the jump host's `/v1/ssh`) its connection; once
            // handed over it no longer counts among the HTTP connections.
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(connection);
            let mut stopping = false;
            loop {
                tokio::select! {
                    ended = connection.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "HTTP connection ended");
                        }
                        break;
                    }
                    _ = stop.changed(), if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(stop);
        });
    }
    drop(stop_rx);
    let _ = stop_tx.send(true);
    stop_tx.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests;
