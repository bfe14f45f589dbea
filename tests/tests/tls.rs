//! TLS for the registration API, end to end: the real jump host with a self-signed or a
//! configured certificate, checked by curl and openssl, and the real agent verifying it by
//! pinned fingerprint, by CA file, or (and failing) by the system's CAs. Needs `curl`,
//! `openssl` and `sqlite3` on the PATH.

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use assist_e2e::{
    Jumphost, Proc, READY_TIMEOUT, Sshd, bin, keygen, wait_until, write_client_config,
};

const SHORT: Duration = Duration::from_secs(30);
const POLICY: &str = "[serials]\nallow = [\"SN-*\"]\n";
const SELF_SIGNED: &str = "[api_tls]\nself_signed = true\n";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// `openssl x509 -fingerprint -sha256` of a PEM certificate, in the jump host's spelling.
fn openssl_fingerprint(cert: &Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert));
    assert!(out.status.success(), "openssl: {}", text(&out.stderr));
    // "sha256 Fingerprint=AB:CD:…"
    let stdout = text(&out.stdout);
    let hex = stdout
        .trim()
        .split_once('=')
        .map(|(_, hex)| hex.replace(':', "").to_lowercase())
        .unwrap_or_else(|| panic!("no fingerprint in {stdout:?}"));
    format!("sha256:{hex}")
}

/// curl against the API; returns (exit code, HTTP status, body). `args` come first.
fn curl(args: &[&str], url: &str, body: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .args(args);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = run(cmd.arg(url));
    let stdout = text(&out.stdout);
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (
        out.status.code().unwrap_or(-1),
        status.to_string(),
        format!("{body}{}", text(&out.stderr)),
    )
}

fn register_body(serial: &str, key: &str) -> String {
    serde_json::json!({ "serial": serial, "public_key": key }).to_string()
}

/// One row per stored binding, from the jump host's database.
fn bound_serials(jump: &Jumphost) -> String {
    jump.sql("SELECT serial FROM bindings ORDER BY serial")
}

/// client.toml with the contract keys plus `extra` (top-level keys).
fn client_config(
    dir: &Path,
    name: &str,
    serial: &str,
    jump: &Jumphost,
    sshd: &Sshd,
    extra: &str,
) -> PathBuf {
    let config = write_client_config(&dir.join(name), serial, jump, sshd);
    let contract = fs::read_to_string(&config).unwrap();
    // Top-level keys must come before the [services] table.
    fs::write(
        &config,
        contract.replace("[services]", &format!("{extra}\n[services]")),
    )
    .unwrap();
    config
}

fn start_agent(config: &Path, label: &str) -> Proc {
    let mut cmd = Command::new(bin("assist-client"));
    cmd.arg("run").arg("--config").arg(config);
    cmd.env("RUST_LOG", "info,assist_client=debug");
    let mut agent = Proc::spawn(cmd, label);
    agent.wait_line("web listening on http://", READY_TIMEOUT);
    agent
}

fn cli(config: &Path, args: &[&str]) -> Output {
    run(Command::new(bin("assist-client"))
        .args(args)
        .arg("--config")
        .arg(config))
}

