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
    let ssh_config = beside(&args.out, ".ssh_config");
    if !args.force
        && let Some(existing) = [&args.out, &pins, &ssh_config]
            .into_iter()
            .find(|p| p.exists())
    {
        return Err(UsageError(format!(
            "{} already exists; pass --force to overwrite it",
            existing.display()
        ))
        .into());
    }
    // The key is only worth writing for a device that proves it knows the code, and its
    // proven host keys are what stock ssh must pin.
    let addrs = settings.jump_addrs()?;
    let derivation = crate::prove::start_derivation(&args.serial, &code);
    let (jump, addr) = crate::hop::connect_first(settings, &addrs, progress).await?;
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
    let stock = StockSsh {
        serial: &proven.serial,
        key: &absolute(&args.out)?,
        pins: &absolute(&pins)?,
        jump: addr,
        engineer: settings.engineer()?,
        engineer_identity: match &settings.identity {
            crate::config::IdentitySource::File(path) => Some(absolute(path)?),
            crate::config::IdentitySource::Default(_) => None,
        },
        known_hosts: &absolute(&settings.known_hosts)?,
        support_cli: std::env::current_exe().ok(),
    };
    private_file::write_private(&ssh_config, stock.config().as_bytes(), existing(args.force))
        .with_context(|| format!("cannot write {}", ssh_config.display()))?;
    let config = quote(&absolute(&ssh_config)?.display().to_string());
    progress.note(&format!(
        "wrote {}, {} (the host keys {} proved with the code) and {}. With stock OpenSSH:\n  \
         ssh -F {config} {serial}\n  scp -F {config} FILE {serial}:/tmp/\nor, without the \
         config file:\n  {}",
        args.out.display(),
        pins.display(),
        proven.serial,
        ssh_config.display(),
        stock.command(),
        serial = proven.serial,
    ));
    Ok(0)
}

/// `FILE.known_hosts` beside the key file `FILE`.
pub fn known_hosts_beside(key: &Path) -> PathBuf {
    beside(key, ".known_hosts")
}

/// `FILE` + `suffix`, beside the key file `FILE`.
fn beside(key: &Path, suffix: &str) -> PathBuf {
    let mut name = key.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// A path as stock ssh must get it, wherever it is run from.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// What stock OpenSSH needs to reach the device as support-cli does: the jump host with
/// the engineer's own key and the host keys support-cli pinned, then the device with the
/// code's key and the host keys it proved. Stock `-J` passes neither `-i` nor `-o` to the
/// jump hop, so the jump login is spelled out (a `Host` entry, or a ProxyCommand).
struct StockSsh<'a> {
    serial: &'a str,
    key: &'a Path,
    pins: &'a Path,
    jump: &'a crate::config::JumpAddr,
    engineer: &'a str,
    engineer_identity: Option<PathBuf>,
    known_hosts: &'a Path,
    /// For a WebSocket jump host, which stock ssh cannot speak: `support-cli stdio`.
    support_cli: Option<PathBuf>,
}

