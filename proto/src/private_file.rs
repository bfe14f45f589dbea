//! The one way to write a secret file (device key, control token, host keys, exported keys,
//! TLS keys) and the target account's `authorized_keys`: atomic, private from the first
//! byte, and never following a symbolic link.
//!
//! A file is written to a fresh temporary name in the same folder (random, created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` relative to the folder's descriptor), given its owner and mode
//! on the descriptor, synced, then renamed (or linked, when an existing file must not be
//! replaced) onto its name within that folder. A reader sees the old file or the whole new
//! one; a link planted at the name or at a guessable temporary name is never followed.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::io::Errno;

/// Why a file could not be read or written safely.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("{path} is a symbolic link; refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path} is not a {expected}; refusing to use it")]
    WrongType {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PrivateFileError {
    /// Whether it failed because a name (or a folder on the way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    fn io(action: &'static str, path: &Path) -> impl FnOnce(Errno) -> Self {
        let path = path.to_owned();
        move |errno| Self::Io {
            action,
            path,
            source: errno.into(),
        }
    }

    fn std_io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// What happens when the file already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it atomically.
    Replace,
    /// Leave it and fail with [`PrivateFileError::Exists`] (two processes creating the same
    /// key must not overwrite each other's).
    Keep,
}

/// How a file is written.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Permission bits, set on the descriptor before the file gets its name.
    pub mode: u32,
    /// `(uid, gid)` to give the file before it gets its name; `None`: the writer's.
    pub owner: Option<(u32, u32)>,
    pub existing: Existing,
}

impl WriteOptions {
    /// Mode 0600, the writer's owner.
    pub fn private(existing: Existing) -> Self {
        Self {
            mode: 0o600,
            owner: None,
            existing,
        }
    }
}

/// Writes `bytes` to `path` with mode 0600, atomically, never following a link at `path`.
///
/// The folder itself is opened as named (a data folder its admin configured may be a link);
/// use [`Folder::open_no_follow`] where someone else controls the folder.
pub fn write_private(
    path: &Path,
    bytes: &[u8],
    existing: Existing,
) -> Result<(), PrivateFileError> {
    write(path, bytes, &WriteOptions::private(existing))
}

/// As [`write_private`], with explicit options (a public certificate next to its key is
/// written the same way with mode 0644).
pub fn write(path: &Path, bytes: &[u8], options: &WriteOptions) -> Result<(), PrivateFileError> {
    let (folder, name) = split(path)?;
    Folder::open(folder)?.write(name, bytes, options)
}

/// Reads `path` if it exists, refusing a link or anything but a regular file.
pub fn read_no_follow(path: &Path) -> Result<Option<Vec<u8>>, PrivateFileError> {
    let (folder, name) = split(path)?;
    Ok(Folder::open(folder)?.read(name)?.map(|(bytes, _)| bytes))
}

fn split(path: &Path) -> Result<(&Path, &OsStr), PrivateFileError> {
    let name = path
        .file_name()
        .ok_or_else(|| PrivateFileError::WrongType {
            path: path.to_owned(),
            expected: "file name",
        })?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((folder, name))
}

/// An open folder: every name below is resolved relative to its descriptor, so renaming or
/// replacing the folder's path meanwhile changes nothing.
#[derive(Debug)]
pub struct Folder {
    dir: File,
    path: PathBuf,
}

impl Folder {
    /// Opens `path` as a folder, following links in it (the folders of the programs' own
    /// files are chosen by their admin).
    pub fn open(path: &Path) -> Result<Self, PrivateFileError> {
        Self::open_with(path, OFlags::empty())
    }

    /// Opens `path` as a folder, refusing it if it is a symbolic link.
    pub fn open_no_follow(path: &Path) -> Result<Self, PrivateFileError> {
        Self::open_with(path, OFlags::NOFOLLOW)
    }

