//! The world of the relay's end-to-end tests (jumphost_ssh.rs, trust.rs): the real
//! `assist-jumphost`, stock OpenSSH as device (`ssh -R`), as engineer (`ssh` through a `-W`
//! proxy) and as the customer's sshd.
// Shared by two test binaries, each of which uses part of it.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use assist_e2e::{Jumphost, Proc, Sshd, keygen, policy, ssh_logging, ssh_options, wait_until};

pub const SHORT: Duration = Duration::from_secs(30);

/// The log level of every `ssh` here: `INFO` lets the refusal reasons the jump host sends
/// ("channel 0: open failed: …") reach stderr.
const LOG_LEVEL: &str = "INFO";

/// The harness's `ssh` at [`LOG_LEVEL`].
pub fn ssh(args: &[&str]) -> Command {
    ssh_logging(LOG_LEVEL, args)
}

/// A jump host, a customer sshd, two engineers (alice, bob) and the key root logs in with.
pub struct World {
    pub dir: tempfile::TempDir,
    pub jump: Jumphost,
    pub sshd: Sshd,
    pub target_key: PathBuf,
}

impl World {
    pub fn start() -> World {
        Self::start_with(r#"["127.0.0.1/32"]"#, "[]", "30d")
    }

    pub fn start_with(support_cidrs: &str, client_cidrs: &str, ttl: &str) -> World {
        Self::start_full(support_cidrs, client_cidrs, ttl, "", "")
    }

    /// As [`World::start_with`], with `jumphost_extra` after the contract keys of
    /// jumphost.toml and `policy_extra` at the end of the policy.
    pub fn start_full(
        support_cidrs: &str,
        client_cidrs: &str,
        ttl: &str,
        jumphost_extra: &str,
        policy_extra: &str,
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let alice = keygen(&dir.path().join("alice"));
        let bob = keygen(&dir.path().join("bob"));
        let sshd = Sshd::start(dir.path());
        let target_key = dir.path().join("target");
        let target_pub = keygen(&target_key);
        fs::write(&sshd.authorized_keys, format!("{target_pub}\n")).unwrap();
        let policy = policy(
            support_cidrs,
            client_cidrs,
            ttl,
            &[("alice", &alice), ("bob", &bob)],
        );
        let jump = Jumphost::start_configured(
            dir.path(),
            &format!("{policy}\n{policy_extra}"),
            "127.0.0.1:0",
            jumphost_extra,
        );
        World {
            dir,
            jump,
            sshd,
            target_key,
        }
    }

    /// The public key line `keygen` wrote for `name`.
    pub fn public(&self, name: &str) -> String {
        fs::read_to_string(self.path(&format!("{name}.pub")))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Replaces the jump host's policy file, as an admin's editor would, and returns when
    /// it was saved.
    pub fn edit_policy(&self, text: &str) -> std::time::Instant {
        let file = self.jump.policies_dir.join("test.toml");
        let tmp = self.jump.policies_dir.join(".test.toml.new");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &file).unwrap();
        std::time::Instant::now()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Registers a fresh device key for `serial` (expects 201) and returns its path.
    pub fn register(&self, serial: &str) -> PathBuf {
        let key = self.path(&format!("dev-{serial}"));
        let public = keygen(&key);
        let (status, body) = self.jump.register(serial, &public);
        assert_eq!(status, 201, "register {serial}: {body}");
        key
    }

    /// Stock `ssh -N -R 22:<sshd>` holding the tunnel for `serial`, once its route is up.
    pub fn device(&self, serial: &str, key: &Path) -> Proc {
        let before = self.routes_added(serial);
        let mut device = self.device_unchecked(serial, key);
        wait_until(SHORT, &format!("route of {serial}"), || {
            assert!(
                device.is_running(),
                "device {serial} exited: {}",
                device.stderr()
            );
            self.routes_added(serial) > before
        });
        device
    }

    pub fn device_unchecked(&self, serial: &str, key: &Path) -> Proc {
        let forward = format!("22:{}", self.sshd.addr);
        let login = format!("{serial}@127.0.0.1");
        let cmd = ssh(&[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ServerAliveInterval=5",
            "-R",
            &forward,
            "-p",
            &self.jump.ssh_port(),
            "-i",
            key.to_str().unwrap(),
            &login,
        ]);
        Proc::spawn(cmd, &format!("device {serial}"))
    }

    /// How often the jump host logged a route for `serial` so far.
    pub fn routes_added(&self, serial: &str) -> usize {
        self.jump
            .proc
            .stderr()
            .lines()
            .filter(|l| l.contains("route added") && l.contains(&format!("identity=\"{serial}\"")))
            .count()
    }

    /// `ssh root@SERIAL CMD` through the jump host as `engineer`, with `stdin` fed in.
    pub fn hop(&self, engineer: &str, serial: &str, cmd: &str, stdin: Option<&Path>) -> Output {
        self.hop_cmd(engineer, serial, cmd, stdin).output().unwrap()
    }

    pub fn hop_cmd(
        &self,
        engineer: &str,
        serial: &str,
        cmd: &str,
        stdin: Option<&Path>,
    ) -> Command {
        let proxy = format!(
            "ProxyCommand=ssh {} -i {} -p {} -W %h:%p {engineer}@127.0.0.1",
            ssh_options(LOG_LEVEL).join(" "),
            self.path(engineer).display(),
            self.jump.ssh_port()
        );
        let target = format!("root@{serial}");
        let mut c = ssh(&[
            "-o",
            &proxy,
            "-i",
            self.target_key.to_str().unwrap(),
            &target,
            cmd,
        ]);
        match stdin {
            Some(path) => c.stdin(fs::File::open(path).unwrap()),
            None => c.stdin(Stdio::null()),
        };
        c
    }

    /// A login straight to the jump host (no hop) with extra ssh options.
    pub fn direct(&self, user: &str, key: &Path, options: &[&str]) -> Output {
        self.direct_command(user, key, options, &[])
    }

    /// As [`Self::direct`], asking the jump host to run `command`.
    pub fn direct_command(
        &self,
        user: &str,
        key: &Path,
        options: &[&str],
        command: &[&str],
    ) -> Output {
        let login = format!("{user}@127.0.0.1");
        let port = self.jump.ssh_port();
        let mut all = vec!["-p", &port, "-i", key.to_str().unwrap()];
        all.extend_from_slice(options);
        all.push(&login);
        all.extend_from_slice(command);
        ssh(&all).stdin(Stdio::null()).output().unwrap()
    }

    pub fn jump_log(&self) -> String {
        self.jump.proc.stderr()
    }
}
