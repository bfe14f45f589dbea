//! Hardening of the jump host's SSH side end to end (issue 7): the algorithms it offers
//! (stock `ssh -vv` and `ssh-audit`), and per-source login penalties and bans as the log,
//! the audit trail and `assist-jumphost status` show them.
// Test helpers fail the test by panicking, as the #[test] functions do.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use assist_e2e::{
    Jumphost, alice_policy, bin, connect_from, keygen, ssh_logging, text, until_closed, wait_until,
};

const SHORT: Duration = Duration::from_secs(30);
/// The harness's ssh at ssh's own log level (INFO), plus `args`; stdin closed.
fn ssh(args: &[&str]) -> Command {
    let mut cmd = ssh_logging("INFO", args);
    cmd.stdin(Stdio::null());
    cmd
}

// ---------------------------------------------------------------------------------------
// Algorithms

/// The names of one list of the server's KEXINIT as `ssh -vv` prints it.
fn server_list(debug: &str, label: &str) -> Vec<String> {
    let (_, server) = debug
        .split_once("peer server KEXINIT proposal")
        .unwrap_or_else(|| panic!("no server KEXINIT in {debug}"));
    let line = server
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("debug2: {label}: ")))
        .unwrap_or_else(|| panic!("no {label} in {server}"));
    line.split(',').map(str::to_owned).collect()
}

#[test]
fn offers_only_modern_algorithms_with_strict_kex() {
    let dir = tempfile::tempdir().unwrap();
    let alice = keygen(&dir.path().join("alice"));
    let jump = Jumphost::start(dir.path(), &alice_policy("", &alice));
    let port = jump.ssh_port();
    let out = ssh(&[
        "-vv",
        "-i",
        dir.path().join("alice").to_str().unwrap(),
        "-p",
        &port,
    ])
    .args(["alice@127.0.0.1", "true"])
    .output()
    .unwrap();
    let debug = text(&out.stderr);

    let kex = server_list(&debug, "KEX algorithms");
    assert_eq!(
        kex,
        [
            "mlkem768x25519-sha256",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "ext-info-s",
            "kex-strict-s-v00@openssh.com",
        ],
        "{debug}"
    );
    assert_eq!(server_list(&debug, "host key algorithms"), ["ssh-ed25519"]);
    for dir in ["ctos", "stoc"] {
        assert_eq!(
            server_list(&debug, &format!("ciphers {dir}")),
            [
                "chacha20-poly1305@openssh.com",
                "aes256-gcm@openssh.com",
                "aes128-gcm@openssh.com"
            ]
        );
        let macs = server_list(&debug, &format!("MACs {dir}"));
        assert!(
            macs.iter()
                .all(|m| m.starts_with("hmac-sha2-") && m.ends_with("-etm@openssh.com")),
            "{macs:?}"
        );
        assert_eq!(server_list(&debug, &format!("compression {dir}")), ["none"]);
    }
    // What stock OpenSSH actually negotiated, and that it logged in (the set is usable).
    assert!(
        debug.contains("kex: algorithm: curve25519-sha256")
            || debug.contains("kex: algorithm: mlkem768x25519-sha256"),
        "{debug}"
    );
    assert!(debug.contains("Authenticated to 127.0.0.1"), "{debug}");

    // A client that only speaks a weak algorithm gets nowhere.
    for (option, want) in [
        (
            "KexAlgorithms=diffie-hellman-group14-sha1",
            "no matching key exchange method",
        ),
        (
            "KexAlgorithms=diffie-hellman-group1-sha1",
            "no matching key exchange method",
        ),
        ("Ciphers=aes128-cbc", "no matching cipher"),
        ("Ciphers=aes256-ctr", "no matching cipher"),
        (
            "HostKeyAlgorithms=rsa-sha2-256",
            "no matching host key type",
        ),
        (
            "HostKeyAlgorithms=ecdsa-sha2-nistp256",
            "no matching host key type",
        ),
    ] {
        let out = ssh(&["-o", option, "-p", &port, "alice@127.0.0.1", "true"])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{option}");
        // ssh refuses some legacy names itself ("Bad SSH2 ... spec"); either way no session.
        assert!(
            err.contains(want) || err.contains("Bad SSH2"),
            "{option}: {err}"
        );
    }
}

