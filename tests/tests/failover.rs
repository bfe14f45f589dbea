//! Several jump hosts (issue 18, item 3): an agent with a list of jump hosts moves to the next
//! one when the one it holds dies, a dead first entry is passed over, and support-cli takes a
//! list too. Two real `assist-jumphost` processes, each on its own SQLite; the agent's
//! `api_url` list pairs each jump host with its own API, so a device refused by the second
//! (which has never seen its key) registers there and comes back.
// Test helpers fail the test by panicking, as the #[test] functions do.
#![allow(clippy::unwrap_used)]

mod agent_world;

use std::fs;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use agent_world::{SERIAL, World, enable, set_client_key, start_agent, status, wait_tunnel};
use assist_e2e::{Jumphost, bin, text};

/// How long after the jump host's death the device must be reachable again.
const FAILOVER: Duration = Duration::from_secs(10);

/// A second jump host with the world's policy (alice, `SN-*`), its own folders and database.
fn second_jump_host(w: &World) -> Jumphost {
    let policy = fs::read_to_string(w.jump.policies_dir.join("test.toml")).unwrap();
    Jumphost::start(&w.path("second"), &policy)
}

/// An address where nothing listens: a port that was free a moment ago.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `support-cli --jumphost JUMPHOSTS connect SERIAL --code CODE -- echo WORD`.
fn echo_through(w: &World, jumphosts: &str, code: &str, word: &str) -> Output {
    agent_world::support_cli(
        w,
        jumphosts,
        &["connect", SERIAL, "--code", code, "--", "echo", word],
    )
    .output()
    .unwrap()
}

fn tunnel_jumphost(config: &std::path::Path) -> String {
    status(config)["tunnel"]["jumphost"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_agent_moves_to_the_next_jump_host_when_its_own_dies() {
    let mut w = World::start();
    let second = second_jump_host(&w);
    let (a, b) = (w.jump.ssh_addr.to_string(), second.ssh_addr.to_string());
    let config = w.client_config("agent");
    set_client_key(&config, &format!("jumphost = [\"{a}\", \"{b}\"]"));
    set_client_key(
        &config,
        &format!("api_url = [\"{}\", \"{}\"]", w.jump.api_url, second.api_url),
    );
    let agent = start_agent(&config, "agent");
    let (code, _) = enable(&config, "10");
    wait_tunnel(&config, "connected");
    assert_eq!(tunnel_jumphost(&config), a);
    let shown = text(&agent_world::cli(&config, &["status"]).stdout);
    assert!(
        shown.contains(&format!("tunnel: connected to {a}")),
        "{shown}"
    );

    let both = format!("{a},{b}");
    let out = echo_through(&w, &both, &code, "on-the-first");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "on-the-first");

    // The first jump host crashes while the device is on it.
    w.jump.proc.kill9();
    let killed = Instant::now();
    let out = loop {
        let out = echo_through(&w, &both, &code, "on-the-second");
        if out.status.success() {
            break out;
        }
        assert!(
            killed.elapsed() < FAILOVER,
            "the device was not reachable through the second jump host within {FAILOVER:?}: \
             {}\nagent: {}",
            text(&out.stderr),
            agent.stderr()
        );
    };
    let took = killed.elapsed();
    assert!(took < FAILOVER, "reachable again only after {took:?}");
    eprintln!("failover: reachable again {took:?} after the kill");
    assert_eq!(text(&out.stdout).trim(), "on-the-second");
    // The engineer was told why the first one was passed over.
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!("jump host {a} failed")) && said.contains(&format!("trying {b}")),
        "{said}"
    );
    // The agent says where it is now, in its status and its log.
    assert_eq!(tunnel_jumphost(&config), b);
    let log = agent.stderr();
    assert!(
        log.contains("tunnel connected") && log.contains(&b),
        "the agent's log does not name the second jump host:\n{log}"
    );
    // The second jump host knows the device from the registration the agent made there.
    assert_eq!(
        second
            .sql(&format!(
                "SELECT count(*) FROM bindings WHERE serial = '{SERIAL}'"
            ))
            .trim(),
        "1"
    );
}

#[test]
fn a_dead_first_entry_is_passed_over_by_the_agent_and_support_cli() {
    let w = World::start();
    let dead = closed_port();
    let a = w.jump.ssh_addr.to_string();
    let config = w.client_config("agent");
    set_client_key(&config, &format!("jumphost = [\"{dead}\", \"{a}\"]"));
    set_client_key(
        &config,
        &format!("api_url = [\"http://{dead}\", \"{}\"]", w.jump.api_url),
    );
    let agent = start_agent(&config, "agent");
    // Enable registers through the second API URL and waits for the tunnel's whole first
    // round rather than failing on the first jump host.
    let (code, _) = enable(&config, "10");
    wait_tunnel(&config, "connected");
    assert_eq!(tunnel_jumphost(&config), a);
    let log = agent.stderr();
    assert!(
        log.contains("trying the next API URL") && log.contains(&dead),
        "{log}"
    );

    let out = echo_through(&w, &format!("{dead}, {a}"), &code, "reached");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "reached");
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "jump host {dead} failed: cannot reach the jump host"
        )) && said.contains(&format!("trying {a}")),
        "{said}"
    );

    // Every jump host dead: one error naming each.
    let other = closed_port();
    let out = echo_through(&w, &format!("{dead},{other}"), &code, "x");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains("no jump host of the list let us in")
            && said.contains(&dead)
            && said.contains(&other),
        "{said}"
    );
}

#[test]
fn a_bad_list_is_a_config_error_naming_the_key() {
    let w = World::start();
    let config = w.client_config("agent");
    let a = w.jump.ssh_addr.to_string();
    for (line, words) in [
        (
            format!("jumphost = [\"{a}\", \"no-port\"]"),
            "key `jumphost`: entry 2: \"no-port\" is not HOST:PORT",
        ),
        (
            "jumphost = []".to_owned(),
            "key `jumphost`: the list is empty",
        ),
        (
            format!("api_url = [\"{}\", \"ftp://x\"]", w.jump.api_url),
            "key `api_url`: entry 2: \"ftp://x\" must start with http://",
        ),
    ] {
        let original = fs::read_to_string(&config).unwrap();
        set_client_key(&config, &line);
        let out = Command::new(bin("assist-client"))
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{line}: the agent started");
        let err = text(&out.stderr);
        assert!(err.contains(words), "{line}: {err}");
        assert!(err.contains(&config.display().to_string()), "{err}");
        fs::write(&config, original).unwrap();
    }
    // support-cli: an empty entry is a usage error, and nothing is contacted.
    let out = agent_world::support_cli(&w, &format!("{a},,{a}"), &["stdio", SERIAL])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("empty entry"),
        "{}",
        text(&out.stderr)
    );
}
