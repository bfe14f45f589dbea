//! `GET /v1/ssh`: the SSH service inside a WebSocket on the API's (HTTPS) port, for
//! devices and engineers that can only leave through an HTTP proxy or port 443. The same
//! relay, host key, rules and audit as the SSH port: a connection is admitted with the
//! same checks and then lives exactly as a TCP one does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use assist_proto::ws::{Payload, SERVER_BUFFER, WsIo};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use super::{ApiError, ApiState};
use crate::ssh::{Relay, server};

/// What the WebSocket endpoint needs of the SSH side.
#[derive(Clone)]
pub struct SshOverWs {
    pub relay: Arc<Relay>,
    pub shutdown: CancellationToken,
}

/// The address a request comes from: the TCP peer, or, when that peer is one of
/// `trusted` (a reverse proxy of the operator's), the nearest untrusted address its
/// `X-Forwarded-For` names. A header from anyone else is ignored, so it cannot be used to
/// dodge allowlists or penalties.
pub fn client_address(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect();
    // Right to left: each trusted proxy appended the address it saw.
    match forwarded.iter().rev().find(|ip| !is_trusted(**ip)) {
        Some(ip) => SocketAddr::new(*ip, 0),
        None => forwarded.first().map_or(peer, |ip| SocketAddr::new(*ip, 0)),
    }
}

pub(super) async fn upgrade(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Some(ssh) = state.ssh.clone() else {
        return ApiError::NotFound.into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::Invalid(format!(
                "{} is SSH over WebSocket; this request is not a WebSocket upgrade ({e})",
                assist_proto::ws::SSH_PATH
            ))
            .into_response();
        }
    };
    let source = client_address(peer, &headers, &state.trusted_proxies);
    let startup = match server::admit(&ssh.relay, source) {
        Ok(startup) => startup,
        Err(why @ server::NotAdmitted::Address(_)) => {
            return ApiError::Forbidden(why.to_string()).into_response();
        }
        Err(why @ server::NotAdmitted::Penalized { block, .. }) => {
            return ApiError::Penalized {
                reason: why.to_string(),
                retry_after: block.left,
            }
            .into_response();
        }
        Err(why) => return ApiError::Unavailable(why.to_string()).into_response(),
    };
    // Small buffers: every idle tunnel holds them.
    ws.max_message_size(1 << 20)
        .read_buffer_size(SERVER_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            // Boxed: the connection's futures then hold a pointer instead of the WebSocket
            // state by value, 2.4 KiB less per tunnel (measured with heaptrack at 1,000
            // idle tunnels) for one allocation of its own size.
            let io: Box<dyn assist_proto::ws::Io> =
                Box::new(WsIo::new(socket, Message::Binary, |m| match m {
                    Message::Binary(data) => Payload::Data(data),
                    Message::Close(_) => Payload::Close,
                    _ => Payload::Skip,
                }));
            tracing::debug!(%source, "ssh over websocket");
            server::spawn_connection(&ssh.relay, io, source, startup, &ssh.shutdown);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let h = headers(&["203.0.113.9, 10.0.0.7"]);
        assert_eq!(
            client_address(proxy, &h, &trusted).ip(),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Spoofed leftmost entries do not count: the nearest untrusted one does.
        let h = headers(&["1.2.3.4", "198.51.100.2"]);
        assert_eq!(
            client_address(proxy, &h, &trusted).ip(),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        // From anyone else the header is ignored.
        let other: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert_eq!(client_address(other, &h, &trusted), other);
        assert_eq!(client_address(proxy, &headers(&[]), &trusted), proxy);
        assert_eq!(client_address(proxy, &headers(&["junk"]), &[]), proxy);
    }
}