fn tunnel_state(config: &Path) -> String {
    let out = cli(config, &["status", "--json"]);
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["tunnel"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `enable` must fail, saying `words`; returns its stderr.
fn enable_fails(config: &Path, words: &[&str]) -> String {
    let out = cli(config, &["enable", "--minutes", "5"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "enable should fail: {said}");
    for w in words {
        assert!(said.contains(w), "{w:?} missing from: {said}");
    }
    assert!(!said.contains("code:"), "{said}");
    said
}

fn enable_works(config: &Path) {
    let out = cli(config, &["enable", "--minutes", "5"]);
    assert!(
        out.status.success(),
        "enable: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("code:"), "{}", text(&out.stdout));
}

#[test]
fn self_signed_api_is_served_over_https_and_the_agent_verifies_it() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
    let mut jump = Jumphost::start_configured(dir.path(), POLICY, "127.0.0.1:0", SELF_SIGNED);
    let cert = jump.data_dir.join("api-cert.pem");

    // What it prints is what openssl computes from the file it made; the key is private.
    assert_eq!(jump.api_url, format!("https://{}", jump.api_addr));
    let printed = jump.api_tls_fingerprint.clone().unwrap();
    assert_eq!(printed, openssl_fingerprint(&cert));
    let key_mode = fs::metadata(jump.data_dir.join("api-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(
        !jump.proc.stderr().contains("without TLS"),
        "{}",
        jump.proc.stderr()
    );

    // curl trusting the certificate registers; the audit sees the real source address.
    let key = keygen(&dir.path().join("curl-device"));
    let url = format!("{}/v1/register", jump.api_url);
    let cacert = cert.to_str().unwrap();
    let (rc, status, body) = curl(
        &["--cacert", cacert],
        &url,
        Some(&register_body("SN-CURL", &key)),
    );
    assert_eq!((rc, status.as_str()), (0, "201"), "{body}");
    let localhost = format!("https://localhost:{}/healthz", jump.api_addr.port());
    let (rc, status, body) = curl(&["--cacert", cacert], &localhost, None);
    assert_eq!((rc, status.as_str(), body.trim()), (0, "200", "ok"));
    // Without trusting it, curl refuses; plain HTTP to the TLS port gets no HTTP answer.
    let (rc, status, body) = curl(&[], &url, Some(&register_body("SN-CURL2", &key)));
    assert_eq!((rc, status.as_str()), (60, "000"), "{body}");
    let plain = format!("http://{}/v1/register", jump.api_addr);
    let (rc, status, body) = curl(&[], &plain, Some(&register_body("SN-PLAIN", &key)));
    assert_ne!(rc, 0, "{body}");
    assert_eq!(status, "000", "{body}");
    let audit = jump.sql("SELECT source FROM audit_events WHERE who = 'SN-CURL'");
    assert_eq!(audit.trim(), "127.0.0.1");

    // The agent pinning the printed fingerprint registers and opens its tunnel.
    let pinned = client_config(
        dir.path(),
        "pinned",
        "SN-0001",
        &jump,
        &sshd,
        &format!("api_fingerprint = \"{printed}\""),
    );
    let mut agent = start_agent(&pinned, "agent-pinned");
    enable_works(&pinned);
    wait_until(SHORT, "tunnel connected", || {
        tunnel_state(&pinned) == "connected"
    });
    agent.terminate();

    // A wrong pin: a clear message with both fingerprints, nothing stored.
    let other = format!("sha256:{}", "ab".repeat(32));
    let wrong = client_config(
        dir.path(),
        "wrong",
        "SN-0002",
        &jump,
        &sshd,
        &format!("api_fingerprint = \"{other}\""),
    );
    let mut agent = start_agent(&wrong, "agent-wrong");
    enable_fails(
        &wrong,
        &[&format!(
            "the jump host API's certificate fingerprint {printed} does not match api_fingerprint {other}"
        )],
    );
    assert_eq!(tunnel_state(&wrong), "disabled");
    agent.terminate();

    // The certificate file as the CA: works.
    let ca = client_config(
        dir.path(),
        "ca",
        "SN-0003",
        &jump,
        &sshd,
        &format!("api_ca_file = \"{cacert}\""),
    );
    let mut agent = start_agent(&ca, "agent-ca");
    enable_works(&ca);
    agent.terminate();

    // Neither: the system's CAs do not know a self-signed certificate.
    let system = client_config(dir.path(), "system", "SN-0004", &jump, &sshd, "");
    let mut agent = start_agent(&system, "agent-system");
    enable_fails(
        &system,
        &["not trusted", "UnknownIssuer", "api_fingerprint"],
    );
    agent.terminate();

    assert_eq!(bound_serials(&jump), "SN-0001\nSN-0003\nSN-CURL\n");
    let audit = jump
        .sql("SELECT count(*) FROM audit_events WHERE who IN ('SN-0002', 'SN-0004', 'SN-PLAIN')");
    assert_eq!(audit.trim(), "0", "refused handshakes reach no handler");

    // A client that connects and never says hello does not hold up shutdown, and the
    // certificate survives a restart.
    let _silent = TcpStream::connect(jump.api_addr).unwrap();
    let started = Instant::now();
    assert!(jump.proc.terminate().success());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    jump.restart();
    assert_eq!(jump.api_tls_fingerprint.as_deref(), Some(printed.as_str()));
}

#[test]
fn configured_certificate_files_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("jumphost/tls");
    fs::create_dir_all(&tls).unwrap();
    let openssl = |args: &[&str]| {
        let out = run(Command::new("openssl").args(args).current_dir(&tls));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            text(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=test CA",
            ],
        ]
        .concat(),
    );
    fs::write(
        tls.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    // A key and a certificate for localhost from that CA, as NAME.key and NAME.pem.
    let issue = |name: &str| {
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            &format!("{name}.pem"),
        ]);
    };
    issue("api");

    let sshd = Sshd::start(dir.path());
    // Relative paths are taken from jumphost.toml's folder.
    let jump = Jumphost::start_configured(
        dir.path(),
        POLICY,
        "127.0.0.1:0",
        "[api_tls]\ncert = \"tls/api.pem\"\nkey = \"tls/api.key\"\n",
    );
    assert_eq!(
        jump.api_tls_fingerprint,
        Some(openssl_fingerprint(&tls.join("api.pem")))
    );
    assert!(!jump.data_dir.join("api-cert.pem").exists());

    let ca = tls.join("ca.pem");
    let key = keygen(&dir.path().join("curl-device"));
    let url = format!("{}/v1/register", jump.api_url);
    let (rc, status, body) = curl(
        &["--cacert", ca.to_str().unwrap()],
        &url,
        Some(&register_body("SN-CURL", &key)),
    );
    assert_eq!((rc, status.as_str()), (0, "201"), "{body}");

    let config = client_config(
        dir.path(),
        "agent",
        "SN-0001",
        &jump,
        &sshd,
        &format!("api_ca_file = \"{}\"", ca.display()),
    );
    let mut agent = start_agent(&config, "agent");
    enable_works(&config);
    wait_until(SHORT, "tunnel connected", || {
        tunnel_state(&config) == "connected"
    });

    // Renewal, as an ACME client does it: a new key and certificate from the same CA,
    // swapped in by rename while the jump host runs. Served from the next handshake on,
    // without a signal, and the connected tunnel is not touched.
    let first = openssl_fingerprint(&tls.join("api.pem"));
    assert_eq!(served_fingerprint(jump.api_addr), first);
    issue("renewed");
    let renewed = openssl_fingerprint(&tls.join("renewed.pem"));
    fs::copy(tls.join("renewed.key"), tls.join("renewed.key.copy")).unwrap();
    fs::rename(tls.join("renewed.key"), tls.join("api.key")).unwrap();
    fs::rename(tls.join("renewed.pem"), tls.join("api.pem")).unwrap();
    wait_until(SHORT, "the renewed certificate served", || {
        served_fingerprint(jump.api_addr) == renewed
    });
    let (rc, status, body) = curl(
        &["--cacert", ca.to_str().unwrap()],
        &url,
        Some(&register_body("SN-RENEWED", &key)),
    );
    assert_eq!((rc, status.as_str()), (0, "201"), "{body}");
    assert_eq!(tunnel_state(&config), "connected");

    // A broken renewal (a key that does not fit) is logged and changes nothing.
    // (A poll between the two renames above may have reported one already.)
    let refused = || {
        jump.proc
            .stderr()
            .matches("api tls certificate not reloaded")
            .count()
    };
    let refused_before = refused();
    issue("stray");
    fs::rename(tls.join("stray.key"), tls.join("api.key")).unwrap();
    wait_until(SHORT, "the broken pair reported", || {
        refused() > refused_before
    });
    assert_eq!(served_fingerprint(jump.api_addr), renewed);
    // The operator sees it in status: the certificate still served, and why the new one is not.
    let status = jump.status();
    assert_eq!(
        status["api_tls"]["fingerprint"],
        renewed.as_str(),
        "{status}"
    );
    let error = status["api_tls"]["reload_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("does not fit the certificate"), "{status}");
    // The right key back: picked up by the next poll. Then SIGHUP re-reads on demand.
    fs::rename(tls.join("renewed.key.copy"), tls.join("api.key")).unwrap();
    let reread = |trigger: &str| {
        jump.proc
            .stderr()
            .lines()
            .filter(|l| l.contains("api tls certificate re-read; unchanged") && l.contains(trigger))
            .count()
    };
    wait_until(SHORT, "the fitting key re-read", || {
        reread("\"change\"") == 1
    });
    jump.proc.signal(1);
    wait_until(SHORT, "a re-read on SIGHUP", || reread("\"SIGHUP\"") == 1);
    assert_eq!(served_fingerprint(jump.api_addr), renewed);
    assert!(jump.status()["api_tls"]["reload_error"].is_null());
    agent.terminate();
    assert_eq!(bound_serials(&jump), "SN-0001\nSN-CURL\nSN-RENEWED\n");
}

/// The fingerprint of the certificate the API serves now, as `openssl s_client` sees it.
fn served_fingerprint(api: std::net::SocketAddr) -> String {
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "openssl s_client -connect {api} -servername localhost </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256"
    )));
    let stdout = text(&out.stdout);
    stdout
        .trim()
        .split_once('=')
        .map(|(_, hex)| format!("sha256:{}", hex.replace(':', "").to_lowercase()))
        .unwrap_or_default()
}

#[test]
fn plain_http_off_loopback_is_shouted_about() {
    let dir = tempfile::tempdir().unwrap();
    // 0.0.0.0 binds every interface; nothing here connects from outside loopback.
    let plain = Jumphost::start_configured(&dir.path().join("plain"), POLICY, "0.0.0.0:0", "");
    let port = plain.api_addr.port();
    let line = format!("WARNING: registration API on 0.0.0.0:{port} without TLS");
    wait_until(SHORT, "the warning on stderr", || {
        plain.proc.stderr().contains(&line)
    });
    assert!(
        plain.proc.stderr().contains("[api_tls]"),
        "{}",
        plain.proc.stderr()
    );
    assert!(plain.api_url.starts_with("http://"), "{}", plain.api_url);
    assert_ne!(port, 0);

    let tls = Jumphost::start_configured(&dir.path().join("tls"), POLICY, "0.0.0.0:0", SELF_SIGNED);
    assert!(tls.api_url.starts_with("https://"), "{}", tls.api_url);
    assert!(
        !tls.proc.stderr().contains("without TLS"),
        "{}",
        tls.proc.stderr()
    );
}
