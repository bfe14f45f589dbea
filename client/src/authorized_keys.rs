//! Editing the target account's `authorized_keys`: add the temporary key line, remove it, and
//! purge lines left by an earlier run. Every edit is atomic and leaves other lines byte for byte.

use assist_proto::private_file::{Existing, Folder, PrivateFileError, WriteOptions};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// Prefix of the comment that marks our lines; the serial follows it.
pub const MARKER_PREFIX: &str = "assist-client:";

#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error(
        "user {0:?} not found in /etc/passwd or the system's other account sources; set \
         target_user (or authorized_keys) in the config"
    )]
    NoSuchUser(String),
    #[error("cannot look up user {user:?}: {source}")]
    Lookup { user: String, source: nix::Error },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot edit the key file of user {user}: {source}")]
    Unsafe {
        user: String,
        source: PrivateFileError,
    },
    #[error(
        "cannot edit the key file of user {user}: {path} belongs to uid {owner}, not to {user} \
         (uid {uid}); refusing to touch it (give it to {user} or remove it)"
    )]
    NotOwned {
        user: String,
        uid: u32,
        path: PathBuf,
        owner: u32,
    },
    #[error(
        "cannot edit the key file of user {user}: {path} can be written by others than its \
         owner (mode {mode:o}); refusing to touch it (sshd would refuse it too)"
    )]
    Writable {
        user: String,
        path: PathBuf,
        mode: u32,
    },
}

/// The account whose `authorized_keys` is edited, as the system's account database
/// describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Account {
    /// Looks `name` up as `getpwnam` does: `/etc/passwd` and whatever else NSS is configured
    /// with (LDAP, sssd), so such accounts need no `authorized_keys` in the config.
    pub fn lookup(name: &str) -> Result<Self, KeysFileError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|source| KeysFileError::Lookup {
                user: name.to_owned(),
                source,
            })?
            .ok_or_else(|| KeysFileError::NoSuchUser(name.to_owned()))?;
        Ok(Account {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }
}

/// The file to edit and the account it belongs to.
///
/// The agent runs as root and the folder belongs to that account, so every step is made safe
/// against what the account can plant there: the folder and the file are opened without
/// following links and must belong to the account (or, in a root-owned folder, to root), the
/// new content goes to a fresh random name owned by the account and is renamed over the file
/// within the same folder descriptor (see [`assist_proto::private_file`]).
#[derive(Debug, Clone)]
pub struct KeysFile {
    pub path: PathBuf,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

impl KeysFile {
    /// `explicit` if the config names a file, else `~account/.ssh/authorized_keys`.
    pub fn new(account: &Account, explicit: Option<PathBuf>) -> Self {
        Self {
            path: explicit.unwrap_or_else(|| account.home.join(".ssh/authorized_keys")),
            user: account.name.clone(),
            uid: account.uid,
            gid: account.gid,
        }
    }

    /// Adds `line` (replacing any line of ours for the same serial).
    pub fn install(&self, serial: &str, line: &str) -> Result<(), KeysFileError> {
        let folder = self.folder(true)?.ok_or_else(|| self.missing_folder())?;
        let old = self.read(&folder)?;
        let (mut kept, _) = without_marker(old.as_ref().map_or(&[][..], |o| &o.0), serial);
        if !kept.is_empty() && !kept.ends_with(b"\n") {
            kept.push(b'\n');
        }
        kept.extend_from_slice(line.as_bytes());
        kept.push(b'\n');
        self.write(&folder, &kept, old.as_ref().map(|o| &o.1))
    }

    /// Removes every line carrying our marker for `serial`; returns how many there were.
    pub fn remove(&self, serial: &str) -> Result<usize, KeysFileError> {
        let Some(folder) = self.folder(false)? else {
            return Ok(0);
        };
        let Some((old, meta)) = self.read(&folder)? else {
            return Ok(0);
        };
        let (kept, removed) = without_marker(&old, serial);
        if removed > 0 {
            self.write(&folder, &kept, Some(&meta))?;
        }
        Ok(removed)
    }

