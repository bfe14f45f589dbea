//! The page's refusals, through the whole router (API and page) as the agent serves it.

use crate::agent::Agent;
use crate::config::Config;
use crate::control;
use assist_proto::Secret;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use std::sync::Arc;
use tower::ServiceExt;

const HOST: &str = "127.0.0.1:7070";
const STALE: &str = "ssh-ed25519 AAAAold assist-client:SN-1\nssh-ed25519 AAAAother x\n";

/// The whole router with an agent whose jump host does not exist, and a key file holding a
/// stale line: a successful disable removes it, so an unchanged file proves nothing ran.
fn app(dir: &std::path::Path) -> (Router, std::path::PathBuf) {
    let (router, keys, _) = app_and_agent(dir);
    (router, keys)
}

/// [`app`] and its agent, whose shared state a test fills (approvals, terminals).
fn app_and_agent(dir: &std::path::Path) -> (Router, std::path::PathBuf, Arc<Agent>) {
    let keys = dir.join("authorized_keys");
    std::fs::write(&keys, STALE).unwrap();
    let text = format!(
        "serial = \"SN-1\"\njumphost = \"127.0.0.1:9\"\napi_url = \"http://127.0.0.1:9\"\n\
         data_dir = \"{}\"\nweb_listen = \"127.0.0.1:0\"\ntarget_user = \"root\"\n\
         authorized_keys = \"{}\"\n[services]\nssh = \"127.0.0.1:22\"\n",
        dir.display(),
        keys.display()
    );
    let config = Config::parse(&dir.join("client.toml"), &text).unwrap();
    let agent = Arc::new(Agent::new(config).unwrap());
    (
        control::router(agent.clone(), Secret::new("s3cret")),
        keys,
        agent,
    )
}

fn req(method: &str, path: &str, host: &str, headers: &[(&str, &str)], body: &str) -> Request {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

async fn send(app: &Router, r: Request) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app.clone().oneshot(r).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Logs in; returns (the `Cookie` header value, the CSRF token).
async fn login(app: &Router) -> (String, String) {
    let (status, headers, body) = send(
        app,
        req("POST", "/web/login", HOST, &[], r#"{"token":"s3cret"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let set = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let csrf = serde_json::from_str::<serde_json::Value>(&body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    (cookie, csrf)
}

fn assert_security_headers(h: &axum::http::HeaderMap, what: &str) {
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{what}");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{what}");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{what}");
}

#[tokio::test]
async fn foreign_hosts_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (app, keys) = app(dir.path());
    let (cookie, csrf) = login(&app).await;
    let auth = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    for host in [
        "evil.example",
        "evil.example:7070",
        "127.0.0.1.nip.io:7070",
        "x",
    ] {
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/assets/app.js"),
            ("GET", "/web/state"),
            ("POST", "/web/login"),
            ("POST", "/web/disable"),
            ("POST", "/web/enable"),
        ] {
            let body = if path == "/web/login" {
                r#"{"token":"s3cret"}"#
            } else {
                "{}"
            };
            let (status, headers, _) = send(&app, req(method, path, host, &auth, body)).await;
            assert_eq!(
                status,
                StatusCode::MISDIRECTED_REQUEST,
                "{method} {path} {host}"
            );
            assert!(headers.get(header::SET_COOKIE).is_none());
            assert_security_headers(&headers, "421");
        }
    }
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), STALE);
    for host in [HOST, "localhost:7070", "[::1]:7070", "localhost"] {
        let (status, headers, body) = send(&app, req("GET", "/", host, &[], "")).await;
        assert_eq!(status, StatusCode::OK, "{host}");
        assert!(body.contains("/assets/app.js"));
        assert!(!body.contains("<script>"), "no inline script");
        assert_security_headers(&headers, "page");
    }
}

