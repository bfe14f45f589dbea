//! The local control API (JSON over HTTP on `web_listen`), used by `assist-client
//! enable|disable|status`. Every request must carry the owner's token; without it nothing is
//! read or changed. The customer's web page (`crate::web`) is mounted next to it.

use crate::agent::{Agent, AgentError, DisableReport};
use crate::register::RegisterError;
use crate::state::Status;
use crate::state::rfc3339;
use crate::web::constant_time_eq;
use assist_proto::Secret;
use assist_proto::body::read_json;
use assist_proto::limits::BODY_TIMEOUT;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
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
                    AgentError::NoWindowAllowed => StatusCode::FORBIDDEN,
                    AgentError::Register(RegisterError::BoundToOtherKey { .. }) => {
                        StatusCode::CONFLICT
                    }
                    AgentError::Register(RegisterError::NotAllowed { .. }) => StatusCode::FORBIDDEN,
                    AgentError::Register(RegisterError::Enrollment { .. }) => StatusCode::FORBIDDEN,
                    AgentError::Register(_) => StatusCode::BAD_GATEWAY,
                    // The customer's SSH server, not this agent, is what failed.
                    AgentError::Target(_) => StatusCode::BAD_GATEWAY,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, e.to_string())
            }
        };
        (status, Json(ApiErrorBody { error })).into_response()
    }
}

/// A JSON body whose every rejection is a JSON [`ApiError`] with a message: 415 unless it is
/// sent as `application/json` (so a cross-site form cannot post it), 413 over [`MAX_BODY`],
/// 408 when it does not arrive in time, 400 when it is not JSON, 422 when it is JSON of the
/// wrong shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let headers = req.headers();
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::Request(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with Content-Type: application/json".into(),
            ));
        }
        read_json(req, state, MAX_BODY, BODY_TIMEOUT)
            .await
            .map(ApiJson)
            .map_err(|e| ApiError::Request(e.status(), e.to_string()))
    }
}

/// What every route answers for a path or method it does not know: JSON like the rest.
pub async fn not_found() -> ApiError {
    ApiError::Request(StatusCode::NOT_FOUND, "no such endpoint".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::Request(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// Serves `router` on an already-bound listener until `shutdown` is cancelled, with the
/// header deadline and connection limits of `assist_proto::http`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = assist_proto::http::HttpLimits::default();
    assist_proto::http::serve(listener, router, limits, shutdown.cancelled_owned()).await
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

async fn status(State(state): State<AppState>) -> Json<Status> {
    Json(state.agent.status().await)
}

async fn enable(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnableRequest>,
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

    /// Hostile bodies, paths and methods with the right token: each a 4xx whose body is a
    /// one-line JSON error, and nothing changes (the jump host is never even asked: with an
    /// unreachable one, an enable that got through would be a 502).
    #[tokio::test]
    async fn hostile_requests_get_a_json_4xx_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("authorized_keys");
        let stale = "ssh-ed25519 AAAAold assist-client:SN-1\nssh-ed25519 AAAAother x\n";
        std::fs::write(&keys, stale).unwrap();
        let app = router(agent(dir.path()), Secret::new("s3cret"));
        let json = Some("application/json");
        let huge = format!("{{\"minutes\": 5, \"x\": \"{}\"}}", "a".repeat(MAX_BODY));
        let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
        let cases: Vec<(&str, &str, Option<&str>, String, u16)> = vec![
            ("POST", "/api/enable", json, "{\"minutes\": 0}".into(), 400),
            ("POST", "/api/enable", json, "{\"minutes\": -1}".into(), 422),
            (
                "POST",
                "/api/enable",
                json,
                "{\"minutes\": 1.5}".into(),
                422,
            ),
            (
                "POST",
                "/api/enable",
                json,
                "{\"minutes\": \"5\"}".into(),
                422,
            ),
            (
                "POST",
                "/api/enable",
                json,
                "{\"minutes\": 1e400}".into(),
                400,
            ),
            (
                "POST",
                "/api/enable",
                json,
                "{\"minutes\": 18446744073709551616}".into(),
                422,
            ),
            (
                "POST",
                "/api/enable",
                json,
                "{\"minutes\": 5, \"until\": 0}".into(),
                422,
            ),
            (
                "POST",
                "/api/enable",
                json,
                "{\"minutes\": 5, \"minutes\": 9}".into(),
                422,
            ),
            ("POST", "/api/enable", json, "[5]".into(), 422),
            ("POST", "/api/enable", json, "null".into(), 422),
            ("POST", "/api/enable", json, "{\"minutes\": 5".into(), 400),
            ("POST", "/api/enable", json, "".into(), 400),
            ("POST", "/api/enable", json, "\u{feff}{}".into(), 400),
            (
                "POST",
                "/api/enable",
                json,
                "{\"minutes\":5}\u{0}".into(),
                400,
            ),
            (
                "POST",
                "/api/enable",
                json,
                "'; DROP TABLE x; --".into(),
                400,
            ),
            ("POST", "/api/enable", json, deep, 400),
            ("POST", "/api/enable", json, huge, 413),
            ("POST", "/api/enable", None, "{\"minutes\": 5}".into(), 415),
            ("POST", "/api/enable", Some("text/plain"), "{}".into(), 415),
            (
                "POST",
                "/api/enable",
                Some("application/x-www-form-urlencoded"),
                "minutes=5".into(),
                415,
            ),
            ("GET", "/api/enable", None, "".into(), 405),
            ("DELETE", "/api/status", None, "".into(), 405),
            ("GET", "/api/../../etc/passwd", None, "".into(), 404),
            ("GET", "/api/status/..%2f..%2fetc", None, "".into(), 404),
            ("POST", "/api/%00", json, "{}".into(), 404),
        ];
        for (method, path, content_type, body, want) in cases {
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::AUTHORIZATION, "Bearer s3cret");
            if let Some(t) = content_type {
                req = req.header(header::CONTENT_TYPE, t);
            }
            let what = format!("{method} {path} {content_type:?} {:.60}", body);
            let resp = app
                .clone()
                .oneshot(req.body(Body::from(body)).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), want, "{what}");
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let error: ApiErrorBody = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{what}: not a JSON error ({e}): {bytes:?}"));
            assert!(
                !error.error.is_empty() && !error.error.contains('\n') && error.error.len() < 400,
                "{what}: {:?}",
                error.error
            );
        }
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), stale);
        let resp = app
            .oneshot(request("GET", "/api/status", Some("Bearer s3cret"), ""))
            .await
            .unwrap();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let status: Status = serde_json::from_slice(&body).unwrap();
        assert!(!status.enabled);
    }

    /// A body that never arrives holds no task forever: 408 after the body timeout.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_arrives_is_408() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(agent(dir.path()), Secret::new("s3cret"));
        let never = futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        let req = Request::builder()
            .method("POST")
            .uri("/api/enable")
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, "20")
            .body(Body::from_stream(never))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
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
