//! What the jump host allows, tried as an attacker and an admin would: a revoked engineer
//! who stays connected, a narrowed scope, a reset serial with a live tunnel, OpenSSH user
//! certificates made with `ssh-keygen -s`, and the data folder's modes. Real
//! `assist-jumphost`, stock OpenSSH for device, engineer and customer sshd.
// Test helpers fail the test by panicking, as the #[test] functions do.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use assist_e2e::{Proc, bin, keygen, text, wait_until};

mod relay_world;

use assist_e2e::policy;
use relay_world::{SHORT, World};

/// The revocation target: a revoked engineer's open hop is cut within this of the save.
const CUT_WITHIN: Duration = Duration::from_secs(2);

/// A hop of `engineer` to `serial` that prints a line and then holds the session open.
fn held_hop(w: &World, engineer: &str, serial: &str) -> Proc {
    let cmd = w.hop_cmd(engineer, serial, "echo started; exec sleep 120", None);
    let mut hop = Proc::spawn(cmd, &format!("{engineer} hop"));
    hop.wait_line("started", SHORT);
    hop
}

/// Waits until `proc` exits; returns how long after `since` that was.
fn exited_after(proc: &mut Proc, since: Instant, what: &str) -> Duration {
    wait_until(SHORT, what, || !proc.is_running());
    since.elapsed()
}

/// Rows of the audit trail of `kind` for `who`, as `outcome` lines.
fn audit(w: &World, kind: &str, who: &str) -> String {
    w.jump.sql(&format!(
        "SELECT outcome FROM audit_events WHERE kind = '{kind}' AND who = '{who}' ORDER BY id"
    ))
}

fn wait_audit(w: &World, kind: &str, who: &str, want: &str) {
    wait_until(SHORT, &format!("audit row {kind} {who}: {want}"), || {
        audit(w, kind, who).contains(want)
    });
}

#[test]
fn a_removed_engineer_is_cut_off_within_two_seconds_and_others_stay() {
    let w = World::start();
    let key = w.register("SN-0001");
    let _device = w.device("SN-0001", &key);
    let mut alice = held_hop(&w, "alice", "SN-0001");
    let mut bob = held_hop(&w, "bob", "SN-0001");
    assert_eq!(w.jump.status()["hops"].as_array().unwrap().len(), 2);

    // The admin deletes alice's [[support]] entry.
    let bob_key = w.public("bob");
    let saved = w.edit_policy(&policy(
        r#"["127.0.0.1/32"]"#,
        "[]",
        "30d",
        &[("bob", &bob_key)],
    ));
    let cut = exited_after(&mut alice, saved, "alice's hop cut");
    println!("measured: revoked engineer's open hop cut {cut:?} after the policy file was saved");
    assert!(cut < CUT_WITHIN, "cut after {cut:?}");
    assert!(bob.is_running(), "bob is still allowed: {}", bob.stderr());
    wait_audit(
        &w,
        "ssh.session",
        "alice",
        "ended: no longer allowed: the key of engineer alice is no longer in the policy",
    );
    // Nor can alice come back.
    let out = w.hop("alice", "SN-0001", "true", None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );

    // The address leaves support_cidrs: bob goes too; the device stays.
    let saved = w.edit_policy(&policy(
        r#"["10.0.0.0/8"]"#,
        "[]",
        "30d",
        &[("bob", &bob_key)],
    ));
    let cut = exited_after(&mut bob, saved, "bob's hop cut");
    assert!(cut < CUT_WITHIN, "cut after {cut:?}");
    wait_audit(&w, "ssh.session", "bob", "not in support_cidrs");
    assert_eq!(w.jump.status()["devices"].as_array().unwrap().len(), 1);
}

