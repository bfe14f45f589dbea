//! Harness for the end-to-end tests: builds and starts the real binaries and stock OpenSSH on
//! loopback, reads their ready lines, and cleans up after them.
//!
//! Nothing here sleeps to wait for readiness: a program is ready when it says so on stdout,
//! anything else is polled with a deadline.

pub mod account;
pub mod attest;
pub mod dropbear;
pub mod haproxy;
pub mod nginx;
pub mod proxy;
pub mod socks;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use russh::keys::ssh_key::LineEnding;

/// How long a program gets to print a ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Which package builds which binary.
fn package_of(bin: &str) -> &'static str {
    match bin {
        "assist-jumphost" => "assist-jumphost",
        "assist-client" => "assist-client",
        "support-cli" => "support-cli",
        other => panic!("unknown binary {other}"),
    }
}

/// The workspace's target/debug folder, found from this test executable's path
/// (target/debug/deps/<test>).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Builds `name` once per test process and returns its path, so a test never runs a stale
/// binary even when only `cargo test -p assist-e2e` was asked for.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = assist_proto::lock::mutex(built);
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    // cargo sets these for the test process. Passed on, they differ from what the outer
    // `cargo test` saw, and ring's build script watches them (rerun-if-env-changed): ring,
    // russh and everything above would rebuild on every test run, twice.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| {
            k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_EXE_")
                || matches!(
                    k,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                )
        }) {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .args([
            "build",
            "--quiet",
            "-p",
            package_of(name),
            "--bin",
            name,
            "--manifest-path",
        ])
        .arg(&manifest)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of {name} failed");
    let path = target_dir().join(name);
    assert!(path.exists(), "{} missing after build", path.display());
    built.insert(name.to_string(), path.clone());
    path
}

/// Polls `check` until it is true or `timeout` passes; panics naming `what` on timeout.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if check() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A child process whose stdout is read line by line and whose stderr goes to a log file.
pub struct Proc {
    pub label: String,
    child: Child,
    lines: Receiver<String>,
    stderr_path: PathBuf,
    _stderr_dir: tempfile::TempDir,
}

impl Proc {
    /// Starts `cmd`; stdout lines are echoed to the test's stderr with `label`.
    pub fn spawn(mut cmd: Command, label: &str) -> Proc {
        let stderr_dir = tempfile::tempdir().expect("tempdir");
        let stderr_path = stderr_dir.path().join("stderr.log");
        let stderr = fs::File::create(&stderr_path).expect("create stderr log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label} ({cmd:?}): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        let tag = label.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{tag}] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            label: label.to_string(),
            child,
            lines,
            stderr_path,
            _stderr_dir: stderr_dir,
        }
    }

    /// The rest of the first stdout line that starts with `prefix`.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no line starting with {prefix:?} within {timeout:?}; stderr:\n{}",
                    self.label,
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: exited ({:?}) before printing {prefix:?}; stderr:\n{}",
                    self.label,
                    self.child.try_wait(),
                    self.stderr()
                ),
            }
        }
    }

    /// What the process has written to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, as a crash would, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait up to 20 s for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(15);
        self.wait_exit(Duration::from_secs(20))
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        let pid = self.child.id();
        // std has no safe kill(2) with a chosen signal; the `kill` command keeps this crate
        // free of unsafe code.
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    /// Waits for the exit with a deadline; panics (after killing) on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill9();
                panic!("{}: did not exit within {timeout:?}", self.label);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates an unencrypted ed25519 key at `path` with `ssh-keygen`; returns the public key line.
pub fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read_to_string(path.with_extension("pub"))
        .expect("read public key")
        .trim()
        .to_string()
}

/// Bytes (a program's output) as text, invalid UTF-8 replaced.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A policy with engineer `alice` (public key line `alice`) allowed from 127.0.0.0/8,
/// serials `SN-*`, and `extra` appended.
pub fn alice_policy(extra: &str, alice: &str) -> String {
    format!(
        "[allowlist]\nsupport_cidrs = [\"127.0.0.0/8\"]\n\n[serials]\nallow = [\"SN-*\"]\n\n\
         [[support]]\nname = \"alice\"\npublic_key = \"{alice}\"\n\n{extra}"
    )
}

