//! The jump host: an SSH relay that routes engineers to customer machines by serial over
//! virtual reverse tunnels, with a registration API, admin policies and an audit trail.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod enroll;
pub mod metrics;
pub mod penalty;
pub mod policy;
pub mod private_dir;
pub mod reload;
pub mod serve;
pub mod ssh;
pub mod store;
pub mod toml_error;
