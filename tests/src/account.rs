//! Accounts made for a test with `useradd` (the agent runs as root and edits another
//! account's `~/.ssh`), removed after it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{run_ok, text};

/// An account made for the test and removed (`userdel`) when dropped.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl TestUser {
    /// A fresh account `assist-e2e-<pid>-<tag>` with home `home` (made, owned by it), login
    /// shell `shell`, and no password but not locked (`*`), so SSH servers that refuse
    /// locked accounts (OpenSSH without PAM) let its keys in.
    pub fn create(home: &Path, tag: &str, shell: &str) -> TestUser {
        let name = format!("assist-e2e-{}-{tag}", std::process::id());
        let _ = Command::new("userdel").arg(&name).output();
        run_ok(
            Command::new("useradd")
                .args(["--no-create-home", "--user-group", "--password", "*"])
                .arg("--shell")
                .arg(shell)
                .arg("--home-dir")
                .arg(home)
                .arg(&name),
            "useradd",
        );
        fs::create_dir_all(home).unwrap();
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg(&name).output().unwrap();
            text(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        std::os::unix::fs::chown(home, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(home, fs::Permissions::from_mode(0o755)).unwrap();
        TestUser {
            name,
            uid,
            gid,
            home: home.to_owned(),
        }
    }

    pub fn ssh_dir(&self) -> PathBuf {
        self.home.join(".ssh")
    }

    pub fn keys(&self) -> PathBuf {
        self.ssh_dir().join("authorized_keys")
    }

    /// A fresh `~/.ssh` (0700) holding `content` as authorized_keys (0600), all owned by the
    /// account.
    pub fn fresh_ssh_dir(&self, content: &str) {
        let dir = self.ssh_dir();
        if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_symlink()) {
            fs::remove_file(&dir).unwrap();
        } else if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(self.keys(), content).unwrap();
        fs::set_permissions(self.keys(), fs::Permissions::from_mode(0o600)).unwrap();
        for path in [dir, self.keys()] {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}
