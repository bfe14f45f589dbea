//! Editing the target account's `authorized_keys`: add the temporary key line, remove it, and
//! purge lines left by an earlier run. Every edit is atomic and leaves other lines byte for byte.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// Prefix of the comment that marks our lines; the serial follows it.
pub const MARKER_PREFIX: &str = "assist-client:";

#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error(
        "user {0:?} not found in /etc/passwd; set target_user (or authorized_keys) in the config"
    )]
    NoSuchUser(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The account whose `authorized_keys` is edited, as `/etc/passwd` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Account {
    /// Looks `name` up in `/etc/passwd`. Reading the file directly (rather than libc's
    /// getpwnam through a crate) keeps the agent free of unsafe code and extra dependencies;
    /// accounts from LDAP/NSS need `authorized_keys` set explicitly in the config.
    pub fn lookup(name: &str) -> Result<Self, KeysFileError> {
        let passwd = Path::new("/etc/passwd");
        let text = std::fs::read_to_string(passwd).map_err(|source| KeysFileError::Io {
            action: "cannot read",
            path: passwd.to_owned(),
            source,
        })?;
        parse_passwd(&text, name).ok_or_else(|| KeysFileError::NoSuchUser(name.to_owned()))
    }
}

fn parse_passwd(text: &str, name: &str) -> Option<Account> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(Account {
            name: name.to_owned(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
        })
    })
}

/// The file to edit and who must own it if it has to be created.
#[derive(Debug, Clone)]
pub struct KeysFile {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

impl KeysFile {
    /// `explicit` if the config names a file, else `~account/.ssh/authorized_keys`.
    pub fn new(account: &Account, explicit: Option<PathBuf>) -> Self {
        Self {
            path: explicit.unwrap_or_else(|| account.home.join(".ssh/authorized_keys")),
            uid: account.uid,
            gid: account.gid,
        }
    }

    /// Adds `line` (replacing any line of ours for the same serial).
    pub fn install(&self, serial: &str, line: &str) -> Result<(), KeysFileError> {
        let old = self.read()?;
        let (mut kept, _) = without_marker(old.as_deref().unwrap_or_default(), serial);
        if !kept.is_empty() && !kept.ends_with(b"\n") {
            kept.push(b'\n');
        }
        kept.extend_from_slice(line.as_bytes());
        kept.push(b'\n');
        self.ensure_dir()?;
        self.write_atomic(&kept, old.is_some())
    }

    /// Removes every line carrying our marker for `serial`; returns how many there were.
    pub fn remove(&self, serial: &str) -> Result<usize, KeysFileError> {
        let Some(old) = self.read()? else {
            return Ok(0);
        };
        let (kept, removed) = without_marker(&old, serial);
        if removed > 0 {
            self.write_atomic(&kept, true)?;
        }
        Ok(removed)
    }

