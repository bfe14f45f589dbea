//! The customer's web page on `web_listen`: embedded assets, a login with the control token
//! that opens a page session, a polled state endpoint, enable / extend / stop, the answers to
//! connections waiting for approval, the built-in target's live terminals and its recordings.
//!
//! The page is for the machine's owner only: every route refuses foreign `Host`s (DNS
//! rebinding), reading needs a session cookie (made by presenting the control token), and
//! every change needs that session's CSRF token in a header.

mod assets;
pub mod guard;
mod recordings;
mod terminals;

use crate::agent::Agent;
use crate::control::local_user;
use crate::history::Origin;
use crate::local_api::{ApiError, ApiErrorBody, ApiJson, EnableRequest};
use crate::state::Status;
use crate::state::rfc3339;
use assist_proto::Secret;
use assist_proto::body::JsonBody;
use assist_proto::lock;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use guard::Sessions;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Past windows the page lists; `assist-client history` shows them all.
const PAGE_HISTORY: usize = 50;

/// The code of the window the page enabled, kept only in memory for the page session.
struct CurrentCode {
    /// The window's number: the code is shown while that window is open, extended or not.
    window: u64,
    code: Secret,
    max_seconds: u64,
}

#[derive(Clone)]
pub(crate) struct WebState {
    agent: Arc<Agent>,
    token: Arc<Secret>,
    sessions: Arc<Sessions>,
    code: Arc<Mutex<Option<CurrentCode>>>,
}

/// The page's routes, with the host check and the security headers on every one.
pub fn router(agent: Arc<Agent>, token: Arc<Secret>) -> Router {
    let state = WebState {
        agent,
        token,
        sessions: Arc::new(Sessions::default()),
        code: Arc::new(Mutex::new(None)),
    };
    Router::new()
        .route("/", get(|h: HeaderMap| assets::INDEX_HTML.serve(h)))
        .route(
            "/assets/app.js",
            get(|h: HeaderMap| assets::APP_JS.serve(h)),
        )
        .route(
            "/assets/app.css",
            get(|h: HeaderMap| assets::APP_CSS.serve(h)),
        )
        .route(
            "/assets/terminal.js",
            get(|h: HeaderMap| assets::TERMINAL_JS.serve(h)),
        )
        .route(
            "/assets/xterm.js",
            get(|h: HeaderMap| assets::XTERM_JS.serve(h)),
        )
        .route(
            "/assets/xterm.css",
            get(|h: HeaderMap| assets::XTERM_CSS.serve(h)),
        )
        .route("/web/login", post(login))
        .route("/web/logout", post(logout))
        .route("/web/state", get(page_state))
        .route("/web/history", get(page_history))
        .route("/web/enable", post(enable))
        .route("/web/extend", post(extend))
        .route("/web/disable", post(disable))
        .route("/web/approve", post(approve))
        .route("/web/terminals/watch", get(terminals::watch))
        .route("/web/terminals/stop", post(terminals::stop))
        .route("/web/recordings", get(recordings::list))
        .route("/web/recordings/file", get(recordings::file))
        .route("/web/recordings/delete", post(recordings::delete))
        .with_state(state)
        .layer(axum::middleware::from_fn(guard::check_host))
        .layer(axum::middleware::from_fn(guard::security_headers))
}

/// Body of `POST /web/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    token: String,
}

fn refuse(status: StatusCode, error: &str) -> Response {
    (
        status,
        Json(ApiErrorBody {
            error: error.to_owned(),
        }),
    )
        .into_response()
}

/// Trades the control token for a page session. JSON only, so a cross-site form cannot post
/// it; the answer sets the cookie and carries the session's CSRF token.
async fn login(State(s): State<WebState>, JsonBody(req, _): ApiJson<LoginRequest>) -> Response {
    let presented = Secret::new(req.token);
    if !s.token.matches(presented.expose().trim()) {
        return refuse(StatusCode::UNAUTHORIZED, "wrong access key");
    }
    let (id, csrf) = s.sessions.create();
    (
        [(header::SET_COOKIE, guard::session_cookie(&id))],
        Json(serde_json::json!({ "csrf": csrf })),
    )
        .into_response()
}

async fn logout(State(s): State<WebState>, headers: HeaderMap) -> Response {
    if !s.sessions.check_change(&headers) {
        return csrf_refused();
    }
    s.sessions.remove(&headers);
    (
        [(header::SET_COOKIE, guard::clear_cookie())],
        StatusCode::NO_CONTENT,
    )
        .into_response()
}

fn csrf_refused() -> Response {
    refuse(
        StatusCode::FORBIDDEN,
        "missing or wrong page session or CSRF token; reload the page",
    )
}

/// What the page polls: the status, plus (to the session only) the code and the CSRF token.
#[derive(Serialize)]
struct PageState {
    csrf: String,
    #[serde(flatten)]
    status: Status,
    /// The code, when this page enabled the current window.
    code: Option<String>,
    /// The policy's longest window, once an enable told it.
    max_seconds: Option<u64>,
    /// Whether connections wait for the customer's answer (`approve_connections`).
    approve_connections: bool,
    /// Connections waiting for Allow / Deny, oldest first.
    approvals: Vec<crate::approval::Request>,
    /// The built-in target's terminals open now.
    terminals: Vec<crate::live::TerminalView>,
}

