//! The API without sockets (`Router::oneshot`): every status code, rotation, and that nothing
//! is stored after an error.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use tower::ServiceExt;

use super::*;
use crate::enroll::EnrollmentKey;
use crate::policy::Policy;
use crate::store::SqliteStore;

const POLICY: &str =
    "[serials]\nallow = [\"SN-*\"]\n[keys]\nclient_key_ttl = \"1d\"\nmax_assistance = \"2h\"\n";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOsWinOAcYp786Im5kip+IBU0PP5d7KntVt55v0stzpGTzLePSTSIc4pPA8nmXRCHs0b8WD7F10IPx0ViqCM9Yk= x";

struct Api {
    store: Arc<SqliteStore>,
    router: Router,
}

fn api() -> Api {
    api_with(None)
}

/// The API with `enrollment` as its enrollment key.
fn api_with(enrollment: Option<EnrollmentKey>) -> Api {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let policy = Policy::from_toml(Path::new("test.toml"), POLICY).unwrap();
    let router = router(ApiState {
        store: store.clone(),
        policy: PolicyHandle::new(policy),
        limiter: Default::default(),
        enrollment: enrollment.map(Arc::new),
        ssh: None,
        trusted_proxies: Vec::new(),
    });
    Api { store, router }
}

fn private(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

fn key_line(seed: u8) -> String {
    let mut key = private(seed).public_key().clone();
    key.set_comment(format!("device-{seed}"));
    key.to_openssh().unwrap()
}

fn proof(signer: u8, serial: &str, new_key: &str) -> String {
    let msg = rotation_message(serial, new_key);
    private(signer)
        .sign(ROTATION_NAMESPACE, HashAlg::Sha512, &msg)
        .unwrap()
        .to_pem(LineEnding::LF)
        .unwrap()
}

fn body(serial: &str, public_key: &str, rotation_proof: Option<String>) -> String {
    serde_json::to_string(&RegisterRequest {
        serial: serial.into(),
        public_key: public_key.into(),
        rotation_proof,
        enrollment: None,
    })
    .unwrap()
}

/// The API with an enrollment key (every byte `7`).
fn enrolling_api() -> Api {
    api_with(Some(EnrollmentKey::for_test(7)))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A registration with an enrollment proof made from `secret` at `at`.
fn enrolled_body(serial: &str, public_key: &str, secret: &str, at: u64) -> String {
    let secret = assist_proto::Secret::new(secret);
    let mac = assist_proto::enroll::proof(&secret, serial, public_key, at).unwrap();
    serde_json::to_string(&RegisterRequest {
        serial: serial.into(),
        public_key: public_key.into(),
        rotation_proof: None,
        enrollment: Some(assist_proto::api::EnrollmentProof { at, mac }),
    })
    .unwrap()
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: impl Into<Body>) -> (StatusCode, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 40000);
        req.extensions_mut().insert(ConnectInfo(peer));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn register(&self, body: impl Into<Body>) -> (StatusCode, String) {
        self.call("POST", "/v1/register", body).await
    }

    fn bound_key(&self, serial: &str) -> Option<PublicKey> {
        self.store.binding(serial).unwrap().map(|b| b.public_key)
    }

    /// The error text, after checking the body is an ErrorBody.
    fn error(body: &str) -> String {
        serde_json::from_str::<ErrorBody>(body)
            .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {body}"))
            .error
    }

    fn last_audit(&self) -> crate::store::AuditRecord {
        self.store.recent_audit(1).unwrap().remove(0)
    }
}

#[tokio::test]
async fn healthz_and_unknown_routes() {
    let api = api();
    assert_eq!(
        api.call("GET", "/healthz", Body::empty()).await,
        (StatusCode::OK, "ok".into())
    );
    let (status, body) = api.call("GET", "/nope", Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Api::error(&body);
    let (status, body) = api.call("GET", "/v1/register", Body::empty()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    Api::error(&body);
}

#[tokio::test]
async fn new_registration_is_201_and_same_key_renews_with_200() {
    let api = api();
    let (status, text) = api.register(body("SN-1", &key_line(1), None)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let resp: RegisterResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(resp.serial, "SN-1");
    assert_eq!(
        resp.fingerprint,
        private(1)
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    );
    assert_eq!(resp.max_assistance_secs, 2 * 3600);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(resp.expires_at.abs_diff(now + 86400) < 60, "{resp:?}");
    assert_eq!(
        api.bound_key("SN-1").unwrap().key_data(),
        private(1).public_key().key_data()
    );
    let audit = api.last_audit();
    assert_eq!(
        (audit.kind.as_str(), audit.who.as_deref()),
        ("api.register", Some("SN-1"))
    );
    assert_eq!(audit.source, "192.0.2.9");
    assert!(
        audit.outcome.starts_with("registered SHA256:"),
        "{}",
        audit.outcome
    );

    // The same key with another comment and whitespace is a renewal.
    let line = format!("  {} renamed\n", key_line(1).rsplit_once(' ').unwrap().0);
    let (status, text) = api.register(body("SN-1", &line, None)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(api.last_audit().outcome.starts_with("renewed"));
}

#[tokio::test]
async fn bad_serial_is_422_and_stores_nothing() {
    let api = api();
    for serial in ["", "-SN", "SN/1", &"S".repeat(65)] {
        let (status, text) = api.register(body(serial, &key_line(1), None)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{serial}: {text}");
        assert!(Api::error(&text).starts_with("serial "), "{text}");
        let audit = api.last_audit();
        assert_eq!(audit.who, None);
        assert!(
            audit.outcome.starts_with("refused 422"),
            "{}",
            audit.outcome
        );
    }
    assert!(api.store.binding_including_expired("SN").unwrap().is_none());
}

#[tokio::test]
async fn serial_outside_policy_is_403() {
    let api = api();
    let (status, text) = api.register(body("XX-1", &key_line(1), None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(Api::error(&text).contains("not allowed"), "{text}");
    assert!(api.bound_key("XX-1").is_none());
    assert_eq!(api.last_audit().who.as_deref(), Some("XX-1"));
}

#[tokio::test]
async fn malformed_bodies_are_400_or_422_with_an_error_body() {
    let api = api();
    let cases: &[(&str, StatusCode, &str)] = &[
        ("not json", StatusCode::BAD_REQUEST, "not valid JSON"),
        (
            "{\"serial\": \"SN-1\"",
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        ("", StatusCode::BAD_REQUEST, "not valid JSON"),
        (
            "{\"serial\": 5, \"public_key\": \"x\"}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        (
            "{\"serial\": \"SN-1\"}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "public_key",
        ),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
    ];
    for (input, want, text) in cases {
        let (status, body) = api.register(*input).await;
        assert_eq!(status, *want, "{input}: {body}");
        assert!(Api::error(&body).contains(text), "{input}: {body}");
    }
    let unknown = format!(
        "{{\"serial\": \"SN-1\", \"public_key\": \"{}\", \"extra\": 1}}",
        key_line(1)
    );
    let (status, body) = api.register(unknown).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        Api::error(&body).contains("unknown field `extra`"),
        "{body}"
    );
    assert!(api.bound_key("SN-1").is_none());
}

#[tokio::test]
async fn bad_public_keys_are_422() {
    let api = api();
    for (key, text) in [
        ("ssh-ed25519 AAAA!!", "not an OpenSSH public key"),
        ("", "not an OpenSSH public key"),
        (ECDSA, "must be an ssh-ed25519 key"),
    ] {
        let (status, body) = api.register(body("SN-1", key, None)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{key}: {body}");
        assert!(Api::error(&body).contains(text), "{body}");
    }
    assert!(api.bound_key("SN-1").is_none());
}

#[tokio::test]
async fn body_over_64_kib_is_413() {
    let api = api();
    let big = format!(
        "{{\"serial\": \"SN-1\", \"public_key\": \"{}\", \"pad\": \"{}\"}}",
        key_line(1),
        "x".repeat(MAX_API_BODY)
    );
    let (status, body) = api.register(big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(Api::error(&body).contains("larger than"), "{body}");
    assert!(api.bound_key("SN-1").is_none());
}

#[tokio::test]
async fn another_key_is_409_and_names_the_reset_command() {
    let api = api();
    assert_eq!(
        api.register(body("SN-1", &key_line(1), None)).await.0,
        StatusCode::CREATED
    );
    let (status, text) = api.register(body("SN-1", &key_line(2), None)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let msg = Api::error(&text);
    assert!(msg.contains("bound to another key"), "{msg}");
    assert!(msg.contains("assist-jumphost serial reset SN-1"), "{msg}");
    assert_eq!(
        api.bound_key("SN-1").unwrap().key_data(),
        private(1).public_key().key_data()
    );
    assert!(api.last_audit().outcome.starts_with("refused 409"));
}

#[tokio::test]
async fn expired_binding_does_not_block_a_new_key() {
    let api = api();
    api.store
        .put_binding(&DeviceBinding {
            serial: "SN-1".into(),
            public_key: private(1).public_key().clone(),
            expires_at: SystemTime::now() - Duration::from_secs(1),
        })
        .unwrap();
    let (status, text) = api.register(body("SN-1", &key_line(2), None)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(
        api.bound_key("SN-1").unwrap().key_data(),
        private(2).public_key().key_data()
    );
}

#[tokio::test]
async fn rotation_proof_by_the_old_key_replaces_the_binding() {
    let api = api();
    assert_eq!(
        api.register(body("SN-1", &key_line(1), None)).await.0,
        StatusCode::CREATED
    );
    let new = key_line(2);

    // Signed by a stranger, over another key, or for another serial: refused, nothing stored.
    for bad in [
        proof(3, "SN-1", &new),
        proof(1, "SN-1", &key_line(4)),
        proof(1, "SN-2", &new),
    ] {
        let (status, text) = api.register(body("SN-1", &new, Some(bad))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{text}");
        assert!(
            Api::error(&text).contains("rotation_proof does not verify"),
            "{text}"
        );
        assert_eq!(
            api.bound_key("SN-1").unwrap().key_data(),
            private(1).public_key().key_data()
        );
    }
    let (status, text) = api
        .register(body("SN-1", &new, Some("not a signature".into())))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(Api::error(&text).contains("rotation_proof"), "{text}");

    let (status, text) = api
        .register(body("SN-1", &new, Some(proof(1, "SN-1", &new))))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(
        api.bound_key("SN-1").unwrap().key_data(),
        private(2).public_key().key_data()
    );
    assert!(
        api.last_audit().outcome.starts_with("rotated SHA256:"),
        "{}",
        api.last_audit().outcome
    );

    // The old key's proof cannot bring it back: the new key is now the one to sign with.
    let old = key_line(1);
    let (status, _) = api
        .register(body("SN-1", &old, Some(proof(1, "SN-1", &old))))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

/// A store whose every call fails, to check internals never reach the client.
struct BrokenStore;

impl Store for BrokenStore {
    fn binding(&self, _: &str) -> Result<Option<DeviceBinding>, StoreError> {
        Err(StoreError(
            "disk I/O error at /secret/path/assist.db".into(),
        ))
    }
    fn binding_including_expired(&self, _: &str) -> Result<Option<DeviceBinding>, StoreError> {
        Err(StoreError("nope".into()))
    }
    fn put_binding(&self, _: &DeviceBinding) -> Result<(), StoreError> {
        Err(StoreError("nope".into()))
    }
    fn put_binding_if(
        &self,
        _: &DeviceBinding,
        _: Option<&PublicKey>,
        _: &AuditEvent,
    ) -> Result<bool, StoreError> {
        Err(StoreError("nope".into()))
    }
    fn record_batch(&self, _: &[AuditEvent]) -> Result<(), StoreError> {
        Err(StoreError("nope".into()))
    }
    fn reset_serial(&self, _: &str) -> Result<bool, StoreError> {
        Err(StoreError("nope".into()))
    }
    fn sweep_expired(&self, _: SystemTime) -> Result<usize, StoreError> {
        Err(StoreError("nope".into()))
    }
    fn record(&self, _: &AuditEvent) -> Result<(), StoreError> {
        Err(StoreError("nope".into()))
    }
    fn hop_started(&self, _: &crate::store::HopStart) -> Result<i64, StoreError> {
        Err(StoreError("nope".into()))
    }
    fn hop_ended(&self, _: i64, _: SystemTime, _: u64, _: u64) -> Result<(), StoreError> {
        Err(StoreError("nope".into()))
    }
    fn close_interrupted_hops(&self, _: SystemTime) -> Result<usize, StoreError> {
        Err(StoreError("nope".into()))
    }
    fn recent_audit(&self, _: usize) -> Result<Vec<crate::store::AuditRecord>, StoreError> {
        Err(StoreError("nope".into()))
    }
    fn hops(&self) -> Result<Vec<crate::store::HopRecord>, StoreError> {
        Err(StoreError("nope".into()))
    }
    fn open_hops(&self) -> Result<Vec<crate::store::HopRecord>, StoreError> {
        Err(StoreError("nope".into()))
    }
    fn node(&self) -> &str {
        "broken"
    }
}

#[tokio::test]
async fn store_failure_is_500_without_details() {
    let policy = Policy::from_toml(Path::new("test.toml"), POLICY).unwrap();
    let api = Api {
        store: Arc::new(SqliteStore::open_in_memory().unwrap()),
        router: router(ApiState {
            store: Arc::new(BrokenStore),
            policy: PolicyHandle::new(policy),
            limiter: Default::default(),
            enrollment: None,
            ssh: None,
            trusted_proxies: Vec::new(),
        }),
    };
    let (status, text) = api.register(body("SN-1", &key_line(1), None)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(Api::error(&text), "internal error");
}

/// serde reads a struct from a JSON array too: `["SN-1", "ssh-ed25519 …"]` must not register.
#[tokio::test]
async fn a_body_that_is_not_an_object_is_422_and_stores_nothing() {
    let api = api();
    let array = serde_json::json!(["SN-1", key_line(1)]).to_string();
    for bad in [array.as_str(), "\"SN-1\"", "null", "42"] {
        let (status, text) = api.register(bad.to_owned()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {text}");
        assert!(Api::error(&text).contains("JSON object"), "{text}");
    }
    assert!(api.bound_key("SN-1").is_none());
}

#[tokio::test]
async fn with_an_enrollment_key_a_new_serial_needs_its_secrets_proof() {
    let api = enrolling_api();
    let secret = EnrollmentKey::for_test(7).secret("SN-1");
    let secret = secret.expose();
    let now = now_secs();

    // No proof, a proof from another serial's secret, one made for another key, a stale one:
    // 401 with what to do, nothing stored, each audited.
    let other = EnrollmentKey::for_test(7).secret("SN-2");
    let stale = now - assist_proto::limits::ENROLLMENT_SKEW.as_secs() - 5;
    let cases = [
        (body("SN-1", &key_line(1), None), "enrollment required"),
        (
            enrolled_body("SN-1", &key_line(1), other.expose(), now),
            "enrollment proof is wrong",
        ),
        (
            enrolled_body("SN-1", &key_line(1), secret, now).replace(
                &key_line(1).split_whitespace().nth(1).unwrap().to_string(),
                key_line(2).split_whitespace().nth(1).unwrap(),
            ),
            "enrollment proof is wrong",
        ),
        (
            enrolled_body("SN-1", &key_line(1), secret, stale),
            "set the device's clock",
        ),
    ];
    for (request, want) in cases {
        let (status, text) = api.register(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{want}: {text}");
        assert!(Api::error(&text).contains(want), "{want}: {text}");
        assert!(api.bound_key("SN-1").is_none(), "{want}: stored anyway");
        assert!(
            api.last_audit().outcome.starts_with("refused 401"),
            "{}",
            api.last_audit().outcome
        );
    }

    // The right proof binds; the bound key renews with no proof; a rotation needs none.
    let (status, text) = api
        .register(enrolled_body("SN-1", &key_line(1), secret, now))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let (status, text) = api.register(body("SN-1", &key_line(1), None)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let new = key_line(2);
    let (status, text) = api
        .register(body("SN-1", &new, Some(proof(1, "SN-1", &new))))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    // A squatter with no secret still cannot take a bound serial.
    let (status, _) = api.register(body("SN-1", &key_line(3), None)).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn without_an_enrollment_key_a_proof_is_not_needed() {
    let api = api();
    let (status, text) = api.register(body("SN-1", &key_line(1), None)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
}
