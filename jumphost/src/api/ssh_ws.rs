//! `GET /v1/ssh`: the SSH service inside a WebSocket on the API's (HTTPS) port, for
//! devices and engineers that can only leave through an HTTP proxy or port 443. The same
//! relay, host key, rules and audit as the SSH port: a connection is admitted with the
//! same checks and then lives exactly as a TCP one does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use assist_proto::ws::{Role, WsStream};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
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

/// The client's `Sec-WebSocket-Key` if `headers` ask for a WebSocket (RFC 6455, 4.2.1);
/// else what is missing.
fn websocket_key(headers: &HeaderMap) -> Result<&HeaderValue, &'static str> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has(header::CONNECTION, "upgrade") {
        return Err("Connection does not say upgrade");
    }
    if !has(header::UPGRADE, "websocket") {
        return Err("Upgrade does not say websocket");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("Sec-WebSocket-Version is not 13");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("no Sec-WebSocket-Key")
}

pub(super) async fn upgrade(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let Some(ssh) = state.ssh.clone() else {
        return ApiError::NotFound.into_response();
    };
    let headers = request.headers();
    let key = match websocket_key(headers) {
        Ok(key) => key.clone(),
        Err(why) => {
            return ApiError::Invalid(format!(
                "{} is SSH over WebSocket; this request is not a WebSocket upgrade ({why})",
                assist_proto::ws::SSH_PATH
            ))
            .into_response();
        }
    };
    let source = client_address(peer, headers, &state.trusted_proxies);
    let Some(upgraded) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return ApiError::Invalid("this connection cannot be upgraded".into()).into_response();
    };
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
    tokio::spawn(async move {
        let io = match upgraded.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(%source, "websocket upgrade failed: {e}");
                return;
            }
        };
        // Boxed: the connection's futures then hold a pointer instead of the stream's
        // state by value, less per idle tunnel for one allocation of its own size.
        let io: Box<dyn assist_proto::ws::Io> =
            Box::new(WsStream::new(TokioIo::new(io), Role::Server));
        tracing::debug!(%source, "ssh over websocket");
        server::spawn_connection(&ssh.relay, io, source, startup, &ssh.shutdown);
    });
    let accept = assist_proto::ws::accept_key(key.as_bytes());
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade".to_owned()),
            (header::UPGRADE, "websocket".to_owned()),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response()
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

    #[test]
    fn only_a_complete_websocket_request_is_upgraded() {
        let upgrade = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            websocket_key(&h).map(|k| k.to_str().unwrap().to_owned())
        };
        let full = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(upgrade(&full).unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
        // The RFC's own example of the answer's key.
        assert_eq!(
            assist_proto::ws::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        for (drop, why) in [
            (0, "Connection"),
            (1, "Upgrade"),
            (2, "Version"),
            (3, "Key"),
        ] {
            let partial: Vec<_> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, p)| *p)
                .collect();
            assert!(upgrade(&partial).unwrap_err().contains(why), "{why}");
        }
        let mut old = full;
        old[2] = ("sec-websocket-version", "8");
        assert!(upgrade(&old).is_err());
    }
}
