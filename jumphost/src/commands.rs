//! Admin commands that act on a jump host's state from the command line: `serial reset` and
//! `serial secret`. They sit above the domain modules (store, admin socket, enrollment) and
//! print for a person.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;

use crate::admin::{self, AskError, Request, ResetAnswer};
use crate::config::JumphostConfig;
use crate::enroll::EnrollmentKey;
use crate::store::SqliteStore;

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
    let store = SqliteStore::open(&config.data_dir)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let removed = crate::store::reset_serial_audited(&store, serial)?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use russh::keys::PrivateKey;
    use russh::keys::ssh_key::private::Ed25519Keypair;

    use super::*;
    use crate::store::{DeviceBinding, Store};

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
}
