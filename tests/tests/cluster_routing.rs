//! Routing across the nodes of a cluster (issue 18, item 2): an engineer reaches a device
//! whichever node he lands on, over SSH links between the nodes that only published node
//! keys may open; a dead node's devices stop counting within 10 s; a device that moves is
//! reached through either node and its old node drops the stale session.
//! Real binaries throughout: a private PostgreSQL cluster, `assist-jumphost` twice with
//! `peer_listen`, the `assist-client` agent, stock sshd as the customer's machine, stock
//! ssh as an attacker and as a device, and support-cli.

mod agent_world;
mod cluster_world;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use agent_world::{SHORT, enable, set_client_key, start_agent, wait_tunnel};
use assist_e2e::{
    Jumphost, Proc, Sshd, bin, keygen, ssh_logging, text, wait_until, write_client_config,
};
use cluster_world::Cluster;

/// Each node's peer link listener, for `[cluster]`.
const PEERS: &str = "peer_listen = \"127.0.0.1:0\"\n";

/// How soon a dead node's devices must stop counting.
const LEASE_LAPSE: Duration = Duration::from_secs(10);

impl Cluster {
    /// A customer machine (its own sshd) and the agent for `serial` with `jumphosts` (a
    /// TOML value) as its jump hosts and `api_urls` as its APIs, tunnel up.
    fn device(&self, serial: &str, jumphosts: &str, api_urls: &str) -> Device {
        let folder = self.path(serial);
        let sshd = Sshd::start(&folder);
        let config = write_client_config(&folder.join("agent"), serial, &self.a, &sshd);
        set_client_key(&config, &format!("jumphost = {jumphosts}"));
        set_client_key(&config, &format!("api_url = {api_urls}"));
        let agent = start_agent(&config, &format!("agent {serial}"));
        let (code, _) = enable(&config, "30");
        wait_tunnel(&config, "connected");
        Device {
            agent,
            _sshd: sshd,
            code,
        }
    }

