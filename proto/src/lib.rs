//! Pieces shared by the jump host, the agent and the support CLI: the one-time code and the
//! key derived from it, serial validation, the registration API types and the limits.
#![forbid(unsafe_code)]

pub mod api;
pub mod attest;
pub mod backoff;
#[cfg(feature = "axum")]
pub mod body;
pub mod cert_fingerprint;
pub mod code;
pub mod derive;
pub mod enroll;
#[cfg(feature = "axum")]
pub mod http;
pub mod keys;
pub mod limits;
pub mod lock;
pub mod logging;
pub mod name;
pub mod per_source;
pub mod private_file;
#[cfg(feature = "ws")]
pub mod proxy;
pub mod secret;
pub mod ssh;
#[cfg(feature = "ws")]
pub mod ws;

pub use code::{CodeError, OneTimeCode};
pub use derive::{DeriveError, derive_key};
pub use name::{NameError, validate_name};
pub use secret::Secret;
