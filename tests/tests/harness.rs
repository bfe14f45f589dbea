//! Checks of the harness itself: the stock sshd it starts accepts a key and runs a command.

use assist_e2e::{Sshd, keygen, ssh};

#[test]
fn stock_sshd_runs_a_command_for_an_authorized_key() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
    let key = dir.path().join("k");
    let public = keygen(&key);
    std::fs::write(&sshd.authorized_keys, format!("{public}\n")).unwrap();
    let port = sshd.addr.port().to_string();
    let out = ssh(&[
        "-i",
        key.to_str().unwrap(),
        "-p",
        &port,
        "root@127.0.0.1",
        "echo",
        "hello",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "ssh failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    let stranger = dir.path().join("s");
    keygen(&stranger);
    let out = ssh(&[
        "-i",
        stranger.to_str().unwrap(),
        "-p",
        &port,
        "root@127.0.0.1",
        "true",
    ])
    .output()
    .unwrap();
    assert!(
        !out.status.success(),
        "a key not in authorized_keys must be refused"
    );
}
