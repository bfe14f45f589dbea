//! Several jump hosts (nodes) on one real PostgreSQL: registrations race across nodes, hops
//! of both nodes land in one audit trail with their node, and a node killed with `kill -9`
//! right after acknowledging a registration has lost nothing for the other node.
//! Real binaries throughout: a private PostgreSQL cluster, `assist-jumphost` twice, the
//! `assist-client` agent, stock sshd as the customer's machine and support-cli.

mod agent_world;
mod cluster_world;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};

use agent_world::{SHORT, enable, start_agent, wait_tunnel};
use assist_e2e::postgres::PASSWORD;
use assist_e2e::{Jumphost, Proc, Sshd, bin, http, keygen, text, wait_until, write_client_config};
use cluster_world::Cluster;

impl Cluster {
    /// A customer machine (its own sshd) and the agent for `serial` on `node`, tunnel up;
    /// returns the agent, its config, the sshd and the one-time code.
    fn device(&self, serial: &str, node: &Jumphost) -> (Proc, PathBuf, Sshd, String) {
        let folder = self.path(serial);
        let sshd = Sshd::start(&folder);
        let config = write_client_config(&folder.join("agent"), serial, node, &sshd);
        let agent = start_agent(&config, &format!("agent {serial}"));
        let (code, _) = enable(&config, "30");
        wait_tunnel(&config, "connected");
        (agent, config, sshd, code)
    }
}

fn post_register(api: std::net::SocketAddr, serial: &str, public_key: &str) -> (u16, String) {
    let body = serde_json::json!({ "serial": serial, "public_key": public_key }).to_string();
    http(
        api,
        "POST",
        "/v1/register",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn one_serial_registered_on_two_nodes_at_once_gives_one_201_and_one_409() {
    let c = Cluster::start("");
    let apis = [c.a.api_addr, c.b.api_addr];
    for round in 0..8 {
        let serial = format!("SN-RACE-{round}");
        let keys: Vec<String> = (0..2)
            .map(|i| keygen(&c.path(&format!("race-{round}-{i}"))))
            .collect();
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|i| {
                let (barrier, serial, key) =
                    (Arc::clone(&barrier), serial.clone(), keys[i].clone());
                let api = apis[i];
                std::thread::spawn(move || {
                    barrier.wait();
                    post_register(api, &serial, &key).0
                })
            })
            .collect();
        let statuses: Vec<u16> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [201, 409], "round {round}: a: {statuses:?}");

        // The database holds the winner's key, and both nodes agree on it: the winner's key
        // renews (200) on the other node, the loser's is refused there too.
        let winner = statuses.iter().position(|s| *s == 201).unwrap();
        let (loser_api, winner_api) = (apis[1 - winner], apis[winner]);
        assert_eq!(post_register(loser_api, &serial, &keys[winner]).0, 200);
        assert_eq!(post_register(winner_api, &serial, &keys[1 - winner]).0, 409);
        let fingerprint: String =
            c.pg.client()
                .query_one(
                    "SELECT fingerprint FROM bindings WHERE serial = $1",
                    &[&serial],
                )
                .unwrap()
                .get(0);
        let want = keygen_fingerprint(&c.path(&format!("race-{round}-{winner}")));
        assert_eq!(fingerprint, want, "round {round}");
    }
    // Exactly one registration row per serial made it to the shared trail, tagged with the
    // winning node.
    let rows =
        c.pg.client()
            .query(
                "SELECT who, node FROM audit_events WHERE kind = 'api.register' \
             AND outcome LIKE 'registered %' ORDER BY id",
                &[],
            )
            .unwrap();
    assert_eq!(rows.len(), 8, "one new binding per serial");
    for row in rows {
        let node: String = row.get(1);
        assert!(node == "a" || node == "b", "{node}");
    }
}

