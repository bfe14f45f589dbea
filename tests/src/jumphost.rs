//! A real `assist-jumphost serve` with its own folders, the policies tests give it, and the
//! agent config that points at it.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::http::http;
use crate::openssh::Sshd;
use crate::process::{Proc, READY_TIMEOUT, bin, run_ok};

/// A policy for serials `SN-*`: engineers from `support_cidrs`, devices from `client_cidrs`
/// (TOML arrays), device keys kept for `ttl`, and each `(name, public key line)` of
/// `engineers`.
pub fn policy(
    support_cidrs: &str,
    client_cidrs: &str,
    ttl: &str,
    engineers: &[(&str, &str)],
) -> String {
    let mut p = format!(
        "[allowlist]\nsupport_cidrs = {support_cidrs}\nclient_cidrs = {client_cidrs}\n\n\
         [serials]\nallow = [\"SN-*\"]\n\n[keys]\nclient_key_ttl = \"{ttl}\"\nmax_assistance = \"8h\"\n"
    );
    for (name, key) in engineers {
        p.push_str(&format!(
            "\n[[support]]\nname = \"{name}\"\npublic_key = \"{key}\"\n"
        ));
    }
    p
}

/// A policy with engineer `alice` (public key line `alice`) allowed from 127.0.0.0/8,
/// serials `SN-*`, the default key lifetimes, and `extra` appended.
pub fn alice_policy(extra: &str, alice: &str) -> String {
    let base = policy(r#"["127.0.0.0/8"]"#, "[]", "30d", &[("alice", alice)]);
    format!("{base}\n{extra}")
}

/// A running `assist-jumphost serve` with its own folders.
pub struct Jumphost {
    pub proc: Proc,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub policies_dir: PathBuf,
    pub ssh_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// `http://ADDR`, or `https://ADDR` with `[api_tls]`, as the jump host printed it.
    pub api_url: String,
    pub host_key_fingerprint: String,
    /// The printed `sha256:…` of the API's TLS certificate, with `[api_tls]`.
    pub api_tls_fingerprint: Option<String>,
    /// Where `GET /metrics` is served, with `metrics_listen`.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the other nodes' peer links are accepted, with `[cluster] peer_listen`.
    pub peer_addr: Option<SocketAddr>,
    /// Lines appended to the four contract keys of jumphost.toml (kept across restarts).
    extra_config: String,
}

impl Jumphost {
    /// Starts a jump host on free loopback ports with `policy_toml` as its only policy file.
    pub fn start(dir: &Path, policy_toml: &str) -> Jumphost {
        Self::start_configured(dir, policy_toml, "127.0.0.1:0", "")
    }

    /// As [`Jumphost::start`], with the API on `api_listen` and `extra_config` (such as an
    /// `[api_tls]` table) after the four contract keys of jumphost.toml.
    pub fn start_configured(
        dir: &Path,
        policy_toml: &str,
        api_listen: &str,
        extra_config: &str,
    ) -> Jumphost {
        let dir = dir.join("jumphost");
        let data_dir = dir.join("data");
        let policies_dir = dir.join("policies");
        fs::create_dir_all(&policies_dir).expect("create policies dir");
        fs::write(policies_dir.join("test.toml"), policy_toml).expect("write policy");
        Self::start_with(
            &dir,
            &data_dir,
            &policies_dir,
            "127.0.0.1:0",
            api_listen,
            extra_config,
        )
    }

    fn start_with(
        dir: &Path,
        data_dir: &Path,
        policies_dir: &Path,
        ssh_listen: &str,
        api_listen: &str,
        extra_config: &str,
    ) -> Jumphost {
        let config = dir.join("jumphost.toml");
        fs::write(
            &config,
            format!(
                "ssh_listen = \"{ssh_listen}\"\napi_listen = \"{api_listen}\"\n\
                 data_dir = \"{}\"\npolicies_dir = \"{}\"\n{extra_config}",
                data_dir.display(),
                policies_dir.display()
            ),
        )
        .expect("write jumphost.toml");
        let mut cmd = Command::new(bin("assist-jumphost"));
        cmd.arg("serve").arg("--config").arg(&config);
        cmd.env("RUST_LOG", "info,assist_jumphost=debug");
        let mut proc = Proc::spawn(cmd, "jumphost");
        let host_key_fingerprint = proc.wait_line("host key fingerprint:", READY_TIMEOUT);
        let api_tls_fingerprint = extra_config
            .contains("[api_tls]")
            .then(|| proc.wait_line("api tls certificate fingerprint:", READY_TIMEOUT));
        let peer_addr = extra_config.contains("peer_listen").then(|| {
            let line = proc.wait_line("peer listening on", READY_TIMEOUT);
            parse_addr(line.split_whitespace().next().unwrap_or_default())
        });
        let ssh_addr = parse_addr(&proc.wait_line("ssh listening on", READY_TIMEOUT));
        let api_url = proc.wait_line("api listening on", READY_TIMEOUT);
        let api_addr = parse_addr(
            api_url
                .trim_start_matches("http://")
                .trim_start_matches("https://"),
        );
        let metrics_addr = extra_config.contains("metrics_listen").then(|| {
            let url = proc.wait_line("metrics listening on http://", READY_TIMEOUT);
            parse_addr(url.trim_end_matches("/metrics"))
        });
        Jumphost {
            proc,
            dir: dir.to_path_buf(),
            config,
            data_dir: data_dir.to_path_buf(),
            policies_dir: policies_dir.to_path_buf(),
            ssh_addr,
            api_addr,
            api_url,
            host_key_fingerprint,
            api_tls_fingerprint,
            metrics_addr,
            peer_addr,
            extra_config: extra_config.to_string(),
        }
    }

    /// Kills the jump host with SIGKILL and starts it again on the same ports and folders.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let (ssh, api) = (self.ssh_addr.to_string(), self.api_addr.to_string());
        // The old listeners died with the process; rebinding the same ports may briefly fail
        // while the kernel tears them down, so retry with a deadline.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let free = TcpListener::bind(&ssh).is_ok() && TcpListener::bind(&api).is_ok();
            if free || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let extra = std::mem::take(&mut self.extra_config);
        *self = Self::start_with(
            &self.dir,
            &self.data_dir,
            &self.policies_dir,
            &ssh,
            &api,
            &extra,
        );
    }

    /// `POST /v1/register` with `{serial, public_key}`.
    pub fn register(&self, serial: &str, public_key: &str) -> (u16, String) {
        let body = serde_json::json!({ "serial": serial, "public_key": public_key }).to_string();
        http(
            self.api_addr,
            "POST",
            "/v1/register",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// `assist-jumphost status --json`: devices online, hops in progress, penalized sources.
    pub fn status(&self) -> serde_json::Value {
        let out = run_ok(
            Command::new(bin("assist-jumphost"))
                .args(["status", "--json", "--config"])
                .arg(&self.config),
            "assist-jumphost status",
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// One query on the jump host's database with the `sqlite3` CLI; rows as `a|b` lines.
    pub fn sql(&self, query: &str) -> String {
        let out = run_ok(
            Command::new("sqlite3")
                .arg(self.data_dir.join("assist.db"))
                .arg(query),
            &format!("sqlite3 {query}"),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The ssh port as a string, for command lines.
    pub fn ssh_port(&self) -> String {
        self.ssh_addr.port().to_string()
    }
}

fn parse_addr(s: &str) -> SocketAddr {
    s.trim()
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

/// Writes `folder/client.toml` for `serial` with only the contract keys (`data_dir` relative,
/// the agent's web on a free port, `sshd` as the customer machine) and returns its path.
pub fn write_client_config(folder: &Path, serial: &str, jump: &Jumphost, sshd: &Sshd) -> PathBuf {
    fs::create_dir_all(folder).expect("create agent folder");
    let config = folder.join("client.toml");
    fs::write(
        &config,
        format!(
            "serial = \"{serial}\"\njumphost = \"{}\"\napi_url = \"{}\"\n\
             data_dir = \"data\"\nweb_listen = \"127.0.0.1:0\"\ntarget_user = \"root\"\n\
             authorized_keys = \"{}\"\n\n[services]\nssh = \"{}\"\n",
            jump.ssh_addr,
            jump.api_url,
            sshd.authorized_keys.display(),
            sshd.addr
        ),
    )
    .expect("write client.toml");
    config
}