async fn page_state(State(s): State<WebState>, headers: HeaderMap) -> Response {
    let Some(csrf) = s.sessions.csrf_for(&headers) else {
        return not_logged_in();
    };
    let status = s.agent.status().await;
    let (code, max_seconds) = {
        let mut current = lock::mutex(&s.code);
        let max = current.as_ref().map(|c| c.max_seconds);
        // The window the code belongs to is over (ended, stopped, or the CLI made a new
        // one): forget it.
        if current.as_ref().map(|c| c.window) != s.agent.window_number() {
            *current = None;
        }
        (current.as_ref().map(|c| c.code.expose().to_owned()), max)
    };
    let shared = s.agent.shared();
    Json(PageState {
        csrf,
        status,
        code,
        max_seconds,
        approve_connections: shared.approvals().required(),
        approvals: shared
            .approvals()
            .waiting(|from| shared.engineer_from(from)),
        terminals: shared.live().terminals(),
    })
    .into_response()
}

/// Body of `POST /web/approve`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveRequest {
    id: u64,
    answer: crate::approval::Verdict,
}

/// Allow or Deny of a connection waiting for the customer.
async fn approve(
    State(s): State<WebState>,
    headers: HeaderMap,
    JsonBody(req, _): ApiJson<ApproveRequest>,
) -> Response {
    if !s.sessions.check_change(&headers) {
        return csrf_refused();
    }
    match s.agent.shared().approvals().answer(req.id, req.answer) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refuse(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

/// The answer to a read without a live page session.
fn not_logged_in() -> Response {
    refuse(StatusCode::UNAUTHORIZED, "log in with the access key")
}

/// Past windows and their connections, newest first, for the page's history.
async fn page_history(State(s): State<WebState>, headers: HeaderMap) -> Response {
    if s.sessions.csrf_for(&headers).is_none() {
        return not_logged_in();
    }
    match s.agent.history() {
        Ok(mut windows) => {
            windows.retain(|w| w.end.is_some());
            windows.reverse();
            windows.truncate(PAGE_HISTORY);
            Json(windows).into_response()
        }
        Err(e) => {
            tracing::error!("{e}");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the history cannot be read; see the agent's log",
            )
        }
    }
}

/// Extend: the open window ends later; the code and the open sessions stay.
async fn extend(
    State(s): State<WebState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    JsonBody(req, _): ApiJson<EnableRequest>,
) -> Response {
    if !s.sessions.check_change(&headers) {
        return csrf_refused();
    }
    let origin = Origin::page(local_user(&extensions));
    match s.agent.extend(req.minutes, origin).await {
        Ok(extended) => {
            let until = rfc3339(extended.until);
            // The code shown belongs to this window still.
            if let Some(current) = lock::mutex(&s.code).as_mut() {
                current.max_seconds = extended.max_secs;
            }
            Json(serde_json::json!({
                "until": until,
                "seconds": extended.window_secs,
                "max_seconds": extended.max_secs,
                "connections_kept": extended.connections_kept,
            }))
            .into_response()
        }
        Err(e) => ApiError::Agent(e).into_response(),
    }
}

/// Enable and New code: a new window (and a new code) of the chosen length; the sessions
/// of a window open before are closed.
async fn enable(
    State(s): State<WebState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    JsonBody(req, _): ApiJson<EnableRequest>,
) -> Response {
    if !s.sessions.check_change(&headers) {
        return csrf_refused();
    }
    let origin = Origin::page(local_user(&extensions));
    match s.agent.enable(req.minutes, origin).await {
        Ok(enabled) => {
            let until = rfc3339(enabled.until);
            *lock::mutex(&s.code) = Some(CurrentCode {
                window: enabled.window,
                code: Secret::new(enabled.code.to_string()),
                max_seconds: enabled.max_secs,
            });
            Json(serde_json::json!({
                "until": until,
                "seconds": enabled.window_secs,
                "max_seconds": enabled.max_secs,
                "tunnel_pending": enabled.tunnel_pending,
            }))
            .into_response()
        }
        Err(e) => ApiError::Agent(e).into_response(),
    }
}

async fn disable(
    State(s): State<WebState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> Response {
    if !s.sessions.check_change(&headers) {
        return csrf_refused();
    }
    *lock::mutex(&s.code) = None;
    let reason = match local_user(&extensions) {
        Some(user) => format!("stopped on the web page by {user}"),
        None => "stopped on the web page".to_owned(),
    };
    match s
        .agent
        .disable(&reason, crate::agent::STOPPED_BY_CUSTOMER)
        .await
    {
        Ok(report) => Json(report).into_response(),
        Err(e) => ApiError::Agent(e).into_response(),
    }
}

#[cfg(test)]
mod tests;
