//! The static agent (issue 20): `packaging/build-static-agent.sh` builds one x86_64
//! executable with glibc linked in; this checks that nothing is loaded at run time and that
//! it does the agent's job: it resolves the jump host by name, connects, and an engineer
//! hops through it to the customer's sshd.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod agent_world;

use agent_world::{SERIAL, World, wait_tunnel};
use assist_e2e::{Proc, READY_TIMEOUT, text, without_cargo_test_env, write_derived_key};

/// The static build; `dev` here (the same linking as `dist`, which ships, in less time).
fn static_agent() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build-static-agent.sh");
    let mut cmd = Command::new(script);
    without_cargo_test_env(&mut cmd);
    let out = cmd.arg("dev").stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "build-static-agent.sh failed");
    let path = PathBuf::from(text(&out.stdout).trim());
    assert!(path.is_file(), "{} missing", path.display());
    path
}

fn run(agent: &Path, args: &[&str], config: &Path) -> std::process::Output {
    Command::new(agent)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_static_agent_needs_no_shared_library_and_carries_a_hop() {
    let agent = static_agent();

    let file = Command::new("file").arg(&agent).output().unwrap();
    let file = text(&file.stdout);
    assert!(file.contains("static-pie linked"), "{file}");
    assert!(!file.contains("interpreter"), "{file}");
    let ldd = Command::new("ldd").arg(&agent).output().unwrap();
    let ldd = format!("{}{}", text(&ldd.stdout), text(&ldd.stderr));
    assert!(ldd.contains("statically linked"), "{ldd}");
    assert!(!ldd.contains("libc.so"), "{ldd}");

    let version = Command::new(&agent).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        text(&version.stdout).trim(),
        format!("assist-client {}", env!("CARGO_PKG_VERSION"))
    );

    // The jump host by name: static glibc resolves "localhost" from /etc/hosts itself.
    let w = World::start();
    let config = w.client_config("agent");
    let by_name = fs::read_to_string(&config).unwrap().replace(
        &format!("jumphost = \"{}\"", w.jump.ssh_addr),
        &format!("jumphost = \"localhost:{}\"", w.jump.ssh_port()),
    );
    assert!(by_name.contains("jumphost = \"localhost:"), "{by_name}");
    fs::write(&config, by_name).unwrap();

    let mut cmd = Command::new(&agent);
    cmd.arg("run").arg("--config").arg(&config);
    cmd.env("RUST_LOG", "info,assist_client=debug");
    let mut proc = Proc::spawn(cmd, "static agent");
    proc.wait_line("web listening on http://", READY_TIMEOUT);

    let out = run(&agent, &["enable", "--minutes", "10"], &config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let code = text(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("code:").map(|c| c.trim().to_string()))
        .unwrap_or_else(|| panic!("no code in: {}", text(&out.stdout)));
    wait_tunnel(&config, "connected");

    let derived = w.path("derived");
    write_derived_key(&derived, SERIAL, &code);
    let out = w.hop(&derived, "echo hop through the static agent");
    assert!(
        out.status.success(),
        "hop failed: {}\n--- agent:\n{}",
        text(&out.stderr),
        proc.stderr()
    );
    assert_eq!(text(&out.stdout).trim(), "hop through the static agent");

    let out = run(&agent, &["disable"], &config);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
