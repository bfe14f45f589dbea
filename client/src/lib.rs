//! The customer-side agent: device key, one-time code, `authorized_keys` line with expiry,
//! and a reverse tunnel to the jump host that lives exactly as long as the owner's consent.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api_tls;
pub mod approval;
pub mod attest;
pub mod authorized_keys;
pub mod builtin;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod history;
pub mod http_client;
pub mod keys;
pub mod live;
pub mod local_api;
pub mod metrics;
pub mod peer_user;
pub mod pin;
pub mod recordings;
pub mod register;
pub mod state;
pub mod target;
pub mod tunnel;
pub mod web;
