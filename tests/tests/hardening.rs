//! Hardening of the jump host end to end (issue 7): the SSH algorithms it offers (stock
//! `ssh -vv` and `ssh-audit`), per-source login penalties and bans, the registration rate
//! limit, hostile registration bodies, and secrets staying out of every log.
// Test helpers fail the test by panicking, as the #[test] functions do.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use assist_e2e::{
    Jumphost, Proc, READY_TIMEOUT, Sshd, bin, http, keygen, wait_until, write_client_config,
    write_derived_key,
};

const SHORT: Duration = Duration::from_secs(30);
const SSH_OPTS: &str = "-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o ConnectTimeout=20";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Stock ssh with the options above plus `args`; stdin closed.
fn ssh(args: &[&str]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(SSH_OPTS.split_whitespace()).args(args);
    cmd.stdin(Stdio::null());
    cmd
}

fn policy(extra: &str, alice: &str) -> String {
    format!(
        "[allowlist]\nsupport_cidrs = [\"127.0.0.0/8\"]\n\n[serials]\nallow = [\"SN-*\"]\n\n\
         [[support]]\nname = \"alice\"\npublic_key = \"{alice}\"\n\n{extra}"
    )
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
    let jump = Jumphost::start(dir.path(), &policy("", &alice));
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
    let jump = Jumphost::start(dir.path(), &policy("", &alice));
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
    let jump = Jumphost::start(dir.path(), &policy(penalties, &alice));
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
    assert!(sources[0]["blocked_secs"].as_u64().unwrap() > 3500, "{status}");
    let human = Command::new(bin("assist-jumphost"))
        .args(["status", "--config"])
        .arg(&jump.config)
        .output()
        .unwrap();
    let human = text(&human.stdout);
    assert!(
        human.contains("127.0.0.2") && human.contains("4 failed logins, banned, ") && human.contains(" left"),
        "{human}"
    );
    // Banned even with the right key, while 127.0.0.1 goes on logging in.
    let banned = attempt(&jump, &good, "127.0.0.2");
    assert!(refused_before_banner(&banned), "{banned}");
    let other = attempt(&jump, &good, "127.0.0.1");
    assert!(other.contains("Authenticated to"), "{other}");

    let db = jump.data_dir.join("assist.db");
    let audit = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT kind, source, outcome FROM audit_events WHERE kind = 'ssh.penalty'")
        .output()
        .unwrap();
    let audit = text(&audit.stdout);
    assert!(
        audit.contains("127.0.0.2") && audit.contains("banned for 1h"),
        "{audit}"
    );
    assert!(!audit.contains("127.0.0.1|"), "{audit}");
}

// ---------------------------------------------------------------------------------------
// Registration API

/// `POST /v1/register` with `body` from source address `from`, via curl.
fn register_from(api: SocketAddr, from: &str, body: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--interface",
            from,
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--data-binary", body])
        .arg(format!("http://{api}/v1/register"))
        .output()
        .unwrap();
    let raw = text(&out.stdout);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    (
        status.unwrap_or_else(|| panic!("{raw}")),
        head.to_owned(),
        body.to_owned(),
    )
}

fn register_body(serial: &str, key: &str) -> String {
    serde_json::json!({ "serial": serial, "public_key": key }).to_string()
}

#[test]
fn registrations_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let alice = keygen(&dir.path().join("alice"));
    let key = keygen(&dir.path().join("dev"));
    let penalties = "[penalties]\nregister_burst = 3\nregister_per_minute = 1\n";
    let jump = Jumphost::start(dir.path(), &policy(penalties, &alice));
    let api = jump.api_addr;
    for n in 1..=3 {
        let (status, _, body) =
            register_from(api, "127.0.0.1", &register_body(&format!("SN-{n}"), &key));
        assert_eq!(status, 201, "{body}");
    }
    let (status, head, body) = register_from(api, "127.0.0.1", &register_body("SN-4", &key));
    assert_eq!(status, 429, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("too many registrations from 127.0.0.1"),
        "{message}"
    );
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    // Another address has its own bucket, and the refused request stored nothing.
    let (status, _, body) = register_from(api, "127.0.0.2", &register_body("SN-4", &key));
    assert_eq!(status, 201, "SN-4 was new: {body}");
}

/// Sends `raw` bytes as they are, returns the status and body.
/// `half_close` sends EOF after the bytes (a truncated body ends there); hyper treats EOF
/// after a complete request as the client giving up, so complete ones keep it open.
fn raw_request(addr: SocketAddr, raw: &[u8], half_close: bool) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SHORT)).unwrap();
    let _ = stream.write_all(raw);
    if half_close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = text(&answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (
        status.unwrap_or_else(|| {
            panic!(
                "no status in {answer:?} for {:?}",
                text(&raw[..raw.len().min(150)])
            )
        }),
        body,
    )
}

