//! Child processes of a test: the binaries built once per run, started with their stdout
//! read line by line and their stderr kept in a file, polled with deadlines and killed on
//! drop. Also what starts a program on a free port and `assist-client` one-shot commands.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// Removes from `cmd`'s environment what cargo sets for a test process, for a cargo build
/// started from a test. Passed on, these differ from what the outer `cargo test` saw, and
/// ring's build script watches them (rerun-if-env-changed): ring, russh and everything above
/// would rebuild on every test run, twice.
pub fn without_cargo_test_env(cmd: &mut Command) {
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
    without_cargo_test_env(&mut cmd);
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

/// Runs `cmd` to its end; panics naming `what`, with its stderr, unless it succeeded.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(out.status.success(), "{what}: {}", text(&out.stderr));
    out
}

/// Bytes (a program's output) as text, invalid UTF-8 replaced.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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