/// `ssh-audit` (PyPI, installed by scripts/test.sh) finds no failure. It runs as a module so
/// the test does not depend on where pip put the script.
#[test]
fn ssh_audit_reports_no_failure() {
    let dir = tempfile::tempdir().unwrap();
    let alice = keygen(&dir.path().join("alice"));
    let jump = Jumphost::start(dir.path(), &alice_policy("", &alice));
    let out = Command::new("python3")
        .args([
            "-m",
            "ssh_audit",
            "-n",
            "--skip-rate-test",
            "-p",
            &jump.ssh_port(),
            "127.0.0.1",
        ])
        .output()
        .unwrap_or_else(|e| panic!("python3 not runnable ({e}); scripts/test.sh installs it"));
    let report = text(&out.stdout);
    // ssh-audit exits 0 when all is good, 2 with warnings, 3 with failures.
    assert_ne!(out.status.code(), Some(3), "{report}");
    assert!(!report.contains("[fail]"), "{report}");
    assert!(report.contains("kex-strict-s-v00@openssh.com"), "{report}");
    assert!(report.contains("(key) ssh-ed25519"), "{report}");
}

// ---------------------------------------------------------------------------------------
// Brute force

/// One login attempt as alice with `key` from source address `from`.
fn attempt(jump: &Jumphost, key: &Path, from: &str) -> String {
    let out = ssh(&[
        "-v",
        "-b",
        from,
        "-i",
        key.to_str().unwrap(),
        "-p",
        &jump.ssh_port(),
    ])
    .args(["alice@127.0.0.1", "true"])
    .output()
    .unwrap();
    text(&out.stderr)
}

fn reached_auth(stderr: &str) -> bool {
    stderr.contains("Permission denied") || stderr.contains("Authenticated to")
}

/// Fails logins from 127.0.0.2 with a wrong key until one gets to the key check (any
/// running penalty has ended), returning that attempt's output.
fn fail_once(jump: &Jumphost, wrong: &Path) -> String {
    let mut last = String::new();
    wait_until(SHORT, "a login attempt from 127.0.0.2 reaches auth", || {
        last = attempt(jump, wrong, "127.0.0.2");
        reached_auth(&last)
    });
    assert!(last.contains("Permission denied"), "{last}");
    last
}

fn refused_before_banner(stderr: &str) -> bool {
    !reached_auth(stderr)
        && (stderr.contains("Connection closed")
            || stderr.contains("Connection reset")
            || stderr.contains("kex_exchange_identification"))
}

#[test]
fn login_failures_escalate_to_a_ban_for_that_source_only() {
    let dir = tempfile::tempdir().unwrap();
    let alice = keygen(&dir.path().join("alice"));
    let wrong = dir.path().join("mallory");
    keygen(&wrong);
    let penalties = "[penalties]\nfree_failures = 1\npenalty = \"2s\"\nmax_failures = 4\n\
                     ban = \"1h\"\n";
    let jump = Jumphost::start(dir.path(), &alice_policy(penalties, &alice));
    let good = dir.path().join("alice");

    // The penalty starts when the failed connection has ended on the jump host's side, a
    // moment after the client gave up: wait for its log line.
    let logged = |line: &str| {
        wait_until(SHORT, line, || jump.proc.stderr().contains(line));
    };
    // The first failure is free: the next attempt is read.
    fail_once(&jump, &wrong);
    logged("failed login counted source=127.0.0.2 failures=1");
    let second = attempt(&jump, &wrong, "127.0.0.2");
    assert!(second.contains("Permission denied"), "{second}");
    // The second starts a 2 s penalty: connections from .2 are closed before the banner,
    // while 127.0.0.1 logs in as usual.
    logged("2 failed logins: connections refused for 2s");
    let blocked = attempt(&jump, &good, "127.0.0.2");
    assert!(refused_before_banner(&blocked), "{blocked}");
    let other = attempt(&jump, &good, "127.0.0.1");
    assert!(other.contains("Authenticated to"), "{other}");

    // The third doubles it (4 s), the fourth bans for an hour.
    fail_once(&jump, &wrong);
    logged("3 failed logins: connections refused for 4s");
    assert!(refused_before_banner(&attempt(&jump, &good, "127.0.0.2")));
    fail_once(&jump, &wrong);
    logged("4 failed logins: banned for 1h");
    // The operator sees the ban, and only for that source.
    let status = jump.status();
    let sources = status["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{status}");
    assert_eq!(sources[0]["source"], "127.0.0.2", "{status}");
    assert_eq!(sources[0]["state"], "banned", "{status}");
    assert_eq!(sources[0]["failures"], 4, "{status}");
    assert!(
        sources[0]["blocked_secs"].as_u64().unwrap() > 3500,
        "{status}"
    );
    let human = Command::new(bin("assist-jumphost"))
        .args(["status", "--config"])
        .arg(&jump.config)
        .output()
        .unwrap();
    let human = text(&human.stdout);
    assert!(
        human.contains("127.0.0.2")
            && human.contains("4 failed logins, banned, ")
            && human.contains(" left"),
        "{human}"
    );
    // Banned even with the right key, while 127.0.0.1 goes on logging in.
    let banned = attempt(&jump, &good, "127.0.0.2");
    assert!(refused_before_banner(&banned), "{banned}");
    let other = attempt(&jump, &good, "127.0.0.1");
    assert!(other.contains("Authenticated to"), "{other}");

    let audit =
        jump.sql("SELECT kind, source, outcome FROM audit_events WHERE kind = 'ssh.penalty'");
    assert!(
        audit.contains("127.0.0.2") && audit.contains("banned for 1h"),
        "{audit}"
    );
    assert!(!audit.contains("127.0.0.1|"), "{audit}");
}