fn post_head(addr: SocketAddr, length: &str) -> String {
    format!(
        "POST /v1/register HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[test]
fn hostile_registrations_are_refused_with_a_message_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let alice = keygen(&dir.path().join("alice"));
    let key = keygen(&dir.path().join("dev"));
    let other = keygen(&dir.path().join("other"));
    // A generous bucket: this test is about content, not rate.
    let penalties = "[penalties]\nregister_burst = 1000\n";
    let jump = Jumphost::start(dir.path(), &policy(penalties, &alice));
    let api = jump.api_addr;
    assert_eq!(jump.register("SN-KEEP", &key).0, 201);
    let files_before = list(&jump.dir);

    let j = |v: serde_json::Value| v.to_string();
    let (key_b64, _) = key.split_once(' ').map(|(_, rest)| (rest, ())).unwrap();
    let mut bodies: Vec<String> = [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        "SN-1/../../x",
        "SN-1\\x",
        "SN-1\n2",
        "SN-1\r\nX-Injected: 1",
        "SN-1\u{0}",
        "SN-\u{1b}[31mred",
        "SN-1'; DROP TABLE bindings;--",
        "SN-1\" OR \"1\"=\"1",
        "SN-1 OR 1=1",
        "SN-%2e%2e",
        "",
        " SN-1",
        "SN-1 ",
        "SN-ü",
    ]
    .iter()
    .map(|s| j(serde_json::json!({"serial": s, "public_key": other})))
    .collect();
    bodies.push(j(
        serde_json::json!({"serial": format!("SN-{}", "A".repeat(5000)), "public_key": other}),
    ));
    for k in [
        "",
        "ssh-ed25519",
        "ssh-ed25519 AAAA'; DROP TABLE bindings;--",
        &format!("{other}\nssh-ed25519 {key_b64}"),
        &format!("{other} comment\u{1b}[2J"),
        &format!("{other} {}", "c".repeat(10_000)),
        "../../root/.ssh/id_ed25519",
        &other.replace("ssh-ed25519", "ssh-rsa"),
    ] {
        bodies.push(j(serde_json::json!({"serial": "SN-1", "public_key": k})));
    }
    for v in [
        serde_json::json!({"serial": 1, "public_key": other}),
        serde_json::json!({"serial": null, "public_key": other}),
        serde_json::json!({"serial": ["SN-1"], "public_key": other}),
        serde_json::json!({"serial": {"$ne": ""}, "public_key": other}),
        serde_json::json!({"serial": "SN-1", "public_key": 42}),
        serde_json::json!({"serial": "SN-1", "public_key": other, "rotation_proof": 7}),
        serde_json::json!({"serial": "SN-1", "public_key": other, "rotation_proof": "junk"}),
        serde_json::json!({"serial": "SN-1", "public_key": other, "admin": true}),
        serde_json::json!({"serial": "SN-1"}),
        serde_json::json!([]),
        serde_json::json!(null),
        serde_json::json!("SN-1"),
    ] {
        bodies.push(j(v));
    }
    bodies.push(format!(
        r#"{{"serial":"SN-1","serial":"SN-2","public_key":"{other}"}}"#
    ));
    bodies.push(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)));
    bodies.push(r#"{"serial":"SN-1","public_key":"#.to_owned());
    bodies.push("\u{feff}{}".to_owned());
    for body in &bodies {
        let (status, answer) = http(
            api,
            "POST",
            "/v1/register",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        check_refusal(status, &answer, &body[..body.len().min(80)]);
    }

    // Bodies that are not what their headers say.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            [post_head(api, "100").as_bytes(), b"{\"serial\":\"SN-1\""].concat(),
            "truncated",
        ),
        // Never finishes its body and never hangs up: answered (408), not held forever.
        (
            [post_head(api, "100").as_bytes(), b"{\"serial\""].concat(),
            "stalled",
        ),
        (
            [post_head(api, "4").as_bytes(), b"\xff\xfe\x00{"].concat(),
            "not UTF-8",
        ),
        (
            post_head(api, "10000000000").into_bytes(),
            "10 GB announced",
        ),
        (post_head(api, "-1").into_bytes(), "negative length"),
        (
            [post_head(api, "1048576").as_bytes(), &vec![b'{'; 1 << 20]].concat(),
            "1 MiB",
        ),
    ];
    for (raw, what) in cases {
        let (status, answer) = raw_request(api, &raw, what == "truncated");
        assert!((400..500).contains(&status), "{what}: {status} {answer}");
        if what == "stalled" {
            assert_eq!(status, 408, "{answer}");
        }
        if status != 400 || !answer.is_empty() {
            check_refusal(status, &answer, what);
        }
    }

    // Nothing was stored: SN-1 is still free, SN-KEEP still bound to its key, no new files.
    let (status, answer) = jump.register("SN-1", &other);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(jump.register("SN-KEEP", &other).0, 409);
    assert_eq!(jump.register("SN-KEEP", &key).0, 200);
    assert_eq!(list(&jump.dir), files_before);
    let db = jump.data_dir.join("assist.db");
    let rows = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT serial FROM bindings ORDER BY serial")
        .output()
        .unwrap();
    assert_eq!(text(&rows.stdout), "SN-1\nSN-KEEP\n");
}

