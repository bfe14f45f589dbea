//! How the agent reaches the jump host, end to end: enrollment of a new serial, SSH inside a
//! WebSocket on the API port, a stock forward proxy (tinyproxy) or SOCKS5 proxy (microsocks)
//! as the only way out, and a stock nginx terminating TLS in front of the jump host.
// Test helpers fail the test by panicking, as the #[test] functions do.
#![allow(clippy::unwrap_used)]

mod agent_world;

use std::fs;
use std::process::{Command, Stdio};

use agent_world::{
    SERIAL, SHORT, World, cli, enable, remove_client_key, set_client_key, start_agent, status,
    support_cli, wait_tunnel,
};
use assist_e2e::{bin, keygen, ssh, text, wait_until, write_derived_key};

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
    // enable waits for the tunnel, so it fails with the jump host's refusal and no code.
    let out = cli(&direct, &["enable", "--minutes", "5"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        !text(&out.stdout).contains("code:"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("devices are not allowed from 127.0.0.1 (not in client_cidrs)"),
        "{}",
        text(&out.stderr)
    );
    let s = status(&direct);
    assert_eq!(s["enabled"], false, "{s}");
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
fn a_customer_behind_a_socks5_proxy_gets_help_through_it_alone() {
    use assist_e2e::socks::Microsocks;
    // Devices are admitted only from 127.0.0.3, the SOCKS proxy's outgoing address.
    let w = World::start_configured("", "", r#"["127.0.0.3/32"]"#);
    let proxy = Microsocks::start(Some("127.0.0.3"), Some(("cust", "s0cks:pass")));
    // The engineer leaves through a SOCKS proxy of his own, named in ALL_PROXY.
    let engineer_proxy = Microsocks::start(None, None);
    let shared = w.path("device-data");
    let config_for = |name: &str| {
        let config = w.client_config(name);
        set_client_key(&config, &format!("data_dir = \"{}\"", shared.display()));
        config
    };

    // socks5h:// (the proxy resolves the name) for raw SSH and for SSH in a WebSocket, and
    // socks5:// (resolved here) for raw SSH; the password's ':' is %-encoded.
    let url = |scheme: &str| format!("{scheme}://cust:s0cks%3Apass@{}", proxy.addr);
    let ssh_port = w.jump.ssh_addr.port();
    for (name, jumphost, proxy_url, engineer_jumphost) in [
        (
            "raw",
            format!("localhost:{ssh_port}"),
            url("socks5h"),
            format!("localhost:{ssh_port}"),
        ),
        (
            "ws",
            format!("ws://localhost:{}/v1/ssh", w.jump.api_addr.port()),
            url("socks5h"),
            format!("ws://localhost:{}/v1/ssh", w.jump.api_addr.port()),
        ),
        (
            "resolved-here",
            format!("localhost:{ssh_port}"),
            url("socks5"),
            w.jump.ssh_addr.to_string(),
        ),
    ] {
        let config = config_for(name);
        set_client_key(&config, &format!("jumphost = \"{jumphost}\""));
        set_client_key(&config, &format!("proxy = \"{proxy_url}\""));
        let agent = start_agent(&config, name);
        let (code, _) = enable(&config, "5");
        wait_tunnel(&config, "connected");
        let out = support_cli(
            &w,
            &engineer_jumphost,
            &["connect", SERIAL, "--code", &code, "--", "echo", "helped"],
        )
        .env("ALL_PROXY", format!("socks5h://{}", engineer_proxy.addr))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "helped", "{name}");
        let _ = cli(&config, &["disable"]);
        drop(agent);
    }
    // microsocks logs each connection it made as it was asked: the agent's tunnels by
    // name with socks5h:// and by address with socks5://, its registrations at api_url,
    // and the engineer's hops.
    let log = proxy.log();
    for target in [
        format!("connected to localhost:{ssh_port}"),
        format!("connected to localhost:{}", w.jump.api_addr.port()),
        format!("connected to 127.0.0.1:{ssh_port}"),
        format!("connected to {}", w.jump.api_addr),
    ] {
        assert!(log.contains(&target), "no {target:?} in:\n{log}");
    }
    let log = engineer_proxy.log();
    for target in [
        format!("connected to localhost:{ssh_port}"),
        format!("connected to localhost:{}", w.jump.api_addr.port()),
    ] {
        assert!(log.contains(&target), "no {target:?} in:\n{log}");
    }
    let sources = w.jump.sql(
        "SELECT DISTINCT source FROM audit_events WHERE kind = 'ssh.auth' AND who = 'SN-0001' \
         AND outcome LIKE 'accepted%'",
    );
    assert_eq!(
        sources.trim(),
        "127.0.0.3",
        "device logins came from elsewhere"
    );

    // A wrong password, and none at all: enable says so in words and shows no code.
    for (name, proxy_url, words) in [
        (
            "badpass",
            format!("socks5h://cust:n0tit@{}", proxy.addr),
            "refused: authentication failed (the user or password is wrong)",
        ),
        (
            "nopass",
            format!("socks5h://{}", proxy.addr),
            "refused: authentication required (none was given)",
        ),
    ] {
        let config = config_for(name);
        set_client_key(&config, &format!("proxy = \"{proxy_url}\""));
        let _agent = start_agent(&config, name);
        let out = cli(&config, &["enable", "--minutes", "5"]);
        assert!(!out.status.success(), "{name}");
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!said.contains("code:"), "{name}: {said}");
        assert!(
            said.contains("the proxy at socks5h://") && said.contains(words),
            "{name}: {said}"
        );
        assert!(
            !said.contains("n0tit"),
            "the proxy password was shown: {said}"
        );
    }
}

#[test]
fn behind_nginx_with_tls_the_agent_and_support_cli_use_one_https_port() {
    use assist_e2e::nginx::Nginx;
    let w = World::start_configured("", "trusted_proxies = [\"127.0.0.1/32\"]\n", "[]");
    let nginx = Nginx::start(w.dir.path(), w.jump.api_addr);
    let port = nginx.addr.port();

    // The agent registers and holds its tunnel through nginx alone: https:// and wss://.
    // Without api_url the API is at the wss:// URL's origin.
    let config = w.client_config("agent");
    set_client_key(
        &config,
        &format!("jumphost = \"wss://localhost:{port}/v1/ssh\""),
    );
    remove_client_key(&config, "api_url");
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

#[test]
fn behind_haproxy_the_proxy_protocol_gives_the_jump_host_the_clients_addresses() {
    use assist_e2e::haproxy::Haproxy;
    use std::io::{Read, Write};
    // HAProxy reaches the jump host from 127.0.0.7, which alone may send PROXY headers;
    // devices are admitted only from 127.0.0.1, where the agent really is.
    let w = World::start_configured(
        "",
        "trusted_proxies = [\"127.0.0.7/32\"]\nproxy_protocol = true\n",
        "[\"127.0.0.1/32\"]",
    );
    let haproxy = Haproxy::start(w.dir.path(), w.jump.api_addr, "127.0.0.7".parse().unwrap());
    let ws = format!("ws://{}/v1/ssh", haproxy.addr);

    // Registration and tunnel through HAProxy: a jump host that took HAProxy's address for
    // the client's would refuse the device (127.0.0.7 is outside client_cidrs).
    let config = w.client_config("agent");
    set_client_key(&config, &format!("jumphost = \"{ws}\""));
    remove_client_key(&config, "api_url");
    let _agent = start_agent(&config, "agent");
    let (code, _) = enable(&config, "5");
    wait_tunnel(&config, "connected");

    let out = support_cli(
        &w,
        &ws,
        &[
            "connect", SERIAL, "--code", &code, "--", "echo", "via", "haproxy",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "via haproxy");
    // The hops are recorded with the engineer's address, never HAProxy's.
    wait_until(SHORT, "the hops to be recorded", || {
        w.jump
            .sql("SELECT count(*) FROM hops WHERE ended_at IS NOT NULL")
            .trim()
            == "2"
    });
    let sources = w.jump.sql("SELECT source FROM hops");
    assert!(
        sources.lines().all(|s| s.starts_with("127.0.0.1:")),
        "{sources}"
    );

    // Anyone else's PROXY header is not believed: it reaches HTTP, which says 400, and
    // nothing is registered.
    let mut direct = std::net::TcpStream::connect(w.jump.api_addr).unwrap();
    direct
        .write_all(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\nGET /v1/ssh HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = direct.read_to_end(&mut answer);
    assert!(
        text(&answer).starts_with("HTTP/1.1 400"),
        "{}",
        text(&answer)
    );
    // And the trusted proxy's address without a header gets nothing at all.
    let mut silent = assist_e2e::connect_from(7, w.jump.api_addr);
    silent
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = silent.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", text(&answer));
    assert!(
        w.jump.proc.stderr().contains("PROXY header from 127.0.0.7"),
        "{}",
        w.jump.proc.stderr()
    );
}