    fn unsafe_file(&self) -> impl FnOnce(PrivateFileError) -> KeysFileError {
        let user = self.user.clone();
        move |source| KeysFileError::Unsafe { user, source }
    }

    fn missing_folder(&self) -> KeysFileError {
        KeysFileError::Io {
            action: "cannot find the folder of",
            path: self.path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        }
    }

    fn name(&self) -> &OsStr {
        self.path
            .file_name()
            .unwrap_or(OsStr::new("authorized_keys"))
    }

    /// Opens the file's folder (like `~/.ssh`) without following a link, creating it (0700,
    /// owned by the account; sshd's StrictModes refuses keys in a folder others can write)
    /// when `create` is set and it is missing. `None`: missing and not created.
    fn folder(&self, create: bool) -> Result<Option<Folder>, KeysFileError> {
        let path = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let opened = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) if create => {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                Folder::open(parent)
                    .and_then(|p| p.create_folder(name, 0o700, Some((self.uid, self.gid))))
            }
            _ => Folder::open_no_follow(path),
        };
        let folder = match opened {
            Ok(folder) => folder,
            Err(e) if !create && e.is_not_found() => return Ok(None),
            Err(e) => return Err(self.unsafe_file()(e)),
        };
        let meta = folder.metadata().map_err(self.unsafe_file())?;
        if meta.uid() != self.uid && meta.uid() != 0 {
            return Err(self.not_owned(path, meta.uid()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(KeysFileError::Writable {
                user: self.user.clone(),
                path: path.to_owned(),
                mode: meta.mode() & 0o7777,
            });
        }
        Ok(Some(folder))
    }

    fn not_owned(&self, path: &Path, owner: u32) -> KeysFileError {
        KeysFileError::NotOwned {
            user: self.user.clone(),
            uid: self.uid,
            path: path.to_owned(),
            owner,
        }
    }

    /// The file's bytes and metadata, `None` if there is none. It must belong to the account,
    /// or to root in a folder of root's (where the account cannot have planted it).
    fn read(&self, folder: &Folder) -> Result<Option<(Vec<u8>, Metadata)>, KeysFileError> {
        let Some((bytes, meta)) = folder.read(self.name()).map_err(self.unsafe_file())? else {
            return Ok(None);
        };
        let folder_owner = folder.metadata().map_err(self.unsafe_file())?.uid();
        let root_in_roots = meta.uid() == 0 && folder_owner == 0;
        if meta.uid() != self.uid && !root_in_roots {
            return Err(self.not_owned(&self.path, meta.uid()));
        }
        Ok(Some((bytes, meta)))
    }

    /// Replaces the file with `content`, keeping the old file's mode and owner (a new file:
    /// 0600, the account's); sshd never sees a half-written file.
    fn write(
        &self,
        folder: &Folder,
        content: &[u8],
        old: Option<&Metadata>,
    ) -> Result<(), KeysFileError> {
        let (mode, owner) = match old {
            Some(meta) => (meta.mode() & 0o777, (meta.uid(), meta.gid())),
            None => (0o600, (self.uid, self.gid)),
        };
        let options = WriteOptions {
            mode,
            owner: Some(owner),
            existing: Existing::Replace,
        };
        folder
            .write(self.name(), content, &options)
            .map_err(self.unsafe_file())
    }
}

/// The marker comment of `serial`'s lines.
pub fn marker(serial: &str) -> String {
    format!("{MARKER_PREFIX}{serial}")
}

/// The line to install: the key may only be used from loopback (where the tunnel lands),
/// until `until` (sshd enforces it even if the agent dies), without agent or X11 forwarding,
/// and may forward only to `permit_open` (the `HOST:PORT` of the services that ride inside
/// the session; none: no port forwarding at all).
///
/// For a server without `expiry-time` and `from` (Dropbear, which rejects the whole line
/// for them) `enforced_by_server` is false and both are left out: the agent then removes the
/// line at the window's end itself.
pub fn key_line(
    public_key: &str,
    serial: &str,
    until: OffsetDateTime,
    permit_open: &[&str],
    enforced_by_server: bool,
) -> String {
    // Round up to the minute so sshd never expires the key before the window ends; the agent
    // removes the line at the exact end.
    let until = until.to_offset(time::UtcOffset::UTC);
    let until = if until.second() > 0 || until.nanosecond() > 0 {
        until + time::Duration::minutes(1)
    } else {
        until
    };
    let forwarding = if permit_open.is_empty() {
        ",no-port-forwarding".to_owned()
    } else {
        permit_open
            .iter()
            .map(|target| format!(",permitopen=\"{target}\""))
            .collect()
    };
    let server_side = if enforced_by_server {
        format!(
            "expiry-time=\"{:04}{:02}{:02}{:02}{:02}Z\",from=\"127.0.0.1,::1\",",
            until.year(),
            u8::from(until.month()),
            until.day(),
            until.hour(),
            until.minute(),
        )
    } else {
        String::new()
    };
    format!(
        "{server_side}no-agent-forwarding,no-X11-forwarding{forwarding} {} {}",
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
    use std::os::unix::fs::PermissionsExt;
    use time::macros::datetime;

    const OTHER: &[u8] = b"# keep me\r\nssh-ed25519 AAAAother admin@host\n\n  command=\"x\" ssh-rsa AAAB assist-client:SN-0002\nno-newline-at-end";

    fn file(dir: &Path) -> KeysFile {
        KeysFile {
            path: dir.join(".ssh/authorized_keys"),
            user: "tester".to_owned(),
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
            &[],
            true,
        );
        assert_eq!(
            line,
            "expiry-time=\"202601020305Z\",from=\"127.0.0.1,::1\",no-agent-forwarding,\
             no-X11-forwarding,no-port-forwarding ssh-ed25519 AAAAkey assist-client:SN-1"
        );
        let exact = key_line("k", "SN-1", datetime!(2026-01-02 03:04:00 UTC), &[], true);
        assert!(exact.starts_with("expiry-time=\"202601020304Z\""));
        let web = key_line(
            "k",
            "SN-1",
            datetime!(2026-01-02 03:04:00 UTC),
            &["127.0.0.1:80", "[::1]:8443"],
            true,
        );
        assert!(
            web.contains(
                "no-X11-forwarding,permitopen=\"127.0.0.1:80\",permitopen=\"[::1]:8443\" k "
            ),
            "{web}"
        );
        // Dropbear: only the options it knows; a line with any other is thrown away whole.
        let dropbear = key_line(
            "k",
            "SN-1",
            datetime!(2026-01-02 03:04:00 UTC),
            &["127.0.0.1:80"],
            false,
        );
        assert_eq!(
            dropbear,
            "no-agent-forwarding,no-X11-forwarding,permitopen=\"127.0.0.1:80\" k assist-client:SN-1"
        );
    }

    #[test]
    fn install_and_remove_keep_other_lines_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path());
        std::fs::create_dir(dir.path().join(".ssh")).unwrap();
        std::fs::write(&f.path, OTHER).unwrap();
        std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let line = key_line(
            "ssh-ed25519 AAAAkey",
            "SN-1",
            OffsetDateTime::now_utc(),
            &[],
            true,
        );

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

    /// A victim file outside the folder, with its content and mode, to check it is untouched.
    fn victim(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join("victim");
        std::fs::write(&path, b"precious\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        (path, b"precious\n".to_vec())
    }

    fn assert_untouched(path: &Path, content: &[u8]) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o777, 0o644);
        assert_eq!((meta.uid(), meta.gid()), nix_ids());
        assert_eq!(std::fs::read(path).unwrap(), content);
    }

