//! The local control API (JSON over HTTP on `web_listen`), used by `assist-client
//! enable|disable|status`. Every request must carry the owner's token; without it nothing is
//! read or changed. The customer's web page (`crate::web`) and the token-free `GET /metrics`
//! (`crate::metrics`) are mounted next to it.

use crate::agent::{Agent, DisableReport};
use crate::history::Origin;
use crate::local_api::{
    ApiError, ApiJson, EnableRequest, EnableResponse, MAX_BODY, method_not_allowed, not_found,
};
use crate::state::Status;
use crate::state::rfc3339;
use assist_proto::Secret;
use assist_proto::body::JsonBody;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
    let metrics = crate::metrics::router(state.agent.clone());
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
        .merge(metrics)
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
    if !state.token.matches(presented) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    Json(state.agent.status().await)
}

async fn enable(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    JsonBody(req, _): ApiJson<EnableRequest>,
) -> Result<Json<EnableResponse>, ApiError> {
    let origin = Origin::command_line(local_user(&extensions));
    let enabled = state.agent.enable(req.minutes, origin).await?;
    Ok(Json(EnableResponse {
        code: enabled.code.to_string(),
        until: rfc3339(enabled.until),
        seconds: enabled.window_secs,
        max_seconds: enabled.max_secs,
        tunnel_pending: enabled.tunnel_pending,
    }))
}

async fn disable(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
) -> Result<Json<DisableReport>, ApiError> {
    let reason = match local_user(&extensions) {
        Some(user) => format!("disabled on the command line by {user}"),
        None => "disabled on the command line".to_owned(),
    };
    Ok(Json(
        state
            .agent
            .disable(&reason, crate::agent::STOPPED_BY_CUSTOMER)
            .await?,
    ))
}

/// The local account that opened this request's connection, for the history.
pub fn local_user(extensions: &axum::http::Extensions) -> Option<String> {
    let ConnectInfo(peer) = extensions.get::<ConnectInfo<std::net::SocketAddr>>()?;
    crate::peer_user::of(*peer)
}

/// A fresh random token: 32 bytes from the OS RNG, hex.
pub fn new_token() -> Secret {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes[..]);
    let hex = hex::encode(bytes);
    bytes.fill(0);
    Secret::new(hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::local_api::ApiErrorBody;
    use axum::body::Body;
    use axum::http::StatusCode;
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
        assert!(Secret::new("abc").matches("abc"));
        assert!(!Secret::new("abc").matches("abd"));
        assert!(!Secret::new("").matches(""));
    }
}
