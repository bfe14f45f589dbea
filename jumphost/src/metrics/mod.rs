//! Prometheus metrics: what is counted, under which names. Counters are counted where things
//! happen, through the `metrics` facade, which does nothing until [`endpoint::serve`]
//! installs its recorder (no `metrics_listen`, no cost); gauges are read from the relay's
//! state at each scrape. No label carries a serial, a name or an address: their number is
//! unbounded, and a scrape is no audit trail.

pub mod endpoint;

use std::time::Duration;

pub const LOGINS_ACCEPTED: &str = "assist_logins_accepted_total";
pub const LOGINS_REFUSED: &str = "assist_logins_refused_total";
pub const CONNECTIONS_REFUSED: &str = "assist_connections_refused_total";
pub const HOPS: &str = "assist_hops_total";
pub const HOPS_REFUSED: &str = "assist_hops_refused_total";
pub const RELAYED_BYTES: &str = "assist_relayed_bytes_total";
pub const REGISTRATIONS: &str = "assist_registrations_total";
pub const STORE_SECONDS: &str = "assist_store_call_seconds";
pub const POLICY_RELOADS: &str = "assist_policy_reloads_total";
pub const DEVICES_ONLINE: &str = "assist_devices_online";
pub const HOPS_ACTIVE: &str = "assist_hops_active";
pub const SOURCES_BLOCKED: &str = "assist_sources_blocked";
pub const API_CERT_LOADED: &str = "assist_api_certificate_loaded_timestamp_seconds";
pub const API_CERT_EXPIRY: &str = "assist_api_certificate_expiry_timestamp_seconds";

/// A login that succeeded; `role` is "device" or "engineer".
pub fn login_accepted(role: &'static str) {
    metrics::counter!(LOGINS_ACCEPTED, "role" => role).increment(1);
}

/// A login that was refused: `reason` is "key" (unknown, expired or out of scope: the client
/// may try another), "not_allowed" (its address or scope closes the connection) or
/// "login_grace" (no login in time).
pub fn login_refused(reason: &'static str) {
    metrics::counter!(LOGINS_REFUSED, "reason" => reason).increment(1);
}

/// A connection closed before the SSH handshake: "address" (in no allowlist), "penalized"
/// (too many failed logins) or "busy" (too many logging in at once).
pub fn connection_refused(reason: &'static str) {
    metrics::counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// A hop that opened.
pub fn hop_started() {
    metrics::counter!(HOPS).increment(1);
}

/// A hop the device or the trail did not allow to open.
pub fn hop_refused() {
    metrics::counter!(HOPS_REFUSED).increment(1);
}

/// Bytes a hop carried, counted when it ends.
pub fn relayed(to_device: u64, from_device: u64) {
    metrics::counter!(RELAYED_BYTES, "direction" => "to_device").increment(to_device);
    metrics::counter!(RELAYED_BYTES, "direction" => "from_device").increment(from_device);
}

/// A registration answered with `status`.
pub fn registration(status: u16) {
    metrics::counter!(REGISTRATIONS, "status" => status.to_string()).increment(1);
}

/// How long one call to the store took.
pub fn store_call(took: Duration) {
    metrics::histogram!(STORE_SECONDS).record(took.as_secs_f64());
}

/// A policy reload: "loaded" or "failed" (the last good policy stays in force).
pub fn policy_reload(outcome: &'static str) {
    metrics::counter!(POLICY_RELOADS, "outcome" => outcome).increment(1);
}
