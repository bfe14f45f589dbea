//! Issue 17, end to end with the real programs: every failure tells the person what
//! happened and what to do next, with the exit status it promises and nothing changed.
//! Each test triggers one failure an operator met and asserts the words that say what to do.
// Test helpers fail the test by panicking, as the #[test] functions do.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use assist_e2e::{Jumphost, Proc, alice_policy, bin, keygen, text};

mod agent_world;
use agent_world::{
    MARKER, SERIAL, World, cli as agent_cli, enable, set_client_key, start_agent, status,
    support_cli,
};

const SHORT: Duration = Duration::from_secs(30);
/// A well-formed code for commands that must fail before any code is checked.
const CODE: &str = "7K3QM-2XPD9";

/// `support-cli ARGS…` with a clean environment: `HOME` in `dir`, the jump host at `jump`
/// and `identity` as the engineer's key, both from the environment; no engineer name
/// unless `args` or `env` give one.
fn cli(dir: &Path, jump: &str, identity: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(bin("support-cli"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("ASSIST_JUMPHOST", jump)
        .env("ASSIST_IDENTITY", identity)
        .envs(env.iter().copied())
        .arg("--known-hosts")
        .arg(dir.join("known_hosts"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `support-cli --engineer alice connect SN-0001 … -- true` with `key`.
fn alice_connects(dir: &Path, jump: &Jumphost, key: &Path) -> Output {
    cli(
        dir,
        &jump.ssh_addr.to_string(),
        key,
        &[],
        &[
            "--engineer",
            "alice",
            "connect",
            "SN-0001",
            "--code",
            CODE,
            "--",
            "true",
        ],
    )
}

/// Waits until the jump host has logged `line` (a penalty starts when the failed
/// connection has ended on its side, a moment after the client gave up).
fn logged(jump: &Jumphost, line: &str) {
    let deadline = std::time::Instant::now() + SHORT;
    while !jump.proc.stderr().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {line:?} in the jump host's log: {}",
            jump.proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// 1. A code is only shown when it can work.

/// `assist-client enable` for `config`, timed.
fn enable_timed(config: &Path) -> (Output, Duration) {
    let started = std::time::Instant::now();
    let out = agent_cli(config, &["enable", "--minutes", "30"]);
    (out, started.elapsed())
}

/// Enable failed with `words`, showed no code, left no key line, and status says why.
fn enable_refused(w: &World, config: &Path, out: &Output, words: &str) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("code:"), "{stdout}");
    assert!(
        stderr
            .contains("assistance was not enabled, no code is valid: the tunnel to the jump host"),
        "{stderr}"
    );
    assert!(stderr.contains(words), "{stderr}");
    assert!(!w.keys_file().contains(MARKER), "{}", w.keys_file());
    assert_eq!(w.keys_file().as_bytes(), w.original_keys.as_slice());
    let s = status(config);
    assert_eq!(s["enabled"], false, "{s}");
    let last = s["tunnel"]["last_error"].as_str().unwrap_or_default();
    assert!(
        last.starts_with("enabling failed: ") && last.contains(words),
        "{s}"
    );
}

#[test]
fn a_wrong_jumphost_fingerprint_fails_enable_with_no_code() {
    let w = World::start();
    let config = w.client_config("agent");
    let wrong = format!("SHA256:{}", "A".repeat(43));
    set_client_key(&config, &format!("jumphost_fingerprint = \"{wrong}\""));
    let _agent = start_agent(&config, "agent");
    let (out, took) = enable_timed(&config);
    eprintln!("enable with a wrong jumphost_fingerprint failed after {took:?}");
    enable_refused(&w, &config, &out, "the jump host's key changed");
    assert!(
        text(&out.stderr).contains("jumphost_fingerprint"),
        "{}",
        text(&out.stderr)
    );

    // The right fingerprint: the code comes once the tunnel holds, and works at once.
    let right = w.jump.host_key_fingerprint.trim().to_owned();
    set_client_key(&config, &format!("jumphost_fingerprint = \"{right}\""));
    drop(_agent);
    let _agent = start_agent(&config, "agent, right pin");
    let (out, took) = enable_timed(&config);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("code: "), "{stdout}");
    assert!(!stdout.contains("still connecting"), "{stdout}");
    eprintln!("enable that waited for the tunnel took {took:?}");
    assert_eq!(status(&config)["tunnel"]["state"], "connected");
}

#[test]
fn a_jump_host_that_refuses_the_device_fails_enable_with_no_code() {
    // Devices only from 10.98.0.0/16: the agent on 127.0.0.1 registers (the API does not
    // look at client_cidrs) but its SSH login is refused.
    let w = World::start_configured("", "", "[\"10.98.0.0/16\"]");
    let config = w.client_config("agent");
    let _agent = start_agent(&config, "agent");
    let (out, took) = enable_timed(&config);
    eprintln!(
        "enable refused by the jump host failed after {took:?}: {}",
        text(&out.stderr)
    );
    enable_refused(
        &w,
        &config,
        &out,
        "the jump host refused this device: devices are not allowed from 127.0.0.1 (not in \
         client_cidrs); ask the vendor's jump host admin",
    );
}

#[test]
fn a_penalized_device_address_fails_enable_with_the_penalty() {
    let w = World::start_with(
        "[penalties]\nfree_failures = 0\npenalty = \"1h\"\nmax_failures = 5\nban = \"2h\"\n",
    );
    // An engineer with the wrong key on the customer's network (here: the same address).
    let out = Command::new(bin("support-cli"))
        .args([
            "--jumphost",
            &w.jump.ssh_addr.to_string(),
            "--engineer",
            "alice",
        ])
        .arg("--identity")
        .arg(w.path("admin"))
        .arg("--known-hosts")
        .arg(w.path("wrong_known_hosts"))
        .args(["connect", SERIAL, "--code", CODE, "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    logged(&w.jump, "1 failed logins: connections refused for 1h");
    let config = w.client_config("agent");
    let _agent = start_agent(&config, "agent");
    let (out, _) = enable_timed(&config);
    enable_refused(
        &w,
        &config,
        &out,
        "the jump host refused the connection: your address 127.0.0.1 is penalized after 1 \
         failed login: retry in 3",
    );
}

#[test]
fn a_slow_jump_host_shows_the_code_saying_the_tunnel_is_still_connecting() {
    let w = World::start();
    let config = w.client_config("agent");
    // A listener that never accepts: the TCP connection is made, the SSH banner never comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    set_client_key(&config, &format!("jumphost = \"{addr}\""));
    let _agent = start_agent(&config, "agent");
    let (out, took) = enable_timed(&config);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("code: "), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "tunnel still connecting: no answer from the jump host {addr} within 8 s; the code \
             works once `assist-client status` says connected"
        )),
        "{stdout}"
    );
    let wait = assist_proto::limits::ENABLE_TUNNEL_WAIT;
    assert!(took >= wait && took < wait + SHORT, "{took:?}");
    assert!(w.keys_file().contains(MARKER));
    let out = agent_cli(&config, &["disable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(silent);
}

// ---------------------------------------------------------------------------------------
// 2. Penalties and bans say so; a port that does not speak SSH is told apart.

#[test]
fn a_penalized_engineer_is_told_the_penalty_and_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let alice = keygen(&d.join("alice"));
    keygen(&d.join("mallory"));
    let penalties =
        "[penalties]\nfree_failures = 1\npenalty = \"1h\"\nmax_failures = 5\nban = \"2h\"\n";
    let jump = Jumphost::start(d, &alice_policy(penalties, &alice));

    for n in 1..=2 {
        let out = alice_connects(d, &jump, &d.join("mallory"));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{err}");
        assert!(err.contains("does not know engineer alice"), "{err}");
        match n {
            1 => logged(&jump, "failed login counted source=127.0.0.1 failures=1"),
            _ => logged(&jump, "2 failed logins: connections refused for 1h"),
        }
    }
    // The right key now: refused, with the penalty's words rather than an allowlist guess.
    let out = alice_connects(d, &jump, &d.join("alice"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(
            "the jump host refused the connection: your address 127.0.0.1 is penalized after \
             2 failed logins: retry in 3"
        ),
        "{err}"
    );
    assert!(
        err.contains("s; a wrong key or engineer name counts"),
        "{err}"
    );
    assert!(!err.contains("support_cidrs"), "{err}");
}

#[test]
fn a_banned_engineer_is_told_until_when() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let alice = keygen(&d.join("alice"));
    keygen(&d.join("mallory"));
    let penalties = "[penalties]\nfree_failures = 0\nmax_failures = 1\nban = \"2h\"\n";
    let jump = Jumphost::start(d, &alice_policy(penalties, &alice));

    let out = alice_connects(d, &jump, &d.join("mallory"));
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    logged(&jump, "1 failed logins: banned for 2h");
    let out = alice_connects(d, &jump, &d.join("alice"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(
            "the jump host refused the connection: your address 127.0.0.1 is banned after 1 \
             failed login, until 20"
        ),
        "{err}"
    );
    assert!(
        err.contains("left); a wrong key or engineer name counts as a failed login"),
        "{err}"
    );
    // The ban's end is a time the person can read, about two hours from now.
    assert!(err.contains("(1h 59m") || err.contains("(2h"), "{err}");
}

#[test]
fn an_address_outside_the_allowlists_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let alice = keygen(&d.join("alice"));
    let policy = format!(
        "[allowlist]\nsupport_cidrs = [\"10.99.0.0/16\"]\nclient_cidrs = [\"10.98.0.0/16\"]\n\n\
         [serials]\nallow = [\"SN-*\"]\n\n[[support]]\nname = \"alice\"\npublic_key = \"{alice}\"\n"
    );
    let jump = Jumphost::start(d, &policy);
    let out = alice_connects(d, &jump, &d.join("alice"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(
            "the jump host refused the connection: your address 127.0.0.1 is not allowed here \
             (not in the jump host's support_cidrs"
        ),
        "{err}"
    );
    assert!(err.contains("ask the jump host admin to add it"), "{err}");
}

#[test]
fn the_api_port_is_told_apart_from_the_ssh_port() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let alice = keygen(&d.join("alice"));
    let jump = Jumphost::start(d, &alice_policy("", &alice));
    let api = jump.api_addr.to_string();
    let out = cli(
        d,
        &api,
        &d.join("alice"),
        &[],
        &["--engineer", "alice", "connect", "SN-0001", "--code", CODE],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(&format!(
            "{api} answered HTTP, not SSH: is that the API port? Give the jump host's SSH port"
        )),
        "{err}"
    );
    // Nothing was recorded as a host key of that address.
    assert!(!d.join("known_hosts").exists());
}

// ---------------------------------------------------------------------------------------
// 3. The engineer learns why a session ended.

/// `support-cli connect SERIAL -- sh -c 'echo started; sleep 60'`, once the command runs.
fn engineer_session(w: &World, code: &str) -> Proc {
    let cmd = support_cli(
        w,
        &w.jump.ssh_addr.to_string(),
        &[
            "connect",
            SERIAL,
            "--code",
            code,
            "--",
            "echo started; sleep 60",
        ],
    );
    let mut session = Proc::spawn(cmd, "engineer");
    session.wait_line("started", SHORT);
    session
}

#[test]
fn the_engineer_is_told_that_the_customer_stopped_assistance() {
    let w = World::start();
    let config = w.client_config("agent");
    let _agent = start_agent(&config, "agent");
    let (code, _) = enable(&config, "30");
    let mut session = engineer_session(&w, &code);
    // A stock OpenSSH engineer on the same device at the same time.
    let derived = w.path("derived");
    assist_e2e::write_derived_key(&derived, SERIAL, &code);
    // Its jump hop logs at INFO, where OpenSSH reports unexpected extended data.
    let proxy = format!(
        "ProxyCommand=ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -i {} -p {} -W %h:%p \
         alice@127.0.0.1",
        w.path("alice").display(),
        w.jump.ssh_port()
    );
    let target = format!("root@{SERIAL}");
    let stock_cmd = assist_e2e::ssh(&[
        "-o",
        &proxy,
        "-i",
        derived.to_str().unwrap(),
        &target,
        "echo started; sleep 60",
    ]);
    let mut stock = Proc::spawn(stock_cmd, "stock ssh");
    stock.wait_line("started", SHORT);

    let out = agent_cli(&config, &["disable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exit = session.wait_exit(SHORT);
    let err = session.stderr();
    assert_eq!(exit.code(), Some(255), "{err}");
    assert!(
        err.contains("the session with SN-0001 ended: the customer stopped remote assistance"),
        "{err}\nagent: {}\njump host: {}",
        _agent.stderr(),
        w.jump.proc.stderr()
    );
    assert!(!err.contains("without an exit status"), "{err}");
    // Stock ssh is not sent what it cannot show (it would log "bad ext data").
    let exit = stock.wait_exit(SHORT);
    let err = stock.stderr();
    assert!(!exit.success(), "{err}");
    assert!(!err.contains("bad ext data"), "{err}");
}

#[test]
fn the_engineer_is_told_that_the_window_ended_and_when() {
    // Long enough for a debug build on a loaded machine to log in within the window.
    let w = World::start_with("[keys]\nmax_assistance = \"20s\"\n");
    let config = w.client_config("agent");
    let _agent = start_agent(&config, "agent");
    let (code, until) = enable(&config, "30");
    let mut session = engineer_session(&w, &code);
    let exit = session.wait_exit(SHORT + SHORT);
    let err = session.stderr();
    assert_eq!(exit.code(), Some(255), "{err}");
    // until is RFC 3339 UTC (2026-12-02T05:40:12Z): the engineer reads 05:40 UTC.
    let hh_mm = &until[11..16];
    assert!(
        err.contains(&format!(
            "the session with SN-0001 ended: the assistance window ended at {hh_mm} UTC"
        )),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Where a name came from.

#[test]
fn an_unknown_engineer_name_says_it_came_from_user_and_how_to_pass_another() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let alice = keygen(&d.join("alice"));
    let jump = Jumphost::start(d, &alice_policy("", &alice));
    let out = cli(
        d,
        &jump.ssh_addr.to_string(),
        &d.join("alice"),
        &[("USER", "carol")],
        &["connect", "SN-0001", "--code", CODE, "--", "true"],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(
            "the jump host does not know engineer carol with this key (carol came from $USER"
        ),
        "{err}"
    );
    assert!(
        err.contains("pass --engineer NAME, set ASSIST_ENGINEER, or put engineer = \"NAME\" in"),
        "{err}"
    );
    // Given by ASSIST_ENGINEER, the message names that instead.
    let out = cli(
        d,
        &jump.ssh_addr.to_string(),
        &d.join("alice"),
        &[("USER", "carol"), ("ASSIST_ENGINEER", "dave")],
        &["connect", "SN-0001", "--code", CODE, "--", "true"],
    );
    let err = text(&out.stderr);
    assert!(err.contains("dave came from ASSIST_ENGINEER"), "{err}");
}

#[test]
fn forward_says_whether_the_device_is_online_and_keeps_listening() {
    use std::io::Read;
    let w = World::start();
    let config = w.client_config("agent");
    let _agent = start_agent(&config, "agent");
    let jump = w.jump.ssh_addr.to_string();
    let forward = |label: &str| {
        let cmd = support_cli(
            &w,
            &jump,
            &[
                "forward",
                SERIAL,
                "--service",
                "ssh",
                "--listen",
                "127.0.0.1:0",
            ],
        );
        let mut proc = Proc::spawn(cmd, label);
        let line = proc.wait_line("forwarding ", SHORT);
        let addr: std::net::SocketAddr = line.split_whitespace().next().unwrap().parse().unwrap();
        (proc, addr)
    };
    // Before the customer enables assistance: said, and the listener stays.
    let (mut early, addr) = forward("forward before");
    let said = early.stderr();
    assert!(
        said.contains(
            "device SN-0001 is not connected yet (the customer has not enabled assistance, or \
             its tunnel is down); listening anyway"
        ),
        "{said}"
    );
    assert!(early.is_running(), "{said}");
    enable(&config, "30");
    // Once the device is online the same listener reaches its sshd.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SHORT)).unwrap();
    let mut banner = [0u8; 8];
    stream.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    // Started while it is online, it says so.
    let (late, _) = forward("forward after");
    assert!(
        late.stderr().contains("device SN-0001 is online"),
        "{}",
        late.stderr()
    );
}

// ---------------------------------------------------------------------------------------
// 5. Stock ssh without guesswork.

#[test]
fn key_writes_an_ssh_config_and_a_command_that_work_as_printed() {
    let w = World::start();
    let config = w.client_config("agent");
    let _agent = start_agent(&config, "agent");
    let (code, _) = enable(&config, "30");
    let out_file = w.path("sn1.key");
    let out = support_cli(
        &w,
        &w.jump.ssh_addr.to_string(),
        &[
            "key",
            SERIAL,
            "--code",
            &code,
            "--out",
            out_file.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let note = text(&out.stderr);
    assert!(out.status.success(), "{note}");
    let ssh_config = w.path("sn1.key.ssh_config");
    let written = std::fs::read_to_string(&ssh_config).unwrap();
    // The real jump host, engineer, keys and known_hosts, no placeholder left.
    for part in [
        format!("Port {}", w.jump.ssh_port()),
        "User alice".to_owned(),
        format!("IdentityFile {}", w.path("alice").display()),
        format!(
            "UserKnownHostsFile {}",
            w.path("engineer_known_hosts").display()
        ),
        format!("IdentityFile {}", out_file.display()),
        format!("UserKnownHostsFile {}.known_hosts", out_file.display()),
    ] {
        assert!(written.contains(&part), "no {part:?} in {written}");
    }
    assert!(
        note.contains(&format!("ssh -F {} {SERIAL}", ssh_config.display())),
        "{note}"
    );

    // ssh -F FILE.ssh_config SERIAL, as printed, with nothing else from the environment.
    let ssh_f = |args: &[&str]| {
        Command::new("ssh")
            .arg("-F")
            .arg(&ssh_config)
            .args(args)
            .env("HOME", w.path("empty-home"))
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = ssh_f(&[SERIAL, "echo via-config-$((2+3))"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "via-config-5\n");
    // scp -F too (-O: the test's sshd has no sftp subsystem, which scp uses by default).
    let local = w.path("local.txt");
    std::fs::write(&local, "copied by scp\n").unwrap();
    let remote = w.path("remote.txt");
    let out = Command::new("scp")
        .arg("-O")
        .arg("-F")
        .arg(&ssh_config)
        .arg(&local)
        .arg(format!("{SERIAL}:{}", remote.display()))
        .env("HOME", w.path("empty-home"))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "scp: {}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&remote).unwrap(), "copied by scp\n");

    // The one-line command printed for use without the file, run as printed.
    let command = note
        .split("or, without the config file:")
        .nth(1)
        .and_then(|rest| rest.lines().map(str::trim).find(|l| l.starts_with("ssh ")))
        .unwrap_or_else(|| panic!("no command in {note}"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} echo one-liner"))
        .env("HOME", w.path("empty-home"))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{command}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one-liner\n");
}

// ---------------------------------------------------------------------------------------
// 6. Errors read as sentences.

#[test]
fn a_jump_host_address_without_a_port_says_which_port_was_assumed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(&d.join("alice"));
    // Whatever answers on port 22 of this machine (usually nothing), the CLI says it
    // assumed 22.
    let out = cli(
        d,
        "localhost",
        &d.join("alice"),
        &[],
        &["--engineer", "alice", "connect", "SN-0001", "--code", CODE],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(
            "the jump host address \"localhost\" names no port: assumed 22 (the SSH default)"
        ),
        "{err}"
    );
}

/// Lines of `stderr` that are not empty.
fn lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn errors_are_one_sentence_without_a_backtrace_unless_debug_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let run = |program: &str, args: &[&str], debug: bool| {
        let mut cmd = Command::new(bin(program));
        cmd.args(args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null());
        if debug {
            cmd.env("ASSIST_DEBUG", "1");
        }
        cmd.output().unwrap()
    };
    for (program, args, starts) in [
        (
            "assist-client",
            vec!["enable", "--config", missing],
            "assist-client: cannot load the configuration",
        ),
        (
            "assist-jumphost",
            vec!["serve", "--config", missing],
            "assist-jumphost: ",
        ),
        (
            "support-cli",
            vec![
                "--jumphost",
                "127.0.0.1:1",
                "connect",
                "SN-1",
                "--code",
                "bad",
            ],
            "support-cli: ",
        ),
    ] {
        let out = run(program, &args, false);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{program}: {err}");
        let said = lines(&err);
        assert!(said.len() <= 2, "{program}: {err}");
        assert!(said.last().unwrap().starts_with(starts), "{program}: {err}");
        for noise in ["backtrace", "Caused by", "Error: ", "panicked"] {
            assert!(!err.contains(noise), "{program}: {err}");
        }
        // Asked for, the chain comes one cause a line.
        let debug = text(&run(program, &args, true).stderr);
        assert!(
            debug.starts_with(&err.trim_end().to_string()) && debug.len() > err.len(),
            "{program}: {debug}"
        );
    }
    // `--debug` does the same as ASSIST_DEBUG=1.
    let flagged = run(
        "assist-client",
        &["--debug", "enable", "--config", missing],
        false,
    );
    assert!(
        text(&flagged.stderr).contains("Caused by"),
        "{}",
        text(&flagged.stderr)
    );
}

#[test]
fn every_config_option_has_a_help_line() {
    let commands: [(&str, &[&str]); 9] = [
        ("assist-client", &["run"]),
        ("assist-client", &["enable"]),
        ("assist-client", &["disable"]),
        ("assist-client", &["status"]),
        ("assist-client", &["page"]),
        ("assist-jumphost", &["serve"]),
        ("assist-jumphost", &["status"]),
        ("assist-jumphost", &["serial", "reset"]),
        ("assist-jumphost", &["serial", "secret"]),
    ];
    for (program, sub) in commands {
        let out = Command::new(bin(program))
            .args(sub)
            .arg("--help")
            .output()
            .unwrap();
        let help = text(&out.stdout);
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with("--config"))
            .unwrap_or_else(|| panic!("{program} {sub:?}: {help}"));
        let words = line
            .trim_start()
            .trim_start_matches("--config <CONFIG>")
            .trim();
        assert!(
            words.len() > 10 && (words.contains("client.toml") || words.contains("jumphost.toml")),
            "{program} {sub:?}: {line}"
        );
    }
}
