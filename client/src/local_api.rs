//! The agent's local API as its two routers (`control` for the CLI, `web` for the page)
//! and the CLI's client (`commands`) all see it: the request and answer bodies, the error
//! type with its status codes, and the JSON body reader.

use crate::agent::AgentError;
use crate::register::RegisterError;
use assist_proto::body::{BodyError, JsonBody, JsonRejection};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Body of `POST /api/enable`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableRequest {
    /// Length of the window; default 60, capped by the jump host's policy.
    #[serde(default)]
    pub minutes: Option<u64>,
}

/// Answer of `POST /api/enable`. Carries the code: only ever sent to the token holder.
#[derive(Serialize, Deserialize)]
pub struct EnableResponse {
    pub code: String,
    pub until: String,
    /// Length of the window granted (the request capped by the policy).
    pub seconds: u64,
    /// The policy's longest window, for a duration picker.
    pub max_seconds: u64,
    /// Set when the tunnel did not hold its forwards in time but has not failed: what it
    /// is doing (the code works once it holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_pending: Option<String>,
}

impl std::fmt::Debug for EnableResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnableResponse")
            .field("code", &"[redacted]")
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

/// Body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: String,
}

/// Largest request body the local API reads: its bodies are a few dozen bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// Errors of the API, mapped to status codes. The messages are meant for the machine's owner
/// (who holds the token), so they say what happened and what to do.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    /// The request itself is wrong: the status, and a message saying how.
    Request(StatusCode, String),
    Agent(AgentError),
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        Self::Agent(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "missing or wrong token (send `Authorization: Bearer <data_dir/control-token>`)"
                    .to_owned(),
            ),
            ApiError::Request(status, error) => (status, error),
            ApiError::Agent(e) => {
                let status = match &e {
                    AgentError::BadMinutes => StatusCode::BAD_REQUEST,
                    AgentError::NotEnabled => StatusCode::CONFLICT,
                    AgentError::NoWindowAllowed => StatusCode::FORBIDDEN,
                    AgentError::Register(RegisterError::BoundToOtherKey { .. }) => {
                        StatusCode::CONFLICT
                    }
                    AgentError::Register(RegisterError::NotAllowed { .. }) => StatusCode::FORBIDDEN,
                    AgentError::Register(RegisterError::Enrollment { .. }) => StatusCode::FORBIDDEN,
                    AgentError::Register(_) => StatusCode::BAD_GATEWAY,
                    // The customer's SSH server, not this agent, is what failed.
                    AgentError::Target(_) => StatusCode::BAD_GATEWAY,
                    AgentError::Tunnel { .. } => StatusCode::BAD_GATEWAY,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, e.to_string())
            }
        };
        (status, Json(ApiErrorBody { error })).into_response()
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        ApiError::Request(e.status(), e.to_string())
    }
}

impl JsonRejection for ApiError {
    const MAX_BODY: usize = MAX_BODY;
    const JSON_CONTENT_TYPE_ONLY: bool = true;
}

/// A JSON body whose every rejection is a JSON [`ApiError`] with a message: 415 unless it is
/// sent as `application/json` (so a cross-site form cannot post it), 413 over [`MAX_BODY`],
/// 408 when it does not arrive in time, 400 when it is not JSON, 422 when it is JSON of the
/// wrong shape.
pub type ApiJson<T> = JsonBody<T, ApiError>;

/// What every route answers for a path or method it does not know: JSON like the rest.
pub async fn not_found() -> ApiError {
    ApiError::Request(StatusCode::NOT_FOUND, "no such endpoint".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::Request(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
}
