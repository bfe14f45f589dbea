//! The customer's agent end to end: the real `assist-client` and `assist-jumphost`, stock
//! OpenSSH as the customer's sshd and as the engineer's `ssh` hopping in with the derived key.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use assist_e2e::{
    Jumphost, Proc, READY_TIMEOUT, Sshd, bin, keygen, ssh, text, wait_until, write_client_config,
    write_derived_key,
};

const SHORT: Duration = Duration::from_secs(30);
const SERIAL: &str = "SN-0001";
const SSH_OPTS: &str = "-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o IdentitiesOnly=yes";
const MARKER: &str = "assist-client:SN-0001";

/// A jump host, a customer sshd whose authorized_keys already holds the admin's lines, and
/// an engineer key (alice).
struct World {
    dir: tempfile::TempDir,
    jump: Jumphost,
    sshd: Sshd,
    /// authorized_keys as the admin left it: the agent must never change these bytes.
    original_keys: Vec<u8>,
}

impl World {
    fn start() -> World {
        Self::start_with("")
    }

    /// As [`World::start`], with `extra_policy` appended to the policy file.
    fn start_with(extra_policy: &str) -> World {
        Self::start_configured(extra_policy, "", "[]")
    }

    /// As [`World::start_with`], with `jumphost_extra` after jumphost.toml's contract keys
    /// and devices admitted only from `client_cidrs`.
    fn start_configured(extra_policy: &str, jumphost_extra: &str, client_cidrs: &str) -> World {
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

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `<name>/client.toml` with only the contract keys (data_dir relative).
    fn client_config(&self, name: &str) -> PathBuf {
        write_client_config(&self.path(name), SERIAL, &self.jump, &self.sshd)
    }

    fn keys_file(&self) -> String {
        fs::read_to_string(&self.sshd.authorized_keys).unwrap()
    }

    /// Stock `ssh root@SERIAL CMD` through the jump host as alice, with `key`.
    fn hop_cmd(&self, key: &Path, cmd: &str) -> Command {
        let proxy = format!(
            "ProxyCommand=ssh {SSH_OPTS} -i {} -p {} -W %h:%p alice@127.0.0.1",
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

    fn hop(&self, key: &Path, cmd: &str) -> Output {
        self.hop_cmd(key, cmd).output().unwrap()
    }
}

/// `assist-client run`, ready once its local API is bound.
fn start_agent(config: &Path, label: &str) -> Proc {
    let mut cmd = Command::new(bin("assist-client"));
    cmd.arg("run").arg("--config").arg(config);
    cmd.env("RUST_LOG", "info,assist_client=debug");
    let mut agent = Proc::spawn(cmd, label);
    let fp = agent.wait_line("device key fingerprint:", READY_TIMEOUT);
    assert!(fp.trim().starts_with("SHA256:"), "{fp}");
    agent.wait_line("web listening on http://", READY_TIMEOUT);
    agent
}

fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(bin("assist-client"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `assist-client enable`; returns (code, until).
fn enable(config: &Path, minutes: &str) -> (String, String) {
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

fn status(config: &Path) -> serde_json::Value {
    let out = cli(config, &["status", "--json"]);
    assert!(out.status.success(), "status failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The hop failed at the jump host (no route), not at the customer's sshd. Stock ssh logs the
/// jump host's reason only at INFO, so the proxy's fatal line is what is visible here.
fn refused_by_jump_host(out: &Output) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "hop should fail");
    assert!(
        err.contains("stdio forwarding failed") || err.contains("is not connected"),
        "{err}"
    );
}

fn wait_tunnel(config: &Path, state: &str) {
    wait_until(SHORT, &format!("tunnel {state}"), || {
        status(config)["tunnel"]["state"] == state
    });
}

#[test]
fn enable_hop_reconnect_and_disable() {
    let mut w = World::start();
    let config = w.client_config("agent");
    let agent = start_agent(&config, "agent");
    let data = w.path("agent/data");
    for (file, mode) in [("device_key", 0o600), ("control-token", 0o600)] {
        use std::os::unix::fs::PermissionsExt;
        let m = fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{file}");
    }

    // Nothing is open before the customer enables.
    let s = status(&config);
    assert_eq!(s["enabled"], false, "{s}");
    assert_eq!(s["tunnel"]["state"], "disabled", "{s}");
    refused_by_jump_host(&w.hop(&w.path("admin"), "true"));

    let (code, until) = enable(&config, "10");
    assert_eq!(code.len(), 11, "{code}");
    assert!(until.ends_with('Z'), "{until}");
    assert!(
        !agent.stderr().contains(&code),
        "the code must never be logged"
    );

    // The installed line: options, derived key, marker; every other byte untouched.
    let derived = w.path("derived");
    let derived_pub = write_derived_key(&derived, SERIAL, &code);
    let keys = w.keys_file();
    let (before, ours) = keys.split_at(w.original_keys.len());
    assert_eq!(before.as_bytes(), w.original_keys.as_slice());
    let ours = ours.trim_end_matches('\n');
    assert!(!ours.contains('\n'), "one line added: {ours:?}");
    assert!(ours.starts_with("expiry-time=\"20"), "{ours}");
    assert!(
        ours.contains(
            "Z\",from=\"127.0.0.1,::1\",no-agent-forwarding,no-X11-forwarding,no-port-forwarding "
        ),
        "{ours}"
    );
    assert!(ours.ends_with(&format!("{derived_pub} {MARKER}")), "{ours}");

    wait_tunnel(&config, "connected");
    let out = w.hop(&derived, "echo hello from $(whoami)");
    assert!(
        out.status.success(),
        "hop failed: {}\n--- agent:\n{}\n--- jump host:\n{}\n--- sshd:\n{}",
        text(&out.stderr),
        agent.stderr(),
        w.jump.proc.stderr(),
        w.sshd.log()
    );
    assert_eq!(text(&out.stdout).trim(), "hello from root");
    let s = status(&config);
    assert_eq!(s["connections"]["total"], 1, "{s}");

    // Kill the jump host; the agent comes back by itself once it is up again.
    let killed = Instant::now();
    w.jump.restart();
    let jump_ready = Instant::now();
    wait_tunnel(&config, "connected");
    let back = Instant::now();
    eprintln!(
        "RECONNECT: {:?} from kill to connected, {:?} after the jump host was ready again \
         (restart took {:?})",
        back - killed,
        back - jump_ready,
        jump_ready - killed
    );
    let out = w.hop(&derived, "echo again");
    assert!(
        out.status.success(),
        "hop after reconnect failed: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), "again");

    // A session in progress is cut by disable.
    let mut long = Proc::spawn(w.hop_cmd(&derived, "echo started; sleep 120"), "long hop");
    long.wait_line("started", SHORT);
    wait_until(SHORT, "an active relay", || {
        status(&config)["connections"]["active"] == 1
    });

    let out = cli(&config, &["disable"]);
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "disable failed: {}",
        text(&out.stderr)
    );
    assert!(report.contains("1 key line(s) removed"), "{report}");
    assert!(report.contains("1 relayed connection(s) ended"), "{report}");
    assert_eq!(w.keys_file().as_bytes(), w.original_keys.as_slice());
    wait_until(SHORT, "the long session to end", || !long.is_running());
    let s = status(&config);
    assert_eq!(s["enabled"], false, "{s}");
    assert_eq!(s["tunnel"]["state"], "disabled", "{s}");
    assert_eq!(s["connections"]["active"], 0, "{s}");
    refused_by_jump_host(&w.hop(&derived, "true"));
    let human = text(&cli(&config, &["status"]).stdout);
    assert!(human.contains("assistance: disabled"), "{human}");
}

#[test]
fn crash_purge_sigterm_and_a_second_device_for_the_same_serial() {
    let w = World::start();
    let config = w.client_config("agent");
    let mut agent = start_agent(&config, "agent");
    enable(&config, "30");
    assert!(w.keys_file().contains(MARKER));

    // kill -9 leaves the line behind; the next start removes it before anything else.
    agent.kill9();
    assert!(w.keys_file().contains(MARKER));
    let mut agent = start_agent(&config, "agent again");
    assert_eq!(w.keys_file().as_bytes(), w.original_keys.as_slice());
    assert!(
        agent
            .stderr()
            .contains("removed key lines left by an earlier run")
    );

    // SIGTERM disables (line removed) and exits 0.
    enable(&config, "30");
    wait_tunnel(&config, "connected");
    assert!(w.keys_file().contains(MARKER));
    let exit = agent.terminate();
    assert!(exit.success(), "agent exit: {exit:?}\n{}", agent.stderr());
    assert_eq!(w.keys_file().as_bytes(), w.original_keys.as_slice());

    // With no agent running the CLI says what to do.
    let out = cli(&config, &["status"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("assist-client run"),
        "{}",
        text(&out.stderr)
    );

    // Another machine (another device key) claiming the same serial is refused.
    let other = w.client_config("other");
    let _other_agent = start_agent(&other, "other agent");
    let out = cli(&other, &["enable"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(err.contains("bound to another device key"), "{err}");
    assert!(
        err.contains("assist-jumphost serial reset SN-0001"),
        "{err}"
    );
    assert!(!text(&out.stdout).contains("code:"));
    assert_eq!(w.keys_file().as_bytes(), w.original_keys.as_slice());

    // A jump host key other than the pinned one stops the tunnel and says why.
    let admin_pub = fs::read_to_string(w.path("admin.pub")).unwrap();
    fs::write(w.path("agent/data/jumphost_host_key"), admin_pub).unwrap();
    let _agent = start_agent(&config, "agent, wrong pin");
    enable(&config, "30");
    wait_until(SHORT, "the tunnel to fail", || {
        status(&config)["tunnel"]["state"] == "failed"
    });
    let s = status(&config);
    assert!(
        s["tunnel"]["last_error"]
            .as_str()
            .unwrap()
            .contains("key changed"),
        "{s}"
    );
    assert_eq!(s["enabled"], false, "{s}");
    assert_eq!(w.keys_file().as_bytes(), w.original_keys.as_slice());
    let human = text(&cli(&config, &["status"]).stdout);
    assert!(
        human.contains("tunnel: failed (last error: the jump host's key changed"),
        "{human}"
    );
}

#[test]
fn the_window_ends_by_itself_at_the_policy_maximum() {
    let w = World::start_with("[keys]\nmax_assistance = \"4s\"\n");
    let config = w.client_config("agent");
    let _agent = start_agent(&config, "agent");
    let out = cli(&config, &["enable", "--minutes", "10"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("allows at most 4 s"), "{stdout}");
    assert!(w.keys_file().contains(MARKER));
    let s = status(&config);
    assert!(s["remaining_secs"].as_u64().unwrap() <= 4, "{s}");
    // Extending (enable while enabled) starts a new window that is capped the same way:
    // the end never lies more than the maximum ahead.
    let out = cli(&config, &["enable", "--minutes", "100000000"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("allows at most 4 s"), "{stdout}");
    let s = status(&config);
    assert!(s["remaining_secs"].as_u64().unwrap() <= 4, "{s}");

    wait_until(SHORT, "the window to end", || {
        status(&config)["enabled"] == false
    });
    assert_eq!(w.keys_file().as_bytes(), w.original_keys.as_slice());
    let s = status(&config);
    assert_eq!(s["tunnel"]["state"], "disabled", "{s}");
}

/// An engineer's upload in progress: stock ssh through the jump host runs `cat` into
/// /dev/null on the customer machine, fed from /dev/zero, until killed.
struct Upload {
    source: Child,
    ssh: Child,
}

impl Upload {
    /// Returns once the first megabyte has reached the customer machine.
    fn start(w: &World, key: &Path) -> Upload {
        let mut source = Command::new("head")
            .args(["-c", "100000000000", "/dev/zero"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ssh = w
            .hop_cmd(
                key,
                "head -c 1000000 >/dev/null && echo flowing && exec cat >/dev/null",
            )
            .stdin(Stdio::from(source.stdout.take().unwrap()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(ssh.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "flowing");
        Upload { source, ssh }
    }

    /// Waits for the engineer's ssh to be cut; true if it ended with an error.
    fn cut(&mut self) -> bool {
        let deadline = Instant::now() + SHORT;
        loop {
            if let Some(status) = self.ssh.try_wait().unwrap() {
                return !status.success();
            }
            assert!(Instant::now() < deadline, "the upload was not cut");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        for child in [&mut self.ssh, &mut self.source] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// kill -9 of the jump host, then of the agent, each in the middle of an engineer's upload:
/// no acknowledged registration, hop record or audit record is lost, the interrupted hop is
/// marked as such, and the agent's key line is gone once it has started again.
#[test]
fn kill_9_mid_transfer_loses_no_record_and_leaves_no_key_line() {
    let mut w = World::start();
    let config = w.client_config("agent");
    let mut agent = start_agent(&config, "agent");
    let (code, _) = enable(&config, "30");
    let derived = w.path("derived");
    write_derived_key(&derived, SERIAL, &code);
    wait_tunnel(&config, "connected");

    // The jump host dies mid-upload.
    let mut upload = Upload::start(&w, &derived);
    let live = w.jump.status();
    assert_eq!(live["hops"][0]["serial"], SERIAL, "{live}");
    assert_eq!(live["hops"][0]["engineer"], "alice", "{live}");
    assert_eq!(live["devices"][0]["serial"], SERIAL, "{live}");
    w.jump.restart();
    assert!(upload.cut());
    drop(upload);
    // The hop was on disk before the engineer got the channel; the restart closed it.
    assert_eq!(
        w.jump
            .sql("SELECT serial, engineer, interrupted, ended_at IS NOT NULL FROM hops"),
        format!("{SERIAL}|alice|1|1\n")
    );
    assert!(
        w.jump.proc.stderr().contains("marked interrupted"),
        "{}",
        w.jump.proc.stderr()
    );
    let registered = w.jump.sql(&format!(
        "SELECT count(*) FROM audit_events WHERE kind = 'api.register' AND who = '{SERIAL}'"
    ));
    assert_eq!(registered.trim(), "1");
    assert_eq!(status(&config)["enabled"], true);

    // The registration survived: the agent logs in again with its key, the code still works.
    wait_tunnel(&config, "connected");
    let out = w.hop(&derived, "echo back");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The agent dies mid-upload: the jump host ends the hop and records it whole.
    let mut upload = Upload::start(&w, &derived);
    agent.kill9();
    assert!(upload.cut());
    drop(upload);
    wait_until(SHORT, "the second upload's hop to be recorded", || {
        w.jump
            .sql("SELECT count(*) FROM hops WHERE ended_at IS NOT NULL AND interrupted = 0")
            .trim()
            == "2"
    });
    let moved = w.jump.sql("SELECT max(bytes_to_device) FROM hops");
    assert!(moved.trim().parse::<u64>().unwrap() >= 1_000_000, "{moved}");
    assert!(w.jump.status()["devices"].as_array().unwrap().is_empty());

    // The line outlives the agent until it starts again, then it is gone before anything else.
    assert!(w.keys_file().contains(MARKER));
    let _agent = start_agent(&config, "agent again");
    assert_eq!(w.keys_file().as_bytes(), w.original_keys.as_slice());
    let s = status(&config);
    assert_eq!(s["enabled"], false, "{s}");
    refused_by_jump_host(&w.hop(&derived, "true"));
    // Same device key after the crash: the jump host renews it instead of refusing a stranger.
    let (code2, _) = enable(&config, "5");
    assert_ne!(code2, code);
    assert_eq!(
        w.jump
            .sql("SELECT count(*) FROM audit_events WHERE kind = 'api.register'")
            .trim(),
        "2"
    );
}

/// After an admin's `serial reset` the device key is unknown to the jump host: the agent's
/// next login is refused once, it registers the key again and is back, without piling up
/// failed logins against its address. If another device took the serial meanwhile, the
/// window ends with the reason instead of retrying forever.
#[test]
fn a_refused_device_key_is_registered_again_once() {
    let mut w = World::start();
    let config = w.client_config("agent");
    let _agent = start_agent(&config, "agent");
    let (code, _) = enable(&config, "30");
    let derived = w.path("derived");
    write_derived_key(&derived, SERIAL, &code);
    wait_tunnel(&config, "connected");

    let reset = |w: &World| {
        let out = Command::new(bin("assist-jumphost"))
            .args(["serial", "reset", SERIAL, "--config"])
            .arg(&w.jump.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    // A reset leaves the live session alone; the restart makes the agent log in again.
    reset(&w);
    w.jump.restart();
    wait_tunnel(&config, "connected");
    let out = w.hop(&derived, "echo back");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        w.jump
            .proc
            .stderr()
            .contains("has no registered, unexpired key"),
        "{}",
        w.jump.proc.stderr()
    );
    let registered = w.jump.sql(
        "SELECT count(*) FROM audit_events WHERE kind = 'api.register' AND outcome LIKE 'registered %'",
    );
    assert_eq!(registered.trim(), "2", "first enable, then the agent's own");
    let sources = w.jump.status()["sources"].clone();
    assert!(
        sources
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "counted" && s["failures"].as_u64() <= Some(1)),
        "{sources}"
    );

    // Another device takes the serial while this one is away: no loop, the window ends.
    reset(&w);
    let other = keygen(&w.path("other"));
    assert_eq!(w.jump.register(SERIAL, &other).0, 201);
    w.jump.restart();
    wait_until(SHORT, "the window to end", || {
        status(&config)["enabled"] == false
    });
    let s = status(&config);
    assert_eq!(s["tunnel"]["state"], "failed", "{s}");
    let error = s["tunnel"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("bound to another device key") && error.contains("serial reset"),
        "{s}"
    );
    assert_eq!(w.keys_file().as_bytes(), w.original_keys.as_slice());
}

/// Sets `line` among the top-level keys of a client.toml (before its `[services]` table).
fn set_client_key(config: &Path, line: &str) {
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

#[test]
fn with_an_enrollment_key_only_the_device_holding_its_serials_secret_registers() {
    let w = World::start_configured("", "enrollment_key = \"enroll.key\"\n", "[]");
    assert!(
        !w.jump.proc.stderr().contains("no enrollment_key"),
        "warned although the key is set"
    );
    let key = fs::read_to_string(w.jump.dir.join("enroll.key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(w.jump.dir.join("enroll.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A squatter with curl and no secret: 401 saying what is missing, nothing bound.
    let squatter = keygen(&w.path("squatter"));
    let body = serde_json::json!({ "serial": SERIAL, "public_key": squatter }).to_string();
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-d",
        ])
        .arg(&body)
        .arg(format!("{}/v1/register", w.jump.api_url))
        .output()
        .unwrap();
    let answer = text(&out.stdout);
    assert!(answer.ends_with("\n401"), "{answer}");
    assert!(answer.contains("enrollment required"), "{answer}");
    assert_eq!(w.jump.sql("SELECT COUNT(*) FROM bindings").trim(), "0");

    // The vendor's secret for the serial.
    let out = Command::new(bin("assist-jumphost"))
        .args(["serial", "secret", SERIAL, "--config"])
        .arg(&w.jump.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = text(&out.stdout)
        .strip_prefix("secret: ")
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(secret.len(), 64, "{secret}");

    // An agent with another serial's secret: enable fails in words, shows no code, changes
    // nothing; status says why.
    let config = w.client_config("agent");
    set_client_key(
        &config,
        &format!("enrollment_secret = \"{}\"", "0".repeat(64)),
    );
    let mut agent = start_agent(&config, "agent");
    let out = cli(&config, &["enable", "--minutes", "5"]);
    assert!(!out.status.success(), "enabled with a wrong secret");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!said.contains("code:"), "{said}");
    assert!(said.contains("enrollment secret"), "{said}");
    assert!(said.contains("enrollment proof is wrong"), "{said}");
    let s = status(&config);
    let why = s["tunnel"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("enrollment proof is wrong"), "{s}");
    assert_eq!(w.keys_file().as_bytes(), w.original_keys.as_slice());
    assert_eq!(w.jump.sql("SELECT COUNT(*) FROM bindings").trim(), "0");
    agent.terminate();

    // The right secret from a 0600 file: enable works and the engineer gets in.
    let file = w.path("agent/enrollment-secret");
    fs::write(&file, format!("{secret}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let text_now = fs::read_to_string(&config).unwrap();
    let without: Vec<&str> = text_now
        .lines()
        .filter(|l| !l.starts_with("enrollment_secret"))
        .collect();
    fs::write(&config, without.join("\n") + "\n").unwrap();
    set_client_key(
        &config,
        &format!("enrollment_secret_file = \"{}\"", file.display()),
    );
    let agent = start_agent(&config, "agent again");
    let (code, _) = enable(&config, "5");
    wait_tunnel(&config, "connected");
    assert_eq!(w.jump.sql("SELECT COUNT(*) FROM bindings").trim(), "1");
    let derived = w.path("derived");
    write_derived_key(&derived, SERIAL, &code);
    let out = w.hop(&derived, "echo enrolled");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "enrolled");
    for (who, log) in [
        ("jump host", w.jump.proc.stderr()),
        ("agent", agent.stderr()),
    ] {
        assert!(
            !log.contains(&secret),
            "the enrollment secret reached the {who}'s log"
        );
    }
}

/// `support-cli` as engineer alice of the world, with its own known_hosts.
fn support_cli(w: &World, jumphost: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("support-cli"));
    cmd.args(["--jumphost", jumphost, "--engineer", "alice", "--identity"])
        .arg(w.path("alice"))
        .arg("--known-hosts")
        .arg(w.path("engineer_known_hosts"))
        .args(args)
        .stdin(Stdio::null());
    cmd
}

#[test]
fn the_tunnel_and_the_engineer_travel_inside_a_websocket_on_the_api_port() {
    let w = World::start();
    let config = w.client_config("agent");
    let ws = format!("ws://{}/v1/ssh", w.jump.api_addr);
    set_client_key(&config, &format!("jumphost = \"{ws}\""));
    let _agent = start_agent(&config, "agent");
    let (code, _) = enable(&config, "10");
    wait_tunnel(&config, "connected");
    let devices = w.jump.status()["devices"].clone();
    assert_eq!(devices[0]["serial"], SERIAL, "{devices}");

    // support-cli over the same WebSocket endpoint, end to end into the customer's sshd.
    let out = support_cli(
        &w,
        &ws,
        &[
            "connect", SERIAL, "--code", &code, "--", "echo", "over", "ws",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "over ws");

    // Stock ssh with support-cli as its ProxyCommand, also over the WebSocket.
    let derived = w.path("derived");
    write_derived_key(&derived, SERIAL, &code);
    let proxy = format!(
        "ProxyCommand={} --jumphost {ws} --engineer alice --identity {} --known-hosts {} stdio %h",
        bin("support-cli").display(),
        w.path("alice").display(),
        w.path("engineer_known_hosts").display()
    );
    let out = ssh(&[
        "-o",
        &proxy,
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        derived.to_str().unwrap(),
        &format!("root@{SERIAL}"),
        "echo stock ssh via stdio",
    ])
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "stock ssh via stdio");

    // The jump host audits the WebSocket logins like the others, with the real source.
    let rows = w.jump.sql(
        "SELECT source FROM audit_events WHERE kind = 'ssh.auth' AND outcome LIKE 'accepted%'",
    );
    assert!(
        rows.lines().count() >= 3 && rows.lines().all(|l| l == "127.0.0.1"),
        "{rows}"
    );

    // A plain HTTP GET of the endpoint is told what it is.
    let (status, body) = assist_e2e::http(w.jump.api_addr, "GET", "/v1/ssh", &[], b"");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("SSH over WebSocket"), "{body}");
}

#[test]
fn a_customer_behind_a_stock_forward_proxy_gets_help_through_it_alone() {
    use assist_e2e::proxy::Tinyproxy;
    // Devices are admitted only from 127.0.0.2, the proxy's outgoing address: a direct
    // connection from 127.0.0.1 is refused, so a working tunnel went through the proxy.
    let w = World::start_configured("", "", r#"["127.0.0.2/32"]"#);
    let proxy = Tinyproxy::start(w.dir.path(), "127.0.0.2", Some(("cust", "pr0xy-pass")));

    // One device (one data_dir, one device key) tried three ways, one agent at a time.
    let shared = w.path("device-data");
    let config_for = |name: &str| {
        let config = w.client_config(name);
        set_client_key(&config, &format!("data_dir = \"{}\"", shared.display()));
        config
    };

    // Without the proxy the agent cannot get in.
    let direct = config_for("direct");
    let direct_agent = start_agent(&direct, "direct agent");
    let _ = enable(&direct, "5");
    wait_until(SHORT, "the direct tunnel refused", || {
        let s = status(&direct);
        s["tunnel"]["state"] != "connected"
            && s["tunnel"]["last_error"]
                .as_str()
                .is_some_and(|e| !e.is_empty())
    });
    let _ = cli(&direct, &["disable"]);
    drop(direct_agent);

    // Raw SSH and then SSH over WebSocket through the proxy with Basic auth, and raw SSH
    // through a second proxy that asks for none.
    let open_proxy = Tinyproxy::start(&w.path("open"), "127.0.0.2", None);
    let url = format!("http://cust:pr0xy%2Dpass@{}", proxy.addr);
    let open_url = format!("http://{}", open_proxy.addr);
    for (name, jumphost, url) in [
        ("raw", w.jump.ssh_addr.to_string(), &url),
        ("ws", format!("ws://{}/v1/ssh", w.jump.api_addr), &url),
        ("open", w.jump.ssh_addr.to_string(), &open_url),
    ] {
        let config = config_for(name);
        set_client_key(&config, &format!("jumphost = \"{jumphost}\""));
        set_client_key(&config, &format!("proxy = \"{url}\""));
        let agent = start_agent(&config, name);
        let (code, _) = enable(&config, "5");
        wait_tunnel(&config, "connected");
        let derived = w.path(&format!("derived-{name}"));
        write_derived_key(&derived, SERIAL, &code);
        let out = w.hop(&derived, "echo helped");
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "helped", "{name}");
        let _ = cli(&config, &["disable"]);
        drop(agent);
    }
    let ssh_port = w.jump.ssh_addr.port();
    let log = proxy.log();
    for port in [ssh_port, w.jump.api_addr.port()] {
        let connect = format!("CONNECT 127.0.0.1:{port}");
        assert!(log.contains(&connect), "no {connect}:\n{log}");
    }
    let log = open_proxy.log();
    let connect = format!("CONNECT 127.0.0.1:{ssh_port}");
    assert!(log.contains(&connect), "no {connect}:\n{log}");
    let sources = w.jump.sql(
        "SELECT DISTINCT source FROM audit_events WHERE kind = 'ssh.auth' AND who = 'SN-0001' \
         AND outcome LIKE 'accepted%'",
    );
    assert_eq!(
        sources.trim(),
        "127.0.0.2",
        "device logins came from elsewhere"
    );

    // A wrong proxy password: enable says so in words and shows no code.
    let config = config_for("badpass");
    set_client_key(
        &config,
        &format!("proxy = \"http://cust:n0tit@{}\"", proxy.addr),
    );
    let _agent = start_agent(&config, "badpass");
    let out = cli(&config, &["enable", "--minutes", "5"]);
    assert!(!out.status.success());
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!said.contains("code:"), "{said}");
    assert!(said.contains("the proxy refused: authentication"), "{said}");
    let s = status(&config);
    assert!(
        s["tunnel"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("the proxy refused"),
        "{s}"
    );
    assert!(
        !said.contains("n0tit"),
        "the proxy password was shown: {said}"
    );
    drop(_agent);

    // No credentials at all for a proxy that wants them: its 407, in words.
    let config = config_for("nopass");
    set_client_key(&config, &format!("proxy = \"http://{}\"", proxy.addr));
    let _agent = start_agent(&config, "nopass");
    let out = cli(&config, &["enable", "--minutes", "5"]);
    assert!(!out.status.success());
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        said.contains("the proxy refused: authentication") && said.contains("407"),
        "{said}"
    );
}

#[test]
fn behind_nginx_with_tls_the_agent_and_support_cli_use_one_https_port() {
    use assist_e2e::nginx::Nginx;
    let w = World::start_configured("", "trusted_proxies = [\"127.0.0.1/32\"]\n", "[]");
    let nginx = Nginx::start(w.dir.path(), w.jump.api_addr);
    let port = nginx.addr.port();

    // The agent registers and holds its tunnel through nginx alone: https:// and wss://.
    let config = w.client_config("agent");
    set_client_key(
        &config,
        &format!("jumphost = \"wss://localhost:{port}/v1/ssh\""),
    );
    set_client_key(&config, &format!("api_url = \"https://localhost:{port}\""));
    set_client_key(
        &config,
        &format!("api_ca_file = \"{}\"", nginx.cert.display()),
    );
    let _agent = start_agent(&config, "agent");
    let (code, _) = enable(&config, "5");
    wait_tunnel(&config, "connected");

    // The engineer too, trusting the test CA the usual way (SSL_CERT_FILE).
    let out = support_cli(
        &w,
        &format!("wss://localhost:{port}/v1/ssh"),
        &[
            "connect", SERIAL, "--code", &code, "--", "echo", "through", "nginx",
        ],
    )
    .env("SSL_CERT_FILE", &nginx.cert)
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "through nginx");

    let log = nginx.access_log();
    assert!(log.contains("POST /v1/register"), "{log}");
    assert!(log.contains("GET /v1/ssh HTTP/1.1\" 101"), "{log}");
    // Without the CA, support-cli refuses the certificate rather than going on.
    let out = support_cli(
        &w,
        &format!("wss://localhost:{port}/v1/ssh"),
        &["connect", SERIAL, "--code", &code, "--", "true"],
    )
    .env("SSL_CERT_FILE", "/dev/null")
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("TLS with wss://localhost"),
        "{}",
        text(&out.stderr)
    );
}
