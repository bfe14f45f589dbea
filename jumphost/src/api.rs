//! Registration API: `POST /v1/register` binds a device key to its serial; `GET /healthz`.
//!
//! A serial bound to another unexpired key answers 409 unless the request carries a
//! `rotation_proof`: an armored SSHSIG (`ssh-keygen -Y sign -n assist-rotate-v1`) made with
//! the old key over [`rotation_message`]`(serial, new public_key)`. The message names the new
//! key, so a captured proof cannot bind any other key. Without the old key, an admin runs
//! `assist-jumphost serial reset SERIAL`.
//!
//! With an `enrollment_key`, a registration that would create a binding (none yet, expired,
//! or after a reset) must carry an `enrollment` proof of the serial's secret
//! (`assist_proto::enroll`); a missing or wrong one is 401. Renewals by the bound key and
//! signed rotations need none.
//!
//! Nothing is stored on any error, and every registration and refusal is audited with the
//! source address. Bodies are parsed here rather than by axum's `Json`, so every error,
//! malformed JSON included, is an [`ErrorBody`] with a message a device log can show.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use assist_proto::api::{
    ErrorBody, ROTATION_NAMESPACE, RegisterRequest, RegisterResponse, rotation_message,
};
use assist_proto::body::{BodyError, JsonBody, JsonRejection};
use assist_proto::http::HttpLimits;
use assist_proto::limits::{self, MAX_API_BODY};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use russh::keys::ssh_key::SshSig;
use russh::keys::{Algorithm, HashAlg, PublicKey};
use tokio_util::sync::CancellationToken;

use self::listener::ApiListener;
pub use self::proxy_header::ProxyHeaders;
use crate::enroll::EnrollmentKey;
use crate::penalty::RateLimiter;
use crate::policy::watch::PolicyHandle;
use crate::store::{self, AuditEvent, DeviceBinding, Store, StoreError};

pub mod cert;
pub mod listener;
pub mod live_cert;
pub mod proxy_header;
pub mod ssh_ws;

