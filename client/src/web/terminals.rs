//! The built-in target's terminals on the page: a read-only live feed of one (a WebSocket:
//! its size, the backlog, then what it prints, closed when it ends) and Stop.

use super::{WebState, csrf_refused, refuse};
use crate::live::Frame;
use crate::local_api::ApiJson;
use assist_proto::body::JsonBody;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Which {
    id: u64,
}

/// `GET /web/terminals/watch?id=N`, upgraded to a WebSocket.
///
/// A browser cannot put the CSRF header on a WebSocket handshake, and a WebSocket is not
/// bound by the same-origin policy, so a foreign page could open one. It is therefore let
/// in only with the session cookie (SameSite=Strict, so a cross-site handshake does not
/// carry it) *and* an `Origin` that is this page's own (`http://` + the `Host` the host
/// check accepted): a page elsewhere sends its own origin.
pub(super) async fn watch(
    State(s): State<WebState>,
    headers: HeaderMap,
    Query(which): Query<Which>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "the live view opens only from this page",
        );
    }
    if s.sessions.csrf_for(&headers).is_none() {
        return super::not_logged_in();
    }
    let Some(watch) = s.agent.shared().live().watch(which.id) else {
        return refuse(
            StatusCode::NOT_FOUND,
            &format!("no terminal {} is open", which.id),
        );
    };
    upgrade.on_upgrade(move |socket| feed(socket, watch))
}

fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    match (text(header::ORIGIN), text(header::HOST)) {
        (Some(origin), Some(host)) => origin.eq_ignore_ascii_case(&format!("http://{host}")),
        _ => false,
    }
}

/// Text messages carry the size (`{"cols":…,"rows":…}`) and a note of skipped output
/// (`{"skipped":N}`); binary messages carry the output, the backlog first.
async fn feed(mut socket: WebSocket, mut watch: crate::live::Watch) {
    let size = |cols: u16, rows: u16| {
        Message::Text(
            serde_json::json!({ "cols": cols, "rows": rows })
                .to_string()
                .into(),
        )
    };
    if socket.send(size(watch.cols, watch.rows)).await.is_err()
        || socket
            .send(Message::Binary(watch.backlog.into()))
            .await
            .is_err()
    {
        return;
    }
    loop {
        let message = tokio::select! {
            frame = watch.frames.recv() => match frame {
                Ok(Frame::Output(bytes)) => Message::Binary(bytes.to_vec().into()),
                Ok(Frame::Resize { cols, rows }) => size(cols, rows),
                // A slow page missed some output; it is told, and follows on from here.
                Err(RecvError::Lagged(n)) => {
                    Message::Text(serde_json::json!({ "skipped": n }).to_string().into())
                }
                Err(RecvError::Closed) => break,
            },
            // The page only listens; anything from it but a close is ignored.
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
        };
        if socket.send(message).await.is_err() {
            return;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// `POST /web/terminals/stop` `{"id": N}`: ends that engineer's session at once.
pub(super) async fn stop(
    State(s): State<WebState>,
    headers: HeaderMap,
    JsonBody(which, _): ApiJson<Which>,
) -> Response {
    if !s.sessions.check_change(&headers) {
        return csrf_refused();
    }
    if s.agent.shared().live().stop(which.id) {
        tracing::info!(terminal = which.id, "the customer stopped a terminal");
        StatusCode::NO_CONTENT.into_response()
    } else {
        refuse(
            StatusCode::NOT_FOUND,
            &format!("no terminal {} is open", which.id),
        )
    }
}
