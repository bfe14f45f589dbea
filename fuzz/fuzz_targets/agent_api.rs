//! The agent's local HTTP surface: the control API (`/api/*`, Bearer token) and the web page
//! (`/`, `/assets/*`, `/web/*`: Host check, session cookie, CSRF header), through the real
//! router (`oneshot`, no sockets).
//!
//! One agent is built once, on a temporary data folder, with a jump host that does not
//! exist (so enable can never succeed) and a key file holding a stale marker line (which
//! only an authorized disable removes). Each input gets a fresh router (fresh page
//! sessions), may log in first with the real token, then sends one request whose method,
//! path, Host, Authorization, Cookie, CSRF header, content type and body are fuzzed; each
//! credential is either absent, the real one, or arbitrary.
//!
//! Asserts: no 5xx (except 502 for an authorized enable: the jump host is unreachable by
//! construction); no 2xx on `/api/*` without the token, nor on session routes without the
//! session (and for changes its CSRF token); the key file changes only for an authorized
//! request; assistance is never enabled; the token never appears in an answer; a request
//! with a foreign Host that reaches the page's layers is refused with 421.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use assist_client::agent::Agent;
use assist_client::config::Config;
use assist_client::control;
use assist_proto::Secret;
use axum::body::Body;
use axum::http::{HeaderValue, Request, header};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const TOKEN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const STALE: &str = "ssh-ed25519 AAAAold assist-client:SN-1\nssh-ed25519 AAAAother x\n";
const PATHS: &[&str] = &[
    "/api/status",
    "/api/enable",
    "/api/disable",
    "/",
    "/assets/app.js",
    "/assets/app.css",
    "/web/login",
    "/web/logout",
    "/web/state",
    "/web/enable",
    "/web/extend",
    "/web/disable",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"];
const FOREIGN_HOSTS: &[&str] = &[
    "evil.example",
    "evil.example:7070",
    "127.0.0.1.nip.io:7070",
    "localhost.evil.example",
];

#[derive(Arbitrary, Debug)]
enum Choice {
    Absent,
    Real,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Host {
    Absent,
    Loopback,
    Foreign(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Path {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Raw(Vec<u8>),
    Minutes(Option<u64>),
    Login(Choice),
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    path: Path,
    host: Host,
    log_in_first: bool,
    auth: Choice,
    cookie: Choice,
    csrf: Choice,
    json: bool,
    payload: Payload,
}

struct Fixed {
    runtime: tokio::runtime::Runtime,
    agent: Arc<Agent>,
    keys: PathBuf,
    _dir: tempfile::TempDir,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary folder");
        let keys = dir.path().join("authorized_keys");
        std::fs::write(&keys, STALE).expect("key file");
        let text = format!(
            "serial = \"SN-1\"\njumphost = \"127.0.0.1:9\"\napi_url = \"http://127.0.0.1:9\"\n\
             data_dir = \"{}\"\nweb_listen = \"127.0.0.1:0\"\ntarget_user = \"root\"\n\
             authorized_keys = \"{}\"\n[services]\nssh = \"127.0.0.1:22\"\n",
            dir.path().display(),
            keys.display()
        );
        let config = Config::parse(&dir.path().join("client.toml"), &text).expect("config");
        Fixed {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            agent: Arc::new(Agent::new(config).expect("agent")),
            keys,
            _dir: dir,
        }
    })
}

fn pick<'a>(choice: &'a Choice, real: &'a str) -> Option<&'a str> {
    match choice {
        Choice::Absent => None,
        Choice::Real => Some(real),
        Choice::Other(s) => Some(s),
    }
}

async fn send(app: &axum::Router, request: Request<Body>) -> (u16, axum::http::HeaderMap, Vec<u8>) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 4 << 20)
        .await
        .expect("answer body");
    (parts.status.as_u16(), parts.headers, body.to_vec())
}

/// A real login; returns (session id, CSRF token).
async fn log_in(app: &axum::Router) -> (String, String) {
    let request = Request::post("/web/login")
        .header(header::HOST, "127.0.0.1:7070")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!("{{\"token\":\"{TOKEN}\"}}")))
        .expect("login request");
    let (status, headers, body) = send(app, request).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let cookie = headers[header::SET_COOKIE].to_str().expect("cookie");
    let id = cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .expect("session id");
    let csrf = serde_json::from_slice::<serde_json::Value>(&body).expect("login answer")["csrf"]
        .as_str()
        .expect("csrf")
        .to_owned();
    (id, csrf)
}

