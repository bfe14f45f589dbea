//! Reading a JSON request body the same careful way in both servers (the jump host's API and
//! the agent's local API): a size limit checked before waiting for a byte, a deadline for
//! the whole body, and a JSON object only, with errors that say what was wrong. Each server
//! takes [`JsonBody`] with its own error type, which says the server's rules.

use std::marker::PhantomData;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;

use crate::limits::BODY_TIMEOUT;

/// Why a body was refused; each server maps it to its own error type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Over the limit, announced or read (413).
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// Not all there within the deadline (408).
    #[error("request body not received within {} s", .0.as_secs())]
    Timeout(Duration),
    /// Not JSON, or not readable at all (400).
    #[error("{0}")]
    Malformed(String),
    /// JSON, but not an object of the expected shape (422).
    #[error("{0}")]
    Invalid(String),
    /// Not sent as `application/json` where only that is read (415).
    #[error("send the body as JSON with Content-Type: application/json")]
    NotJson,
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
            BodyError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BodyError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

/// A server's rules for JSON bodies, told by the error type it answers with.
pub trait JsonRejection: From<BodyError> + IntoResponse {
    /// Largest body read.
    const MAX_BODY: usize;
    /// Only bodies sent as `application/json` are read (415 otherwise), so a cross-site form
    /// cannot post one; without it `curl -d` works too.
    const JSON_CONTENT_TYPE_ONLY: bool;
}

/// A JSON body of type `T` whose every rejection is an `E`: 413 over `E::MAX_BODY`, 408 when
/// it does not arrive within [`BODY_TIMEOUT`], 400 when it is not JSON, 422 when it is JSON
/// of the wrong shape, and 415 when `E` wants `application/json` and it was sent otherwise.
pub struct JsonBody<T, E>(pub T, pub PhantomData<fn() -> E>);

impl<S, T, E> FromRequest<S> for JsonBody<T, E>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
    E: JsonRejection,
{
    type Rejection = E;

    async fn from_request(req: Request, state: &S) -> Result<Self, E> {
        if E::JSON_CONTENT_TYPE_ONLY && !is_json(req.headers()) {
            return Err(BodyError::NotJson.into());
        }
        read_json(req, state, E::MAX_BODY, BODY_TIMEOUT)
            .await
            .map(|body| JsonBody(body, PhantomData))
            .map_err(E::from)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads `req`'s body as a `T`: at most `max` bytes, all of it within `deadline`, a JSON
/// object (serde would also take an array for a struct), deserialized from the bytes so
/// duplicate keys stay an error.
async fn read_json<T, S>(
    req: Request,
    state: &S,
    max: usize,
    deadline: Duration,
) -> Result<T, BodyError>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    // An announced size over the limit is refused before waiting for a byte of it.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    // A client trickling (or never sending) its body must not hold a task forever.
    let bytes = tokio::time::timeout(deadline, Bytes::from_request(req, state))
        .await
        .map_err(|_| BodyError::Timeout(deadline))?
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                BodyError::TooLarge(max)
            } else {
                BodyError::Malformed(rejection.body_text())
            }
        })?;
    if bytes.len() > max {
        return Err(BodyError::TooLarge(max));
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| BodyError::Malformed(format!("request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(BodyError::Invalid(
            "invalid request: the body must be a JSON object".into(),
        ));
    }
    // From the bytes, not the value: a value keeps only the last of duplicate keys.
    serde_json::from_slice(&bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => BodyError::Invalid(format!("invalid request: {e}")),
            Category::Syntax | Category::Eof | Category::Io => {
                BodyError::Malformed(format!("request body is not valid JSON: {e}"))
            }
        }
    })
}
