//! The static agent (issue 20): `packaging/build-static-agent.sh` builds one executable
//! with musl linked in, for x86_64 and for 64- and 32-bit ARM; this checks that nothing is
//! loaded at run time and that each does the agent's job (the ARM ones under qemu-user):
//! it resolves the jump host by name, connects, and an engineer hops through it to the
//! customer's sshd.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod agent_world;

use agent_world::{SERIAL, World, wait_tunnel};
use assist_e2e::{Proc, READY_TIMEOUT, text, without_cargo_test_env, write_derived_key};

/// The static build for `target`; `dev` here (the same linking as `dist-agent`, which
/// ships, in less time).
fn static_agent(target: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build-static-agent.sh");
    let mut cmd = Command::new(script);
    without_cargo_test_env(&mut cmd);
    let out = cmd
        .args(["dev", target])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-static-agent.sh {target} failed"
    );
    let path = PathBuf::from(text(&out.stdout).trim());
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// How to start `agent`: itself, or under `emulator` (qemu-user) for another architecture.
struct Runner {
    emulator: Option<&'static str>,
    agent: PathBuf,
}

impl Runner {
    fn command(&self) -> Command {
        match self.emulator {
            Some(emulator) => {
                let mut cmd = Command::new(emulator);
                cmd.arg(&self.agent);
                cmd
            }
            None => Command::new(&self.agent),
        }
    }

    fn run(&self, args: &[&str], config: &Path) -> std::process::Output {
        self.command()
            .args(args)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// `file`'s description of the executable, checked to be a static one for `machine`.
fn assert_static(agent: &Path, machine: &str) -> String {
    let file = Command::new("file").arg(agent).output().unwrap();
    let file = text(&file.stdout);
    assert!(file.contains(machine), "{file}");
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "{file}"
    );
    assert!(!file.contains("interpreter"), "{file}");
    let program_headers = Command::new("readelf")
        .arg("-lW")
        .arg(agent)
        .output()
        .unwrap();
    let program_headers = text(&program_headers.stdout);
    assert!(!program_headers.contains("INTERP"), "{program_headers}");
    file
}

/// The agent's job end to end: it prints its version, resolves the jump host by name,
/// connects, and an engineer hops through it to the customer's sshd.
fn carries_a_hop(runner: &Runner) {
    let version = runner.command().arg("--version").output().unwrap();
    assert!(version.status.success(), "{}", text(&version.stderr));
    assert_eq!(
        text(&version.stdout).trim(),
        format!("assist-client {}", env!("CARGO_PKG_VERSION"))
    );

    // The jump host by name: musl resolves "localhost" from /etc/hosts itself.
    let w = World::start();
    let config = w.client_config("agent");
    let by_name = fs::read_to_string(&config).unwrap().replace(
        &format!("jumphost = \"{}\"", w.jump.ssh_addr),
        &format!("jumphost = \"localhost:{}\"", w.jump.ssh_port()),
    );
    assert!(by_name.contains("jumphost = \"localhost:"), "{by_name}");
    fs::write(&config, by_name).unwrap();

    let mut cmd = runner.command();
    cmd.arg("run").arg("--config").arg(&config);
    cmd.env("RUST_LOG", "info,assist_client=debug");
    let mut proc = Proc::spawn(cmd, "static agent");
    proc.wait_line("web listening on http://", READY_TIMEOUT);

    let out = runner.run(&["enable", "--minutes", "10"], &config);
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

    let out = runner.run(&["disable"], &config);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn the_static_agent_needs_no_shared_library_and_carries_a_hop() {
    let agent = static_agent("x86_64-unknown-linux-musl");
    let file = assert_static(&agent, "x86-64");
    assert!(file.contains("static-pie linked"), "{file}");
    let ldd = Command::new("ldd").arg(&agent).output().unwrap();
    let ldd = format!("{}{}", text(&ldd.stdout), text(&ldd.stderr));
    assert!(ldd.contains("statically linked"), "{ldd}");
    assert!(!ldd.contains("libc.so"), "{ldd}");
    carries_a_hop(&Runner {
        emulator: None,
        agent,
    });
}

/// 64-bit ARM, run under qemu-user: the same hop as on x86_64.
#[test]
fn the_aarch64_agent_is_static_and_carries_a_hop_under_qemu() {
    let agent = static_agent("aarch64-unknown-linux-musl");
    assert_static(&agent, "ARM aarch64");
    carries_a_hop(&Runner {
        emulator: Some("qemu-aarch64-static"),
        agent,
    });
}

/// 32-bit ARM (armv7, hard float), run under qemu-user.
#[test]
fn the_armv7_agent_is_static_and_carries_a_hop_under_qemu() {
    let agent = static_agent("armv7-unknown-linux-musleabihf");
    let file = assert_static(&agent, "32-bit LSB");
    assert!(file.contains("ARM, EABI5"), "{file}");
    carries_a_hop(&Runner {
        emulator: Some("qemu-arm-static"),
        agent,
    });
}