/// Connections that never log in, against the real jump host with `login_grace = "1s"` and
/// `max_startups_per_source = 2` in jumphost.toml: a third from the same source is closed
/// before the banner while another source is served, the silent ones are closed at the
/// grace time, and each counts as a failed login (OpenSSH's grace-exceeded penalty).
#[test]
fn silent_ssh_connections_are_bounded_per_source_and_penalized_at_the_grace_time() {
    use std::io::Read;
    use std::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let alice = keygen(&dir.path().join("alice"));
    let penalties = "[penalties]\nfree_failures = 1\npenalty = \"1h\"\n";
    let jump = Jumphost::start_configured(
        dir.path(),
        &alice_policy(penalties, &alice),
        "127.0.0.1:0",
        "login_grace = \"1s\"\nmax_startups_per_source = 2\n",
    );
    let connect = |last: u8| connect_from(last, jump.ssh_addr);
    let until_closed = |stream: TcpStream| until_closed(stream, SHORT);
    let banner = |stream: &mut TcpStream| {
        let mut first = [0u8; 8];
        stream.set_read_timeout(Some(SHORT)).unwrap();
        stream.read_exact(&mut first).unwrap();
        first
    };

    let started = std::time::Instant::now();
    let mut one = connect(3);
    let mut two = connect(3);
    assert_eq!(&banner(&mut one), b"SSH-2.0-");
    assert_eq!(&banner(&mut two), b"SSH-2.0-");
    // Both hold their source's places: the third is closed without a banner, told why…
    let busy = text(&until_closed(connect(3)));
    assert_eq!(
        busy,
        "assist-jumphost: refused: too many connections are logging in at once; retry \
         shortly\r\n"
    );
    // …while another source gets one.
    let mut other = connect(4);
    assert_eq!(&banner(&mut other), b"SSH-2.0-");
    wait_until(SHORT, "the per-source refusal logged", || {
        jump.proc
            .stderr()
            .contains("too many unauthenticated connections from this source")
    });

    // The grace time from jumphost.toml applies (it was parsed but not used before).
    until_closed(one);
    until_closed(two);
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(20),
        "{closed_after:?}"
    );
    // Two grace-exceeded connections from .3 are two failed logins: penalized.
    wait_until(SHORT, "127.0.0.3 penalized", || {
        let status = jump.status();
        status["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["source"] == "127.0.0.3" && s["state"] == "penalized" && s["failures"] == 2)
    });
    let penalized = text(&until_closed(connect(3)));
    assert!(
        !penalized.contains("SSH-")
            && penalized.contains("127.0.0.3 is penalized after 2 failed logins: retry in "),
        "penalized: no banner, the reason: {penalized}"
    );
    // Audit rows are written off the connection's task (each a synced commit): wait for them.
    let audited = || {
        jump.sql(
            "SELECT outcome FROM audit_events WHERE kind = 'ssh.auth' AND source = '127.0.0.3'",
        )
    };
    wait_until(SHORT, "two grace-time refusals audited", || {
        audited()
            .matches("refused: no SSH banner within the login grace time")
            .count()
            == 2
    });
    assert_eq!(audited().lines().count(), 2, "{}", audited());
    until_closed(other);
}
