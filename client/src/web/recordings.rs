//! The built-in target's recordings on the page: the list, one file for the player, delete.

use super::{WebState, csrf_refused, refuse};
use crate::local_api::ApiJson;
use crate::recordings::{self, RecordingError};
use assist_proto::body::JsonBody;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Named {
    name: String,
}

fn failed(e: RecordingError) -> Response {
    match e {
        RecordingError::NotFound(_) => refuse(StatusCode::NOT_FOUND, &e.to_string()),
        RecordingError::Io { .. } => {
            tracing::error!("{e}");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the recordings cannot be read; see the agent's log",
            )
        }
    }
}

/// `GET /web/recordings`: newest first.
pub(super) async fn list(State(s): State<WebState>, headers: HeaderMap) -> Response {
    if s.sessions.csrf_for(&headers).is_none() {
        return super::not_logged_in();
    }
    let dir = s.agent.recordings_dir();
    match tokio::task::spawn_blocking(move || recordings::list(&dir)).await {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => failed(e),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `GET /web/recordings/file?name=…`: the asciicast file, for the page's player.
pub(super) async fn file(
    State(s): State<WebState>,
    headers: HeaderMap,
    Query(named): Query<Named>,
) -> Response {
    if s.sessions.csrf_for(&headers).is_none() {
        return super::not_logged_in();
    }
    let dir = s.agent.recordings_dir();
    match tokio::task::spawn_blocking(move || recordings::read(&dir, &named.name)).await {
        Ok(Ok(bytes)) => {
            ([(header::CONTENT_TYPE, "application/x-asciicast")], bytes).into_response()
        }
        Ok(Err(e)) => failed(e),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `POST /web/recordings/delete` `{"name": …}`.
pub(super) async fn delete(
    State(s): State<WebState>,
    headers: HeaderMap,
    JsonBody(named, _): ApiJson<Named>,
) -> Response {
    if !s.sessions.check_change(&headers) {
        return csrf_refused();
    }
    let dir = s.agent.recordings_dir();
    let name = named.name.clone();
    match tokio::task::spawn_blocking(move || recordings::delete(&dir, &name)).await {
        Ok(Ok(())) => {
            tracing::info!(name = %named.name, "the customer removed a recording");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Err(e)) => failed(e),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