/// A 4xx with a JSON `{"error": …}` that is short, one line and free of control characters.
fn check_refusal(status: u16, answer: &str, what: &str) {
    assert!((400..500).contains(&status), "{what:?}: {status} {answer}");
    let error: serde_json::Value = serde_json::from_str(answer)
        .unwrap_or_else(|e| panic!("{what:?}: not JSON ({e}): {answer}"));
    let message = error["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what:?}: {answer}"));
    assert!(
        !message.is_empty() && message.len() < 600,
        "{what:?}: {message}"
    );
    assert!(
        !message.chars().any(char::is_control),
        "{what:?}: {message:?}"
    );
}

/// Every file under `dir` except the database's own (WAL and journal files come and go).
fn list(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if !path.to_string_lossy().contains("assist.db") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// Secrets

const SERIAL: &str = "SN-0042";

/// Standard base64 with padding (the e2e crate has no base64 dependency).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_code_and_the_derived_key_never_reach_logs_or_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let alice = keygen(&path("alice"));
    let sshd = Sshd::start(dir.path());
    fs::write(&sshd.authorized_keys, "").unwrap();
    let jump = Jumphost::start(dir.path(), &policy("", &alice));

    let config = write_client_config(&path("agent"), SERIAL, &jump, &sshd);
    let mut cmd = Command::new(bin("assist-client"));
    cmd.arg("run").arg("--config").arg(&config);
    // The most verbose logging either program has: secrets must not appear even there.
    cmd.env("RUST_LOG", "trace,russh=debug,hyper=info,h2=info");
    let agent = Proc::spawn(cmd, "agent");
    let mut agent = agent;
    agent.wait_line("web listening on http://", READY_TIMEOUT);

    let out = Command::new(bin("assist-client"))
        .args(["enable", "--minutes", "10", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "enable: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let code = stdout
        .lines()
        .find_map(|l| l.strip_prefix("code:"))
        .unwrap_or_else(|| panic!("no code in {stdout}"))
        .trim()
        .to_owned();
    let derived = path("derived");
    write_derived_key(&derived, SERIAL, &code);

    // A full hop: engineer -> jump host -> agent -> sshd.
    let proxy = format!(
        "ProxyCommand=ssh {SSH_OPTS} -o LogLevel=ERROR -i {} -p {} -W %h:%p alice@127.0.0.1",
        path("alice").display(),
        jump.ssh_port()
    );
    let mut hop = Output {
        status: Default::default(),
        stdout: vec![],
        stderr: vec![],
    };
    wait_until(SHORT, "a hop through the agent's tunnel", || {
        hop = ssh(&["-o", &proxy, "-i", derived.to_str().unwrap()])
            .args([&format!("root@{SERIAL}"), "echo hop-ok"])
            .output()
            .unwrap();
        text(&hop.stdout).contains("hop-ok")
    });

    let parsed = assist_proto::OneTimeCode::parse(&code).unwrap();
    let key = assist_proto::derive_key(SERIAL, &parsed).unwrap();
    let seed = key.key_data().ed25519().unwrap().private.to_bytes();
    let pem = fs::read_to_string(&derived).unwrap();
    let mut secrets = vec![
        code.clone(),
        code.replace('-', ""),
        code.to_lowercase(),
        code.replace('-', "").to_lowercase(),
        hex(&seed),
        base64(&seed),
    ];
    // Every line of the private key file's body, except format boilerplate that any
    // unencrypted ed25519 key file (alice's) shares.
    let boilerplate = fs::read_to_string(path("alice")).unwrap();
    secrets.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 32 && !boilerplate.contains(*l))
            .map(str::to_owned),
    );
    let mut places = vec![
        ("jump host log".to_owned(), jump.proc.stderr()),
        ("agent log".to_owned(), agent.stderr()),
        ("enable stderr".to_owned(), text(&out.stderr)),
        ("sshd log".to_owned(), sshd.log()),
    ];
    // The agent's own secrets belong in its data folder, and in no log.
    let token = fs::read_to_string(path("agent/data/control-token")).unwrap();
    let device_key = fs::read_to_string(path("agent/data/device_key")).unwrap();
    let mut own = vec![token.trim().to_owned()];
    own.extend(
        device_key
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 32 && !boilerplate.contains(*l))
            .map(str::to_owned),
    );
    assert!(own.len() >= 2 && own[0].len() >= 32, "{} secrets", own.len());
    for (place, content) in &places {
        for secret in &own {
            assert!(
                !content.contains(secret.as_str()),
                "the agent's token or device key appears in the {place}"
            );
        }
    }
    for dir in [&jump.data_dir, &path("agent/data")] {
        for file in list(dir).into_iter().chain([dir.join("assist.db")]) {
            if let Ok(bytes) = fs::read(&file) {
                places.push((file.to_string_lossy().into_owned(), text(&bytes)));
            }
        }
    }
    assert!(
        places[0].1.contains("logged in"),
        "the logs are real: {}",
        places[0].1
    );
    for (place, content) in &places {
        for secret in &secrets {
            assert!(
                !content.contains(secret.as_str()),
                "a secret ({} chars, #{}) appears in the {place}",
                secret.len(),
                secrets.iter().position(|s| s == secret).unwrap_or_default()
            );
        }
    }
    agent.terminate();
}