    fn io(
        &self,
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> KeysFileError {
        let path = path.to_owned();
        move |source| KeysFileError::Io {
            action,
            path,
            source,
        }
    }

    fn read(&self) -> Result<Option<Vec<u8>>, KeysFileError> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("cannot read", &self.path)(e)),
        }
    }

    /// Creates the folder (like `~/.ssh`: 0700, owned by the account) when missing; sshd's
    /// StrictModes refuses keys in a folder others can write.
    fn ensure_dir(&self) -> Result<(), KeysFileError> {
        let Some(dir) = self.path.parent() else {
            return Ok(());
        };
        if dir.exists() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(self.io("cannot create", dir))?;
        std::os::unix::fs::chown(dir, Some(self.uid), Some(self.gid))
            .map_err(self.io("cannot chown", dir))
    }

    /// Writes `content` to a temporary file next to the target, then renames it over, so sshd
    /// never sees a half-written file. The existing file's mode and owner are kept.
    fn write_atomic(&self, content: &[u8], existed: bool) -> Result<(), KeysFileError> {
        let (mode, uid, gid) = if existed {
            let meta = std::fs::metadata(&self.path).map_err(self.io("cannot stat", &self.path))?;
            (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
        } else {
            (0o600, self.uid, self.gid)
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.assist-client.{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(self.io("cannot create", &tmp))?;
            f.write_all(content)
                .map_err(self.io("cannot write", &tmp))?;
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .map_err(self.io("cannot chown", &tmp))?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(self.io("cannot chmod", &tmp))?;
            f.sync_all().map_err(self.io("cannot sync", &tmp))?;
            std::fs::rename(&tmp, &self.path).map_err(self.io("cannot replace", &self.path))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The marker comment of `serial`'s lines.
pub fn marker(serial: &str) -> String {
    format!("{MARKER_PREFIX}{serial}")
}

/// The line to install: the key may only be used from loopback (where the tunnel lands),
/// until `until` (sshd enforces it even if the agent dies), without agent or X11 forwarding.
pub fn key_line(public_key: &str, serial: &str, until: OffsetDateTime) -> String {
    // Round up to the minute so sshd never expires the key before the window ends; the agent
    // removes the line at the exact end.
    let until = until.to_offset(time::UtcOffset::UTC);
    let until = if until.second() > 0 || until.nanosecond() > 0 {
        until + time::Duration::minutes(1)
    } else {
        until
    };
    format!(
        "expiry-time=\"{:04}{:02}{:02}{:02}{:02}Z\",from=\"127.0.0.1,::1\",no-agent-forwarding,no-X11-forwarding {} {}",
        until.year(),
        u8::from(until.month()),
        until.day(),
        until.hour(),
        until.minute(),
        public_key.trim(),
        marker(serial)
    )
}

/// `content` without the lines whose comment is our marker for `serial`, and how many went.
/// Other lines, including their line endings, are copied byte for byte.
fn without_marker(content: &[u8], serial: &str) -> (Vec<u8>, usize) {
    let marker = marker(serial);
    let mut kept = Vec::with_capacity(content.len());
    let mut removed = 0;
    for line in content.split_inclusive(|b| *b == b'\n') {
        let text = String::from_utf8_lossy(line);
        if text.split_whitespace().last() == Some(marker.as_str()) {
            removed += 1;
        } else {
            kept.extend_from_slice(line);
        }
    }
    (kept, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const OTHER: &[u8] = b"# keep me\r\nssh-ed25519 AAAAother admin@host\n\n  command=\"x\" ssh-rsa AAAB assist-client:SN-0002\nno-newline-at-end";

    fn file(dir: &Path) -> KeysFile {
        KeysFile {
            path: dir.join(".ssh/authorized_keys"),
            uid: nix_ids().0,
            gid: nix_ids().1,
        }
    }

    fn nix_ids() -> (u32, u32) {
        let meta = std::fs::metadata("/proc/self").unwrap();
        (meta.uid(), meta.gid())
    }

    #[test]
    fn line_has_options_expiry_and_marker() {
        let line = key_line(
            "ssh-ed25519 AAAAkey",
            "SN-1",
            datetime!(2026-01-02 03:04:05 UTC),
        );
        assert_eq!(
            line,
            "expiry-time=\"202601020305Z\",from=\"127.0.0.1,::1\",no-agent-forwarding,\
             no-X11-forwarding ssh-ed25519 AAAAkey assist-client:SN-1"
        );
        let exact = key_line("k", "SN-1", datetime!(2026-01-02 03:04:00 UTC));
        assert!(exact.starts_with("expiry-time=\"202601020304Z\""));
    }

    #[test]
    fn install_and_remove_keep_other_lines_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path());
        std::fs::create_dir(dir.path().join(".ssh")).unwrap();
        std::fs::write(&f.path, OTHER).unwrap();
        std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let line = key_line("ssh-ed25519 AAAAkey", "SN-1", OffsetDateTime::now_utc());

        f.install("SN-1", &line).unwrap();
        let after = std::fs::read(&f.path).unwrap();
        let mut want = OTHER.to_vec();
        want.extend_from_slice(format!("\n{line}\n").as_bytes());
        assert_eq!(after, want);
        assert_eq!(
            std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777,
            0o640
        );

        // Installing again replaces rather than duplicates.
        f.install("SN-1", &line).unwrap();
        assert_eq!(std::fs::read(&f.path).unwrap(), want);

        assert_eq!(f.remove("SN-1").unwrap(), 1);
        let mut want = OTHER.to_vec();
        want.push(b'\n');
        assert_eq!(std::fs::read(&f.path).unwrap(), want);
        assert_eq!(
            std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(f.remove("SN-1").unwrap(), 0);
    }

    #[test]
    fn purge_removes_only_our_marker_for_our_serial() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path());
        std::fs::create_dir(dir.path().join(".ssh")).unwrap();
        let stale = "expiry-time=\"202001010000Z\" ssh-ed25519 AAAAold assist-client:SN-1\n";
        let mut content = stale.as_bytes().to_vec();
        content.extend_from_slice(b"ssh-ed25519 AAAAx mentions assist-client:SN-1 in the middle\n");
        content.extend_from_slice(b"ssh-ed25519 AAAAy assist-client:SN-10\n");
        content.extend_from_slice(stale.as_bytes());
        content.extend_from_slice(OTHER);
        std::fs::write(&f.path, &content).unwrap();

        assert_eq!(f.remove("SN-1").unwrap(), 2);
        let left = std::fs::read(&f.path).unwrap();
        assert_eq!(
            left,
            content[stale.len()..content.len() - OTHER.len() - stale.len()]
                .iter()
                .chain(OTHER)
                .copied()
                .collect::<Vec<u8>>()
        );
    }

    #[test]
    fn missing_ssh_folder_and_file_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path());
        assert_eq!(f.remove("SN-1").unwrap(), 0);
        f.install("SN-1", "ssh-ed25519 AAAAkey assist-client:SN-1")
            .unwrap();
        let ssh = std::fs::metadata(dir.path().join(".ssh")).unwrap();
        assert_eq!(ssh.permissions().mode() & 0o777, 0o700);
        let meta = std::fs::metadata(&f.path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!((meta.uid(), meta.gid()), nix_ids());
        assert_eq!(
            std::fs::read_to_string(&f.path).unwrap(),
            "ssh-ed25519 AAAAkey assist-client:SN-1\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join(".ssh"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn passwd_lookup() {
        let text =
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1001:Alice,,,:/home/alice:/bin/sh\n";
        let a = parse_passwd(text, "alice").unwrap();
        assert_eq!(
            (a.uid, a.gid, a.home.as_path()),
            (1000, 1001, Path::new("/home/alice"))
        );
        assert!(parse_passwd(text, "bob").is_none());
        assert!(parse_passwd(text, "ali").is_none());
        let k = KeysFile::new(&a, None);
        assert_eq!(k.path, Path::new("/home/alice/.ssh/authorized_keys"));
    }
}