impl StockSsh<'_> {
    /// The name of the jump host's `Host` entry.
    fn jump_alias(&self) -> String {
        format!("assist-jump-{}", self.serial)
    }

    /// `FILE.ssh_config`: `ssh -F FILE.ssh_config SERIAL` and `scp -F …` work as they are.
    fn config(&self) -> String {
        let mut out = format!(
            "# Written by support-cli key for {serial}; the key works while the customer keeps\n\
             # assistance on. Use: ssh -F THIS_FILE {serial}   scp -F THIS_FILE FILE {serial}:/tmp/\n\
             Host {serial}\n\
             \x20 HostName {serial}\n\
             \x20 User root\n\
             \x20 IdentityFile {key}\n\
             \x20 IdentitiesOnly yes\n\
             \x20 UserKnownHostsFile {pins}\n\
             \x20 StrictHostKeyChecking yes\n",
            serial = self.serial,
            key = config_path(self.key),
            pins = config_path(self.pins),
        );
        match (&self.jump.ws, &self.support_cli) {
            (Some(url), Some(exe)) => out.push_str(&format!(
                "  ProxyCommand {}\n",
                self.stdio_command(&url.url(), exe, "%h")
            )),
            _ => {
                out.push_str(&format!(
                    "  ProxyJump {alias}\n\
                     Host {alias}\n\
                     \x20 HostName {host}\n\
                     \x20 Port {port}\n\
                     \x20 User {engineer}\n\
                     \x20 UserKnownHostsFile {known}\n\
                     \x20 StrictHostKeyChecking yes\n",
                    alias = self.jump_alias(),
                    host = self.jump.host,
                    port = self.jump.port,
                    engineer = self.engineer,
                    known = config_path(self.known_hosts),
                ));
                if let Some(id) = &self.engineer_identity {
                    out.push_str(&format!(
                        "  IdentityFile {}\n  IdentitiesOnly yes\n",
                        config_path(id)
                    ));
                }
            }
        }
        out
    }

    /// One command line that works as printed, without the config file.
    fn command(&self) -> String {
        let proxy = match (&self.jump.ws, &self.support_cli) {
            (Some(url), Some(exe)) => self.stdio_command(&url.url(), exe, "%h"),
            _ => {
                let identity = self
                    .engineer_identity
                    .as_ref()
                    .map(|id| {
                        format!(
                            "-i {} -o IdentitiesOnly=yes ",
                            quote(&id.display().to_string())
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "ssh {identity}-o UserKnownHostsFile={} -p {} -W %h:%p {}@{}",
                    quote(&self.known_hosts.display().to_string()),
                    self.jump.port,
                    self.engineer,
                    self.jump.host
                )
            }
        };
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o ProxyCommand={} root@{}",
            quote(&self.key.display().to_string()),
            quote(&self.pins.display().to_string()),
            quote(&proxy),
            self.serial
        )
    }

    /// `support-cli … stdio %h` with this engineer's settings, for a WebSocket jump host.
    fn stdio_command(&self, url: &str, exe: &Path, host: &str) -> String {
        let identity = self
            .engineer_identity
            .as_ref()
            .map(|id| format!(" --identity {}", quote(&id.display().to_string())))
            .unwrap_or_default();
        format!(
            "{} --quiet --jumphost {url} --engineer {}{identity} --known-hosts {} stdio {host}",
            quote(&exe.display().to_string()),
            self.engineer,
            quote(&self.known_hosts.display().to_string()),
        )
    }
}

/// A path in ssh_config: quoted when it holds a space.
fn config_path(path: &Path) -> String {
    let s = path.display().to_string();
    if s.contains(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s
    }
}

/// A word for a POSIX shell: as it is when it is plain, else in single quotes.
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
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

    fn stock<'a>(jump: &'a crate::config::JumpAddr) -> StockSsh<'a> {
        StockSsh {
            serial: "SN-1",
            key: Path::new("/keys/sn 1.key"),
            pins: Path::new("/keys/sn 1.key.known_hosts"),
            jump,
            engineer: "alice",
            engineer_identity: Some("/home/alice/.ssh/id_work".into()),
            known_hosts: Path::new("/home/alice/.ssh/known_hosts"),
            support_cli: Some("/usr/bin/support-cli".into()),
        }
    }

    #[test]
    fn stock_ssh_gets_the_jump_login_spelled_out() {
        let jump = crate::config::JumpAddr::parse("jump.example.com:2222").unwrap();
        let config = stock(&jump).config();
        for line in [
            "Host SN-1\n",
            "  IdentityFile \"/keys/sn 1.key\"\n",
            "  UserKnownHostsFile \"/keys/sn 1.key.known_hosts\"\n",
            "  ProxyJump assist-jump-SN-1\n",
            "Host assist-jump-SN-1\n",
            "  HostName jump.example.com\n  Port 2222\n  User alice\n",
            "  IdentityFile /home/alice/.ssh/id_work\n  IdentitiesOnly yes\n",
        ] {
            assert!(config.contains(line), "no {line:?} in {config}");
        }
        assert_eq!(
            stock(&jump).command(),
            "ssh -i '/keys/sn 1.key' -o IdentitiesOnly=yes -o \
             UserKnownHostsFile='/keys/sn 1.key.known_hosts' -o ProxyCommand='ssh -i \
             /home/alice/.ssh/id_work -o IdentitiesOnly=yes -o \
             UserKnownHostsFile=/home/alice/.ssh/known_hosts -p 2222 -W %h:%p \
             alice@jump.example.com' root@SN-1"
        );
        // Over WebSocket stock ssh cannot reach the jump host: support-cli stdio can.
        let ws = crate::config::JumpAddr::parse("wss://jump.example.com/v1/ssh").unwrap();
        let config = stock(&ws).config();
        assert!(
            config.contains(
                "  ProxyCommand /usr/bin/support-cli --quiet --jumphost \
                 wss://jump.example.com:443/v1/ssh --engineer alice --identity \
                 /home/alice/.ssh/id_work --known-hosts /home/alice/.ssh/known_hosts stdio %h\n"
            ),
            "{config}"
        );
        assert!(!config.contains("ProxyJump"), "{config}");
    }

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
