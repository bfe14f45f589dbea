//! The command-line commands besides `serve`: `status`, `policy check`, `serial reset` and
//! `serial secret`. They sit above the domain modules they call (admin socket, policy,
//! store, enrollment) and print for a person.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::admin::{self, AskError, Request, ResetAnswer, Snapshot};
use crate::config::JumphostConfig;
use crate::enroll::EnrollmentKey;
use crate::policy::Policy;

/// `assist-jumphost serial reset SERIAL --config FILE`: through the running jump host when
/// there is one (so the device's live session ends at once), else on the store directly.
pub fn reset_command(config: &Path, serial: &str) -> anyhow::Result<()> {
    assist_proto::validate_name(serial).with_context(|| format!("serial {serial:?}"))?;
    let config = JumphostConfig::load(config)?;
    let request = Request::ResetSerial {
        serial: serial.to_owned(),
    };
    let answer = match admin::ask::<ResetAnswer>(&config.data_dir, &request) {
        Ok(answer) => answer,
        Err(AskError::NotRunning { .. }) => reset_offline(&config, serial)?,
        Err(AskError::Failed(e)) => return Err(e.context("asking the running jump host")),
    };
    if let Some(error) = answer.error {
        anyhow::bail!("serial {serial}: nothing reset: {error}");
    }
    let Some(removed) = answer.removed else {
        anyhow::bail!(
            "serial {serial} has no key binding in {} (nothing to reset)",
            config.data_dir.display()
        );
    };
    println!(
        "serial {serial}: removed the binding of key {} ({}); the device can now register a new key",
        removed.fingerprint,
        if removed.was_expired {
            "already expired"
        } else {
            "was valid"
        }
    );
    if answer.sessions_ended > 0 {
        println!("serial {serial}: its live session on the running jump host was ended");
    }
    Ok(())
}

fn reset_offline(config: &JumphostConfig, serial: &str) -> anyhow::Result<ResetAnswer> {
    let backend = config.store_backend()?;
    let store = crate::store::open(&backend, &config.node())
        .with_context(|| format!("opening the store ({backend})"))?;
    let removed = crate::store::reset_serial_audited(&*store, serial)?;
    Ok(ResetAnswer {
        removed: removed.map(|b| admin::RemovedBinding {
            fingerprint: b.fingerprint(),
            was_expired: b.is_expired(SystemTime::now()),
        }),
        sessions_ended: 0,
        error: None,
    })
}

/// `assist-jumphost serial secret SERIAL --config FILE`: prints `secret: <S>`, what the
/// vendor ships with the device of this serial (its client.toml `enrollment_secret`).
pub fn secret_command(config: &Path, serial: &str) -> anyhow::Result<()> {
    assist_proto::validate_name(serial).with_context(|| format!("serial {serial:?}"))?;
    let config_path = config;
    let config = JumphostConfig::load(config)?;
    let Some(file) = &config.enrollment_key else {
        anyhow::bail!(
            "{} sets no enrollment_key, so serials need no secret; set enrollment_key = \
             \"FILE\" first (the jump host makes the key on first use)",
            config_path.display()
        );
    };
    crate::private_dir::ensure(&config.data_dir)?;
    let key = EnrollmentKey::load_or_create(file)?;
    println!("secret: {}", key.secret(serial).expose());
    Ok(())
}

/// `assist-jumphost policy check --policies DIR`.
pub fn check_command(dir: &Path) -> anyhow::Result<()> {
    let policy = Policy::load_dir(dir)?;
    println!("policy OK: {}", dir.display());
    println!("{}", policy.summary());
    for warning in policy.warnings() {
        println!("warning: {warning}");
    }
    Ok(())
}

/// `assist-jumphost status --config FILE [--json]`.
pub fn status_command(config: &Path, json: bool) -> anyhow::Result<()> {
    let config = JumphostConfig::load(config)?;
    let snapshot: Snapshot = admin::ask(&config.data_dir, &Request::Status)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&snapshot).context("encoding the status")?
        );
    } else {
        print!("{}", render(&snapshot, SystemTime::now()));
    }
    Ok(())
}

