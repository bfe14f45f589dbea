//! `GET /metrics` on `metrics_listen`, in the Prometheus text format (0.0.4), rendered by
//! `metrics-exporter-prometheus` from what [`super`] counts plus the gauges read here.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::api::live_cert::LiveCert;
use crate::ssh::Relay;

/// Store call durations: a sync of SQLite's WAL takes milliseconds, a stalled disk seconds.
const STORE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Installs the process's metrics recorder. Once per process: a second call fails.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(STORE_SECONDS.to_owned()), STORE_BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        LOGINS_ACCEPTED,
        "SSH logins accepted, by role (device, engineer)."
    );
    describe_counter!(
        LOGINS_REFUSED,
        "SSH logins refused, by reason (key, not_allowed, login_grace)."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed before the SSH handshake, by reason (address, penalized, busy)."
    );
    describe_counter!(HOPS, "Engineer hops opened to a device.");
    describe_counter!(
        HOPS_REFUSED,
        "Engineer hops that could not open (device refused or silent, trail not written)."
    );
    describe_counter!(
        RELAYED_BYTES,
        Unit::Bytes,
        "Bytes relayed by ended hops, by direction (to_device, from_device)."
    );
    describe_counter!(REGISTRATIONS, "POST /v1/register answers, by HTTP status.");
    describe_histogram!(
        STORE_SECONDS,
        Unit::Seconds,
        "Duration of calls to the store (SQLite)."
    );
    describe_counter!(
        POLICY_RELOADS,
        "Policy reloads after an edit or SIGHUP, by outcome (loaded, failed)."
    );
    describe_gauge!(DEVICES_ONLINE, "Devices holding a tunnel now.");
    describe_gauge!(HOPS_ACTIVE, "Engineer hops open now.");
    describe_gauge!(
        SOURCES_BLOCKED,
        "Source addresses whose connections are refused now, by state (penalized, banned)."
    );
    describe_gauge!(
        API_CERT_LOADED,
        Unit::Seconds,
        "When the API's TLS certificate in use was loaded (Unix time); with [api_tls] only."
    );
    describe_gauge!(
        API_CERT_EXPIRY,
        Unit::Seconds,
        "When the API's TLS certificate in use expires, its notAfter (Unix time); with \
         [api_tls] only. Alert on it minus time() falling below the renewal margin."
    );
}

#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    relay: Arc<Relay>,
    api_cert: Option<Arc<LiveCert>>,
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    relay: Arc<Relay>,
    api_cert: Option<Arc<LiveCert>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(Scrape {
            handle,
            relay,
            api_cert,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(scrape): State<Scrape>) -> impl IntoResponse {
    let relay = &scrape.relay;
    metrics::gauge!(DEVICES_ONLINE).set(relay.routes.snapshot().len() as f64);
    metrics::gauge!(HOPS_ACTIVE).set(relay.hops.snapshot().len() as f64);
    let policy = relay.policy.current();
    let sources = relay.penalties.snapshot(policy.penalties(), Instant::now());
    for state in ["penalized", "banned"] {
        let blocked = sources.iter().filter(|s| s.state == state).count();
        metrics::gauge!(SOURCES_BLOCKED, "state" => state).set(blocked as f64);
    }
    if let Some(cert) = &scrape.api_cert {
        metrics::gauge!(API_CERT_LOADED).set(cert.state().since as f64);
        if let Some(expiry) = cert.expiry() {
            metrics::gauge!(API_CERT_EXPIRY).set(expiry as f64);
        }
    }
    scrape.handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        scrape.handle.render(),
    )
}
