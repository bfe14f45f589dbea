//! `support-cli key`: the key derived from a code as an OpenSSH private key file for stock
//! tools, with the host keys the device proved beside it.

use anyhow::Context;
use assist_proto::private_file::{self, Existing};
use russh::keys::{HashAlg, PrivateKey};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::UsageError;
use crate::keys::{check_serial, parse_code};
use crate::progress::Progress;

/// Arguments of `key`.
pub struct KeyArgs {
    pub serial: String,
    pub code: String,
    pub out: PathBuf,
    pub force: bool,
}

pub async fn run(
    settings: &crate::config::Settings,
    args: KeyArgs,
    progress: &Progress,
) -> anyhow::Result<i32> {
    check_serial(&args.serial)?;
    let code = parse_code(&args.code)?;
    let pins = known_hosts_beside(&args.out);
    if !args.force
        && let Some(existing) = [&args.out, &pins].into_iter().find(|p| p.exists())
    {
        return Err(UsageError(format!(
            "{} already exists; pass --force to overwrite it",
            existing.display()
        ))
        .into());
    }
    // The key is only worth writing for a device that proves it knows the code, and its
    // proven host keys are what stock ssh must pin.
    let addr = settings.jump_addr()?;
    let derivation = crate::prove::start_derivation(&args.serial, &code);
    let login = crate::hop::JumpLogin::from_settings(settings, &addr)?;
    let jump = crate::hop::connect_jump(login, progress).await?;
    let proven = crate::prove::prove(&jump, &args.serial, &code, derivation, progress).await;
    jump.disconnect().await;
    let proven = proven?;
    progress.stop();

    write_private_key(&args.out, &proven.login, args.force)?;
    let lines: String = proven
        .host_keys
        .iter()
        .map(|k| crate::known_hosts::entry(&proven.serial, k))
        .collect::<Result<_, _>>()
        .context("encoding the host keys")?;
    private_file::write_private(&pins, lines.as_bytes(), existing(args.force))
        .with_context(|| format!("cannot write {}", pins.display()))?;
    let public = proven.login.public_key();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        public.to_openssh().context("encoding the public key")?
    )?;
    writeln!(out, "{}", public.fingerprint(HashAlg::Sha256))?;
    out.flush()?;
    progress.note(&format!(
        "wrote {} and {} (the host keys {} proved with the code); with stock OpenSSH: \
         ssh -i {} -o UserKnownHostsFile={} -J {}@{} root@{}",
        args.out.display(),
        pins.display(),
        proven.serial,
        args.out.display(),
        pins.display(),
        settings.engineer()?,
        addr,
        proven.serial
    ));
    Ok(0)
}

/// `FILE.known_hosts` beside the key file `FILE`.
pub fn known_hosts_beside(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_os_string();
    name.push(".known_hosts");
    PathBuf::from(name)
}

fn existing(force: bool) -> Existing {
    if force {
        Existing::Replace
    } else {
        Existing::Keep
    }
}

/// Writes the key with mode 0600 from the start, so it is never readable by others.
fn write_private_key(path: &Path, key: &PrivateKey, force: bool) -> anyhow::Result<()> {
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .context("encoding the private key")?;
    private_file::write_private(path, pem.as_bytes(), existing(force))
        .with_context(|| format!("cannot write the key file {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_key_file_is_0600_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &[3; 32],
        ));
        write_private_key(&path, &key, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = PrivateKey::from_openssh(std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert!(write_private_key(&path, &key, false).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_key(&path, &key, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
