//! The device proves it knows the code before the engineer trusts it, tried as an attacker
//! would: a squatter's "device" (stock `ssh -R` in front of a stock sshd that lets any key
//! in) and a replayed proof in front of another sshd are refused with an empty known_hosts,
//! and that sshd never sees a login.

mod support_world;

use std::fs;
use std::process::Stdio;

use assist_e2e::{attest, keygen, text};
use assist_proto::limits::ATTESTATION_PORT;
use support_world::World;

/// No login reached the customer's sshd: not accepted, not even tried.
fn assert_no_login(w: &World) {
    let log = w.sshd.log();
    assert!(!log.contains("Accepted"), "sshd log: {log}");
    assert!(!log.contains("publickey"), "sshd log: {log}");
}

#[test]
fn a_device_without_proof_gets_nothing_even_from_a_trusting_engineer() {
    let mut w = World::honeypot(1);
    let code = w.device_without_proof("SN-FAKE");
    assert!(!w.known_hosts(0).exists());

    let out = w.connect(0, "SN-FAKE", &code, &["id"], Stdio::null());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("device SN-FAKE did not prove that it knows the code")
            && err.contains("offers no port 1")
            && err.contains("nothing was sent to it"),
        "{err}"
    );
    assert!(text(&out.stdout).is_empty());

    // `key` writes nothing for it either, and `forward` of a service opens no listener's
    // worth of trust.
    let key = w.path("exported");
    let out = w
        .cli(
            0,
            &[
                "key",
                "SN-FAKE",
                "--code",
                &code,
                "--out",
                key.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(!key.exists());
    assert!(!w.path("exported.known_hosts").exists());
    let out = w
        .cli(
            0,
            &[
                "forward",
                "SN-FAKE",
                "--service",
                "http",
                "--code",
                &code,
                "--listen",
                "127.0.0.1:0",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("did not prove"),
        "{}",
        text(&out.stderr)
    );

    assert_no_login(&w);
    let pins = fs::read_to_string(w.known_hosts(0)).unwrap_or_default();
    assert!(!pins.contains("SN-FAKE"), "{pins}");

    // The honeypot is real: stock ssh through the jump host gets in with any key at all,
    // which is what support-cli just refused to walk into.
    let any_key = w.path("any-key");
    keygen(&any_key);
    let jump_port = w.jump.ssh_port();
    let engineer_key = w.path("eng0");
    let out = assist_e2e::ProxyJump {
        jump_port: &jump_port,
        engineer: "eng0",
        engineer_key: &engineer_key,
        host: "SN-FAKE",
        user: "root",
        key: &any_key,
        known_hosts: None,
    }
    .run(&w.path("ssh_config"), "echo honeypot");
    assert_eq!(text(&out.stdout), "honeypot\n", "{}", text(&out.stderr));
    assert!(w.sshd.log().contains("Accepted publickey"));
}

#[test]
fn a_replayed_proof_in_front_of_another_sshd_is_refused() {
    // The squatter replays a genuine proof: signed with the code's key, but for the real
    // device's host key, while its own sshd answers.
    let mut w = World::honeypot(1);
    let code = assist_proto::OneTimeCode::generate().to_string();
    let real_device = keygen(&w.path("real-device-host-key"));
    let proof = attest::document("SN-REPLAY", &code, &[real_device.as_str()]);
    let proof = format!("{ATTESTATION_PORT}:{}", attest::serve(proof));
    w.device_serving("SN-REPLAY", &code, &["-R", &proof]);

    let out = w.connect(0, "SN-REPLAY", &code, &["id"], Stdio::null());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("which is not among the keys it proved with the code"),
        "{err}"
    );
    assert_no_login(&w);
    let pins = fs::read_to_string(w.known_hosts(0)).unwrap_or_default();
    assert!(!pins.contains("SN-REPLAY"), "{pins}");
}

#[test]
fn a_proof_for_another_code_reads_as_a_wrong_code() {
    let mut w = World::start(1);
    let code = w.device("SN-0001");
    let wrong = if code.starts_with('0') {
        "11111-11111"
    } else {
        "00000-00000"
    };
    let out = w.connect(0, "SN-0001", wrong, &["true"], Stdio::null());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("device SN-0001 could not prove that it knows this code: check the code"),
        "{err}"
    );
    // The right code still gets in, and the host key it learns is the proven one.
    let out = w.connect(0, "SN-0001", &code, &["echo", "in"], Stdio::null());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in\n");
    let pins = fs::read_to_string(w.known_hosts(0)).unwrap();
    let host_key = w.sshd.host_key_pub.split_whitespace().nth(1).unwrap();
    assert!(
        pins.contains(&format!("SN-0001 ssh-ed25519 {host_key}")),
        "{pins}"
    );
}

#[test]
fn the_serial_in_another_case_derives_the_devices_spelling() {
    let mut w = World::start(1);
    let code = w.device("SN-Case-7");
    let out = w.connect(0, "sn-case-7", &code, &["echo", "ok"], Stdio::null());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");
    // Pinned under the device's own spelling.
    let pins = fs::read_to_string(w.known_hosts(0)).unwrap();
    assert!(pins.contains("SN-Case-7 ssh-ed25519 "), "{pins}");
}

#[test]
fn a_proven_device_whose_server_refuses_the_key_is_not_called_a_wrong_code() {
    let mut w = World::start(1);
    let code = w.device_refusing_the_key("SN-0001");
    let out = w.connect(0, "SN-0001", &code, &["true"], Stdio::null());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("the SSH server of device SN-0001 refused the key of this code")
            && err.contains("so the code is right")
            && err.contains("assist-client status"),
        "{err}"
    );
    assert!(!err.contains("check the code"), "{err}");
}
