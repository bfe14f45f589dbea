//! Pieces shared by the jump host, the agent and the support CLI.
//!
//! - Protocol, pinned or versioned: the one-time code (`code`) and the key derived from it
//!   (`derive`), the device's proof of the code (`attest`), enrollment secrets and proofs
//!   (`enroll`), serial and engineer names (`name`), the registration API's types
//!   (`api`), the API certificate's fingerprint (`cert_fingerprint`).
//! - Transport: SSH client settings (`ssh`); with the `ws` feature SSH inside a WebSocket
//!   (`ws`), through HTTP or SOCKS proxies (`proxy`), and what a server said instead of SSH
//!   (`greeting`).
//! - Serving HTTP, with the `axum` feature: the serve loop with its header deadline and
//!   connection limits (`http`) and the JSON body extractor (`body`).
//! - Running a program: limits and timeouts in one place (`limits`), connections counted
//!   per source (`per_source`), reconnect backoff (`backoff`), log setup (`logging`),
//!   fresh identity keys (`keys`), secret strings (`secret`), writing secret files
//!   (`private_file`), the poisoned-lock policy (`lock`) and how a program reports the
//!   error it ends with (`report`).
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
#[cfg(feature = "ws")]
pub mod greeting;
#[cfg(feature = "axum")]
pub mod http;
#[cfg(feature = "ws")]
pub mod http_head;
pub mod keys;
pub mod limits;
pub mod lock;
pub mod logging;
pub mod name;
pub mod note;
pub mod per_source;
pub mod private_file;
#[cfg(feature = "ws")]
pub mod proxy;
pub mod report;
pub mod secret;
pub mod ssh;
#[cfg(feature = "ws")]
pub mod ws;

pub use code::{CodeError, OneTimeCode};
pub use derive::{DeriveError, derive_key};
pub use name::{NameError, validate_name};
pub use secret::Secret;