#[test]
fn a_scope_narrowed_while_hopping_closes_that_hop_and_refuses_the_next() {
    let w = World::start();
    let key = w.register("SN-0001");
    let _device = w.device("SN-0001", &key);
    let eu_key = w.register("SN-EU-7");
    let _eu = w.device("SN-EU-7", &eu_key);
    let mut hop = held_hop(&w, "alice", "SN-0001");
    let mut eu_hop = held_hop(&w, "alice", "SN-EU-7");

    let base = policy(r#"["127.0.0.1/32"]"#, "[]", "30d", &[]);
    let scoped = format!(
        "{base}\n[[support]]\nname = \"alice\"\npublic_key = \"{}\"\nserials = [\"SN-EU-*\"]\n",
        w.public("alice")
    );
    let saved = w.edit_policy(&scoped);
    let cut = exited_after(&mut hop, saved, "the out-of-scope hop cut");
    assert!(cut < CUT_WITHIN, "cut after {cut:?}");
    assert!(
        eu_hop.is_running(),
        "the hop inside the scope: {}",
        eu_hop.stderr()
    );
    wait_audit(
        &w,
        "ssh.hop",
        "alice",
        "closed SN-0001:22: engineer alice may not reach serial SN-0001 (allowed: serials SN-EU-*)",
    );

    // The next attempt is refused at open, and the engineer reads why.
    let out = w.hop("alice", "SN-0001", "true", None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("engineer alice may not reach serial SN-0001 (allowed: serials SN-EU-*)"),
        "{err}"
    );
    wait_audit(&w, "ssh.channel", "alice", "may not reach serial SN-0001");

    // support-cli prints the jump host's reason too, not just a refusal code.
    let out = Command::new(bin("support-cli"))
        .args([
            "--jumphost",
            &w.jump.ssh_addr.to_string(),
            "--engineer",
            "alice",
        ])
        .arg("--identity")
        .arg(w.path("alice"))
        .arg("--known-hosts")
        .arg(w.path("known_hosts"))
        .args(["connect", "SN-0001", "--code", "7K3QM-2XPD9", "--", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("engineer alice may not reach serial SN-0001 (allowed: serials SN-EU-*)"),
        "{err}"
    );
    assert!(!err.contains("did not prove"), "{err}");
}

#[test]
fn a_reset_serial_or_a_serial_leaving_the_policy_ends_the_live_tunnel() {
    let w = World::start();
    let one = w.register("SN-0001");
    let mut device = w.device("SN-0001", &one);
    let two = w.register("SN-0002");
    let mut second = w.device("SN-0002", &two);

    let started = Instant::now();
    let out = Command::new(bin("assist-jumphost"))
        .args(["serial", "reset", "SN-0001", "--config"])
        .arg(&w.jump.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("removed the binding of key SHA256:"),
        "{said}"
    );
    assert!(
        said.contains("its live session on the running jump host was ended"),
        "{said}"
    );
    let gone = exited_after(&mut device, started, "the reset device's session ended");
    assert!(gone < CUT_WITHIN, "ended after {gone:?}");
    wait_audit(
        &w,
        "ssh.session",
        "SN-0001",
        "the jump host admin reset this serial",
    );
    assert_eq!(
        w.jump
            .sql("SELECT COUNT(*) FROM bindings WHERE serial = 'SN-0001'")
            .trim(),
        "0"
    );
    // Its key no longer logs in.
    let again = w.device_unchecked("SN-0001", &one);
    let mut again = again;
    wait_until(SHORT, "the old key refused", || !again.is_running());

    // A serial the policy stops allowing: its tunnel ends at the reload.
    let text_now = policy(r#"["127.0.0.1/32"]"#, "[]", "30d", &[]).replace("SN-*", "LAB-*");
    let saved = w.edit_policy(&text_now);
    let gone = exited_after(&mut second, saved, "the disallowed device's session ended");
    assert!(gone < CUT_WITHIN, "ended after {gone:?}");
    wait_audit(
        &w,
        "ssh.session",
        "SN-0002",
        "serial SN-0002 is no longer allowed by policy",
    );
}

/// `ssh-keygen -s CA -I ID -n PRINCIPALS [OPTIONS] KEY.pub`: writes KEY-cert.pub.
fn sign(ca: &Path, key: &Path, id: &str, principals: &str, options: &[&str]) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", id, "-n", principals])
        .args(options)
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -s: {}", text(&out.stderr));
}

#[test]
fn engineers_log_in_with_certificates_of_a_listed_ca_and_only_as_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_pub = keygen(&ca);
    let rogue_ca = dir.path().join("rogue-ca");
    keygen(&rogue_ca);
    let extra = format!("[[support_ca]]\npublic_key = \"{ca_pub}\"\nserials = [\"SN-*\"]\n");
    let w = World::start_full(r#"["127.0.0.1/32"]"#, "[]", "30d", "", &extra);
    let key = w.register("SN-0001");
    let _device = w.device("SN-0001", &key);

    // Each engineer key sits in the world's folder, its certificate beside it, as ssh and
    // support-cli look for it.
    let cert = |name: &str, ca: &Path, principals: &str, options: &[&str]| {
        let key = w.path(name);
        keygen(&key);
        sign(ca, &key, &format!("{name}@laptop"), principals, options);
    };
    cert("carol", &ca, "carol", &["-V", "-5m:+1h"]);
    cert("dave", &ca, "carol", &["-V", "-5m:+1h"]);
    cert(
        "erin",
        &ca,
        "erin",
        &["-V", "-5m:+1h", "-O", "source-address=127.0.0.2"],
    );
    cert("frank", &rogue_ca, "frank", &["-V", "-5m:+1h"]);

    let out = w.hop("carol", "SN-0001", "echo in as $(whoami)", None);
    assert!(out.status.success(), "carol: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "in as root");
    wait_audit(
        &w,
        "ssh.auth",
        "carol",
        "accepted engineer with certificate \"carol@laptop\" of CA SHA256:",
    );

    for (name, why) in [
        ("dave", "does not name dave among its principals"),
        ("erin", "does not allow 127.0.0.1 (source-address)"),
        ("frank", "signed by a CA that is not a [[support_ca]]"),
    ] {
        let out = w.hop(name, "SN-0001", "true", None);
        assert!(!out.status.success(), "{name} got in");
        wait_audit(&w, "ssh.auth", name, why);
    }

    // support-cli offers the certificate beside --identity.
    let known = w.path("known_hosts");
    let mut forward = Command::new(bin("support-cli"));
    forward
        .args([
            "--jumphost",
            &w.jump.ssh_addr.to_string(),
            "--engineer",
            "carol",
            "--identity",
        ])
        .arg(w.path("carol"))
        .arg("--known-hosts")
        .arg(&known)
        .args([
            "forward",
            "SN-0001",
            "--service",
            "ssh",
            "--listen",
            "127.0.0.1:0",
        ]);
    let mut forward = Proc::spawn(forward, "support-cli forward");
    let local = forward.wait_line("forwarding ", SHORT);
    let local = local.split_whitespace().next().unwrap().to_owned();
    let (host, port) = local.rsplit_once(':').unwrap();
    let out = relay_world::ssh(&[
        "-i",
        w.target_key.to_str().unwrap(),
        "-p",
        port,
        &format!("root@{host}"),
        "echo through support-cli",
    ])
    .stdin(std::process::Stdio::null())
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stderr),
        forward.stderr()
    );
    assert_eq!(text(&out.stdout).trim(), "through support-cli");

    // Removing the CA from the policy ends carol's session.
    let saved = w.edit_policy(&policy(r#"["127.0.0.1/32"]"#, "[]", "30d", &[]));
    let cut = exited_after(&mut forward, saved, "carol's forward cut");
    assert!(cut < CUT_WITHIN, "cut after {cut:?}");
    wait_audit(&w, "ssh.session", "carol", "is no longer a [[support_ca]]");
}

#[test]
fn a_certificate_that_expires_ends_the_session_when_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_pub = keygen(&ca);
    let extra = format!("[[support_ca]]\npublic_key = \"{ca_pub}\"\n");
    let w = World::start_full(r#"["127.0.0.1/32"]"#, "[]", "30d", "", &extra);
    let key = w.register("SN-0001");
    let _device = w.device("SN-0001", &key);
    let gina = w.path("gina");
    keygen(&gina);
    sign(&ca, &gina, "gina@laptop", "gina", &["-V", "-1m:+6s"]);
    let signed = Instant::now();
    let mut hop = held_hop(&w, "gina", "SN-0001");
    let ended = exited_after(&mut hop, signed, "the expired certificate's session ended");
    // ssh-keygen counts in whole seconds from when it ran.
    assert!(
        ended > Duration::from_secs(4) && ended < Duration::from_secs(10),
        "ended {ended:?} after signing"
    );
    wait_audit(
        &w,
        "ssh.session",
        "gina",
        "ended: engineer certificate expired",
    );
    let out = w.hop("gina", "SN-0001", "true", None);
    assert!(!out.status.success(), "an expired certificate logged in");
}

#[test]
fn the_data_folder_is_private_even_when_it_existed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("jumphost/data");
    fs::create_dir_all(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    let alice = keygen(&dir.path().join("alice"));
    let jump = assist_e2e::Jumphost::start(dir.path(), &assist_e2e::alice_policy("", &alice));
    // Without enrollment_key the admin is told at every start what that leaves open.
    assert!(
        jump.proc
            .stderr()
            .contains("WARNING: no enrollment_key: any serial the policy allows can be claimed"),
        "{}",
        jump.proc.stderr()
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&jump.data_dir), 0o700);
    for file in ["assist.db", "host_key", "admin.sock"] {
        assert_eq!(mode(&jump.data_dir.join(file)), 0o600, "{file}");
    }
    for file in ["assist.db-wal", "assist.db-shm"] {
        let path = jump.data_dir.join(file);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{file}");
        }
    }
}
