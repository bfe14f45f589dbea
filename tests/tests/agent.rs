//! The customer's agent end to end: the real `assist-client` and `assist-jumphost`, stock
//! OpenSSH as the customer's sshd and as the engineer's `ssh` hopping in with the derived key.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod agent_world;

use agent_world::{
    MARKER, SERIAL, SHORT, World, cli, enable, refused_by_jump_host, start_agent, status,
    wait_tunnel,
};
use assist_e2e::{Proc, bin, keygen, text, wait_until, write_derived_key};

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

    // A jump host key other than the pinned one fails enable (no code) and says why
    // (tests/tests/failures.rs has the rest of this story).
    let admin_pub = fs::read_to_string(w.path("admin.pub")).unwrap();
    fs::write(w.path("agent/data/jumphost_host_key"), admin_pub).unwrap();
    let _agent = start_agent(&config, "agent, wrong pin");
    let out = cli(&config, &["enable", "--minutes", "30"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(!text(&out.stdout).contains("code:"));
    assert!(
        text(&out.stderr).contains("key changed"),
        "{}",
        text(&out.stderr)
    );
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
        human.contains(
            "tunnel: disabled (last error: enabling failed: assistance was not \
                        enabled, no code is valid: the tunnel to the jump host"
        ),
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

/// The page's counts come from `/api/status`: a session's bytes show there while it runs, and
/// stay when it is ended by Stop rather than by its own end.
#[test]
fn a_sessions_bytes_show_while_it_runs_and_stay_after_stop() {
    let w = World::start();
    let config = w.client_config("agent");
    let _agent = start_agent(&config, "agent");
    let (code, _) = enable(&config, "10");
    wait_tunnel(&config, "connected");

    // 300,000 bytes to the engineer, then the session stays open (cat waits on our stdin).
    let mut engineer = agent_world::support_cli(
        &w,
        &w.jump.ssh_addr.to_string(),
        &[
            "connect",
            SERIAL,
            "--code",
            &code,
            "--",
            "sh",
            "-c",
            "head -c 300000 /dev/zero; cat",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = engineer.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut got);
        got.len()
    });
    let moved = |s: &serde_json::Value| {
        s["connections"]["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                (
                    x["ended"].is_null(),
                    x["bytes_to_engineer"].as_u64().unwrap_or(0),
                )
            })
            .collect::<Vec<_>>()
    };
    wait_until(SHORT, "the bytes to show while the session runs", || {
        moved(&status(&config))
            .iter()
            .any(|(open, bytes)| *open && *bytes >= 300_000)
    });

    // Stop ends it; its count stays on the page.
    let out = cli(&config, &["disable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = moved(&status(&config));
    assert!(
        after
            .iter()
            .any(|(open, bytes)| !*open && *bytes >= 300_000),
        "{after:?}"
    );
    drop(engineer.stdin.take());
    let _ = engineer.wait();
    assert!(reader.join().unwrap() >= 300_000);
}

/// The name on the customer's page is the jump host's word: an engineer who tries to open
/// the notes port (to write a note naming someone else) is refused, and the page keeps
/// showing who really connected.
#[test]
fn an_engineer_cannot_open_the_notes_port_to_forge_a_name() {
    let w = World::start();
    let config = w.client_config("agent");
    let _agent = start_agent(&config, "agent");
    let (code, _) = enable(&config, "10");
    wait_tunnel(&config, "connected");

    // alice (an engineer in the policy) asks for SN-0001:2 and sends a forged note.
    let forged = r#"{"engineer":"the-vendors-ceo","via":{"kind":"key","comment":"ceo","fingerprint":"x"},"source":"127.0.0.1:1"}"#;
    let mut forge = assist_e2e::ssh(&[
        "-i",
        w.path("alice").to_str().unwrap(),
        "-p",
        &w.jump.ssh_port(),
        "-W",
        &format!("{SERIAL}:{}", assist_proto::limits::NOTES_PORT),
        "alice@127.0.0.1",
    ]);
    let mut child = forge
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = writeln!(stdin, "{forged}");
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the notes port was opened");
    wait_until(SHORT, "the refusal in the audit trail", || {
        w.jump
            .sql("SELECT outcome FROM audit_events WHERE kind = 'ssh.channel' AND who = 'alice'")
            .contains(
                "refused direct-tcpip to SN-0001:2: port 2 is reserved for the jump host's notes",
            )
    });

    // A real hop right after, from a connection of alice's: named as the jump host knows her.
    let mut engineer = agent_world::support_cli(
        &w,
        &w.jump.ssh_addr.to_string(),
        &["connect", SERIAL, "--code", &code, "--", "sleep", "120"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_until(SHORT, "the engineer to show by name", || {
        status(&config)["connections"]["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["ended"].is_null() && s["engineer"] == "alice (vendor key 'test')")
    });
    let s = status(&config).to_string();
    assert!(!s.contains("the-vendors-ceo"), "{s}");
    let _ = engineer.kill();
    let _ = engineer.wait();
}

/// The customer's history outlives the window and the agent: a window that ran out, with a
/// connection that moved bytes, and a window cut by `kill -9` with a connection open, are
/// both in `assist-client history --json` after a restart, with the engineer by name.
#[test]
fn the_history_keeps_windows_and_connections_across_restarts_and_crashes() {
    let w = World::start_with("[keys]\nmax_assistance = \"15s\"\n");
    let config = w.client_config("agent");
    let mut agent = start_agent(&config, "agent");

    // Window 1 runs out after a connection moved 5000 bytes to the engineer.
    let (code, _) = enable(&config, "10");
    wait_tunnel(&config, "connected");
    let out = agent_world::support_cli(
        &w,
        &w.jump.ssh_addr.to_string(),
        &[
            "connect",
            SERIAL,
            "--code",
            &code,
            "--",
            "head",
            "-c",
            "5000",
            "/dev/zero",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 5000);
    wait_until(SHORT, "the window to run out", || {
        status(&config)["enabled"] == false
    });

    // Window 2 is cut by kill -9 while alice holds a session.
    let (code, _) = enable(&config, "10");
    wait_tunnel(&config, "connected");
    let mut held = agent_world::support_cli(
        &w,
        &w.jump.ssh_addr.to_string(),
        &["connect", SERIAL, "--code", &code, "--", "sleep", "60"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_until(SHORT, "the session to open", || {
        status(&config)["connections"]["active"] == 1
    });
    agent.kill9();
    let _ = held.kill();
    let _ = held.wait();
    let _agent = start_agent(&config, "agent again");

    let out = cli(&config, &["history", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let windows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let windows = windows.as_array().unwrap();
    assert_eq!(windows.len(), 2, "{windows:?}");
    let (first, second) = (&windows[0], &windows[1]);
    assert_eq!(first["by"], "command line", "{first}");
    assert!(first["user"].is_string(), "{first}");
    assert_eq!(first["reason"], "the window's time was up", "{first}");
    let c = &first["connections"][0];
    assert_eq!(c["engineer"], "alice (vendor key 'test')", "{c}");
    assert_eq!(c["service"], "ssh", "{c}");
    assert!(
        c["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{c}"
    );
    assert!(c["bytes_to_engineer"].as_u64().unwrap() >= 5000, "{c}");
    assert!(c["bytes_from_engineer"].as_u64().unwrap() > 0, "{c}");
    assert!(c["end"].is_string() && c["how"].is_string(), "{c}");
    // What the crash left open is closed, and says so.
    assert!(
        second["reason"].as_str().unwrap().contains("crash or kill"),
        "{second}"
    );
    let c = &second["connections"][0];
    assert_eq!(c["engineer"], "alice (vendor key 'test')", "{c}");
    assert!(c["how"].as_str().unwrap().contains("crash or kill"), "{c}");

    let out = cli(&config, &["history"]);
    let human = text(&out.stdout);
    assert!(
        human.contains("alice (vendor key 'test') from 127.0.0.1 → ssh")
            && human.contains("the window's time was up")
            && human.contains("bytes to the engineer"),
        "{human}"
    );
}
