//! `support-cli` with stock OpenSSH on the engineer's side: `forward` serving stock ssh,
//! the exported key with `ssh -J`, and five engineers at five devices at once.

mod support_world;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use assist_e2e::{Proc, random_file, sha256_file, ssh, text};
use support_world::{SHORT, World, derived_public};

#[test]
fn forward_serves_stock_ssh() {
    let mut w = World::start(1);
    let code = w.device("SN-FWD");
    let mut fwd = Proc::spawn(
        w.cli(
            0,
            &[
                "forward",
                "SN-FWD",
                "--service",
                "ssh",
                "--listen",
                "127.0.0.1:0",
            ],
        ),
        "forward",
    );
    let line = fwd.wait_line("forwarding ", SHORT);
    let (listen, target) = line.split_once(" -> ").unwrap();
    assert_eq!(target, "SN-FWD:ssh");
    let port = listen.rsplit_once(':').unwrap().1.to_string();
    assert_ne!(port, "0");

    let key = w.path("fwd-key");
    assist_e2e::write_derived_key(&key, "SN-FWD", &code);
    // Several stock ssh sessions at once over the one jump host session.
    let children: Vec<_> = (0..3)
        .map(|i| {
            ssh(&[
                "-p",
                &port,
                "-i",
                key.to_str().unwrap(),
                "root@127.0.0.1",
                &format!("echo via-forward-{i}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "ssh {i}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("via-forward-{i}\n"));
    }
    assert!(fwd.is_running(), "forward exited: {}", fwd.stderr());
    // Ctrl-C ends it cleanly.
    fwd.signal(2);
    let status = fwd.wait_exit(SHORT);
    assert!(
        status.success(),
        "forward after SIGINT: {status:?} {}",
        fwd.stderr()
    );
}

#[test]
fn exported_key_works_with_stock_ssh_proxyjump() {
    let mut w = World::start(1);
    let code = w.device("SN-KEY");
    let key = w.path("exported");
    let out = w
        .cli(
            0,
            &[
                "key",
                "SN-KEY",
                "--code",
                &code.to_lowercase(),
                "--out",
                key.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    let public = lines.next().unwrap();
    assert!(
        public.starts_with(&derived_public("SN-KEY", &code)),
        "{stdout}"
    );
    assert!(lines.next().unwrap().starts_with("SHA256:"), "{stdout}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Beside it, the host key the device proved with the code, under its serial.
    let pins = w.path("exported.known_hosts");
    let host_key = w
        .sshd
        .host_key_pub
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(
        fs::read_to_string(&pins).unwrap(),
        format!("SN-KEY {} {}\n", host_key[0], host_key[1])
    );
    // Refuses to overwrite the file without --force.
    let again = w
        .cli(
            0,
            &[
                "key",
                "SN-KEY",
                "--code",
                &code,
                "--out",
                key.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );

    // ProxyJump (ssh -J) with an ssh_config, so the jump login gets the engineer's key; the
    // device's key is pinned strictly from the exported known_hosts.
    let jump_port = w.jump.ssh_port();
    let engineer_key = w.path("eng0");
    let out = assist_e2e::ProxyJump {
        jump_port: &jump_port,
        engineer: "eng0",
        engineer_key: &engineer_key,
        host: "SN-KEY",
        user: "root",
        key: &key,
        known_hosts: Some(&pins),
    }
    .run(&w.path("ssh_config"), "echo stock-$((2+3))");
    assert!(out.status.success(), "ssh -J: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "stock-5\n");
}

#[test]
fn five_engineers_reach_five_devices_at_once() {
    let mut w = World::start(5);
    let codes: Vec<String> = (0..5).map(|i| w.device(&format!("SN-P{i}"))).collect();
    let files: Vec<PathBuf> = (0..5)
        .map(|i| {
            let f = w.path(&format!("data{i}.bin"));
            random_file(&f, (4 << 20) + i * 1000);
            f
        })
        .collect();
    let runs: Vec<(Command, PathBuf)> = (0..5)
        .map(|i| {
            let mut args = vec!["connect".to_string(), format!("SN-P{i}"), "--code".into()];
            args.extend([codes[i].clone(), "--".into(), "sha256sum".into()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut cmd = w.cli(i, &args);
            cmd.stdin(fs::File::open(&files[i]).unwrap());
            (cmd, files[i].clone())
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .into_iter()
            .enumerate()
            .map(|(i, (mut cmd, file))| {
                s.spawn(move || {
                    let out = cmd.output().unwrap();
                    assert!(out.status.success(), "engineer {i}: {}", text(&out.stderr));
                    let sum = text(&out.stdout)
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    assert_eq!(sum, sha256_file(&file), "engineer {i}");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}
