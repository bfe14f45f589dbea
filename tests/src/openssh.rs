//! Stock OpenSSH in the tests: `ssh-keygen`, the `ssh` client with options that never ask, a
//! private `sshd` as the customer's machine, `ProxyJump` configs as an engineer writes them,
//! and key files derived from a code for it.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use russh::keys::ssh_key::LineEnding;

use crate::process::run_ok;

/// Creates an unencrypted ed25519 key at `path` with `ssh-keygen`; returns the public key line.
pub fn keygen(path: &Path) -> String {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
            .arg(path),
        "ssh-keygen",
    );
    fs::read_to_string(path.with_extension("pub"))
        .expect("read public key")
        .trim()
        .to_string()
}

/// Stock `ssh` with options that keep it from asking questions or reading ~/.ssh.
pub fn ssh(args: &[&str]) -> Command {
    ssh_logging("ERROR", args)
}

/// As [`ssh`], logging at `level`: `INFO` lets the reasons a server gives for a refusal
/// ("channel 0: open failed: …") reach stderr.
pub fn ssh_logging(level: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(ssh_options(level));
    cmd.args(args);
    cmd
}

/// The options of [`ssh_logging`], for an ssh command line written as text (a
/// `ProxyCommand`). ssh keeps the first value it is given for an option, so these win over
/// later ones.
pub fn ssh_options(level: &str) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        &format!("LogLevel={level}"),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=20",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A stock OpenSSH `sshd` standing in for the customer's machine: the harness accepts on a free
/// loopback port and hands each connection to `sshd -i`, so no port is ever guessed.
pub struct Sshd {
    pub addr: SocketAddr,
    /// The file sshd reads keys from (`AuthorizedKeysFile`), for user root.
    pub authorized_keys: PathBuf,
    /// The host's public key line.
    pub host_key_pub: String,
    pub config: PathBuf,
    pub dir: PathBuf,
}

/// Where Debian puts sshd.
pub const SSHD: &str = "/usr/sbin/sshd";

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        Self::start_with(dir, "")
    }

    /// A stock sshd that lets any key in as any user (`AuthorizedKeysCommand` echoing the
    /// offered key): the honeypot a squatter or a hostile jump host would put in front of an
    /// engineer.
    pub fn honeypot(dir: &Path) -> Sshd {
        Self::start_with(
            dir,
            "AuthorizedKeysCommand /bin/echo %t %k\nAuthorizedKeysCommandUser nobody\n",
        )
    }

    /// With `extra` lines appended to the sshd_config.
    pub fn start_with(dir: &Path, extra: &str) -> Sshd {
        Self::start_reading(dir, "", extra)
    }

    /// With `AuthorizedKeysFile` set to `keys_file` (as sshd_config takes it, e.g.
    /// `.ssh/authorized_keys` for each account's own) instead of the harness's file for root
    /// (empty: that one).
    pub fn start_reading(dir: &Path, keys_file: &str, extra: &str) -> Sshd {
        let dir = dir.join("sshd");
        fs::create_dir_all(&dir).expect("create sshd dir");
        // sshd refuses to start without its privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let host_key = dir.join("host_ed25519");
        let host_key_pub = keygen(&host_key);
        let authorized_keys = dir.join("authorized_keys");
        fs::write(&authorized_keys, "").expect("create authorized_keys");
        fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o600))
            .expect("chmod authorized_keys");
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "HostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile none\nLogLevel VERBOSE\nAllowTcpForwarding yes\n\
                 PrintMotd no\nPrintLastLog no\nAcceptEnv TERM LANG\n{extra}",
                host_key.display(),
                if keys_file.is_empty() {
                    authorized_keys.display().to_string()
                } else {
                    keys_file.to_string()
                }
            ),
        )
        .expect("write sshd_config");
        run_ok(
            Command::new(SSHD).arg("-t").arg("-f").arg(&config),
            "sshd -t",
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sshd listener");
        let addr = listener.local_addr().expect("local addr");
        let log = dir.join("sshd.log");
        let cfg = config.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let Ok(out) = conn.try_clone() else { continue };
                let err = fs::OpenOptions::new().create(true).append(true).open(&log);
                let mut cmd = Command::new(SSHD);
                cmd.arg("-i").arg("-e").arg("-f").arg(&cfg);
                cmd.stdin(Stdio::from(OwnedFd::from(conn)));
                cmd.stdout(Stdio::from(OwnedFd::from(out)));
                if let Ok(err) = err {
                    cmd.stderr(err);
                }
                if let Ok(mut child) = cmd.spawn() {
                    std::thread::spawn(move || child.wait());
                }
            }
        });
        Sshd {
            addr,
            authorized_keys,
            host_key_pub,
            config,
            dir,
        }
    }

    /// What sshd has logged (all connections).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

/// Stock `ssh HOST` through the jump host with `ProxyJump`, as an engineer sets it up for the
/// key `support-cli key` exported: the jump login as `engineer` with `engineer_key`, then
/// `user@host` with `key`, the device's host key pinned strictly from `known_hosts` (or not
/// checked at all with `None`, for a honeypot the test wants to walk into).
pub struct ProxyJump<'a> {
    pub jump_port: &'a str,
    pub engineer: &'a str,
    pub engineer_key: &'a Path,
    pub host: &'a str,
    pub user: &'a str,
    pub key: &'a Path,
    pub known_hosts: Option<&'a Path>,
}

impl ProxyJump<'_> {
    /// Writes the ssh_config to `path` and runs `ssh -F path HOST command`.
    pub fn run(&self, path: &Path, command: &str) -> std::process::Output {
        let device_pins = match self.known_hosts {
            Some(file) => format!(
                "  StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n",
                file.display()
            ),
            None => "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n".to_owned(),
        };
        fs::write(
            path,
            format!(
                "Host jump\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n\
                 \x20 StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n\
                 Host {}\n  User {}\n  IdentityFile {}\n  ProxyJump jump\n{device_pins}\
                 Host *\n  BatchMode yes\n  IdentitiesOnly yes\n  LogLevel ERROR\n",
                self.jump_port,
                self.engineer,
                self.engineer_key.display(),
                self.host,
                self.user,
                self.key.display(),
            ),
        )
        .expect("write ssh_config");
        Command::new("ssh")
            .arg("-F")
            .arg(path)
            .args([self.host, command])
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }
}

/// Writes an OpenSSH private key file (0600) for the key derived from `(serial, code)`,
/// returning its public line.
pub fn write_derived_key(path: &Path, serial: &str, code: &str) -> String {
    let code = assist_proto::OneTimeCode::parse(code).expect("valid code");
    let key = assist_proto::derive_key(serial, &code).expect("derive");
    let pem = key.to_openssh(LineEnding::LF).expect("encode key");
    fs::write(path, pem.as_bytes()).expect("write key");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod key");
    key.public_key().to_openssh().expect("public key")
}