/// `SHA256:…` of the public key next to the private key file `key`.
fn keygen_fingerprint(key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    succeeded(&out, "ssh-keygen -l");
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

#[test]
fn hops_of_both_nodes_are_in_one_audit_trail_with_their_node_and_in_status() {
    let c = Cluster::start("");
    let (_agent_a, _, _sshd_a, code_a) = c.device("SN-ON-A", &c.a);
    let (_agent_b, _, _sshd_b, code_b) = c.device("SN-ON-B", &c.b);

    let out = c
        .connect(&c.a, "SN-ON-A", &code_a, "echo via-a")
        .output()
        .unwrap();
    succeeded(&out, "hop through node a");
    assert_eq!(text(&out.stdout).trim(), "via-a");

    // A hop held open on b (until the test makes `release`) shows in a's status, from the
    // database, with its node.
    let release = c.path("release");
    let script = format!(
        "echo started; while [ ! -e {} ]; do sleep 0.05; done",
        release.display()
    );
    let mut held = Proc::spawn(
        c.connect(&c.b, "SN-ON-B", &code_b, &script),
        "hop through b",
    );
    held.wait_line("started", SHORT);
    let status = c.a.status();
    assert_eq!(status["node"], "a", "{status}");
    let on_b: Vec<&serde_json::Value> = status["cluster_hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["node"] == "b" && h["serial"] == "SN-ON-B" && h["engineer"] == "alice")
        .collect();
    assert_eq!(on_b.len(), 1, "{status}");
    let human = text(
        &Command::new(bin("assist-jumphost"))
            .args(["status", "--config"])
            .arg(&c.a.config)
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        human.starts_with("jump host ") && human.contains(" node a up "),
        "{human}"
    );
    assert!(
        human.contains("-> SN-ON-B:22 on b for"),
        "the hop on b, in a's status: {human}"
    );
    std::fs::write(&release, "").unwrap();
    let ended = held.wait_exit(SHORT);
    assert!(ended.success(), "held hop: {}", held.stderr());

    // The audit query an operator would run: every hop of the cluster, with its node.
    let mut db = c.pg.client();
    wait_until(SHORT, "both hops recorded as ended", || {
        db.query(
            "SELECT 1 FROM hops WHERE ended_at IS NOT NULL AND engineer = 'alice' AND port = 22",
            &[],
        )
        .unwrap()
        .len()
            == 2
    });
    let hops: Vec<(String, String, i64)> = db
        .query(
            "SELECT serial, node, port FROM hops WHERE engineer = 'alice' AND port = 22 \
             ORDER BY serial",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        hops,
        [
            ("SN-ON-A".to_owned(), "a".to_owned(), 22),
            ("SN-ON-B".to_owned(), "b".to_owned(), 22)
        ]
    );
    let registered: Vec<(String, String)> = db
        .query(
            "SELECT DISTINCT who, node FROM audit_events WHERE kind = 'api.register' \
             ORDER BY who",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        registered,
        [
            ("SN-ON-A".to_owned(), "a".to_owned()),
            ("SN-ON-B".to_owned(), "b".to_owned())
        ]
    );
}

#[test]
fn a_node_killed_right_after_acknowledging_has_lost_nothing_for_the_other_node() {
    let mut c = Cluster::start("");
    // Registrations acknowledged by a, then a dies at once.
    let keys: Vec<(String, String)> = (0..20)
        .map(|i| {
            let serial = format!("SN-KILL-{i}");
            let key = keygen(&c.path(&format!("kill-{i}")));
            (serial, key)
        })
        .collect();
    for (serial, key) in &keys {
        let (status, body) = post_register(c.a.api_addr, serial, key);
        assert_eq!(status, 201, "{serial}: {body}");
    }
    c.a.proc.kill9();
    let other = keygen(&c.path("other"));
    for (serial, key) in &keys {
        assert_eq!(
            post_register(c.b.api_addr, serial, &other).0,
            409,
            "{serial}"
        );
        assert_eq!(post_register(c.b.api_addr, serial, key).0, 200, "{serial}");
    }

    // A real agent registered through a: after a dies, pointed at b, its key is still its
    // own there (renewed, not a conflict) and an engineer reaches it through b.
    c.a.restart();
    let folder = c.path("SN-MOVER");
    let sshd = Sshd::start(&folder);
    let config = write_client_config(&folder.join("agent"), "SN-MOVER", &c.a, &sshd);
    let mut agent = start_agent(&config, "agent SN-MOVER on a");
    enable(&config, "30");
    wait_tunnel(&config, "connected");
    c.a.proc.kill9();
    agent.kill9();
    let config = write_client_config(&folder.join("agent"), "SN-MOVER", &c.b, &sshd);
    let _agent = start_agent(&config, "agent SN-MOVER on b");
    let (code, _) = enable(&config, "30");
    wait_tunnel(&config, "connected");
    let out = c
        .connect(&c.b, "SN-MOVER", &code, "echo reached-through-b")
        .output()
        .unwrap();
    succeeded(&out, "hop through b after a died");
    assert_eq!(text(&out.stdout).trim(), "reached-through-b");
    let outcomes: Vec<String> =
        c.pg.client()
            .query(
                "SELECT outcome || ' on ' || node FROM audit_events \
             WHERE kind = 'api.register' AND who = 'SN-MOVER' ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert!(
        outcomes.len() >= 2
            && outcomes[0].starts_with("registered ")
            && outcomes[0].ends_with(" on a"),
        "{outcomes:?}"
    );
    assert!(
        outcomes[1..].iter().all(|o| o.starts_with("renewed ")),
        "never bound anew: {outcomes:?}"
    );
    assert!(outcomes.last().unwrap().ends_with(" on b"), "{outcomes:?}");
    // The password came from a file and reached no log.
    for node in [&c.a, &c.b] {
        let log = format!(
            "{}{}",
            node.proc.stderr(),
            std::fs::read_to_string(&node.config).unwrap()
        );
        assert!(!log.contains(PASSWORD), "{log}");
    }
}
