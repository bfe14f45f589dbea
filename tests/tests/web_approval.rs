//! Approval per connection in a real browser: with `approve_connections = true` the
//! engineer's `support-cli connect` waits until the customer clicks Allow on the page and then
//! works; Deny closes it and the engineer is told why; the history keeps both. (No answer at
//! all closes it after 60 s: `approval::tests::unanswered_closes_after_the_wait_and_leaves_the_list`
//! covers that with paused time.)

mod browser;

use std::fs;
use std::process::{Command, Output, Stdio};

use assist_e2e::{Jumphost, Proc, READY_TIMEOUT, Sshd, bin, keygen, write_client_config};
use browser::{browser, click, shot, start_chromedriver, wait_text};
use fantoccini::Locator;

const SERIAL: &str = "SN-0001";

async fn finished(child: std::process::Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waits_for_allow_and_deny_closes_it_with_the_reason() {
    allow_then_deny(false).await;
}

/// The same on the built-in target, which is the end of the engineer's SSH session itself:
/// its channel is accepted before the customer is asked too, so the wait is the customer's
/// 60 s (not the jump host's channel-open timeout) and a Deny reaches the engineer in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_built_in_target_too() {
    allow_then_deny(true).await;
}

async fn allow_then_deny(builtin: bool) {
    let dir = tempfile::tempdir().unwrap();
    let alice_pub = keygen(&dir.path().join("alice")).replace(" test", " alice@laptop");
    let sshd = Sshd::start(dir.path());
    let policy = format!(
        "[allowlist]\nsupport_cidrs = [\"127.0.0.0/8\"]\n\n[serials]\nallow = [\"SN-*\"]\n\n\
         [[support]]\nname = \"alice\"\npublic_key = \"{alice_pub}\"\n"
    );
    let jump = Jumphost::start(dir.path(), &policy);
    let folder = dir.path().join("client");
    let config = write_client_config(&folder, SERIAL, &jump, &sshd);
    let mut text = fs::read_to_string(&config).unwrap().replace(
        "target_user = \"root\"\n",
        "target_user = \"root\"\napprove_connections = true\n",
    );
    if builtin {
        let sshd_line = format!("ssh = \"{}\"", sshd.addr);
        assert!(text.contains(&sshd_line), "{text}");
        text = text.replace(&sshd_line, "ssh = \"builtin\"");
    }
    fs::write(&config, text).unwrap();
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

    let engineer = |words: &str| {
        Command::new(bin("support-cli"))
            .args(["--jumphost", &jump.ssh_addr.to_string()])
            .args(["--engineer", "alice", "--identity"])
            .arg(dir.path().join("alice"))
            .arg("--known-hosts")
            .arg(dir.path().join("engineer_known_hosts"))
            .args([
                "connect",
                SERIAL,
                "--code",
                code.trim(),
                "--",
                "echo",
                words,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let request = "alice from 127.0.0.1 asks to connect to ssh";

    // Allow: the engineer waits on the page, by name, until the click; then it works.
    let mut waiting = engineer("allowed-in");
    wait_text(&c, "#approval-list", "the request", |t| t.contains(request)).await;
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the connection went ahead without an answer"
    );
    let status = Command::new(bin("assist-client"))
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["connections"]["active"], 0,
        "the agent relayed to sshd before Allow: {status}"
    );
    shot(&c, "approval.png").await;
    click(&c, "#approval-list button.allow").await;
    let out = finished(waiting).await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("allowed-in"),
        "allowed connection failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let approvals = c.find(Locator::Css("#approvals")).await.unwrap();
    assert!(
        !approvals.is_displayed().await.unwrap(),
        "the answered request is still shown"
    );

    // Deny: closed, and the engineer reads why.
    let waiting = engineer("denied-in");
    wait_text(&c, "#approval-list", "the second request", |t| {
        t.contains(request)
    })
    .await;
    click(&c, "#approval-list button.deny").await;
    let out = finished(waiting).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a denied connection succeeded");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("denied-in"));
    assert!(
        stderr.contains("the session with SN-0001 ended: connection denied by the customer"),
        "{stderr}"
    );

    // The customer's history keeps both, the refused one with how it ended.
    let history = Command::new(bin("assist-client"))
        .args(["history", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&history.stdout);
    assert!(
        history.contains("alice (vendor key 'alice@laptop') from 127.0.0.1 → ssh")
            && history.contains("(denied by the customer)"),
        "{history}"
    );
    click(&c, "#stop").await;
    wait_text(&c, "#state", "off after stop", |t| t.contains("is OFF")).await;
    let past = wait_text(&c, "#past", "the past window", |t| {
        t.contains("denied by the customer")
    })
    .await;
    assert!(past.contains("alice (vendor key 'alice@laptop')"), "{past}");
    c.close().await.unwrap();
    agent.terminate();
}