    fn open_with(path: &Path, extra: OFlags) -> Result<Self, PrivateFileError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra;
        match rustix::fs::openat(CWD, path, flags, Mode::empty()) {
            Ok(fd) => Ok(Self {
                dir: File::from(fd),
                path: path.to_owned(),
            }),
            Err(errno) => Err(classify(
                rustix::fs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW).ok(),
                path,
                "directory",
                PrivateFileError::io("open the folder", path)(errno),
            )),
        }
    }

    /// Creates the subfolder `name` with `mode` (and `owner`) unless it exists, then opens it
    /// without following a link.
    pub fn create_folder(
        &self,
        name: &OsStr,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<Folder, PrivateFileError> {
        let path = self.path.join(name);
        let created = match rustix::fs::mkdirat(&self.dir, name, Mode::from_raw_mode(mode)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(errno) => return Err(PrivateFileError::io("create the folder", &path)(errno)),
        };
        let folder = self.folder(name)?;
        if created {
            // Set on the descriptor: the umask narrowed the mode, and the path may already
            // name something else.
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&folder.dir, Some(uid), Some(gid))
                    .map_err(PrivateFileError::std_io("set the owner of", &path))?;
            }
            folder
                .dir
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(PrivateFileError::std_io("set the mode of", &path))?;
        }
        Ok(folder)
    }

    /// Opens the subfolder `name`, refusing a link.
    pub fn folder(&self, name: &OsStr) -> Result<Folder, PrivateFileError> {
        let path = self.path.join(name);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        match rustix::fs::openat(&self.dir, name, flags, Mode::empty()) {
            Ok(fd) => Ok(Folder {
                dir: File::from(fd),
                path,
            }),
            Err(errno) => Err(classify(
                self.lstat(name),
                &path,
                "directory",
                PrivateFileError::io("open the folder", &path)(errno),
            )),
        }
    }

    /// The folder's own owner and mode, from its descriptor.
    pub fn metadata(&self) -> Result<Metadata, PrivateFileError> {
        self.dir
            .metadata()
            .map_err(PrivateFileError::std_io("inspect", &self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file `name` and its metadata, or `None` if there is none. A link, a FIFO
    /// or anything but a regular file is refused without being opened for reading.
    pub fn read(&self, name: &OsStr) -> Result<Option<(Vec<u8>, Metadata)>, PrivateFileError> {
        let path = self.path.join(name);
        // NONBLOCK: opening a FIFO planted at the name must not hang the reader.
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&self.dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(errno) => {
                return Err(classify(
                    self.lstat(name),
                    &path,
                    "regular file",
                    PrivateFileError::io("open", &path)(errno),
                ));
            }
        };
        let mut file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(PrivateFileError::std_io("inspect", &path))?;
        if !meta.is_file() {
            return Err(PrivateFileError::WrongType {
                path,
                expected: "regular file",
            });
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(PrivateFileError::std_io("read", &path))?;
        Ok(Some((bytes, meta)))
    }

    /// Creates the new file `name` with `mode` for appending (a log, a recording): it must
    /// not exist, and a link planted at the name is refused, not followed.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> Result<File, PrivateFileError> {
        let path = self.path.join(name);
        let flags = OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC;
        match rustix::fs::openat(&self.dir, name, flags, Mode::from_raw_mode(mode)) {
            Ok(fd) => {
                let file = File::from(fd);
                // The umask may have narrowed it; never widened past `mode`.
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(PrivateFileError::std_io("set the mode of", &path))?;
                Ok(file)
            }
            Err(Errno::EXIST) => match self.lstat(name) {
                Some(stat)
                    if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                        == rustix::fs::FileType::Symlink =>
                {
                    Err(PrivateFileError::Symlink { path })
                }
                _ => Err(PrivateFileError::Exists { path }),
            },
            Err(errno) => Err(PrivateFileError::io("create", &path)(errno)),
        }
    }

    /// Writes `bytes` as the file `name` of this folder (see the module doc).
    pub fn write(
        &self,
        name: &OsStr,
        bytes: &[u8],
        options: &WriteOptions,
    ) -> Result<(), PrivateFileError> {
        let path = self.path.join(name);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
        let tmp_path = self.path.join(&tmp_name);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, &tmp_name, flags, Mode::from_raw_mode(0o600))
            .map_err(PrivateFileError::io("create a temporary file", &tmp_path))?;
        let mut file = File::from(fd);
        let result = (|| {
            file.write_all(bytes)
                .map_err(PrivateFileError::std_io("write", &tmp_path))?;
            if let Some((uid, gid)) = options.owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(PrivateFileError::std_io("set the owner of", &tmp_path))?;
            }
            // After chown, which may clear mode bits.
            file.set_permissions(std::fs::Permissions::from_mode(options.mode))
                .map_err(PrivateFileError::std_io("set the mode of", &tmp_path))?;
            file.sync_all()
                .map_err(PrivateFileError::std_io("sync", &tmp_path))?;
            match options.existing {
                Existing::Replace => rustix::fs::renameat(&self.dir, &tmp_name, &self.dir, name)
                    .map_err(PrivateFileError::io("replace", &path)),
                // A link fails if anything, a dangling link included, has the name already.
                Existing::Keep => match rustix::fs::linkat(
                    &self.dir,
                    &tmp_name,
                    &self.dir,
                    name,
                    AtFlags::empty(),
                ) {
                    Ok(()) => Ok(()),
                    Err(Errno::EXIST) => Err(PrivateFileError::Exists { path: path.clone() }),
                    Err(errno) => Err(PrivateFileError::io("create", &path)(errno)),
                },
            }
        })();
        if result.is_err() || options.existing == Existing::Keep {
            let _ = rustix::fs::unlinkat(&self.dir, &tmp_name, AtFlags::empty());
        }
        result?;
        // Makes the rename durable; some file systems cannot sync a folder, which costs only
        // durability of this one rename, so that is not an error.
        let _ = self.dir.sync_all();
        Ok(())
    }

    fn lstat(&self, name: &OsStr) -> Option<rustix::fs::Stat> {
        rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()
    }
}

