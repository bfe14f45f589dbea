//! The built-in target (`ssh = "builtin"`): the real agent, running as root, is itself the
//! end of the engineer's session. Stock OpenSSH with what `support-cli key` exported gets a
//! shell and commands as an account the test makes, scp copies both ways through the
//! system's sftp-server as that account, exit codes pass, support-cli connect works, the
//! wrong keys and forwards are refused, and every session is recorded in asciicast v2 that
//! stock `asciinema play` replays.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use assist_e2e::account::TestUser;
use assist_e2e::{Jumphost, Proc, READY_TIMEOUT, alice_policy, bin, keygen, text};

const SERIAL: &str = "SN-0001";
const SHORT: Duration = Duration::from_secs(30);

/// A jump host with engineer alice, an agent (root) whose ssh service is the built-in target
/// serving a test account, and a small TCP service as its `http` service.
struct World {
    dir: tempfile::TempDir,
    jump: Jumphost,
    agent: Proc,
    config: PathBuf,
    user: TestUser,
    /// The `http` service's address: direct-tcpip may reach it.
    web: SocketAddr,
    code: String,
}

impl World {
    fn start(tag: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        // The test account must reach its home below the test's folder.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let alice = keygen(&dir.path().join("alice"));
        let jump = Jumphost::start(dir.path(), &alice_policy("", &alice));
        let user = TestUser::create(&dir.path().join("home"), tag, "/bin/sh");
        let web = greeter();
        let config = dir.path().join("client.toml");
        fs::write(
            &config,
            format!(
                "serial = \"{SERIAL}\"\njumphost = \"{}\"\napi_url = \"{}\"\n\
                 data_dir = \"{}\"\nweb_listen = \"127.0.0.1:0\"\ntarget_user = \"{}\"\n\n\
                 [services]\nssh = \"builtin\"\nhttp = \"{web}\"\n",
                jump.ssh_addr,
                jump.api_url,
                dir.path().join("data").display(),
                user.name,
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin("assist-client"));
        cmd.arg("run").arg("--config").arg(&config);
        let mut agent = Proc::spawn(cmd, "agent");
        agent.wait_line("web listening on http://", READY_TIMEOUT);
        let mut w = World {
            dir,
            jump,
            agent,
            config,
            user,
            web,
            code: String::new(),
        };
        w.code = w.enable();
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Enables assistance, waits for the tunnel and returns the code.
    fn enable(&self) -> String {
        let out = assist_e2e::assist_client(&self.config, &["enable", "--minutes", "10"]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        let code = stdout
            .lines()
            .find_map(|l| l.strip_prefix("code:"))
            .unwrap()
            .trim()
            .to_owned();
        assist_e2e::wait_until(SHORT, "the tunnel", || {
            let out = assist_e2e::assist_client(&self.config, &["status", "--json"]);
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            status["tunnel"]["state"] == "connected"
        });
        code
    }

    /// `support-cli` as alice, everything pinned in the test's folder.
    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("support-cli"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .arg("--jumphost")
            .arg(self.jump.ssh_addr.to_string())
            .arg("--engineer")
            .arg("alice")
            .arg("--identity")
            .arg(self.path("alice"))
            .arg("--known-hosts")
            .arg(self.path("known_hosts"))
            .args(args);
        c
    }

    /// `support-cli key` for the current code into `name`; returns the ssh_config's path.
    fn export_key(&self, name: &str) -> PathBuf {
        let key = self.path(name);
        let out = self
            .cli(&[
                "key",
                SERIAL,
                "--code",
                &self.code,
                "--out",
                key.to_str().unwrap(),
                "--force",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "support-cli key: {}",
            text(&out.stderr)
        );
        self.path(&format!("{name}.ssh_config"))
    }

    /// Stock `ssh -F CONFIG -l USER SERIAL ARGS…` (never asking anything), quiet.
    fn ssh(&self, config: &Path, user: &str, args: &[&str]) -> Command {
        self.ssh_logging("ERROR", config, user, args)
    }

    /// As [`Self::ssh`], logging at `level` (`INFO` shows why a channel was refused).
    fn ssh_logging(&self, level: &str, config: &Path, user: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(config)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                &format!("LogLevel={level}"),
                "-l",
                user,
            ])
            .arg(SERIAL)
            .args(args);
        c
    }

    fn recordings(&self) -> Vec<PathBuf> {
        let dir = self.path("data").join("recordings");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }
}

/// A TCP service that greets each connection with a line and closes.
fn greeter() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"hello from the web UI 5d2e\n");
        }
    });
    addr
}

fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn stock_ssh_scp_and_support_cli_get_the_target_user() {
    let w = World::start("bi1");
    let config = w.export_key("k");
    // The built-in host key, derived from the code, is pinned for stock ssh before any
    // connection (no trust on first use).
    let code = assist_proto::OneTimeCode::parse(&w.code).unwrap();
    let (_, host) = assist_proto::derive::derive_login_and_host(SERIAL, &code).unwrap();
    let host_line = host.public_key().to_openssh().unwrap();
    let pins = fs::read_to_string(w.path("k.known_hosts")).unwrap();
    assert!(
        pins.lines().any(|l| l == format!("{SERIAL} {host_line}")),
        "{pins}"
    );

    let user = w.user.name.clone();
    let out = run(
        &mut w.ssh(
            &config,
            &user,
            &["id -un; pwd; echo HOME=$HOME; env | sort"],
        ),
        b"",
    );
    assert!(out.status.success(), "ssh: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(user.as_str()), "{stdout}");
    assert_eq!(
        lines.next(),
        Some(w.user.home.to_str().unwrap()),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("HOME={}", w.user.home.display())),
        "{stdout}"
    );
    // A clean environment: nothing of the agent's (which runs as root with the test's).
    assert!(stdout.contains(&format!("USER={user}")), "{stdout}");
    assert!(!stdout.contains("CARGO"), "{stdout}");
    assert!(!stdout.contains("RUST"), "{stdout}");

    // Exit codes pass, stderr stays stderr, stdin reaches the command.
    let out = run(
        &mut w.ssh(&config, &user, &["cat; echo oops >&2; exit 7"]),
        b"fed-in",
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "fed-in");
    assert_eq!(text(&out.stderr), "oops\n");

    // Another user name gets words, not a session.
    let out = run(&mut w.ssh(&config, "root", &["id -un"]), b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains(&format!("serves only user {user}")),
        "{}",
        text(&out.stderr)
    );

    // scp (SFTP) both ways, as the target user.
    let local = w.path("up.bin");
    assist_e2e::random_file(&local, 300_000);
    let remote = w.user.home.join("up.bin");
    let scp = |from: &str, to: &str| {
        Command::new("scp")
            .arg("-F")
            .arg(&config)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                &format!("User={user}"),
                from,
                to,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = scp(
        local.to_str().unwrap(),
        &format!("{SERIAL}:{}", remote.display()),
    );
    assert!(out.status.success(), "scp up: {}", text(&out.stderr));
    assert_eq!(fs::read(&remote).unwrap(), fs::read(&local).unwrap());
    let meta = fs::metadata(&remote).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (w.user.uid, w.user.gid));
    fs::write(w.user.home.join("down.txt"), "from the device 81c4\n").unwrap();
    let back = w.path("down.txt");
    let out = scp(
        &format!("{SERIAL}:{}", w.user.home.join("down.txt").display()),
        back.to_str().unwrap(),
    );
    assert!(out.status.success(), "scp down: {}", text(&out.stderr));
    assert_eq!(fs::read_to_string(&back).unwrap(), "from the device 81c4\n");
    // The kernel decides, as for the user: root's files stay out of reach.
    let secret = w.path("root-only");
    fs::write(&secret, "root's").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let out = scp(
        &format!("{SERIAL}:{}", secret.display()),
        w.path("stolen").to_str().unwrap(),
    );
    assert!(!out.status.success(), "read a root-only file");
    assert!(!w.path("stolen").exists());

    // support-cli connect, with the exit status of the command.
    let out = w
        .cli(&[
            "connect",
            SERIAL,
            "--code",
            &w.code,
            "--user",
            &user,
            "--",
            "sh",
            "-c",
            "echo via-cli-$(id -un); exit 5",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("via-cli-{user}\n"));

    // Every command ran was recorded, output included.
    let recorded: String = w
        .recordings()
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert!(recorded.contains("exit 7"), "{recorded}");
    assert!(recorded.contains("via-cli-"), "{recorded}");
}

#[test]
fn wrong_keys_stale_codes_and_other_addresses_are_refused() {
    let mut w = World::start("bi2");
    let user = w.user.name.clone();
    let old = w.export_key("old");
    let out = run(&mut w.ssh(&old, &user, &["echo in"]), b"");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A key of the engineer's own (the jump login's) is not the code's.
    let other = w.path("other.ssh_config");
    let text_config = fs::read_to_string(&old).unwrap().replacen(
        w.path("old").to_str().unwrap(),
        w.path("alice").to_str().unwrap(),
        1,
    );
    fs::write(&other, text_config).unwrap();
    let out = run(&mut w.ssh(&other, &user, &["echo in"]), b"");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );

    // direct-tcpip: the configured http service, and nothing else.
    let web = w.web.to_string();
    let out = run(&mut w.ssh(&old, &user, &["-W", &web]), b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from the web UI 5d2e\n");
    let elsewhere = greeter().to_string();
    let out = run(
        &mut w.ssh_logging("INFO", &old, &user, &["-W", &elsewhere]),
        b"",
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("administratively prohibited"),
        "{}",
        text(&out.stderr)
    );

    // A new window: the old code's key no longer logs in, the new one does.
    w.code = w.enable();
    let out = run(&mut w.ssh(&old, &user, &["echo in"]), b"");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    let new = w.export_key("new");
    let out = run(&mut w.ssh(&new, &user, &["echo in-$((1+1))"]), b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in-2\n");
    assert!(w.agent.is_running(), "{}", w.agent.stderr());
}

#[test]
fn a_terminal_session_is_recorded_in_asciicast_v2() {
    let w = World::start("bi3");
    let config = w.export_key("k");
    let user = w.user.name.clone();
    let mut child = w
        .ssh(&config, &user, &["-tt"])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Typed once the shell prompts, as a person would.
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut typed = false;
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if !typed && seen.ends_with(b"$ ") {
                typed = true;
                stdin
                    .write_all(b"echo typed-$((6*7)) $(id -un); tty; exit 3\n")
                    .unwrap();
            }
        }
        seen
    });
    let status = child.wait().unwrap();
    let seen = text(&reader.join().unwrap());
    assert_eq!(status.code(), Some(3), "{seen}");
    assert!(seen.contains(&format!("typed-42 {user}")), "{seen}");
    assert!(seen.contains("/dev/pts/"), "{seen}");

    let files = w.recordings();
    assert_eq!(files.len(), 1, "{files:?}");
    let file = &files[0];
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(
        name.ends_with(".cast") && name.contains("Z-alice-"),
        "{name}"
    );
    assert_eq!(fs::metadata(file).unwrap().mode() & 0o777, 0o600);
    let folder = w.path("data").join("recordings");
    assert_eq!(fs::metadata(&folder).unwrap().mode() & 0o777, 0o700);

    // Strictly asciicast v2: a header object, then [time, "i"|"o"|"r", text] in time order.
    let recording = fs::read_to_string(file).unwrap();
    let mut lines = recording.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(header["width"].as_u64().unwrap() > 0);
    assert!(header["height"].as_u64().unwrap() > 0);
    assert!(header["timestamp"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(header["env"]["TERM"], "xterm-256color");
    assert_eq!(header["assist"]["engineer"], "alice");
    assert_eq!(header["assist"]["command"], serde_json::Value::Null);
    assert!(header["title"].as_str().unwrap().starts_with("alice from "));
    let (mut input, mut output, mut last) = (String::new(), String::new(), 0.0);
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let event = event.as_array().unwrap();
        assert_eq!(event.len(), 3, "{line}");
        let t = event[0].as_f64().unwrap();
        assert!(t >= last, "{line}");
        last = t;
        let data = event[2].as_str().unwrap();
        match event[1].as_str().unwrap() {
            "i" => input.push_str(data),
            "o" => output.push_str(data),
            "r" => assert!(data.split_once('x').is_some(), "{line}"),
            other => panic!("event type {other}"),
        }
    }
    assert!(input.contains("echo typed-$((6*7))"), "{input}");
    assert!(output.contains(&format!("typed-42 {user}")), "{output}");

    // Stock `asciinema play` replays it (on a terminal, which it insists on: script(1)
    // gives it one), sped up.
    let out = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("asciinema play -i 0.1 -s 20 '{}'", file.display()))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "asciinema play: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains(&format!("typed-42 {user}")),
        "{}",
        text(&out.stdout)
    );

    // Disable ends an open terminal at once, and the engineer is told why.
    let mut held = w
        .ssh(&config, &user, &["-tt", "echo held-open; exec sleep 600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pty_out = held.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !text(&seen).contains("held-open") {
        let n = pty_out.read(&mut buf).unwrap();
        assert!(n > 0, "{}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let out = assist_e2e::assist_client(&w.config, &["disable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assist_e2e::wait_until(SHORT, "the engineer's ssh to end", || {
        held.try_wait().unwrap().is_some()
    });
    pty_out.read_to_end(&mut seen).unwrap();
    let mut told = String::new();
    held.stderr
        .take()
        .unwrap()
        .read_to_string(&mut told)
        .unwrap();
    assert!(
        format!("{told}{}", text(&seen)).contains("the customer stopped remote assistance"),
        "stderr {told:?} stdout {:?}",
        text(&seen)
    );
}
