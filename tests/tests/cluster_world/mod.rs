//! Two jump host nodes on one private PostgreSQL, with engineer alice in their policy: the
//! world of the cluster tests (cluster.rs, cluster_routing.rs), which add their own devices
//! and engineers.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use assist_e2e::postgres::Postgres;
use assist_e2e::{Jumphost, alice_policy, bin, keygen};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub pg: Postgres,
    pub a: Jumphost,
    pub b: Jumphost,
}

impl Cluster {
    /// Nodes `a` then `b`; `cluster_keys` are more lines for their `[cluster]` table.
    pub fn start(cluster_keys: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres::start();
        let alice = keygen(&dir.path().join("alice"));
        let policy = alice_policy("", &alice);
        let node = |name: &str| {
            let config = format!(
                "{}[cluster]\nnode = \"{name}\"\n{cluster_keys}",
                pg.jumphost_config()
            );
            Jumphost::start_configured(&dir.path().join(name), &policy, "127.0.0.1:0", &config)
        };
        let a = node("a");
        let b = node("b");
        // Agents and engineers pin one host key for the service: b took a's from the
        // database, nobody copied it.
        assert_eq!(a.host_key_fingerprint, b.host_key_fingerprint);
        assert_eq!(
            std::fs::metadata(b.data_dir.join("host_key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        Cluster { dir, pg, a, b }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `support-cli connect SERIAL --code CODE -- sh -c SCRIPT` as alice through `node`.
    pub fn connect(&self, node: &Jumphost, serial: &str, code: &str, script: &str) -> Command {
        let mut cmd = Command::new(bin("support-cli"));
        cmd.arg("--jumphost")
            .arg(node.ssh_addr.to_string())
            .args(["--engineer", "alice", "--identity"])
            .arg(self.path("alice"))
            .arg("--known-hosts")
            .arg(self.path("engineer_known_hosts"))
            .args(["connect", serial, "--code", code, "--", "sh", "-c", script])
            .stdin(Stdio::null());
        cmd
    }
}
