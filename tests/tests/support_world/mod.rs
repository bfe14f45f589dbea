//! The world of the `support-cli` end-to-end tests (support.rs, support_stock.rs): the
//! real jump host, device tunnels held by stock `ssh -R`, a stock sshd as the customer's
//! machine, and the CLI as the engineer.
// Shared by two test binaries, each of which uses part of it.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use assist_e2e::{Jumphost, Proc, Sshd, attest, bin, keygen, ssh};
use assist_proto::limits::ATTESTATION_PORT;

pub const SHORT: Duration = Duration::from_secs(30);

/// A jump host with engineers `eng0..engN`, a customer sshd, and device tunnels to it.
pub struct World {
    pub dir: tempfile::TempDir,
    pub jump: Jumphost,
    pub sshd: Sshd,
    pub devices: Vec<Proc>,
}

impl World {
    pub fn start(engineers: usize) -> World {
        Self::start_with(engineers, "127.0.0.1/32")
    }

    /// Engineers are allowed from `support_cidr` only.
    pub fn start_with(engineers: usize, support_cidr: &str) -> World {
        Self::start_full(engineers, support_cidr, Sshd::start)
    }

    /// With a customer's sshd that lets any key in ([`Sshd::honeypot`]).
    pub fn honeypot(engineers: usize) -> World {
        Self::start_full(engineers, "127.0.0.1/32", Sshd::honeypot)
    }

    fn start_full(
        engineers: usize,
        support_cidr: &str,
        sshd: impl FnOnce(&std::path::Path) -> Sshd,
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut policy = format!(
            "[allowlist]\nsupport_cidrs = [\"{support_cidr}\"]\nclient_cidrs = []\n\n\
             [serials]\nallow = [\"SN-*\"]\n\n[keys]\nclient_key_ttl = \"30d\"\n\
             max_assistance = \"8h\"\n"
        );
        for i in 0..engineers {
            let public = keygen(&dir.path().join(format!("eng{i}")));
            policy.push_str(&format!(
                "\n[[support]]\nname = \"eng{i}\"\npublic_key = \"{public}\"\n"
            ));
        }
        let sshd = sshd(dir.path());
        let jump = Jumphost::start(dir.path(), &policy);
        World {
            dir,
            jump,
            sshd,
            devices: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Registers `serial`, holds its tunnel with stock ssh, and authorizes a fresh code on
    /// the customer's sshd and serves its proof as the agent would; returns the code.
    pub fn device(&mut self, serial: &str) -> String {
        let code = assist_proto::OneTimeCode::generate().to_string();
        let proof = attest::document(serial, &code, &[self.sshd.host_key_pub.as_str()]);
        let proof = format!("{ATTESTATION_PORT}:{}", attest::serve(proof));
        self.device_serving(serial, &code, &["-R", &proof]);
        code
    }

    /// A device that offers no proof of the code (stock ssh in front of the customer's
    /// sshd, as a squatter or an old agent would); returns the code authorized there.
    pub fn device_without_proof(&mut self, serial: &str) -> String {
        let code = assist_proto::OneTimeCode::generate().to_string();
        self.device_serving(serial, &code, &[]);
        code
    }

    /// Holds `serial`'s tunnel with `code`'s key authorized ([`Self::tunnel`]).
    pub fn device_serving(&mut self, serial: &str, code: &str, extra: &[&str]) {
        self.tunnel(serial, extra);
        self.authorize(serial, code);
    }

    /// A device that proves `code` but whose sshd was never given its key (a server that
    /// does not read the agent's key line).
    pub fn device_refusing_the_key(&mut self, serial: &str) -> String {
        let code = assist_proto::OneTimeCode::generate().to_string();
        let proof = attest::document(serial, &code, &[self.sshd.host_key_pub.as_str()]);
        let proof = format!("{ATTESTATION_PORT}:{}", attest::serve(proof));
        self.tunnel(serial, &["-R", &proof]);
        code
    }

    /// Puts `code`'s key in the customer's sshd, as the agent's key line would.
    fn authorize(&self, serial: &str, code: &str) {
        let public = derived_public(serial, code);
        let mut keys = fs::read_to_string(&self.sshd.authorized_keys).unwrap();
        keys.push_str(&format!("{public}\n"));
        fs::write(&self.sshd.authorized_keys, keys).unwrap();
    }

    /// Registers `serial` and holds its tunnel (port 22 to the sshd, plus the `extra` ssh
    /// arguments, each `-R` of which is one more route).
    fn tunnel(&mut self, serial: &str, extra: &[&str]) {
        let key = self.path(&format!("dev-{serial}"));
        let (status, body) = self.jump.register(serial, &keygen(&key));
        assert_eq!(status, 201, "register {serial}: {body}");
        let routes = 1 + extra.iter().filter(|a| **a == "-R").count();
        let before = self.routes_added(serial);
        let forward = format!("22:{}", self.sshd.addr);
        let login = format!("{serial}@127.0.0.1");
        let port = self.jump.ssh_port();
        let mut args = vec!["-N", "-o", "ExitOnForwardFailure=yes"];
        args.extend_from_slice(extra);
        let cmd = ssh(&[
            &args[..],
            &[
                "-R",
                &forward,
                "-p",
                &port,
                "-i",
                key.to_str().unwrap(),
                &login,
            ],
        ]
        .concat());
        let mut device = Proc::spawn(cmd, &format!("device {serial}"));
        let deadline = Instant::now() + SHORT;
        while self.routes_added(serial) < before + routes {
            assert!(
                device.is_running(),
                "device {serial} exited: {}",
                device.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "no route for {serial}; device: {}\njump host: {}",
                device.stderr(),
                self.jump.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.devices.push(device);
    }

    pub fn routes_added(&self, serial: &str) -> usize {
        // The span field may be logged quoted or not.
        let plain = format!("identity={serial} ");
        let quoted = format!("identity=\"{serial}\"");
        let log = self.jump.proc.stderr();
        log.lines()
            .filter(|l| l.contains("route added") && (l.contains(&plain) || l.contains(&quoted)))
            .count()
    }

    /// `support-cli` as engineer `eng{i}` with everything pinned to this world.
    pub fn cli(&self, engineer: usize, args: &[&str]) -> Command {
        let mut c = Command::new(bin("support-cli"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            // Through the environment, so a test can override them with flags.
            .env("ASSIST_JUMPHOST", self.jump.ssh_addr.to_string())
            .env("ASSIST_IDENTITY", self.path(&format!("eng{engineer}")))
            .arg("--engineer")
            .arg(format!("eng{engineer}"))
            .arg("--known-hosts")
            .arg(self.known_hosts(engineer))
            .args(args);
        c
    }

    pub fn known_hosts(&self, engineer: usize) -> PathBuf {
        self.path(&format!("home-eng{engineer}/.ssh/known_hosts"))
    }

    /// `support-cli connect SERIAL --code CODE -- CMD…` with `stdin` fed in.
    pub fn connect(
        &self,
        engineer: usize,
        serial: &str,
        code: &str,
        cmd: &[&str],
        stdin: Stdio,
    ) -> Output {
        let mut args = vec!["connect", serial, "--code", code, "--"];
        args.extend_from_slice(cmd);
        self.cli(engineer, &args).stdin(stdin).output().unwrap()
    }
}

pub fn derived_public(serial: &str, code: &str) -> String {
    let code = assist_proto::OneTimeCode::parse(code).unwrap();
    let key = assist_proto::derive_key(serial, &code).unwrap();
    key.public_key().to_openssh().unwrap()
}
