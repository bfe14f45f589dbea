//! `GET /metrics` on the agent's `web_listen`: a few gauges for the monitoring a vendor runs
//! on its product (is assistance on, where is the tunnel, how often did it reconnect), in the
//! Prometheus text format, rendered by `metrics-exporter-prometheus` as on the jump host.
//!
//! Readable without the control token: it says only what anyone on the machine can see
//! (whether an outbound session is up), never the code, the serial, a jump host's address or
//! an engineer's. The page's `Host` check still applies, so a DNS-rebinding web page cannot
//! read it either.

use crate::agent::Agent;
use crate::state::TunnelState;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
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

#[derive(Clone)]
struct Scrape {
    agent: Arc<Agent>,
    /// Not the process's global recorder: the values are read from the agent at each
    /// scrape, so this recorder is only ever written here.
    recorder: Arc<PrometheusRecorder>,
}

/// The `/metrics` route, with the page's `Host` check.
pub fn router(agent: Arc<Agent>) -> Router {
    let recorder = Arc::new(PrometheusBuilder::new().build_recorder());
    metrics::with_local_recorder(recorder.as_ref(), describe);
    Router::new()
        .route("/metrics", get(render))
        .with_state(Scrape { agent, recorder })
        .layer(axum::middleware::from_fn(crate::web::guard::check_host))
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(ENABLED, "1 while an assistance window is open, else 0.");
    describe_gauge!(
        WINDOW_REMAINING,
        Unit::Seconds,
        "Seconds left in the open assistance window; 0 when none is open."
    );
    describe_gauge!(
        TUNNEL_STATE,
        "The tunnel's state: 1 for the current one of disabled, connecting, connected, \
         reconnecting, failed."
    );
    describe_counter!(
        RECONNECTS,
        "Tunnel attempts after a failure or a lost session, since the agent started."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Engineers' connections relayed to this machine now."
    );
}

async fn render(State(scrape): State<Scrape>) -> impl IntoResponse {
    let status = scrape.agent.status().await;
    let reconnects = scrape.agent.reconnects();
    metrics::with_local_recorder(scrape.recorder.as_ref(), || {
        metrics::gauge!(ENABLED).set(f64::from(u8::from(status.enabled)));
        metrics::gauge!(WINDOW_REMAINING).set(status.remaining_secs.unwrap_or(0) as f64);
        for (state, name) in STATES {
            let on = status.tunnel.state == state;
            metrics::gauge!(TUNNEL_STATE, "state" => name).set(f64::from(u8::from(on)));
        }
        metrics::counter!(RECONNECTS).absolute(reconnects);
        metrics::gauge!(CONNECTIONS_ACTIVE).set(status.connections.active as f64);
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        scrape.recorder.handle().render(),
    )
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