#[tokio::test]
async fn changes_without_the_session_and_its_csrf_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (app, keys) = app(dir.path());
    let (cookie, csrf) = login(&app).await;
    let (other_cookie, _) = login(&app).await;
    let cases: [(&str, Vec<(&str, &str)>); 6] = [
        ("nothing", vec![]),
        ("no cookie", vec![("x-csrf-token", csrf.as_str())]),
        ("no token", vec![("cookie", cookie.as_str())]),
        (
            "wrong token",
            vec![("cookie", cookie.as_str()), ("x-csrf-token", "00ff")],
        ),
        (
            "another session's cookie",
            vec![
                ("cookie", other_cookie.as_str()),
                ("x-csrf-token", csrf.as_str()),
            ],
        ),
        (
            "the bearer token instead",
            vec![
                ("x-csrf-token", "s3cret"),
                ("authorization", "Bearer s3cret"),
            ],
        ),
    ];
    for (what, headers) in &cases {
        for path in ["/web/disable", "/web/enable", "/web/extend", "/web/logout"] {
            let (status, h, _) =
                send(&app, req("POST", path, HOST, headers, r#"{"minutes":5}"#)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} with {what}");
            assert_security_headers(&h, "403");
        }
    }
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), STALE);

    // The right pair does change things: disable removes the stale line.
    let good = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let (status, _, body) = send(&app, req("POST", "/web/disable", HOST, &good, "")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        std::fs::read_to_string(&keys).unwrap(),
        "ssh-ed25519 AAAAother x\n"
    );
}

