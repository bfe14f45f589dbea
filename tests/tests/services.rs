//! Services other than ssh ride inside the SSH session that the code authenticates: with the
//! real agent, jump host and `support-cli`, stock sshd as the customer's machine and a small
//! web server as its web UI, the jump host has no route to the web UI (a stock `ssh -W
//! SERIAL:80` gets nothing of it), while `support-cli forward --service http --code` serves
//! it to curl through the customer's sshd, limited by the key line's `permitopen`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use assist_e2e::{
    Jumphost, Proc, READY_TIMEOUT, Sshd, alice_policy, bin, keygen, ssh, text, try_http,
};

const SERIAL: &str = "SN-0001";
const SHORT: Duration = Duration::from_secs(30);
const PAGE: &str = "<html>the customer's web UI, page 7f3a9c</html>";

/// A web server on a free loopback port answering every request with [`PAGE`]; counts the
/// connections it accepted.
fn web_ui() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(SHORT));
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{PAGE}",
                    PAGE.len()
                );
            });
        }
    });
    (addr, accepted)
}

#[test]
fn the_web_ui_is_reached_only_inside_the_code_authenticated_session() {
    let dir = tempfile::tempdir().unwrap();
    let alice_key = dir.path().join("alice");
    let alice = keygen(&alice_key);
    let jump = Jumphost::start(dir.path(), &alice_policy("", &alice));
    let sshd = Sshd::start(dir.path());
    let (web, accepted) = web_ui();

    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        format!(
            "serial = \"{SERIAL}\"\njumphost = \"{}\"\napi_url = \"{}\"\n\
             data_dir = \"{}\"\nweb_listen = \"127.0.0.1:0\"\ntarget_user = \"root\"\n\
             authorized_keys = \"{}\"\n\n[services]\nssh = \"{}\"\nhttp = \"{web}\"\n",
            jump.ssh_addr,
            jump.api_url,
            dir.path().join("data").display(),
            sshd.authorized_keys.display(),
            sshd.addr
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("assist-client"));
    cmd.arg("run").arg("--config").arg(&config);
    let mut agent = Proc::spawn(cmd, "agent");
    agent.wait_line("web listening on http://", READY_TIMEOUT);
    let out = assist_e2e::assist_client(&config, &["enable", "--minutes", "10"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let code = stdout
        .lines()
        .find_map(|l| l.strip_prefix("code:"))
        .unwrap()
        .trim()
        .to_owned();
    assist_e2e::wait_until(SHORT, "the tunnel", || {
        let out = assist_e2e::assist_client(&config, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["tunnel"]["state"] == "connected"
    });

    // The key line lets the session forward to the web UI and nowhere else.
    let keys = std::fs::read_to_string(&sshd.authorized_keys).unwrap();
    assert!(
        keys.contains(&format!(
            "no-X11-forwarding,permitopen=\"{web}\" ssh-ed25519 "
        )),
        "{keys}"
    );

    // An allowlisted engineer without the code asks the jump host for port 80: nothing.
    let proxy_login = "alice@127.0.0.1";
    let target = format!("{SERIAL}:80");
    let mut stock = ssh(&[
        "-i",
        alice_key.to_str().unwrap(),
        "-p",
        &jump.ssh_port(),
        "-W",
        &target,
        proxy_login,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    stock
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let out = stock.wait_with_output().unwrap();
    assert!(!out.status.success(), "ssh -W {target} succeeded");
    assert!(
        !text(&out.stdout).contains("7f3a9c"),
        "{}",
        text(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the web UI was reached");

    let known_hosts = dir.path().join("known_hosts");
    let cli = |args: &[&str]| {
        let mut c = Command::new(bin("support-cli"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .arg("--jumphost")
            .arg(jump.ssh_addr.to_string())
            .arg("--engineer")
            .arg("alice")
            .arg("--identity")
            .arg(&alice_key)
            .arg("--known-hosts")
            .arg(&known_hosts)
            .args(args);
        c
    };

    // Without the code the CLI does not even try.
    let out = cli(&[
        "forward",
        SERIAL,
        "--service",
        "http",
        "--listen",
        "127.0.0.1:0",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("pass --code CODE"),
        "{}",
        text(&out.stderr)
    );

    // With the code: curl gets the page through the customer's sshd.
    let web_str = web.to_string();
    let mut fwd = Proc::spawn(
        cli(&[
            "forward",
            SERIAL,
            "--service",
            "http",
            "--code",
            &code,
            "--to",
            &web_str,
            "--listen",
            "127.0.0.1:0",
        ]),
        "forward http",
    );
    let line = fwd.wait_line("forwarding ", SHORT);
    assert!(
        line.contains(&format!(
            " -> {SERIAL}:http (inside the SSH session, to {web} on the device)"
        )),
        "{line}"
    );
    let local = line.split_once(" -> ").unwrap().0.to_owned();
    for _ in 0..2 {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .arg(format!("http://{local}/"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl: {}\nforward: {}\nsshd: {}",
            text(&out.stderr),
            fwd.stderr(),
            sshd.log()
        );
        assert_eq!(text(&out.stdout), PAGE);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    fwd.signal(2);
    assert!(fwd.wait_exit(SHORT).success(), "{}", fwd.stderr());

    // A port the customer did not configure is refused by the device's sshd (permitopen).
    let unlisted = TcpListener::bind("127.0.0.1:0").unwrap();
    let unlisted_port = unlisted.local_addr().unwrap().port().to_string();
    let mut fwd = Proc::spawn(
        cli(&[
            "forward",
            SERIAL,
            "--service",
            &unlisted_port,
            "--code",
            &code,
            "--listen",
            "127.0.0.1:0",
        ]),
        "forward unlisted",
    );
    let line = fwd.wait_line("forwarding ", SHORT);
    let local: SocketAddr = line.split_once(" -> ").unwrap().0.parse().unwrap();
    assert!(try_http(local, "GET", "/", &[], b"").is_err());
    assist_e2e::wait_until(SHORT, "the refusal to be reported", || {
        fwd.stderr()
            .contains(&format!("refused to connect to 127.0.0.1:{unlisted_port}"))
    });
    unlisted.set_nonblocking(true).unwrap();
    assert!(unlisted.accept().is_err(), "the unlisted port was reached");
    drop(fwd);

    // The agent's proof of the code: the serial typed in lower case still derives the
    // agent's spelling, and the exported known_hosts holds the host key the agent read
    // from its sshd.
    let out = cli(&[
        "connect", "sn-0001", "--code", &code, "--", "echo", "proven",
    ])
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "proven\n");
    let exported = dir.path().join("exported");
    let out = cli(&[
        "key",
        SERIAL,
        "--code",
        &code,
        "--out",
        exported.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let host_key: Vec<&str> = sshd.host_key_pub.split_whitespace().take(2).collect();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("exported.known_hosts")).unwrap(),
        format!("{SERIAL} {} {}\n", host_key[0], host_key[1])
    );

    let out = assist_e2e::assist_client(&config, &["disable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    agent.terminate();
}