/// The human form of a snapshot.
pub fn render(s: &Snapshot, now: SystemTime) -> String {
    let mut out = format!(
        "jump host {} node {} up {}\n",
        s.version,
        s.node,
        humantime::format_duration(Duration::from_secs(s.uptime_secs))
    );
    out += &format!("devices online: {}\n", s.devices.len());
    for d in &s.devices {
        let ports: Vec<String> = d.ports.iter().map(u32::to_string).collect();
        out += &format!("  {:<24} ports {}\n", d.serial, ports.join(", "));
    }
    out += &format!("hops in progress: {}\n", s.hops.len());
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for h in &s.hops {
        let age = Duration::from_secs(now_secs.saturating_sub(h.since));
        out += &format!(
            "  {} from {} -> {}:{} for {}\n",
            h.engineer,
            h.source,
            h.serial,
            h.port,
            humantime::format_duration(age)
        );
    }
    let mut nodes: Vec<&str> = s.cluster_hops.iter().map(|h| h.node.as_str()).collect();
    nodes.dedup();
    if nodes.iter().any(|n| *n != s.node) {
        nodes.sort_unstable();
        nodes.dedup();
        out += &format!(
            "hops in progress in the shared database: {} on nodes {}\n",
            s.cluster_hops.len(),
            nodes.join(", ")
        );
        for h in &s.cluster_hops {
            let age = Duration::from_secs(now_secs.saturating_sub(h.since));
            out += &format!(
                "  {} from {} -> {}:{} on {} for {}\n",
                h.engineer,
                h.source,
                h.serial,
                h.port,
                h.node,
                humantime::format_duration(age)
            );
        }
    }
    if !s.cluster_nodes.is_empty() {
        out += &format!(
            "cluster nodes: {}
",
            s.cluster_nodes.len()
        );
        for n in &s.cluster_nodes {
            out += &format!(
                "  {} (peer {}): {} devices {}
",
                n.name,
                n.peer_address,
                n.devices.len(),
                n.devices.join(", ")
            );
        }
    }
    if let Some(error) = &s.cluster_error {
        out += &format!("database: could not read the cluster's hops: {error}\n");
    }
    if let Some(error) = &s.policy_error {
        out += &format!(
            "policy: the latest edit was NOT loaded, the last good policy is in force: {error}\n"
        );
    }
    if let Some(tls) = &s.api_tls {
        let age = Duration::from_secs(now_secs.saturating_sub(tls.since));
        out += &format!(
            "api tls certificate: {} (loaded {} ago)\n",
            tls.fingerprint,
            humantime::format_duration(age)
        );
        if let Some(error) = &tls.reload_error {
            out += &format!("  the latest renewal was NOT loaded: {error}\n");
        }
    }
    out += &format!("sources with failed logins: {}\n", s.sources.len());
    for p in &s.sources {
        let left = if p.blocked_secs > 0 {
            format!(
                ", {} left",
                humantime::format_duration(Duration::from_secs(p.blocked_secs))
            )
        } else {
            String::new()
        };
        out += &format!(
            "  {:<24} {} failed logins, {}{left}\n",
            p.source.to_string(),
            p.failures,
            p.state
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use russh::keys::PrivateKey;
    use russh::keys::ssh_key::private::Ed25519Keypair;

    use super::*;
    use crate::admin::{ClusterHop, Device};
    use crate::api::live_cert::CertState;
    use crate::penalty::SourceState;
    use crate::ssh::live::LiveHop;
    use crate::store::{DeviceBinding, SqliteStore, Store};

    fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
        let config = dir.join("jumphost.toml");
        std::fs::write(
            &config,
            format!(
                "ssh_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n\
                 data_dir = \"data\"\npolicies_dir = \"policies\"\n{extra}"
            ),
        )
        .unwrap();
        config
    }

    #[test]
    fn reset_without_a_running_jump_host_deletes_a_binding_and_refuses_an_unknown_serial() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "");
        let store = SqliteStore::open(&dir.path().join("data")).unwrap();
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&[1; 32]));
        store
            .put_binding(&DeviceBinding {
                serial: "SN-1".into(),
                public_key: key.public_key().clone(),
                expires_at: SystemTime::now() + Duration::from_secs(60),
            })
            .unwrap();

        reset_command(&config, "SN-1").unwrap();
        assert!(store.binding("SN-1").unwrap().is_none());
        assert_eq!(store.recent_audit(1).unwrap()[0].kind, "admin.reset");

        let err = format!("{:#}", reset_command(&config, "SN-1").unwrap_err());
        assert!(
            err.contains("SN-1") && err.contains("no key binding"),
            "{err}"
        );
        let err = format!("{:#}", reset_command(&config, "../x").unwrap_err());
        assert!(err.contains("../x"), "{err}");
    }

    #[test]
    fn secret_needs_an_enrollment_key_and_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            secret_command(&config(dir.path(), ""), "SN-1").unwrap_err()
        );
        assert!(err.contains("no enrollment_key"), "{err}");
        let config = config(dir.path(), "enrollment_key = \"data/enroll.key\"\n");
        secret_command(&config, "SN-1").unwrap();
        let key = EnrollmentKey::load_or_create(&dir.path().join("data/enroll.key")).unwrap();
        assert_eq!(key.secret("SN-1").expose().len(), 64);
    }

    #[test]
    fn render_lists_devices_hops_and_blocked_sources() {
        let s = Snapshot {
            version: "0.1.0".into(),
            node: "eu-1".into(),
            uptime_secs: 61,
            devices: vec![Device {
                serial: "SN-1".into(),
                ports: vec![22, 80],
            }],
            hops: vec![LiveHop {
                engineer: "alice".into(),
                source: "127.0.0.1:5000".parse().unwrap(),
                serial: "SN-1".into(),
                port: 22,
                since: 1_000,
            }],
            sources: vec![SourceState {
                source: "192.0.2.7".parse().unwrap(),
                failures: 12,
                blocked_secs: 600,
                state: "banned".into(),
            }],
            policy_error: Some("p.toml line 2: bad".into()),
            api_tls: Some(CertState {
                fingerprint: "sha256:ab".into(),
                since: 1_030,
                reload_error: Some("key does not fit".into()),
            }),
            cluster_hops: vec![
                ClusterHop {
                    node: "eu-1".into(),
                    engineer: "alice".into(),
                    source: "127.0.0.1:5000".into(),
                    serial: "SN-1".into(),
                    port: 22,
                    since: 1_000,
                },
                ClusterHop {
                    node: "eu-2".into(),
                    engineer: "bob".into(),
                    source: "127.0.0.1:6000".into(),
                    serial: "SN-2".into(),
                    port: 80,
                    since: 1_060,
                },
            ],
            cluster_error: None,
            cluster_nodes: vec![
                crate::store::cluster::NodeDevices {
                    name: "eu-1".into(),
                    peer_address: "10.0.0.1:7000".into(),
                    devices: vec!["SN-1".into()],
                },
                crate::store::cluster::NodeDevices {
                    name: "eu-2".into(),
                    peer_address: "10.0.0.2:7000".into(),
                    devices: vec!["SN-2".into(), "SN-3".into()],
                },
            ],
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_090);
        let text = render(&s, now);
        assert!(
            text.starts_with("jump host 0.1.0 node eu-1 up 1m 1s\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "hops in progress in the shared database: 2 on nodes eu-1, eu-2\n  \
                 alice from 127.0.0.1:5000 -> SN-1:22 on eu-1 for 1m 30s\n  \
                 bob from 127.0.0.1:6000 -> SN-2:80 on eu-2 for 30s\n"
            ),
            "{text}"
        );
        assert!(text.contains("devices online: 1\n  SN-1"), "{text}");
        assert!(
            text.contains(
                "cluster nodes: 2\n  eu-1 (peer 10.0.0.1:7000): 1 devices SN-1\n  \
                 eu-2 (peer 10.0.0.2:7000): 2 devices SN-2, SN-3\n"
            ),
            "{text}"
        );
        assert!(text.contains("ports 22, 80"), "{text}");
        assert!(
            text.contains("alice from 127.0.0.1:5000 -> SN-1:22 for 1m 30s"),
            "{text}"
        );
        assert!(
            text.contains("192.0.2.7") && text.contains("12 failed logins, banned, 10m left"),
            "{text}"
        );
        assert!(
            text.contains("policy: the latest edit was NOT loaded, the last good policy is in force: p.toml line 2: bad"),
            "{text}"
        );
        assert!(
            text.contains("api tls certificate: sha256:ab (loaded 1m ago)\n  the latest renewal was NOT loaded: key does not fit"),
            "{text}"
        );
    }

    /// A policy folder holding `a.toml` with `text`.
    fn folder(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), text).unwrap();
        dir
    }

    #[test]
    fn check_command_fails_with_the_reason() {
        let dir = folder("[serials]\nallow = [\"SN-*\"]\n");
        check_command(dir.path()).unwrap();
        let bad = folder("[keys]\nttl = \"1d\"\n");
        let err = check_command(bad.path()).unwrap_err().to_string();
        assert!(err.contains("a.toml") && err.contains("ttl"), "{err}");
    }
}
