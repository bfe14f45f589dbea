//! A stock Dropbear (Debian's `dropbear-bin`) as the customer's SSH server, the way many
//! embedded devices run it: in the foreground on a free loopback port, with its own host key,
//! logging to stderr. It reads each account's `~/.ssh/authorized_keys`.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::process::{Proc, run_ok, start_on_free_port, text};

/// Where Debian puts it.
pub const DROPBEAR: &str = "/usr/sbin/dropbear";

pub struct Dropbear {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// The host's public key line (`ssh-ed25519 AAAA…`).
    pub host_key_pub: String,
}

impl Dropbear {
    pub fn start(dir: &Path) -> Dropbear {
        let dir = dir.join("dropbear");
        fs::create_dir_all(&dir).unwrap();
        let key = dir.join("host_ed25519");
        let out = run_ok(
            Command::new("dropbearkey")
                .args(["-t", "ed25519", "-f"])
                .arg(&key),
            "dropbearkey (scripts/test.sh installs dropbear-bin)",
        );
        let host_key_pub = text(&out.stdout)
            .lines()
            .find(|l| l.starts_with("ssh-ed25519 "))
            .expect("dropbearkey prints the public key")
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let pidfile = dir.join("pid");
        let (proc, addr) = start_on_free_port("dropbear", |port| {
            let mut cmd = Command::new(DROPBEAR);
            // Foreground, log to stderr, no password logins.
            cmd.args(["-F", "-E", "-s", "-r"])
                .arg(&key)
                .arg("-p")
                .arg(format!("127.0.0.1:{port}"))
                .arg("-P")
                .arg(&pidfile);
            Proc::spawn(cmd, "dropbear")
        });
        Dropbear {
            proc,
            addr,
            host_key_pub,
        }
    }

    pub fn log(&self) -> String {
        self.proc.stderr()
    }
}