fuzz_target!(|input: Input| {
    let f = fixed();
    f.runtime.block_on(run(f, input));
});

async fn run(f: &Fixed, input: Input) {
    let app = control::router(f.agent.clone(), Secret::new(TOKEN));
    let (session, csrf) = if input.log_in_first {
        log_in(&app).await
    } else {
        // Never issued: a cookie or header carrying these names no session.
        ("no-session".to_owned(), "no-csrf".to_owned())
    };

    let path = match &input.path {
        Path::Known(i) => PATHS[usize::from(*i) % PATHS.len()].to_owned(),
        Path::Other(s) => s.clone(),
    };
    let method = METHODS[usize::from(input.method) % METHODS.len()];
    let host = match &input.host {
        Host::Absent => None,
        Host::Loopback => Some("127.0.0.1:7070".to_owned()),
        Host::Foreign(i) => Some(FOREIGN_HOSTS[usize::from(*i) % FOREIGN_HOSTS.len()].to_owned()),
        Host::Other(s) => Some(s.clone()),
    };
    let bearer = format!("Bearer {TOKEN}");
    let auth = pick(&input.auth, &bearer);
    let cookie_real = format!("assist_session={session}");
    let cookie = pick(&input.cookie, &cookie_real);
    let csrf_header = pick(&input.csrf, &csrf);
    let body = match &input.payload {
        Payload::Raw(bytes) => bytes.clone(),
        Payload::Minutes(None) => b"{}".to_vec(),
        Payload::Minutes(Some(m)) => format!("{{\"minutes\":{m}}}").into_bytes(),
        Payload::Login(choice) => {
            let token = pick(choice, TOKEN).unwrap_or_default();
            serde_json::json!({ "token": token })
                .to_string()
                .into_bytes()
        }
    };

    let mut builder = Request::builder().method(method).uri(path.as_str());
    let headers = [
        (header::HOST, host.as_deref()),
        (header::AUTHORIZATION, auth),
        (header::COOKIE, cookie),
        ("x-csrf-token".parse().expect("header name"), csrf_header),
        (
            header::CONTENT_TYPE,
            input.json.then_some("application/json"),
        ),
    ];
    for (name, value) in headers {
        if let Some(value) = value {
            let Ok(value) = HeaderValue::from_str(value) else {
                return;
            };
            builder = builder.header(name, value);
        }
    }
    let Ok(request) = builder.body(Body::from(body)) else {
        return;
    };
    // What the request carries, read back from the request itself.
    let carried = |name: &str| {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let has_token = carried("authorization").iter().any(|v| *v == bearer);
    let has_session = input.log_in_first
        && carried("cookie")
            .iter()
            .any(|v| v.split(';').any(|kv| kv.trim() == cookie_real));
    let has_csrf = input.log_in_first && carried("x-csrf-token").iter().any(|v| *v == csrf);
    let route = request.uri().path().to_owned();
    let foreign = matches!(input.host, Host::Foreign(_)) && request.uri().authority().is_none();

    let (status, headers, answer) = send(&app, request).await;

    let authorized_change = has_token || (has_session && has_csrf);
    assert!(
        status < 500 || (status == 502 && authorized_change),
        "{status} for {method} {route}: {}",
        String::from_utf8_lossy(&answer)
    );
    if (200..300).contains(&status) {
        if route.starts_with("/api/") {
            assert!(has_token, "{status} without the token: {method} {route}");
        }
        if route == "/web/state" {
            assert!(has_session, "{status} without a session: {method} {route}");
        }
        if ["/web/logout", "/web/enable", "/web/extend", "/web/disable"].contains(&route.as_str()) {
            assert!(
                has_session && has_csrf,
                "{status} without CSRF: {method} {route}"
            );
        }
    }
    if foreign && headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        assert_eq!(status, 421, "foreign Host reached {method} {route}");
    }
    let shown = String::from_utf8_lossy(&answer);
    assert!(
        !shown.contains(TOKEN),
        "the token leaked from {method} {route}"
    );
    for value in headers.values() {
        assert!(
            !value
                .as_bytes()
                .windows(TOKEN.len())
                .any(|w| w == TOKEN.as_bytes())
        );
    }

    assert!(
        !f.agent.status().await.enabled,
        "enabled without a jump host"
    );
    let keys = std::fs::read_to_string(&f.keys).expect("key file");
    if keys != STALE {
        assert!(
            authorized_change,
            "{method} {route} changed the key file without the token or session+CSRF"
        );
        std::fs::write(&f.keys, STALE).expect("restore the key file");
    }
}
