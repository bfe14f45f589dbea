//! The jump host's data side end to end with the real binary: registration durability across
//! `kill -9`, key rotation signed by stock `ssh-keygen -Y sign`, `serial reset`,
//! `policy check`, and live policy reloads that keep the last good policy.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assist_e2e::{Jumphost, bin, http, keygen, try_http, wait_until};

const POLICY: &str = "[serials]\nallow = [\"SN-*\"]\n";
const SHORT: Duration = Duration::from_secs(30);

fn post(jump: &Jumphost, body: &serde_json::Value) -> (u16, String) {
    http(
        jump.api_addr,
        "POST",
        "/v1/register",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn error_text(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"))
        .to_string()
}

fn jumphost(args: &[&str]) -> std::process::Output {
    Command::new(bin("assist-jumphost"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn registration_survives_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = keygen(&dir.path().join("a"));
    let b = keygen(&dir.path().join("b"));
    let mut jump = Jumphost::start(dir.path(), POLICY);

    let (status, body) = jump.register("SN-0001", &a);
    assert_eq!(status, 201, "{body}");
    let resp: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(resp["serial"], "SN-0001");
    assert!(
        resp["fingerprint"].as_str().unwrap().starts_with("SHA256:"),
        "{body}"
    );

    // The 201 was sent after the commit: SIGKILL straight after it must lose nothing.
    jump.restart();
    assert_eq!(
        http(jump.api_addr, "GET", "/healthz", &[], b""),
        (200, "ok".to_string())
    );
    let (status, body) = jump.register("SN-0001", &b);
    assert_eq!(status, 409, "{body}");
    assert!(
        error_text(&body).contains("assist-jumphost serial reset SN-0001"),
        "{body}"
    );
    let (status, body) = jump.register("SN-0001", &a);
    assert_eq!(status, 200, "renewal after restart: {body}");
}

/// Four clients register new serials back to back while the jump host is killed with
/// SIGKILL: every registration answered 201 is in the store after the restart, with its
/// audit record, and the database is intact.
#[test]
fn kill_9_during_a_registration_burst_loses_no_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(&dir.path().join("k"));
    let unlimited = "[penalties]\nregister_burst = 1000000\nregister_per_minute = 1000000\n";
    let mut jump = Jumphost::start(dir.path(), &format!("{POLICY}{unlimited}"));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (acked, key, addr) = (Arc::clone(&acked), key.clone(), jump.api_addr);
            std::thread::spawn(move || {
                for n in 0.. {
                    let serial = format!("SN-{worker}-{n}");
                    let body = serde_json::json!({ "serial": serial, "public_key": key });
                    let answer = try_http(
                        addr,
                        "POST",
                        "/v1/register",
                        &[("Content-Type", "application/json")],
                        body.to_string().as_bytes(),
                    );
                    match answer {
                        Ok((201, _)) => acked.lock().unwrap().push(serial),
                        // The jump host is gone (or answered something else): stop here.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    wait_until(SHORT, "200 acknowledged registrations", || {
        acked.lock().unwrap().len() >= 200
    });
    jump.restart();
    for w in workers {
        w.join().unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let stored: HashSet<String> = jump
        .sql("SELECT serial FROM bindings")
        .lines()
        .map(str::to_owned)
        .collect();
    let audited: HashSet<String> = jump
        .sql("SELECT who FROM audit_events WHERE kind = 'api.register'")
        .lines()
        .map(str::to_owned)
        .collect();
    eprintln!(
        "BURST: {} acknowledged, {} stored, {} audited",
        acked.len(),
        stored.len(),
        audited.len()
    );
    for serial in &acked {
        assert!(
            stored.contains(serial),
            "{serial} acknowledged but not stored"
        );
        assert!(
            audited.contains(serial),
            "{serial} acknowledged but not audited"
        );
    }
    assert_eq!(jump.sql("PRAGMA integrity_check").trim(), "ok");
    // The restarted jump host serves them: a renewal of an acknowledged one is a 200.
    let (status, body) = jump.register(&acked[0], &key);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn errors_over_http_are_json_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = keygen(&dir.path().join("a"));
    let b = keygen(&dir.path().join("b"));
    let jump = Jumphost::start(dir.path(), POLICY);

    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"{not json".to_vec(), 400),
        (br#"{"serial": "SN-1"}"#.to_vec(), 422),
        (
            serde_json::json!({"serial": "../etc", "public_key": a})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            serde_json::json!({"serial": "XX-1", "public_key": a})
                .to_string()
                .into_bytes(),
            403,
        ),
        (
            serde_json::json!({"serial": "SN-1", "public_key": "ssh-rsa AAAA"})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            serde_json::json!({"serial": "SN-1", "public_key": a, "pad": "x".repeat(70_000)})
                .to_string()
                .into_bytes(),
            413,
        ),
    ];
    for (body, want) in cases {
        let (status, text) = http(
            jump.api_addr,
            "POST",
            "/v1/register",
            &[("Content-Type", "application/json")],
            &body,
        );
        assert_eq!(
            status,
            want,
            "{}: {text}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
        assert!(!error_text(&text).is_empty());
    }
    // None of the refused requests bound SN-1: another key may still take it.
    let (status, text) = jump.register("SN-1", &b);
    assert_eq!(status, 201, "{text}");
}

#[test]
fn rotation_proof_made_by_stock_ssh_keygen_replaces_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let old = keygen(&dir.path().join("old"));
    let new = keygen(&dir.path().join("new"));
    let jump = Jumphost::start(dir.path(), POLICY);
    assert_eq!(jump.register("SN-7", &old).0, 201);

    let message = dir.path().join("rotation.txt");
    fs::write(&message, assist_proto::api::rotation_message("SN-7", &new)).unwrap();
    let sign = |key: &str| {
        let out = Command::new("ssh-keygen")
            .args([
                "-q",
                "-Y",
                "sign",
                "-n",
                assist_proto::api::ROTATION_NAMESPACE,
                "-f",
            ])
            .arg(dir.path().join(key))
            .arg(&message)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sig = fs::read_to_string(message.with_extension("txt.sig")).unwrap();
        fs::remove_file(message.with_extension("txt.sig")).unwrap();
        sig
    };

    let by_new = sign("new");
    let (status, body) = post(
        &jump,
        &serde_json::json!({"serial": "SN-7", "public_key": new, "rotation_proof": by_new}),
    );
    assert_eq!(status, 409, "a proof by the new key proves nothing: {body}");

    let by_old = sign("old");
    let (status, body) = post(
        &jump,
        &serde_json::json!({"serial": "SN-7", "public_key": new, "rotation_proof": by_old}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(jump.register("SN-7", &new).0, 200);
    assert_eq!(jump.register("SN-7", &old).0, 409);
}

#[test]
fn serial_reset_frees_a_serial_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let a = keygen(&dir.path().join("a"));
    let b = keygen(&dir.path().join("b"));
    let jump = Jumphost::start(dir.path(), POLICY);
    assert_eq!(jump.register("SN-9", &a).0, 201);
    assert_eq!(jump.register("SN-9", &b).0, 409);

    let config = jump.config.to_str().unwrap();
    let out = jumphost(&["serial", "reset", "--config", config, "SN-9"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("SN-9") && stdout.contains("SHA256:"),
        "{stdout}"
    );
    assert_eq!(jump.register("SN-9", &b).0, 201);

    let out = jumphost(&["serial", "reset", "--config", config, "SN-404"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SN-404") && stderr.contains("no key binding"),
        "{stderr}"
    );
}

#[test]
fn policy_check_exit_codes_and_messages() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let out = jumphost(&["policy", "check", "--policies", shipped.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("policy OK") && stdout.contains("alice"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("00-ok.toml"), POLICY).unwrap();
    fs::write(
        dir.path().join("10-bad.toml"),
        "[keys]\nmax_assistance = \"8h\"\nttl = \"1d\"\n",
    )
    .unwrap();
    let out = jumphost(&[
        "policy",
        "check",
        "--policies",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("10-bad.toml") && stderr.contains("ttl") && stderr.contains("line 3"),
        "{stderr}"
    );

    let empty = tempfile::tempdir().unwrap();
    let out = jumphost(&[
        "policy",
        "check",
        "--policies",
        empty.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no *.toml"));
}

#[test]
fn bad_policy_edit_keeps_the_last_good_policy_and_a_good_edit_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..4)
        .map(|i| keygen(&dir.path().join(format!("k{i}"))))
        .collect();
    let jump = Jumphost::start(dir.path(), POLICY);
    let policy_file = jump.policies_dir.join("test.toml");

    fs::write(
        &policy_file,
        "[serials]\nallow = [\"LAB-*\"]\ndeny = [\"SN-*\"]\n",
    )
    .unwrap();
    wait_until(SHORT, "the jump host to report the bad policy", || {
        let log = jump.proc.stderr();
        log.contains("policy not reloaded") && log.contains("test.toml") && log.contains("deny")
    });
    assert_eq!(
        jump.register("SN-1", &keys[0]).0,
        201,
        "the old pattern still holds"
    );
    assert_eq!(jump.register("LAB-1", &keys[1]).0, 403);
    // `status` says the edit is not in force, and why.
    let status = jump.status();
    let error = status["policy_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("test.toml") && error.contains("deny"),
        "{status}"
    );

    fs::write(&policy_file, "[serials]\nallow = [\"LAB-*\"]\n").unwrap();
    wait_until(SHORT, "the good edit to take effect", || {
        let (status, _) = jump.register("LAB-1", &keys[1]);
        status == 201
    });
    assert_eq!(jump.register("SN-2", &keys[2]).0, 403);
    assert!(jump.proc.stderr().contains("policy reloaded"));
    assert!(jump.status()["policy_error"].is_null());
}

#[test]
fn sighup_reloads_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let jump = Jumphost::start(dir.path(), POLICY);
    jump.proc.signal(1); // SIGHUP
    wait_until(SHORT, "a reload triggered by SIGHUP", || {
        jump.proc
            .stderr()
            .lines()
            .any(|l| l.contains("policy reloaded") && l.contains("SIGHUP"))
    });
    let a = keygen(&dir.path().join("a"));
    assert_eq!(
        jump.register("SN-1", &a).0,
        201,
        "still serving after SIGHUP"
    );
}
