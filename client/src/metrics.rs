//! `GET /metrics` on the agent's `web_listen`: a few gauges for the monitoring a vendor runs
//! on its product (is assistance on, where is the tunnel, how often did it reconnect), in the
//! Prometheus text format, rendered by the `prometheus` crate (lighter than the jump host's
//! `metrics` exporter, which the agent's 4 MiB size target cannot afford).
//!
//! Readable without the control token: it says only what anyone on the machine can see
//! (whether an outbound session is up), never the code, the serial, a jump host's address or
//! an engineer's. The page's `Host` check still applies, so a DNS-rebinding web page cannot
//! read it either.

use crate::agent::Agent;
use crate::state::TunnelState;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Arc;

pub const ENABLED: &str = "assist_agent_assistance_enabled";
pub const WINDOW_REMAINING: &str = "assist_agent_window_remaining_seconds";
pub const TUNNEL_STATE: &str = "assist_agent_tunnel_state";
pub const RECONNECTS: &str = "assist_agent_tunnel_reconnects_total";
pub const CONNECTIONS_ACTIVE: &str = "assist_agent_connections_active";

/// Every tunnel state, as the `state` label spells it (one series each, 1 for the current).
const STATES: [(TunnelState, &str); 5] = [
    (TunnelState::Disabled, "disabled"),
    (TunnelState::Connecting, "connecting"),
    (TunnelState::Connected, "connected"),
    (TunnelState::Reconnecting, "reconnecting"),
    (TunnelState::Failed, "failed"),
];

/// The series of one scrape, set from the agent's state (a registry of its own per scrape,
/// not the crate's global one: nothing else in the agent records into it).
struct Gauges {
    registry: Registry,
    enabled: IntGauge,
    remaining: IntGauge,
    state: IntGaugeVec,
    reconnects: IntCounter,
    active: IntGauge,
}

impl Gauges {
    fn new() -> prometheus::Result<Self> {
        let gauges = Gauges {
            registry: Registry::new(),
            enabled: IntGauge::new(ENABLED, "1 while an assistance window is open, else 0.")?,
            remaining: IntGauge::new(
                WINDOW_REMAINING,
                "Seconds left in the open assistance window; 0 when none is open.",
            )?,
            state: IntGaugeVec::new(
                Opts::new(
                    TUNNEL_STATE,
                    "The tunnel's state: 1 for the current one of disabled, connecting, \
                     connected, reconnecting, failed.",
                ),
                &["state"],
            )?,
            reconnects: IntCounter::new(
                RECONNECTS,
                "Tunnel attempts after a failure or a lost session, since the agent started.",
            )?,
            active: IntGauge::new(
                CONNECTIONS_ACTIVE,
                "Engineers' connections relayed to this machine now.",
            )?,
        };
        let r = &gauges.registry;
        r.register(Box::new(gauges.enabled.clone()))?;
        r.register(Box::new(gauges.remaining.clone()))?;
        r.register(Box::new(gauges.state.clone()))?;
        r.register(Box::new(gauges.reconnects.clone()))?;
        r.register(Box::new(gauges.active.clone()))?;
        Ok(gauges)
    }
}

/// The `/metrics` route, with the page's `Host` check.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .with_state(agent)
        .layer(axum::middleware::from_fn(crate::web::guard::check_host))
}

async fn render(State(agent): State<Arc<Agent>>) -> Response {
    let status = agent.status().await;
    let reconnects = agent.reconnects();
    let text = Gauges::new().and_then(|g| {
        g.enabled.set(i64::from(status.enabled));
        g.remaining
            .set(i64::try_from(status.remaining_secs.unwrap_or(0)).unwrap_or(i64::MAX));
        for (state, name) in STATES {
            let on = status.tunnel.state == state;
            g.state.with_label_values(&[name]).set(i64::from(on));
        }
        g.reconnects.inc_by(reconnects);
        g.active
            .set(i64::try_from(status.connections.active).unwrap_or(i64::MAX));
        let mut text = Vec::new();
        TextEncoder::new().encode(&g.registry.gather(), &mut text)?;
        Ok(text)
    });
    match text {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("rendering /metrics: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    fn agent() -> (tempfile::TempDir, Arc<Agent>) {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("authorized_keys");
        let text = format!(
            "serial = \"SN-1\"\njumphost = \"127.0.0.1:9\"\napi_url = \"http://127.0.0.1:9\"\n\
             data_dir = \"{}\"\nweb_listen = \"127.0.0.1:0\"\ntarget_user = \"root\"\n\
             authorized_keys = \"{}\"\n[services]\nssh = \"127.0.0.1:22\"\n",
            dir.path().join("data").display(),
            keys.display()
        );
        let config = crate::config::Config::parse(&dir.path().join("client.toml"), &text).unwrap();
        std::fs::create_dir_all(&config.data_dir).unwrap();
        (dir, Arc::new(Agent::new(config).unwrap()))
    }

    async fn get(router: Router, host: &str) -> (StatusCode, String) {
        let request = Request::get("/metrics")
            .header("host", host)
            .body(Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_need_no_token_say_disabled_and_name_no_serial() {
        let (_dir, agent) = agent();
        let (status, body) = get(router(agent), "127.0.0.1:7070").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("assist_agent_assistance_enabled 0"), "{body}");
        assert!(
            body.contains("assist_agent_tunnel_state{state=\"disabled\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("assist_agent_tunnel_state{state=\"connected\"} 0"),
            "{body}"
        );
        assert!(
            body.contains("assist_agent_tunnel_reconnects_total 0"),
            "{body}"
        );
        assert!(
            body.contains("# HELP assist_agent_window_remaining_seconds"),
            "{body}"
        );
        assert!(
            !body.contains("SN-1") && !body.contains("127.0.0.1:9"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_foreign_host_is_refused() {
        let (_dir, agent) = agent();
        let (status, _) = get(router(agent), "evil.example:7070").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    }
}
