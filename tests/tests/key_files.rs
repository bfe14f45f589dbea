//! The agent (root) edits another account's `~/.ssh/authorized_keys`: with a real account made
//! by `useradd` and the real `assist-client`, links that account plants (at the temporary
//! name, at the key file, at the `.ssh` folder) and a file it does not own are never followed
//! or touched, and `enable` says why it refuses.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assist_e2e::{Jumphost, Proc, READY_TIMEOUT, Sshd, alice_policy, bin, keygen, text};

const SERIAL: &str = "SN-0001";
const MARKER: &str = "assist-client:SN-0001";
const USER_LINE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJqE7egDfQoF+LPGvaRdEJjNURSRmJ2U+vQ9XSbMvnLX user@laptop\n";

/// The test's account, with what only this test does to it.
struct TestUser(assist_e2e::account::TestUser);

impl std::ops::Deref for TestUser {
    type Target = assist_e2e::account::TestUser;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl TestUser {
    fn create(home: &Path) -> TestUser {
        TestUser(assist_e2e::account::TestUser::create(
            home,
            "keys",
            "/usr/sbin/nologin",
        ))
    }

    /// What the account itself could do: a link it owns.
    fn plant_link(&self, target: &Path, at: &Path) {
        std::os::unix::fs::symlink(target, at).unwrap();
        std::os::unix::fs::lchown(at, Some(self.uid), Some(self.gid)).unwrap();
    }

    /// A fresh `~/.ssh` (0700) with the account's own key line, all owned by the account.
    fn fresh_ssh_dir(&self) {
        self.0.fresh_ssh_dir(USER_LINE);
    }
}

/// Every entry under `roots` (not following links): kind, owner, mode, and the content or
/// the link's target.
fn snapshot(roots: &[&Path]) -> BTreeMap<PathBuf, String> {
    fn walk(path: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let meta = fs::symlink_metadata(path).unwrap();
        let what = if meta.is_symlink() {
            format!("link -> {}", fs::read_link(path).unwrap().display())
        } else if meta.is_dir() {
            let mut children: Vec<PathBuf> = fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            for child in &children {
                walk(child, out);
            }
            "dir".to_owned()
        } else {
            format!("file {:?}", text(&fs::read(path).unwrap()))
        };
        let entry = format!(
            "{what} uid={} gid={} mode={:o}",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        );
        out.insert(path.to_owned(), entry);
    }
    let mut out = BTreeMap::new();
    for root in roots {
        walk(root, &mut out);
    }
    out
}

fn cli(config: &Path, args: &[&str]) -> Output {
    assist_e2e::assist_client(config, args)
}

/// `enable` must fail, saying `why`, and leave every file as it was.
fn refused(config: &Path, roots: &[&Path], why: &str) {
    let before = snapshot(roots);
    let out = cli(config, &["enable", "--minutes", "5"]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "enable succeeded: {}",
        text(&out.stdout)
    );
    assert!(
        !text(&out.stdout).contains("code:"),
        "{}",
        text(&out.stdout)
    );
    assert!(err.contains(why), "{err}");
    assert_eq!(snapshot(roots), before, "files changed after: {err}");
}

#[test]
fn links_and_foreign_files_planted_by_the_target_account_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let user = TestUser::create(&dir.path().join("home"));
    let alice = keygen(&dir.path().join("alice"));
    let jump = Jumphost::start(dir.path(), &alice_policy("", &alice));
    // An sshd that reads the account's own ~/.ssh/authorized_keys, which enable's login
    // check goes through.
    let sshd = Sshd::start_reading(dir.path(), ".ssh/authorized_keys", "");
    user.fresh_ssh_dir();

    // Files of root's that the account would love root to rewrite.
    let victim = PathBuf::from(format!("/etc/assist-e2e-victim-{}", std::process::id()));
    fs::write(&victim, "root's precious file\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _victim_guard = Remove(victim.clone());
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("authorized_keys"), "root's own keys\n").unwrap();

    let config = dir.path().join("client.toml");
    fs::write(
        &config,
        format!(
            "serial = \"{SERIAL}\"\njumphost = \"{}\"\napi_url = \"{}\"\n\
             data_dir = \"{}\"\nweb_listen = \"127.0.0.1:0\"\ntarget_user = \"{}\"\n\n\
             [services]\nssh = \"{}\"\n",
            jump.ssh_addr,
            jump.api_url,
            dir.path().join("data").display(),
            user.name,
            sshd.addr
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("assist-client"));
    cmd.arg("run").arg("--config").arg(&config);
    let mut agent = Proc::spawn(cmd, "agent");
    agent.wait_line("web listening on http://", READY_TIMEOUT);
    let roots: [&Path; 3] = [&user.home, &victim, &elsewhere];

    // 1. A link at the temporary name the agent used to write (fixed, from its pid).
    let old_tmp = user
        .ssh_dir()
        .join(format!(".authorized_keys.assist-client.{}", agent.pid()));
    user.plant_link(&victim, &old_tmp);
    let mut want = snapshot(&roots);
    let out = cli(&config, &["enable", "--minutes", "5"]);
    assert!(
        out.status.success(),
        "enable: {}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        agent.stderr()
    );
    let keys = fs::read_to_string(user.keys()).unwrap();
    assert!(keys.starts_with(USER_LINE), "{keys}");
    assert!(keys.trim_end().ends_with(MARKER), "{keys}");
    assert_eq!(keys.lines().count(), 2, "{keys}");
    want.insert(
        user.keys(),
        format!("file {keys:?} uid={} gid={} mode=600", user.uid, user.gid),
    );
    assert_eq!(snapshot(&roots), want, "only the key file changed");
    let out = cli(&config, &["disable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::read_to_string(user.keys()).unwrap(), USER_LINE);
    fs::remove_file(&old_tmp).unwrap();

    // 2. The key file is a link to a file of root's.
    fs::remove_file(user.keys()).unwrap();
    user.plant_link(&victim, &user.keys());
    refused(
        &config,
        &roots,
        &format!(
            "cannot edit the key file of user {}: {} is a symbolic link; refusing to follow it",
            user.name,
            user.keys().display()
        ),
    );

    // 3. The .ssh folder is a link to a folder of root's.
    fs::remove_dir_all(user.ssh_dir()).unwrap();
    user.plant_link(&elsewhere, &user.ssh_dir());
    refused(
        &config,
        &roots,
        &format!(
            "{} is a symbolic link; refusing to follow it",
            user.ssh_dir().display()
        ),
    );

    // 4. A key file the account does not own (a hard link to root's file looks the same).
    user.fresh_ssh_dir();
    std::os::unix::fs::chown(user.keys(), Some(0), Some(0)).unwrap();
    refused(
        &config,
        &roots,
        &format!(
            "{} belongs to uid 0, not to {} (uid {})",
            user.keys().display(),
            user.name,
            user.uid
        ),
    );

    // The agent still works once the account's files are sane again.
    user.fresh_ssh_dir();
    let out = cli(&config, &["enable", "--minutes", "5"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(fs::read_to_string(user.keys()).unwrap().contains(MARKER));
    let exit = agent.terminate();
    assert!(exit.success(), "{}", agent.stderr());
    assert_eq!(fs::read_to_string(user.keys()).unwrap(), USER_LINE);
}
