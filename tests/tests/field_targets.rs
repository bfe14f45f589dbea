//! Targets as they are in the field. A stock Dropbear (Debian's `dropbear-bin`) is the
//! customer's SSH server for an account made by the test: enable writes a key line Dropbear
//! accepts and proves the login works; `support-cli connect` and stock `ssh -J` run commands
//! as that account; the line is gone after `disable`, and after a `kill -9` of the agent
//! once it starts again. An OpenSSH whose `AuthorizedKeysFile` is elsewhere makes enable fail
//! with the server and the file named, no code shown and no line left.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use assist_e2e::account::TestUser;
use assist_e2e::dropbear::Dropbear;
use assist_e2e::{
    Jumphost, Proc, READY_TIMEOUT, Sshd, alice_policy, assist_client, bin, keygen, text, wait_until,
};

const SERIAL: &str = "SN-0001";
const MARKER: &str = "assist-client:SN-0001";
const SHORT: Duration = Duration::from_secs(30);

struct World {
    dir: tempfile::TempDir,
    jump: Jumphost,
    alice_key: PathBuf,
}

impl World {
    fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let alice_key = dir.path().join("alice");
        let alice = keygen(&alice_key);
        let jump = Jumphost::start(dir.path(), &alice_policy("", &alice));
        World {
            dir,
            jump,
            alice_key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// client.toml for `ssh` at `target`, logging in as `user` (its own key file unless
    /// `keys_file` names one).
    fn client_config(&self, target: &str, user: &str, keys_file: Option<&Path>) -> PathBuf {
        let config = self.path("client.toml");
        let keys = keys_file
            .map(|f| format!("authorized_keys = \"{}\"\n", f.display()))
            .unwrap_or_default();
        fs::write(
            &config,
            format!(
                "serial = \"{SERIAL}\"\njumphost = \"{}\"\napi_url = \"{}\"\n\
                 data_dir = \"{}\"\nweb_listen = \"127.0.0.1:0\"\ntarget_user = \"{user}\"\n\
                 {keys}\n[services]\nssh = \"{target}\"\n",
                self.jump.ssh_addr,
                self.jump.api_url,
                self.path("data").display(),
            ),
        )
        .unwrap();
        config
    }

    /// `support-cli` as alice, with its own known_hosts.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("support-cli"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .arg("--jumphost")
            .arg(self.jump.ssh_addr.to_string())
            .args(["--engineer", "alice", "--identity"])
            .arg(&self.alice_key)
            .arg("--known-hosts")
            .arg(self.path("known_hosts"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn start_agent(config: &Path) -> Proc {
    let mut cmd = Command::new(bin("assist-client"));
    cmd.arg("run").arg("--config").arg(config);
    let mut agent = Proc::spawn(cmd, "agent");
    agent.wait_line("web listening on http://", READY_TIMEOUT);
    agent
}

/// `enable`, which must succeed; returns the code.
fn enable(config: &Path, agent: &Proc) -> String {
    let out = assist_client(config, &["enable", "--minutes", "10"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "enable: {stdout}{}\nagent: {}",
        text(&out.stderr),
        agent.stderr()
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("code:"))
        .unwrap()
        .trim()
        .to_owned()
}

fn our_lines(keys: &Path) -> Vec<String> {
    fs::read_to_string(keys)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(MARKER))
        .map(str::to_owned)
        .collect()
}

/// The agent's log line of the login check at enable, for the closing note's figure.
fn login_check_ms(agent: &Proc) -> String {
    agent
        .stderr()
        .lines()
        .rfind(|l| l.contains("login check passed"))
        .and_then(|l| l.split("ms=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_owned()
}

#[test]
fn dropbear_takes_a_key_line_it_understands_and_the_engineer_gets_in() {
    let w = World::start();
    let user = TestUser::create(&w.path("home"), "db", "/bin/sh");
    user.fresh_ssh_dir("");
    let dropbear = Dropbear::start(w.dir.path());
    let config = w.client_config(&dropbear.addr.to_string(), &user.name, None);
    let mut agent = start_agent(&config);

    let code = enable(&config, &agent);
    eprintln!("login check at enable: {} ms", login_check_ms(&agent));
    let lines = our_lines(&user.keys());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0]
            .starts_with("no-agent-forwarding,no-X11-forwarding,no-port-forwarding ssh-ed25519 "),
        "{lines:?}"
    );
    // status says who enforces the window here.
    let out = assist_client(&config, &["status"]);
    let status = text(&out.stdout);
    assert!(
        status.contains("ssh server: dropbear_") && status.contains("enforced by this agent alone"),
        "{status}"
    );
    assert!(
        !dropbear.log().contains("Bad public key options"),
        "{}",
        dropbear.log()
    );

    // support-cli: a command as the account, its exit status passed on.
    let out = w.cli(&[
        "connect", SERIAL, "--code", &code, "--user", &user.name, "--", "id", "-un",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        dropbear.log()
    );
    assert_eq!(text(&out.stdout).trim(), user.name);
    let out = w.cli(&[
        "connect", SERIAL, "--code", &code, "--user", &user.name, "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));

    // Stock ssh -J with the exported key, pinning the host key the device proved.
    let key = w.path("exported");
    let out = w.cli(&[
        "key",
        SERIAL,
        "--code",
        &code,
        "--out",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pins = w.path("exported.known_hosts");
    assert_eq!(
        fs::read_to_string(&pins).unwrap(),
        format!("{SERIAL} {}\n", dropbear.host_key_pub)
    );
    let jump_port = w.jump.ssh_port();
    let out = assist_e2e::ProxyJump {
        jump_port: &jump_port,
        engineer: "alice",
        engineer_key: &w.alice_key,
        host: SERIAL,
        user: &user.name,
        key: &key,
        known_hosts: Some(&pins),
    }
    .run(&w.path("ssh_config"), "echo stock-$((6*7)) $(id -un)");
    assert!(out.status.success(), "ssh -J: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("stock-42 {}\n", user.name));

    // disable takes the line out: the same key is refused at once.
    let out = assist_client(&config, &["disable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(our_lines(&user.keys()).is_empty());

    // A crash (kill -9) leaves the line behind; the next start takes it out.
    let _code = enable(&config, &agent);
    assert_eq!(our_lines(&user.keys()).len(), 1);
    agent.kill9();
    assert_eq!(
        our_lines(&user.keys()).len(),
        1,
        "the line outlives a kill -9"
    );
    let _agent = start_agent(&config);
    wait_until(SHORT, "the stale line to be purged at start", || {
        our_lines(&user.keys()).is_empty()
    });
    assert_eq!(fs::read_to_string(user.keys()).unwrap(), "");
}

#[test]
fn an_openssh_that_reads_another_file_fails_enable_with_the_reason_and_no_code() {
    let w = World::start();
    // sshd reads the harness's file for root; the agent is told to write another one.
    let sshd = Sshd::start(w.dir.path());
    let written = w.path("root_authorized_keys");
    fs::write(&written, "").unwrap();
    let config = w.client_config(&sshd.addr.to_string(), "root", Some(&written));
    let _agent = start_agent(&config);

    let out = assist_client(&config, &["enable", "--minutes", "10"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "enable succeeded: {stdout}");
    assert!(!stdout.contains("code:"), "{stdout}");
    assert!(
        stderr.contains(&format!("the SSH server on {} (OpenSSH_", sshd.addr))
            && stderr.contains(&format!(
                "refused the key: it does not read {} or rejects its options",
                written.display()
            )),
        "{stderr}"
    );
    assert!(stderr.contains("AuthorizedKeysFile"), "{stderr}");
    assert!(our_lines(&written).is_empty(), "a line was left behind");
    assert_eq!(fs::read_to_string(&written).unwrap(), "");
    assert!(our_lines(&sshd.authorized_keys).is_empty());

    // status says why, and no window is open.
    let out = assist_client(&config, &["status"]);
    let status = text(&out.stdout);
    assert!(status.contains("assistance: disabled"), "{status}");
    assert!(
        status.contains("enabling failed: the SSH server on"),
        "{status}"
    );
}