/// Turns a failed open into "is a symbolic link" / "is not a …" when that is why.
fn classify(
    stat: Option<rustix::fs::Stat>,
    path: &Path,
    expected: &'static str,
    otherwise: PrivateFileError,
) -> PrivateFileError {
    use rustix::fs::FileType;
    let Some(stat) = stat else {
        return otherwise;
    };
    let want = if expected == "directory" {
        FileType::Directory
    } else {
        FileType::RegularFile
    };
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Symlink => PrivateFileError::Symlink {
            path: path.to_owned(),
        },
        kind if kind != want => PrivateFileError::WrongType {
            path: path.to_owned(),
            expected,
        },
        _ => otherwise,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_0600_replaces_atomically_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_private(&path, b"one", Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"two", Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            mode(&path),
            0o600,
            "a replaced file does not keep a wider mode"
        );
        assert_eq!(names(dir.path()), ["token"]);
    }

    #[test]
    fn keep_refuses_an_existing_name_even_a_dangling_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_private(&path, b"first", Existing::Keep).unwrap();
        let err = write_private(&path, b"second", Existing::Keep).unwrap_err();
        assert!(matches!(err, PrivateFileError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first");

        let dangling = dir.path().join("dangling");
        let victim = dir.path().join("victim-not-created");
        std::os::unix::fs::symlink(&victim, &dangling).unwrap();
        assert!(write_private(&dangling, b"x", Existing::Keep).is_err());
        assert!(!victim.exists(), "the link was followed");
        assert_eq!(names(dir.path()), ["dangling", "key"]);
    }

    #[test]
    fn a_link_at_the_name_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();

        write_private(&link, b"secret", Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(mode(&victim), 0o644);
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read(&link).unwrap(), b"secret");
    }

    #[test]
    fn reading_refuses_links_and_fifos_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("victim"), b"precious").unwrap();
        std::os::unix::fs::symlink(dir.path().join("victim"), dir.path().join("link")).unwrap();
        let err = read_no_follow(&dir.path().join("link")).unwrap_err();
        assert!(matches!(err, PrivateFileError::Symlink { .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("is a symbolic link; refusing to follow it")
        );

        let folder = Folder::open(dir.path()).unwrap();
        rustix::fs::mknodat(
            &folder.dir,
            "fifo",
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = folder.read(OsStr::new("fifo")).unwrap_err();
        assert!(matches!(err, PrivateFileError::WrongType { .. }), "{err}");
        assert!(folder.read(OsStr::new("missing")).unwrap().is_none());
        let (bytes, _) = folder.read(OsStr::new("victim")).unwrap().unwrap();
        assert_eq!(bytes, b"precious");
    }

    #[test]
    fn folders_are_opened_without_following_and_created_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let err = Folder::open_no_follow(&dir.path().join("link")).unwrap_err();
        assert!(matches!(err, PrivateFileError::Symlink { .. }), "{err}");
        let top = Folder::open_no_follow(dir.path()).unwrap();
        let err = top.folder(OsStr::new("link")).unwrap_err();
        assert!(matches!(err, PrivateFileError::Symlink { .. }), "{err}");
        let err = top
            .create_folder(OsStr::new("link"), 0o700, None)
            .unwrap_err();
        assert!(matches!(err, PrivateFileError::Symlink { .. }), "{err}");

        let made = top.create_folder(OsStr::new(".ssh"), 0o700, None).unwrap();
        assert_eq!(mode(&dir.path().join(".ssh")), 0o700);
        made.write(
            OsStr::new("authorized_keys"),
            b"line\n",
            &WriteOptions {
                mode: 0o640,
                owner: Some((
                    made.metadata().unwrap().uid(),
                    made.metadata().unwrap().gid(),
                )),
                existing: Existing::Replace,
            },
        )
        .unwrap();
        assert_eq!(mode(&dir.path().join(".ssh/authorized_keys")), 0o640);
        assert!(Folder::open_no_follow(&dir.path().join("real/none")).is_err());
    }
}