/// Stock `ssh` with options that keep it from asking questions or reading ~/.ssh.
pub fn ssh(args: &[&str]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=20",
    ]);
    cmd.args(args);
    cmd
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
        let check = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()
            .expect("sshd -t");
        assert!(
            check.status.success(),
            "sshd -t: {}",
            String::from_utf8_lossy(&check.stderr)
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
        let ssh_addr = parse_addr(&proc.wait_line("ssh listening on", READY_TIMEOUT));
        let api_url = proc.wait_line("api listening on", READY_TIMEOUT);
        let api_addr = parse_addr(
            api_url
                .trim_start_matches("http://")
                .trim_start_matches("https://"),
        );
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
        let out = Command::new(bin("assist-jumphost"))
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()
            .expect("run assist-jumphost status");
        assert!(
            out.status.success(),
            "assist-jumphost status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// One query on the jump host's database with the `sqlite3` CLI; rows as `a|b` lines.
    pub fn sql(&self, query: &str) -> String {
        let out = Command::new("sqlite3")
            .arg(self.data_dir.join("assist.db"))
            .arg(query)
            .output()
            .expect("run sqlite3");
        assert!(
            out.status.success(),
            "sqlite3 {query}: {}",
            String::from_utf8_lossy(&out.stderr)
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

/// A raw HTTP/1.1 request (`Connection: close`); returns the status and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    try_http(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// As [`http`], for a server that may be gone: an error when it cannot be reached or sends no
/// status line.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| format!("set timeout: {e}"))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("write request: {e}"))?;
    // A server may answer (413) and close before reading a large body; that is fine.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let body = match text.split_once("\r\n\r\n") {
        Some((head, rest))
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            dechunk(rest)
        }
        Some((_, rest)) => rest.to_string(),
        None => String::new(),
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A TCP connection to `to` from `127.0.0.{last}`, so a test can play several sources on
/// loopback (std cannot bind before connecting; a one-off Tokio socket does). Blocking.
pub fn connect_from(last: u8, to: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime for one connect");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, last], 0)))
            .unwrap_or_else(|e| panic!("bind 127.0.0.{last}: {e}"));
        let stream = socket
            .connect(to)
            .await
            .unwrap_or_else(|e| panic!("connect from 127.0.0.{last} to {to}: {e}"));
        stream.into_std().expect("a std stream")
    });
    stream.set_nonblocking(false).expect("blocking mode");
    stream
}

/// Reads until the peer closes (EOF or reset) and returns what it sent; panics if the
/// connection is still open after `within`.
pub fn until_closed(mut stream: TcpStream, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the peer kept the connection open for {within:?} (sent {got:?})"
        );
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading until closed: {e}"),
        }
    }
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut file = fs::File::open(path).expect("open file to hash");
    let mut hasher = sha2::Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk).expect("read file to hash");
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
    }
    hex::encode(hasher.finalize())
}

/// Writes `len` random bytes to `path`.
pub fn random_file(path: &Path, len: usize) {
    let mut out = std::io::BufWriter::new(fs::File::create(path).expect("create random file"));
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        rand::fill(&mut chunk[..n]);
        out.write_all(&chunk[..n]).expect("write random file");
        left -= n;
    }
    out.flush().expect("write random file");
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

/// Starts a program that takes its port from a config file only (nginx, tinyproxy): `spawn`
/// gets a port that was free a moment ago and starts the program there; it is ready once
/// 127.0.0.1:PORT accepts. Another port is tried if something took that one meanwhile.
pub fn start_on_free_port(what: &str, mut spawn: impl FnMut(u16) -> Proc) -> (Proc, SocketAddr) {
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut proc = spawn(port);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline && proc.is_running() {
            if TcpStream::connect(addr).is_ok() {
                return (proc, addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        last_error = proc.stderr();
    }
    panic!("{what} did not start (scripts/test.sh installs it): {last_error}");
}

/// `assist-client ARGS… --config CONFIG`, with no stdin, run to its end.
pub fn assist_client(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("assist-client"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run assist-client")
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

/// The fenced `lang` block of README.md between `<!-- NAME-snippet -->` and
/// `<!-- /NAME-snippet -->`: the configs the README gives operators, which the tests run.
pub fn readme_snippet(name: &str, lang: &str) -> String {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("read README.md");
    let (_, rest) = readme
        .split_once(&format!("<!-- {name}-snippet -->"))
        .unwrap_or_else(|| panic!("README has the {name} snippet"));
    let (block, _) = rest
        .split_once(&format!("<!-- /{name}-snippet -->"))
        .expect("snippet end");
    block
        .trim()
        .strip_prefix(&format!("```{lang}"))
        .and_then(|b| b.strip_suffix("```"))
        .unwrap_or_else(|| panic!("a ```{lang} block"))
        .to_owned()
}
