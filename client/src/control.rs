//! The local control API (JSON over HTTP on `web_listen`), used by `assist-client
//! enable|disable|status`. Every request must carry the owner's token; without it nothing is
//! read or changed. The customer's web page (`crate::web`) is mounted next to it.

use crate::agent::{Agent, AgentError, DisableReport, rfc3339};
use crate::register::RegisterError;
use crate::state::Status;
use assist_proto::Secret;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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

/// Errors of the API, mapped to status codes. The messages are meant for the machine's owner
/// (who holds the token), so they say what happened and what to do.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
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
            ApiError::Agent(e) => {
                let status = match &e {
                    AgentError::BadMinutes => StatusCode::BAD_REQUEST,
                    AgentError::NoWindowAllowed => StatusCode::FORBIDDEN,
                    AgentError::Register(RegisterError::BoundToOtherKey { .. }) => {
                        StatusCode::CONFLICT
                    }
                    AgentError::Register(RegisterError::NotAllowed { .. }) => StatusCode::FORBIDDEN,
                    AgentError::Register(_) => StatusCode::BAD_GATEWAY,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, e.to_string())
            }
        };
        (status, Json(ApiErrorBody { error })).into_response()
    }
}

#[derive(Clone)]
struct AppState {
    agent: Arc<Agent>,
    token: Arc<Secret>,
}

/// The API's routes, all behind the token check.
pub fn router(agent: Arc<Agent>, token: Secret) -> Router {
    let state = AppState {
        agent,
        token: Arc::new(token),
    };
    let web = crate::web::router(state.agent.clone(), state.token.clone());
    Router::new()
        .route("/api/status", get(status))
        .route("/api/enable", post(enable))
        .route("/api/disable", post(disable))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
        .merge(web)
}

/// Serves `router` on an already-bound listener until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), state.token.expose().as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

/// Compares without an early exit so the token cannot be guessed byte by byte by timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    Json(state.agent.status().await)
}

async fn enable(
    State(state): State<AppState>,
    Json(req): Json<EnableRequest>,
) -> Result<Json<EnableResponse>, ApiError> {
    let enabled = state.agent.enable(req.minutes).await?;
    Ok(Json(EnableResponse {
        code: enabled.code.to_string(),
        until: rfc3339(enabled.until),
        seconds: enabled.window_secs,
        max_seconds: enabled.max_secs,
    }))
}

async fn disable(State(state): State<AppState>) -> Result<Json<DisableReport>, ApiError> {
    Ok(Json(state.agent.disable("disabled by the owner").await?))
}

/// A fresh random token: 32 bytes from the OS RNG, hex.
pub fn new_token() -> Secret {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes[..]);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    bytes.fill(0);
    Secret::new(hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use axum::body::Body;
    use tower::ServiceExt;

    /// An agent whose jump host does not exist: enable would fail, so a 401 proves the
    /// request never reached it; the key file proves nothing changed.
    fn agent(dir: &std::path::Path) -> Arc<Agent> {
        let text = format!(
            "serial = \"SN-1\"\njumphost = \"127.0.0.1:9\"\napi_url = \"http://127.0.0.1:9\"\n\
             data_dir = \"{}\"\nweb_listen = \"127.0.0.1:0\"\ntarget_user = \"root\"\n\
             authorized_keys = \"{}\"\n[services]\nssh = \"127.0.0.1:22\"\n",
            dir.display(),
            dir.join("authorized_keys").display()
        );
        let config = Config::parse(&dir.join("client.toml"), &text).unwrap();
        Arc::new(Agent::new(config).unwrap())
    }

    fn request(method: &str, path: &str, auth: Option<&str>, body: &str) -> Request {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Body::from(body.to_owned())).unwrap()
    }

    #[tokio::test]
    async fn requests_without_the_token_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("authorized_keys");
        let stale = "ssh-ed25519 AAAAold assist-client:SN-1\nssh-ed25519 AAAAother x\n";
        std::fs::write(&keys, stale).unwrap();
        let app = router(agent(dir.path()), Secret::new("s3cret"));
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("s3cret"),
            Some("Bearer "),
            Some("Basic s3cret"),
        ] {
            for (method, path, body) in [
                ("GET", "/api/status", ""),
                ("POST", "/api/enable", "{\"minutes\":5}"),
                ("POST", "/api/disable", ""),
            ] {
                let resp = app
                    .clone()
                    .oneshot(request(method, path, auth, body))
                    .await
                    .unwrap();
                assert_eq!(
                    resp.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} {auth:?}"
                );
            }
        }
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), stale);
    }

    #[tokio::test]
    async fn the_token_opens_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("authorized_keys");
        std::fs::write(&keys, "ssh-ed25519 AAAAold assist-client:SN-1\nkeep\n").unwrap();
        let app = router(agent(dir.path()), Secret::new("s3cret"));
        let resp = app
            .clone()
            .oneshot(request("GET", "/api/status", Some("Bearer s3cret"), ""))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let status: Status = serde_json::from_slice(&body).unwrap();
        assert!(!status.enabled);
        assert_eq!(status.serial, "SN-1");

        // Enabling against an unreachable jump host fails with advice, and installs nothing.
        let resp = app
            .clone()
            .oneshot(request("POST", "/api/enable", Some("Bearer s3cret"), "{}"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("api_url"));

        let resp = app
            .oneshot(request("POST", "/api/disable", Some("Bearer s3cret"), ""))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let report: DisableReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(report.key_lines_removed, 1);
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), "keep\n");
    }

    #[test]
    fn tokens_are_long_random_and_compared_exactly() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a, b);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"", b""));
    }
}