#[tokio::test]
async fn reading_needs_a_session_and_a_session_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app(dir.path());
    let bogus = [("cookie", "assist_session=1234")];
    for path in ["/web/state", "/web/history"] {
        let (status, _, _) = send(&app, req("GET", path, HOST, &[], "")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _, _) = send(&app, req("GET", path, HOST, &bogus, "")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    for body in [
        r#"{"token":"wrong"}"#,
        r#"{"token":""}"#,
        "token=s3cret",
        "{}",
    ] {
        let (status, headers, _) = send(&app, req("POST", "/web/login", HOST, &[], body)).await;
        assert!(status.is_client_error(), "{body}: {status}");
        assert!(headers.get(header::SET_COOKIE).is_none(), "{body}");
    }

    let (cookie, csrf) = login(&app).await;
    let (status, headers, body) = send(
        &app,
        req(
            "GET",
            "/web/state",
            HOST,
            &[("cookie", cookie.as_str())],
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["csrf"], csrf.as_str());
    assert_eq!(state["serial"], "SN-1");
    assert_eq!(state["enabled"], false);
    assert!(state["code"].is_null());
    // The session reads the past windows too (none yet).
    let (status, _, body) = send(
        &app,
        req(
            "GET",
            "/web/history",
            HOST,
            &[("cookie", cookie.as_str())],
            "",
        ),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));

    // Logging out ends the session.
    let good = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let (status, _, _) = send(&app, req("POST", "/web/logout", HOST, &good, "")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = send(
        &app,
        req(
            "GET",
            "/web/state",
            HOST,
            &[("cookie", cookie.as_str())],
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_cli_token_still_opens_the_api_and_not_the_page_state() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app(dir.path());
    let bearer = [("authorization", "Bearer s3cret")];
    let (status, _, _) = send(&app, req("GET", "/api/status", HOST, &bearer, "")).await;
    assert_eq!(status, StatusCode::OK);
    // The API keeps its own check, whatever the Host (the CLI talks to web.addr).
    let (status, _, _) = send(&app, req("GET", "/api/status", "evil.example", &[], "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send(&app, req("GET", "/web/state", HOST, &bearer, "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The page's bodies are checked like the API's: a form post (what a cross-site page could
/// send) is 415, broken or wrong-shaped JSON a clear 4xx; nothing logs in, nothing changes.
#[tokio::test]
async fn hostile_page_bodies_are_refused_with_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (app, keys) = app(dir.path());
    let (cookie, csrf) = login(&app).await;
    let session = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let form = Request::builder()
        .method("POST")
        .uri("/web/login")
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("token=s3cret"))
        .unwrap();
    let (status, headers, body) = send(&app, form).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(headers.get(header::SET_COOKIE).is_none());
    for (path, body, want) in [
        ("/web/login", r#"{"token":"s3cret","admin":true}"#, 422),
        ("/web/login", r#"{"token":["s3cret"]}"#, 422),
        ("/web/login", r#"{"token":"s3cret""#, 400),
        ("/web/enable", r#"{"minutes":-5}"#, 422),
        ("/web/enable", r#"{"minutes":0}"#, 400),
        ("/web/extend", r#"{"minutes":"60"}"#, 422),
        ("/web/enable", "not json", 400),
    ] {
        let (status, headers, text) = send(&app, req("POST", path, HOST, &session, body)).await;
        assert_eq!(status.as_u16(), want, "{path} {body}: {text}");
        assert!(headers.get(header::SET_COOKIE).is_none(), "{path} {body}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{text}"
        );
    }
    assert_eq!(std::fs::read_to_string(keys).unwrap(), STALE);
}

/// Waits until `agent` lists `n` connections waiting for approval.
async fn waiting(agent: &Agent, n: usize) -> Vec<crate::approval::Request> {
    for _ in 0..1000 {
        let w = agent.shared().approvals().waiting(|_| None);
        if w.len() == n {
            return w;
        }
        tokio::task::yield_now().await;
    }
    panic!("{n} connections never waited");
}

/// Allow / Deny is a change like the others (session and CSRF token), and an answer to a
/// connection that is not waiting (unknown, or answered already) is a clear 404 that
/// changes nothing.
#[tokio::test]
async fn answers_to_waiting_connections_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _, agent) = app_and_agent(dir.path());
    agent.shared().approvals().require(true);
    let asking = agent.clone();
    let cancel = tokio_util::sync::CancellationToken::new();
    let outcome = tokio::spawn(async move {
        asking
            .shared()
            .approvals()
            .ask("127.0.0.1:40000", "ssh", &cancel)
            .await
    });
    let id = waiting(&agent, 1).await[0].id;
    let (cookie, csrf) = login(&app).await;
    let session = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];

    let (status, _, body) = send(
        &app,
        req(
            "GET",
            "/web/state",
            HOST,
            &[("cookie", cookie.as_str())],
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["approve_connections"], true);
    assert_eq!(state["approvals"][0]["id"], id);
    assert_eq!(state["approvals"][0]["from"], "127.0.0.1:40000");
    assert_eq!(state["approvals"][0]["service"], "ssh");

    let allow = format!(r#"{{"id":{id},"answer":"allow"}}"#);
    let (status, _, _) = send(
        &app,
        req(
            "POST",
            "/web/approve",
            HOST,
            &[("cookie", cookie.as_str())],
            &allow,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");
    for (body, want) in [
        (format!(r#"{{"id":{},"answer":"allow"}}"#, id + 7), 404),
        (format!(r#"{{"id":{id},"answer":"maybe"}}"#), 422),
        (format!(r#"{{"id":"{id}","answer":"allow"}}"#), 422),
        (format!(r#"{{"id":{id}}}"#), 422),
    ] {
        let (status, _, text) =
            send(&app, req("POST", "/web/approve", HOST, &session, &body)).await;
        assert_eq!(status.as_u16(), want, "{body}: {text}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{text}"
        );
    }
    assert_eq!(waiting(&agent, 1).await[0].id, id, "still waiting");

    let (status, _, _) = send(&app, req("POST", "/web/approve", HOST, &session, &allow)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(outcome.await.unwrap(), crate::approval::Outcome::Allowed);
    let deny = format!(r#"{{"id":{id},"answer":"deny"}}"#);
    let (status, _, text) = send(&app, req("POST", "/web/approve", HOST, &session, &deny)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(text.contains("answered already"), "{text}");
}

const CAST: &str = "{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1796000000,\
    \"env\":{},\"assist\":{\"engineer\":\"alice\",\"from\":\"127.0.0.1:5\",\"command\":null,\
    \"service\":\"ssh\"}}\n[0.5,\"o\",\"hello\"]\n";

/// The recordings are listed, played and deleted by name, and a name only ever means a file
/// the folder lists: `../` and a planted symlink reach nothing.
#[tokio::test]
async fn recordings_are_listed_read_and_deleted_only_by_their_listed_name() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _, _) = app_and_agent(dir.path());
    let recordings = dir.path().join("recordings");
    std::fs::create_dir(&recordings).unwrap();
    std::fs::write(recordings.join("20261130T005320Z-alice-1.cast"), CAST).unwrap();
    let outside = dir.path().join("secret.cast");
    std::fs::write(&outside, CAST).unwrap();
    std::os::unix::fs::symlink(&outside, recordings.join("planted.cast")).unwrap();
    let (cookie, csrf) = login(&app).await;
    let reader = [("cookie", cookie.as_str())];
    let session = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];

    let (status, _, _) = send(&app, req("GET", "/web/recordings", HOST, &[], "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = send(&app, req("GET", "/web/recordings", HOST, &reader, "")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(list[0]["name"], "20261130T005320Z-alice-1.cast");
    assert_eq!(list[0]["engineer"], "alice");

    let (status, _, body) = send(
        &app,
        req(
            "GET",
            "/web/recordings/file?name=20261130T005320Z-alice-1.cast",
            HOST,
            &reader,
            "",
        ),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, CAST));
    for name in [
        "..%2Fsecret.cast",
        "planted.cast",
        "%2Fetc%2Fpasswd",
        "..",
        "",
    ] {
        let (status, _, body) = send(
            &app,
            req(
                "GET",
                &format!("/web/recordings/file?name={name}"),
                HOST,
                &reader,
                "",
            ),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}: {body}");
        assert!(!body.contains("hello"), "{name}");
    }
    for name in [
        "../secret.cast",
        "planted.cast",
        "../recordings/planted.cast",
    ] {
        let body = serde_json::json!({ "name": name }).to_string();
        let (status, _, text) = send(
            &app,
            req("POST", "/web/recordings/delete", HOST, &session, &body),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}: {text}");
    }
    assert!(outside.exists());
    assert!(recordings.join("planted.cast").symlink_metadata().is_ok());

    let real = r#"{"name":"20261130T005320Z-alice-1.cast"}"#;
    let (status, _, _) = send(
        &app,
        req("POST", "/web/recordings/delete", HOST, &reader, real),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");
    assert!(recordings.join("20261130T005320Z-alice-1.cast").exists());
    let (status, _, _) = send(
        &app,
        req("POST", "/web/recordings/delete", HOST, &session, real),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!recordings.join("20261130T005320Z-alice-1.cast").exists());
}

/// The live view's WebSocket, through a real server: refused without the page's own Origin
/// or without a session; with both, the size, the backlog, then the output, closed when the
/// terminal ends. Stop needs the CSRF token and cancels the terminal.
#[tokio::test]
async fn the_live_feed_needs_the_pages_origin_and_session_and_stop_ends_the_terminal() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
    let dir = tempfile::tempdir().unwrap();
    let (app, _, agent) = app_and_agent(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(control::serve(listener, app.clone(), stop.clone()));
    let (cookie, csrf) = login(&app).await;
    let terminal = agent
        .shared()
        .live()
        .open("alice", "127.0.0.1:5000", None, 100, 30);
    terminal.output(b"before ");
    let id = terminal.id();

    let open = |origin: Option<String>, cookie: Option<&str>, id: u64| {
        let mut r = format!("ws://{addr}/web/terminals/watch?id={id}")
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            r.headers_mut().insert("origin", o.parse().unwrap());
        }
        if let Some(c) = cookie {
            r.headers_mut().insert("cookie", c.parse().unwrap());
        }
        tokio_tungstenite::connect_async(r)
    };
    let status = |e: tungstenite::Error| match e {
        tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("not an HTTP refusal: {other}"),
    };
    let ours = format!("http://{addr}");
    for (origin, cookie, want) in [
        (None, Some(cookie.as_str()), 403),
        (
            Some("http://evil.example".to_owned()),
            Some(cookie.as_str()),
            403,
        ),
        (
            Some(format!("http://{addr}.evil.example")),
            Some(cookie.as_str()),
            403,
        ),
        (Some(ours.clone()), None, 401),
        (Some(ours.clone()), Some("assist_session=00"), 401),
    ] {
        let e = open(origin.clone(), cookie, id).await.unwrap_err();
        assert_eq!(status(e), want, "{origin:?} {cookie:?}");
    }
    let e = open(Some(ours.clone()), Some(&cookie), id + 9)
        .await
        .unwrap_err();
    assert_eq!(status(e), 404);

    let (mut ws, _) = open(Some(ours.clone()), Some(&cookie), id).await.unwrap();
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| {
        tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .unwrap()
    };
    let size = next(&mut ws).await.unwrap().unwrap();
    assert_eq!(size, Message::Text(r#"{"cols":100,"rows":30}"#.into()));
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::Binary(b"before ".to_vec().into())
    );
    terminal.output(b"after");
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::Binary(b"after".to_vec().into())
    );

    let which = format!(r#"{{"id":{id}}}"#);
    let (status, _, _) = send(
        &app,
        req(
            "POST",
            "/web/terminals/stop",
            HOST,
            &[("cookie", cookie.as_str())],
            &which,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");
    assert!(!terminal.stopped().is_cancelled());
    let session = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let unknown = format!(r#"{{"id":{}}}"#, id + 9);
    let (status, _, _) = send(
        &app,
        req("POST", "/web/terminals/stop", HOST, &session, &unknown),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send(
        &app,
        req("POST", "/web/terminals/stop", HOST, &session, &which),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(terminal.stopped().is_cancelled());

    // The built-in target drops its terminal when the session ends: the feed closes.
    drop(terminal);
    match next(&mut ws).await {
        Some(Ok(Message::Close(_))) | None => {}
        other => panic!("the feed did not close: {other:?}"),
    }
    stop.cancel();
    server.await.unwrap().unwrap();
}
