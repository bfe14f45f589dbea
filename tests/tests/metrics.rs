//! The jump host's Prometheus endpoint (`metrics_listen`) end to end: values follow a real
//! device, real hops and a refused login, carry no serial, name or address, and pass
//! `promtool check metrics` (Debian's prometheus package; scripts/test.sh installs it).
// Test helpers fail the test by panicking, as the #[test] functions do.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use assist_e2e::{keygen, text, wait_until};

mod agent_world;
mod relay_world;

use relay_world::{SHORT, World};

/// One scrape of `GET /metrics`.
fn scrape(w: &World) -> String {
    let addr = w.jump.metrics_addr.expect("metrics_listen is set");
    let (status, body) = assist_e2e::http(addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `name` (with its labels as written, e.g.
/// `assist_logins_refused_total{reason="key"}`); 0 when it is not there yet.
fn value(body: &str, sample: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn promtool_accepts(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test.sh installs prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn metrics_follow_devices_hops_and_refusals_and_pass_promtool() {
    let w = World::start_full(
        r#"["127.0.0.1/32"]"#,
        "[]",
        "30d",
        "metrics_listen = \"127.0.0.1:0\"\n",
        "",
    );
    let body = scrape(&w);
    assert_eq!(value(&body, "assist_devices_online"), 0.0, "{body}");
    assert_eq!(value(&body, "assist_hops_active"), 0.0, "{body}");
    promtool_accepts(&body);

    let key = w.register("SN-0001");
    let _device = w.device("SN-0001", &key);
    wait_until(SHORT, "the device counted online", || {
        value(&scrape(&w), "assist_devices_online") == 1.0
    });
    let body = scrape(&w);
    assert!(
        value(&body, "assist_registrations_total{status=\"201\"}") >= 1.0,
        "{body}"
    );
    assert!(
        value(&body, "assist_logins_accepted_total{role=\"device\"}") >= 1.0,
        "{body}"
    );

    // A hop held open is active, and inactive once its engineer is gone.
    let mut held = w.hop_cmd("alice", "SN-0001", "sleep 60", None);
    // Its own process group: the ProxyCommand child goes with it.
    let mut held = held
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(SHORT, "the hop counted active", || {
        value(&scrape(&w), "assist_hops_active") == 1.0
    });
    let body = scrape(&w);
    assert_eq!(value(&body, "assist_hops_total"), 1.0, "{body}");
    assert_eq!(
        value(&body, "assist_logins_accepted_total{role=\"engineer\"}"),
        1.0,
        "{body}"
    );
    let group = format!("-{}", held.id());
    assert!(
        Command::new("kill")
            .args(["-9", "--", &group])
            .status()
            .unwrap()
            .success()
    );
    let _ = held.wait();
    wait_until(SHORT, "the hop counted ended", || {
        value(&scrape(&w), "assist_hops_active") == 0.0
    });

    // A hop that moves 100 kB (random, so no compression shrinks it) adds them once it ends.
    let from_device = "assist_relayed_bytes_total{direction=\"from_device\"}";
    let before = value(&scrape(&w), from_device);
    let out = w.hop(
        "alice",
        "SN-0001",
        "head -c 100000 /dev/urandom | base64",
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(SHORT, "the hop's bytes counted", || {
        value(&scrape(&w), from_device) - before >= 100_000.0
    });
    let body = scrape(&w);
    assert_eq!(value(&body, "assist_hops_total"), 2.0, "{body}");
    assert!(
        value(&body, "assist_relayed_bytes_total{direction=\"to_device\"}") > 0.0,
        "{body}"
    );
    assert!(
        value(&body, "assist_store_call_seconds_count") >= 1.0,
        "{body}"
    );

    // A stranger's key is a refused login.
    let stranger = w.path("stranger");
    keygen(&stranger);
    let out = w.direct("mallory", &stranger, &[]);
    assert!(!out.status.success());
    let body = scrape(&w);
    assert!(
        value(&body, "assist_logins_refused_total{reason=\"key\"}") >= 1.0,
        "{body}"
    );

    // A broken policy edit is a failed reload.
    w.edit_policy("[allowlist\n");
    wait_until(SHORT, "the failed reload counted", || {
        value(
            &scrape(&w),
            "assist_policy_reloads_total{outcome=\"failed\"}",
        ) == 1.0
    });

    // No label names a device, an engineer or an address.
    let body = scrape(&w);
    for secret in ["SN-0001", "sn-0001", "alice", "mallory", "127.0.0.1"] {
        assert!(!body.contains(secret), "{secret} in the metrics:\n{body}");
    }
    promtool_accepts(&body);
}

/// With `[api_tls]`, the certificate's expiry is exported as the certificate says it (the
/// notAfter that `openssl x509 -enddate` reads from the file the jump host serves).
#[test]
fn the_api_certificates_expiry_is_a_metric() {
    let dir = tempfile::tempdir().unwrap();
    let jump = assist_e2e::Jumphost::start_configured(
        dir.path(),
        &assist_e2e::alice_policy(
            "",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJqE7egDfQoF+LPGvaRdEJjNURSRmJ2U+vQ9XSbMvnLX",
        ),
        "127.0.0.1:0",
        "metrics_listen = \"127.0.0.1:0\"\n[api_tls]\nself_signed = true\n",
    );
    let addr = jump.metrics_addr.unwrap();
    let (status, body) = assist_e2e::http(addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200, "{body}");
    let expiry = value(&body, "assist_api_certificate_expiry_timestamp_seconds");
    let loaded = value(&body, "assist_api_certificate_loaded_timestamp_seconds");

    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(jump.data_dir.join("api-cert.pem"))
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let end = text(&out.stdout);
    let end = end.trim().strip_prefix("notAfter=").unwrap().to_owned();
    let out = Command::new("date")
        .args(["-u", "-d", &end, "+%s"])
        .output()
        .unwrap();
    let want: f64 = text(&out.stdout).trim().parse().unwrap();
    assert_eq!(expiry, want, "{body}");
    assert!(expiry > loaded && loaded > 0.0, "{body}");
    promtool_accepts(&body);
}

/// One scrape of the agent's `GET /metrics` on its web_listen, without the control token.
fn scrape_agent(folder: &std::path::Path) -> String {
    let addr = std::fs::read_to_string(folder.join("data/web.addr")).unwrap();
    let (status, body) =
        assist_e2e::http(addr.trim().parse().unwrap(), "GET", "/metrics", &[], b"");
    assert_eq!(status, 200, "{body}");
    body
}

/// The agent's own gauges follow enable, a lost jump host and disable; they need no token
/// and carry neither the serial, nor the code, nor the jump host's address.
#[test]
fn the_agents_metrics_follow_its_window_and_tunnel_and_pass_promtool() {
    let mut w = agent_world::World::start();
    let config = w.client_config("agent");
    let folder = w.path("agent");
    let _agent = agent_world::start_agent(&config, "agent");
    let state =
        |body: &str, s: &str| value(body, &format!("assist_agent_tunnel_state{{state=\"{s}\"}}"));

    let body = scrape_agent(&folder);
    assert_eq!(
        value(&body, "assist_agent_assistance_enabled"),
        0.0,
        "{body}"
    );
    assert_eq!(state(&body, "disabled"), 1.0, "{body}");
    assert_eq!(state(&body, "connected"), 0.0, "{body}");
    promtool_accepts(&body);

    let (code, _) = agent_world::enable(&config, "10");
    agent_world::wait_tunnel(&config, "connected");
    let body = scrape_agent(&folder);
    assert_eq!(
        value(&body, "assist_agent_assistance_enabled"),
        1.0,
        "{body}"
    );
    assert_eq!(state(&body, "connected"), 1.0, "{body}");
    assert_eq!(state(&body, "disabled"), 0.0, "{body}");
    let left = value(&body, "assist_agent_window_remaining_seconds");
    assert!(left > 500.0 && left <= 600.0, "{body}");
    let reconnects = value(&body, "assist_agent_tunnel_reconnects_total");

    // The jump host dies and comes back: the agent reconnects, and counts it.
    w.jump.restart();
    wait_until(SHORT, "a reconnect counted and the tunnel back", || {
        let body = scrape_agent(&folder);
        value(&body, "assist_agent_tunnel_reconnects_total") > reconnects
            && state(&body, "connected") == 1.0
    });

    let body = scrape_agent(&folder);
    let jump = w.jump.ssh_addr.to_string();
    for secret in [
        agent_world::SERIAL,
        code.as_str(),
        jump.as_str(),
        "127.0.0.1",
    ] {
        assert!(
            !body.contains(secret),
            "{secret} in the agent's metrics:\n{body}"
        );
    }
    promtool_accepts(&body);

    let out = agent_world::cli(&config, &["disable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body = scrape_agent(&folder);
    assert_eq!(
        value(&body, "assist_agent_assistance_enabled"),
        0.0,
        "{body}"
    );
    assert_eq!(
        value(&body, "assist_agent_window_remaining_seconds"),
        0.0,
        "{body}"
    );
    assert_eq!(state(&body, "disabled"), 1.0, "{body}");
    promtool_accepts(&body);
}
