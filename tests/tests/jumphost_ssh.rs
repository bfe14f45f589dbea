//! The SSH relay end to end: the real `assist-jumphost`, stock OpenSSH as device (`ssh -R`),
//! as engineer (`ssh` through a `-W` proxy) and as the customer's sshd.
// Test helpers fail the test by panicking, as the #[test] functions do.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::time::{Duration, SystemTime};

use assist_e2e::{keygen, random_file, sha256_file, text, wait_until};

mod relay_world;

use relay_world::{SHORT, World};

#[test]
fn engineer_hops_into_stock_sshd_through_a_device_tunnel() {
    let w = World::start();
    let key = w.register("SN-0001");
    let mut device = w.device("SN-0001", &key);

    let out = w.hop("alice", "SN-0001", "echo hello from $(whoami)", None);
    assert!(out.status.success(), "hop failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hello from root");
    // The command's exit status travels back through both channels.
    let out = w.hop("bob", "SN-0001", "exit 7", None);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(w.jump_log().contains("hop ended"), "{}", w.jump_log());

    // The route dies with the device's session.
    device.kill9();
    wait_until(SHORT, "route removal", || {
        w.jump_log().contains("routes removed")
    });
    let out = w.hop("alice", "SN-0001", "true", None);
    assert!(!out.status.success());
    assert!(
        // Stock ssh lowercases the host name it asks the jump host for.
        text(&out.stderr).contains("device sn-0001 is not connected"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_forbidden_use_is_refused_with_a_reason() {
    let w = World::start();
    let dev_key = w.register("SN-0002");
    let _device = w.device("SN-0002", &dev_key);

    // A serial with no tunnel: the reason reaches the engineer.
    let out = w.hop("alice", "SN-9999", "true", None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("device sn-9999 is not connected (has the customer enabled assistance?)"),
        "{err}"
    );

    // An engineer name that policy does not know.
    let mallory = w.path("mallory");
    keygen(&mallory);
    let out = w.direct("mallory", &mallory, &["-W", "SN-0002:22"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    // A known engineer with somebody else's key.
    let out = w.direct("alice", &mallory, &["-W", "SN-0002:22"]);
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );

    // A device may not hop anywhere.
    let out = w.direct("SN-0002", &dev_key, &["-W", "SN-0002:22"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("devices may only hold reverse forwards"),
        "{}",
        text(&out.stderr)
    );

    // An engineer may not hold a reverse forward.
    let alice = w.path("alice");
    let out = w.direct(
        "alice",
        &alice,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "22:127.0.0.1:9",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("forwarding failed"),
        "{}",
        text(&out.stderr)
    );

    // Nobody gets a shell or a command on the jump host.
    for (user, key) in [("alice", &alice), ("SN-0002", &dev_key)] {
        let out = w.direct_command(user, key, &[], &["echo", "pwned"]);
        assert!(!out.status.success(), "{user} ran a command");
        assert!(!text(&out.stdout).contains("pwned"));
        assert!(
            text(&out.stderr).contains("offers no shell"),
            "{user}: {}",
            text(&out.stderr)
        );
    }
    // A device key for another serial is refused.
    let other = w.register("SN-0003");
    let out = w.direct("SN-0002", &other, &["-N"]);
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );

    let log = w.jump_log();
    for reason in [
        "unknown engineer or serial mallory",
        "key is not listed for engineer alice",
        "key is not the one registered for serial SN-0002",
        "tcpip-forward for engineers",
    ] {
        assert!(log.contains(reason), "log lacks {reason:?}:\n{log}");
    }
}

#[test]
fn engineers_only_from_support_cidrs_and_others_closed_before_the_handshake() {
    // Devices may come from anywhere, engineers only from a network the test is not on.
    let w = World::start_with(r#"["10.99.0.0/16"]"#, "[]", "30d");
    let alice = w.path("alice");
    let out = w.direct("alice", &alice, &["-W", "SN-0001:22"]);
    assert!(!out.status.success());
    wait_until(SHORT, "refusal logged", || {
        w.jump_log()
            .contains("engineer alice is not allowed from 127.0.0.1")
    });

    // No role may come from here at all: closed before any SSH is spoken.
    let w = World::start_with(r#"["10.99.0.0/16"]"#, r#"["10.98.0.0/16"]"#, "30d");
    let out = w.direct("alice", &w.path("alice"), &["-W", "SN-0001:22"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("Connection closed")
            || err.contains("Connection reset")
            || err.contains("kex_exchange_identification"),
        "{err}"
    );
    wait_until(SHORT, "address refusal logged", || {
        w.jump_log()
            .contains("connection from a disallowed address closed")
    });
}

#[test]
fn expired_device_keys_are_refused_and_end_their_session() {
    let w = World::start_with(r#"["127.0.0.1/32"]"#, "[]", "4s");
    let key = w.register("SN-0004");
    let registered = SystemTime::now();
    // Logged in while valid: the tunnel works, then the jump host ends it at expiry.
    let mut device = w.device("SN-0004", &key);
    let out = w.hop("alice", "SN-0004", "true", None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = device.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    // Ended at expiry, within seconds: the session holds a timer, not a periodic sweep.
    let lived = registered.elapsed().unwrap();
    eprintln!("EXPIRY: device session ended {lived:?} after registering with a 4 s key");
    assert!(lived >= Duration::from_secs(3), "{lived:?}");
    assert!(lived < Duration::from_secs(8), "{lived:?}");
    assert!(
        w.jump_log().contains("device key expired"),
        "{}",
        w.jump_log()
    );

    // After expiry (and before any sweep) the same key is refused at login.
    let mut again = w.device_unchecked("SN-0004", &key);
    let status = again.wait_exit(SHORT);
    assert!(!status.success());
    assert!(
        again.stderr().contains("Permission denied"),
        "{}",
        again.stderr()
    );
    // The store no longer returns an expired binding, so either wording is right.
    let log = w.jump_log();
    assert!(
        log.contains("serial SN-0004 has no registered, unexpired key")
            || log.contains("the key registered for serial SN-0004 expired"),
        "{log}"
    );
}

#[test]
fn a_reconnecting_device_replaces_its_old_session() {
    let mut w = World::start();
    let key = w.register("SN-0005");
    let mut first = w.device("SN-0005", &key);
    let _second = w.device("SN-0005", &key);
    // The old session is disconnected at once, and its end does not remove the new route.
    first.wait_exit(SHORT);
    let out = w.hop("alice", "SN-0005", "echo still here", None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "still here");
    // SIGTERM with a tunnel up: the device is told, and the jump host exits cleanly.
    let status = w.jump.proc.terminate();
    assert!(status.success(), "{status:?}: {}", w.jump_log());
    assert!(w.jump_log().contains("shutting down"));
}

#[test]
fn two_devices_and_two_engineers_transfer_at_once() {
    let w = World::start();
    let keys = [w.register("SN-000A"), w.register("SN-000B")];
    let _devices = [w.device("SN-000A", &keys[0]), w.device("SN-000B", &keys[1])];
    let files = [w.path("up-a"), w.path("up-b")];
    for f in &files {
        random_file(f, 20 << 20);
    }
    let sums: Vec<String> = files.iter().map(|f| sha256_file(f)).collect();

    // Commands are built here; the threads only run them (the harness types stay put).
    let jobs: Vec<_> = [("alice", "SN-000A", 0), ("bob", "SN-000B", 1)]
        .into_iter()
        .map(|(engineer, serial, i)| {
            let upload = w.hop_cmd(engineer, serial, "sha256sum", Some(&files[i]));
            let download = w.hop_cmd(
                engineer,
                serial,
                &format!("cat {}", files[1 - i].display()),
                None,
            );
            (engineer, i, upload, download)
        })
        .collect();
    std::thread::scope(|s| {
        let running: Vec<_> = jobs
            .into_iter()
            .map(|(engineer, i, mut upload, mut download)| {
                let (sums, back) = (&sums, w.path(&format!("down-{i}")));
                s.spawn(move || {
                    // Upload: the remote hash of what went in.
                    let out = upload.output().unwrap();
                    assert!(out.status.success(), "{engineer}: {}", text(&out.stderr));
                    assert_eq!(
                        text(&out.stdout).split_whitespace().next(),
                        Some(sums[i].as_str())
                    );
                    // Download: the other file comes back byte for byte.
                    let out = download.output().unwrap();
                    assert!(out.status.success(), "{engineer}: {}", text(&out.stderr));
                    fs::write(&back, &out.stdout).unwrap();
                    assert_eq!(sha256_file(&back), sums[1 - i]);
                })
            })
            .collect();
        for job in running {
            job.join().unwrap();
        }
    });
    let log = w.jump_log();
    assert!(log.contains("bytes_to_device="), "{log}");
}

#[test]
fn full_duplex_bulk_through_one_hop_does_not_stall() {
    // `cat` on the device echoes while it reads: both directions of the hop are busy at once.
    let w = World::start();
    let key = w.register("SN-000C");
    let _device = w.device("SN-000C", &key);
    let input = w.path("duplex-in");
    random_file(&input, 32 << 20);
    let out = w.hop("alice", "SN-000C", "cat", Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = w.path("duplex-out");
    fs::write(&back, &out.stdout).unwrap();
    assert_eq!(sha256_file(&back), sha256_file(&input));
}
