//! The built-in target's recordings as the customer's page sees them: the list (read from each
//! file's asciicast v2 header), one file for the player, removal, and the sweep that keeps
//! them only for `recordings_keep`.
//!
//! A name from the page is only ever looked up in the folder's own listing, and only regular
//! files count, so neither `../` nor a symlink planted in the folder reaches another file.

use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// How often a running agent sweeps old recordings.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// How much of a file's end is read to find its last event (the duration).
const TAIL: u64 = 64 * 1024;
/// A header line longer than this is not one of ours.
const MAX_HEADER: u64 = 64 * 1024;
/// The extension of a recording, as the built-in target writes it and the page lists it.
pub const EXTENSION: &str = "cast";

/// One recording, as the page lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecordingInfo {
    /// The file's name in the folder: what the player and delete name it by.
    pub name: String,
    pub engineer: Option<String>,
    pub from: Option<String>,
    /// The command run, `None` for an interactive shell.
    pub command: Option<String>,
    pub service: Option<String>,
    /// RFC 3339.
    pub start: String,
    /// Seconds from the start to the last event.
    pub duration_secs: f64,
    pub size: u64,
    pub width: u32,
    pub height: u32,
}

/// The asciicast v2 header fields the list shows.
#[derive(Deserialize)]
struct Header {
    version: u32,
    width: u32,
    height: u32,
    timestamp: Option<i64>,
    #[serde(default)]
    assist: Option<Assist>,
}

#[derive(Deserialize)]
struct Assist {
    engineer: Option<String>,
    from: Option<String>,
    command: Option<String>,
    service: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("no recording is named {0:?}")]
    NotFound(String),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The recordings in `dir`, newest first. Files that do not parse are skipped and logged; a
/// missing folder is an empty list.
pub fn list(dir: &Path) -> Result<Vec<RecordingInfo>, RecordingError> {
    let mut found: Vec<RecordingInfo> = names(dir)?
        .into_iter()
        .filter_map(|name| {
            let path = dir.join(&name);
            match read_info(&path, name) {
                Ok(info) => Some(info),
                Err(why) => {
                    tracing::warn!(file = %path.display(), "skipping a recording: {why}");
                    None
                }
            }
        })
        .collect();
    found.sort_by(|a, b| b.start.cmp(&a.start).then(b.name.cmp(&a.name)));
    Ok(found)
}

/// The path of recording `name`, when the folder lists it as a regular `.cast` file.
pub fn find(dir: &Path, name: &str) -> Result<PathBuf, RecordingError> {
    if names(dir)?.iter().any(|n| n == name) {
        Ok(dir.join(name))
    } else {
        Err(RecordingError::NotFound(name.to_owned()))
    }
}

/// The whole of recording `name`, for the player.
pub fn read(dir: &Path, name: &str) -> Result<Vec<u8>, RecordingError> {
    let path = find(dir, name)?;
    let mut file = open_no_follow(&path).map_err(|source| RecordingError::Io {
        action: "open",
        path: path.clone(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| RecordingError::Io {
            action: "read",
            path,
            source,
        })?;
    Ok(bytes)
}

/// Removes recording `name`.
pub fn delete(dir: &Path, name: &str) -> Result<(), RecordingError> {
    let path = find(dir, name)?;
    std::fs::remove_file(&path).map_err(|source| RecordingError::Io {
        action: "remove",
        path,
        source,
    })
}

/// Removes recordings last written more than `keep` before `now`; returns how many.
pub fn sweep(dir: &Path, keep: Duration, now: SystemTime) -> usize {
    let names = match names(dir) {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!("cannot sweep the recordings: {e}");
            return 0;
        }
    };
    let mut removed = 0;
    for name in names {
        let path = dir.join(&name);
        let old = std::fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|written| now.duration_since(written).is_ok_and(|age| age > keep));
        if !old {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(file = %path.display(), "cannot remove an old recording: {e}"),
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed recordings older than recordings_keep");
    }
    removed
}

/// The names of the regular `.cast` files in `dir` (symlinks and folders do not count).
fn names(dir: &Path) -> Result<Vec<String>, RecordingError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RecordingError::Io {
                action: "list",
                path: dir.to_owned(),
                source,
            });
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| Path::new(n).extension().is_some_and(|x| x == EXTENSION) && !n.starts_with('.'))
        .collect())
}

fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