/// Longest public key line accepted: an ed25519 line is ~100 bytes plus its comment.
const MAX_KEY_LINE: usize = 4096;
/// Longest audit outcome text stored for one request.
const MAX_OUTCOME_CHARS: usize = 400;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub policy: PolicyHandle,
    /// Registrations per source address (`[penalties] register_*`).
    pub limiter: Arc<RateLimiter>,
    /// With `enrollment_key`: a new binding needs a proof of the serial's secret.
    pub enrollment: Option<Arc<EnrollmentKey>>,
    /// `GET /v1/ssh`, when the SSH relay runs in this process.
    pub ssh: Option<ssh_ws::SshOverWs>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (`trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Every way a request can fail; the variant decides the status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not JSON at all (400).
    #[error("{0}")]
    Malformed(String),
    /// JSON of the wrong shape, or a value that breaks a rule (422).
    #[error("{0}")]
    Invalid(String),
    /// Enrollment is required and the proof is missing or wrong (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Policy says no (403).
    #[error("{0}")]
    Forbidden(String),
    /// The serial is bound to another key (409).
    #[error("{0}")]
    Conflict(String),
    /// The source used up its registrations for now (429).
    #[error("too many registrations from {address}; retry in {} s", retry_after.as_secs().max(1))]
    TooMany {
        address: std::net::IpAddr,
        retry_after: std::time::Duration,
    },
    /// An SSH connection over WebSocket from a penalized source (429).
    #[error("{reason}")]
    Penalized {
        reason: String,
        retry_after: std::time::Duration,
    },
    /// Too many connections logging in at once (503).
    #[error("{0}")]
    Unavailable(String),
    /// The request body was refused: too large (413), too slow (408), not JSON (400) or of
    /// the wrong shape (422).
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The cause is logged, never sent: it may name files or database details.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooMany { .. } | ApiError::Penalized { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Body(e) => e.status(),
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error answering an API request");
        }
        let body = ErrorBody {
            error: self.to_string(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let ApiError::TooMany { retry_after, .. } | ApiError::Penalized { retry_after, .. } =
            &self
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        response
    }
}

impl JsonRejection for ApiError {
    const MAX_BODY: usize = MAX_API_BODY;
    // Not checked, so `curl -d` works too.
    const JSON_CONTENT_TYPE_ONLY: bool = false;
}

/// A JSON body whose every rejection is an [`ApiError`].
pub type ApiJson<T> = JsonBody<T, ApiError>;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/v1/register",
            post(register).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                rate_limit,
            )),
        )
        .route(assist_proto::ws::SSH_PATH, get(ssh_ws::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .with_state(state)
}

/// Serves the API on an already-bound listener until `shutdown` fires: HTTPS with `tls`,
/// plain HTTP without, after a trusted proxy's PROXY header with `proxy`; either way with
/// `assist_proto::http`'s header deadline and connection limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    proxy: Option<ProxyHeaders>,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state);
    let limits = HttpLimits::default();
    let stop = shutdown.cancelled_owned();
    let listener = ApiListener::new(
        listener,
        tls,
        proxy,
        limits::TLS_HANDSHAKE_TIMEOUT,
        limits::MAX_TLS_HANDSHAKES,
    );
    assist_proto::http::serve(listener, app, limits, stop).await
}

/// Takes a token from the source's bucket before the body is even read; an empty bucket
/// answers 429 with `Retry-After`. Not audited: a flood would only flood the trail.
async fn rate_limit(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = ssh_ws::client_address(peer, req.headers(), &state.trusted_proxies);
    let policy = state.policy.current();
    match state
        .limiter
        .take(peer.ip(), policy.penalties(), std::time::Instant::now())
    {
        Ok(()) => next.run(req).await,
        Err(retry_after) => {
            tracing::info!(event = "api.register", source = %peer, status = 429, "rate limited");
            ApiError::TooMany {
                address: peer.ip(),
                retry_after,
            }
            .into_response()
        }
    }
}

/// What a successful registration did.
enum Registered {
    New,
    Renewed,
    Rotated { old: String },
}

impl Registered {
    /// The audit trail's outcome for the key with this fingerprint.
    fn outcome(&self, fingerprint: &str) -> String {
        match self {
            Registered::New => format!("registered {fingerprint}"),
            Registered::Renewed => format!("renewed {fingerprint}"),
            Registered::Rotated { old } => format!("rotated {old} -> {fingerprint}"),
        }
    }
}

async fn register(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: Result<ApiJson<RegisterRequest>, ApiError>,
) -> Response {
    let peer = ssh_ws::client_address(peer, &headers, &state.trusted_proxies);
    let (who, result) = match body {
        Ok(JsonBody(req, _)) => {
            // Only a well-formed serial goes to the audit trail's `who`; anything else could be
            // 64 KiB of junk.
            let who = assist_proto::validate_name(&req.serial)
                .is_ok()
                .then(|| req.serial.clone());
            (who, register_checked(&state, req, peer.ip()).await)
        }
        Err(e) => (None, Err(e)),
    };
    let outcome = match &result {
        Ok((what, r)) => what.outcome(&r.fingerprint),
        Err(e) => format!("refused {}: {e}", e.status().as_u16()),
    };
    // Error messages may quote request content (field names, the serial); keep rows small.
    let outcome: String = outcome.chars().take(MAX_OUTCOME_CHARS).collect();
    let status = match &result {
        Ok((Registered::Renewed, _)) => StatusCode::OK,
        Ok(_) => StatusCode::CREATED,
        Err(e) => e.status(),
    };
    crate::metrics::registration(status.as_u16());
    let serial = who.as_deref().unwrap_or("-");
    if result.is_ok() {
        tracing::info!(event = "api.register", serial, source = %peer, status = status.as_u16(), %outcome);
    } else {
        tracing::warn!(event = "api.register", serial, source = %peer, status = status.as_u16(), %outcome);
    }
    // A stored binding was audited in its own commit; a refusal is recorded here.
    if result.is_err() {
        let event = AuditEvent {
            kind: "api.register",
            who,
            source: peer.ip(),
            outcome,
        };
        if let Err(e) = store::blocking(&state.store, move |s| s.record(&event)).await {
            tracing::error!(error = %e, "recording the audit event failed");
        }
    }
    match result {
        Ok((_, response)) => (status, Json(response)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Validates the request against format and policy, then binds; stores nothing on error.
async fn register_checked(
    state: &ApiState,
    req: RegisterRequest,
    source: IpAddr,
) -> Result<(Registered, RegisterResponse), ApiError> {
    assist_proto::validate_name(&req.serial).map_err(|e| {
        let shown: String = req.serial.chars().take(80).collect();
        ApiError::Invalid(format!("serial {shown:?} {e}"))
    })?;
    let policy = state.policy.current();
    if !policy.serial_allowed(&req.serial) {
        return Err(ApiError::Forbidden(format!(
            "serial {} is not allowed by the jump host's policy",
            req.serial
        )));
    }
    // The comment part of a key line is free text to the parser: refuse what could smuggle
    // a second line or terminal escapes into a log or an admin's screen.
    if req.public_key.len() > MAX_KEY_LINE {
        return Err(ApiError::Invalid(format!(
            "public_key is longer than {MAX_KEY_LINE} bytes"
        )));
    }
    if req.public_key.trim().chars().any(char::is_control) {
        return Err(ApiError::Invalid(
            "public_key contains control characters (one line, no newlines)".into(),
        ));
    }
    let key = PublicKey::from_openssh(req.public_key.trim()).map_err(|e| {
        ApiError::Invalid(format!("public_key is not an OpenSSH public key line: {e}"))
    })?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(ApiError::Invalid(format!(
            "public_key must be an ssh-ed25519 key, not {}",
            key.algorithm()
        )));
    }
    let proof = req
        .rotation_proof
        .as_deref()
        .map(|pem| {
            SshSig::from_pem(pem.trim()).map_err(|e| {
                ApiError::Invalid(format!(
                    "rotation_proof is not an armored SSH signature \
                     (-----BEGIN SSH SIGNATURE-----): {e}"
                ))
            })
        })
        .transpose()?;
    let now = SystemTime::now();
    let expires_at = now
        .checked_add(policy.client_key_ttl())
        .ok_or_else(|| ApiError::Internal("client_key_ttl overflows the clock".into()))?;
    let response = RegisterResponse {
        serial: req.serial.clone(),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        expires_at: expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        max_assistance_secs: policy.max_assistance().as_secs(),
    };
    let binding = DeviceBinding {
        serial: req.serial.clone(),
        public_key: key,
        expires_at,
    };
    let enrollment = state.enrollment.clone();
    let what = store::blocking(&state.store, move |store| {
        let proofs = Proofs {
            rotation: proof.as_ref(),
            enrollment: enrollment
                .as_deref()
                .map(|key| (key, req.enrollment.as_ref())),
        };
        bind(store, &binding, &req.public_key, proofs, source, now)
    })
    .await?;
    Ok((what, response))
}

/// What a registration proves besides holding the new key.
struct Proofs<'a> {
    /// Possession of the key bound now, to replace it.
    rotation: Option<&'a SshSig>,
    /// With an enrollment key: the serial's secret, to create a binding.
    enrollment: Option<(
        &'a EnrollmentKey,
        Option<&'a assist_proto::api::EnrollmentProof>,
    )>,
}

/// Checks the enrollment proof of a registration that would create `serial`'s binding.
fn check_enrollment(
    key: &EnrollmentKey,
    proof: Option<&assist_proto::api::EnrollmentProof>,
    serial: &str,
    new_key_line: &str,
    now: SystemTime,
) -> Result<(), ApiError> {
    let Some(proof) = proof else {
        return Err(ApiError::Unauthorized(format!(
            "enrollment required: serial {serial} has no binding, and this jump host binds a \
             new serial only with a proof of its enrollment secret (set enrollment_secret or \
             enrollment_secret_file in the device's client.toml)"
        )));
    };
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let skew = now_secs.abs_diff(proof.at);
    if skew > limits::ENROLLMENT_SKEW.as_secs() {
        return Err(ApiError::Unauthorized(format!(
            "enrollment proof refused: it was made at {} but the jump host's clock says {} \
             ({skew} s apart, at most {} s allowed); set the device's clock",
            proof.at,
            now_secs,
            limits::ENROLLMENT_SKEW.as_secs()
        )));
    }
    key.verify(serial, new_key_line, proof.at, &proof.mac)
        .map_err(|e| {
            ApiError::Unauthorized(format!(
                "enrollment proof is wrong for serial {serial}: it {e}; check the device's \
                 enrollment_secret"
            ))
        })
}

/// Decides new / renewal / rotation / conflict against the current binding and stores with a
/// compare-and-set, so a concurrent registration cannot be silently overwritten.
fn bind(
    store: &dyn Store,
    binding: &DeviceBinding,
    new_key_line: &str,
    proofs: Proofs<'_>,
    source: IpAddr,
    now: SystemTime,
) -> Result<Registered, ApiError> {
    let serial = &binding.serial;
    let current = store.binding(serial)?;
    let proof = proofs.rotation;
    let what = match &current {
        None => {
            if let Some((key, proof)) = proofs.enrollment {
                check_enrollment(key, proof, serial, new_key_line, now)?;
            }
            Registered::New
        }
        Some(cur) if cur.public_key.key_data() == binding.public_key.key_data() => {
            Registered::Renewed
        }
        Some(cur) => {
            let Some(proof) = proof else {
                return Err(ApiError::Conflict(format!(
                    "serial {serial} is bound to another key ({}, until {}); register with a \
                     rotation_proof signed by that key, or ask the jump host admin to run \
                     `assist-jumphost serial reset {serial}`",
                    cur.fingerprint(),
                    humantime::format_rfc3339_seconds(cur.expires_at),
                )));
            };
            let message = rotation_message(serial, new_key_line);
            cur.public_key
                .verify(ROTATION_NAMESPACE, &message, proof)
                .map_err(|e| {
                    ApiError::Conflict(format!(
                        "serial {serial} is bound to another key ({}) and the rotation_proof \
                         does not verify against it ({e}); an admin can run \
                         `assist-jumphost serial reset {serial}`",
                        cur.fingerprint()
                    ))
                })?;
            Registered::Rotated {
                old: cur.fingerprint(),
            }
        }
    };
    let expected = current.as_ref().map(|b| &b.public_key);
    let audit = AuditEvent {
        kind: "api.register",
        who: Some(serial.clone()),
        source,
        outcome: what.outcome(&binding.fingerprint()),
    };
    if !store.put_binding_if(binding, expected, &audit)? {
        return Err(ApiError::Conflict(format!(
            "serial {serial} was registered by another request at the same time; retry"
        )));
    }
    Ok(what)
}

#[cfg(test)]
mod tests;
