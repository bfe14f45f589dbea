//! Hardening of the jump host's registration API end to end (issue 7): the rate limit per
//! address, hostile registration bodies, connections that send nothing, and secrets staying
//! out of every log and file.
// Test helpers fail the test by panicking, as the #[test] functions do.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use assist_e2e::{
    Jumphost, Proc, READY_TIMEOUT, Sshd, alice_policy, bin, connect_from, http, keygen, ssh,
    ssh_options, text, until_closed, wait_until, write_client_config, write_derived_key,
};

const SHORT: Duration = Duration::from_secs(30);

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
    let jump = Jumphost::start(dir.path(), &alice_policy(penalties, &alice));
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
    let jump = Jumphost::start(dir.path(), &alice_policy(penalties, &alice));
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
    assert_eq!(
        jump.sql("SELECT serial FROM bindings ORDER BY serial"),
        "SN-1\nSN-KEEP\n"
    );
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
    let jump = Jumphost::start(dir.path(), &alice_policy("", &alice));

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
        "ProxyCommand=ssh {} -i {} -p {} -W %h:%p alice@127.0.0.1",
        ssh_options("ERROR").join(" "),
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
    assert!(
        own.len() >= 2 && own[0].len() >= 32,
        "{} secrets",
        own.len()
    );
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

/// Slowloris against the real API: one address gets 32 connections at once and the next are
/// closed on arrival, another address is still served, and connections that send nothing are
/// closed at the 10 s header deadline (the stock `axum::serve` held them forever).
#[test]
fn silent_connections_are_bounded_per_address_and_closed_at_the_header_deadline() {
    const PER_SOURCE: usize = assist_proto::limits::MAX_HTTP_CONNECTIONS_PER_SOURCE;
    const DEADLINE: Duration = assist_proto::limits::HEADER_TIMEOUT;

    let dir = tempfile::tempdir().unwrap();
    let alice = keygen(&dir.path().join("alice"));
    let jump = Jumphost::start(dir.path(), &alice_policy("", &alice));
    let api = jump.api_addr;
    let opened = Instant::now();
    let mut held: Vec<TcpStream> = (0..PER_SOURCE + 8).map(|_| connect_from(3, api)).collect();
    // The server accepts in order: the ones past the limit are closed without a byte.
    for extra in held.split_off(PER_SOURCE) {
        let started = Instant::now();
        assert!(until_closed(extra, SHORT).is_empty());
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
    // The first of the held ones is served…
    let mut first = held.remove(0);
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 64];
    let n = first.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..n]
    );
    // …and so is another address, while 127.0.0.3 holds all its places.
    let (status, _, body) = register_from(
        api,
        "127.0.0.4",
        &register_body("SN-SLOW", &keygen(&dir.path().join("dev"))),
    );
    assert_eq!(status, 201, "{body}");
    // The silent ones are closed at the deadline, not before (a panic if held past SHORT).
    for silent in held {
        until_closed(silent, SHORT);
    }
    let all_closed = opened.elapsed();
    assert!(
        all_closed >= DEADLINE - Duration::from_secs(1) && all_closed < DEADLINE * 3,
        "{all_closed:?}"
    );
}