fn read_info(path: &Path, name: String) -> Result<RecordingInfo, String> {
    let mut file = open_no_follow(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut first = Vec::new();
    (&mut file)
        .take(MAX_HEADER)
        .read_to_end(&mut first)
        .map_err(|e| e.to_string())?;
    let header_line = first
        .split(|b| *b == b'\n')
        .next()
        .ok_or("the file is empty")?;
    let header: Header = serde_json::from_slice(header_line)
        .map_err(|e| format!("the first line is not an asciicast header: {e}"))?;
    if header.version != 2 {
        return Err(format!("asciicast version {} (not 2)", header.version));
    }
    let start = header
        .timestamp
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .ok_or("the header has no timestamp")?;
    let from = size.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(from))
        .map_err(|e| e.to_string())?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(|e| e.to_string())?;
    let duration_secs = tail
        .split(|b| *b == b'\n')
        .rev()
        .filter(|l| l.first() == Some(&b'['))
        .find_map(|l| serde_json::from_slice::<(f64, serde_json::Value, serde_json::Value)>(l).ok())
        .map_or(0.0, |(t, _, _)| t);
    let assist = header.assist.unwrap_or(Assist {
        engineer: None,
        from: None,
        command: None,
        service: None,
    });
    Ok(RecordingInfo {
        name,
        engineer: assist.engineer,
        from: assist.from,
        command: assist.command,
        service: assist.service,
        start: crate::state::rfc3339(start),
        duration_secs,
        size,
        width: header.width,
        height: header.height,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEADER: &str = r#"{"version":2,"width":80,"height":24,"timestamp":1796000000,"title":"x","env":{"TERM":"xterm"},"assist":{"engineer":"alice","from":"127.0.0.1:5000","command":null,"service":"ssh"}}"#;

    fn cast(dir: &Path, name: &str, events: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("{HEADER}\n{events}")).unwrap();
        path
    }

    #[test]
    fn the_list_reads_headers_and_the_last_event_and_skips_what_does_not_parse() {
        let dir = tempfile::tempdir().unwrap();
        cast(
            dir.path(),
            "20261202T080000Z-alice-1.cast",
            "[0.5,\"o\",\"hi\"]\n[1.25,\"i\",\"x\"]\n[2.75,\"o\",\"bye\"]\n",
        );
        std::fs::write(dir.path().join("broken.cast"), "not json\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), HEADER).unwrap();
        let list = list(dir.path()).unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        let r = &list[0];
        assert_eq!(r.name, "20261202T080000Z-alice-1.cast");
        assert_eq!(r.engineer.as_deref(), Some("alice"));
        assert_eq!(r.from.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.service.as_deref(), Some("ssh"));
        assert_eq!(r.command, None);
        assert_eq!(r.start, "2026-11-30T00:53:20Z");
        assert!((r.duration_secs - 2.75).abs() < 1e-9);
        assert_eq!((r.width, r.height), (80, 24));
        assert!(r.size > HEADER.len() as u64);
        assert!(super::list(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn only_listed_regular_files_can_be_read_or_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("recordings");
        std::fs::create_dir(&dir).unwrap();
        let victim = root.path().join("history.cast");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("link.cast")).unwrap();
        let real = cast(&dir, "a.cast", "[0.1,\"o\",\"x\"]\n");
        for bad in [
            "../history.cast",
            "link.cast",
            "/etc/passwd",
            "",
            ".",
            "..",
            "a.cast/",
            "missing.cast",
        ] {
            assert!(
                matches!(delete(&dir, bad), Err(RecordingError::NotFound(_))),
                "{bad}"
            );
            assert!(
                matches!(super::read(&dir, bad), Err(RecordingError::NotFound(_))),
                "{bad}"
            );
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert!(dir.join("link.cast").symlink_metadata().is_ok());
        assert!(
            super::read(&dir, "a.cast")
                .unwrap()
                .starts_with(HEADER.as_bytes())
        );
        delete(&dir, "a.cast").unwrap();
        assert!(!real.exists());
        assert!(matches!(
            delete(&dir, "a.cast"),
            Err(RecordingError::NotFound(_))
        ));
    }

    #[test]
    fn the_sweep_removes_only_recordings_older_than_keep() {
        let dir = tempfile::tempdir().unwrap();
        let old = cast(dir.path(), "old.cast", "");
        let new = cast(dir.path(), "new.cast", "");
        let other = dir.path().join("old.txt");
        std::fs::write(&other, "x").unwrap();
        let day = Duration::from_secs(24 * 3600);
        let now = SystemTime::now();
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(now - 31 * day)
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(now - 31 * day)
            .unwrap();
        assert_eq!(sweep(dir.path(), 30 * day, now), 1);
        assert!(!old.exists());
        assert!(new.exists() && other.exists());
        assert_eq!(sweep(dir.path(), 30 * day, now), 0);
    }
}
