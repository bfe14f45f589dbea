//! The world of the agent's end-to-end tests (agent.rs, agent_network.rs): the real
//! `assist-client` and `assist-jumphost`, a stock sshd as the customer's machine and stock
//! OpenSSH or support-cli as the engineer.
// Shared by two test binaries, each of which uses part of it.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use assist_e2e::{
    Jumphost, Proc, READY_TIMEOUT, Sshd, bin, keygen, ssh, ssh_options, text, wait_until,
    write_client_config,
};

pub const SHORT: Duration = Duration::from_secs(30);
pub const SERIAL: &str = "SN-0001";
pub const MARKER: &str = "assist-client:SN-0001";

/// A jump host, a customer sshd whose authorized_keys already holds the admin's lines, and
/// an engineer key (alice).
pub struct World {
    pub dir: tempfile::TempDir,
    pub jump: Jumphost,
    pub sshd: Sshd,
    /// authorized_keys as the admin left it: the agent must never change these bytes.
    pub original_keys: Vec<u8>,
}

impl World {
    pub fn start() -> World {
        Self::start_with("")
    }

    /// As [`World::start`], with `extra_policy` appended to the policy file.
    pub fn start_with(extra_policy: &str) -> World {
        Self::start_configured(extra_policy, "", "[]")
    }

    /// As [`World::start_with`], with `jumphost_extra` after jumphost.toml's contract keys
    /// and devices admitted only from `client_cidrs`.
    pub fn start_configured(extra_policy: &str, jumphost_extra: &str, client_cidrs: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let alice = keygen(&dir.path().join("alice"));
        let sshd = Sshd::start(dir.path());
        let admin = keygen(&dir.path().join("admin"));
        let original_keys =
            format!("# admin keys\r\n{admin}\n\ncommand=\"true\" {admin} other-tool:SN-0001\n")
                .into_bytes();
        fs::write(&sshd.authorized_keys, &original_keys).unwrap();
        let policy = format!(
            "[allowlist]\nsupport_cidrs = [\"127.0.0.0/8\"]\nclient_cidrs = {client_cidrs}\n\n\
             [serials]\nallow = [\"SN-*\"]\n\n\
             [[support]]\nname = \"alice\"\npublic_key = \"{alice}\"\n\n{extra_policy}"
        );
        let jump = Jumphost::start_configured(dir.path(), &policy, "127.0.0.1:0", jumphost_extra);
        World {
            dir,
            jump,
            sshd,
            original_keys,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `<name>/client.toml` with only the contract keys (data_dir relative).
    pub fn client_config(&self, name: &str) -> PathBuf {
        write_client_config(&self.path(name), SERIAL, &self.jump, &self.sshd)
    }

    pub fn keys_file(&self) -> String {
        fs::read_to_string(&self.sshd.authorized_keys).unwrap()
    }

    /// Stock `ssh root@SERIAL CMD` through the jump host as alice, with `key`.
    pub fn hop_cmd(&self, key: &Path, cmd: &str) -> Command {
        let proxy = format!(
            "ProxyCommand=ssh {} -i {} -p {} -W %h:%p alice@127.0.0.1",
            ssh_options("ERROR").join(" "),
            self.path("alice").display(),
            self.jump.ssh_port()
        );
        let target = format!("root@{SERIAL}");
        let mut c = ssh(&[
            "-o",
            &proxy,
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            key.to_str().unwrap(),
            &target,
            cmd,
        ]);
        c.stdin(Stdio::null());
        c
    }

    pub fn hop(&self, key: &Path, cmd: &str) -> Output {
        self.hop_cmd(key, cmd).output().unwrap()
    }
}

/// `assist-client run`, ready once its local API is bound.
pub fn start_agent(config: &Path, label: &str) -> Proc {
    let mut cmd = Command::new(bin("assist-client"));
    cmd.arg("run").arg("--config").arg(config);
    cmd.env("RUST_LOG", "info,assist_client=debug");
    let mut agent = Proc::spawn(cmd, label);
    let fp = agent.wait_line("device key fingerprint:", READY_TIMEOUT);
    assert!(fp.trim().starts_with("SHA256:"), "{fp}");
    agent.wait_line("web listening on http://", READY_TIMEOUT);
    agent
}

/// `assist-client ARGS… --config CONFIG`.
pub fn cli(config: &Path, args: &[&str]) -> Output {
    assist_e2e::assist_client(config, args)
}

/// `assist-client enable`; returns (code, until).
pub fn enable(config: &Path, minutes: &str) -> (String, String) {
    let out = cli(config, &["enable", "--minutes", minutes]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "enable failed: {}{}",
        stdout,
        text(&out.stderr)
    );
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} line in {stdout:?}"))
            .trim()
            .to_owned()
    };
    (field("code:"), field("until:"))
}

pub fn status(config: &Path) -> serde_json::Value {
    let out = cli(config, &["status", "--json"]);
    assert!(out.status.success(), "status failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The hop failed at the jump host (no route), not at the customer's sshd. Stock ssh logs the
/// jump host's reason only at INFO, so the proxy's fatal line is what is visible here.
pub fn refused_by_jump_host(out: &Output) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "hop should fail");
    assert!(
        err.contains("stdio forwarding failed") || err.contains("is not connected"),
        "{err}"
    );
}

pub fn wait_tunnel(config: &Path, state: &str) {
    wait_until(SHORT, &format!("tunnel {state}"), || {
        status(config)["tunnel"]["state"] == state
    });
}

/// Sets `line` among the top-level keys of a client.toml (before its `[services]` table).
pub fn set_client_key(config: &Path, line: &str) {
    let text = fs::read_to_string(config).unwrap();
    let (top, services) = text.split_once("\n[services]").unwrap();
    let kept: Vec<&str> = top
        .lines()
        .filter(|l| !l.starts_with(line.split('=').next().unwrap()))
        .collect();
    fs::write(
        config,
        format!("{}\n{line}\n\n[services]{services}", kept.join("\n")),
    )
    .unwrap();
}

/// Removes `key` from the top-level keys of client.toml.
pub fn remove_client_key(config: &Path, key: &str) {
    let text = fs::read_to_string(config).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| l.split('=').next().map(str::trim) != Some(key))
        .collect();
    fs::write(config, kept.join("\n") + "\n").unwrap();
}

/// `support-cli` as engineer alice of the world, with its own known_hosts.
pub fn support_cli(w: &World, jumphost: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("support-cli"));
    cmd.args(["--jumphost", jumphost, "--engineer", "alice", "--identity"])
        .arg(w.path("alice"))
        .arg("--known-hosts")
        .arg(w.path("engineer_known_hosts"))
        .args(args)
        .stdin(Stdio::null());
    cmd
}
