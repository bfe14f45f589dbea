//! The customer's web page in a real browser: headless Chromium driven over WebDriver logs in,
//! enables assistance, reads the code, a stock `ssh` hops in with it, the page shows the
//! engineer, Stop ends it and the key line is gone. Screenshots of each state are taken every
//! run; with `UPDATE_SCREENSHOTS=1` they replace the README's in docs/screenshots/.

mod browser;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assist_e2e::{
    Jumphost, Proc, READY_TIMEOUT, Sshd, bin, keygen, ssh, ssh_options, write_client_config,
    write_derived_key,
};
use browser::{UI, browser, click, shot, start_chromedriver, wait_text};
use fantoccini::Locator;

const SERIAL: &str = "SN-0001";
const MARKER: &str = "assist-client:SN-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_enables_shows_the_engineer_and_stops_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    // The policy's line names the key: the page shows that name.
    let alice_pub = keygen(&dir.path().join("alice")).replace(" test", " alice@laptop");
    let sshd = Sshd::start(dir.path());
    fs::write(&sshd.authorized_keys, "# admin keys\n").unwrap();
    let policy = format!(
        "[allowlist]\nsupport_cidrs = [\"127.0.0.0/8\"]\n\n[serials]\nallow = [\"SN-*\"]\n\n\
         [[support]]\nname = \"alice\"\npublic_key = \"{alice_pub}\"\n"
    );
    let jump = Jumphost::start(dir.path(), &policy);
    let folder = dir.path().join("client");
    let config = write_client_config(&folder, SERIAL, &jump, &sshd);
    let mut cmd = Command::new(bin("assist-client"));
    cmd.arg("run").arg("--config").arg(&config);
    let mut agent = Proc::spawn(cmd, "agent");
    let web = agent.wait_line("web listening on http://", READY_TIMEOUT);
    let token = fs::read_to_string(folder.join("data/control-token")).unwrap();

    let (_driver, port) = start_chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(port, profile.path()).await;

    // Log in with the access key, see "off".
    c.goto(&format!("http://{web}/")).await.unwrap();
    wait_text(&c, "#login-title", "the login form", |t| !t.is_empty()).await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(token.trim())
        .await
        .unwrap();
    click(&c, "#login-form button[type=submit]").await;
    wait_text(&c, "#state", "off", |t| t.contains("is OFF")).await;
    shot(&c, "off.png").await;

    // Enable: the code appears, grouped, and the tunnel connects.
    click(&c, "#enable").await;
    let code = wait_text(&c, "#code", "the code", |t| {
        t.len() == 11 && t.as_bytes()[5] == b'-'
    })
    .await;
    wait_text(&c, "#state", "on", |t| t.contains("is ON")).await;
    wait_text(&c, "#countdown", "a countdown", |t| t.contains("left")).await;
    wait_text(&c, "#tunnel", "connected", |t| t.starts_with("Connected")).await;
    assert!(
        fs::read_to_string(&sshd.authorized_keys)
            .unwrap()
            .contains(MARKER)
    );
    shot(&c, "on.png").await;

    // The engineer hops in with the code read off the page.
    let key = dir.path().join("derived");
    write_derived_key(&key, SERIAL, code.trim());
    let proxy = format!(
        "ProxyCommand=ssh {} -i {} -p {} -W %h:%p alice@127.0.0.1",
        ssh_options("ERROR").join(" "),
        dir.path().join("alice").display(),
        jump.ssh_port()
    );
    let target = format!("root@{SERIAL}");
    let hop = |cmd: &str| {
        let mut c = ssh(&["-o", &proxy, "-o", "IdentitiesOnly=yes", "-i"]);
        c.arg(&key).arg(&target).arg(cmd).stdin(Stdio::null());
        c
    };
    let out = hop("echo hello-from-engineer").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello-from-engineer"),
        "hop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A session that stays open: the page shows the engineer connected, and the history.
    let mut long = hop("echo in; sleep 120")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Who, by the name the jump host logged them in with, not only an address.
    wait_text(&c, "#engineer", "the engineer", |t| {
        t.starts_with(
            "Connected now: alice (vendor key 'alice@laptop') from 127.0.0.1 → ssh, since ",
        )
    })
    .await;
    // The history names the engineer, the service and the address as the jump host saw it.
    // The open session's duration counts up while it runs (bytes are polled the same way,
    // see agent::a_sessions_bytes_show_while_it_runs_and_stay_after_stop).
    wait_text(&c, "#history-rows", "a running duration", |t| {
        t.contains("open, 0:02")
    })
    .await;
    wait_text(&c, "#history-rows", "the history", |t| {
        t.contains("open")
            && t.contains("alice (vendor key 'alice@laptop')")
            && t.contains("ssh")
            && t.contains("127.0.0.1:")
    })
    .await;
    c.execute(
        "document.getElementById('activity-title').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    shot(&c, "engineer-connected.png").await;

    // Stop: off again, the engineer's session ends, the key line is gone.
    click(&c, "#stop").await;
    wait_text(&c, "#state", "off after stop", |t| t.contains("is OFF")).await;
    let deadline = Instant::now() + UI;
    loop {
        if long.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = long.kill();
            panic!("the engineer's session survived Stop");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = fs::read_to_string(&sshd.authorized_keys).unwrap();
    assert!(!keys.contains(MARKER), "{keys}");
    assert_eq!(keys, "# admin keys\n");
    let out = hop("true").output().unwrap();
    assert!(!out.status.success(), "the code still works after Stop");

    c.close().await.unwrap();
    agent.terminate();
}

/// `assist-client page` prints the page's address with the access key; opened as is, it logs a
/// headless browser straight in (no form, the key gone from the address bar). In a desktop
/// session it hands the address to `xdg-open` (a stand-in here that records it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_command_prints_a_url_that_logs_a_browser_straight_in() {
    let dir = tempfile::tempdir().unwrap();
    let alice_pub = keygen(&dir.path().join("alice"));
    let sshd = Sshd::start(dir.path());
    let policy = format!(
        "[allowlist]\nsupport_cidrs = [\"127.0.0.0/8\"]\n\n[serials]\nallow = [\"SN-*\"]\n\n\
         [[support]]\nname = \"alice\"\npublic_key = \"{alice_pub}\"\n"
    );
    let jump = Jumphost::start(dir.path(), &policy);
    let folder = dir.path().join("client");
    let config = write_client_config(&folder, SERIAL, &jump, &sshd);
    let mut cmd = Command::new(bin("assist-client"));
    cmd.arg("run").arg("--config").arg(&config);
    let mut agent = Proc::spawn(cmd, "agent");
    let web = agent.wait_line("web listening on http://", READY_TIMEOUT);
    let token = fs::read_to_string(folder.join("data/control-token")).unwrap();

    // A desktop session: DISPLAY set and an xdg-open on PATH.
    let fake_bin = dir.path().join("bin");
    fs::create_dir(&fake_bin).unwrap();
    let opened = dir.path().join("opened");
    let xdg_open = fake_bin.join("xdg-open");
    fs::write(
        &xdg_open,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" > {0}.part && mv {0}.part {0}\n",
            opened.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&xdg_open, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", fake_bin.display(), std::env::var("PATH").unwrap());
    let page = |desktop: bool| {
        let mut cmd = Command::new(bin("assist-client"));
        cmd.arg("page").arg("--config").arg(&config);
        cmd.env("PATH", &path).env_remove("WAYLAND_DISPLAY");
        if desktop {
            cmd.env("DISPLAY", ":99");
        } else {
            cmd.env_remove("DISPLAY");
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "page: {stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (stdout, stderr) = page(true);
    let url = format!("http://{web}/#token={}", token.trim());
    assert_eq!(stdout, format!("{url}\n"));
    assert!(
        stderr.contains("opened in the desktop's browser"),
        "{stderr}"
    );
    assist_e2e::wait_until(UI, "xdg-open to be run", || opened.exists());
    assert_eq!(fs::read_to_string(&opened).unwrap(), format!("{url}\n"));

    // Without a desktop it only prints, and says what to do with the address.
    fs::remove_file(&opened).unwrap();
    let (stdout, stderr) = page(false);
    assert_eq!(stdout, format!("{url}\n"));
    assert!(
        stderr.contains("open this address in a browser"),
        "{stderr}"
    );
    assert!(!opened.exists(), "xdg-open ran without a desktop");

    // `status` points at the command.
    let out = Command::new(bin("assist-client"))
        .arg("status")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("web page: run `assist-client page --config"),
        "{human}"
    );

    // The printed address logs a browser straight in.
    let (_driver, port) = start_chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(port, profile.path()).await;
    c.goto(stdout.trim()).await.unwrap();
    wait_text(&c, "#state", "logged in", |t| t.contains("is OFF")).await;
    let login = c.find(Locator::Css("#login")).await.unwrap();
    assert!(
        !login.is_displayed().await.unwrap(),
        "the login form is shown"
    );
    let address = c.current_url().await.unwrap();
    assert!(!address.as_str().contains("token"), "{address}");
    // The session works for changes too: enable from the page, the code appears.
    click(&c, "#enable").await;
    wait_text(&c, "#code", "the code", |t| {
        t.len() == 11 && t.as_bytes()[5] == b'-'
    })
    .await;
    click(&c, "#stop").await;
    wait_text(&c, "#state", "off after stop", |t| t.contains("is OFF")).await;

    c.close().await.unwrap();
    agent.terminate();
}

/// The page's Extend moves the window's end and keeps everything else: the engineer's open
/// `support-cli connect … -- sleep` session goes on, the code on the page and in the key
/// line stays (only `expiry-time` moves), and a later hop with the same code works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_keeps_the_code_and_the_open_sessions_and_the_page_names_each_engineer() {
    let dir = tempfile::tempdir().unwrap();
    let alice_pub = keygen(&dir.path().join("alice")).replace(" test", " alice@laptop");
    // carol has no [[support]] entry: a certificate of the vendor's CA logs her in.
    let ca_pub = keygen(&dir.path().join("ca"));
    let carol = dir.path().join("carol");
    keygen(&carol);
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(dir.path().join("ca"))
        .args(["-I", "carol@corp", "-n", "carol", "-V", "-5m:+1h"])
        .arg(carol.with_extension("pub"))
        .output()
        .unwrap();
    assert!(signed.status.success(), "{signed:?}");
    let sshd = Sshd::start(dir.path());
    let policy = format!(
        "[allowlist]\nsupport_cidrs = [\"127.0.0.0/8\"]\n\n[serials]\nallow = [\"SN-*\"]\n\n\
         [[support]]\nname = \"alice\"\npublic_key = \"{alice_pub}\"\n\n\
         [[support_ca]]\npublic_key = \"{ca_pub}\"\n"
    );
    let jump = Jumphost::start(dir.path(), &policy);
    let folder = dir.path().join("client");
    let config = write_client_config(&folder, SERIAL, &jump, &sshd);
    let mut cmd = Command::new(bin("assist-client"));
    cmd.arg("run").arg("--config").arg(&config);
    let mut agent = Proc::spawn(cmd, "agent");
    let web = agent.wait_line("web listening on http://", READY_TIMEOUT);
    let token = fs::read_to_string(folder.join("data/control-token")).unwrap();

    let (_driver, port) = start_chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(port, profile.path()).await;
    c.goto(&format!("http://{web}/#token={}", token.trim()))
        .await
        .unwrap();
    wait_text(&c, "#state", "off", |t| t.contains("is OFF")).await;
    click(&c, "#enable").await;
    let code = wait_text(&c, "#code", "the code", |t| {
        t.len() == 11 && t.as_bytes()[5] == b'-'
    })
    .await;
    wait_text(&c, "#tunnel", "connected", |t| t.starts_with("Connected")).await;
    // The default hour: under an hour left.
    wait_text(&c, "#countdown", "an hour's countdown", |t| {
        t.contains(" 59:")
    })
    .await;
    let line_before = key_line(&sshd.authorized_keys);

    let engineer = |args: &[&str]| {
        let mut cmd = Command::new(bin("support-cli"));
        cmd.args([
            "--jumphost",
            &jump.ssh_addr.to_string(),
            "--engineer",
            "alice",
        ])
        .arg("--identity")
        .arg(dir.path().join("alice"))
        .arg("--known-hosts")
        .arg(dir.path().join("engineer_known_hosts"))
        .args(["connect", SERIAL, "--code", code.trim(), "--"])
        .args(args)
        .stdin(Stdio::null());
        cmd
    };
    let mut long = engineer(&["sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // carol holds a stock ssh session with her certificate.
    let key = dir.path().join("derived");
    write_derived_key(&key, SERIAL, code.trim());
    let proxy = format!(
        "ProxyCommand=ssh {} -i {} -p {} -W %h:%p carol@127.0.0.1",
        ssh_options("ERROR").join(" "),
        carol.display(),
        jump.ssh_port()
    );
    let mut held = ssh(&["-o", &proxy, "-o", "IdentitiesOnly=yes", "-i"])
        .arg(&key)
        .arg(format!("root@{SERIAL}"))
        .arg("sleep 300")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let who = wait_text(&c, "#engineer", "both engineers by name", |t| {
        t.contains("alice (vendor key 'alice@laptop') from 127.0.0.1 → ssh, since ")
            && t.contains("carol (certificate 'carol@corp' of CA SHA256:")
    })
    .await;
    assert!(who.starts_with("Connected now: "), "{who}");
    // The CLI says the same.
    let out = Command::new(bin("assist-client"))
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("  alice (vendor key 'alice@laptop') from 127.0.0.1 → ssh, since 20")
            && human.contains("  carol (certificate 'carol@corp' of CA SHA256:"),
        "{human}"
    );

    // Extend to two hours from now.
    c.execute(
        "document.getElementById('extend-minutes').value = '120'",
        vec![],
    )
    .await
    .unwrap();
    click(&c, "#extend").await;
    let notice = wait_text(&c, "#notice", "the extension's notice", |t| !t.is_empty()).await;
    assert!(
        notice.contains("code stays the same") && notice.contains("2 open sessions go on"),
        "{notice}"
    );
    wait_text(&c, "#countdown", "the countdown moved", |t| {
        t.contains(" 1:59:") || t.contains(" 2:00:00")
    })
    .await;
    assert_eq!(
        wait_text(&c, "#code", "the same code", |t| !t.is_empty()).await,
        code,
        "the code changed"
    );
    // The key line: the same key and options, a later expiry-time.
    let line_after = key_line(&sshd.authorized_keys);
    assert_ne!(line_before, line_after);
    let without_expiry = |l: &str| l.split_once("\",").map(|(_, rest)| rest.to_owned());
    assert_eq!(without_expiry(&line_before), without_expiry(&line_after));
    assert!(line_after.starts_with("expiry-time=\"20"), "{line_after}");
    assert!(
        line_after["expiry-time=\"".len()..] > line_before["expiry-time=\"".len()..],
        "{line_before} → {line_after}"
    );

    // The engineers' sessions are still there, and the same code opens another one.
    assert!(
        long.try_wait().unwrap().is_none(),
        "the session ended at Extend"
    );
    assert!(held.try_wait().unwrap().is_none(), "carol's session ended");
    let out = engineer(&["echo", "still-welcome"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still-welcome"),
        "a hop after Extend failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(long.try_wait().unwrap().is_none());

    click(&c, "#stop").await;
    wait_text(&c, "#state", "off after stop", |t| t.contains("is OFF")).await;
    let status = long.wait().unwrap();
    assert!(!status.success(), "the session outlived Stop");
    assert!(!held.wait().unwrap().success());
    // The window stays on the page as a past one, with who was on and how it ended.
    let past = wait_text(&c, "#past", "the past window", |t| {
        t.contains("stopped on the web page")
    })
    .await;
    assert!(
        past.contains("enabled on the web page")
            && past.contains("extended 1×")
            && past.contains("alice (vendor key 'alice@laptop') from 127.0.0.1 → ssh")
            && past.contains("carol (certificate 'carol@corp' of CA SHA256:"),
        "{past}"
    );
    c.execute(
        "document.getElementById('past-title').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    shot(&c, "history.png").await;
    c.close().await.unwrap();
    agent.terminate();
}

/// The one line the agent keeps in `authorized_keys`.
fn key_line(path: &Path) -> String {
    let keys = fs::read_to_string(path).unwrap();
    let mut ours = keys.lines().filter(|l| l.ends_with(MARKER));
    let line = ours.next().expect("the agent's key line").to_owned();
    assert!(ours.next().is_none(), "{keys}");
    line
}