    #[test]
    fn a_linked_key_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (victim, content) = victim(dir.path());
        let f = file(dir.path());
        std::fs::create_dir(dir.path().join(".ssh")).unwrap();
        std::os::unix::fs::symlink(&victim, &f.path).unwrap();
        for err in [
            f.install("SN-1", "ssh-ed25519 AAAAkey assist-client:SN-1")
                .unwrap_err(),
            f.remove("SN-1").unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(
                text.starts_with("cannot edit the key file of user tester: ")
                    && text.ends_with("authorized_keys is a symbolic link; refusing to follow it"),
                "{text}"
            );
        }
        assert_untouched(&victim, &content);
        assert!(std::fs::symlink_metadata(&f.path).unwrap().is_symlink());
    }

    #[test]
    fn a_linked_ssh_folder_is_refused_and_the_other_folder_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let (victim, content) = victim(&elsewhere);
        std::fs::rename(&victim, elsewhere.join("authorized_keys")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(".ssh")).unwrap();
        let f = file(dir.path());
        let err = f
            .install("SN-1", "ssh-ed25519 AAAAkey assist-client:SN-1")
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with(".ssh is a symbolic link; refusing to follow it"),
            "{err}"
        );
        assert!(f.remove("SN-1").is_err());
        assert_untouched(&elsewhere.join("authorized_keys"), &content);
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 1);
    }

    #[test]
    fn a_link_at_the_old_temporary_name_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (victim, content) = victim(dir.path());
        let f = file(dir.path());
        std::fs::create_dir(dir.path().join(".ssh")).unwrap();
        let old_tmp = dir.path().join(format!(
            ".ssh/.authorized_keys.assist-client.{}",
            std::process::id()
        ));
        std::os::unix::fs::symlink(&victim, &old_tmp).unwrap();
        f.install("SN-1", "ssh-ed25519 AAAAkey assist-client:SN-1")
            .unwrap();
        assert_untouched(&victim, &content);
        assert!(std::fs::symlink_metadata(&old_tmp).unwrap().is_symlink());
        assert_eq!(
            std::fs::read_to_string(&f.path).unwrap(),
            "ssh-ed25519 AAAAkey assist-client:SN-1\n"
        );
    }

    #[test]
    fn files_of_another_owner_and_folders_others_can_write_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path());
        std::fs::create_dir(dir.path().join(".ssh")).unwrap();
        std::fs::write(&f.path, b"ssh-ed25519 AAAAx assist-client:SN-1\n").unwrap();
        if nix_ids().0 == 0 {
            // Root runs the tests: plant a file of another account in the folder.
            std::os::unix::fs::chown(&f.path, Some(4242), Some(4242)).unwrap();
            let err = f.remove("SN-1").unwrap_err().to_string();
            assert!(
                err.contains("authorized_keys belongs to uid 4242, not to tester (uid 0)"),
                "{err}"
            );
            std::os::unix::fs::chown(&f.path, Some(0), Some(0)).unwrap();
        } else {
            // Another account's view of this user's folder.
            let mut other = file(dir.path());
            other.uid = other.uid.wrapping_add(4242);
            other.user = "other".to_owned();
            let err = other.remove("SN-1").unwrap_err().to_string();
            assert!(err.contains(".ssh belongs to uid"), "{err}");
            assert!(err.contains("not to other"), "{err}");
        }
        let f = file(dir.path());
        std::fs::set_permissions(
            dir.path().join(".ssh"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let err = f.remove("SN-1").unwrap_err().to_string();
        assert!(
            err.contains("can be written by others than its owner (mode 777)"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&f.path).unwrap(),
            "ssh-ed25519 AAAAx assist-client:SN-1\n"
        );
    }

    #[test]
    fn passwd_lookup() {
        let a = Account::lookup("root").unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_path()), (0, 0, Path::new("/root")));
        let missing = Account::lookup("no-such-user-assist").unwrap_err();
        assert!(matches!(missing, KeysFileError::NoSuchUser(_)), "{missing}");
        assert!(Account::lookup("roo").is_err());
        let k = KeysFile::new(&a, None);
        assert_eq!(k.path, Path::new("/root/.ssh/authorized_keys"));
    }
}
