//! `POST /v1/register` through the real router (`oneshot`, no sockets) on an in-memory
//! store where `SN-BOUND` is already bound to a key.
//!
//! Input: one control byte, then the body. Control bits 0-1 pick the path (`/v1/register`
//! twice as often as `/healthz` or an unknown path), bits 2-3 the method (POST twice as
//! often), bits 4-5 the `Content-Length` header (the true length, none, 10 GB, garbage),
//! bit 6 the content type (`application/json` or `text/plain`).
//!
//! Asserts: no 5xx and only documented statuses; every error is one line of JSON
//! `{"error": "<non-empty>"}`; a success only for a well-formed, allowed serial with an
//! ed25519 key, answered with that key's fingerprint; nothing stored on an error.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use assist_jumphost::api::{ApiState, router};
use assist_jumphost::policy::Policy;
use assist_jumphost::policy::watch::PolicyHandle;
use assist_jumphost::store::{DeviceBinding, SqliteStore, Store};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use tower::ServiceExt;

const POLICY: &str =
    "[serials]\nallow = [\"SN-*\"]\n[keys]\nclient_key_ttl = \"1d\"\nmax_assistance = \"2h\"\n";
const BOUND: &str = "SN-BOUND";

struct Fixed {
    runtime: tokio::runtime::Runtime,
    policy: PolicyHandle,
    bound_key: PublicKey,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| Fixed {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        policy: PolicyHandle::new(
            Policy::from_toml(Path::new("fuzz.toml"), POLICY).expect("fuzz policy"),
        ),
        bound_key: PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]))
            .public_key()
            .clone(),
    })
}

/// The serial a body names, if it is JSON with a string `serial`.
fn serial_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(v.get("serial")?.as_str()?.to_owned())
}

fn key_of(store: &SqliteStore, serial: &str) -> Option<String> {
    store
        .binding(serial)
        .expect("store")
        .map(|b| b.public_key.fingerprint(HashAlg::Sha256).to_string())
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let f = fixed();
    let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
    store
        .put_binding(&DeviceBinding {
            serial: BOUND.into(),
            public_key: f.bound_key.clone(),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        })
        .expect("seed binding");
    let app = router(ApiState {
        store: store.clone(),
        policy: f.policy.clone(),
        limiter: Default::default(),
        enrollment: None,
        ssh: None,
        trusted_proxies: Vec::new(),
    });

    let path = ["/v1/register", "/v1/register", "/healthz", "/v1/nope"][usize::from(control & 3)];
    let method = ["POST", "POST", "GET", "PUT"][usize::from((control >> 2) & 3)];
    let length = match (control >> 4) & 3 {
        0 => Some(body.len().to_string()),
        1 => None,
        2 => Some("10000000000".to_owned()),
        _ => Some("-1".to_owned()),
    };
    let content_type = if control & 0x40 == 0 {
        "application/json"
    } else {
        "text/plain"
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, content_type);
    if let Some(length) = length {
        builder = builder.header(header::CONTENT_LENGTH, length);
    }
    let mut request = builder
        .body(Body::from(body.to_vec()))
        .expect("a request of fixed parts");
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 40000);
    request.extensions_mut().insert(ConnectInfo(peer));

    let serial = serial_of(body);
    let before = serial.as_deref().map(|s| key_of(&store, s));

    let (status, answer) = f.runtime.block_on(async {
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("answer body");
        (status, bytes)
    });

    assert!(!status.is_server_error(), "{status} for {body:?}");
    let allowed = [200, 201, 400, 403, 404, 405, 408, 409, 413, 415, 422, 429];
    assert!(allowed.contains(&status.as_u16()), "undocumented {status}");

    if path == "/healthz" && method == "GET" {
        assert_eq!((status, &answer[..]), (StatusCode::OK, &b"ok"[..]));
        return;
    }
    let json: serde_json::Value = serde_json::from_slice(&answer)
        .unwrap_or_else(|e| panic!("{status} answer is not JSON ({e}): {answer:?}"));
    if status.is_success() {
        assert_eq!(path, "/v1/register");
        let serial = serial.expect("a success names a serial");
        assert!(assist_proto::validate_name(&serial).is_ok(), "{serial:?}");
        assert!(serial.starts_with("SN-"), "{serial:?}");
        let line = json["fingerprint"].as_str().expect("fingerprint");
        let stored = key_of(&store, &serial).expect("a success stores the binding");
        assert_eq!(line, stored);
        assert_eq!(json["serial"].as_str(), Some(serial.as_str()));
        if serial == BOUND {
            let bound = f.bound_key.fingerprint(HashAlg::Sha256).to_string();
            // Without the old key's proof (the fuzzer has no private key to make one) only
            // the same key may renew.
            assert_eq!(stored, bound, "rebound without proof");
        }
    } else {
        assert!(
            !answer.contains(&b'\n'),
            "error is not one line: {answer:?}"
        );
        let object = json.as_object().expect("error is a JSON object");
        assert_eq!(object.len(), 1, "{json}");
        let message = object["error"].as_str().expect("error is a string");
        assert!(!message.trim().is_empty());
        if let (Some(serial), Some(before)) = (serial, before) {
            assert_eq!(key_of(&store, &serial), before, "stored despite {status}");
        }
    }
});