    /// `support-cli stdio SERIAL` as alice through `node`: the bare hop, no key derivation.
    fn stdio(&self, node: &Jumphost, serial: &str) -> Output {
        Command::new(bin("support-cli"))
            .arg("--jumphost")
            .arg(node.ssh_addr.to_string())
            .args(["--engineer", "alice", "--identity"])
            .arg(self.path("alice"))
            .arg("--known-hosts")
            .arg(self.path("engineer_known_hosts"))
            .args(["stdio", serial])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `(node, device_node)` of alice's hops to `serial`, oldest first.
    fn hop_nodes(&self, serial: &str) -> Vec<(String, Option<String>)> {
        self.pg
            .client()
            .query(
                "SELECT node, device_node FROM hops WHERE serial = $1 AND port = 22 ORDER BY id",
                &[&serial],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

struct Device {
    agent: Proc,
    _sshd: Sshd,
    code: String,
}

fn succeeded(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn serials_on(node: &Jumphost) -> Vec<String> {
    node.status()["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["serial"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_device_on_one_node_is_reached_through_the_other() {
    let c = Cluster::start(PEERS);
    let a = c.a.ssh_addr.to_string();
    let device = c.device("SN-ON-A", &list(&[&a]), &list(&[&c.a.api_url]));
    assert_eq!(serials_on(&c.a), ["SN-ON-A"]);
    assert!(serials_on(&c.b).is_empty(), "the tunnel is on a only");
    // b's status shows the cluster: both nodes, and the device on a.
    let nodes = c.b.status()["cluster_nodes"].clone();
    assert_eq!(nodes[0]["name"], "a", "{nodes}");
    assert_eq!(
        nodes[0]["devices"],
        serde_json::json!(["SN-ON-A"]),
        "{nodes}"
    );
    assert_eq!(
        nodes[0]["peer_address"],
        c.a.peer_addr.unwrap().to_string(),
        "{nodes}"
    );
    assert_eq!(nodes[1]["name"], "b", "{nodes}");
    assert_eq!(nodes[1]["devices"], serde_json::json!([]), "{nodes}");

    let out = c
        .connect(&c.b, "SN-ON-A", &device.code, "echo reached-through-b")
        .output()
        .unwrap();
    assert_eq!(succeeded(&out, "hop via b").trim(), "reached-through-b");
    // The customer was told who came in through b, as for a local hop.
    wait_until(SHORT, "the engineer named to the device", || {
        device
            .agent
            .stderr()
            .contains("the jump host names the engineer")
    });
    // Bulk bytes from the device come through both nodes whole.
    let out = c
        .connect(&c.b, "SN-ON-A", &device.code, "head -c 3000000 /dev/zero")
        .output()
        .unwrap();
    assert_eq!(succeeded(&out, "bulk via b").len(), 3_000_000);
    // And the usual way, through the node holding it.
    let out = c
        .connect(&c.a, "SN-ON-A", &device.code, "echo direct")
        .output()
        .unwrap();
    assert_eq!(succeeded(&out, "hop via a").trim(), "direct");

    // The audit names the node the engineer came in by and the one the device is on.
    let mut want = vec![("b".to_owned(), Some("a".to_owned())); 2];
    want.push(("a".to_owned(), None));
    wait_until(SHORT, "the hops' device node recorded", || {
        c.hop_nodes("SN-ON-A") == want
    });
    // A serial no node holds is "not connected", as on a single jump host.
    let out = c.stdio(&c.b, "SN-NOWHERE");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("device SN-NOWHERE is not connected"),
        "{}",
        text(&out.stderr)
    );
}

/// Stock `ssh -W SERIAL:22` to `node`'s peer port as `user` with `key`.
fn peer_login(node: &Jumphost, user: &str, key: &Path, serial: &str) -> Proc {
    let port = node.peer_addr.unwrap().port().to_string();
    let target = format!("{serial}:22");
    let login = format!("{user}@127.0.0.1");
    let cmd = ssh_logging(
        "INFO",
        &[
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            key.to_str().unwrap(),
            "-p",
            &port,
            "-W",
            &target,
            &login,
        ],
    );
    Proc::spawn(cmd, &format!("peer login as {user}"))
}

#[test]
fn only_published_node_keys_open_a_peer_link() {
    let c = Cluster::start(PEERS);
    let a = c.a.ssh_addr.to_string();
    let _device = c.device("SN-TARGET", &list(&[&a]), &list(&[&c.a.api_url]));
    let random = c.path("random");
    keygen(&random);
    let b_key = c.b.data_dir.join("node_key");
    // A fresh key under a node's name, under a new name, alice's engineer key, and a real
    // node's key under another node's name: all refused before any channel.
    for (user, key) in [
        ("b", random.as_path()),
        ("mallory", random.as_path()),
        ("alice", c.path("alice").as_path()),
        ("a", b_key.as_path()),
        ("mallory", b_key.as_path()),
    ] {
        let mut attempt = peer_login(&c.a, user, key, "SN-TARGET");
        let status = attempt.wait_exit(SHORT);
        assert!(!status.success(), "{user} with {}", key.display());
        let said = attempt.stderr();
        assert!(
            said.contains("Permission denied (publickey)"),
            "{user} with {}: {said}",
            key.display()
        );
    }
    let refusals: i64 =
        c.pg.client()
            .query_one(
                "SELECT count(*) FROM audit_events WHERE kind = 'peer.auth' AND node = 'a' \
                 AND outcome LIKE 'refused: %'",
                &[],
            )
            .unwrap()
            .get(0);
    assert!(refusals >= 5, "{refusals} refusals audited");
    // The control: node b's own key under its name gets the device's sshd banner.
    let mut good = peer_login(&c.a, "b", &b_key, "SN-TARGET");
    good.wait_line("SSH-2.0-", SHORT);
    good.kill9();
    // b checks a the same way: whatever answers at a's address without the key a published
    // is not trusted with a hop.
    let impostor = keygen(&c.path("impostor"));
    c.pg.client()
        .execute(
            "UPDATE nodes SET peer_key = $1 WHERE name = 'a'",
            &[&impostor.trim()],
        )
        .unwrap();
    let out = c.stdio(&c.b, "SN-TARGET");
    assert!(
        !out.status.success() && text(&out.stderr).contains("presented a key other than"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_dead_node_s_devices_stop_counting_within_ten_seconds_and_fail_over() {
    let mut c = Cluster::start(PEERS);
    let (a, b) = (c.a.ssh_addr.to_string(), c.b.ssh_addr.to_string());
    // One device knows only a; the other fails over to b.
    let _stuck = c.device("SN-ONLY-A", &list(&[&a]), &list(&[&c.a.api_url]));
    let mover = c.device(
        "SN-MOVES",
        &list(&[&a, &b]),
        &list(&[&c.a.api_url, &c.b.api_url]),
    );
    let out = c
        .connect(&c.b, "SN-MOVES", &mover.code, "echo before")
        .output()
        .unwrap();
    assert_eq!(
        succeeded(&out, "hop via b before the kill").trim(),
        "before"
    );

    c.a.proc.kill9();
    let killed = Instant::now();
    // Until the lease lapses b says a cannot be reached; then that the device is not
    // connected. Never a hang.
    let lapsed = loop {
        let started = Instant::now();
        let out = c.stdio(&c.b, "SN-ONLY-A");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "a hop towards the dead node took {took:?}"
        );
        assert!(!out.status.success());
        let said = text(&out.stderr);
        if said.contains("device SN-ONLY-A is not connected") {
            break started.duration_since(killed);
        }
        assert!(said.contains("node a"), "{said}");
        // Read after this attempt started: an attempt started 10 s after the kill must
        // not find the lease any more.
        let since = started.duration_since(killed);
        assert!(
            since < LEASE_LAPSE,
            "still routed to the dead node {since:?} after the kill: {said}"
        );
    };
    eprintln!("a dead node's lease stopped counting {lapsed:?} after the kill");

    // The agent with a list moved to b, which holds it now.
    let out = loop {
        let out = c
            .connect(&c.b, "SN-MOVES", &mover.code, "echo after")
            .output()
            .unwrap();
        if out.status.success() {
            break out;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "not reachable through b: {}",
            text(&out.stderr)
        );
    };
    assert_eq!(text(&out.stdout).trim(), "after");
    assert_eq!(serials_on(&c.b), ["SN-MOVES"]);
}

#[test]
fn a_device_that_moves_is_reached_through_either_node_and_the_old_one_drops_it() {
    let c = Cluster::start(PEERS);
    let b = c.b.ssh_addr.to_string();
    let folder = c.path("SN-MOVE");
    let sshd = Sshd::start(&folder);
    let config = write_client_config(&folder.join("agent"), "SN-MOVE", &c.b, &sshd);
    set_client_key(&config, &format!("jumphost = {}", list(&[&b])));
    let agent = start_agent(&config, "agent SN-MOVE");
    // The device's key, registered, holds a tunnel on a first (stock ssh -R, as a device
    // whose old connection has not noticed it is gone).
    let device_key = folder.join("agent/data/device_key");
    let public = text(
        &Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&device_key)
            .output()
            .unwrap()
            .stdout,
    );
    let (status, body) = c.a.register("SN-MOVE", public.trim());
    assert_eq!(status, 201, "{body}");
    let forward = format!("22:{}", sshd.addr);
    let mut old = Proc::spawn(
        ssh_logging(
            "INFO",
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &forward,
                "-p",
                &c.a.ssh_port(),
                "-i",
                device_key.to_str().unwrap(),
                "SN-MOVE@127.0.0.1",
            ],
        ),
        "old tunnel on a",
    );
    wait_until(SHORT, "the old tunnel on a", || {
        serials_on(&c.a) == ["SN-MOVE"]
    });

    // The device connects to b: a notices at its next renewal and drops its session.
    let (code, _) = enable(&config, "30");
    wait_tunnel(&config, "connected");
    let ended = old.wait_exit(SHORT);
    assert!(!ended.success());
    assert!(
        old.stderr().contains("connected to another node"),
        "{}",
        old.stderr()
    );
    assert!(serials_on(&c.a).is_empty());
    assert_eq!(serials_on(&c.b), ["SN-MOVE"]);

    for (node, word) in [(&c.a, "via-a"), (&c.b, "via-b")] {
        let out = c
            .connect(node, "SN-MOVE", &code, &format!("echo {word}"))
            .output()
            .unwrap();
        assert_eq!(succeeded(&out, word).trim(), word);
    }
    wait_until(SHORT, "the hops' device node recorded", || {
        c.hop_nodes("SN-MOVE")
            == [
                ("a".to_owned(), Some("b".to_owned())),
                ("b".to_owned(), None),
            ]
    });
    let moved: i64 =
        c.pg.client()
            .query_one(
                "SELECT count(*) FROM audit_events WHERE kind = 'cluster.moved' \
                 AND who = 'SN-MOVE' AND node = 'a'",
                &[],
            )
            .unwrap()
            .get(0);
    assert_eq!(moved, 1);
    drop(agent);
}

#[test]
fn peer_listen_without_a_database_or_with_a_bad_advertise_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("jumphost.toml");
    let base = format!(
        "ssh_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
         policies_dir = \"{}\"\n",
        dir.path().join("data").display(),
        dir.path().join("policies").display()
    );
    for (extra, words) in [
        (
            "[cluster]\npeer_listen = \"127.0.0.1:0\"\n",
            "key cluster.peer_listen: needs database",
        ),
        (
            "database = \"postgresql://assist@127.0.0.1:1/assist\"\n[cluster]\n\
             peer_listen = \"127.0.0.1:0\"\nadvertise = \"node-1\"\n",
            "key cluster.advertise: \"node-1\": must be HOST:PORT",
        ),
        (
            "database = \"postgresql://assist@127.0.0.1:1/assist\"\n[cluster]\n\
             peer_listen = \"0.0.0.0:0\"\n",
            "set cluster.advertise",
        ),
    ] {
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        let out = Command::new(bin("assist-jumphost"))
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra}");
        let err = text(&out.stderr);
        assert!(err.contains(words), "{extra}: {err}");
        assert!(err.contains(&config.display().to_string()), "{err}");
        assert!(
            !dir.path().join("data").exists(),
            "nothing made for a bad config"
        );
    }
}
