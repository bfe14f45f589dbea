//! Harness for the end-to-end tests: builds and starts the real binaries and stock OpenSSH on
//! loopback, reads their ready lines, and cleans up after them.
//!
//! Nothing here sleeps to wait for readiness: a program is ready when it says so on stdout,
//! anything else is polled with a deadline.
//!
//! By role: `process` (children, binaries, deadlines), `openssh` (ssh, sshd, keys),
//! `jumphost` (the jump host and its policies), `http` (raw HTTP and TCP), `files` (test
//! data), `postgres` (a private PostgreSQL cluster); the others each start one third-party program or set up one thing.

pub mod account;
pub mod attest;
pub mod dropbear;
pub mod files;
pub mod haproxy;
pub mod http;
pub mod jumphost;
pub mod nginx;
pub mod openssh;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod socks;

pub use files::{random_file, readme_snippet, sha256_file};
pub use http::{connect_from, http, try_http, until_closed};
pub use jumphost::{Jumphost, alice_policy, policy, write_client_config};
pub use openssh::{
    ProxyJump, SSHD, Sshd, keygen, ssh, ssh_logging, ssh_options, write_derived_key,
};
pub use process::{
    Proc, READY_TIMEOUT, assist_client, bin, start_on_free_port, text, wait_until,
    without_cargo_test_env,
};
